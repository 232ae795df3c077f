"""The slow path's per-connection paths (issue 5, crr): what the cheap ways
through the engine and the control server do is what the general ways do.

* The engine reads a parsed segment as one unpack (engine._PKT) instead of a
  cffi read per field: the same values as the cdef's fields.
* A server Context takes the engine's SYN checks (syn_verdict), a flow's
  three blocks (alloc_flow / free_flow) and the `newconn` event
  (ev_newconn) in one call each.  The same connections driven through an
  engine whose context has those calls and one whose context hides them (so
  the engine takes its general way: _syn_verdict, alloc/free, event()) give
  the same segments, the same events, the same states, counters and buffer
  accounting, over handshakes, teardowns in every order, resets, a full SYN
  queue (cookies), an app behind on its events and a full heap.
* The binary close records go through _close_fast as the Request objects of
  parse_closes went through _dispatch: counted, no reply, an unknown flow
  answered with EBADF.
* CCLoop: a flow's algorithm object is made on its first run; its first
  news is due a tick after its install, so a connection gone by then costs
  no run (a marked flow -- RTO, algorithm switch -- runs at once).
"""

from __future__ import annotations

import os
import random
import socket

import pytest

from flextcp import ctlproto
from flextcp.native import ffi, lib
from kernel_slowpath import engine as eng
from kernel_slowpath.ccloop import CCLoop
from kernel_slowpath.frames import SegmentBuilder
from kernel_slowpath.server import App, AppLimits, Context, ControlServer
from kernel_slowpath.tcpstate import State
from tests.engine_fakes import EngineRig

N_FLOWS = 256
KQ_SLOTS = 1024
LOCAL_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
LOCAL_MAC, PEER_MAC = b"\x02\0\0\0\0\x02", b"\x02\0\0\0\0\x01"
PORT = 7


def test_pkt_unpack_is_the_cdef():
    assert [ffi.offsetof("struct tas_pkt", f) for f in eng._PKT_FIELDS] == [
        6, 22, 27, 28, 32, 36, 38, 40, 44, 48, 50, 52, 53, 56, 60]
    peer = SegmentBuilder(PEER_MAC, eng.ip2int(PEER_IP))
    rnd = random.Random(5)
    p = ffi.new("struct tas_pkt *")
    for _ in range(200):
        frame = peer.build(dst_mac=LOCAL_MAC, dst_ip=eng.ip2int(LOCAL_IP), sport=rnd.randrange(65536),
                           dport=rnd.randrange(65536), seq=rnd.randrange(1 << 32), ack=rnd.randrange(1 << 32),
                           flags=rnd.randrange(256), win=rnd.randrange(65536),
                           mss=rnd.choice([None, rnd.randrange(65536)]), wscale=rnd.choice([None, rnd.randrange(15)]),
                           sack_perm=rnd.random() < 0.5,
                           ts=rnd.choice([None, (rnd.randrange(1 << 32), rnd.randrange(1 << 32))]),
                           payload=os.urandom(rnd.randrange(40)))
        assert lib.tas_parse_frame(frame, len(frame), p) == lib.TAS_PK_TCP
        u = eng._PKT.unpack_from(ffi.buffer(p))
        for name, v in zip(eng._PKT_FIELDS, u, strict=True):
            assert v == (bytes(p.src_mac) if name == "src_mac" else getattr(p, name)), name


# -- the same connections, with and without the server Context's cheap calls ----------


class Loop:
    """call_soon / call_later recorded; run() runs what call_soon queued."""

    def __init__(self) -> None:
        self.soon: list = []

    def call_soon(self, fn, *args):
        h = _Handle(fn, args)
        self.soon.append(h)
        return h

    def call_later(self, delay, fn, *args):
        return _Handle(fn, args)

    def add_writer(self, *a) -> None:
        raise AssertionError("the app socket should never be full here")

    def run(self) -> None:
        while self.soon:
            h = self.soon.pop(0)
            if not h.cancelled:
                h.fn(*h.args)


class _Handle:
    def __init__(self, fn, args) -> None:
        self.fn, self.args, self.cancelled = fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Plain:
    """A server Context without syn_verdict / alloc_flow / free_flow /
    ev_newconn: the engine takes its general way."""

    HIDDEN = frozenset({"syn_verdict", "alloc_flow", "free_flow", "ev_newconn"})

    def __init__(self, ctx: Context) -> None:
        object.__setattr__(self, "_ctx", ctx)

    def __getattr__(self, name):
        if name in Plain.HIDDEN:
            raise AttributeError(name)
        return getattr(self._ctx, name)

    def __setattr__(self, name, value) -> None:
        setattr(self._ctx, name, value)


class Side:
    """An engine over its own stack region, a control server with one app
    (binary events; its socket read here) and one context (`plain`: seen by
    the engine through Plain)."""

    def __init__(self, tmp_path, name: str, plain: bool, heap: int, backlog: int) -> None:
        self.rig = EngineRig(f"percon-{name}", N_FLOWS, KQ_SLOTS, loop=Loop(), local_ip=LOCAL_IP, mac=LOCAL_MAC)
        e = self.e = self.rig.engine
        n = [0]

        def isn() -> int:
            n[0] += 1
            return (n[0] * 7919) & 0xFFFFFFFF

        e._isn = isn
        e._cookie_key = b"k" * 16
        self.server = ControlServer(tmp_path / name, e, e.fpm, LOCAL_IP, "02:00:00:00:00:02", default_buf=4096,
                                    app_limits=AppLimits(flows=40, buf_bytes=8 << 20, syn_backlog=64))
        self.server._loop = e.loop
        self.sock, self.peer_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        self.peer_sock.setblocking(False)
        app = self.app = App(self.server, self.sock, 1, os.getpid(), 0, 0)
        app.hello = app.bin_events = True
        self.server.apps[1] = app
        self.evfd = os.eventfd(0, os.EFD_NONBLOCK)
        ctx = self.ctx = Context(self.server, app, 0, self.evfd, 64 << 10 if heap is None else heap, 1, 64, 64,
                                 4096, 4096)
        self.ectx = Plain(ctx) if plain else ctx  # (what the server hands the engine too)
        app.contexts[0] = self.ectx
        self.server.contexts[0] = self.ectx
        e.listen(self.ectx, PORT, backlog, True)
        ctx.listeners.add(PORT)
        e.arp[eng.ip2int(PEER_IP)] = (PEER_MAC, 1 << 62)
        self.peer = SegmentBuilder(PEER_MAC, eng.ip2int(PEER_IP))

    def seg(self, sport: int, **kw) -> None:
        self.server.draining = True
        self.e.on_frame(self.peer.build(dst_mac=LOCAL_MAC, dst_ip=eng.ip2int(LOCAL_IP), sport=sport, dport=PORT,
                                        **kw))
        self.server.draining = False
        self.server.flush_events_now()

    def event(self, fid: int, ev: int, flag: int) -> None:
        f = self.rig.ft.flow(fid)
        f.flags |= flag
        self.e.on_flow_event(fid, ev)
        self.server.flush_events_now()

    def close(self, fid: int, rx_tail: int = 0) -> None:
        self.server._handle(self.app, ctlproto.encode_close(fid + 1000, fid, 0, rx_tail), [])
        self.e.loop.run()

    def out(self) -> list:
        """What the slow path sent: KTX entries (kind, flow, frame) and the
        app's messages (event records with the buffer offsets masked)."""
        got = []
        while True:
            raw = self.rig.fp_ktx.dequeue_n(1)
            if not raw:
                break
            k = ffi.from_buffer("struct tas_ktx *", raw)
            got.append(("ktx", k.kind, k.flow_id, bytes(raw[32 : 32 + k.len])))
        while True:
            try:
                data = self.peer_sock.recv(1 << 16)
            except BlockingIOError:
                break
            if data[:2] == ctlproto.BIN_EVENTS:
                for ev in ctlproto.decode_events(data):
                    if ev["ev"] == "newconn":
                        ev["flow"] = {**ev["flow"].to_dict(), "appflow_off": 0, "rx_off": 0, "tx_off": 0}
                    got.append(("ev", ev))
            else:
                got.append(("msg", data))
        return got

    def state(self) -> tuple:
        e, ctx, app = self.e, self.ctx, self.app
        conns = sorted((c.fid, c.gen, c.state, c.detached, c.local_port, c.remote_port, c.rx_len, c.tx_len)
                       for c in e.conns.values())
        half = sorted((k, h.iss, h.irs, h.deadline) for k, h in e.listeners[PORT].half_open.items())
        return (conns, half, dict(e.counters), sorted(e.free_ids), sorted(e.time_wait), sorted(ctx.flows),
                app.buf_used, ctx.heap_used, ctx.free_bytes, dict(app.limit_hits), dict(self.server.counters))

    def check_appflows(self) -> None:
        for c in self.e.conns.values():
            af = self.ctx.region.cast("struct tas_appflow", c.appflow_off)
            assert (af.flow_id, af.gen, af.rx_off, af.rx_len, af.tx_off, af.tx_len) == (
                c.fid, c.gen, c.rx_off, c.rx_len, c.tx_off, c.tx_len)

    def fid_of(self, sport: int) -> int:
        return self.rig.ft.lookup(eng.ip2int(LOCAL_IP), PORT, eng.ip2int(PEER_IP), sport)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("heap,backlog", [(None, 64), (200 << 10, 64), (None, 4)])
def test_cheap_calls_match_the_general_ways(tmp_path, seed, heap, backlog):
    sides = [Side(tmp_path, "fast", False, heap, backlog), Side(tmp_path, "plain", True, heap, backlog)]
    # the plain side closes every flow the general way (tas_sp_close's fused path on the other)
    sides[1].e._close_open = sides[1].e._close_general
    rnd = random.Random(seed)
    open_: dict[int, int] = {}  # sport -> irs of a SYN sent
    est: list[int] = []  # sports of established connections
    for step in range(400):
        op = rnd.random()
        if op < 0.3 or not (open_ or est):
            sport = 20000 + rnd.randrange(200)
            irs = rnd.randrange(1 << 32)
            kw = {"mss": rnd.choice([536, 1460, 9000]), "sack_perm": rnd.random() < 0.8}
            if rnd.random() < 0.8:
                kw["wscale"] = rnd.randrange(15)
            if rnd.random() < 0.8:
                kw["ts"] = (rnd.randrange(1 << 32), 0)
            for s in sides:
                s.seg(sport, seq=irs, ack=0, flags=eng.SYN, win=64240, **kw)
            open_[sport] = irs
        elif op < 0.55 and open_:
            sport = rnd.choice(sorted(open_))
            irs = open_.pop(sport)
            acks = []
            for s in sides:
                ho = s.e.listeners[PORT].half_open.get((PORT, eng.ip2int(PEER_IP), sport))
                acks.append(None if ho is None else ho.iss)
            assert acks[0] == acks[1]
            iss = acks[0] if acks[0] is not None else rnd.randrange(1 << 32)
            how = rnd.random()
            for s in sides:
                if how < 0.1:  # a RST for the half-open connection
                    s.seg(sport, seq=irs + 1, ack=0, flags=eng.RST)
                elif how < 0.2:  # the SYN again
                    s.seg(sport, seq=irs, ack=0, flags=eng.SYN, win=64240, mss=1460)
                else:  # the handshake's ACK (with data sometimes)
                    s.seg(sport, seq=irs + 1, ack=iss + 1, flags=eng.ACK, win=502, ts=(5, 6),
                          payload=b"x" * (10 if how > 0.9 else 0))
            if how >= 0.2 and sides[0].fid_of(sport) >= 0:
                est.append(sport)
        elif est:
            sport = rnd.choice(est)
            fids = [s.fid_of(sport) for s in sides]
            assert fids[0] == fids[1]
            fid = fids[0]
            conn = sides[0].e.conns.get(fid)
            if conn is None:
                est.remove(sport)
                continue
            how = rnd.random()
            if conn.detached and 0.35 <= how < 0.8:
                how = 0.9
            for s in sides:
                if how < 0.35:
                    s.event(fid, lib.TAS_EV_FIN_RCVD, lib.TAS_FF_RX_FIN)
                elif how < 0.7:
                    s.close(fid)
                elif how < 0.8:
                    f = s.rig.ft.flow(fid)
                    f.rx_head = 5  # unread data: a reset
                    s.close(fid)
                else:
                    s.event(fid, lib.TAS_EV_FIN_ACKED, lib.TAS_FF_FIN_ACKED)
            if sides[0].e.conns.get(fid) is not conn:
                est.remove(sport)
        if step % 7 == 0:  # the app falls behind on its events now and then
            behind = 3000 if rnd.random() < 0.2 else 0
            for s in sides:
                s.app._outq_events = behind
        outs = [s.out() for s in sides]
        assert outs[0] == outs[1], step
        assert sides[0].state() == sides[1].state(), step
        for s in sides:
            s.check_appflows()
    # everything that got going was counted the same way on both sides
    c = sides[0].e.counters
    assert c["syn_rcvd"] > 50 and c["conns_established"] > 10


def test_binary_close_fast_way(tmp_path):
    s = Side(tmp_path, "bc", False, None, 64)
    s.seg(30000, seq=100, ack=0, flags=eng.SYN, win=1000, mss=1460)
    iss = s.e.listeners[PORT].half_open[(PORT, eng.ip2int(PEER_IP), 30000)].iss
    s.seg(30000, seq=101, ack=iss + 1, flags=eng.ACK, win=1000)
    fid = s.fid_of(30000)
    s.out()
    requests = s.server.counters["requests"]
    # two closes in one message: the flow's, then one for a flow it does not have
    data = ctlproto.encode_close(7, fid, 0, 0) + ctlproto.encode_close(8, fid + 1, 0, 0)[2:]
    assert s.server._handle(s.app, data, []) is True
    assert s.server.counters["requests"] == requests + 2
    s.e.loop.run()
    conn = s.e.conns[fid]
    assert conn.detached and conn.state is State.FIN_WAIT_1 and fid not in s.ctx.flows
    out = s.out()
    assert out[0][:3] == ("ktx", lib.TAS_KTX_KICK, fid)
    rep = ctlproto.parse_message(out[1][1])
    assert rep["id"] == 8 and not rep["ok"] and rep["errno"] == 9  # EBADF
    assert s.server.counters["errors"] == 1
    # a bad record id: not the cheap way (parse_closes answers it)
    bad = ctlproto.BIN_CLOSE + b"\xff" * 28
    assert s.server._handle(s.app, bad, []) is False
    rep = ctlproto.parse_message(s.out()[0][1])
    assert not rep["ok"] and rep["errno"] == 22 and s.server.counters["bad_requests"] == 1  # EINVAL


def test_newconn_record_is_encode_events(tmp_path):
    """Context.ev_newconn packs what ctlproto.encode_event makes of the
    engine's flow_info for the same connection."""
    s = Side(tmp_path, "nc", False, None, 64)
    s.seg(30001, seq=100, ack=0, flags=eng.SYN, win=1000, mss=1460)
    iss = s.e.listeners[PORT].half_open[(PORT, eng.ip2int(PEER_IP), 30001)].iss
    s.seg(30001, seq=101, ack=iss + 1, flags=eng.ACK, win=1000)
    conn = s.e.conns[s.fid_of(30001)]
    s.rig.fp_ktx.dequeue_n(64)
    got = s.peer_sock.recv(1 << 16)
    want = ctlproto.encode_event({"ev": "newconn", "ctx": 0, "listener": PORT, "flow": s.e.flow_info(conn)})
    assert got == ctlproto.BIN_EVENTS + want


# -- buffers -------------------------------------------------------------------------


def test_alloc_flow_free_flow_accounting(tmp_path):
    s = Side(tmp_path, "buf", False, 16 << 20, 64)
    ctx, app = s.ctx, s.app
    base_free = ctx.free_bytes
    held = []
    for _ in range(10):
        offs = ctx.alloc_flow(4096, 8192)
        assert offs is not None and len(set(offs)) == 3
        held.append(offs)
    assert app.buf_used == 10 * (64 + 4096 + 8192) == ctx.heap_used
    for af, rx, tx in held:
        ctx.free_flow(af, rx, tx)
    assert app.buf_used == 0 and ctx.heap_used == 0 and ctx.free_bytes == base_free
    # spares come back as they went (no split, no merge)
    again = [ctx.alloc_flow(4096, 8192) for _ in range(10)]
    assert sorted(map(tuple, again)) == sorted(map(tuple, held))
    # double and foreign frees raise, and change nothing
    af, rx, tx = again.pop()
    ctx.free_flow(af, rx, tx)
    used = app.buf_used
    from kernel_slowpath.bufalloc import BufAllocError

    with pytest.raises(BufAllocError):
        ctx.free_flow(af, rx, tx)
    with pytest.raises(BufAllocError):
        ctx.free_flow(af + 1, 1 << 40, 3)
    assert app.buf_used == used
    # the app's limits: flows (via open_flows) and bytes
    app.limits = AppLimits(flows=1, buf_bytes=8 << 20, syn_backlog=64)
    ctx.flows.add(99)
    assert ctx.alloc_flow(4096, 4096) is None
    ctx.flows.clear()
    app.limits = AppLimits(flows=0, buf_bytes=app.buf_used + 64 + 4096 + 4096 - 1, syn_backlog=64)
    assert ctx.alloc_flow(4096, 4096) is None
    # a full heap: None, nothing held
    app.limits = AppLimits(flows=0, buf_bytes=0, syn_backlog=0)
    for offs in again:
        ctx.free_flow(*offs)
    got = []
    while (offs := ctx.alloc_flow(65536, 65536)) is not None:
        got.append(offs)
    assert got and ctx.free_bytes < 64 + 2 * 65536
    used = app.buf_used
    assert ctx.alloc_flow(65536, 65536) is None and app.buf_used == used


# -- congestion control ------------------------------------------------------------------


def test_cc_first_run_a_tick_after_install():
    rig = EngineRig("percon-cc", N_FLOWS, KQ_SLOTS)
    ft, now = rig.ft, [10_000_000]
    table = lib.tas_cc_table(rig.stack.ptr(0), rig.stack.size, N_FLOWS)
    loop = CCLoop(ft=ft.raw, cc_table=table, n_flows=N_FLOWS, algorithm="cubic", interval_us=1000, loop=None,
                  now_us=lambda: now[0])
    for fid in (1, 2, 3):
        f = ft.flow(fid)
        f.status, f.mss, f.cwnd, f.snd_wnd = lib.TAS_FLOW_ACTIVE, 1460, 14600, 65535
        assert loop.register(fid, 1460) == (lib.TAS_CC_SP, 700)
    assert all(fl._alg is None for fl in loop.flows.values())  # made on first use
    t0 = now[0]
    for fid in (1, 2):  # news from the fast path
        assert lib.tas_ft_cc_news_set(ft.raw.news, fid) == 0
    loop.remove(2)  # a connection over before its first tick
    assert loop.run_once(t0 + 300) == 0 and loop.counters["cc_flows_run"] == 0
    loop.mark(3)  # marked from the slow path (an RTO, an algorithm switch): at once
    loop.run_once(t0 + 300)
    assert loop.counters["cc_flows_run"] == 1 and loop.flows[3]._alg is not None
    loop.run_once(t0 + 999)
    assert loop.counters["cc_flows_run"] == 1 and loop.flows[1]._alg is None
    loop.run_once(t0 + 1000)  # flow 1: a tick after its install
    assert loop.counters["cc_flows_run"] == 2 and loop.flows[1]._alg is not None
    assert loop.window_of(1) == loop.flows[1].alg.cwnd
