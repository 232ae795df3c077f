"""SO_KEEPALIVE through the socket shim reaches the stack's per-flow
keepalive (set before connect, or on a connected socket)."""

from __future__ import annotations

import json
import time

import pytest

from tests.test_shim import APPS, PEER_IP, PY, linux, tas_run

pytestmark = pytest.mark.interop


def test_so_keepalive_reaches_the_stack(tas):
    srv = linux(tas, "ka-server", PY, "-u", APPS / "aio_echo.py", "server", 7160, ready="listening")
    app = tas_run(tas, "ka-client", PY, "-u", APPS / "keepalive_client.py", PEER_IP, 7160, ready="ports")
    try:
        line = next(ln for ln in app.lines if ln.startswith("ports"))
        pa, pb, pc = (int(x) for x in line.split()[1:])
        deadline = time.monotonic() + 10
        while True:
            r = tas.run_stack_cmd("flows", "--json")
            flows = {int(f["local"].rsplit(":", 1)[1]): f for f in json.loads(r.stdout)}
            if {pa, pb, pc} <= set(flows) and flows[pc]["keepalive"]:
                break
            assert time.monotonic() < deadline, flows
            time.sleep(0.1)
        assert flows[pa]["keepalive"] is True  # set before connect
        assert flows[pb]["keepalive"] is False
        assert flows[pc]["keepalive"] is True  # set on the connected socket
    finally:
        tas.stop_apps([app, srv])
