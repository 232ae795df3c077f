"""Per-socket congestion control (issue 6): setsockopt(IPPROTO_TCP,
TCP_CONGESTION) through the shim and the native API reaches the slow path
(control op ``set_cc`` / ``cc`` on connect and listen, docs/CONTROL.md) and
applies to that flow only; unknown names are ENOENT as on Linux;
getsockopt returns the name; accepted sockets inherit the listener's."""

from __future__ import annotations

import json
import struct
import subprocess
import time

import pytest

from tests.test_shim import APPS, PEER_IP, PY, STACK_IP, linux, tas_run

pytestmark = pytest.mark.interop


def _by_alg(tas) -> dict:
    return tas.stats()["cc"].get("cc_flows_by_algorithm", {})


def test_tcp_congestion_through_the_shim(tas):
    before = _by_alg(tas)
    default = tas.stats()["cc"]["cc_algorithm"]
    srv = linux(tas, "cc-server", PY, "-u", APPS / "aio_echo.py", "server", 7170, ready="listening")
    app = tas_run(tas, "cc-client", PY, "-u", APPS / "cc_client.py", PEER_IP, 7170, 7171, ready="conns")
    try:
        line = next(ln for ln in app.lines if ln.startswith("conns "))
        got = json.loads(line[6:])
        assert got["a"] == "cubic"  # set before connect
        assert got["b"] == default  # not set: the stack's (tas start --cc)
        assert got["c"] == "newreno"  # set on the connected socket ("reno" is Linux's name for it)
        assert got["listener"] == "dctcp"
        assert got["bad_before"] and got["bad_after"]  # ENOENT, as Linux
        assert got["int_form"] == struct.unpack("i", b"cubi")[0]  # no buflen: the first 4 bytes, as Linux
        assert got["ssl"] == "newreno" and got["bad_ssl"]  # an ssl-wrapped socket too
        # the slow path runs those algorithms for those flows only
        deadline = time.monotonic() + 10
        while True:
            now = _by_alg(tas)
            grew = {k: now.get(k, 0) - before.get(k, 0) for k in ("cubic", "newreno")}
            if grew["cubic"] >= 1 and grew["newreno"] >= 1:
                break
            assert time.monotonic() < deadline, (before, now)
            time.sleep(0.1)
        # a Linux client connects to the listener: the accepted socket inherits dctcp
        code = (
            f"import socket,time; s=socket.create_connection(('{STACK_IP}', 7171), timeout=10); time.sleep(3)"
        )
        cl = subprocess.Popen(tas.topo.ns_argv(tas.topo.peer_ns, [PY, "-c", code]))
        try:
            app.wait_line("accepted", 15)
            acc = json.loads(next(ln for ln in app.lines if ln.startswith("accepted "))[9:])
            assert acc["d"] == "dctcp"
            assert _by_alg(tas).get("dctcp", 0) >= before.get("dctcp", 0) + 1
        finally:
            cl.kill()
            cl.wait(5)
    finally:
        tas.stop_apps([app, srv])


def test_native_api_cc_choice(tas):
    """libtas: connect(cc=), Connection.set_congestion_control, listen(cc=);
    unknown names raise FileNotFoundError (ENOENT) and change nothing."""
    from libtas.api import Stack

    srv = linux(tas, "cc-nserver", PY, "-u", APPS / "aio_echo.py", "server", 7172, ready="listening")
    st = Stack(str(tas.state_dir))
    try:
        ctx = st.context()
        with pytest.raises(FileNotFoundError):
            ctx.connect(PEER_IP, 7172, timeout=10, cc="bbr")
        c = ctx.connect(PEER_IP, 7172, timeout=10, cc="cubic")
        assert c.congestion_control == "cubic"
        with pytest.raises(FileNotFoundError):
            c.set_congestion_control("nope")
        assert c.congestion_control == "cubic"
        assert c.set_congestion_control("const") == "const"
        assert c.congestion_control == "const"
        c.sendall(b"x" * 1000)
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < 1000 and time.monotonic() < deadline:
            got += c.recv(4096, timeout=1)
        assert got == b"x" * 1000  # still moves data after the switch
        with pytest.raises(FileNotFoundError):
            ctx.listen(0, cc="bogus")
        lst = ctx.listen(0, cc="newreno")
        assert lst.congestion_control == "newreno"
        assert lst.set_congestion_control("cubic") == "cubic"
        c.close()
        lst.close()
        ctx.close()
    finally:
        st.close()
        tas.stop_apps([srv])
