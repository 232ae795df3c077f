"""The shim's flow buffer size (issue 5): every connection of a `tas run`
process, accepted ones included, takes 64 B + rx + tx of its context's
region.  At the stack's default 2 x 256 KiB a 256 MiB region holds ~511
flows, so TAS_SHIM_BUF sizes the context's buffers; at 4 KiB a plain
asyncio server under the shim holds more than that many connections at once
(the SYN admission check counts the listener context's buffer size)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import tas_argv

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="interop tests need root (network namespaces, TAP devices)"),
]

APPS = Path(__file__).resolve().parent / "shim_apps"
STACK_IP = "198.18.0.2"
PORT = 7151
N = 700  # more than a 256 MiB region holds at 2 x 256 KiB per flow

# Linux client: N connections held open at once, each echoes 64 B once
CLIENT = r"""
import json, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks, echoed, err = [], 0, None
try:
    for i in range(n):
        s = socket.create_connection((ip, port), timeout=30)
        socks.append(s)
    for i, s in enumerate(socks):
        msg = i.to_bytes(4, "big") * 16
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            part = s.recv(len(msg) - len(got))
            if not part:
                break
            got += part
        echoed += got == msg
except OSError as e:
    err = f"{type(e).__name__}: {e} after {len(socks)} connections"
print("RESULT " + json.dumps({"ok": err is None and echoed == n, "held": len(socks), "echoed": echoed,
                              "error": err}), flush=True)
for s in socks:
    s.close()
"""


def test_shim_buffers_from_env_fit_many_connections(tas):
    srv = tas.spawn(
        tas.topo.stack_ns,
        "shim-aio-4k",
        [
            "env",
            "TAS_SHIM_BUF=4096",
            *tas_argv(),
            "run",
            "--state-dir",
            str(tas.state_dir),
            "--",
            sys.executable,
            "-u",
            str(APPS / "aio_echo.py"),
            "server",
            str(PORT),
        ],
    )
    srv.wait_line("listening", 20)
    cli = tas.spawn(
        tas.topo.peer_ns, "hold-client", [sys.executable, "-c", CLIENT, STACK_IP, str(PORT), str(N)]
    )
    res = cli.result(180)
    assert res["held"] == N and res["echoed"] == N
