"""Sender loss recovery with the SACK scoreboard (issue 4): RFC 6675 loss
marking and pipe, undo of spurious recoveries (Eifel / D-SACK), tail loss
probes (RFC 8985), and the SACK-skipping go-back-N after an RTO.  Every
case runs on the C fast path and on its Python twin (tests/fp_harness.py),
and the scoreboard functions are checked against a byte-set model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flextcp import sack_py
from flextcp.native import ffi, lib
from nicemu.wire import TAS_PK_TCP, parse_frame
from tests.fp_harness import FlowSpec, FPHarness, stream_bytes

M32 = 0xFFFFFFFF
SEG = 524  # payload per segment: MSS 536 minus 12 bytes of timestamps
CTX = 3


@pytest.fixture(params=["c", "py"])
def h(request):
    hs = FPHarness(request.param == "py")
    yield hs
    hs.close()


def tcp(frame: bytes):
    r, p = parse_frame(frame)
    assert r == TAS_PK_TCP
    return p


def cc_of(h: FPHarness, fid: int = 0):
    t = lib.tas_cc_table(h.stack.ptr(h.lay.ft_off), h.lay.ft_len, h.n_flows)
    assert t != ffi.NULL
    return t + fid


def start(h: FPHarness, nseg: int = 8, cwnd_segs: int = 20, t0: int = 1_000_000):
    """One flow with nseg segments sent at t0; returns (spec, una, frames)."""
    ctx = h.add_ctx(CTX)
    spec = FlowSpec(tx_len=16384, snd_wnd=65535)
    h.install_flow(0, ctx, spec)
    h.flow(0).cwnd = cwnd_segs * 536
    h.app_write(0, stream_bytes(0, nseg * SEG, 3))
    _, frames = h.poll(t0)
    assert len(frames) == nseg
    return spec, h.snd_una(0), frames


def ack(h, a, blocks=(), *, now, tsval=9000, tsecr=0):
    h.inject(
        h.peer_frame(0, seq=h.rcv_nxt(0), ack=a, win=0xFFFF, tsval=tsval, tsecr=tsecr, sack=list(blocks))
    )
    return h.poll(now)[1]


def seqs(frames) -> list[int]:
    return [tcp(fr).seq for fr in frames if tcp(fr).payload_len]


def test_spurious_recovery_is_undone_by_timestamps(h):
    """Reordering, not loss: the head arrives late, after three segments
    above it were SACKed and the head was retransmitted.  The ACK that
    fills the hole echoes the original's timestamp (older than our first
    retransmission): the window cut is undone, and the reordering degree
    learnt raises the DupThresh."""
    t0 = 1_000_000
    _, una, frames = start(h, t0=t0)
    ts_orig = tcp(frames[0]).tsval
    cwnd0 = h.flow(0).cwnd
    blocks = [(una + SEG, una + 4 * SEG)]
    out = ack(h, una, blocks, now=t0 + 3000, tsecr=ts_orig)
    f = h.flow(0)
    assert f.flags & lib.TAS_FF_RECOVERY and f.cwnd < cwnd0
    assert seqs(out)[:1] == [una & M32]
    ts_rexmit = tcp(out[0]).tsval
    assert ts_rexmit > ts_orig
    ack(h, una + 4 * SEG, now=t0 + 5000, tsecr=ts_orig)
    f, cc = h.flow(0), cc_of(h)
    assert not f.flags & lib.TAS_FF_RECOVERY
    assert f.cwnd >= cwnd0 and h.stat("recovery_undo") == 1 and cc.cnt_undo == 1
    assert cc.reord >= 4 and cc.reo_mult == 2


def test_real_loss_is_not_undone(h):
    """The same, but the hole is filled by our retransmission (its
    timestamp is echoed): a real loss, the window stays cut."""
    t0 = 1_000_000
    _, una, frames = start(h, t0=t0)
    cwnd0 = h.flow(0).cwnd
    out = ack(h, una, [(una + SEG, una + 4 * SEG)], now=t0 + 3000, tsecr=tcp(frames[0]).tsval)
    ts_rexmit = tcp(out[0]).tsval
    ack(h, una + 4 * SEG, now=t0 + 5000, tsecr=ts_rexmit)
    f = h.flow(0)
    assert f.cwnd < cwnd0 and h.stat("recovery_undo") == 0


def test_all_retransmissions_dsacked_undoes(h):
    """Without usable timestamps: when every retransmission of the episode
    comes back as a D-SACK (RFC 2883), the recovery was spurious -- even
    after it ended."""
    t0 = 1_000_000
    _, una, _ = start(h, t0=t0)
    cwnd0 = h.flow(0).cwnd
    out = ack(h, una, [(una + SEG, una + 8 * SEG)], now=t0 + 3000)
    assert seqs(out) == [una & M32]
    assert cc_of(h).undo_retrans == 1
    # the original head arrived after all (no echo): recovery ends, cut
    ack(h, una + 8 * SEG, now=t0 + 4000)
    assert not h.flow(0).flags & lib.TAS_FF_RECOVERY and h.flow(0).cwnd < cwnd0
    # then our copy: D-SACK for it
    ack(h, una + 8 * SEG, [(una, una + SEG)], now=t0 + 4500)
    assert h.flow(0).cwnd == cwnd0 and h.stat("recovery_undo") == 1


def test_tail_loss_probe_resends_last_segment_then_new_data(h):
    """RFC 8985 7.3: with nothing new to send the probe is the last segment
    again; once the peer acknowledges, the next probe may go; with new data
    waiting, the probe is one new segment even beyond cwnd."""
    t0 = 1_000_000
    _, una, frames = start(h, nseg=4, t0=t0)
    assert lib.tas_sp_tlp(h.ft.raw, 0) == 0
    assert h.flow(0).flags & lib.TAS_FF_TLP_OUT
    h.post_ktx(lib.TAS_KTX_KICK, 0)
    _, out = h.poll(t0 + 20_000)
    assert seqs(out) == [(una + 3 * SEG) & M32]
    assert out[0][tcp(out[0]).payload_off :] == frames[3][tcp(frames[3]).payload_off :]
    assert h.stat("tlp_probes") == 1 and cc_of(h).cnt_tlp == 1
    ack(h, una + SEG, now=t0 + 21_000)
    assert not h.flow(0).flags & lib.TAS_FF_TLP_OUT
    # cwnd full, new data waiting: the probe is new data
    h.flow(0).cwnd = 536
    h.app_write(0, stream_bytes(4 * SEG, SEG, 3))
    assert h.poll(t0 + 22_000)[1] == []
    lib.tas_sp_tlp(h.ft.raw, 0)
    h.post_ktx(lib.TAS_KTX_KICK, 0)
    _, out = h.poll(t0 + 40_000)
    assert seqs(out) == [(una + 4 * SEG) & M32] and h.flow(0).tx_max == 5 * SEG


def test_go_back_after_rto_skips_sacked_data(h):
    """After an RTO the sender goes back to SND.UNA but does not resend what
    the peer SACKed (the scoreboard survives the timeout)."""
    t0 = 1_000_000
    _, una, _ = start(h, t0=t0)
    ack(h, una, [(una + 2 * SEG, una + 6 * SEG)], now=t0 + 3000)
    assert h.flow(0).flags & lib.TAS_FF_RECOVERY
    assert lib.tas_sp_rto_fire(h.ft.raw, 0, (t0 + 300_000) & M32) == 1
    h.flow(0).cwnd = 8 * 536
    h.post_ktx(lib.TAS_KTX_KICK, 0)
    _, out = h.poll(t0 + 300_000)
    sent = seqs(out)
    assert sent == [(una + k * SEG) & M32 for k in (0, 1, 6, 7)]
    assert h.stat("sack_skipped") == 4 * SEG


def test_lost_retransmission_after_rto_is_resent_without_waiting(h):
    """Going back after an RTO: the head went out again and was lost again;
    SACKs keep arriving for 2 SRTT + 1 ms without it -- it is resent, not
    left to a second (backed-off) RTO."""
    t0 = 1_000_000
    _, una, _ = start(h, t0=t0)
    ack(h, una, [(una + 2 * SEG, una + 6 * SEG)], now=t0 + 3000)
    t_rto = t0 + 300_000
    lib.tas_sp_rto_fire(h.ft.raw, 0, t_rto & M32)
    h.side(0).srtt_us, h.flow(0).cwnd = 1000, 536
    h.post_ktx(lib.TAS_KTX_KICK, 0)
    assert seqs(h.poll(t_rto)[1]) == [una & M32]
    # too early: nothing
    assert seqs(ack(h, una, [(una + 2 * SEG, una + 7 * SEG)], now=t_rto + 2000)) == []
    out = ack(h, una, [(una + 2 * SEG, una + 8 * SEG)], now=t_rto + 3500)
    assert seqs(out) == [una & M32]
    assert h.side(0).rto_backoff == 1


def test_second_rto_forgets_the_scoreboard(h):
    """Repeated timeouts: the peer may have reneged (RFC 2018 section 8), so
    the sender stops trusting its SACK information and resends everything."""
    t0 = 1_000_000
    _, una, _ = start(h, t0=t0)
    ack(h, una, [(una + 2 * SEG, una + 6 * SEG)], now=t0 + 3000)
    lib.tas_sp_rto_fire(h.ft.raw, 0, (t0 + 300_000) & M32)
    lib.tas_sp_rto_fire(h.ft.raw, 0, (t0 + 700_000) & M32)
    h.flow(0).cwnd = 8 * 536
    h.post_ktx(lib.TAS_KTX_KICK, 0)
    _, out = h.poll(t0 + 700_000)
    assert seqs(out) == [(una + k * SEG) & M32 for k in range(8)]
    assert sack_py.sb_empty(cc_of(h))


def test_scan_asks_for_a_probe_before_the_rto():
    """The slow path's timer scan: a probe after max(2 SRTT, 10 ms), once;
    the RTO at its time; C and twin agree."""
    from flextcp import spflow_py

    h = FPHarness(False)
    try:
        start(h, t0=1_000_000)
        x = h.side(0)
        x.srtt_us, x.rto_us, x.rto_start_us = 1000, 200_000, 1_000_000

        def scan(now):
            ids = ffi.new("uint32_t[4]")
            why = ffi.new("uint8_t[4]")
            cur = ffi.new("uint32_t *", 0)
            n = lib.tas_sp_scan_timeouts(h.ft.raw, now, 1, cur, ids, why, 4)
            c = [(ids[i], why[i]) for i in range(n)]
            py = spflow_py.scan_timeouts([h.ft.flow(0)], [h.ft.side(0)], 1, now, 1, 0, 4)
            assert c == list(zip(py[0], py[1], strict=True))
            return c

        assert scan(1_009_000) == []
        assert scan(1_010_000) == [(0, lib.TAS_TMO_TLP)]
        lib.tas_sp_tlp(h.ft.raw, 0)
        assert scan(1_100_000) == []
        assert scan(1_200_000) == [(0, lib.TAS_TMO_RTO)]
    finally:
        h.close()


# ---------------------------------------------------------------- burst loss


def burst(h, nseg: int = 40, t0: int = 1_000_000):
    """nseg segments out in one window (cwnd and the peer's window allow
    them all); returns SND.UNA."""
    ctx = h.add_ctx(CTX, 1 << 18)
    h.install_flow(0, ctx, FlowSpec(tx_len=65536, snd_wnd=65535))
    h.flow(0).cwnd = nseg * 536
    h.side(0).srtt_us = 20_000
    h.app_write(0, stream_bytes(0, nseg * SEG, 3))
    _, frames = h.poll(t0)
    assert len(frames) == nseg
    return h.snd_una(0)


def test_burst_loss_marks_the_whole_gap_lost(h):
    """A slow-start overshoot drops every other segment of a window.  The
    peer (Linux) sends a duplicate ACK per segment that arrives, each with
    its newest three SACK blocks; the 5-range scoreboard overflows.  It
    keeps the highest range, and everything up to DupThresh below the
    highest SACKed byte counts as lost (FACK), so the recovery resends the
    whole gap at once, as far as the window allows -- not three holes per
    round trip (the start-up stall of docs/CC.md)."""
    t0 = 1_000_000
    una = burst(h, t0=t0)
    got: list[tuple[int, int]] = []
    out: list[bytes] = []
    for k, seg in enumerate(range(1, 40, 2)):
        got.insert(0, (una + seg * SEG, una + (seg + 1) * SEG))
        out += ack(h, una, got[:3], now=t0 + 20_000 + 10 * k)
    f = h.flow(0)
    assert f.flags & lib.TAS_FF_RECOVERY
    resent = sorted(((s - una) & M32) // SEG for s in seqs(out))
    # the cut window (half of 40 segments) is spent on holes all over the gap
    assert len(resent) >= 15, resent
    assert max(resent) > 20, resent
    assert all(r < 39 for r in resent)
    assert sack_py.sb_view(cc_of(h), f).e[-1] == 40 * SEG


def test_stalled_recovery_marks_everything_below_the_highest_sack_lost(h):
    """The peer's ACKs stop (the rest of the window was lost): after SRTT
    plus the reordering window without progress, every hole below the
    highest SACKed byte is lost (RFC 8985's rule, with the send order of
    the original transmissions), not only the head."""
    t0 = 1_000_000
    una = burst(h, nseg=30, t0=t0)
    blocks = [(una + s * SEG, una + (s + 1) * SEG) for s in (24, 12, 10)]
    out = ack(h, una, blocks, now=t0 + 20_000)
    first = {((s - una) & M32) // SEG for s in seqs(out)}
    assert h.flow(0).flags & lib.TAS_FF_RECOVERY and max(first) < 10
    h.flow(0).cwnd = 30 * 536
    # a late duplicate: 35 ms after the timer started (SRTT 20 ms + 5 ms
    # reordering window < 35 ms < 2 SRTT + 1 ms, the lost-head rule)
    later = set(((s - una) & M32) // SEG for s in seqs(ack(h, una, blocks, now=t0 + 35_000)))
    assert set(range(13, 24)) <= later and not later & {10, 12, 24}, (first, later)


def test_lost_retransmissions_are_all_resent_not_one_head_per_timeout(h):
    """A burst of retransmissions into a full queue is lost too: 2 SRTT +
    1 ms after the timer started, with SACKs still arriving and no
    progress, every hole is resent again from SND.UNA (within the window),
    not only the head (one hole per 2 SRTT was the crawl after a CUBIC
    overshoot, docs/RELIABILITY.md)."""
    t0 = 1_000_000
    una = burst(h, nseg=30, t0=t0)
    blocks = [(una + s * SEG, una + (s + 1) * SEG) for s in (24, 12, 10)]
    ack(h, una, blocks, now=t0 + 20_000)
    h.flow(0).cwnd = 30 * 536
    first = set(((s - una) & M32) // SEG for s in seqs(ack(h, una, blocks, now=t0 + 35_000)))
    assert set(range(1, 10)) <= first
    again = set(((s - una) & M32) // SEG for s in seqs(ack(h, una, blocks, now=t0 + 42_000)))
    assert set(range(0, 10)) <= again, again
    # the holes above the DupThresh limit again once the time rule holds
    later = set(((s - una) & M32) // SEG for s in seqs(ack(h, una, blocks, now=t0 + 68_000)))
    assert set(range(13, 24)) <= later, later
    assert h.side(0).rto_backoff == 0


def test_out_of_order_batch_reports_every_range(h):
    """Segments that arrive out of order in one receive batch open several
    ranges: each range gets reported (a duplicate ACK when the batch moves
    on to another range, RFC 5681 4.2), not only the last three in one ACK
    at the end of the batch."""
    ctx = h.add_ctx(CTX)
    h.install_flow(0, ctx, FlowSpec(rx_len=16384))
    rx0 = h.flow(0).rx_seq0
    for k in range(6):
        h.inject(data(h, 1000 + 1000 * k, 500))
    _, out = h.poll(1_000_000)
    reported = {b for fr in out for b in sack_blocks(fr, rx0)}
    assert reported == {(1000 + 1000 * k, 1500 + 1000 * k) for k in range(6)}
    assert all(tcp(fr).ack == rx0 & M32 for fr in out)


# ---------------------------------------------------------------- scoreboard model


class _Cc:
    def __init__(self) -> None:
        self.sb_start = [0] * 5
        self.sb_end = [0] * 5


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    una=st.integers(0, M32),
    adds=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)), max_size=12),
)
def test_scoreboard_matches_a_byte_set(una, adds):
    """What the scoreboard reports SACKed is always a subset of what was
    SACKed (a range given up only costs a resend), and while it has room it
    is exactly that set; holes and the next hole agree with it."""
    cc = _Cc()
    truth: set[int] = set()
    overflowed = False
    for s, n in adds:
        sack_py.sb_add(cc, una, (una + s * 100) & M32, (una + (s + n) * 100) & M32)
        truth |= set(range(s, s + n))
        overflowed |= sum(1 for u in truth if u - 1 not in truth) > 5

    class F:
        tx_una = una
        tx_max = una + 80 * 100

    v = sack_py.sb_view(cc, F)
    have = {u for s, e in zip(v.s, v.e, strict=True) for u in range(s // 100, e // 100)}
    assert have <= truth
    if not overflowed:
        assert have == truth
    if truth:
        # the forward-most SACKed byte is never given up (the loss rule's FACK)
        assert max(have) == max(truth)
    assert v.sacked == 100 * len(have)
    assert sack_py.sb_sacked_below(v, 4000) == 100 * len([u for u in have if u < 40])
    assert sack_py.sb_holes(v, 1000, 5000) == 100 * len([u for u in range(10, 50) if u not in have])
    hole = sack_py.sb_next_hole(v, 0, 8000)
    if have:
        first = min(u for u in range(80) if u not in have)
        assert hole is not None and hole[0] == first * 100 or first > max(have)


# ---------------------------------------------------------------- D-SACK generation


def data(h, pos: int, n: int, tsval: int = 5000):
    f = h.flow(0)
    return h.peer_frame(
        0, seq=f.rx_seq0 + pos, ack=h.snd_una(0), payload=stream_bytes(pos, n), tsval=tsval
    )


def sack_blocks(frame, rx0: int) -> list[tuple[int, int]]:
    p = tcp(frame)
    return [((p.sack_start[i] - rx0) & M32, (p.sack_end[i] - rx0) & M32) for i in range(p.n_sack)]


def test_duplicates_are_reported_as_dsack_once(h):
    """RFC 2883: a segment we already had (below the cumulative ACK, partly
    below it, or inside an out-of-order range we hold) is reported as the
    first SACK block of the next ACK, once; the other blocks follow."""
    ctx = h.add_ctx(CTX)
    h.install_flow(0, ctx, FlowSpec(rx_len=16384))
    rx0 = h.flow(0).rx_seq0
    h.inject(data(h, 0, 1000))
    h.poll(1_000_000)
    # entirely old
    h.inject(data(h, 200, 300))
    _, out = h.poll(1_001_000)
    assert len(out) == 1 and sack_blocks(out[0], rx0) == [(200, 500)]
    assert tcp(out[0]).ack == (rx0 + 1000) & M32
    # the report is not repeated
    h.inject(data(h, 1000, 100))
    _, out = h.poll(1_002_000)
    assert all(tcp(fr).n_sack == 0 for fr in out)
    # an out-of-order range, then the same bytes again: D-SACK first, then the range
    h.inject(data(h, 2000, 500))
    h.poll(1_003_000)
    h.inject(data(h, 2100, 200))
    _, out = h.poll(1_004_000)
    assert sack_blocks(out[-1], rx0) == [(2100, 2300), (2000, 2500)]
    # partly old: only the duplicated part
    h.inject(data(h, 900, 400))
    _, out = h.poll(1_005_000)
    assert sack_blocks(out[-1], rx0)[0] == (900, 1100)
    assert h.flow(0).rx_head == 1300 and h.app_read(0, 1300) == stream_bytes(0, 1300)


def test_timer_started_by_the_slow_path_just_ahead_is_not_ancient(h):
    """The slow path restarts the retransmission timer from its own clock,
    which may read a little later than the fast path's: a start slightly
    "in the future" must count as now, not as 2^32 us ago (which would mark
    the head lost by the time rule at the first SACK)."""
    t0 = 1_000_000
    _, una, _ = start(h, t0=t0)
    x = h.side(0)
    x.srtt_us, x.rto_start_us = 1000, (t0 + 5000 + 300) & M32
    out = ack(h, una, [(una + SEG, una + 2 * SEG)], now=t0 + 5000)
    assert not h.flow(0).flags & lib.TAS_FF_RECOVERY and seqs(out) == []
    # ... while a start well in the past still does
    h.side(0).rto_start_us = t0 & M32
    out = ack(h, una, [(una + SEG, una + 2 * SEG)], now=t0 + 5000)
    assert h.flow(0).flags & lib.TAS_FF_RECOVERY and seqs(out) == [una & M32]
