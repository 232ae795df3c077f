"""The echo server's wait: the C serve loop (tas_app_echo_run, via
Context._echo_run_locked) against the Python path it replaces (its twin,
``Context._echo_run = False``), over the same scripted fast path; and no
lost wake-up: the fast path publishes positions, then the notification,
fences and rings the doorbell only if the app is armed
(docs/ARCHITECTURE.md "Doorbells").  No stack: a real Context over a
memfd region, the fast path and the slow path played by the test."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import pytest

import libtas.api as api
from flextcp import ctlproto, layout
from flextcp.doorbell import Doorbell
from flextcp.native import ffi, lib
from flextcp.ring import make_ring
from flextcp.shm import Region
from libtas.echo import EchoServer

SLOTS, BUF, REGION = 64, 4096, 4 << 20
ARX = struct.Struct("<IHHQ")
ATX = struct.Struct("<IHHQQQ")


class _Side:
    """A context as the app sees it, plus the fast path's ends of its rings."""

    def __init__(self) -> None:
        lay = layout.ctx_layout(1, SLOTS, SLOTS)
        reg = self.region = Region.create(REGION, "test_recheck")
        h = reg.cast("struct tas_ctx_hdr")
        h.magic, h.abi_version, h.region_len, h.ctx_id, h.n_cores = api.TAS_CTX_MAGIC, 1, REGION, 5, 1
        h.atx_slots, h.arx_slots, h.heap_off = SLOTS, SLOTS, lay.heap_off
        make_ring(reg, lay.atx_off[0], SLOTS, layout.TAS_ATX_ENTRY_SIZE, False, create=True)
        make_ring(reg, lay.arx_off[0], SLOTS, layout.TAS_ARX_ENTRY_SIZE, True, create=True)
        self.atx = make_ring(reg, lay.atx_off[0], SLOTS, layout.TAS_ATX_ENTRY_SIZE, False)
        self.arx = make_ring(reg, lay.arx_off[0], SLOTS, layout.TAS_ARX_ENTRY_SIZE, True)
        self.heap = lay.heap_off
        self.sp, app_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        st = object.__new__(api.Stack)
        st.__dict__.update(
            state_dir="/nonexistent", _sock=app_sock, _lock=threading.Lock(), _next_id=1, _contexts={},
            _closed=False, _closes=[], _rbuf=bytearray(ctlproto.MAX_MSG + 1),
            doorbells=[Doorbell(os.eventfd(0, os.EFD_NONBLOCK))], limits={}, app_id=1, n_cores=1,
            local_ip="198.18.0.2", local_mac="x", default_cc="cubic",
        )  # fmt: skip
        self.evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        rep = {"ctx_id": 5, "n_cores": 1, "atx_slots": SLOTS, "arx_slots": SLOTS, "region_len": REGION}
        self.ctx = api.Context(st, rep, os.dup(reg.fd), self.evfd)
        st._contexts[5] = self.ctx
        lst = api.Listener(self.ctx, 3, 7)
        self.ctx._listeners[3] = lst
        self.srv = object.__new__(EchoServer)
        self.srv.__dict__.update(
            stack=st, ctx=self.ctx, listener=lst, port=7, conns={}, stopping=threading.Event(), served=0,
            _blocked={}, _last_sweep=time.monotonic(), serviced=0, sweeps=0, timer_sweeps=0, _trace=None,
        )  # fmt: skip
        self.ctx._echo_in_drain(True)  # (what EchoServer.__init__ does)
        self.mv = reg.view()

    def newconn(self, fid: int):
        af_off = self.heap + fid * (64 + 2 * BUF)
        rec = ctlproto._EV_REC.pack(1, 0, 1, 5, fid, 3, af_off, af_off + 64, BUF, af_off + 64 + BUF, BUF,
                                    0xC6120001, 0xC6120002, 7, 40000 + fid)  # fmt: skip
        self.sp.send(ctlproto.BIN_EVENTS + rec)
        os.eventfd_write(self.evfd, 1)
        self.srv.serve_once(0.05)
        assert fid in self.srv.conns
        return self.region.cast("struct tas_appflow", af_off), af_off + 64, af_off + 64 + BUF

    def notify(self, fid: int) -> None:
        self.arx.enqueue_n(ARX.pack(fid, 1, 1, 0), 1)
        os.eventfd_write(self.evfd, 1)

    def updates(self) -> list[tuple]:
        data = self.atx.dequeue_n(SLOTS)
        return [ATX.unpack_from(data, i)[:5] for i in range(0, len(data), ATX.size)]

    def closes(self) -> list[tuple]:
        """The close records the app sent (flow, tx_head, rx_tail)."""
        out = []
        while True:
            try:
                msg = self.sp.recv(ctlproto.MAX_MSG, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            assert msg[:2] == ctlproto.BIN_CLOSE
            out += [r[1:] for r in ctlproto._CLOSE_REC.iter_unpack(msg[2:])]

    def close(self) -> None:
        self.mv.release()
        self.srv.close = None
        self.ctx._teardown()
        self.region.close()


@pytest.fixture
def side():
    s = _Side()
    yield s
    s.close()


def _fast_path(side: _Side, flows: dict, script: list, out: list, errors: list) -> None:
    """Play the fast path: per step (flow id, bytes, fin) publish the bytes
    (rx_head) or the FIN, then notify (ARX entry, fence, ring only if the
    app is armed), and wait for the app's update that echoes the bytes
    (acknowledged at once: tx_acked).  out gets (ATX update or None,
    seconds it took)."""
    armed = ffi.addressof(side.ctx._hdr, "app_armed")
    try:
        for step, (fid, data, fin) in enumerate(script):
            af, rx_off, _ = flows[fid]
            head = int(af.rx_head)
            for i, b in enumerate(data):
                side.mv[rx_off + (head + i) % BUF] = b
            af.rx_head = head + len(data)
            if fin:
                af.flags = api.TAS_AF_RX_FIN
            t0 = time.monotonic()
            side.arx.enqueue_n(ARX.pack(fid, 1, 1, 0), 1)
            if lib.tas_armed_get(armed):  # (fence, then load armed)
                os.eventfd_write(side.evfd, 1)
            if fin:
                out.append((None, 0.0))
                continue
            got: list = []
            while not any(u[0] == fid and u[3] == head + len(data) for u in got):
                if time.monotonic() - t0 > 20:
                    raise AssertionError(f"step {step}: flow {fid} not echoed")
                new = side.updates()
                if not new:
                    time.sleep(0.0002)
                got += new
            for u in got:
                flows[u[0]][0].tx_acked = u[4]
            out.append((got[-1], time.monotonic() - t0))
    except BaseException as e:  # (the main thread asserts)
        errors.append(e)


def _play(use_c: bool, seed: int, monkeypatch) -> tuple:
    """A scripted run: 4 connections, 150 random requests one at a time,
    then a FIN on each.  Returns the updates the fast path got, the send
    buffers, the closes the slow path got, the longest wait for an echo
    and how often the C loop ran."""
    monkeypatch.setattr(api, "MAX_SLEEP", 10.0)  # a lost wake-up would cost a whole sleep
    rnd = random.Random(seed)
    side = _Side()
    calls = []
    if use_c:
        run = api.lib.tas_app_echo_run

        class _Lib:  # counts the C loop's calls
            def __getattr__(self, name):
                return getattr(lib, name)

            def tas_app_echo_run(self, *a):
                calls.append(1)
                return run(*a)

        monkeypatch.setattr(api, "lib", _Lib())
    try:
        side.ctx._echo_run = use_c
        flows = {fid: side.newconn(fid) for fid in (3, 9, 17, 30)}
        script = [(rnd.choice(list(flows)), rnd.randbytes(rnd.randint(1, 200)), False) for _ in range(150)]
        script += [(fid, b"", True) for fid in flows]
        out: list = []
        errors: list = []
        t = threading.Thread(target=_fast_path, args=(side, flows, script, out, errors))
        t.start()
        deadline = time.monotonic() + 60
        while side.srv.conns and not errors and time.monotonic() < deadline:
            side.srv.serve_once(10.0)
        t.join(30)
        assert not errors, errors
        assert not side.srv.conns
        txs = {fid: bytes(side.mv[tx : tx + BUF]) for fid, (_, _, tx) in flows.items()}
        return [o[0] for o in out], txs, sorted(side.closes()), max(o[1] for o in out), len(calls)
    finally:
        monkeypatch.undo()
        side.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_c_loop_matches_python_path(seed, monkeypatch):
    """The same script through tas_app_echo_run and the Python path: the
    same ATX updates, the same echoed bytes, the same closes; no echo ever
    waited for a sleep's timeout (a lost wake-up: the sleeps are 10 s)."""
    ups_c, txs_c, closes_c, worst_c, calls_c = _play(True, seed, monkeypatch)
    ups_py, txs_py, closes_py, worst_py, calls_py = _play(False, seed, monkeypatch)
    assert calls_c and not calls_py
    assert ups_c == ups_py and len(ups_c) == 154
    assert txs_c == txs_py
    assert closes_c == closes_py and [c[0] for c in closes_c] == [3, 9, 17, 30]
    assert worst_c < 5 and worst_py < 5


def test_c_loop_returns(side):
    """tas_app_echo_run's returns: served drains stay inside (run_seen);
    a timeout, the control socket and an outcome go back to Python."""
    af, rx_off, _ = side.newconn(9)
    ctx = side.ctx
    a, ids, sock = ctx._actx, ctx._ids, side.srv.stack._sock.fileno()
    run = lib.tas_app_echo_run
    # nothing: sleeps out the timeout, returns armed
    t0 = time.monotonic()
    assert run(a, ids, 1024, sock, 20000, 1000000) == 0
    assert time.monotonic() - t0 >= 0.019
    assert (a.run_why, a.run_ready, a.run_seen, ctx._hdr.app_armed) == (lib.TAS_APP_RUN_SLEPT, 0, 0, 1)
    ctx._hdr.app_armed = 0
    # a request served inside, then the budget (0) spent: disarmed
    side.mv[rx_off : rx_off + 2] = b"hi"
    af.rx_head = 2
    side.notify(9)
    assert run(a, ids, 1024, sock, 1000000, 0) == 0
    assert (a.run_why, a.run_seen, ctx._hdr.app_armed) == (lib.TAS_APP_RUN_BUDGET, 1, 0)
    assert side.updates() == [(9, 1, 1, 2, 2)]
    os.eventfd_read(side.evfd)  # (the test's notify rings unconditionally)

    # a request woken in the sleep, served inside, then the timeout
    def later() -> None:
        time.sleep(0.02)
        side.mv[rx_off + 2 : rx_off + 3] = b"!"
        af.rx_head = 3
        side.notify(9)

    t = threading.Thread(target=later)
    t.start()
    assert run(a, ids, 1024, sock, 200000, 1000000) == 0
    t.join()
    assert (a.run_why, a.run_seen, a.run_wakes) == (lib.TAS_APP_RUN_SLEPT, 1, 1)
    assert side.updates() == [(9, 1, 1, 3, 3)]
    ctx._hdr.app_armed = 0
    # the control socket: back to Python, armed, nothing drained
    side.sp.send(b"x")
    assert run(a, ids, 1024, sock, 1000000, 1000000) == 0
    assert (a.run_why, a.run_ready, ctx._hdr.app_armed) == (lib.TAS_APP_RUN_SLEPT, 2, 1)
    side.srv.stack._sock.recv(16)
    ctx._hdr.app_armed = 0
    # the peer's FIN (an outcome) and a flow not the kernel's: that drain's ids
    af.flags = api.TAS_AF_RX_FIN
    side.notify(9)
    side.notify(4)
    assert run(a, ids, 1024, sock, 1000000, 1000000) == 2
    assert (a.run_why, a.echo_n, ctx._hdr.app_armed) == (lib.TAS_APP_RUN_IDS, 2, 0)
    assert sorted((a.echo_ids[i], a.echo_st[i]) for i in range(2)) == [(4, api.ECHO_SKIP), (9, api.ECHO_EOF)]


@pytest.mark.parametrize("hint_first", [True, False])
def test_new_connection_with_data_echoed_once(side, monkeypatch, hint_first):
    """A connection whose request (and its ARX hint) came before the accept
    (crr): echoed at the accept, not looked at again for that hint; its FIN
    then closes it."""
    fid = 12
    af_off = side.heap + fid * (64 + 2 * BUF)
    rx_off, tx_off = af_off + 64, af_off + 64 + BUF
    rec = ctlproto._EV_REC.pack(1, 0, 1, 5, fid, 3, af_off, rx_off, BUF, tx_off, BUF,
                                0xC6120001, 0xC6120002, 7, 40000 + fid)  # fmt: skip
    af = side.region.cast("struct tas_appflow", af_off)
    side.mv[rx_off : rx_off + 4] = b"ping"
    af.rx_head = 4
    side.notify(fid)  # a hint for a flow not in the echo table yet
    if hint_first:  # drained before the newconn is read: for a flow the context does not know
        side.ctx.poll()
    side.sp.send(ctlproto.BIN_EVENTS + rec)
    if not hint_first:  # drained with the newconn, before the accept
        side.ctx.poll()
    looks = []
    orig = side.ctx._echo_flows
    monkeypatch.setattr(side.ctx, "_echo_flows", lambda ids: looks.append(set(ids)) or orig(ids))
    deadline = time.monotonic() + 5
    while fid not in side.srv.conns and time.monotonic() < deadline:
        side.srv.serve_once(0.05)
    assert side.updates() == [(fid, 1, 1, 4, 4)]
    assert bytes(side.mv[tx_off : tx_off + 4]) == b"ping"
    assert looks == []
    af.flags = api.TAS_AF_RX_FIN
    side.notify(fid)
    side.srv.serve_once(0.05)
    assert fid not in side.srv.conns
    assert side.closes() == [(fid, 4, 4)]
