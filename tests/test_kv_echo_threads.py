"""`tas echo-server --threads N`: N contexts of one app share the port
(engine port group, new connections round robin); every connection is
echoed correctly, every thread serves some, and another app still gets
EADDRINUSE for the port.  Needs root; uses the session stack."""

from __future__ import annotations

import os
import re
import signal

import pytest
from conftest import tas_argv

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

STACK_IP = "198.18.0.2"
PORT = 7107


def test_echo_server_threads_share_port(tas):
    argv = [
        *tas_argv(),
        "echo-server",
        "--port",
        str(PORT),
        "--threads",
        "3",
        "--state-dir",
        str(tas.state_dir),
    ]
    srv = tas.spawn(tas.topo.stack_ns, "echo-threads", argv)
    srv.wait_line("listening", 15)
    # a different app cannot take the port
    other = tas.spawn(
        tas.topo.stack_ns,
        "echo-other",
        [*tas_argv(), "echo-server", "--port", str(PORT), "--state-dir", str(tas.state_dir)],
    )
    assert other.wait(15) == 2 and "cannot listen" in other.stderr
    res = tas.peer("echo", STACK_IP, PORT, conns=30, bytes=32 << 10, seed=3, timeout=40).result(50)
    assert res["conns"] == 30 and res["mismatched"] == [] and res["eofs"] == 30
    srv.proc.send_signal(signal.SIGINT)
    assert srv.wait(15) == 0, srv.output()
    line = srv.wait_line("served", 5)
    counts = [int(x) for x in re.findall(r"\d+", line.split("served", 1)[1])[:3]]
    assert sum(counts) == 30 and all(c > 0 for c in counts), line
