"""Control protocol codec and ControlServer, driven with a fake engine and a
fake fast path (no network).  The fakes are reused by tests/test_libtas_unit.py.

FakeFPM plays the fast path in a thread: it maps each context region from
the memfd it is given, consumes ATX updates, moves bytes from a flow's tx
buffer into the rx buffer of its peer flow (or of itself: echo), publishes
rx_head/tx_acked in the appflow blocks, posts ARX entries and rings the app
eventfd when the app is armed.  FakeEngine allocates flows with ctx.alloc
and emits events like the real engine would.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flextcp import ctlproto
from flextcp.ctlproto import FlowInfo, ProtocolError
from flextcp.layout import TAS_ARX_ENTRY_SIZE, TAS_ATX_ENTRY_SIZE, ctx_layout
from flextcp.ring import make_ring
from flextcp.shm import Region
from kernel_slowpath.server import ControlServer

AF_RX_FIN, AF_RESET = 1, 2
ARX_RX, ARX_TX = 1, 2
ATX = struct.Struct("<IHHQQQ")
ARX = struct.Struct("<IHHQ")
LOCAL_IP = "198.18.0.1"
ECHO_PORT = 7  # the fake FP echoes tx bytes into the same flow's rx buffer
SINK_PORT = 9  # connected, but tx is never acknowledged
UNREACH_IP = "198.18.0.99"  # conn_failed EHOSTUNREACH
SILENT_IP = "198.18.0.98"  # no outcome ever (connect timeout)
REFUSED_PORT = 1  # conn_failed ECONNREFUSED


class FakeFlow:
    def __init__(self, fid, ctx, core, af, rx, rx_len, tx, tx_len, lport, rip, rport):
        self.id, self.gen, self.ctx, self.core = fid, fid & 0xFFFF, ctx, core
        self.af, self.rx_off, self.rx_len, self.tx_off, self.tx_len = af, rx, rx_len, tx, tx_len
        self.lport, self.rip, self.rport = lport, rip, rport
        self.peer: FakeFlow | None = None  # None: echo into itself
        self.sink = False
        self.failed = False
        self.rx_head = self.rx_tail = self.tx_head = self.tx_sent = 0
        self.fin_at: int | None = None
        self.fin_done = False
        self.atx_seen = 0

    def info(self) -> dict:
        return FlowInfo(
            self.id, self.gen, self.ctx.ctx_id, self.core, self.af, self.rx_off, self.rx_len,
            self.tx_off, self.tx_len, LOCAL_IP, self.lport, self.rip, self.rport,
        ).to_dict()  # fmt: skip


class FakeCtx:
    def __init__(self, ctx_id, memfd, evfd, n_cores, atx_slots, arx_slots):
        self.ctx_id = ctx_id
        self.region = Region.attach(os.dup(memfd))
        self.evfd = os.dup(evfd)
        lay = ctx_layout(n_cores, atx_slots, arx_slots)
        self.atx = [
            make_ring(self.region, lay.atx_off[c], atx_slots, TAS_ATX_ENTRY_SIZE, False)
            for c in range(n_cores)
        ]
        self.arx = [
            make_ring(self.region, lay.arx_off[c], arx_slots, TAS_ARX_ENTRY_SIZE, True)
            for c in range(n_cores)
        ]
        self.hdr = self.region.cast("struct tas_ctx_hdr")
        self.mv = self.region.view()
        self.notify = False

    def close(self):
        for r in self.atx + self.arx:
            if hasattr(r, "close"):
                r.close()
        self.mv.release()
        self.region.close()
        os.close(self.evfd)


class FakeFPM:
    """The fpm seam, plus a thread playing all FP cores."""

    def __init__(self, n_cores: int = 2):
        self.n_cores = n_cores
        self.evfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(n_cores)]
        self.lock = threading.RLock()
        self.ctxs: dict[int, FakeCtx] = {}
        self.flows: dict[int, FakeFlow] = {}
        self.calls: list[tuple] = []
        self.atx_bad = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="fake-fp")
        self.thread.start()

    # seam
    def add_ctx(self, ctx_id, memfd, app_evfd, atx_slots, arx_slots):
        self.calls.append(("add_ctx", ctx_id))
        with self.lock:
            self.ctxs[ctx_id] = FakeCtx(ctx_id, memfd, app_evfd, self.n_cores, atx_slots, arx_slots)

    def remove_ctx(self, ctx_id):
        self.calls.append(("remove_ctx", ctx_id))
        with self.lock:
            for f in [f for f in self.flows.values() if f.ctx.ctx_id == ctx_id]:
                del self.flows[f.id]
            self.ctxs.pop(ctx_id).close()

    def stop(self):
        self._stop = True
        self.thread.join(5)
        with self.lock:
            for c in self.ctxs.values():
                c.close()
            self.ctxs.clear()
        for fd in self.evfds:
            os.close(fd)

    # fast path
    def _write_af(self, f: FakeFlow, flags: int = 0):
        fc = self.ctxs[f.ctx.ctx_id]
        af = fc.region.cast("struct tas_appflow", f.af)
        af.rx_head = f.rx_head
        af.tx_acked = f.tx_sent
        af.flags |= flags

    def _post(self, f: FakeFlow, kind: int):
        fc = self.ctxs[f.ctx.ctx_id]
        fc.arx[f.core].enqueue_n(ARX.pack(f.id, f.gen, kind, 0), 1)
        fc.notify = True

    def step(self) -> int:
        work = 0
        with self.lock:
            for fc in self.ctxs.values():
                for ring in fc.atx:
                    data = ring.dequeue_n(64)
                    for i in range(0, len(data), ATX.size):
                        work += 1
                        fid, gen, kind, rx_tail, tx_head, _ = ATX.unpack_from(data, i)
                        f = self.flows.get(fid)
                        if f is None or f.ctx.ctx_id != fc.ctx_id or f.gen != gen or kind != 1:
                            self.atx_bad += 1
                            continue
                        f.atx_seen += 1
                        if f.rx_tail < rx_tail <= f.rx_head:
                            f.rx_tail = rx_tail
                        if f.tx_head < tx_head <= f.tx_sent + f.tx_len:
                            f.tx_head = tx_head
            for f in list(self.flows.values()):
                dst = f.peer or f
                pending = f.tx_head - f.tx_sent
                if pending and not f.sink and dst.id in self.flows:
                    n = min(pending, dst.rx_len - (dst.rx_head - dst.rx_tail), 65536)
                    if n:
                        self._copy(f, dst, n)
                        work += 1
                if f.fin_at is not None and not f.fin_done and f.tx_sent == f.fin_at and dst.id in self.flows:
                    f.fin_done = True
                    if dst is not f:
                        self._write_af(dst, AF_RX_FIN)
                        self._post(dst, ARX_RX)
                    work += 1
            for fc in self.ctxs.values():
                if fc.notify:
                    fc.notify = False
                    if fc.hdr.app_armed:
                        os.eventfd_write(fc.evfd, 1)
        return work

    def _copy(self, src: FakeFlow, dst: FakeFlow, n: int):
        smv = self.ctxs[src.ctx.ctx_id].mv
        dmv = self.ctxs[dst.ctx.ctx_id].mv
        done = 0
        while done < n:
            spos = (src.tx_sent + done) & (src.tx_len - 1)
            dpos = (dst.rx_head + done) & (dst.rx_len - 1)
            k = min(n - done, src.tx_len - spos, dst.rx_len - dpos)
            dmv[dst.rx_off + dpos : dst.rx_off + dpos + k] = smv[src.tx_off + spos : src.tx_off + spos + k]
            done += k
        src.tx_sent += n
        dst.rx_head += n
        self._write_af(src)
        self._write_af(dst)
        self._post(dst, ARX_RX)
        self._post(src, ARX_TX)

    def _run(self):
        while not self._stop:
            if self.step():
                continue
            with self.lock:
                for fc in self.ctxs.values():
                    for c in range(self.n_cores):
                        fc.hdr.fp_armed[c] = 1
            if not self.step():
                select.select(self.evfds, [], [], 0.05)
            with self.lock:
                for fc in self.ctxs.values():
                    for c in range(self.n_cores):
                        fc.hdr.fp_armed[c] = 0
            for fd in self.evfds:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass


class FakeEngine:
    local_ip = LOCAL_IP

    def __init__(self, fpm: FakeFPM):
        self.fpm = fpm
        self.calls: list[tuple] = []
        self.listeners: dict[int, object] = {}
        self.next_flow = 1
        self.next_port = 40000
        self.fail_next: Exception | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _maybe_fail(self):
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e

    def _flow(self, ctx, rx_len, tx_len, lport, rip, rport) -> FakeFlow:
        af, rx, tx = ctx.alloc(64), ctx.alloc(rx_len), ctx.alloc(tx_len)
        if None in (af, rx, tx):
            for off in (af, rx, tx):
                if off is not None:
                    ctx.free(off)
            raise OSError(errno.ENOMEM, "heap full")
        fid = self.next_flow
        self.next_flow += 1
        f = FakeFlow(fid, ctx, fid % self.fpm.n_cores, af, rx, rx_len, tx, tx_len, lport, rip, rport)
        a = ctx.region.cast("struct tas_appflow", af)
        ctx.region.view(af, 64)[:] = bytes(64)
        a.flow_id, a.gen, a.rx_off, a.rx_len, a.tx_off, a.tx_len = fid, f.gen, rx, rx_len, tx, tx_len
        with self.fpm.lock:
            self.fpm.flows[fid] = f
        return f

    def _free(self, f: FakeFlow):
        with self.fpm.lock:
            self.fpm.flows.pop(f.id, None)
        for off in (f.af, f.rx_off, f.tx_off):
            f.ctx.free(off)

    def _later(self, fn, *args):
        asyncio.get_running_loop().call_later(0.001, fn, *args)

    # the Engine seam
    def listen(self, ctx, port, backlog, reuseaddr):
        self.calls.append(("listen", ctx.ctx_id, port, backlog, reuseaddr))
        self._maybe_fail()
        if port == 0:
            port = self.next_port
            self.next_port += 1
        if port in self.listeners:
            raise OSError(errno.EADDRINUSE, "address in use")
        self.listeners[port] = ctx
        return port

    def listen_close(self, ctx, port):
        self.calls.append(("listen_close", ctx.ctx_id, port))
        self.listeners.pop(port, None)

    def connect(self, ctx, ip, port, local_port, rx_len, tx_len):
        self.calls.append(("connect", ctx.ctx_id, ip, port, local_port, rx_len, tx_len))
        self._maybe_fail()
        lport = local_port or self.next_port
        self.next_port += 1
        f = self._flow(ctx, rx_len, tx_len, lport, ip, port)
        if ip == UNREACH_IP:
            self._later(self._fail, f, errno.EHOSTUNREACH)
        elif ip == SILENT_IP:
            pass
        elif port == REFUSED_PORT:
            self._later(self._fail, f, errno.ECONNREFUSED)
        elif port in (ECHO_PORT, SINK_PORT):
            f.sink = port == SINK_PORT
            self._later(f.ctx.event, {"ev": "connected", "flow": f.id})
        elif port in self.listeners:
            lctx = self.listeners[port]
            g = self._flow(lctx, lctx.rx_buf, lctx.tx_buf, port, LOCAL_IP, lport)
            f.peer, g.peer = g, f
            self._later(lctx.event, {"ev": "newconn", "listener": port, "flow": g.info()})
            self._later(f.ctx.event, {"ev": "connected", "flow": f.id})
        else:
            self._later(self._fail, f, errno.ECONNREFUSED)
        return f.info()

    def _fail(self, f, err):
        # like the real engine: the flow stays until the app closes it
        if f.id in self.fpm.flows:
            f.failed = True
            with self.fpm.lock:
                self.fpm._write_af(f, AF_RESET)
            f.ctx.event({"ev": "conn_failed", "flow": f.id, "errno": err})

    def _get(self, ctx, flow) -> FakeFlow:
        f = self.fpm.flows.get(flow)
        if f is None or f.ctx is not ctx:
            raise OSError(errno.EBADF, "no such flow")
        return f

    def shutdown(self, ctx, flow, tx_head):
        self.calls.append(("shutdown", ctx.ctx_id, flow, tx_head))
        f = self._get(ctx, flow)
        with self.fpm.lock:
            f.tx_head = max(f.tx_head, tx_head)
            f.fin_at = tx_head

    def close(self, ctx, flow, tx_head, rx_tail):
        self.calls.append(("close", ctx.ctx_id, flow, tx_head, rx_tail))
        f = self._get(ctx, flow)
        if f.failed:
            self._free(f)
            return
        with self.fpm.lock:
            f.tx_head = max(f.tx_head, tx_head)
            if f.fin_at is None:
                f.fin_at = f.tx_head
        # the fake frees once the data and the FIN have moved on
        self._later(self._reap, f, time.monotonic() + 5)

    def _reap(self, f, deadline):
        if f.id not in self.fpm.flows:
            return
        if not f.fin_done and time.monotonic() < deadline and f.ctx.ctx_id in self.fpm.ctxs:
            self._later(self._reap, f, deadline)
            return
        self._free(f)
        f.ctx.event({"ev": "closed", "flow": f.id})

    def abort(self, ctx, flow):
        self.calls.append(("abort", ctx.ctx_id, flow))
        f = self._get(ctx, flow)
        self._free(f)
        self.reset(f.peer.id) if f.peer is not None else None

    def reset(self, flow: int, err: int = errno.ECONNRESET):
        """Test helper (loop thread): the peer reset this flow."""
        f = self.fpm.flows.get(flow)
        if f is None:
            return
        with self.fpm.lock:
            self.fpm._write_af(f, AF_RESET)
        f.ctx.event({"ev": "reset", "flow": f.id, "errno": err})

    def context_gone(self, ctx):
        self.calls.append(("context_gone", ctx.ctx_id))
        for f in [f for f in self.fpm.flows.values() if f.ctx is ctx]:
            self._free(f)
            if f.peer is not None:
                self.reset(f.peer.id)
        for port in [p for p, c in self.listeners.items() if c is ctx]:
            del self.listeners[port]

    def stats(self):
        self.calls.append(("stats",))
        return {"flows": len(self.fpm.flows)}

    def flows(self):
        self.calls.append(("flows",))
        return [{"flow": f.id, "ctx": f.ctx.ctx_id} for f in self.fpm.flows.values()]


class Harness:
    """ControlServer + fakes on an asyncio loop in a background thread."""

    def __init__(self, tmp_path, n_cores: int = 2, **kw):
        self.state_dir = tmp_path / "tas"
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        self.fpm = FakeFPM(n_cores)
        self.engine = FakeEngine(self.fpm)
        kw.setdefault("region_len", 64 << 20)
        self.server = ControlServer(
            self.state_dir, self.engine, self.fpm, LOCAL_IP, "02:00:00:00:00:01", **kw
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="sp-loop")
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def call(self, fn, *args):
        """Run fn(*args) on the loop thread and return its result."""

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def until(self, cond, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while not self.call(cond):
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.005)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.fpm.stop()


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


def raw_connect(h: Harness) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(str(h.state_dir / "control.sock"))
    s.settimeout(5)
    return s


def raw_call(s: socket.socket, msg, fds=()) -> tuple[dict, list[int]]:
    ctlproto.send_msg(s, msg, fds)
    data, rfds = ctlproto.recv_msg(s)
    return json.loads(data), rfds


def is_eventfd(fd: int) -> bool:
    return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"


# ---------------------------------------------------------------------------
# codec


def test_flowinfo_roundtrip_and_validation():
    fi = FlowInfo(3, 1, 0, 1, 8192, 12288, 4096, 16384, 4096, "198.18.0.1", 80, "198.18.0.2", 5000)
    assert FlowInfo.from_dict(fi.to_dict()) == fi
    d = fi.to_dict()
    for bad in (
        {**d, "rx_len": 3000},
        {**d, "local_port": 70000},
        {**d, "gen": True},
        {**d, "remote_ip": "nope"},
        {**d, "extra": 1},
        {k: v for k, v in d.items() if k != "core"},
    ):
        with pytest.raises(ProtocolError):
            FlowInfo.from_dict(bad)


@pytest.mark.parametrize(
    "msg,nfds,errno_",
    [
        (b"not json", 0, errno.EINVAL),
        (b"[1,2]", 0, errno.EINVAL),
        (b'{"op":"hello"}', 0, errno.EINVAL),
        (b'{"op":"hello","id":true,"abi":1}', 0, errno.EINVAL),
        (b'{"op":"nope","id":1}', 0, errno.EINVAL),
        (b'{"op":"hello","id":1}', 0, errno.EINVAL),
        (b'{"op":"hello","id":1,"abi":"1"}', 0, errno.EINVAL),
        (b'{"op":"hello","id":1,"abi":1,"x":2}', 0, errno.EINVAL),
        (b'{"op":"hello","id":1,"abi":1}', 1, errno.EINVAL),
        (b'{"op":"ctx_create","id":1}', 0, errno.EINVAL),
        (b'{"op":"listen","id":1,"ctx":0,"port":65536}', 0, errno.EINVAL),
        (b'{"op":"listen","id":1,"ctx":0,"port":80,"reuseaddr":1}', 0, errno.EINVAL),
        (b'{"op":"connect","id":1,"ctx":0,"ip":"1.2.3","port":80}', 0, errno.EINVAL),
        (b'{"op":"close","id":1,"flow":1,"tx_head":-1,"rx_tail":0}', 0, errno.EINVAL),
        (b'{"op":"stats","id":1,"abi":NaN}', 0, errno.EINVAL),
        (b"{" + b" " * 70000 + b"}", 0, errno.EINVAL),
    ],
)
def test_parse_request_rejects(msg, nfds, errno_):
    with pytest.raises(ProtocolError) as ei:
        ctlproto.parse_request(msg, nfds)
    assert ei.value.errno == errno_


def test_parse_request_defaults_and_ids():
    r = ctlproto.parse_request(b'{"op":"listen","id":7,"ctx":2,"port":80}')
    assert (r.op, r.id, r.args) == ("listen", 7, {"ctx": 2, "port": 80, "backlog": 128, "reuseaddr": False, "keepalive": False,
                                            "cc": ""})
    with pytest.raises(ProtocolError) as ei:
        ctlproto.parse_request(b'{"op":"listen","id":9,"ctx":"x","port":80}')
    assert ei.value.req_id == 9
    with pytest.raises(ProtocolError) as ei:
        ctlproto.encode({"id": 1, "blob": "x" * ctlproto.MAX_MSG})
    assert ei.value.errno == errno.EMSGSIZE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode), st.integers(0, 2))
def test_parse_request_only_raises_protocol_error(data, nfds):
    try:
        ctlproto.parse_request(data, nfds)
    except ProtocolError:
        pass


def test_parse_message_events_and_replies():
    fi = FlowInfo(3, 1, 0, 1, 8192, 12288, 4096, 16384, 4096, "198.18.0.1", 80, "198.18.0.2", 5000)
    ev = ctlproto.parse_message(
        json.dumps({"ev": "newconn", "ctx": 0, "listener": 80, "flow": fi.to_dict()}).encode()
    )
    assert ev["flow"] == fi
    with pytest.raises(ProtocolError):
        ctlproto.parse_message(b'{"ev":"reset","ctx":0,"flow":1}')  # no errno
    with pytest.raises(ProtocolError):
        ctlproto.parse_message(b'{"id":1,"ok":false}')
    rep = ctlproto.parse_message(b'{"id":1,"ok":true,"listener":80,"port":80,"future":1}')
    assert ctlproto.check_reply("listen", rep)["port"] == 80


# ---------------------------------------------------------------------------
# server over a raw socket


def test_hello_ctx_create_raw(harness):
    s = raw_connect(harness)
    rep, _ = raw_call(s, {"op": "stats", "id": 1})
    assert rep == {"id": 1, "ok": False, "errno": errno.EPROTO, "error": rep["error"]}
    rep, _ = raw_call(s, {"op": "hello", "id": 2, "abi": 99})
    assert rep["errno"] == errno.EPROTONOSUPPORT
    rep, fds = raw_call(s, {"op": "hello", "id": 3, "abi": 1})
    assert rep["ok"] and rep["n_cores"] == 2 and rep["local_ip"] == LOCAL_IP and rep["app_id"] >= 1
    assert len(fds) == 2 and all(is_eventfd(fd) for fd in fds)
    for fd in fds:
        os.close(fd)
    rep, fds = raw_call(s, {"op": "ctx_create", "id": 4})
    assert rep["errno"] == errno.EINVAL and not fds
    notev = os.memfd_create("x")
    rep, fds = raw_call(s, {"op": "ctx_create", "id": 5}, [notev])
    assert rep["errno"] == errno.EINVAL
    os.close(notev)
    evfd = os.eventfd(0)
    rep, fds = raw_call(s, {"op": "ctx_create", "id": 6, "rx_buf": 5000}, [evfd])
    assert rep["ok"] and rep["ctx_id"] == 0 and rep["region_len"] == 64 << 20 and len(fds) == 1
    with Region.attach(fds[0]) as r:
        h = r.cast("struct tas_ctx_hdr")
        assert (h.magic, h.abi_version, h.ctx_id, h.n_cores) == (0x54415343, 1, 0, 2)
        assert (h.atx_slots, h.arx_slots, h.region_len) == (rep["atx_slots"], rep["arx_slots"], 64 << 20)
        assert h.heap_off == ctx_layout(2, rep["atx_slots"], rep["arx_slots"]).heap_off
    assert harness.fpm.calls == [("add_ctx", 0)]
    ctx = harness.server.contexts[0]
    assert ctx.rx_buf == 8192 and ctx.tx_buf == 64 << 10
    # the server's eventfd is the one we sent: writing events rings it
    rep, _ = raw_call(s, {"op": "listen", "id": 7, "ctx": 0, "port": 80})
    assert rep == {"id": 7, "ok": True, "listener": 80, "port": 80}
    rep, _ = raw_call(s, {"op": "listen", "id": 8, "ctx": 5, "port": 81})
    assert rep["errno"] == errno.EBADF
    harness.call(ctx.event, {"ev": "closed", "flow": 42})
    data, _ = ctlproto.recv_msg(s)
    assert json.loads(data) == {"ev": "closed", "flow": 42, "ctx": 0}
    assert os.eventfd_read(evfd) == 1
    rep, _ = raw_call(s, {"op": "stats", "id": 9})
    assert rep["stats"]["flows"] == 0 and rep["stats"]["control"]["contexts"] == 1
    os.close(evfd)
    s.close()
    harness.until(lambda: not harness.server.apps)
    assert ("context_gone", 0) in harness.engine.calls and ("remove_ctx", 0) in harness.fpm.calls


def test_oversized_and_too_many_fds(harness):
    s = raw_connect(harness)
    s.send(b"{" + b" " * (ctlproto.MAX_MSG + 10) + b"}")
    rep, _ = ctlproto.recv_msg(s)
    assert json.loads(rep)["errno"] == errno.EINVAL
    fds = [os.eventfd(0) for _ in range(20)]
    rep, _ = raw_call(s, {"op": "hello", "id": 1, "abi": 1}, fds)
    assert rep["ok"] is False
    for fd in fds:
        os.close(fd)
    rep, rfds = raw_call(s, {"op": "hello", "id": 2, "abi": 1})
    assert rep["ok"]
    for fd in rfds:
        os.close(fd)
    s.close()


def test_engine_errors_become_replies(harness):
    s = raw_connect(harness)
    _, fds = raw_call(s, {"op": "hello", "id": 1, "abi": 1})
    for fd in fds:
        os.close(fd)
    evfd = os.eventfd(0)
    _, mfds = raw_call(s, {"op": "ctx_create", "id": 2}, [evfd])
    harness.engine.fail_next = OSError(errno.EACCES, "privileged port")
    rep, _ = raw_call(s, {"op": "listen", "id": 3, "ctx": 0, "port": 80})
    assert rep["errno"] == errno.EACCES
    harness.engine.fail_next = RuntimeError("engine bug")
    rep, _ = raw_call(s, {"op": "listen", "id": 4, "ctx": 0, "port": 80})
    assert rep["errno"] == errno.EIO
    rep, _ = raw_call(s, {"op": "listen", "id": 5, "ctx": 0, "port": 80})
    assert rep["ok"]
    rep, _ = raw_call(s, {"op": "listen", "id": 6, "ctx": 0, "port": 80})
    assert rep["errno"] == errno.EADDRINUSE
    rep, _ = raw_call(s, {"op": "close", "id": 7, "flow": 1234, "tx_head": 0, "rx_tail": 0})
    assert rep["errno"] == errno.EBADF
    rep, _ = raw_call(
        s, {"op": "connect", "id": 8, "ctx": 0, "ip": "198.18.0.2", "port": 80, "rx_buf": 1 << 25}
    )
    assert rep["errno"] == errno.EINVAL
    for fd in mfds + [evfd]:
        os.close(fd)
    s.close()


_ops = st.sampled_from(sorted(ctlproto.REQUESTS) + ["bogus"])
_vals = st.one_of(
    st.integers(-5, 70000), st.booleans(), st.text(max_size=8), st.none(), st.just("198.18.0.2")
)
_fields = st.dictionaries(
    st.sampled_from(
        ["ctx", "port", "backlog", "reuseaddr", "ip", "flow", "tx_head", "rx_tail", "abi", "listener", "x"]
    ),
    _vals,
    max_size=6,
)


@pytest.fixture(scope="module")
def shared_harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    yield h
    h.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=400), op=_ops, fields=_fields, rid=st.integers(0, 1 << 40))
def test_fuzzed_messages_get_error_replies(shared_harness, raw, op, fields, rid):
    h = shared_harness
    s = raw_connect(h)
    try:
        rep, _ = raw_call(s, raw)
        assert rep["ok"] is False and rep["errno"] == errno.EINVAL or rep["ok"] is True or rep["errno"] > 0
        _, fds = raw_call(s, {"op": "hello", "id": 0, "abi": 1})
        for fd in fds:
            os.close(fd)
        rep, fds = raw_call(s, {"op": op, "id": rid, **fields})
        for fd in fds:
            os.close(fd)
        assert isinstance(rep["ok"], bool)
        assert rep["id"] in (rid, -1)
        if not rep["ok"]:
            assert rep["errno"] > 0 and isinstance(rep["error"], str)
    finally:
        s.close()


def test_server_survives_fuzz_and_serves_second_app(shared_harness):
    import libtas

    h = shared_harness
    s = raw_connect(h)
    for junk in (b"\xff\xfe", b"{}", b'{"id":-1}', b'{"op":"hello","id":1,"abi":1,"abi":2}', b"null"):
        rep, _ = raw_call(s, junk)
        assert rep["ok"] is False
    s.close()
    with libtas.Stack(h.state_dir) as st_:
        ctx = st_.context()
        lst = ctx.listen(0)
        assert lst.port >= 40000
    h.until(lambda: not h.server.apps)


def test_disconnect_recycles_ids(harness):
    import libtas

    st1 = libtas.Stack(harness.state_dir)
    c1, c2 = st1.context(), st1.context()
    assert (c1.ctx_id, c2.ctx_id) == (0, 1)
    app1 = st1.app_id
    st2 = libtas.Stack(harness.state_dir)
    assert st2.app_id == app1 + 1
    c3 = st2.context()
    assert c3.ctx_id == 2
    c1.listen(5555)
    st1.close()
    harness.until(lambda: app1 not in harness.server.apps)
    gone = [c for c in harness.engine.calls if c[0] == "context_gone"]
    assert sorted(gone) == [("context_gone", 0), ("context_gone", 1)]
    assert ("remove_ctx", 0) in harness.fpm.calls and ("remove_ctx", 1) in harness.fpm.calls
    assert 5555 not in harness.engine.listeners
    st3 = libtas.Stack(harness.state_dir)
    assert st3.app_id == app1  # recycled
    assert st3.context().ctx_id == 0
    # ctx_close releases one context without disconnecting
    c3.close()
    harness.until(lambda: 2 not in harness.server.contexts)
    assert st3.context().ctx_id == 1
    st2.close()
    st3.close()
    harness.until(lambda: not harness.server.apps and not harness.server.contexts)
    assert harness.fpm.ctxs == {}


def test_app_process_killed(harness):
    code = (
        "import sys, time, libtas\n"
        "st = libtas.Stack(sys.argv[1]); ctx = st.context(); ctx.listen(6000)\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(harness.state_dir)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert p.stdout.readline().strip() == b"ready"
        harness.until(lambda: len(harness.server.apps) == 1)
        app = next(iter(harness.server.apps.values()))
        assert app.pid == p.pid and app.uid == os.getuid()
        p.kill()
        p.wait(5)
        harness.until(lambda: not harness.server.apps)
        assert ("context_gone", 0) in harness.engine.calls
        assert 6000 not in harness.engine.listeners
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_allowed_uids_refuses(tmp_path):
    import libtas

    h = Harness(tmp_path, allowed_uids={os.getuid() + 12345})
    try:
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            libtas.Stack(h.state_dir)
        assert h.server.counters["refused"] == 1
    finally:
        h.close()


def test_socket_mode_and_stale_socket(tmp_path):
    h = Harness(tmp_path)
    path = h.state_dir / "control.sock"
    assert oct(os.stat(path).st_mode & 0o777) == "0o660"
    # a second server on the same state dir refuses to steal the socket
    srv2 = ControlServer(h.state_dir, h.engine, h.fpm, LOCAL_IP, "02:00:00:00:00:01")
    with pytest.raises(OSError) as ei:
        asyncio.run_coroutine_threadsafe(srv2.start(), h.loop).result(5)
    assert ei.value.errno == errno.EADDRINUSE
    h.close()
    # a stale socket file (nobody listening) is replaced
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(path))
    s.close()
    assert path.exists()
    h2 = Harness(tmp_path)
    import libtas

    libtas.Stack(h2.state_dir).close()
    h2.close()
