"""`tas bench`: the stack against Linux TCP, in one run, on a throw-away network.

What runs where (see docs/PERFORMANCE.md for the reasoning)::

    netns <p>peer (CPU 0)              netns <p>stk
    loadgen (C, built at run time) --> 198.18.0.2  tas start (slow path CPU 0,
                                                   fast path CPU 1 .. N)
                                                   native servers    (CPU 1)
                                                   shim server       (CPU 1)
                                   --> 198.18.0.3  Linux kernel TCP,
                                                   C epoll server    (CPU 1)

Servers ("columns"):

* ``native``: ``tas echo-server`` (libtas/echo.py) for the echo modes, and
  discard/chargen on the native API (scripts/bench_server.py) for bulk and
  bulk-rx; conns uses the native echo server with small (4 KiB) buffers.
* ``shim``: scripts/bench_server.py's plain-socket server under
  ``tas run`` (the socket shim), if this installation has ``tas run``;
  otherwise every figure is ``n/a``.
* ``linux``: ``loadgen serve`` (C, epoll) on the kernel's TCP at
  198.18.0.3 (same topology, same pinning as the native server).
* ``linux-py`` (optional, ``--servers``): the shim's Python program on
  Linux sockets, to separate the application's cost from the stack's.

Modes: rr (64 B closed-loop echo, 1 and 16 connections), bulk (client ->
server, discard), bulk-rx (server -> client, chargen), crr (connect, one
64 B echo, close), conns (N concurrent connections each echoing once), idle
(CPU of the stack's processes over 5 s with open idle connections, after
1 s of quiet).  crr also reports the server app's CPU per connection and,
for the stack, its slow path's.  Asked for only: isolation (rr beside a
16-flow neighbour app) and hop (ICMP echo round trip, which the stack
answers in its slow path: the floor of each slow-path hop of a crr
connection, with the slow path's CPU per echo).  Every figure is measured ``--repeat`` times (interleaved
across servers); the table shows the median and the range, and the ratio
of the medians to Linux.

Outputs under ``out/bench/``: ``results.json`` (all raw runs, machine,
pinning, versions), ``latency_cdf.png`` and ``throughput.png``.

Bounded: every client has a time limit and a hard subprocess timeout, the
whole run has ``--budget`` seconds; clean-up on success, error, Ctrl-C and
SIGTERM.  Network safety: only 198.18.0.0/15, only in the namespaces made
here.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kernel_slowpath import procs
from kernel_slowpath.procs import Proc

BENCH_PREFIX = "tasbench"
OUT_DIR = Path("out") / "bench"
REPO = Path(__file__).resolve().parent.parent
LOADGEN_SRC = REPO / "scripts" / "loadgen.c"
SERVER_PY = REPO / "scripts" / "bench_server.py"
READY_TIMEOUT = 20.0
CLIENT_CPU = 0
SERVER_CPU = 1
EXTRA_SRC_IPS = ["198.18.0.11", "198.18.0.12"]  # more client addresses for > 64k connections
# conns: one process holds at most this many sockets (the hard RLIMIT_NOFILE may
# be 20k and cannot be raised without CAP_SYS_RESOURCE); the load generator
# splits N over ceil(N / 16,000) workers by itself, the Linux server gets
# ceil(N / LINUX_CONNS_PER_WORKER) SO_REUSEPORT processes (the kernel's hash
# spreads connections unevenly, hence the margin)
LINUX_CONNS_PER_WORKER = 12000
CONNS_BUF = 4096  # the native conns server's flow buffers (rx and tx)
CONNS_DRAIN_S = 120.0  # after a conns run: wait at most this long for the stack to close its flows
SHIM_BASE = 1007  # the shim server's echo port (discard +2, chargen +12)
# conns: a second shim server whose context has CONNS_BUF flow buffers
# (TAS_SHIM_BUF), as the native column's echo server; the shim's default
# 2 x 256 KiB per flow fit ~511 flows in a 256 MiB context region
SHIM_CONNS_BASE = 1107
# idle with more connections than this: they go to those 4 KiB servers too
# (the default servers' 2 x 256 KiB per flow fit ~511 in a context region)
IDLE_SMALL_BUF_AT = 256

HOP_INTERVAL_S = 0.0005  # hop: ping -i (root may go below 0.2 s)
DEFAULT_MODES = ("rr", "bulk", "bulk-rx", "crr", "conns", "idle")
# only when asked for (--modes isolation,hop)
MODES = (*DEFAULT_MODES, "isolation", "hop")
BULK_PY = REPO / "scripts" / "bulk_sender.py"
ISO_SERVERS = ("native", "linux")
SERVERS_ALL = ("native", "shim", "linux", "linux-py")

#: (key, label, unit, better) -- "better" is "high" or "low"
FIGURES = [
    ("rr1_rps", "rr 64 B, 1 conn", "req/s", "high"),
    ("rr1_p50", "  p50", "µs", "low"),
    ("rr1_p99", "  p99", "µs", "low"),
    ("rr1_p999", "  p99.9", "µs", "low"),
    ("rr16_rps", "rr 64 B, 16 conns", "req/s", "high"),
    ("rr16_p50", "  p50", "µs", "low"),
    ("rr16_p99", "  p99", "µs", "low"),
    ("rr16_p999", "  p99.9", "µs", "low"),
    ("bulk_gbps", "bulk (client->server)", "Gbit/s", "high"),
    ("bulkrx_gbps", "bulk-rx (server->client)", "Gbit/s", "high"),
    ("crr_cps", "crr (connect+64 B+close)", "conn/s", "high"),
    ("crr_app_us", "  server app CPU per conn", "µs", "low"),
    ("crr_sp_us", "  slow-path CPU per conn", "µs", "low"),
    ("conns_served", "conns served", "conns", "high"),
    ("conns_s", "  time for all", "s", "low"),
    ("idle_cpu", "idle CPU (stack+app)", "% core", "low"),
    ("hop_us", "ICMP echo round trip (stack: slow path)", "µs", "low"),
    ("hop_sp_us", "  slow-path CPU per echo", "µs", "low"),
    ("iso_alone_p50", "isolation: echo rr alone p50", "µs", "low"),
    ("iso_alone_p99", "  alone p99", "µs", "low"),
    ("iso_loaded_p50", "  beside bulk app p50", "µs", "low"),
    ("iso_loaded_p99", "  beside bulk app p99", "µs", "low"),
    ("iso_p99_ratio", "  p99 beside / alone", "x", "low"),
    ("iso_bulk_gbps", "  the bulk app's flows", "Gbit/s", "high"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="short smoke run (1 repeat, tiny sizes)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help=f"comma list of {','.join(MODES)} (default: all but isolation and hop)")
    p.add_argument(
        "--servers",
        default="native,shim,linux",
        help=f"comma list of {','.join(SERVERS_ALL)} (default native,shim,linux)",
    )
    p.add_argument("--rr-time", type=float, default=3.0, help="seconds per rr run (default 3)")
    p.add_argument("--rr-conns", default="1,16", help="connection counts for rr (default 1,16)")
    p.add_argument("--bulk-mib", type=int, default=256, help="MiB per bulk/bulk-rx run (default 256)")
    p.add_argument("--crr-count", type=int, default=20000, help="max connections per crr run")
    p.add_argument("--crr-time", type=float, default=3.0, help="seconds per crr run (default 3)")
    p.add_argument("--conns", type=int, default=4096, help="concurrent connections for conns (default 4096)")
    p.add_argument("--idle-conns", type=int, default=16, help="idle connections held open (default 16)")
    p.add_argument("--idle-time", type=float, default=5.0, help="idle CPU sampling window (default 5 s)")
    p.add_argument("--hop-count", type=int, default=3000,
                   help=f"hop: ICMP echoes per run, {HOP_INTERVAL_S * 1e3:g} ms apart (default 3000)")
    p.add_argument("--iso-time", type=float, default=5.0,
                   help="isolation: seconds of each rr measurement, alone and beside the bulk app (default 5)")
    p.add_argument("--iso-flows", type=int, default=16, help="isolation: flows of the bulk app (default 16)")
    p.add_argument("--iso-nice", type=int, default=0,
                   help="isolation: nice value of the bulk app, for the stack and Linux alike (default 0: the "
                        "same priority as the echo server; e.g. 10 separates the stack's own interference "
                        "from the CPU the neighbour takes)")
    p.add_argument(
        "--server-cpu",
        type=int,
        default=SERVER_CPU,
        help=f"CPU of every server process (default {SERVER_CPU})",
    )
    p.add_argument(
        "--client-cpu", type=int, default=CLIENT_CPU, help=f"CPU of the load generator (default {CLIENT_CPU})"
    )
    p.add_argument("--fp-cores", type=int, default=1, help="fast-path cores of the stack (default 1)")
    p.add_argument("--poll-us", type=int, default=None, help="pass --poll-us to tas start")
    p.add_argument("--cc", default=None, help="pass --cc to tas start (default: its default, cubic)")
    p.add_argument(
        "--tap-offload",
        choices=["on", "off"],
        default="on",
        help="open the stack's TAP with IFF_VNET_HDR and send TSO4 super-segments (default on)",
    )
    p.add_argument("--budget", type=float, default=1200.0, help="time budget for the whole run (s)")
    p.add_argument("--out", default=str(OUT_DIR), help="output directory (default out/bench)")
    p.add_argument("--keep", action="store_true", help="leave the topology up (debugging)")


# -- the load generator ---------------------------------------------------------------------


def build_loadgen(src: Path = LOADGEN_SRC) -> Path:
    """Compile scripts/loadgen.c once per source version into a cache dir."""
    code = src.read_bytes()
    tag = hashlib.sha256(code).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tas-bench"
    cache.mkdir(parents=True, exist_ok=True)
    exe = cache / f"loadgen-{tag}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    tmp = cache / f".loadgen-{tag}.{os.getpid()}"
    r = subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-o", str(tmp), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise BenchError(f"gcc failed on {src}:\n{r.stderr[-2000:]}")
    os.replace(tmp, exe)
    return exe


# -- plumbing ---------------------------------------------------------------------------------


class BenchError(Exception):
    """A step failed; the message says which and why."""


class Interrupted(Exception):
    pass


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    loadgen: Path | None = None
    topo: object = None
    procs: list[Proc] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    na: dict = field(default_factory=dict)  # server -> reason it is n/a
    pids: dict = field(default_factory=dict)  # server -> app Proc list
    raw: dict = field(default_factory=dict)  # server -> mode -> [loadgen outputs]
    figs: dict = field(default_factory=dict)  # server -> figure -> [values]
    failed: list[str] = field(default_factory=list)
    stack: Proc | None = None
    deadline: float = 0.0
    loadavg_start: list[float] | None = None


_tas_argv = procs.tas_argv
_tail = procs.tail


def _wait_for(proc: Proc, needle: str, timeout: float) -> None:
    procs.wait_for(proc, needle, timeout, BenchError)


def _tree(pid: int) -> list[int]:
    return [pid, *procs.descendants(pid)]


def _stop(proc: Proc, grace: float = 5.0) -> None:
    procs.stop(proc, grace)


def _pin(cpu: int | None):
    if cpu is None:
        return None

    def fn():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})

    return fn


def _spawn(b: Bench, name: str, ns: str, argv: list[str], cpu: int | None, env: dict | None = None) -> Proc:
    log = b.workdir / (name.replace(" ", "_").replace("/", "_") + ".log")
    with open(log, "wb") as f:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pin(cpu),
            env=env,
            cwd=str(REPO),
        )
    proc = Proc(name, p, log)
    b.procs.append(proc)
    return proc


def _cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
        return " ".join(p.decode(errors="replace") for p in parts[:4] if p)[:60]
    except OSError:
        return "?"


# -- set-up -------------------------------------------------------------------------------------


def _has_tas_run() -> bool:
    try:
        r = subprocess.run([*_tas_argv(), "run", "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _setup_network(b: Bench) -> None:
    from pyroute2 import IPRoute

    from nicemu.topology import Topology, enter

    b.topo = Topology(BENCH_PREFIX + secrets.token_hex(2), linux_server=True)
    b.topo.up()
    t = b.topo
    with IPRoute(netns=t.peer_ns) as ip:
        idx = ip.link_lookup(ifname=t.peer_veth)[0]
        for a in EXTRA_SRC_IPS:
            ip.addr("add", index=idx, address=a, prefixlen=t.prefixlen)
    # many short connections from one client address: widen the port range,
    # reuse TIME_WAIT ports; the Linux server needs a long accept queue
    for ns, vals in (
        (
            t.peer_ns,
            {
                "net/ipv4/ip_local_port_range": "1024 65535",
                "net/ipv4/tcp_tw_reuse": "1",
                "net/ipv4/tcp_max_tw_buckets": "262144",
            },
        ),
        (t.stack_ns, {"net/core/somaxconn": "8192", "net/ipv4/tcp_max_syn_backlog": "8192"}),
    ):
        with enter(ns):
            for k, v in vals.items():
                with contextlib.suppress(OSError), open(f"/proc/sys/{k}", "w") as f:
                    f.write(v)


def _conns_stack_args(conns: int, n_flows: int) -> list[str]:
    """`tas start` options that let the one app and context of the native
    conns server hold --conns flows at once: the per-app flow limit (by
    default half of --max-flows), the context region (default 256 MiB, i.e.
    ~32k flows of 2 x 4 KiB buffers + a 64 B block) and the per-app buffer
    limit (default 1 GiB).  Regions are sparse memfds: only what the flows
    use is touched."""
    args: list[str] = []
    if conns > n_flows // 2:
        args += ["--app-max-flows", str(n_flows)]
    # buddy blocks per flow: a 64 B appflow block + rx + tx; plus what the
    # engine keeps free before it admits a SYN (room for the half-open ones,
    # at most the load generator's window of 256, at the listener context's
    # buffer size), plus the rings
    need = (conns + 257) * (64 + 2 * CONNS_BUF) + (16 << 20)
    need_mb = -(-need >> 20)
    if need_mb > 256:
        args += ["--ctx-region-mb", str(min(4095, 1 << (need_mb - 1).bit_length()))]
    if need_mb > 1024:
        args += ["--app-max-buf-mb", str(need_mb)]
    return args


def _small_buf_conns(a: argparse.Namespace) -> int:
    """Connections the 4 KiB-buffer servers hold at once (0: not started)."""
    modes = set(a.modes_list)
    n = a.conns if "conns" in modes else 0
    if "idle" in modes and a.idle_conns > IDLE_SMALL_BUF_AT:
        n = max(n, a.idle_conns)
    return n


def _start_servers(b: Bench) -> None:
    a, t = b.args, b.topo
    state = b.workdir / "state"
    state.mkdir()
    tas = _tas_argv()
    modes = set(a.modes_list)
    small = _small_buf_conns(a)
    if {"native", "shim"} & set(b.servers):
        n_flows = max(16384, small + 2048)
        argv = [
            *tas,
            "start",
            "--tap",
            t.tap,
            "--ip",
            f"{t.stack_ip}/{t.prefixlen}",
            "--state-dir",
            str(state),
            "--max-flows",
            str(n_flows),
            "--fp-cores",
            str(a.fp_cores),
        ]
        if a.poll_us is not None:
            argv += ["--poll-us", str(a.poll_us)]
        if a.cc is not None:
            argv += ["--cc", a.cc]
        if small:
            argv += _conns_stack_args(small, n_flows)
        senv = dict(os.environ, TAS_TAP_OFFLOAD="1" if a.tap_offload == "on" else "0")
        b.stack = _spawn(
            b, "tas start", t.stack_ns, argv, None, senv
        )  # pins itself (slow path CPU 0, FPs 1..)
        _wait_for(b.stack, "ready", READY_TIMEOUT)
    env = dict(os.environ, TAS_STATE_DIR=str(state), PYTHONPATH=str(REPO))
    waits = []
    py = sys.executable
    if "native" in b.servers:
        procs = [
            _spawn(
                b,
                "native echo",
                t.stack_ns,
                [*tas, "echo-server", "--port", "7", "--state-dir", str(state)],
                b.args.server_cpu,
                env,
            )
        ]
        if "bulk" in modes:
            procs.append(
                _spawn(
                    b,
                    "native discard",
                    t.stack_ns,
                    [py, str(SERVER_PY), "native", "discard", "--port", "9"],
                    b.args.server_cpu,
                    env,
                )
            )
        if "bulk-rx" in modes:
            procs.append(
                _spawn(
                    b,
                    "native chargen",
                    t.stack_ns,
                    [py, str(SERVER_PY), "native", "chargen", "--port", "19"],
                    b.args.server_cpu,
                    env,
                )
            )
        if small:
            procs.append(
                _spawn(
                    b,
                    "native echo 4k",
                    t.stack_ns,
                    [py, str(SERVER_PY), "native", "echo", "--port", "8", "--buf", str(CONNS_BUF)],
                    b.args.server_cpu,
                    env,
                )
            )
        b.pids["native"] = procs
        waits += procs
    if "shim" in b.servers:
        if not _has_tas_run():
            b.na["shim"] = "n/a: this installation has no `tas run` (socket shim)"
        else:
            p = _spawn(
                b,
                "shim server",
                t.stack_ns,
                [
                    *tas,
                    "run",
                    "--",
                    py,
                    str(SERVER_PY),
                    "socket",
                    "--host",
                    t.stack_ip,
                    "--port",
                    str(SHIM_BASE),
                ],
                b.args.server_cpu,
                env,
            )
            b.pids["shim"] = [p]
            waits.append(p)
            if small:
                p = _spawn(
                    b,
                    "shim conns server",
                    t.stack_ns,
                    [*tas, "run", "--", py, str(SERVER_PY), "socket", "--host", t.stack_ip,
                     "--port", str(SHIM_CONNS_BASE)],
                    b.args.server_cpu,
                    dict(env, TAS_SHIM_BUF=str(CONNS_BUF)),
                )
                b.pids["shim"].append(p)
                waits.append(p)
    if "linux" in b.servers:
        argv = [str(b.loadgen), "serve", "--host", t.linux_ip, "--port", "7"]
        if "conns" in modes and a.conns > LINUX_CONNS_PER_WORKER:
            argv += ["--workers", str(-(-a.conns // LINUX_CONNS_PER_WORKER))]
        p = _spawn(b, "linux server", t.stack_ns, argv, b.args.server_cpu)
        b.pids["linux"] = [p]
        waits.append(p)
    if "linux-py" in b.servers:
        p = _spawn(
            b,
            "linux-py server",
            t.stack_ns,
            [py, str(SERVER_PY), "socket", "--host", t.linux_ip, "--port", str(SHIM_BASE)],
            b.args.server_cpu,
            env,
        )
        b.pids["linux-py"] = [p]
        waits.append(p)
    if "isolation" in modes:  # the bulk neighbours' sink: Linux discard in the peer namespace
        waits.append(_spawn(b, "peer sink", t.peer_ns, [str(b.loadgen), "serve", "--host", t.peer_ip],
                            b.args.client_cpu))
    for p in waits:
        try:
            _wait_for(p, "listening", READY_TIMEOUT)
        except BenchError as e:
            if p.name.startswith("shim"):
                b.na["shim"] = f"n/a: the shim server did not start: {str(e).splitlines()[0]}"
                b.pids.pop("shim", None)
            else:
                raise


def _target(b: Bench, server: str, mode: str) -> tuple[str, int]:
    t = b.topo
    if mode == "idle" and b.args.idle_conns > IDLE_SMALL_BUF_AT and server in ("native", "shim"):
        mode = "conns"  # the 4 KiB-buffer servers
    port_of = {"rr": 0, "crr": 0, "idle": 0, "conns": 0, "bulk": 2, "bulk-rx": 12}
    if server == "native":
        if mode == "conns":
            return t.stack_ip, 8
        return t.stack_ip, 7 + port_of[mode]
    if server == "shim":
        return t.stack_ip, SHIM_CONNS_BASE if mode == "conns" else SHIM_BASE + port_of[mode]
    if server == "linux":
        return t.linux_ip, 7 + port_of[mode]
    return t.linux_ip, SHIM_BASE + port_of[mode]


# -- measurements -------------------------------------------------------------------------------


def _loadgen(b: Bench, mode: str, server: str, opts: dict, limit: float) -> dict:
    host, port = _target(b, server, mode)
    argv = [str(b.loadgen), mode, "--host", host, "--port", str(port), "--cpu", str(b.args.client_cpu)]
    for k, v in opts.items():
        argv += [f"--{k}", str(v)]
    left = b.deadline - time.monotonic()
    if left < 5:
        raise BenchError("the time budget (--budget) is used up")
    hard = min(limit + 45, left)
    res = procs.run_json(["ip", "netns", "exec", b.topo.peer_ns, *argv], hard, f"loadgen {mode}", BenchError)
    if not res.get("ok"):
        raise BenchError(f"loadgen {mode}: {res.get('error', 'failed')}")
    return res


def _idle(b: Bench, server: str) -> dict:
    """Open idle connections, wait 1 s, sample the CPU of the server-side
    processes over --idle-time seconds."""
    a = b.args
    settle = 1.0
    host, port = _target(b, server, "idle")
    hold = settle + a.idle_time + 2.0
    argv = [
        str(b.loadgen),
        "idle",
        "--host",
        host,
        "--port",
        str(port),
        "--cpu",
        str(CLIENT_CPU),
        "--conns",
        str(a.idle_conns),
        "--time",
        str(hold),
    ]
    p = subprocess.Popen(
        ["ip", "netns", "exec", b.topo.peer_ns, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 30
        import select as _select

        while time.monotonic() < deadline:
            r, _, _ = _select.select([p.stdout], [], [], 0.5)
            if r:
                line = p.stdout.readline()
                break
            if p.poll() is not None:
                break
        try:
            opened = json.loads(line)
        except ValueError:
            raise BenchError(f"loadgen idle did not open its connections: {line.strip()!r}") from None
        if not opened.get("ok") or opened.get("failed"):
            raise BenchError(f"loadgen idle: {opened}")
        time.sleep(settle)
        groups: dict[str, list[int]] = {}
        if server in ("native", "shim") and b.stack is not None:
            groups["stack"] = _tree(b.stack.popen.pid)
        app = b.pids.get(server, [])[:1]
        if a.idle_conns > IDLE_SMALL_BUF_AT:  # the 4 KiB-buffer server took them (_target)
            app = [pr for pr in b.pids.get(server, []) if pr.name in ("native echo 4k", "shim conns server")] or app
        groups["app"] = [pid for pr in app for pid in _tree(pr.popen.pid)]
        t0 = {g: {pid: _cpu_ticks(pid) for pid in pids} for g, pids in groups.items()}
        w0 = time.monotonic()
        time.sleep(a.idle_time)
        el = time.monotonic() - w0
        hz = os.sysconf("SC_CLK_TCK")
        out: dict = {"connections": opened.get("connections"), "seconds": el, "groups": {}, "per_process": {}}
        total = 0.0
        for g, pids in groups.items():
            gsum = 0.0
            for pid in pids:
                t1 = _cpu_ticks(pid)
                if t1 is None or t0[g][pid] is None:
                    continue
                pct = (t1 - t0[g][pid]) / hz / el * 100.0
                gsum += pct
                out["per_process"][f"{pid} {_proc_name(pid)}"] = round(pct, 3)
            out["groups"][g] = round(gsum, 3)
            total += gsum
        out["cpu_pct"] = total
    finally:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.communicate()
    return out


def _server_pids(b: Bench, server: str) -> tuple[int | None, list[int]]:
    """(slow-path pid or None, the server app's pids): whose CPU a crr or
    hop run charges.  The fast path is left out: it spins while idle."""
    sp = b.stack.popen.pid if server in ("native", "shim") and b.stack is not None else None
    app = b.pids.get(server, [])[:1]
    return sp, [pid for pr in app for pid in _tree(pr.popen.pid)]


def _ticks(pids: list[int]) -> int:
    return sum(t for t in (_cpu_ticks(pid) for pid in pids) if t is not None)


def _crr(b: Bench, server: str, opts: dict, limit: float) -> dict:
    """A crr run, with the CPU the server app (and the slow
    path) used per connection, in us: the figures that say where crr's
    time goes (docs/PERFORMANCE.md)."""
    sp, app = _server_pids(b, server)
    hz = os.sysconf("SC_CLK_TCK")
    a0, s0 = _ticks(app), _ticks([sp] if sp else [])
    res = _loadgen(b, "crr", server, opts, limit)
    a1, s1 = _ticks(app), _ticks([sp] if sp else [])
    n = res.get("connections") or 0
    if n:
        res["app_us"] = round((a1 - a0) / hz / n * 1e6, 1) if app else None
        res["sp_us"] = round((s1 - s0) / hz / n * 1e6, 1) if sp else None
    return res


def _hop(b: Bench, server: str, count: int, limit: float) -> dict:
    """ICMP echo from the client's namespace to the server's address, one
    at a time (ping -i).  The stack's fast path punts the request to the
    slow path, which answers it in Python; Linux answers in its kernel.
    So for the stack this is the floor of any exchange the slow path is on
    -- each crr connection has two such hops in its chain (SYN -> SYN-ACK,
    handshake ACK -> the app's ``newconn``) -- and the slow path's CPU per
    echo is the floor of its per-event cost."""
    host, _ = _target(b, server, "rr")
    sp, _app = _server_pids(b, server)
    hz = os.sysconf("SC_CLK_TCK")
    s0 = _ticks([sp]) if sp else 0
    argv = ["ip", "netns", "exec", b.topo.peer_ns, "taskset", "-c", str(b.args.client_cpu),
            "ping", "-q", "-n", "-c", str(count), "-i", str(HOP_INTERVAL_S), "-W", "1", host]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"ping: {e}") from None
    s1 = _ticks([sp]) if sp else 0
    m = re.search(r"(\d+) received", r.stdout)
    got = int(m.group(1)) if m else 0
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", r.stdout)
    if not m or not got:
        raise BenchError(f"ping {host}: no replies ({(r.stdout + r.stderr).strip()[-200:]!r})")
    mn, avg, mx, _mdev = (float(x) * 1000 for x in m.groups())
    return {"sent": count, "received": got, "min_us": mn, "avg_us": avg, "max_us": mx,
            "sp_us": round((s1 - s0) / hz / got * 1e6, 1) if sp else None}


def _isolation(b: Bench, server: str) -> dict:
    """rr (1 connection, 64 B) to the server's echo alone, then again while
    a second app -- its own process and registration, on the same stack for
    ``native``, Linux sockets beside the Linux echo server for ``linux`` --
    sends --iso-flows bulk flows to a Linux discard server in the peer
    namespace.  Bounded: each rr run by --iso-time, the bulk app by
    --iso-time + 5 s and a hard stop."""
    a, t = b.args, b.topo
    rr = {"conns": 1, "time": a.iso_time, "size": 64}
    alone = _loadgen(b, "rr", server, rr, a.iso_time + 2)
    api = "native" if server == "native" else "socket"
    argv = [sys.executable, str(BULK_PY), api, "--host", t.peer_ip, "--port", "9", "--flows", str(a.iso_flows),
            "--time", str(a.iso_time + 5), "--state-dir", str(b.workdir / "state")]
    if a.iso_nice:
        argv = ["nice", "-n", str(a.iso_nice), *argv]
    env = dict(os.environ, TAS_STATE_DIR=str(b.workdir / "state"), PYTHONPATH=str(REPO))
    bulk = _spawn(b, f"bulk app {server}", t.stack_ns, argv, a.server_cpu, env)
    try:
        _wait_for(bulk, "sending", READY_TIMEOUT)
        time.sleep(0.5)  # the flows are past slow start
        loaded = _loadgen(b, "rr", server, rr, a.iso_time + 2)
        _wait_for(bulk, '"ok"', a.iso_time + 15)
        lines = [ln for ln in bulk.log.read_text(errors="replace").splitlines() if ln.startswith("{")]
        bres = json.loads(lines[-1])
        if not bres.get("ok"):
            raise BenchError(f"bulk app: {bres.get('error')}")
    finally:
        _stop(bulk)
        b.procs.remove(bulk)
    keep = ("rps", "p50_us", "p99_us", "p999_us")
    return {"alone": {k: alone[k] for k in keep}, "loaded": {k: loaded[k] for k in keep},
            "p99_ratio": loaded["p99_us"] / alone["p99_us"] if alone["p99_us"] else None,
            "bulk": bres, "flows": a.iso_flows, "seconds": a.iso_time, "bulk_nice": a.iso_nice}


def _record(b: Bench, server: str, mode: str, res: dict) -> None:
    b.raw.setdefault(server, {}).setdefault(mode, []).append(res)
    f = b.figs.setdefault(server, {})

    def add(k, v):
        f.setdefault(k, []).append(v)

    if mode == "rr":
        tag = f"rr{res['conns']}"
        add(f"{tag}_rps", res["rps"])
        add(f"{tag}_p50", res["p50_us"])
        add(f"{tag}_p99", res["p99_us"])
        add(f"{tag}_p999", res["p999_us"])
    elif mode == "bulk":
        add("bulk_gbps", res["gbps"])
    elif mode == "bulk-rx":
        add("bulkrx_gbps", res["gbps"])
    elif mode == "crr":
        add("crr_cps", res["cps"])
        for k in ("app_us", "sp_us"):
            if res.get(k) is not None:
                add(f"crr_{k}", res[k])
    elif mode == "hop":
        add("hop_us", res["avg_us"])
        if res.get("sp_us") is not None:
            add("hop_sp_us", res["sp_us"])
    elif mode == "conns":
        add("conns_served", res["served"])
        add("conns_s", res["seconds"])
    elif mode == "idle":
        add("idle_cpu", res["cpu_pct"])
    elif mode == "isolation":
        add("iso_alone_p50", res["alone"]["p50_us"])
        add("iso_alone_p99", res["alone"]["p99_us"])
        add("iso_loaded_p50", res["loaded"]["p50_us"])
        add("iso_loaded_p99", res["loaded"]["p99_us"])
        add("iso_p99_ratio", res["p99_ratio"])
        add("iso_bulk_gbps", res["bulk"]["gbps"])


def _steps(b: Bench) -> list[tuple[str, dict, float]]:
    """(mode, loadgen options, expected seconds) in run order."""
    a = b.args
    steps = []
    for mode in a.modes_list:
        if mode == "rr":
            for n in a.rr_conns_list:
                steps.append(("rr", {"conns": n, "time": a.rr_time, "size": 64}, a.rr_time + 2))
        elif mode in ("bulk", "bulk-rx"):
            steps.append((mode, {"bytes": a.bulk_mib << 20, "time": 120.0}, 120.0))
        elif mode == "crr":
            steps.append(("crr", {"count": a.crr_count, "time": a.crr_time}, a.crr_time))
        elif mode == "conns":
            opts = {"count": a.conns, "time": _conns_time(a.conns)}
            if a.conns > 60000:
                opts["src"] = ",".join(["198.18.0.1", *EXTRA_SRC_IPS])
            steps.append(("conns", opts, opts["time"]))
        elif mode == "idle":
            steps.append(("idle", {}, a.idle_time + 4))
        elif mode == "isolation":
            steps.append(("isolation", {}, 2 * a.iso_time + 15))
        elif mode == "hop":
            steps.append(("hop", {"count": a.hop_count}, a.hop_count * HOP_INTERVAL_S + 5))
    return steps


def _conns_time(conns: int) -> float:
    """loadgen conns --time: 120 s, longer for many connections (the stack's
    slow path sets up a few hundred per second on the 2-CPU machine; a run
    that stops making progress still ends after 5 s without any)."""
    return max(120.0, conns / 200.0)


def _stack_stats(b: Bench, timeout: float = 15.0) -> dict | None:
    """`tas stats --json` of the bench's stack (None if it does not answer)."""
    try:
        r = subprocess.run(
            [*_tas_argv(), "stats", "--state-dir", str(b.workdir / "state"), "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _open_flows(b: Bench) -> int | None:
    st = _stack_stats(b)
    return None if st is None else int(st.get("flows_open", 0)) + int(st.get("half_open", 0))


def _drain_stack(b: Bench, base: int, limit: float) -> float | None:
    """Wait (at most `limit` s) until the stack has no more open or
    half-open flows than `base` (before the run); the seconds it took, None
    if it did not get there."""
    t0 = time.monotonic()
    end = t0 + min(limit, max(0.0, b.deadline - t0 - 30))
    while True:
        n = _open_flows(b)
        if n is not None and n <= base:
            return round(time.monotonic() - t0, 3)
        if time.monotonic() >= end:
            return None
        time.sleep(1.0)


def _measure_all(b: Bench, progress=None) -> None:
    a = b.args
    active = [s for s in b.servers if s not in b.na]
    for mode, opts, expect in _steps(b):
        for rep in range(a.repeat):
            for server in active:
                if mode in ("isolation", "hop") and server not in ISO_SERVERS:
                    continue
                desc = f"{mode} {opts.get('conns', '')} {server} #{rep + 1}".replace("  ", " ")
                if progress:
                    progress(desc)
                drain = mode == "conns" and server in ("native", "shim") and b.stack is not None
                base = (_open_flows(b) or 0) if drain else 0
                try:
                    if b.deadline - time.monotonic() < expect + 5:
                        raise BenchError("skipped: the time budget (--budget) is used up")
                    if mode == "idle":
                        res = _idle(b, server)
                    elif mode == "isolation":
                        res = _isolation(b, server)
                    elif mode == "hop":
                        res = _hop(b, server, opts["count"], expect)
                    elif mode == "crr":
                        res = _crr(b, server, opts, expect)
                    else:
                        res = _loadgen(b, mode, server, opts, expect)
                    _record(b, server, mode, res)
                except BenchError as e:
                    b.failed.append(f"{desc}: {e}")
                    print(f"FAILED {desc}: {e}", file=sys.stderr, flush=True)
                # a conns run leaves many flows closing: give the stacks a moment,
                # and the TAS stack (its slow path shares the client's CPU) the
                # time to finish them, so they do not slow the next run
                if mode == "conns":
                    time.sleep(1.0)
                    if drain:
                        drained = _drain_stack(b, base, CONNS_DRAIN_S)
                        runs = b.raw.get(server, {}).get("conns", [])
                        if runs and "drain_s" not in runs[-1]:
                            runs[-1]["drain_s"] = drained


# -- output ---------------------------------------------------------------------------------------


def _summary(vals: list[float] | None) -> dict | None:
    if not vals:
        return None
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "runs": vals,
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def figure_rows(b: Bench) -> list[dict]:
    rows = []
    for key, label, unit, better in FIGURES:
        row = {"key": key, "label": label, "unit": unit, "better": better, "values": {}, "ratio": {}}
        for s in b.servers:
            row["values"][s] = None if s in b.na else _summary(b.figs.get(s, {}).get(key))
        lin = row["values"].get("linux")
        for s in b.servers:
            v = row["values"][s]
            if s != "linux" and v and lin and lin["median"]:
                row["ratio"][s] = v["median"] / lin["median"]
        if any(v for v in row["values"].values()):
            rows.append(row)
    return rows


def render_table(b: Bench) -> str:
    rows = figure_rows(b)
    servers = b.servers
    head = ["figure", *servers, *[f"{s}/linux" for s in servers if s != "linux" and "linux" in servers]]
    lines = []
    for r in rows:
        cells = [f"{r['label']} ({r['unit']}{', lower better' if r['better'] == 'low' else ''})"]
        for s in servers:
            v = r["values"][s]
            if s in b.na:
                cells.append("n/a")
            elif v is None:
                cells.append("—")
            elif v["n"] > 1:
                cells.append(f"{_fmt(v['median'])} [{_fmt(v['min'])}–{_fmt(v['max'])}]")
            else:
                cells.append(_fmt(v["median"]))
        for s in servers:
            if s == "linux" or "linux" not in servers:
                continue
            q = r["ratio"].get(s)
            cells.append("n/a" if s in b.na else ("—" if q is None else f"{q:.2f}×"))
        lines.append(cells)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))
        )
    ]
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    for s, why in b.na.items():
        out.append(f"{s}: {why}")
    return "\n".join(out)


def _git_rev() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if r.returncode == 0:
            d = subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return r.stdout.strip() + ("+dirty" if d.stdout.strip() else "")
    return None


def machine_info() -> dict:
    cpu = None
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    gcc = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gcc = subprocess.run(
            ["gcc", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "mem_bytes": mem,
        "python": platform.python_version(),
        "gcc": gcc,
        "tree": _git_rev(),
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    """1/5/15-minute load: other work on the machine makes the figures noisy."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def pinning_info(b: Bench) -> dict:
    return {
        "loadgen (peer netns)": f"CPU {b.args.client_cpu}",
        "tas start (slow path)": "CPU 0 (pins itself)",
        "fast path core k": "CPU 1+k mod ncpu (pinned by tas start)",
        "servers (native echo/discard/chargen, shim server, linux server)": f"CPU {b.args.server_cpu}",
        "kernel softirq": "runs on the CPU of the sender (veth/TAP/bridge are synchronous)",
    }


def write_outputs(b: Bench, elapsed: float, interrupted: bool) -> list[Path]:
    out = Path(b.args.out)
    out.mkdir(parents=True, exist_ok=True)
    a = b.args
    doc = {
        "ok": not b.failed and not interrupted,
        "interrupted": interrupted,
        "failed": b.failed,
        "runtime_s": round(elapsed, 2),
        "params": {
            k: getattr(a, k)
            for k in (
                "quick",
                "repeat",
                "rr_time",
                "bulk_mib",
                "crr_count",
                "crr_time",
                "conns",
                "idle_conns",
                "idle_time",
                "iso_time",
                "iso_flows",
                "iso_nice",
                "hop_count",
                "fp_cores",
                "poll_us",
                "tap_offload",
            )
        },
        "prefix": b.topo.prefix if b.topo is not None else None,
        "modes": a.modes_list,
        "rr_conns": a.rr_conns_list,
        "servers": b.servers,
        "not_available": b.na,
        "machine": machine_info(),
        "loadavg_at_start": b.loadavg_start,
        "pinning": pinning_info(b),
        "figures": {r["key"]: r for r in figure_rows(b)},
        "raw": b.raw,
    }
    paths = [out / "results.json"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n")
    with contextlib.suppress(Exception):
        paths += _plots(b, out)
    return paths


def _plots(b: Bench, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"native": "tab:orange", "shim": "tab:green", "linux": "tab:blue", "linux-py": "tab:purple"}
    paths = []
    # latency CDF: the median-rate run of each (server, conns)
    n_list = b.args.rr_conns_list
    fig, axes = plt.subplots(1, max(1, len(n_list)), figsize=(6 * max(1, len(n_list)), 4.2), squeeze=False)
    for ax, n in zip(axes[0], n_list, strict=False):
        for s in b.servers:
            runs = [r for r in b.raw.get(s, {}).get("rr", []) if r["conns"] == n]
            if not runs:
                continue
            runs.sort(key=lambda r: r["rps"])
            r = runs[len(runs) // 2]
            xs = [p[1] for p in r["cdf"]]
            ys = [p[0] for p in r["cdf"]]
            ax.plot(xs, ys, label=f"{s} (p50 {r['p50_us']:.0f} µs)", color=colors.get(s))
        ax.set_xscale("log")
        ax.set_xlabel("round-trip latency (µs)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"rr 64 B, {n} connection{'s' if n > 1 else ''}")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:  # rr was not among --modes
            ax.text(0.5, 0.5, "no rr runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    p = out / "latency_cdf.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    # throughput bars (median, with the range as error bars)
    keys = [
        k for k in ("rr1_rps", "rr16_rps", "bulk_gbps", "bulkrx_gbps", "crr_cps", "conns_served", "idle_cpu")
    ]
    rows = {r["key"]: r for r in figure_rows(b)}
    keys = [k for k in keys if k in rows]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3.8), squeeze=False)
        for ax, k in zip(axes[0], keys, strict=True):
            r = rows[k]
            names = [s for s in b.servers if r["values"].get(s)]
            med = [r["values"][s]["median"] for s in names]
            lo = [r["values"][s]["median"] - r["values"][s]["min"] for s in names]
            hi = [r["values"][s]["max"] - r["values"][s]["median"] for s in names]
            bars = ax.bar(names, med, yerr=[lo, hi], color=[colors.get(s) for s in names], capsize=3)
            ax.bar_label(bars, labels=[_fmt(v) for v in med], fontsize=7)
            ax.set_title(r["label"].strip(), fontsize=9)
            ax.set_ylabel(r["unit"])
            ax.tick_params(axis="x", labelsize=8)
            ax.margins(y=0.15)
        fig.suptitle("tas bench: median of runs, bars = range")
        fig.tight_layout()
        p = out / "throughput.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


# -- main ---------------------------------------------------------------------------------------------

_MAIN_PID = os.getpid()


def _raise_interrupted(signum, _frame):
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)  # a forked helper (pyroute2) must not clean up
    raise Interrupted(signum)


def _normalize(a: argparse.Namespace) -> None:
    a.modes_list = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes_list if m not in MODES]
    if bad:
        raise BenchError(f"unknown mode(s): {', '.join(bad)}")
    a.servers_list = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = [s for s in a.servers_list if s not in SERVERS_ALL]
    if bad:
        raise BenchError(f"unknown server(s): {', '.join(bad)}")
    a.rr_conns_list = [int(x) for x in a.rr_conns.split(",") if x.strip()]
    if a.quick:
        a.repeat = 1
        a.rr_time = min(a.rr_time, 0.5)
        a.bulk_mib = min(a.bulk_mib, 8)
        a.crr_count = min(a.crr_count, 100)
        a.crr_time = min(a.crr_time, 1.0)
        a.conns = min(a.conns, 100)
        a.idle_conns = min(a.idle_conns, 4)
        a.idle_time = min(a.idle_time, 1.0)
        a.iso_time = min(a.iso_time, 1.0)
        a.hop_count = min(a.hop_count, 100)
    if a.iso_time <= 0 or a.iso_flows < 1:
        raise BenchError("--iso-time and --iso-flows must be positive")
    if not -20 <= a.iso_nice <= 19:
        raise BenchError("--iso-nice must be within -20..19 (nice(1))")
    if a.hop_count < 1:
        raise BenchError("--hop-count must be positive")
    if a.repeat < 1 or a.rr_time <= 0 or a.bulk_mib < 1 or a.conns < 1 or a.idle_time <= 0:
        raise BenchError("--repeat, --rr-time, --bulk-mib, --conns and --idle-time must be positive")


def main(a: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("tas bench: needs root (network namespaces, TAP device)", file=sys.stderr)
        return 1
    try:
        _normalize(a)
    except BenchError as e:
        print(f"tas bench: {e}", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    b = Bench(a, Path(tempfile.mkdtemp(prefix="tas-bench-")))
    b.servers = a.servers_list
    b.deadline = t_start + a.budget
    b.loadavg_start = _loadavg()
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    old = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupted = 0

    def progress(desc: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f} s] {desc}", file=sys.stderr, flush=True)

    try:
        try:
            progress("building the load generator")
            b.loadgen = build_loadgen()
            progress("network namespaces")
            _setup_network(b)
            progress("starting the stack and the servers")
            _start_servers(b)
        except BenchError as e:
            b.failed.append(f"setup: {e}")
            print(f"FAILED setup: {e}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - report, then clean up
            b.failed.append(f"setup: {type(e).__name__}: {e}")
            print(f"FAILED setup: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if not b.failed:
            _measure_all(b, progress)
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = e.args[0] if isinstance(e, Interrupted) and e.args else signal.SIGINT
        print(f"tas bench: interrupted ({signal.Signals(interrupted).name}): cleaning up", file=sys.stderr)
    finally:
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
        _cleanup(b)
        for sig, h in old.items():
            signal.signal(sig, h)
    elapsed = time.monotonic() - t_start
    print(render_table(b))
    la = _loadavg()
    if la and b.loadavg_start:
        print(
            f"load average at start {b.loadavg_start[0]:.2f}, at end {la[0]:.2f} (on {os.cpu_count()} CPUs)"
        )
    for p in write_outputs(b, elapsed, bool(interrupted)):
        print(f"wrote {p}")
    if interrupted:
        shutil.rmtree(b.workdir, ignore_errors=True)
        return 128 + interrupted
    if b.failed:
        print(f"tas bench: {len(b.failed)} step(s) failed; server logs in {b.workdir}", file=sys.stderr)
        for f in b.failed:
            print(f"  - {f}", file=sys.stderr)
        return 1
    if b.args.keep:
        print(f"--keep: logs and state in {b.workdir}")
    else:
        shutil.rmtree(b.workdir, ignore_errors=True)
    print(f"tas bench: ok in {elapsed:.1f} s")
    return 0


def _cleanup(b: Bench) -> None:
    for proc in sorted(b.procs, key=lambda p: p.name == "tas start"):  # the stack last
        with contextlib.suppress(Exception):
            _stop(proc)
    if b.topo is not None and not b.args.keep:
        with contextlib.suppress(Exception):
            b.topo.down()
