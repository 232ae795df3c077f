"""Issue 6, fast-path side of congestion control: the C engine and its
Python twin agree on the CC side table (struct tas_flow_cc) and the frames,
on random scenarios with ECN (CE in, ECE/CWR out), slow-path-owned windows
(TAS_CC_SP), loss events and pacing; plus directed checks of each rule and
of the slow-path helpers (sp_flow.c tas_sp_cc_* against spflow_py)."""

from __future__ import annotations

import random

import pytest
from fp_harness import LOCAL_IP, LOCAL_MAC, M32, REMOTE_IP, REMOTE_MAC, FlowSpec, FPHarness, stream_bytes

from flextcp import spflow_py
from flextcp.native import ffi, lib
from kernel_slowpath.cc import Interval
from kernel_slowpath.ccloop import CCLoop
from nicemu.wire import TAS_OPT_TS, TAS_TCP_ACK, Segment, build_tcp, parse_frame

ECE, CWR = lib.TAS_TCP_ECE, lib.TAS_TCP_CWR
CC_SIZE = ffi.sizeof("struct tas_flow_cc")
FLOW_SIZE = ffi.sizeof("struct tas_flow")


def cc_table(h: FPHarness):
    t = lib.tas_cc_table(h.stack.ptr(h.lay.ft_off), h.lay.ft_len, h.n_flows)
    assert t != ffi.NULL
    return t


def cc_bytes(h: FPHarness, fid: int) -> bytes:
    return bytes(ffi.buffer(cc_table(h) + fid, CC_SIZE))


def frame(h: FPHarness, fid: int, *, seq: int, ack: int, payload: bytes = b"", flags: int = TAS_TCP_ACK,
          tos: int = 0, tsval: int | None = None, tsecr: int = 0) -> bytes:  # fmt: skip
    spec = h.flows[fid].spec
    s = Segment(src_mac=REMOTE_MAC, dst_mac=LOCAL_MAC, src_ip=REMOTE_IP, dst_ip=LOCAL_IP,
                src_port=spec.remote_port, dst_port=spec.local_port, seq=seq & M32, ack=ack & M32,
                win=0xFFFF, flags=flags, ip_tos=tos)  # fmt: skip
    if tsval is not None:
        s.opts |= TAS_OPT_TS
        s.tsval, s.tsecr = tsval & M32, tsecr & M32
    return build_tcp(s, payload)


def setup(h: FPHarness, *, sp: bool, ecn: bool, rate: int = 0, beta: int = 700, mss: int = 536, **kw):
    ctx = h.add_ctx(1)
    spec = FlowSpec(mss=mss, tx_len=kw.pop("tx_len", 16384), rx_len=kw.pop("rx_len", 4096),
                    snd_wnd=kw.pop("snd_wnd", 0xFFFF), **kw)  # fmt: skip
    h.install_flow(0, ctx, spec)
    assert lib.tas_sp_cc_init(cc_table(h), h.n_flows, 0, lib.TAS_CC_SP if sp else 0, beta) == 0
    if ecn:
        h.flow(0).flags |= lib.TAS_FF_ECN
    cc_table(h)[0].pace_rate = rate
    return spec


class Pair:
    """C and Python harnesses in lockstep; every step compares everything."""

    def __init__(self, **kw) -> None:
        self.hs = [FPHarness(pure) for pure in (False, True)]
        for h in self.hs:
            setup(h, **kw)
        self.ref = self.hs[0]
        self.ts = 1000

    def close(self) -> None:
        for h in self.hs:
            h.close()

    def step(self, fn) -> list[bytes]:
        outs = []
        for h in self.hs:
            fn(h)
            outs.append(h.poll(h.now))
        (wc, fc), (wp, fpy) = outs
        assert wc == wp and fc == fpy
        sc, sp = (h.snapshot() for h in self.hs)
        for k in sc:
            assert sc[k] == sp[k], f"state differs: {k}"
        assert cc_bytes(self.hs[0], 0) == cc_bytes(self.hs[1], 0), "cc side table differs"
        return fc

    def advance(self, us: int) -> None:
        for h in self.hs:
            h.now += us


@pytest.mark.parametrize("seed", range(12))
def test_c_and_python_agree_on_cc(seed):
    rnd = random.Random(seed)
    pair = Pair(sp=rnd.random() < 0.7, ecn=rnd.random() < 0.8, rate=rnd.choice([0, 0, 2_000_000, 40_000_000]),
                beta=rnd.choice([0, 500, 700]), mss=rnd.choice([200, 536]))  # fmt: skip
    try:
        ref = pair.ref
        for _ in range(150):
            op = rnd.random()
            f = ref.flow(0)
            una, smax = ref.snd_una(0), ref.snd_max(0)
            out = (smax - una) & M32
            pair.ts += 3
            if op < 0.25:
                n = rnd.choice([100, 1000, 5000])
                pair.step(lambda h, n=n: h.app_write(0, stream_bytes(h.flows[0].app_tx_head, n)))
            elif op < 0.55 and out:
                ack = una + rnd.randint(1, out)
                fl = ECE if rnd.random() < 0.4 else 0
                fr = frame(ref, 0, seq=ref.rcv_nxt(0), ack=ack, flags=TAS_TCP_ACK | fl,
                           tsval=pair.ts, tsecr=ref.now // 1000 - 2)  # fmt: skip
                pair.step(lambda h, fr=fr: h.inject(fr))
            elif op < 0.65 and out:
                fr = frame(ref, 0, seq=ref.rcv_nxt(0), ack=una, flags=TAS_TCP_ACK | (ECE if rnd.random() < 0.3 else 0),
                           tsval=pair.ts)  # fmt: skip
                pair.step(lambda h, fr=fr: [h.inject(fr) for _ in range(3)])
            elif op < 0.8:
                n = rnd.choice([10, 300])
                pos = f.rx_head
                tos = rnd.choice([0, 2, 3, 3])
                fr = frame(ref, 0, seq=ref.rcv_nxt(0), ack=una, payload=stream_bytes(pos, n), tos=tos,
                           flags=TAS_TCP_ACK | (CWR if rnd.random() < 0.2 else 0), tsval=pair.ts)  # fmt: skip
                pair.step(lambda h, fr=fr: (h.inject(fr), h.app_read(0, 1 << 20)))
            elif op < 0.9:
                w = rnd.choice([600, 3000, 20000])
                ids = ffi.new("uint32_t[]", [0])

                def write(h, w=w, ids=ids):
                    c = cc_table(h)
                    lib.tas_sp_cc_write(h.ft.raw if hasattr(h.ft, "raw") else _ft(h), c, ids, 1,
                                        ffi.new("uint32_t[]", [w]), ffi.new("uint64_t[]", [c[0].pace_rate]),
                                        ffi.new("uint32_t[]", [c[0].cnt_loss]))  # fmt: skip

                pair.step(write)
            else:
                us = rnd.choice([50, 300, 2000])
                pair.advance(us)
                pair.step(lambda h: None)
    finally:
        pair.close()


def _ft(h: FPHarness):
    ft = ffi.new("struct tas_ft *")
    assert lib.tas_ft_attach(ft, h.stack.ptr(h.lay.ft_off), h.lay.ft_len, h.n_flows) == 0
    h._ft_keep = ft
    return ft


@pytest.fixture(params=[False, True], ids=["c", "py"])
def h(request):
    with FPHarness(request.param) as hh:
        yield hh


def tcp(fr: bytes):
    r, p = parse_frame(fr)
    assert r >= 0
    return p


def test_ect_on_new_data_cwr_once_and_ece_counted(h):
    spec = setup(h, sp=True, ecn=True)
    h.app_write(0, stream_bytes(0, 3000))
    _, frames = h.poll()
    segs = [tcp(x) for x in frames]
    assert segs and all(p.ip_tos & 3 == 2 and p.payload_len for p in segs)  # ECT(0)
    una = h.snd_una(0)
    h.inject(frame(h, 0, seq=h.rcv_nxt(0), ack=una + 1072, flags=TAS_TCP_ACK | ECE))
    h.app_write(0, stream_bytes(3000, 2000))
    _, frames = h.poll()
    cc = cc_table(h)[0]
    assert cc.cnt_ecn_bytes == 1072 and cc.cnt_ecn_acks == 1
    new = [tcp(x) for x in frames if tcp(x).payload_len]
    assert new and new[0].tcp_flags & CWR and not any(p.tcp_flags & CWR for p in new[1:])
    # the slow path owns the window: an ACK does not grow it
    assert h.flow(0).cwnd == 10 * spec.mss


def test_fp_mode_ecn_halves_once_per_window(h):
    setup(h, sp=False, ecn=True)
    h.app_write(0, stream_bytes(0, 5000))
    h.poll()
    f = h.flow(0)
    una = h.snd_una(0)
    h.inject(frame(h, 0, seq=h.rcv_nxt(0), ack=una + 536, flags=TAS_TCP_ACK | ECE))
    h.poll()
    w = f.cwnd
    assert w < 10 * 536
    h.inject(frame(h, 0, seq=h.rcv_nxt(0), ack=una + 1072, flags=TAS_TCP_ACK | ECE))
    h.poll()
    assert w <= f.cwnd <= w + 536  # same window: no second reduction (CA growth only)


def test_receiver_echoes_ce_per_segment(h):
    setup(h, sp=True, ecn=True)
    seq = h.rcv_nxt(0)
    una = h.snd_una(0)
    # two plain segments, then a CE one in the same batch: the plain ones are
    # ACKed at once without ECE, the batch-end ACK carries ECE
    for i, tos in enumerate((2, 2, 3)):
        h.inject(frame(h, 0, seq=seq + 100 * i, ack=una, payload=stream_bytes(100 * i, 100), tos=tos))
    _, frames = h.poll()
    acks = [tcp(x) for x in frames]
    assert [bool(p.tcp_flags & ECE) for p in acks] == [False, True]
    assert acks[0].ack == (seq + 200) & M32 and acks[1].ack == (seq + 300) & M32
    assert cc_table(h)[0].cnt_ce_rx == 1
    h.inject(frame(h, 0, seq=seq + 300, ack=una, payload=stream_bytes(300, 100), tos=2))
    _, frames = h.poll()
    assert [bool(tcp(x).tcp_flags & ECE) for x in frames] == [False]


def test_no_ecn_without_negotiation(h):
    setup(h, sp=True, ecn=False)
    h.app_write(0, stream_bytes(0, 1000))
    _, frames = h.poll()
    assert all(tcp(x).ip_tos & 3 == 0 for x in frames)
    h.inject(frame(h, 0, seq=h.rcv_nxt(0), ack=h.snd_una(0), payload=b"x" * 50, tos=3))
    _, frames = h.poll()
    assert not any(tcp(x).tcp_flags & ECE for x in frames)


def send_then_three_dupacks(h, nbytes: int = 5360):
    """Send nbytes, then three duplicate ACKs for the head (no SACK blocks:
    NewReno's fast retransmit).  Returns the flow and its side-table entry."""
    h.app_write(0, stream_bytes(0, nbytes))
    h.poll()
    una = h.snd_una(0)
    for _ in range(3):
        h.inject(frame(h, 0, seq=h.rcv_nxt(0), ack=una))
    h.poll()
    return h.flow(0), cc_table(h)[0]


def test_loss_event_counted_with_sp_beta(h):
    setup(h, sp=True, ecn=False, beta=700)
    f, cc = send_then_three_dupacks(h)
    assert cc.cnt_loss == 1
    assert cc.ssthresh == 5360 * 700 // 1000


def test_pacing_spaces_segments(h):
    setup(h, sp=True, ecn=False, rate=536_000)  # 1 segment per ms
    h.app_write(0, stream_bytes(0, 536 * 6))
    t0 = h.now
    _, frames = h.poll()
    # the slack lets a flow that was idle send ~1 segment ahead, then it waits
    assert 1 <= len(frames) <= 2
    due = h.stats.pace_due_us
    assert due > t0 and h.stats.paced_waits >= 1
    assert h.poll(due - 1)[1] == []
    assert len(h.poll(due)[1]) == 1
    sent = len(frames) + 1
    for k in range(1, 10):
        sent += len(h.poll(due + 1000 * k)[1])
    assert sent == -(-536 * 6 // 524)  # 524 B payload per segment next to timestamps
    assert h.stats.pace_due_us == 0  # nothing waiting any more


def test_sp_write_in_recovery_sets_exit_window(h):
    setup(h, sp=True, ecn=False, beta=500)
    f, cc = send_then_three_dupacks(h)
    ft = _ft(h)
    ids = ffi.new("uint32_t[]", [0])
    # a stale decision (taken before this loss) is refused
    assert lib.tas_sp_cc_write(ft, cc_table(h), ids, 1, ffi.new("uint32_t[]", [9999]), ffi.new("uint64_t[]", [0]),
                               ffi.new("uint32_t[]", [0])) == 0  # fmt: skip
    assert lib.tas_sp_cc_write(ft, cc_table(h), ids, 1, ffi.new("uint32_t[]", [3000]), ffi.new("uint64_t[]", [0]),
                               ffi.new("uint32_t[]", [1])) == 1  # fmt: skip
    assert f.flags & lib.TAS_FF_RECOVERY and cc.ssthresh == 3000
    h.inject(frame(h, 0, seq=h.rcv_nxt(0), ack=h.snd_max(0)))
    h.poll()
    assert f.cwnd == 3000 and cc.cnt_loss == 1


def memory_ft(n: int):
    """A flow table of n flows (records, side records, CC news) in ordinary
    memory: (its buffer, the attached struct tas_ft *)."""
    buf = ffi.from_buffer(bytearray(int(lib.tas_ft_bytes(n))))
    assert lib.tas_ft_init(buf, n) == 0
    ft = ffi.new("struct tas_ft *")
    assert lib.tas_ft_attach(ft, buf, len(buf), n) == 0
    return buf, ft


def test_spflow_cc_twin_matches_c():
    rnd = random.Random(7)
    n = 4
    buf, ft = memory_ft(n)
    cc = lib.tas_cc_table(buf, len(buf), n)
    assert cc != ffi.NULL and lib.tas_cc_table(buf, len(buf) - 1, n) == ffi.NULL
    sample = ffi.new("struct tas_cc_sample[]", n)
    ids = ffi.new("uint32_t[]", list(range(n)))
    for _ in range(200):
        flows = [ft.flows[i] for i in range(n)]
        for i, f in enumerate(flows):
            f.status = rnd.choice([0, 1, 1, 2])
            f.tx_una = rnd.randrange(1 << 40)
            f.tx_nxt = f.tx_una + rnd.randrange(1 << 20)
            f.tx_head = f.tx_nxt + rnd.randrange(1 << 20)
            cc[i].cnt_acked, f.mss, f.cwnd = (
                rnd.randrange(1 << 50),
                rnd.choice([536, 1460]),
                rnd.randrange(1 << 20),
            )
            f.flags = rnd.choice([0, lib.TAS_FF_RECOVERY])
            cc[i].mode, cc[i].cnt_loss = rnd.choice([0, 1]), rnd.randrange(3)
            cc[i].cnt_undo = rnd.randrange(1 << 32)
            cc[i].max_flight = rnd.randrange(1 << 20)
            cc[i].srtt_us, cc[i].rto_us = rnd.randrange(1 << 24), rnd.randrange(1 << 24)
        before = [bytes(ffi.buffer(cc + i, CC_SIZE)) + bytes(ffi.buffer(ft.flows + i, FLOW_SIZE)) for i in range(n)]
        # twin on copies
        copies = []
        for i in range(n):
            fc = ffi.new("struct tas_flow *")
            ffi.memmove(fc, ft.flows + i, FLOW_SIZE)
            ccc = ffi.new("struct tas_flow_cc *")
            ffi.memmove(ccc, cc + i, CC_SIZE)
            copies.append((fc, ccc))
        lib.tas_sp_cc_read(ft, cc, ids, n, sample)
        for i, (fc, ccc) in enumerate(copies):
            py = spflow_py.cc_read(fc[0], ccc[0])
            assert py == {k: getattr(sample[i], k) for k in spflow_py.CC_FIELDS}
            assert bytes(ffi.buffer(ccc, CC_SIZE)) == bytes(ffi.buffer(cc + i, CC_SIZE))
        cw = [rnd.randrange(1 << 16) for _ in range(n)]
        rate = [rnd.randrange(1 << 30) for _ in range(n)]
        seen = [cc[i].cnt_loss if rnd.random() < 0.8 else 99 for i in range(n)]
        done = lib.tas_sp_cc_write(ft, cc, ids, n, ffi.new("uint32_t[]", cw), ffi.new("uint64_t[]", rate),
                                   ffi.new("uint32_t[]", seen))  # fmt: skip
        done_py = sum(
            spflow_py.cc_write(fc[0], ccc[0], cw[i], rate[i], seen[i]) for i, (fc, ccc) in enumerate(copies)
        )
        assert done == done_py
        for i, (fc, ccc) in enumerate(copies):
            assert bytes(ffi.buffer(ccc, CC_SIZE)) == bytes(ffi.buffer(cc + i, CC_SIZE))
            assert bytes(ffi.buffer(fc, FLOW_SIZE))[4:] == bytes(ffi.buffer(ft.flows + i, FLOW_SIZE))[4:]
        assert before  # (kept for debugging)
        lib.tas_sp_cc_init(cc, n, 1, 1, 700)
        spflow_py.cc_init(copies[1][1][0], 1, 700)
        assert bytes(ffi.buffer(copies[1][1], CC_SIZE)) == bytes(ffi.buffer(cc + 1, CC_SIZE))


def test_cli_choices_match_ccloop():
    from kernel_slowpath import ccloop, cli

    assert tuple(sorted(cli.CC_CHOICES)) == tuple(sorted(ccloop.CHOICES))
    # the names a socket may ask for (TCP_CONGESTION), checked by libtas/the shim
    from flextcp import ctlproto

    assert set(ctlproto.CC_NAMES) == set(ccloop.CHOICES) | set(ccloop.ALIASES)
    assert cli._parse_rate("100M") == 100_000_000 and cli._parse_rate("1.5G") == 1_500_000_000


SEG = 524  # MSS 536 minus 12 bytes of timestamps


def test_spurious_recovery_undo_reaches_the_algorithm(h):
    """A recovery the fast path finds spurious (Eifel: the ACK filling the
    hole echoes the original's timestamp) is undone there (cnt_undo, the
    sample's `undo`, C and twin agree) and then in the slow path's
    algorithm: CUBIC's W_max, K, epoch, cwnd and ssthresh are back to their
    values before the loss, and the control loop writes that window back
    instead of the cut one."""
    t0 = 1_000_000
    h.now = t0
    ctx = h.add_ctx(1)
    h.install_flow(0, ctx, FlowSpec(tx_len=16384, snd_wnd=0xFFFF))
    ft, table = _ft(h), cc_table(h)
    loop = CCLoop(ft=ft, cc_table=table, n_flows=h.n_flows, algorithm="cubic", interval_us=1000, loop=None,
                  now_us=lambda: h.now, pacing=False)  # fmt: skip
    loop.add(0, 536)
    alg = loop.flows[0].alg
    alg.cwnd, alg.ssthresh = 20 * 536, 1  # congestion avoidance
    f = h.flow(0)
    h.side(0).srtt_us = 20_000
    loop.mark(0)  # (no news from the fast path yet: a new flow is not run)
    assert loop.run_once(t0) == 1 and f.cwnd == 20 * 536
    h.app_write(0, stream_bytes(0, 8 * SEG, 3))
    _, frames = h.poll(t0)
    assert len(frames) == 8
    una, ts_orig = h.snd_una(0), tcp(frames[0]).tsval

    def ack(a, blocks=(), *, now):
        h.inject(h.peer_frame(0, seq=h.rcv_nxt(0), ack=a, win=0xFFFF, tsval=9000, tsecr=ts_orig,
                              sack=list(blocks)))  # fmt: skip
        return h.poll(now)[1]

    # an epoch under way before the loss
    alg.on_interval(Interval(now_us=t0, acked_bytes=536, rtt_us=20_000, in_flight=8 * SEG))
    before = (alg.cwnd, alg.ssthresh, alg.w_max, alg.k, alg.epoch_us, alg.w_est, alg.cwnd_epoch)
    ack(una, [(una + SEG, una + 4 * SEG)], now=t0 + 3000)  # three segments SACKed: recovery
    assert f.flags & lib.TAS_FF_RECOVERY and table[0].cnt_loss == 1
    h.now = t0 + 3500
    loop.run_once()  # the algorithm reacts to the loss (x0.7)
    assert alg.cwnd < before[0] and loop.counters["cc_loss_events"] == 1
    ack(una + 4 * SEG, now=t0 + 5000)  # the late original fills the hole: spurious
    assert table[0].cnt_undo == 1 and not f.flags & lib.TAS_FF_RECOVERY
    # the sample carries the count, C and twin alike
    sample = ffi.new("struct tas_cc_sample[]", 1)
    copy_f, copy_cc = ffi.new("struct tas_flow *"), ffi.new("struct tas_flow_cc *")
    ffi.memmove(copy_f, ft.flows, FLOW_SIZE)
    ffi.memmove(copy_cc, table, CC_SIZE)
    lib.tas_sp_cc_read(ft, table, ffi.new("uint32_t[]", [0]), 1, sample)
    assert sample[0].undo == 1 and spflow_py.cc_read(copy_f[0], copy_cc[0])["undo"] == 1
    h.now = t0 + 5500
    loop.run_once()
    assert (alg.cwnd, alg.ssthresh, alg.w_max, alg.k, alg.epoch_us, alg.w_est, alg.cwnd_epoch) == before
    assert loop.counters["cc_undo"] == 1 and loop.counters["cc_undo_restored"] == 1
    assert f.cwnd == before[0]  # written back: the undo is not lost


def test_recovery_begun_and_undone_within_one_interval_is_ignored(h):
    """Loss and undo between two passes of the control loop: the algorithm
    never cuts."""
    t0 = 1_000_000
    h.now = t0
    ctx = h.add_ctx(1)
    h.install_flow(0, ctx, FlowSpec(tx_len=16384, snd_wnd=0xFFFF))
    ft, table = _ft(h), cc_table(h)
    loop = CCLoop(ft=ft, cc_table=table, n_flows=h.n_flows, algorithm="newreno", interval_us=1000, loop=None,
                  now_us=lambda: h.now, pacing=False)  # fmt: skip
    loop.add(0, 536)
    alg = loop.flows[0].alg
    alg.cwnd, alg.ssthresh = 20 * 536, 20 * 536
    f = h.flow(0)
    loop.mark(0)
    loop.run_once(t0)
    h.app_write(0, stream_bytes(0, 8 * SEG, 3))
    _, frames = h.poll(t0)
    una, ts_orig = h.snd_una(0), tcp(frames[0]).tsval
    for a, blocks, now in ((una, [(una + SEG, una + 4 * SEG)], t0 + 3000), (una + 4 * SEG, [], t0 + 5000)):
        h.inject(h.peer_frame(0, seq=h.rcv_nxt(0), ack=a, win=0xFFFF, tsval=9000, tsecr=ts_orig, sack=blocks))
        h.poll(now)
    assert table[0].cnt_loss == 1 and table[0].cnt_undo == 1
    h.now = t0 + 5500
    loop.run_once()
    assert alg.ssthresh == 20 * 536 and alg.cwnd >= 20 * 536 and f.cwnd == alg.cwnd
    assert loop.counters["cc_undo_restored"] == 0


def test_cc_set_mode_c_and_twin():
    """tas_sp_cc_set_mode (per-socket algorithm switch) against its twin:
    keeps the fast path's mode bits, clears pacing when leaving TAS_CC_SP."""
    n = 2
    buf, ft = memory_ft(n)
    cc = lib.tas_cc_table(buf, len(buf), n)
    rnd = random.Random(3)
    for _ in range(50):
        cc[0].mode = rnd.randrange(16)
        cc[0].pace_rate = rnd.randrange(1 << 30)
        cc[0].loss_beta = rnd.randrange(1001)
        twin = ffi.new("struct tas_flow_cc *")
        ffi.memmove(twin, cc, CC_SIZE)
        mode, beta = rnd.choice([0, lib.TAS_CC_SP, 0xFF]), rnd.choice([0, 500, 700, 5000])
        assert lib.tas_sp_cc_set_mode(ft, cc, 0, mode, beta) == 0
        spflow_py.cc_set_mode(twin[0], mode, beta)
        assert bytes(ffi.buffer(twin, CC_SIZE)) == bytes(ffi.buffer(cc, CC_SIZE))
        assert cc[0].loss_beta == min(beta, 1000)
    assert lib.tas_sp_cc_set_mode(ft, cc, n, 0, 0) == -1


def test_ccloop_per_flow_algorithms(h):
    """Per-socket choice: a flow chosen before install gets its algorithm at
    install (others the stack's); an installed flow switches keeping its
    window; fp-newreno hands the window back to the fast path; unknown
    names are ENOENT."""
    import errno

    ctx = h.add_ctx(1)
    for fid in (0, 1):
        h.install_flow(fid, ctx, FlowSpec(tx_len=16384, snd_wnd=0xFFFF, local_port=1000 + fid))
    ft, table = _ft(h), cc_table(h)
    loop = CCLoop(ft=ft, cc_table=table, n_flows=h.n_flows, algorithm="fp-newreno", interval_us=1000, loop=None,
                  now_us=lambda: h.now, pacing=False)  # fmt: skip
    with pytest.raises(OSError) as e:
        loop.choose(0, "bbr")
    assert e.value.errno == errno.ENOENT
    assert loop.choose(0, "reno") == "newreno"  # Linux's name
    loop.add(0, 536)
    loop.add(1, 536)
    assert loop.algorithm_of(0) == "newreno" and loop.algorithm_of(1) == "fp-newreno"
    assert table[0].mode & lib.TAS_CC_SP and not table[1].mode & lib.TAS_CC_SP
    assert table[0].loss_beta == 500 and set(loop.flows) == {0}
    # switch the installed fp-newreno flow to cubic: keeps its window
    f1 = h.flow(1)
    f1.cwnd, h.side(1).ssthresh = 30 * 536, 20 * 536
    assert loop.choose(1, "cubic") == "cubic"
    alg = loop.flows[1].alg
    assert alg.name == "cubic" and alg.cwnd == 30 * 536 and alg.ssthresh == 20 * 536
    assert table[1].mode & lib.TAS_CC_SP and table[1].loss_beta == 700
    loop.run_once(h.now)
    assert f1.cwnd == 30 * 536  # written back, not reset to IW
    # and back to the fast path's NewReno
    table[1].pace_rate = 12345
    assert loop.choose(1, "fp-newreno") == "fp-newreno"
    assert not table[1].mode & lib.TAS_CC_SP and table[1].pace_rate == 0 and 1 not in loop.flows
    assert loop.stats()["cc_flows_by_algorithm"] == {"newreno": 1, "fp-newreno": 1}
    loop.remove(0)
    assert loop.algorithm_of(0) is None


def test_idle_flow_costs_nothing_and_restarts(h):
    """A flow without news is never run (no passes in an idle second, no
    scans: nothing in the loop's heap); when it sends again the fast path
    marks it and the idle restart applies (window back to IW, RFC 5681
    4.1), decided lazily on that run."""
    ctx = h.add_ctx(1)
    h.install_flow(0, ctx, FlowSpec(tx_len=16384, snd_wnd=0xFFFF))
    loop = CCLoop(ft=_ft(h), cc_table=cc_table(h), n_flows=h.n_flows, algorithm="cubic", interval_us=1000,
                  loop=None, now_us=lambda: h.now, pacing=False)  # fmt: skip
    loop.add(0, 536)
    fl = loop.flows[0]
    fl.alg.cwnd = 40 * 536
    t = h.now
    for k in range(1000):  # one idle second, looked at every ms
        assert loop.run_once(t + 1000 * k) == 0
    assert loop.counters["cc_passes"] == 0 and not loop._heap
    t += 1_000_000
    h.now = t
    h.app_write(0, stream_bytes(0, 2000, 3))
    _, frames = h.poll(t)
    h.inject(h.peer_frame(0, seq=h.rcv_nxt(0), ack=h.snd_una(0) + 1000, win=0xFFFF))
    h.poll(t + 500)
    assert table_news(h) == [0]  # marked by the fast path (C or twin)
    assert loop.run_once(t + 500) == 1
    assert fl.alg.cwnd == 10 * 536 and loop.counters["cc_idle_restarts"] == 1
    assert loop.counters["cc_flows_run"] == 1 and loop.counters["cc_passes"] == 1


def table_news(h) -> list[int]:
    """The flows marked in the CC news bits (without taking them)."""
    bits = _ft(h).news_bits
    return [i for i in range(h.n_flows) if bits[i // 64] >> (i % 64) & 1]


def _news_events(h) -> list[tuple[int, int]]:
    return [(hdr[2], hdr[3]) for hdr, _ in h.drain_krx()
            if hdr[0] == lib.TAS_KRX_FLOW and hdr[3] & lib.TAS_EV_CC_NEWS]  # fmt: skip


def test_news_marks_only_slow_path_flows_and_wakes_armed_loop(h):
    """The fast path marks a flow when its acked bytes move, only with
    TAS_CC_SP; with the loop armed the first mark posts one TAS_EV_CC_NEWS
    flow event and disarms, later marks post nothing; the slow path's take
    clears the bits (C call and twin agree)."""
    ctx = h.add_ctx(1)
    for fid in (0, 1):
        h.install_flow(fid, ctx, FlowSpec(tx_len=16384, snd_wnd=0xFFFF, local_port=1000 + fid))
    ft, table = _ft(h), cc_table(h)
    lib.tas_sp_cc_init(table, h.n_flows, 0, lib.TAS_CC_SP, 700)
    for fid in (0, 1):
        h.app_write(fid, stream_bytes(0, 1000, 3))
    h.poll(h.now)
    h.drain_krx()
    assert lib.tas_sp_cc_news_arm(ft, 1) == 0 and ft.news.armed == 1
    for fid in (0, 1):
        h.inject(h.peer_frame(fid, seq=h.rcv_nxt(fid), ack=h.snd_una(fid) + 500, win=0xFFFF))
    h.poll(h.now + 100)
    assert table_news(h) == [0] and ft.news.armed == 0
    assert _news_events(h) == [(0, lib.TAS_EV_CC_NEWS)]
    h.inject(h.peer_frame(0, seq=h.rcv_nxt(0), ack=h.snd_una(0) + 500, win=0xFFFF))
    h.poll(h.now + 200)
    assert _news_events(h) == []
    # take: C and twin over copies of the same bits
    words = (h.n_flows + 63) // 64
    copy = ffi.new("uint64_t[]", words)
    ffi.memmove(copy, ft.news_bits, 8 * words)
    ids = ffi.new("uint32_t[]", h.n_flows)
    assert lib.tas_sp_cc_news(ft, ids, h.n_flows) == 1 and ids[0] == 0 and table_news(h) == []
    assert spflow_py.cc_news(copy, h.n_flows, h.n_flows) == [0] and copy[0] == 0
    assert lib.tas_sp_cc_news_arm(ft, 0) == 0 and ft.news.armed == 0


def test_cc_news_take_c_and_twin():
    """tas_sp_cc_news against its twin on random bit patterns, with small
    output buffers (bits that do not fit stay for the next call)."""
    n = 300
    _, ft = memory_ft(n)
    words = (n + 63) // 64
    rnd = random.Random(5)
    out = ffi.new("uint32_t[]", n)
    for _ in range(200):
        marked = set(rnd.sample(range(n), rnd.randrange(n)))
        for fid in marked:
            assert lib.tas_ft_cc_news_set(ft.news, fid) == 0
        twin = ffi.new("uint64_t[]", words)
        ffi.memmove(twin, ft.news_bits, 8 * words)
        got: list[int] = []
        got_py: list[int] = []
        cap = rnd.choice([1, 3, 64, n])
        while True:
            k = lib.tas_sp_cc_news(ft, out, cap)
            got += [out[i] for i in range(k)]
            ids = spflow_py.cc_news(twin, n, cap)
            got_py += ids
            assert k == len(ids)
            if k < cap:
                break
        assert got == got_py == sorted(marked)
        assert all(ft.news_bits[i] == 0 for i in range(words))
    # arming: reports a bit already set, clears nothing
    assert lib.tas_sp_cc_news_arm(ft, 1) == 0
    assert lib.tas_ft_cc_news_set(ft.news, 7) == 1 and ft.news.armed == 0  # disarmed by the setter
    assert lib.tas_sp_cc_news_arm(ft, 1) == 1 and ft.news_bits[0] == 1 << 7
