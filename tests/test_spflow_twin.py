"""sp_flow.c (slow-path flow operations) against its Python twin."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from flextcp import spflow_py
from flextcp.flowtab import FlowTable
from flextcp.native import ffi, lib
from flextcp.shm import Region

N = 8
U64 = st.integers(0, 1 << 40)
U32 = st.integers(0, 0xFFFFFFFF)

flow_st = st.fixed_dictionaries(
    {
        "status": st.sampled_from(
            [lib.TAS_FLOW_FREE, lib.TAS_FLOW_ACTIVE, lib.TAS_FLOW_ACTIVE, lib.TAS_FLOW_SLOWPATH]
        ),
        "flags": st.integers(0, (1 << 19) - 1),
        "tx_una": U64,
        "d_nxt": st.integers(0, 1 << 20),
        "d_max": st.integers(0, 1 << 20),
        "d_head": st.integers(0, 1 << 20),
        "mss": st.integers(64, 9000),
        "snd_wnd": st.integers(0, 1 << 20),
        "rto_us": st.integers(0, 5_000_000),
        "rto_backoff": st.sampled_from([0, 0, 1, 15]),
        "srtt_us": st.sampled_from([0, 500, 20_000, 3_000_000]),
        "rto_start_us": U32,
        "tx_len": st.sampled_from([4096, 1 << 16, 1 << 18]),
        "cwnd": U32,
        "ssthresh": U32,
    }
)


def fill(t, i, d) -> None:
    """Flow i of table t (its record and side record) from d."""
    f, x = t.flow(i), t.side(i)
    f.status, f.flags, f.mss, f.snd_wnd = d["status"], d["flags"], d["mss"], d["snd_wnd"]
    f.tx_una = d["tx_una"]
    f.tx_nxt = d["tx_una"] + d["d_nxt"]
    f.tx_max = f.tx_nxt + d["d_max"]
    f.tx_head = f.tx_max + d["d_head"]
    x.rto_us, x.rto_backoff, x.rto_start_us = d["rto_us"], d["rto_backoff"], d["rto_start_us"]
    x.srtt_us = d["srtt_us"]
    f.tx_len, f.cwnd, x.ssthresh = d["tx_len"], d["cwnd"], d["ssthresh"]


def tables():
    size = int(lib.tas_ft_bytes(N))
    a, b = Region.create(size, "spa"), Region.create(size, "spb")
    return a, b, FlowTable.create(a, 0, N), FlowTable.create(b, 0, N)


def same(fa, fb, xa=None, xb=None) -> None:
    sz = ffi.sizeof("struct tas_flow")
    assert bytes(ffi.buffer(fa, sz))[4:] == bytes(ffi.buffer(fb, sz))[4:]  # all but the lock word
    if xa is not None:
        sz = ffi.sizeof("struct tas_flow_cc")
        assert bytes(ffi.buffer(xa, sz)) == bytes(ffi.buffer(xb, sz))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(flow_st, min_size=N, max_size=N),
    U32,
    st.integers(0, 2 * N),
    st.integers(1, 2 * N),
    st.integers(1, N),
)
def test_scan_timeouts_matches(flows, now, cursor, budget, max_out):
    ra, rb, a, b = tables()
    try:
        for i, d in enumerate(flows):
            fill(a, i, d)
            fill(b, i, d)
        ids = ffi.new("uint32_t[]", N)
        why = ffi.new("uint8_t[]", N)
        cur = ffi.new("uint32_t *", cursor)
        n = lib.tas_sp_scan_timeouts(a.raw, now, budget, cur, ids, why, max_out)
        pids, pwhy, pcur = spflow_py.scan_timeouts(
            [b.flow(i) for i in range(N)], [b.side(i) for i in range(N)], N, now, budget, cursor, max_out
        )
        assert list(ids[0:n]) == pids and list(why[0:n]) == pwhy and cur[0] == pcur
    finally:
        ra.close()
        rb.close()


def test_timer_restarted_after_the_scan_read_the_clock_is_not_expired():
    """The fast path restarts the RTO timer with its own clock, which may
    read later than the slow path's `now` (an ACK between the clock read
    and the scan): that is a fresh timer, not one 2^32 us old -- no RTO and
    no tail loss probe while ACKs flow (the spurious RTOs of docs/CC.md)."""
    ra, rb, a, b = tables()
    try:
        now = 5_000_000
        for t in (a, b):
            fill(t, 0, {"status": lib.TAS_FLOW_ACTIVE, "flags": 0, "tx_una": 1000, "d_nxt": 50_000, "d_max": 0,
                     "d_head": 10_000, "mss": 1448, "snd_wnd": 1 << 20, "rto_us": 200_000, "rto_backoff": 0,
                     "srtt_us": 20_000, "rto_start_us": 0, "tx_len": 1 << 18, "cwnd": 60_000,
                     "ssthresh": 1 << 30})  # fmt: skip
        ids, why = ffi.new("uint32_t[]", N), ffi.new("uint8_t[]", N)
        for start, expect in ((now + 3, []), (now + 900_000, []), (now - 50_000, [lib.TAS_TMO_TLP]),
                              (now - 250_000, [lib.TAS_TMO_RTO]), (now + 1_100_000, [lib.TAS_TMO_RTO])):  # fmt: skip
            a.side(0).rto_start_us = b.side(0).rto_start_us = start & 0xFFFFFFFF
            cur = ffi.new("uint32_t *", 0)
            n = lib.tas_sp_scan_timeouts(a.raw, now, 1, cur, ids, why, N)
            pids, pwhy, _ = spflow_py.scan_timeouts([b.flow(i) for i in range(N)], [b.side(i) for i in range(N)],
                                                    N, now, 1, 0, N)  # fmt: skip
            assert list(why[0:n]) == pwhy == expect, start - now
    finally:
        ra.close()
        rb.close()


@settings(max_examples=200, deadline=None)
@given(
    flow_st,
    U32,
    st.sampled_from(["rto", "probe", "close", "status", "mss", "app_close"]),
    st.integers(0, 1 << 21),
    st.integers(0, 2),
    st.integers(0, (1 << 17) - 1),
)
def test_flow_ops_match(d, now, op, close_off, status, set_flags):
    ra, rb, a, b = tables()
    try:
        fa, fb, xa, xb = a.flow(3), b.flow(3), a.side(3), b.side(3)
        fill(a, 3, d)
        fill(b, 3, d)
        if op == "rto":
            r1, r2 = lib.tas_sp_rto_fire(a.raw, 3, now), spflow_py.rto_fire(fb, xb, now)
        elif op == "probe":
            r1, r2 = lib.tas_sp_probe(a.raw, 3, now), spflow_py.probe(fb, xb, now)
        elif op == "mss":
            mss = close_off % 10000
            r1, r2 = lib.tas_sp_set_mss(a.raw, 3, mss), spflow_py.set_mss(fb, mss)
        elif op == "close":
            pos = fa.tx_una + close_off
            r1, r2 = lib.tas_sp_tx_close(a.raw, 3, pos), spflow_py.tx_close(fb, pos)
        elif op == "app_close":  # (rx positions: some unread data, some not)
            for f in (fa, fb):
                f.rx_tail = 1000 + (set_flags & 7)
                f.rx_head = f.rx_tail + (status & 1) * (set_flags >> 3 & 3)
            pos, rx_tail = fa.tx_una + close_off, fa.rx_head - (set_flags >> 5 & 1)
            out = ffi.new("uint32_t *")
            r1 = (lib.tas_sp_close(a.raw, 3, pos, rx_tail, out), out[0])
            r2 = spflow_py.app_close(fb, pos, rx_tail)
            assert r1[1] == d["flags"]
        else:
            r1, r2 = (
                lib.tas_sp_set_status(a.raw, 3, status, set_flags),
                spflow_py.set_status(fb, status, set_flags),
            )
        assert r1 == r2
        same(fa, fb, xa, xb)
        snap = ffi.new("struct tas_flow_snap *")
        assert lib.tas_sp_snapshot(a.raw, 3, snap) == 0
        same(snap, fa)
        sz = ffi.sizeof("struct tas_flow_cc")
        assert bytes(ffi.buffer(snap))[ffi.sizeof("struct tas_flow") :] == bytes(ffi.buffer(xa, sz))
        assert (snap.cwnd, snap.ssthresh, snap.rto_backoff, snap.cnt_rexmit) == (
            fa.cwnd, xa.ssthresh, xa.rto_backoff, xa.cnt_rexmit)  # fmt: skip
        assert bytes(ffi.buffer(b.snapshot(3))) == bytes(ffi.buffer(b.snapshot(3)))
    finally:
        ra.close()
        rb.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(flow_st, min_size=N, max_size=N), st.integers(0, 2 * N))
def test_count_busy_matches(flows, budget):
    ra, rb, a, b = tables()
    try:
        for i, d in enumerate(flows):
            fill(a, i, d)
            fill(b, i, d)
        assert lib.tas_sp_count_busy(a.raw, budget) == spflow_py.count_busy(
            [b.flow(i) for i in range(N)], N, budget)
    finally:
        ra.close()
        rb.close()


# the install arguments both install tests draw alike (the addresses, ports and RTT differ)
_INSTALL_FIELDS = {
    "gen": st.integers(0, 0xFFFF),
    "flags": st.integers(0, (1 << 19) - 1),
    "ctx_id": st.integers(0, 1023),
    "remote_mac": st.binary(min_size=6, max_size=6),
    "snd_wscale": st.integers(0, 14),
    "rcv_wscale": st.integers(0, 14),
    "mss": st.integers(64, 9000),
    "ts_recent": U32,
    "rx_off": U32,
    "rx_len": st.sampled_from([4096, 1 << 16, 1 << 18]),
    "tx_off": U32,
    "tx_len": st.sampled_from([4096, 1 << 16, 1 << 18]),
    "appflow_off": U32,
    "rx_seq0": U32,
    "tx_seq0": U32,
    "snd_wnd": st.integers(0, 1 << 30),
    "wl1": U32,
    "wl2": U32,
    "now_us": U32,
    "core": st.integers(0, 15),
}

INSTALL_ARGS = ("gen", "flags", "ctx_id", "local_ip", "remote_ip", "local_port", "remote_port", "remote_mac",
                "snd_wscale", "rcv_wscale", "mss", "ts_recent", "rx_off", "rx_len", "tx_off", "tx_len", "appflow_off",
                "rx_seq0", "tx_seq0", "snd_wnd", "wl1", "wl2", "rtt_us", "now_us", "core")  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    flow_st,
    st.fixed_dictionaries(
        {
            **_INSTALL_FIELDS,
            "local_ip": U32,
            "remote_ip": U32,
            "local_port": st.integers(0, 0xFFFF),
            "remote_port": st.integers(0, 0xFFFF),
            "rtt_us": st.sampled_from([0, 1, 500, 20_000, 60_000_500]),
        }
    ),
)
def test_install_matches(old, args):
    """tas_sp_install (a record reused from an older flow: everything the
    new flow does not set is zero) against spflow_py.install."""
    ra, rb, a, b = tables()
    try:
        fill(a, 5, old)
        fill(b, 5, old)
        a.side(5).cnt_rexmit = b.side(5).cnt_rexmit = 7  # a counter of the old flow
        keys = INSTALL_ARGS  # the C signature's order
        assert lib.tas_sp_install(a.raw, 5, *(args[k] for k in keys)) == 0
        assert spflow_py.install(b.flow(5), b.side(5), *(args[k] for k in keys)) == 0
        same(a.flow(5), b.flow(5), a.side(5), b.side(5))
        f, x = a.flow(5), a.side(5)
        assert f.status == lib.TAS_FLOW_FREE and x.cnt_rexmit == 0
        assert f.cwnd == 10 * args["mss"] and bytes(f.remote_mac) == args["remote_mac"]
        assert x.rto_us == (max(200_000, args["rtt_us"] * 3) if args["rtt_us"] else 1_000_000)
        assert lib.tas_sp_install(a.raw, N, *(args[k] for k in keys)) == -1  # bad id
    finally:
        ra.close()
        rb.close()


@settings(max_examples=200, deadline=None)
@given(
    flow_st,
    st.fixed_dictionaries(
        {
            **_INSTALL_FIELDS,
            "local_ip": st.sampled_from([0xC6120002, 0]),
            "remote_ip": st.sampled_from([0xC6120001, 0xC612000B]),
            "local_port": st.sampled_from([7, 8]),
            "remote_port": st.sampled_from([40000, 40001]),
            "rtt_us": st.sampled_from([0, 1, 500, 20_000]),
        }
    ),
    st.integers(0, 3),
    st.integers(0, 1200),
    st.booleans(),
    st.booleans(),
)
def test_activate_matches(old, args, mode, beta, with_af, taken):
    """tas_sp_activate (install, CC mode, the app's flow block, ACTIVE,
    indexed) against spflow_py.activate on a table with the same contents;
    ``taken``: another flow holds the 4-tuple already (the index refuses)."""
    from flextcp.flowtab import PyFlowTable

    ra, rb, a, b = tables()
    try:
        fill(a, 5, old)
        fill(b, 5, old)
        if taken:
            for t in (a, b):
                f = t.flow(2)
                f.local_ip, f.remote_ip = args["local_ip"], args["remote_ip"]
                f.local_port, f.remote_port = args["local_port"], args["remote_port"]
                f.status = lib.TAS_FLOW_ACTIVE
                assert t.insert(2) == 0
        afa, afb = ffi.new("struct tas_appflow *"), ffi.new("struct tas_appflow *")
        for af in (afa, afb):
            ffi.memmove(af, bytes(range(64)), 64)  # an old flow's block
        keys = INSTALL_ARGS
        rc = lib.tas_sp_activate(a.raw, 5, *(args[k] for k in keys), mode, beta, afa if with_af else ffi.NULL)
        twin = spflow_py.activate(b.flow(5), b.side(5), afb if with_af else None, PyFlowTable.attach(rb, 0, N), 5,
                                  *(args[k] for k in keys), mode, beta)
        assert rc == twin == (-2 if taken else 0)
        same(a.flow(5), b.flow(5), a.side(5), b.side(5))
        assert bytes(ffi.buffer(afa)) == bytes(ffi.buffer(afb))
        assert bytes(ffi.buffer(ra.addr, ra.size)) == bytes(ffi.buffer(rb.addr, rb.size))  # the index too
        f, x = a.flow(5), a.side(5)
        assert f.status == lib.TAS_FLOW_ACTIVE and x.mode == mode & lib.TAS_CC_SP and x.loss_beta == min(beta, 1000)
        tup = (args["local_ip"], args["local_port"], args["remote_ip"], args["remote_port"])
        assert a.lookup(*tup) == (2 if taken else 5)
        if with_af:
            assert (afa.flow_id, afa.gen, afa.rx_off, afa.rx_len, afa.tx_off, afa.tx_len, afa.flags, afa.rx_head) == (
                5, args["gen"], args["rx_off"], args["rx_len"], args["tx_off"], args["tx_len"], 0, 0)
        else:
            assert bytes(ffi.buffer(afa)) == bytes(range(64))
        assert lib.tas_sp_activate(a.raw, N, *(args[k] for k in keys), mode, beta, ffi.NULL) == -1  # bad id
    finally:
        ra.close()
        rb.close()


@settings(max_examples=100, deadline=None)
@given(flow_st, st.integers(0, N), st.booleans(), st.booleans())
def test_uninstall_matches(d, fid, indexed, twice):
    """tas_sp_uninstall (FREE + DETACHED, out of the index) against
    spflow_py.uninstall: the same record, the same index, the same result
    (-1 for a bad id or a flow not indexed)."""
    from flextcp.flowtab import PyFlowTable

    ra, rb, a, b = tables()
    try:
        for t in (a, b):
            for i in range(N):
                fill(t, i, d)
                f = t.flow(i)
                f.local_ip, f.remote_ip, f.local_port, f.remote_port = 1, 2, 7, 1000 + i
                if indexed:
                    assert t.insert(i) == 0
        pb = PyFlowTable.attach(rb, 0, N)
        for _ in range(2 if twice else 1):
            rc = lib.tas_sp_uninstall(a.raw, fid)
            twin = spflow_py.uninstall(b.flow(fid), pb, fid) if fid < N else -1
            assert rc == twin == (0 if indexed and fid < N and _ == 0 else -1)
        assert bytes(ffi.buffer(ra.addr, ra.size)) == bytes(ffi.buffer(rb.addr, rb.size))
        if fid < N:
            f = a.flow(fid)
            assert f.status == lib.TAS_FLOW_FREE and f.flags & lib.TAS_FF_DETACHED
            assert a.lookup(1, 7, 2, 1000 + fid) == -1
    finally:
        ra.close()
        rb.close()


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=6, max_size=6),
    U32,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    U32,
    U32,
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 15),
    st.integers(0, 0xFFFF),
    st.integers(0, 14),
    U32,
    U32,
)
def test_send_seg_matches(mac, ip, sport, dport, seq, ack, flags, win, opts, mss, ws, tsval, tsecr):
    """tas_sp_send_seg against spflow_py.send_seg: the same KTX entry (header
    and frame), the template keeping our MAC and address."""
    from flextcp.ring import Ring
    from flextcp.stackmem import stack_layout

    lay = stack_layout(N, 1, 4)
    ra, rb = Region.create(lay.size, "spsa"), Region.create(lay.size, "spsb")
    try:
        entry = lib.TAS_KQ_ENTRY_SIZE
        rings = [(Ring.create(r, lay.ktx_off[0], 4, entry, True), Ring.attach(r, lay.ktx_off[0], 4, entry, False))
                 for r in (ra, rb)]  # fmt: skip
        segs = [ffi.new("struct tas_seg *") for _ in range(2)]
        for s in segs:
            s.src_mac = list(b"\x02\0\0\0\0\x02")
            s.src_ip = 0xC6120002
        args = (mac, ip, sport, dport, seq, ack, flags, win, opts, mss, ws, tsval, tsecr)
        n1 = lib.tas_sp_send_seg(rings[0][0].raw, segs[0], *args)
        n2 = spflow_py.send_seg(rings[1][0], segs[1], *args)
        assert n1 == n2 > 0
        e1, e2 = rings[0][1].dequeue_n(1), rings[1][1].dequeue_n(1)
        assert e1[: 32 + n1] == e2[: 32 + n2]
        assert bytes(ffi.buffer(segs[0])) == bytes(ffi.buffer(segs[1]))
        p = ffi.new("struct tas_pkt *")
        assert lib.tas_parse_frame(e1[32 : 32 + n1], n1, p) == lib.TAS_PK_TCP
        assert (p.src_port, p.dst_port, p.seq, p.ack, p.tcp_flags, p.win) == (sport, dport, seq, ack, flags, win)
        for _ in range(4):  # a full ring: nothing queued, 0
            lib.tas_sp_send_seg(rings[0][0].raw, segs[0], *args)
        assert lib.tas_sp_send_seg(rings[0][0].raw, segs[0], *args) == 0
    finally:
        ra.close()
        rb.close()


def _ip_frame(src_mac: bytes, dst_ip: int, proto: int, l4: bytes, opts: bytes = b"", src_ip: int = 0xC6120001,
              ttl: int = 63, tos: int = 0, ident: int = 7) -> bytes:
    from kernel_slowpath.frames import csum

    ihl = 5 + len(opts) // 4
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl, tos, 4 * ihl + len(l4), ident, 0, ttl, proto, 0,
                               src_ip, dst_ip) + opts)
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return b"\x02\0\0\0\0\x02" + src_mac + b"\x08\x00" + bytes(ip) + l4


def _icmp(typ: int, payload: bytes, ident: int = 1, seq: int = 1) -> bytes:
    from kernel_slowpath.frames import csum

    m = bytearray(struct.pack("!BBHHH", typ, 0, 0, ident, seq) + payload)
    m[2:4] = struct.pack("!H", csum(bytes(m)))
    return bytes(m)


LOCAL_IP = 0xC6120002

krx_entry_st = st.one_of(
    # echo requests to us (with and without IP options, any payload)
    st.builds(lambda mac, pl, o, tos, ident: (lib.TAS_KRX_PACKET, _ip_frame(mac, LOCAL_IP, 1, _icmp(8, pl),
                                                                           b"\x01" * o, tos=tos, ident=ident)),
              st.binary(min_size=6, max_size=6), st.binary(max_size=1400), st.sampled_from([0, 4, 8]),
              st.integers(0, 255), st.integers(0, 0xFFFF)),
    # echo requests to someone else, echo replies, other ICMP, TCP, truncated
    st.builds(lambda pl: (lib.TAS_KRX_PACKET, _ip_frame(b"\x02\0\0\0\0\x09", LOCAL_IP + 1, 1, _icmp(8, pl))),
              st.binary(max_size=64)),
    st.builds(lambda t, pl: (lib.TAS_KRX_PACKET, _ip_frame(b"\x02\0\0\0\0\x09", LOCAL_IP, 1, _icmp(t, pl))),
              st.sampled_from([0, 3, 11]), st.binary(max_size=64)),
    st.builds(lambda b: (lib.TAS_KRX_PACKET, _ip_frame(b"\x02\0\0\0\0\x09", LOCAL_IP, 6, b)), st.binary(max_size=80)),
    st.builds(lambda b: (lib.TAS_KRX_PACKET, b), st.binary(max_size=60)),
    st.builds(lambda fid, ev: (lib.TAS_KRX_FLOW, (fid, ev)), st.integers(0, 100), st.integers(0, 15)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(krx_entry_st, max_size=12), st.integers(1, 8), st.sampled_from([2, 4, 16]))
def test_krx_drain_matches(entries, max_n, ktx_slots):
    """tas_sp_krx_drain against spflow_py.krx_drain: the same entries left
    for Python (in order), the same echo replies on KTX, the same counts; a
    reply is a valid frame back to the sender."""
    from flextcp.ring import Ring
    from flextcp.stackmem import stack_layout

    lay = stack_layout(N, 1, 16)
    size = lib.TAS_KQ_ENTRY_SIZE
    ra, rb = Region.create(lay.size, "spda"), Region.create(lay.size, "spdb")
    mac = b"\x02\0\0\0\0\x02"
    try:
        sides = []
        for r in (ra, rb):
            krx_p = Ring.create(r, lay.krx_off[0], 16, size, True)
            krx_c = Ring.attach(r, lay.krx_off[0], 16, size, False)
            ktx_p = Ring.create(r, lay.ktx_off[0], ktx_slots, size, True)
            ktx_c = Ring.attach(r, lay.ktx_off[0], ktx_slots, size, False)
            for kind, v in entries:
                e = bytearray(size)
                if kind == lib.TAS_KRX_FLOW:
                    struct.pack_into("<HHII", e, 0, kind, 0, v[0], v[1])
                else:
                    struct.pack_into("<HH", e, 0, kind, len(v))
                    e[32 : 32 + len(v)] = v
                assert krx_p.enqueue_n(bytes(e), 1) == 1
            sides.append((krx_c, ktx_p, ktx_c, ffi.new("struct tas_sp_drain_stats *")))
        outs = []
        for i, (krx_c, ktx_p, _, stats) in enumerate(sides):
            got = []
            while True:
                if i == 0:
                    buf = ffi.new("uint8_t[]", max_n * size)
                    n = lib.tas_sp_krx_drain(krx_c.raw, ktx_p.raw, buf, max_n, mac, LOCAL_IP, stats, ffi.NULL, 0, -1)
                    chunk = ffi.buffer(buf, n * size)[:]
                else:
                    chunk = spflow_py.krx_drain(krx_c, ktx_p, max_n, mac, LOCAL_IP, stats)
                    n = len(chunk) // size
                assert n <= max_n
                got.append(chunk)
                if n < max_n:
                    break
            outs.append(b"".join(got))
        assert outs[0] == outs[1]
        sa, sb = sides[0][3], sides[1][3]
        assert (sa.echo_replies, sa.ktx_full) == (sb.echo_replies, sb.ktx_full)
        echoes = [v for kind, v in entries if kind == lib.TAS_KRX_PACKET and len(v) >= 42 and v[23] == 1
                  and v[30:34] == struct.pack("!I", LOCAL_IP) and v[14 + (v[14] & 15) * 4] == 8]
        assert sa.echo_replies + sa.ktx_full == len(echoes)
        assert len(outs[0]) // size == len(entries) - len(echoes)
        ra_ktx, rb_ktx = sides[0][2].dequeue_n(64), sides[1][2].dequeue_n(64)
        assert len(ra_ktx) == len(rb_ktx) == sa.echo_replies * size
        p = ffi.new("struct tas_pkt *")
        for k in range(sa.echo_replies):
            ea, eb = ra_ktx[k * size : (k + 1) * size], rb_ktx[k * size : (k + 1) * size]
            kind, n = struct.unpack_from("<HH", ea, 0)
            assert kind == lib.TAS_KTX_FRAME
            assert ea[: 32 + n] == eb[: 32 + n]
            frame = ea[32 : 32 + n]
            assert lib.tas_parse_frame(frame, n, p) == lib.TAS_PK_ICMP
            assert p.src_ip == LOCAL_IP and frame[6:12] == mac and frame[p.l4_off] == 0
            from kernel_slowpath.frames import csum
            assert csum(frame[p.l4_off :]) == 0
    finally:
        ra.close()
        rb.close()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([lib.TAS_KTX_FRAME, lib.TAS_KTX_KICK, lib.TAS_KTX_RX]), U32,
       st.binary(max_size=lib.TAS_KQ_DATA + 8), st.booleans())
def test_ktx_post_matches(kind, fid, data, armed):
    """tas_sp_ktx_post against spflow_py.ktx_post: the same KTX entry (a
    too long frame: nothing), a full ring refuses, and the core's eventfd
    written only while it sleeps."""
    import os

    from flextcp.flowtab import news_off
    from flextcp.ring import Ring
    from flextcp.stackmem import stack_layout

    lay = stack_layout(N, 1, 4)
    ra, rb = Region.create(lay.size, "spka"), Region.create(lay.size, "spkb")
    evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        entry = lib.TAS_KQ_ENTRY_SIZE
        ft = FlowTable.create(ra, lay.ft_off, N)
        hdrs = [r.cast("struct tas_cc_news_hdr", lay.ft_off + news_off(N)) for r in (ra, rb)]
        FlowTable.create(rb, lay.ft_off, N)
        for h in hdrs:
            h.fp_armed[0] = 1 if armed else 0
        rings = [(Ring.create(r, lay.ktx_off[0], 4, entry, True), Ring.attach(r, lay.ktx_off[0], 4, entry, False))
                 for r in (ra, rb)]  # fmt: skip
        r1 = lib.tas_sp_ktx_post(rings[0][0].raw, kind, fid, data, len(data), ft.raw, 0, evfd)
        k1 = os.eventfd_read(evfd) if armed else 0
        r2 = spflow_py.ktx_post(rings[1][0], kind, fid, data, hdrs[1], 0, evfd)
        k2 = os.eventfd_read(evfd) if armed else 0
        assert r1 == r2 == (1 if len(data) <= lib.TAS_KQ_DATA else 0)
        assert k1 == k2 == (1 if armed else 0)
        e1, e2 = rings[0][1].dequeue_n(1), rings[1][1].dequeue_n(1)
        assert e1 == e2
        if r1:
            assert struct.unpack_from("<HHI", e1, 0) == (kind, len(data), fid) and e1[32 : 32 + len(data)] == data
            for _ in range(4):
                lib.tas_sp_ktx_post(rings[0][0].raw, kind, fid, data, len(data), ft.raw, 0, -1)
            assert lib.tas_sp_ktx_post(rings[0][0].raw, kind, fid, data, len(data), ft.raw, 0, -1) == 0
    finally:
        os.close(evfd)
        ra.close()
        rb.close()
