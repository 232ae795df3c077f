"""Transmit scheduling across applications (issue 6): deficit round robin in
bytes across contexts (fp_tx.c fp_tx_run and its twin PyFastPath.tx_run).

Context A has 16 flows with 64 KiB queued each, context B one flow.  A's
flow count must not buy it a larger share: B's small write goes out in the
first poll although A's backlog is many polls long, and while both are
backlogged the wire bytes per context stay within one quantum (plus one
segment) of each other.  Run on the C engine and the Python twin.
"""

from __future__ import annotations

import pytest
from fp_harness import FlowSpec, FPHarness, stream_bytes

from flextcp.fastpath_py import FP_TX_POLL_BYTES, FP_TX_POLL_BYTES_SHARED, FP_TX_QUANTUM, FP_TX_SHARED_US
from flextcp.native import lib
from nicemu.wire import TAS_PK_TCP, parse_frame

CTX_A, CTX_B = 1, 2
N_A = 16
FID_B = N_A
MSS = 1460
FRAME_MAX = MSS + 14 + 20 + 20  # Ethernet + IPv4 + TCP, no options


def _harness(pure: bool, tx_batch: int, b_tx_len: int) -> FPHarness:
    h = FPHarness(pure, n_flows=N_A + 1, tx_batch=tx_batch)
    a = h.add_ctx(CTX_A, region_len=1 << 21)
    b = h.add_ctx(CTX_B, region_len=1 << 20)
    for fid in range(N_A + 1):
        spec = FlowSpec(
            rx_len=512,
            tx_len=1 << 16 if fid < N_A else b_tx_len,
            mss=MSS,
            ts=False,
            sack=False,
            snd_wnd=1 << 20,
            local_port=1000 + fid,
        )
        h.install_flow(fid, a if fid < N_A else b, spec)
        h.flow(fid).cwnd = 1 << 20  # only the scheduler limits what goes out
    return h


def _write(h: FPHarness, fid: int, n: int) -> None:
    """The app writes n bytes at the start of an empty tx buffer (a slice
    copy: FPHarness.app_write goes byte by byte) and posts the update."""
    fl = h.flows[fid]
    assert fl.app_tx_head == 0 and n <= fl.spec.tx_len
    mv = fl.ctx.region.view(fl.tx_off, fl.spec.tx_len)
    try:
        mv[:n] = stream_bytes(0, n, fid)
    finally:
        mv.release()
    fl.app_tx_head = n
    assert h.app_update(fid) == 1


def _by_ctx(frames: list[bytes]) -> tuple[dict[str, int], dict[str, int], int | None]:
    """Wire bytes and payload bytes per context, and the wire bytes that
    went out before B's first data segment."""
    wire = {"A": 0, "B": 0}
    payload = {"A": 0, "B": 0}
    before_b = None
    for fr in frames:
        r, p = parse_frame(fr)
        assert r == TAS_PK_TCP
        who = "B" if p.src_port == 1000 + FID_B else "A"
        if who == "B" and p.payload_len and before_b is None:
            before_b = wire["A"] + wire["B"]
        wire[who] += len(fr)
        payload[who] += p.payload_len
    return wire, payload, before_b


@pytest.fixture(params=["c", "py"])
def engine(request):
    return request.param == "py"


@pytest.mark.parametrize("tx_batch", [64, 1000])
def test_small_write_of_one_flow_app_goes_out_in_first_poll(engine, tx_batch):
    """tx_batch 64: the poll's segment budget binds (the old per-flow round
    robin reached only 4 of A's flows); 1000: the byte budget binds."""
    h = _harness(engine, tx_batch, 1 << 12)
    try:
        for fid in range(N_A):
            _write(h, fid, 1 << 16)
        _write(h, FID_B, 64)  # queued last
        _, frames = h.poll()
        wire, payload, before_b = _by_ctx(frames)
        assert payload["B"] == 64
        assert payload["A"] < N_A << 16  # A's backlog exceeds the poll's budget
        # B waited behind at most one quantum of A's (plus the segment that
        # crossed it)
        assert before_b is not None and before_b <= FP_TX_QUANTUM + FRAME_MAX
        assert wire["A"] + wire["B"] <= FP_TX_POLL_BYTES + FRAME_MAX
        assert len(frames) <= tx_batch
        assert h.stat("tx_bytes") == wire["A"] + wire["B"]
        # B's flow left the queue; A's still queued
        assert not h.flow(FID_B).flags & lib.TAS_FF_IN_TXQ
        assert all(h.flow(fid).flags & lib.TAS_FF_IN_TXQ for fid in range(N_A))
    finally:
        h.close()


@pytest.mark.parametrize("tx_batch", [64, 1000])
def test_backlogged_contexts_share_bytes_equally(engine, tx_batch):
    h = _harness(engine, tx_batch, 1 << 19)
    try:
        for fid in range(N_A):
            _write(h, fid, 1 << 16)
        _write(h, FID_B, 1 << 19)
        tot = {"A": 0, "B": 0}
        polls = 0
        while True:
            _, frames = h.poll()
            wire, payload, _ = _by_ctx(frames)
            assert wire["A"] + wire["B"] <= FP_TX_POLL_BYTES + FRAME_MAX
            for k in tot:
                tot[k] += payload[k]
            if tot["B"] >= 1 << 19 or tot["A"] >= N_A << 16:
                break  # one of them is no longer backlogged
            polls += 1
            assert abs(tot["A"] - tot["B"]) <= FP_TX_QUANTUM + MSS, (polls, tot)
        assert polls >= 3
        assert tot["A"] > 0 and tot["B"] > 0
    finally:
        h.close()


def test_poll_budget_is_short_only_while_contexts_share(engine):
    """One context alone keeps the long polls (FP_TX_POLL_BYTES); once B
    has queued beside A, B's write goes out first and the polls stay short
    (FP_TX_POLL_BYTES_SHARED) for FP_TX_SHARED_US after the last overlap."""
    h = _harness(engine, 1000, 1 << 12)
    try:
        for fid in range(N_A):
            _write(h, fid, 1 << 16)
        long_poll = sum(len(fr) for fr in h.poll()[1])
        assert FP_TX_POLL_BYTES_SHARED + FRAME_MAX < long_poll <= FP_TX_POLL_BYTES + FRAME_MAX
        _write(h, FID_B, 64)
        _, frames = h.poll()
        wire, payload, before_b = _by_ctx(frames)
        assert payload["B"] == 64 and before_b == 0  # a context joining the ring goes first
        assert wire["A"] + wire["B"] <= FP_TX_POLL_BYTES_SHARED + FRAME_MAX
        t0 = h.now
        _, frames = h.poll(t0 + FP_TX_SHARED_US - 1)  # A alone again, shared recently
        assert 0 < sum(len(fr) for fr in frames) <= FP_TX_POLL_BYTES_SHARED + FRAME_MAX
        _, frames = h.poll(t0 + FP_TX_SHARED_US)
        assert sum(len(fr) for fr in frames) > FP_TX_POLL_BYTES_SHARED + FRAME_MAX
    finally:
        h.close()


def test_flow_of_unmapped_context_leaves_the_queue(engine):
    """A flow whose context this core no longer maps cannot send; it leaves
    the queue as before (the scheduler keeps it in its context's slot, not
    the mapped contexts'), and A's flows are not held up by it."""
    h = _harness(engine, 64, 1 << 12)
    try:
        _write(h, FID_B, 1000)
        _write(h, 0, 3000)
        h.poll()  # B's update is read before its context goes away
        assert h.engine.remove_ctx(CTX_B) == 0
        h.flow(FID_B).tx_head = 2000  # as if an update raced the removal
        assert h.post_ktx(lib.TAS_KTX_KICK, FID_B) == 1
        _write(h, 1, 3000)
        _, frames = h.poll()
        wire, payload, _ = _by_ctx(frames)
        assert payload == {"A": 3000, "B": 0}
        assert not h.flow(FID_B).flags & lib.TAS_FF_IN_TXQ
    finally:
        h.close()
