"""The native echo server with many connections (issue 5), counted, not
timed: its work per wake-up is proportional to the flows that have
something, and a lost notification (ARX ring overflow) costs one sweep over
all connections instead of a stalled connection.

Runs against the ControlServer with the fake engine and fake fast path of
tests/test_control.py (no network): a second app connects to the echo
server's port and the fake fast path joins the two flows.
"""

from __future__ import annotations

import time

import pytest
from test_control import LOCAL_IP, Harness

import libtas
from libtas.echo import EchoServer

PORT = 7007
N = 300
MSG = b"m" * 64


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path, n_cores=1)
    yield h
    h.close()


def _pump(srv: EchoServer, cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "echo server made no progress"
        srv.serve_once(0.01)


def _recv_exact(cctx, conn, n: int, srv: EchoServer) -> bytes:
    got = b""

    def done() -> bool:
        nonlocal got
        cctx.poll()
        while conn.readable() and len(got) < n:
            got += conn.recv(n - len(got), timeout=0)
        return len(got) >= n

    _pump(srv, done)
    return got


def _open(harness, srv: EchoServer, n: int):
    st = libtas.Stack(harness.state_dir)
    cctx = st.context(rx_buf=4096, tx_buf=4096)
    conns = [cctx.connect(LOCAL_IP, PORT, timeout=5) for _ in range(n)]
    _pump(srv, lambda: len(srv.conns) == n)
    return st, cctx, conns


def test_wakeups_serve_only_the_flows_with_data(harness):
    srv = EchoServer(PORT, str(harness.state_dir), backlog=4096, buf=4096)
    st, cctx, conns = _open(harness, srv, N)
    try:
        for c in conns:  # every connection echoes once
            c.sendall(MSG)
        for c in conns:
            assert _recv_exact(cctx, c, len(MSG), srv) == MSG
        # late notifications of those echoes (the fast path reports the
        # acknowledged replies too) are legitimate work: let them pass
        quiet = 0
        deadline = time.monotonic() + 20
        while quiet < 10:
            assert time.monotonic() < deadline, "the echo server never went quiet"
            before = srv.serviced
            srv.serve_once(0.01)
            quiet = quiet + 1 if srv.serviced == before else 0
        # now only one connection talks; the other N - 1 are idle
        seen: list[int] = []
        srv.trace = seen  # the flow ids the server looks at (echo kernel or Python)
        talker = conns[N // 2]
        for i in range(20):
            talker.sendall(bytes([i]) * 64)
            assert _recv_exact(cctx, talker, 64, srv) == bytes([i]) * 64
        (server_fid,) = {
            fid for fid, c in srv.conns.items() if c.remote_address[1] == talker.local_address[1]
        }
        assert seen, "the talker was never served"
        assert set(seen) == {server_fid}  # no idle connection was looked at
        assert len(seen) <= 20 * 3  # a few looks per request (data, then acknowledged data)
        assert srv.sweeps == 0 and srv.timer_sweeps == 0
        assert srv.served == N
    finally:
        st.close()
        srv.close()


def test_arx_overflow_costs_one_sweep_not_a_stalled_connection(tmp_path):
    # a 64-entry ARX ring and 300 connections that all get data at once: the
    # fast path drops notifications, the server learns it (hints_lost) and
    # looks at every connection once
    h = Harness(tmp_path, n_cores=1, arx_slots=64)
    try:
        srv = EchoServer(PORT, str(h.state_dir), backlog=4096, buf=4096)
        st, cctx, conns = _open(h, srv, N)
        try:
            for c in conns:
                c.sendall(MSG)
            for c in conns:
                assert _recv_exact(cctx, c, len(MSG), srv) == MSG
            assert srv.ctx.arx_overflows >= 1
            assert srv.sweeps >= 1
        finally:
            st.close()
            srv.close()
    finally:
        h.close()


def test_reset_event_is_a_hint(harness):
    """A connection reset by the peer side is found through ready_flows()
    (the control event names it), not by a sweep, and leaves the server."""
    srv = EchoServer(PORT, str(harness.state_dir), backlog=4096, buf=4096)
    st, cctx, conns = _open(harness, srv, 8)
    try:
        victim = conns[3]
        (fid,) = {f for f, c in srv.conns.items() if c.remote_address[1] == victim.local_address[1]}
        harness.call(harness.engine.reset, fid)
        _pump(srv, lambda: fid not in srv.conns)
        assert len(srv.conns) == 7
        assert srv.sweeps == 0 and srv.timer_sweeps == 0
    finally:
        st.close()
        srv.close()
