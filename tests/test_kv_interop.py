"""`tas kv-server` against the real Redis clients (Debian redis-tools) from
the Linux peer namespace, through the stack; and the same server code on
Linux sockets (``--kernel``) for the comparison run.

Needs root and redis-cli/redis-benchmark (skipped without them).  Uses the
session stack of tests/conftest.py.  Asserts behaviour only (replies,
bytes, errors, exit status), never speed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import tas_argv

from libtas.resp import ReplyParser, encode_command

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="interop tests need root (network namespaces, TAP devices)"),
]


def test_redis_tools_present():
    """The interop tests below need redis-cli/redis-benchmark (scripts/dev.sh
    installs redis-tools): missing tools fail here instead of skipping."""
    assert shutil.which("redis-cli") and shutil.which("redis-benchmark"), "apt-get install -y redis-tools"

STACK_IP = "198.18.0.2"
LINUX_IP = "198.18.0.3"
KV_PORT = 6379
KV_MEM_PORT = 6381
KV_LINUX_PORT = 6380


def kv_server(tas, port: int, *extra: str, kernel: bool = False):
    argv = [*tas_argv(), "kv-server", "--port", str(port), *extra]
    if kernel:
        argv += ["--kernel", "--bind", LINUX_IP]
    else:
        argv += ["--state-dir", str(tas.state_dir)]
    app = tas.spawn(tas.topo.stack_ns, f"kv-server:{port}", argv)
    app.wait_line("listening", 15)
    return app


def peer(
    tas, argv: list[str], *, timeout: float = 60, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    return tas.topo.run(tas.topo.peer_ns, argv, input=stdin, capture_output=True, timeout=timeout)


def cli(tas, *args: str, host: str = STACK_IP, port: int = KV_PORT, stdin: bytes | None = None) -> bytes:
    r = peer(tas, ["redis-cli", "-h", host, "-p", str(port), *args], stdin=stdin, timeout=30)
    assert r.returncode == 0, f"redis-cli {args} failed: {r.stderr!r}"
    return r.stdout


def bench(
    tas, tests: str, *, host: str = STACK_IP, port: int = KV_PORT, n: int = 10000
) -> subprocess.CompletedProcess:
    return peer(
        tas,
        [
            "redis-benchmark",
            "-h",
            host,
            "-p",
            str(port),
            "-t",
            tests,
            "-c",
            "50",
            "-P",
            "16",
            "-n",
            str(n),
            "--csv",
        ],
        timeout=90,
    )


def raw_exchange(tas, payload: bytes, *, host: str = STACK_IP, port: int = KV_PORT) -> tuple[list, bool]:
    """Send payload from the peer namespace with a Linux socket; returns the
    replies and whether the server closed the connection."""
    with tas.topo.enter(tas.topo.peer_ns):
        s = socket.create_connection((host, port), timeout=10)
    with s:
        s.sendall(payload)
        rp = ReplyParser()
        closed = False
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                closed = True
                break
            rp.feed(data)
            s.settimeout(1.0)  # after the first bytes: wait briefly for more
    return list(rp), closed


def _csv_tests(out: str) -> dict[str, float]:
    rows = {}
    for line in out.splitlines()[1:]:
        parts = [p.strip('"') for p in line.split(",")]
        if len(parts) >= 2:
            rows[parts[0]] = float(parts[1])
    return rows


@pytest.fixture
def kv(tas):
    return kv_server(tas, KV_PORT)


def test_redis_cli_basic_and_binary_and_4mib(tas, kv):
    assert cli(tas, "ping") == b"PONG\n"
    assert cli(tas, "set", "k", "v", "EX", "100") == b"OK\n"
    assert cli(tas, "ttl", "k") == b"100\n"
    assert cli(tas, "incr", "n") == b"1\n" and cli(tas, "incrby", "n", "41") == b"42\n"
    assert cli(tas, "config", "get", "save") == b"save\n\n"
    err = cli(tas, "lpush", "l", "x")
    assert err.startswith(b"ERR unknown command 'lpush'"), err
    # binary: every byte value, through -x (value from stdin) and --raw
    blob = bytes(range(256)) * 4
    assert cli(tas, "-x", "set", "bin", stdin=blob) == b"OK\n"
    assert cli(tas, "--raw", "get", "bin") == blob + b"\n"
    # a 4 MiB value
    big = os.urandom(4 << 20)
    assert cli(tas, "-x", "set", "big", stdin=big) == b"OK\n"
    assert cli(tas, "strlen", "big") == b"4194304\n"
    assert cli(tas, "--raw", "get", "big") == big + b"\n"
    assert cli(tas, "del", "big", "bin", "k", "n") == b"4\n"


def test_redis_benchmark_pipelined_50_clients(tas, kv):
    r = bench(tas, "ping,set,get,incr,mset")
    assert r.returncode == 0, f"redis-benchmark failed: {r.stderr.decode(errors='replace')}"
    assert b"Error" not in r.stderr, r.stderr
    rows = _csv_tests(r.stdout.decode())
    assert set(rows) >= {"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"}, rows
    print("\nredis-benchmark via the stack: " + ", ".join(f"{k} {v:.0f}/s" for k, v in rows.items()))
    # the counter saw every INCR
    assert int(cli(tas, "get", "counter:__rand_int__")) == 10000


def test_redis_benchmark_unsupported_command_gets_error_not_hang(tas, kv):
    """redis-benchmark exits at the first error reply (its design, not a
    failure of the server): LPUSH must end quickly with the RESP error."""
    r = bench(tas, "lpush", n=2000)
    assert r.returncode == 1
    assert b"Error from server: ERR unknown command 'LPUSH'" in r.stderr, r.stderr
    assert cli(tas, "ping") == b"PONG\n"


def test_malformed_resp_errors_and_server_survives(tas, kv):
    cases = [
        (b"*1\r\n$1073741824\r\nabc", "ERR Protocol error: invalid bulk length"),  # 1 GiB declared
        (b"*2\r\n$3\r\nGET\r\n$3\r\nabcdef\r\n", "ERR Protocol error: expected CRLF after bulk data"),
        (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n+PING\r\n", "ERR Protocol error: expected '$', got '+'"),
        (b'SET a "unbalanced\r\n', "ERR Protocol error: unbalanced quotes in request"),
    ]
    for payload, want in cases:
        replies, closed = raw_exchange(tas, b"PING\r\n" + payload)
        assert replies == ["PONG", want] and closed, (payload, replies, closed)
    # truncated: the server waits for the rest (like Redis), then answers once it comes
    with tas.topo.enter(tas.topo.peer_ns):
        s = socket.create_connection((STACK_IP, KV_PORT), timeout=10)
    with s:
        s.sendall(encode_command("SET", "t", "x" * 100)[:-30])
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(100)
        s.settimeout(10)
        s.sendall(encode_command("SET", "t", "x" * 100)[-30:])
        assert s.recv(100) == b"+OK\r\n"
    assert cli(tas, "ping") == b"PONG\n"
    assert cli(tas, "strlen", "t") == b"100\n"


def test_max_memory_refuses_writes(tas):
    kv_server(tas, KV_MEM_PORT, "--max-memory", str(1 << 20))
    assert cli(tas, "-x", "set", "a", stdin=b"x" * (600 << 10), port=KV_MEM_PORT) == b"OK\n"
    out = cli(tas, "-x", "set", "b", stdin=b"x" * (600 << 10), port=KV_MEM_PORT)
    assert out.startswith(b"OOM command not allowed"), out
    # a single argument above the limit is refused by the parser without buffering it
    replies, closed = raw_exchange(tas, b"*3\r\n$3\r\nSET\r\n$1\r\nc\r\n$2097152\r\n", port=KV_MEM_PORT)
    assert replies == ["ERR Protocol error: invalid bulk length"] and closed
    assert cli(tas, "del", "a", port=KV_MEM_PORT) == b"1\n"
    assert cli(tas, "-x", "set", "b", stdin=b"x" * (600 << 10), port=KV_MEM_PORT) == b"OK\n"


def test_same_server_on_linux_sockets(tas):
    """--kernel: identical protocol code on Linux TCP (the comparison baseline)."""
    kv_server(tas, KV_LINUX_PORT, kernel=True)
    assert cli(tas, "ping", host=LINUX_IP, port=KV_LINUX_PORT) == b"PONG\n"
    r = bench(tas, "ping,set,get,incr,mset", host=LINUX_IP, port=KV_LINUX_PORT)
    assert r.returncode == 0, r.stderr
    rows = _csv_tests(r.stdout.decode())
    assert len(rows) == 6, rows
    print("\nredis-benchmark via Linux sockets: " + ", ".join(f"{k} {v:.0f}/s" for k, v in rows.items()))


REDIS_PY = r"""
import os, sys, redis
for proto in (None, 2):  # None: redis-py's default, RESP3 via HELLO 3 (redis-py >= 8)
    kw = {} if proto is None else {"protocol": proto}
    r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), socket_timeout=10, **kw)
    assert r.ping()
    blob = os.urandom(1 << 20) + bytes(range(256))
    assert r.set("b", blob, ex=100) and r.get("b") == blob and r.ttl("b") == 100
    p = r.pipeline(transaction=False)
    for _ in range(500):
        p.incr("n%s" % proto)
    assert p.execute()[-1] == 500
    assert r.mget("b", "nope")[1] is None
    assert r.get("nope") is None
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    try:
        r.lpush("l", "x")
        raise SystemExit("LPUSH did not fail")
    except redis.ResponseError as e:
        assert "unknown command" in str(e)
    r.close()
print("redis-py ok")
"""


def test_redis_py_under_tas_run(tas, tmp_path):
    """redis-py (its default RESP3, and RESP2) as a client through
    the stack via the `tas run` shim, against the kv-server on Linux sockets
    in the peer namespace."""
    srv = tas.spawn(
        tas.topo.peer_ns,
        "kv-peer",
        [*tas_argv(), "kv-server", "--kernel", "--bind", "198.18.0.1", "--port", "6382"],
    )
    srv.wait_line("listening", 15)
    script = tmp_path / "redis_py.py"
    script.write_text(REDIS_PY)
    r = tas.topo.run(
        tas.topo.stack_ns,
        [
            *tas_argv(),
            "run",
            "--state-dir",
            str(tas.state_dir),
            sys.executable,
            str(script),
            "198.18.0.1",
            "6382",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "redis-py ok" in r.stdout, r.stdout + r.stderr
