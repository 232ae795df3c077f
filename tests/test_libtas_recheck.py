"""The echo server against the fast path's one-notification-per-poll rule:
the fast path notifies a flow at most once per poll and may move the
flow's positions after that notification in the same poll (an ACK
notified, then the payload of the same segment or of the next frame).  A
notification the app reads before that poll ends finds the old positions,
and none comes for the new ones; the app looks at the flows it served
again after arming its doorbell and after the next wake-up
(Context._recheck).  No stack: a real Context over a memfd region, the
fast path and the slow path played by the test."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

import libtas.api as api
from flextcp import ctlproto, layout
from flextcp.doorbell import Doorbell
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


def test_data_moved_after_its_notification_is_echoed(side):
    af, rx_off, tx_off = side.newconn(9)
    # the fast path notifies (an ACK, say) and the app reads it at once...
    side.notify(9)
    side.srv.serve_once(0.05)
    assert side.updates() == []  # nothing to echo yet
    # ...then, in the same poll, the payload lands: no second notification
    side.mv[rx_off : rx_off + 5] = b"hello"
    af.rx_head = 5
    side.srv.serve_once(0.05)  # the look after arming finds it (no wake-up needed)
    assert side.updates() == [(9, 1, 1, 5, 5)]
    assert bytes(side.mv[tx_off : tx_off + 5]) == b"hello"
    assert side.srv.conns[9]._rx_tail == 5


def test_data_moved_before_the_kick_is_echoed_after_the_wake(side):
    af, rx_off, tx_off = side.newconn(9)
    side.notify(9)
    side.srv.serve_once(0.05)
    assert side.updates() == []
    ctx = side.ctx

    def fast_path() -> None:  # the rest of the poll, while the app sleeps armed, then the kick
        deadline = time.monotonic() + 5
        while not ctx._hdr.app_armed and time.monotonic() < deadline:
            time.sleep(0.001)
        side.mv[rx_off : rx_off + 3] = b"abc"
        af.rx_head = 3
        os.eventfd_write(side.evfd, 1)

    t = threading.Thread(target=fast_path)
    # the look after arming finds nothing (the payload is not there yet)
    orig = ctx._recheck
    looks = []

    def recheck(ids):
        looks.append(int(af.rx_head))
        return orig(ids)

    ctx._recheck = recheck
    t.start()
    side.srv.serve_once(2.0)
    t.join()
    assert looks[:1] == [0] and 3 in looks  # looked after arming (nothing), then after the wake
    assert side.updates() == [(9, 1, 1, 3, 3)]
    assert bytes(side.mv[tx_off : tx_off + 3]) == b"abc"
