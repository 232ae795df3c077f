"""The socket shim and `tas run`: unchanged stdlib programs on the stack,
Linux on the other side (interop topology from tests/conftest.py).

The programs under `tas run` are in tests/shim_apps/ and import nothing from
this project.  Servers under the shim listen on 198.18.0.2, which only the
stack owns, so Linux clients reach them only through the stack; for shim
clients the Linux servers print each peer's address and the tests assert it
is the stack's (the stack namespace's kernel has 198.18.0.3, so a silent
fall-through to kernel TCP would show up as that address).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tas_argv

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="interop tests need root (network namespaces, TAP devices)"),
]

APPS = Path(__file__).resolve().parent / "shim_apps"
PEER_IP = "198.18.0.1"
STACK_IP = "198.18.0.2"
MiB = 1 << 20
PY = sys.executable


def tas_run(tas, name: str, *argv: str, ready: str | None = None):
    app = tas.spawn(
        tas.topo.stack_ns,
        name,
        [*tas_argv(), "run", "--state-dir", str(tas.state_dir), "--", *map(str, argv)],
    )
    if ready:
        app.wait_line(ready, 20)
    return app


def linux(tas, name: str, *argv: str, ready: str | None = None):
    app = tas.spawn(tas.topo.peer_ns, name, list(map(str, argv)))
    if ready:
        app.wait_line(ready, 20)
    return app


def peers(app) -> set[str]:
    return {ln.split()[1] for ln in app.lines if ln.startswith("peer ")}


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


# -- tas run -----------------------------------------------------------------------------------------


def test_tas_run_without_stack_fails_at_once(tmp_path):
    marker = tmp_path / "ran"
    t = time.monotonic()
    r = subprocess.run(
        [
            *tas_argv(),
            "run",
            "--state-dir",
            str(tmp_path / "nostack"),
            "--",
            PY,
            "-c",
            f"open({str(marker)!r}, 'w')",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "no TAS stack running" in r.stderr
    assert not marker.exists()
    assert time.monotonic() - t < 10


def test_tas_run_status_children_and_signals(tas):
    code = (
        "import socket, subprocess, sys;"
        "print('parent', type(socket.socket()).__name__, type(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).__name__,"
        " type(socket.socket(socket.AF_UNIX)).__name__, flush=True);"
        "subprocess.run([sys.executable, '-c', 'import socket; print(\"child\", type(socket.socket()).__name__)']);"
        "sys.exit(7)"
    )
    app = tas_run(tas, "status", PY, "-c", code)
    assert app.wait(30) == 7, app.output()
    assert "parent ShimSocket socket socket" in app.lines, app.output()
    assert "child ShimSocket" in app.lines, app.output()
    # tas run execs the command: a signal to it reaches the program
    app = tas_run(
        tas, "sleeper", PY, "-c", "import time; print('ready', flush=True); time.sleep(60)", ready="ready"
    )
    app.proc.send_signal(signal.SIGTERM)
    assert app.wait(10) == -signal.SIGTERM


# -- HTTP --------------------------------------------------------------------------------------------


def test_http_server_dual_stack_serves_64mib_to_curl(tas, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    big = www / "big.bin"
    big.write_bytes(os.urandom(64 * MiB))
    (www / "small.txt").write_text("hello from the stack\n")
    # '::' with IPV6_V6ONLY off is what `python3 -m http.server` opens when
    # getaddrinfo prefers IPv6; force it, the test namespace prefers IPv4
    srv = tas_run(
        tas,
        "http.server",
        PY,
        "-u",
        "-m",
        "http.server",
        "--bind",
        "::",
        "--directory",
        www,
        7101,
        ready="Serving HTTP",
    )
    out = tmp_path / "got.bin"
    t = time.monotonic()
    r = tas.topo.run(
        tas.topo.peer_ns,
        ["curl", "-sS", "--max-time", "60", "-o", str(out), f"http://{STACK_IP}:7101/big.bin"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - t
    assert r.returncode == 0, r.stderr + srv.output()
    assert out.stat().st_size == 64 * MiB
    assert _sha(out) == _sha(big)
    deadline = time.monotonic() + 5
    while "::ffff:198.18.0.1" not in srv.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "::ffff:198.18.0.1" in srv.stderr, (
        srv.output()
    )  # IPv4-mapped client address, as the kernel reports
    print(f"\nhttp.server -> curl: 64 MiB in {elapsed:.2f} s")
    # the unchanged default command (family chosen by getaddrinfo)
    srv2 = tas_run(
        tas,
        "http.server-default",
        PY,
        "-u",
        "-m",
        "http.server",
        "--directory",
        www,
        7102,
        ready="Serving HTTP",
    )
    r = tas.topo.run(
        tas.topo.peer_ns,
        ["curl", "-sS", "--max-time", "20", f"http://{STACK_IP}:7102/small.txt"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and r.stdout == "hello from the stack\n", r.stderr + srv2.output()


def test_urllib_downloads_from_linux_http_server(tas, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(8 * MiB + 17)
    (www / "f.bin").write_bytes(data)
    srv = linux(
        tas,
        "linux-http",
        PY,
        "-u",
        "-m",
        "http.server",
        "--bind",
        PEER_IP,
        "--directory",
        www,
        7103,
        ready="Serving HTTP",
    )
    res = tas_run(tas, "urllib", PY, APPS / "urllib_get.py", f"http://{PEER_IP}:7103/f.bin").result(60)
    assert res["status"] == 200 and res["bytes"] == len(data)
    assert res["sha256"] == hashlib.sha256(data).hexdigest()
    assert f"{STACK_IP} - -" in srv.stderr, srv.output()  # the request came through the stack


# -- socketserver, selectors --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["thread", "fork"])
def test_socketserver_echo(tas, kind):
    port = 7104 if kind == "thread" else 7105
    tas_run(
        tas,
        f"socketserver-{kind}",
        PY,
        "-u",
        APPS / "threading_echo.py",
        port,
        *(["fork"] if kind == "fork" else []),
        ready="listening",
    )
    res = linux(
        tas, "echo-client", PY, APPS / "aio_echo.py", "client", STACK_IP, port, "--conns", 10, "--msgs", 100
    ).result(60)
    assert res["echoed"] == 1000 and res["eofs"] == 10


def test_selectors_echo_mixing_shim_listener_and_pipe(tas):
    srv = tas_run(tas, "selectors", PY, "-u", APPS / "selectors_echo.py", 7106, 4, ready="listening")
    cli = linux(
        tas, "echo-client", PY, APPS / "aio_echo.py", "client", STACK_IP, 7106, "--conns", 4, "--msgs", 50
    )
    assert cli.result(60)["echoed"] == 200
    res = srv.result(30)
    assert res["clients"] == 4 and res["pipe"] == "".join(f"line {i}\n" for i in range(5))


# -- asyncio / uvloop ------------------------------------------------------------------------------------

LOOPS = ["asyncio", "uvloop-run", "uvloop-install", "uvloop-factory"]


@pytest.mark.parametrize("loop", LOOPS)
def test_asyncio_echo_server(tas, loop):
    port = 7110 + LOOPS.index(loop)
    srv = tas_run(
        tas,
        f"aio-server-{loop}",
        PY,
        "-u",
        APPS / "aio_echo.py",
        "server",
        port,
        "--loop",
        loop,
        ready="listening",
    )
    assert ("uvloop" in srv.lines[0]) == (loop != "asyncio"), srv.output()
    res = linux(
        tas, "echo-client", PY, APPS / "aio_echo.py", "client", STACK_IP, port, "--conns", 10, "--msgs", 100
    ).result(60)
    assert res["echoed"] == 1000 and res["eofs"] == 10


@pytest.mark.parametrize("loop", ["asyncio", "uvloop-run"])
def test_asyncio_client_to_linux_server(tas, loop):
    port = 7120 + (loop != "asyncio")
    srv = linux(tas, "linux-aio-server", PY, "-u", APPS / "aio_echo.py", "server", port, ready="listening")
    res = tas_run(
        tas,
        f"aio-client-{loop}",
        PY,
        APPS / "aio_echo.py",
        "client",
        PEER_IP,
        port,
        "--loop",
        loop,
        "--conns",
        10,
        "--msgs",
        100,
    ).result(60)
    assert res["echoed"] == 1000 and res["eofs"] == 10
    assert (res["loop"] == "uvloop") == (loop != "asyncio")
    assert peers(srv) == {STACK_IP}, srv.output()


# -- TLS, errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["tls_echo.py", "tls_aio.py"])
def test_tls_server_over_shim_to_python_ssl_client(tas, tmp_path, app):
    """ssl-wrapped blocking listener (threads), and asyncio TLS on uvloop."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    r = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=tas-shim-test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    port = 7130 if app == "tls_echo.py" else 7131
    srv = tas_run(tas, "tls-server", PY, "-u", APPS / app, cert, key, port, ready="listening")
    res = linux(
        tas, "tls-client", PY, APPS / "linux_helper.py", "tls_client", port, STACK_IP, cert, 1 * MiB
    ).result(60)
    assert res["n"] == 1 * MiB
    line = srv.wait_line("peer ", 5)
    assert line.split()[1] == PEER_IP and "TLS" in line


def test_error_types(tas):
    for mode, port in (("rst", 7141), ("close", 7142), ("idle", 7143)):
        linux(tas, f"linux-{mode}", PY, "-u", APPS / "linux_helper.py", mode, port, ready="listening")
    res = tas_run(tas, "errors", PY, APPS / "errors.py", PEER_IP, 7140, 7141, 7142, 7143).result(
        60, expect_ok=False
    )
    assert res["rc"] == 0, json.dumps(res)
    want = {
        "refused": "ConnectionRefusedError:ECONNREFUSED",
        "nb_connect_ex": "EINPROGRESS",
        "nb_writable": True,
        "so_error": "ECONNREFUSED",
        "nb_connect": "BlockingIOError:EINPROGRESS",
        "nb_connected_writable": True,
        "nb_recv": "BlockingIOError:EAGAIN",
        "idle_not_readable": True,
        "timeout": "TimeoutError",
        "reset": "ConnectionResetError:ECONNRESET",
        "reset_data": "bye",
        "send_after_reset": "BrokenPipeError:EPIPE",
        "peer_close_eof": True,
        "addrinuse": "OSError:EADDRINUSE",
        "ephemeral": True,
        "bound_port_taken": True,
        "nb_accept": "BlockingIOError:EAGAIN",
        "udp_type": "socket",
    }
    assert {k: res.get(k) for k in want} == want
    assert res["send_after_close"][-1] == "BrokenPipeError:EPIPE"
    assert 0.25 <= res["timeout_waited"] <= 2


def test_threads_share_a_socket_and_close_then_exit_delivers(tas):
    echo = linux(tas, "linux-echo", PY, "-u", APPS / "aio_echo.py", "server", 7150, ready="listening")
    sink = tas.peer("server", PEER_IP, 7151, script="recv_eof,close", timeout=30, ready="listening")
    res = tas_run(tas, "threads", PY, APPS / "threads_client.py", PEER_IP, 7150, 7151).result(60)
    assert res["echoed"] == 4 * MiB
    got = sink.result(30)
    want = bytes(range(256)) * (8 * 4096)
    assert got["rx_bytes"] == len(want) and got["rx_sha256"] == hashlib.sha256(want).hexdigest()
    assert peers(echo) == {STACK_IP}


def test_direct_and_pair_sends_keep_their_order(tas):
    """send() goes straight into the flow while the socketpair is empty and
    through the pump otherwise (sendall larger than the send buffer); a
    Linux receiver must get the bytes in the order the app wrote them."""
    sink = tas.peer("server", PEER_IP, 7152, script="recv_eof,close", timeout=60, ready="listening")
    res = tas_run(tas, "mixed-sends", PY, APPS / "mixed_sends.py", PEER_IP, 7152).result(60)
    got = sink.result(30)
    assert got["rx_bytes"] == res["bytes"], f"received {got['rx_bytes']} of {res['bytes']} bytes"
    assert got["rx_sha256"] == res["sha256"], "bytes arrived in another order (or differ)"
    assert res["epipe"] == "EPIPE"


def test_accepted_sockets_report_resets(tas):
    """Every accepted socket is linked to its stack connection from its
    first call, even when the app accepts while the pump is still inside
    connect() (it used to fall back to the socketpair for good: no direct
    sends, and a peer's RST read as plain EOF)."""
    n = 30
    srv = tas_run(tas, "accept-many", PY, APPS / "accept_many.py", 7160, n, ready="listening")
    cli = linux(tas, "rst-client", PY, "-u", APPS / "linux_helper.py", "rst_client", 7160, STACK_IP, n)
    assert cli.result(60)["echoed"] == n
    res = srv.result(60)
    assert res["echoed"] == 5 * n
    assert res["outcomes"] == {"ConnectionResetError": n}, res
