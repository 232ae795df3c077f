"""libtas against the ControlServer with the fake engine and fake fast path
of tests/test_control.py (no network): data through shared memory, events,
errors."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
import time

import pytest
from test_control import ECHO_PORT, REFUSED_PORT, SILENT_IP, SINK_PORT, UNREACH_IP, Harness

import libtas


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


@pytest.fixture
def stack(harness):
    st = libtas.Stack(harness.state_dir)
    yield st
    st.close()


def test_stack_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"no TAS stack running at {tmp_path}"):
        libtas.Stack(tmp_path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(tmp_path / "control.sock"))  # bound, not listening: stale
    try:
        with pytest.raises(ConnectionRefusedError, match="no TAS stack running"):
            libtas.Stack(tmp_path)
    finally:
        s.close()
    monkeypatch.setenv("TAS_STATE_DIR", str(tmp_path / "nothere"))
    with pytest.raises(FileNotFoundError, match="nothere"):
        libtas.Stack()


def test_hello_and_context(harness, stack):
    assert stack.n_cores == 2 and stack.local_ip == "198.18.0.1" and len(stack.doorbells) == 2
    ctx = stack.context(rx_buf=10000)
    assert ctx.n_cores == 2 and ctx.fileno() >= 0
    assert harness.server.contexts[ctx.ctx_id].rx_buf == 16384
    assert ctx.poll() == 0
    assert ctx.wait(0.01) == 0
    ctx.close()
    with pytest.raises(OSError) as ei:
        ctx.poll()
    assert ei.value.errno == errno.EBADF


def test_listen_errors(harness, stack):
    ctx = stack.context()
    lst = ctx.listen(8080)
    assert lst.port == 8080 and lst.pending() == 0
    with pytest.raises(OSError) as ei:
        ctx.listen(8080)
    assert ei.value.errno == errno.EADDRINUSE
    with pytest.raises(BlockingIOError):
        lst.accept(timeout=0)
    with pytest.raises(TimeoutError):
        lst.accept(timeout=0.05)
    lst.close()
    assert ("listen_close", ctx.ctx_id, 8080) in harness.engine.calls
    with pytest.raises(OSError) as ei:
        lst.accept()
    assert ei.value.errno == errno.EBADF
    ctx.listen(8080).close()  # the port is free again


def test_connect_failures(harness, stack):
    ctx = stack.context()
    with pytest.raises(ConnectionRefusedError):
        ctx.connect("198.18.0.2", REFUSED_PORT)
    # the failed flow was closed by libtas and freed by the engine
    harness.until(lambda: not harness.fpm.flows)
    assert [c[0] for c in harness.engine.calls[-2:]] == ["connect", "close"]
    assert not harness.server.contexts[ctx.ctx_id].flows
    with pytest.raises(OSError) as ei:
        ctx.connect(UNREACH_IP, 80)
    assert ei.value.errno == errno.EHOSTUNREACH
    with pytest.raises(TimeoutError):
        ctx.connect(SILENT_IP, 80, timeout=0.1)
    assert any(c[0] == "abort" for c in harness.engine.calls)
    conn = ctx.connect(SILENT_IP, 80, timeout=0)
    assert not conn.connected and not conn.readable() and not conn.writable()
    with pytest.raises(BlockingIOError):
        conn.recv(10, timeout=0)
    conn.close()
    # a non-blocking connect that fails
    conn = ctx.connect("198.18.0.2", REFUSED_PORT, timeout=0)
    while conn.readable() is False:
        ctx.wait(0.05)
    with pytest.raises(ConnectionRefusedError):
        conn.recv(1)
    assert not conn.connected
    conn.close()
    harness.until(lambda: not harness.fpm.flows)
    with pytest.raises(OSError):
        ctx.connect("not-an-ip", 80)


def _echo_roundtrip(ctx, conn, payload: bytes) -> bytes:
    """Single-threaded: non-blocking sends interleaved with receives."""
    got = bytearray()
    buf = bytearray(65536)
    sent = 0
    while len(got) < len(payload):
        progress = False
        if sent < len(payload):
            try:
                sent += conn.send(payload[sent : sent + 100_000], timeout=0)
                progress = True
            except BlockingIOError:
                pass
        try:
            n = conn.recv_into(buf, timeout=0)
            got += buf[:n]
            progress = progress or n > 0
        except BlockingIOError:
            pass
        if not progress:
            ctx.wait(0.05)
    return bytes(got)


def test_echo_one_mib_sha256(harness, stack):
    ctx = stack.context()
    conn = ctx.connect("198.18.0.2", ECHO_PORT, rx_buf=65536, tx_buf=32768)
    assert conn.connected
    assert conn.remote_address == ("198.18.0.2", ECHO_PORT) and conn.local_address[0] == "198.18.0.1"
    assert conn.tx_space() == 32768
    payload = os.urandom(1 << 20)
    got = _echo_roundtrip(ctx, conn, payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    # the window was reopened by ATX updates (the buffers are much smaller than 1 MiB)
    f = harness.fpm.flows[conn.flow_id]
    deadline = time.monotonic() + 5
    while f.rx_tail != 1 << 20 and time.monotonic() < deadline:  # last update may be in flight
        time.sleep(0.005)
    assert f.rx_tail == 1 << 20 and f.tx_head == 1 << 20 and harness.fpm.atx_bad == 0
    conn.close()
    with pytest.raises(OSError) as ei:
        conn.send(b"x")
    assert ei.value.errno == errno.EBADF
    with pytest.raises(OSError):
        conn.recv(1)
    harness.until(lambda: conn.flow_id not in harness.fpm.flows)


def test_paired_flows_threads_both_directions(harness, stack):
    st2 = libtas.Stack(harness.state_dir)
    try:
        sctx = st2.context()
        cctx = stack.context()
        lst = sctx.listen(9000)
        client = cctx.connect("198.18.0.1", 9000)
        server = lst.accept(timeout=5)
        assert server.connected and server.local_address == ("198.18.0.1", 9000)
        up = os.urandom(700_001)
        down = os.urandom(300_007)
        results = {}

        def client_side():
            # send and receive on one context from two threads (serialised by its lock)
            t = threading.Thread(target=lambda: client.sendall(up, timeout=20))
            t.start()
            got = bytearray()
            while len(got) < len(down):
                got += client.recv(50_000, timeout=20)
            t.join()
            results["client"] = bytes(got)

        ct = threading.Thread(target=client_side)
        ct.start()
        got = bytearray()
        sender = threading.Thread(target=lambda: server.sendall(down, timeout=20))
        sender.start()
        while len(got) < len(up):
            got += server.recv(65536, timeout=20)
        sender.join(20)
        ct.join(20)
        assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(results["client"]).digest() == hashlib.sha256(down).digest()
        # FIN: shutdown(SHUT_WR) -> the peer sees EOF after the data
        client.sendall(b"tail")
        client.shutdown(socket.SHUT_WR)
        assert ("shutdown", cctx.ctx_id, client.flow_id, len(up) + 4) in harness.engine.calls
        with pytest.raises(BrokenPipeError):
            client.send(b"more")
        assert server.recv(100, timeout=5) == b"tail"
        assert server.recv(100, timeout=5) == b""
        assert server.at_eof and server.readable()
        server.close()
        client.close()
    finally:
        st2.close()


def test_recv_view_zero_copy(harness, stack):
    ctx = stack.context()
    conn = ctx.connect("198.18.0.2", ECHO_PORT, rx_buf=4096, tx_buf=4096)
    assert conn.recv_view().nbytes == 0
    conn.sendall(b"a" * 3000)
    assert conn.recv(3000, timeout=5) == b"a" * 3000  # rx_tail now at 3000
    conn.sendall(bytes(range(256)) * 8)  # 2048 bytes wrapping the 4 KiB buffer
    while not conn.readable() or (conn.recv_view().nbytes < 1096 and ctx.wait(0.05) >= 0):
        pass
    v = conn.recv_view()
    assert v.readonly and v.nbytes == 1096  # up to the wrap
    first = bytes(v)
    with pytest.raises(ValueError):
        conn.consume(5000)
    conn.consume(len(first))
    rest = b""
    while len(first) + len(rest) < 2048:
        ctx.wait(0.05)
        v = conn.recv_view()
        rest += bytes(v)
        conn.consume(v.nbytes)
    assert first + rest == bytes(range(256)) * 8
    conn.close()


def test_send_blocks_when_full(harness, stack):
    ctx = stack.context()
    conn = ctx.connect("198.18.0.2", SINK_PORT, tx_buf=4096)
    assert conn.send(b"x" * 10000) == 4096  # copies as much as fits
    assert conn.tx_space() == 0 and not conn.writable()
    with pytest.raises(BlockingIOError):
        conn.send(b"y", timeout=0)
    with pytest.raises(TimeoutError):
        conn.send(b"y", timeout=0.05)
    conn.abort()
    assert ("abort", ctx.ctx_id, conn.flow_id) in harness.engine.calls


def test_reset_event(harness, stack):
    st2 = libtas.Stack(harness.state_dir)
    try:
        sctx = st2.context()
        lst = sctx.listen(0)
        ctx = stack.context()
        client = ctx.connect("198.18.0.1", lst.port)
        server = lst.accept(timeout=5)
        client.sendall(b"hello")
        assert server.recv(5, timeout=5) == b"hello"
        harness.call(harness.engine.reset, client.flow_id)
        with pytest.raises(ConnectionResetError):
            client.recv(10, timeout=5)
        assert not client.connected and client.readable() and client.writable()
        with pytest.raises(ConnectionResetError):
            client.send(b"x")
        with pytest.raises(BrokenPipeError):
            client.send(b"x")
        client.close()
        # abort -> the peer gets a reset event
        server.abort()
        # a pending connection on a closed listener is reset by the app
        other = ctx.connect("198.18.0.1", lst.port)
        while lst.pending() == 0:
            sctx.wait(0.05)
        lst.close()
        aborts = [c for c in harness.engine.calls if c[0] == "abort" and c[1] == sctx.ctx_id]
        assert len(aborts) == 2  # server.abort() and the unaccepted connection
        with pytest.raises(ConnectionResetError):
            other.recv(1, timeout=5)
        other.close()
    finally:
        st2.close()


def test_peer_app_dies_resets_flow(harness, stack):
    st2 = libtas.Stack(harness.state_dir)
    sctx = st2.context()
    lst = sctx.listen(0)
    ctx = stack.context()
    conn = ctx.connect("198.18.0.1", lst.port)
    lst.accept(timeout=5)
    st2.close()  # the peer app disconnects: context_gone resets its flows
    with pytest.raises(ConnectionResetError):
        conn.recv(1, timeout=5)


def test_wait_is_woken_by_fp(harness, stack):
    """A sleeping app (armed) is woken by the fast path ringing its eventfd."""
    ctx = stack.context()
    conn = ctx.connect("198.18.0.2", ECHO_PORT)
    conn.sendall(b"ping")
    n = 0
    for _ in range(100):
        n += ctx.wait(1.0)
        if conn.readable():
            break
    assert conn.recv(4) == b"ping"
    assert n >= 1
    conn.close()
