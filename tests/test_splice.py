"""Connection.splice_to (libtas): the zero-copy relay the echo server uses.

A relay app (this test process, native API) accepts two connections from
Linux and moves one's bytes straight into the other's send buffer; both
buffers are small, so the copy wraps on both sides many times and the relay
often finds the destination full.  The bytes Linux receives must be the
bytes Linux sent.  `tas echo-server` (splice_to onto the same connection) is
covered by test_interop's echo tests.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import time

import pytest
from conftest import APPS_DIR

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

_spec = importlib.util.spec_from_file_location("splice_steps", APPS_DIR / "steps.py")
steps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(steps)

STACK_IP = "198.18.0.2"
RELAY_PORT = 5301
SHAPE_PORT = 5302
BUF = 16 << 10  # small buffers: the relay wraps on both sides and fills the destination


def _accept(lst, deadline: float):
    return lst.accept(timeout=max(0.1, deadline - time.monotonic()))


def test_relay_linux_to_linux_bytes_identical(tas):
    from libtas.api import Stack

    n, seed = 3 * (1 << 20) + 17, 31
    with Stack(tas.state_dir) as stack:
        ctx = stack.context(rx_buf=BUF, tx_buf=BUF)
        lst = ctx.listen(RELAY_PORT, reuseaddr=True)
        deadline = time.monotonic() + 60
        sink = tas.peer("client", STACK_IP, RELAY_PORT, script="recv_eof,close", timeout=60)
        out = _accept(lst, deadline)
        src_app = tas.peer("client", STACK_IP, RELAY_PORT, script="send,close", send_bytes=n, seed=seed, timeout=60)
        inp = _accept(lst, deadline)
        moved = calls = 0
        while not inp.at_eof:
            assert time.monotonic() < deadline, f"relay stalled after {moved} of {n} bytes"
            k = inp.splice_to(out)
            calls += 1
            if k:
                moved += k
            else:
                ctx.wait(0.05)
        out.close()  # FIN after everything relayed
        inp.close()
        rx = sink.result(60)
        tx = src_app.result(10)
    want = steps.pattern_sha256(n, seed)
    assert moved == n
    assert tx["tx_bytes"] == n and tx["tx_sha256"] == want
    assert rx["rx_bytes"] == n, f"Linux received {rx['rx_bytes']} of {n} bytes"
    assert rx["rx_sha256"] == want, "relayed bytes differ from the sent bytes"
    assert calls > n // BUF // 2  # the small buffers really forced many partial splices


def test_splice_limits_and_errors(tas):
    from libtas.api import Stack

    with Stack(tas.state_dir) as stack:
        ctx = stack.context(rx_buf=BUF, tx_buf=BUF)
        other = stack.context()
        lst = ctx.listen(SHAPE_PORT, reuseaddr=True)
        deadline = time.monotonic() + 30
        peer = tas.peer(
            "client", STACK_IP, SHAPE_PORT, script="send,recv_eof,close", send_bytes=1000, seed=5, timeout=30
        )
        conn = _accept(lst, deadline)
        while len(conn.recv_view()) < 1000:
            assert time.monotonic() < deadline, "the 1000 bytes never arrived"
            ctx.wait(0.05)
        assert conn.splice_to(conn, 100) == 100  # at most nbytes
        assert conn.splice_to(conn, 0) == 0
        assert conn.splice_to(conn) == 900  # the rest, echoed back
        assert conn.splice_to(conn) == 0  # nothing readable
        # a connection of another context: refused, nothing moved
        lst2 = other.listen(SHAPE_PORT + 1, reuseaddr=True)
        peer2 = tas.peer("client", STACK_IP, SHAPE_PORT + 1, script="recv_eof,close", timeout=30)
        foreign = _accept(lst2, deadline)
        with pytest.raises(ValueError):
            conn.splice_to(foreign)
        foreign.close()
        assert peer2.result(30)["rx_bytes"] == 0
        conn.shutdown(socket.SHUT_WR)
        with pytest.raises(BrokenPipeError) as ei:
            conn.splice_to(conn)
        assert ei.value.errno == errno.EPIPE
        res = peer.result(30)
        assert res["rx_bytes"] == 1000 and res["rx_sha256"] == steps.pattern_sha256(1000, 5)
        conn.close()
