"""`tas demo`: the stack and Linux side by side on a throw-away test network.

Steps (each bounded in time):

1. build the namespace topology (:class:`nicemu.topology.Topology` with
   ``linux_server=True``): a Linux peer at 198.18.0.1, the stack's TAP
   bridged in the stack namespace, and 198.18.0.3 as a Linux kernel address
   in the stack namespace for the comparison server;
2. start ``tas start`` (198.18.0.2/24), ``tas echo-server --port 7`` and
   ``tas kv-server --port 6379`` in the stack namespace, and a threaded Linux
   echo server on 198.18.0.3:7 and the same kv-server code on Linux sockets
   (``tas kv-server --kernel``) on 198.18.0.3:6379;
3. drive both from the peer namespace with a client script: echo RPCs on one
   connection (rate, p50/p99 latency), 16 concurrent connections (aggregate
   rate), a bulk echo with a sha256 check (Gbit/s), and a connection rate
   (connect + one 64 B echo + close); then a key-value load: SET and GET
   from 50 connections, 16 commands pipelined (redis-benchmark if installed,
   else the built-in RESP load of libtas/kvserver.py);
4. print a side-by-side table and the stack's counters, write
   ``out/demo/results.json`` and ``out/demo/demo.png`` (if matplotlib is
   importable) under the current directory;
5. clean up on success, failure, Ctrl-C or SIGTERM: stop the servers and the
   stack (SIGTERM, SIGKILL after 5 s), remove the namespaces (unless
   ``--keep``).

Network safety: only 198.18.0.0/15 addresses, only inside the namespaces
created here.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kernel_slowpath import procs
from kernel_slowpath.procs import Proc

#: Every namespace of a demo run starts with this (then 4 hex digits).
DEMO_PREFIX = "tasdemo"
ECHO_PORT = 7
KV_PORT = 6379
KV_CLIENTS = 50
KV_PIPELINE = 16
READY_TIMEOUT = 20.0
STOP_GRACE = 5.0
#: Time budget for the measurement phase as a whole (each step also has its own).
MEASURE_BUDGET = 100.0
OUT_DIR = Path("out") / "demo"

#: (key, label, unit, client test, field in the client's answer)
METRICS = [
    ("rpc_rps", "echo RPC, 1 conn", "req/s", "rpc", "rps"),
    ("rpc_p50_us", "  latency p50", "µs", "rpc", "p50_us"),
    ("rpc_p99_us", "  latency p99", "µs", "rpc", "p99_us"),
    ("conc_rps", "echo RPC, {parallel} conns", "req/s", "conc", "rps"),
    ("bulk_gbps", "bulk echo {bulk_mib} MiB", "Gbit/s", "bulk", "gbps"),
    ("conn_rate", "connect+echo+close", "conn/s", "connrate", "cps"),
    ("kv_set_rps", "KV SET, 50 conns, pipeline 16", "req/s", "kv", "set_rps"),
    ("kv_get_rps", "KV GET, 50 conns, pipeline 16", "req/s", "kv", "get_rps"),
]
TESTS = [
    ("rpc", "echo RPCs, 1 connection"),
    ("conc", "echo RPCs, {parallel} connections"),
    ("bulk", "bulk echo {bulk_mib} MiB"),
    ("connrate", "connection rate ({conns} conns)"),
    ("kv", "key-value SET/GET ({kv_requests} each)"),
]
SERVERS = ("stack", "linux")

# A threaded echo server on plain Linux sockets (run in the stack namespace):
# the same behaviour as `tas echo-server` (echo everything, close on EOF).
LINUX_ECHO = r"""
import os, signal, socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, port))
ls.listen(1024)

def serve(c):
    with c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                b = c.recv(256 << 10)
                if not b:
                    return
                c.sendall(b)
            except OSError:
                return

print(f"linux echo: listening on {host}:{port}", flush=True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# The load generator (run in the peer namespace).  argv[1] is a JSON object
# {"test", "host", "port", "requests", "parallel", "bulk_mib", "conns",
# "timeout"}; prints one JSON object; exit status 0 on success.
CLIENT = r"""
import hashlib, json, random, selectors, socket, sys, threading, time

cfg = json.loads(sys.argv[1])
HOST, PORT, TEST = cfg["host"], cfg["port"], cfg["test"]
DEADLINE = time.monotonic() + cfg["timeout"]
IO_TIMEOUT = min(10.0, cfg["timeout"])
MSG = bytes(range(64))


class StepTimeout(Exception):
    pass


def check_deadline():
    if time.monotonic() > DEADLINE:
        raise StepTimeout(f"step did not finish within {cfg['timeout']:.3g} s")


def connect():
    s = socket.create_connection((HOST, PORT), timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += b
    return bytes(buf)


def rpc_once(s):
    s.sendall(MSG)
    if recv_exact(s, len(MSG)) != MSG:
        raise ValueError("echo mismatch")


def pct(sorted_vals, q):
    i = max(0, min(len(sorted_vals) - 1, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def test_rpc():
    n = cfg["requests"]
    with connect() as s:
        for _ in range(min(50, n)):
            rpc_once(s)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            a = time.perf_counter_ns()
            rpc_once(s)
            lat.append(time.perf_counter_ns() - a)
            if i & 63 == 0:
                check_deadline()
        el = time.perf_counter() - t0
    lat.sort()
    return {"requests": n, "seconds": el, "rps": n / el,
            "p50_us": pct(lat, 0.50) / 1e3, "p99_us": pct(lat, 0.99) / 1e3,
            "max_us": lat[-1] / 1e3}


def test_conc():
    per, par = cfg["requests"], cfg["parallel"]
    socks = [connect() for _ in range(par)]
    try:
        for s in socks:
            rpc_once(s)  # warm up
        sel = selectors.DefaultSelector()
        left, got = {}, {}
        t0 = time.perf_counter()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            left[s], got[s] = per, bytearray()
            if s.send(MSG) != len(MSG):
                raise OSError("short send")
        active, done, last = par, 0, time.monotonic()
        while active:
            check_deadline()
            ev = sel.select(timeout=1.0)
            if not ev and time.monotonic() - last > IO_TIMEOUT:
                raise StepTimeout(f"no progress for {IO_TIMEOUT:.0f} s ({done} of {per * par} done)")
            for key, _ in ev:
                s = key.fileobj
                b = s.recv(4096)
                if not b:
                    raise ConnectionError("unexpected EOF")
                g = got[s]
                g += b
                while len(g) >= len(MSG):
                    if bytes(g[:len(MSG)]) != MSG:
                        raise ValueError("echo mismatch")
                    del g[:len(MSG)]
                    left[s] -= 1
                    done += 1
                    last = time.monotonic()
                    if left[s]:
                        if s.send(MSG) != len(MSG):
                            raise OSError("short send")
                    else:
                        sel.unregister(s)
                        active -= 1
        el = time.perf_counter() - t0
        sel.close()
    finally:
        for s in socks:
            s.close()
    return {"requests": per * par, "connections": par, "seconds": el, "rps": per * par / el}


def test_bulk():
    total = cfg["bulk_mib"] << 20
    data = random.Random(0x7A5).randbytes(total)
    want = hashlib.sha256(data).hexdigest()
    s = connect()
    s.settimeout(IO_TIMEOUT)
    err = []

    def sender():
        try:
            mv = memoryview(data)
            for off in range(0, total, 256 << 10):
                s.sendall(mv[off:off + (256 << 10)])
                if time.monotonic() > DEADLINE:
                    raise StepTimeout("send did not finish in time")
            s.shutdown(socket.SHUT_WR)
        except Exception as e:  # noqa: BLE001
            err.append(f"sender: {type(e).__name__}: {e}")

    h, got = hashlib.sha256(), 0
    t0 = time.perf_counter()
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    try:
        while True:
            check_deadline()
            b = s.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
            if got > total:
                raise ValueError(f"received more than sent ({got} > {total})")
    finally:
        el = time.perf_counter() - t0
        th.join(timeout=5)
        s.close()
    if err:
        raise RuntimeError(err[0])
    sha = h.hexdigest()
    res = {"bytes": total, "received": got, "seconds": el, "gbps": got * 8 / el / 1e9,
           "sha256_sent": want, "sha256_received": sha, "sha256_ok": sha == want and got == total}
    if not res["sha256_ok"]:
        res["error"] = f"sha256 mismatch: received {got} of {total} bytes, {sha[:16]} != {want[:16]}"
    return res


def test_connrate():
    n = cfg["conns"]
    t0 = time.perf_counter()
    for i in range(n):
        with connect() as s:
            rpc_once(s)
        if i & 15 == 0:
            check_deadline()
    el = time.perf_counter() - t0
    return {"connections": n, "seconds": el, "cps": n / el}


try:
    out = {"test": TEST, "ok": True, **globals()["test_" + TEST]()}
    if out.get("error"):
        out["ok"] = False
except Exception as e:  # noqa: BLE001
    out = {"test": TEST, "ok": False, "error": f"{type(e).__name__}: {e}"}
print(json.dumps(out), flush=True)
sys.exit(0 if out["ok"] else 1)
"""


class StepError(Exception):
    """A demo step failed; the message says which and why."""


class Interrupted(Exception):
    """SIGINT or SIGTERM."""


@dataclass
class Run:
    args: argparse.Namespace
    workdir: Path
    topo: object = None
    procs: list[Proc] = field(default_factory=list)
    results: dict = field(default_factory=lambda: {s: {} for s in SERVERS})
    failed: list[str] = field(default_factory=list)
    stats: dict | None = None


# -- processes -------------------------------------------------------------------------

_tas_argv = procs.tas_argv
_tail = procs.tail
_descendants = procs.descendants


def _wait_for(proc: Proc, needle: str, timeout: float) -> None:
    procs.wait_for(proc, needle, timeout, StepError)


def _stop(proc: Proc) -> str | None:
    """SIGTERM, wait, SIGKILL after STOP_GRACE s.  Returns a note if it had to kill."""
    return procs.stop(proc, STOP_GRACE)




def _spawn(run: Run, name: str, ns: str, argv: list[str]) -> Proc:
    log = run.workdir / f"{name}.log"
    with open(log, "wb") as f:
        # a session of its own: a Ctrl-C on the terminal reaches only the demo,
        # which then stops everything in order
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(name, p, log)
    run.procs.append(proc)
    return proc


# -- steps --------------------------------------------------------------------------------


def _start(run: Run) -> None:
    topo = run.topo
    state = run.workdir / "state"
    state.mkdir()
    tas = _tas_argv()
    stack = _spawn(
        run,
        "tas start",
        topo.stack_ns,
        [
            *tas,
            "start",
            "--tap",
            topo.tap,
            "--ip",
            f"{topo.stack_ip}/{topo.prefixlen}",
            "--state-dir",
            str(state),
        ],
    )
    _wait_for(stack, "ready", READY_TIMEOUT)
    echo = _spawn(
        run,
        "tas echo-server",
        topo.stack_ns,
        [*tas, "echo-server", "--port", str(ECHO_PORT), "--state-dir", str(state)],
    )
    lin = _spawn(
        run,
        "linux echo server",
        topo.stack_ns,
        [sys.executable, "-c", LINUX_ECHO, topo.linux_ip, str(ECHO_PORT)],
    )
    kv = _spawn(
        run,
        "tas kv-server",
        topo.stack_ns,
        [*tas, "kv-server", "--port", str(KV_PORT), "--state-dir", str(state)],
    )
    kvl = _spawn(
        run,
        "linux kv-server",
        topo.stack_ns,
        [*tas, "kv-server", "--kernel", "--bind", topo.linux_ip, "--port", str(KV_PORT)],
    )
    for p in (echo, lin, kv, kvl):
        _wait_for(p, "listening", READY_TIMEOUT)


def _measure_kv(run: Run, host: str, timeout: float) -> dict:
    """SET then GET from the peer namespace: redis-benchmark if installed
    (exit status 0, every test reported), else the built-in RESP load."""
    n = run.args.kv_requests
    ns = ["ip", "netns", "exec", run.topo.peer_ns]
    if shutil.which("redis-benchmark"):
        argv = [
            *ns,
            "redis-benchmark",
            "-h",
            host,
            "-p",
            str(KV_PORT),
            "-t",
            "set,get",
            "-c",
            str(KV_CLIENTS),
            "-P",
            str(KV_PIPELINE),
            "-n",
            str(n),
            "--csv",
        ]
        tool = "redis-benchmark"
    else:
        argv = [
            *ns,
            sys.executable,
            "-m",
            "libtas.kvserver",
            "load",
            host,
            str(KV_PORT),
            "--clients",
            str(KV_CLIENTS),
            "--pipeline",
            str(KV_PIPELINE),
            "--requests",
            str(n),
            "--timeout",
            str(timeout),
        ]
        tool = "built-in"
    try:
        r = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
    except subprocess.TimeoutExpired:
        raise StepError(f"{tool} hung (killed after {timeout + 10:.0f} s)") from None
    if r.returncode != 0:
        raise StepError(f"{tool} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    res = {"ok": True, "tool": tool, "requests": n, "clients": KV_CLIENTS, "pipeline": KV_PIPELINE}
    if tool == "redis-benchmark":
        for line in r.stdout.splitlines()[1:]:
            cols = [c.strip('"') for c in line.split(",")]
            if len(cols) >= 5 and cols[0] in ("SET", "GET"):
                k = cols[0].lower()
                res[f"{k}_rps"] = float(cols[1])
                res[f"{k}_p50_ms"] = float(cols[4])
                res[f"{k}_p99_ms"] = float(cols[6]) if len(cols) > 6 else None
    else:
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        d = json.loads(line[len("RESULT ") :])
        for k in ("set", "get"):
            res[f"{k}_rps"] = d[k]["ops_per_s"]
            res[f"{k}_p50_ms"] = d[k]["p50_ms"]
            res[f"{k}_p99_ms"] = d[k]["p99_ms"]
            res[f"{k}_latencies_ms"] = d[k]["batch_latencies_ms"]
    if "set_rps" not in res or "get_rps" not in res:
        raise StepError(f"{tool}: no SET/GET result in its output: {r.stdout.strip()[-300:]}")
    return res


def _measure(run: Run, test: str, server: str, timeout: float) -> dict:
    topo = run.topo
    a = run.args
    host = topo.stack_ip if server == "stack" else topo.linux_ip
    if server == "stack":
        for p in run.procs:
            if p.name.startswith("tas") and p.popen.poll() is not None:
                raise StepError(f"{p.name} is no longer running (exit {p.popen.returncode}):\n{_tail(p.log)}")
    if test == "kv":
        return _measure_kv(run, host, timeout)
    cfg = {
        "test": test,
        "host": host,
        "port": ECHO_PORT,
        "requests": a.requests,
        "parallel": a.parallel,
        "bulk_mib": a.bulk_mib,
        "conns": a.conns,
        "timeout": timeout,
    }
    res = procs.run_json(["ip", "netns", "exec", topo.peer_ns, sys.executable, "-c", CLIENT, json.dumps(cfg)],
                         timeout + 10, "client", StepError)
    if not res.get("ok"):
        raise StepError(res.get("error", "client failed"))
    return res


def _collect_stats(run: Run) -> None:
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            run.topo.stack_ns,
            *_tas_argv(),
            "stats",
            "--json",
            "--state-dir",
            str(run.workdir / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    if r.returncode != 0:
        raise StepError(f"tas stats exited {r.returncode}: {r.stderr.strip()}")
    run.stats = json.loads(r.stdout)


# -- output -------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def _metric_rows(run: Run) -> list[dict]:
    a = run.args
    rows = []
    for key, label, unit, test, fld in METRICS:
        vals = {s: run.results[s].get(test, {}).get(fld) for s in SERVERS}
        ratio = vals["stack"] / vals["linux"] if vals["stack"] is not None and vals["linux"] else None
        rows.append(
            {
                "key": key,
                "label": label.format(parallel=a.parallel, bulk_mib=a.bulk_mib),
                "unit": unit,
                "stack": vals["stack"],
                "linux": vals["linux"],
                "ratio": ratio,
            }
        )
    return rows


def _table(run: Run):
    from rich.table import Table

    t = Table(title="tas demo: userspace stack vs Linux (echo and KV servers, client = Linux in peer netns)")
    t.add_column("metric")
    t.add_column("stack", justify="right")
    t.add_column("Linux", justify="right")
    t.add_column("ratio stack/Linux", justify="right")
    for r in _metric_rows(run):
        t.add_row(
            f"{r['label']} ({r['unit']})",
            _fmt(r["stack"]),
            _fmt(r["linux"]),
            "—" if r["ratio"] is None else f"{r['ratio']:.2f}×",
        )
    ok = {s: run.results[s].get("bulk", {}).get("sha256_ok") for s in SERVERS}
    t.add_row(
        "bulk sha256 check",
        *("passed" if ok[s] else ("FAILED" if ok[s] is False else "—") for s in SERVERS),
        "",
    )
    return t


def _stats_summary(st: dict) -> dict:
    return {
        "segments_in": st.get("segments_in"),
        "segments_out": st.get("segments_out"),
        "retransmissions": st.get("retransmissions"),
        "drops_total": sum(st.get("drops", {}).values()),
        "drops": {k: v for k, v in sorted(st.get("drops", {}).items()) if v},
    }


def _print_stats(console, st: dict) -> None:
    s = _stats_summary(st)
    drops = ", ".join(f"{k} {v}" for k, v in s["drops"].items()) or "none"
    console.print(
        f"[bold]tas stats[/bold] (stack): segments in {s['segments_in']}, segments out "
        f"{s['segments_out']}, retransmissions {s['retransmissions']}, drops {s['drops_total']} "
        f"({drops})"
    )


def _write_results(run: Run, elapsed: float, interrupted: int) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    a = run.args
    doc = {
        "ok": not run.failed and not interrupted,
        "interrupted": bool(interrupted),
        "failed": run.failed,
        "runtime_s": round(elapsed, 2),
        "params": {
            "requests": a.requests,
            "parallel": a.parallel,
            "bulk_mib": a.bulk_mib,
            "conns": a.conns,
            "kv_requests": a.kv_requests,
            "step_timeout_s": a.step_timeout,
            "payload_bytes": 64,
        },
        "prefix": run.topo.prefix if run.topo is not None else None,
        "metrics": {
            r["key"]: {k: r[k] for k in ("label", "unit", "stack", "linux", "ratio")}
            for r in _metric_rows(run)
        },
        "bulk_sha256_ok": {s: run.results[s].get("bulk", {}).get("sha256_ok") for s in SERVERS},
        "raw": run.results,
        "stack_stats": _stats_summary(run.stats) if run.stats else None,
        "stack_stats_full": run.stats,
    }
    path = OUT_DIR / "results.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _plot(run: Run) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: skipped the plot (pip install matplotlib)"
    rows = _metric_rows(run)
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    for ax, r in zip(axes.flat, rows, strict=False):
        vals = [r["stack"] or 0, r["linux"] or 0]
        bars = ax.bar(["stack", "Linux"], vals, color=["tab:orange", "tab:blue"])
        ax.bar_label(bars, labels=[_fmt(r["stack"]), _fmt(r["linux"])], fontsize=8)
        ax.set_title(r["label"].strip(), fontsize=10)
        ax.set_ylabel(r["unit"])
        ax.margins(y=0.15)
    fig.suptitle("tas demo: userspace stack vs Linux (lower is better for latency)")
    fig.tight_layout()
    path = OUT_DIR / "demo.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path}"


# -- main -----------------------------------------------------------------------------------


_MAIN_PID = os.getpid()


def _raise_interrupted(signum, _frame):
    if os.getpid() != _MAIN_PID:
        # a forked helper (pyroute2 forks to create namespaces and stops the
        # child with SIGTERM): it must not run the demo's clean-up
        os._exit(128 + signum)
    raise Interrupted(signum)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    out = Console()
    err = Console(stderr=True)
    for name, default in (("parallel", 16), ("conns", 200), ("step_timeout", 30.0), ("kv_requests", 20000)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if os.geteuid() != 0:
        err.print("tas demo: needs root (network namespaces, TAP device)")
        return 1
    if args.requests < 1 or args.bulk_mib < 1 or args.parallel < 1 or args.conns < 1:
        err.print("tas demo: --requests, --bulk-mib, --parallel and --conns must be positive")
        return 1

    t_start = time.monotonic()
    run = Run(args, Path(tempfile.mkdtemp(prefix="tas-demo-")))
    interrupted = 0  # the signal number if interrupted
    steps = [
        (
            t,
            s,
            d.format(
                parallel=args.parallel, bulk_mib=args.bulk_mib, conns=args.conns, kv_requests=args.kv_requests
            ),
        )
        for t, d in TESTS
        for s in SERVERS
    ]
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    old = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<48}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )
    try:
        with progress:
            task = progress.add_task("network namespaces", total=3 + len(steps) + 1)
            try:
                from nicemu.topology import Topology

                run.topo = Topology(DEMO_PREFIX + secrets.token_hex(2), linux_server=True)
                try:
                    run.topo.up()
                except Exception as e:
                    raise StepError(f"building the topology failed: {e}") from e
                progress.advance(task)
                progress.update(task, description="starting the stack and echo servers")
                _start(run)
                progress.advance(task, 2)
            except StepError as e:
                run.failed.append(f"setup: {e}")
                progress.console.print(f"[red]FAILED[/red] setup: {e}")
            if not run.failed:
                budget_end = time.monotonic() + MEASURE_BUDGET
                for test, server, desc in steps:
                    who = "stack" if server == "stack" else "Linux"
                    progress.update(task, description=f"{desc}: {who}")
                    timeout = min(args.step_timeout, budget_end - time.monotonic())
                    try:
                        if timeout < 1:
                            raise StepError(f"skipped: the {MEASURE_BUDGET:.0f} s time budget is used up")
                        run.results[server][test] = _measure(run, test, server, timeout)
                    except StepError as e:
                        run.failed.append(f"{desc} against {who}: {e}")
                        progress.console.print(f"[red]FAILED[/red] {desc} against {who}: {e}")
                    progress.advance(task)
                progress.update(task, description="stack counters")
                try:
                    _collect_stats(run)
                except (StepError, subprocess.TimeoutExpired, ValueError) as e:
                    run.failed.append(f"tas stats: {e}")
                progress.advance(task)
                progress.update(task, description="done")
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = e.args[0] if isinstance(e, Interrupted) else signal.SIGINT
        err.print(f"[yellow]interrupted ({signal.Signals(interrupted).name}): cleaning up[/yellow]")
    finally:
        # no second Ctrl-C in the middle of the clean-up
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
        notes = _cleanup(run)
        for sig, h in old.items():
            signal.signal(sig, h)

    elapsed = time.monotonic() - t_start
    if interrupted:
        for n in notes:
            err.print(n)
        shutil.rmtree(run.workdir, ignore_errors=True)
        err.print("tas demo: interrupted, cleaned up")
        return 128 + interrupted
    out.print(_table(run))
    if run.stats:
        _print_stats(out, run.stats)
    path = _write_results(run, elapsed, interrupted)
    out.print(f"wrote {path}")
    try:
        out.print(_plot(run))
    except Exception as e:  # noqa: BLE001 - the plot is a nicety, never a failure
        out.print(f"plot skipped: {type(e).__name__}: {e}")
    for n in notes:
        err.print(n)
    if run.failed:
        err.print(f"[red bold]tas demo FAILED[/red bold]: {len(run.failed)} step(s) failed:")
        for f in run.failed:
            err.print(f"  - {f}")
        err.print(f"logs of the servers: {run.workdir}")
        return 1
    shutil.rmtree(run.workdir, ignore_errors=True)
    out.print(f"tas demo: ok in {time.monotonic() - t_start:.1f} s")
    return 0


def _cleanup(run: Run) -> list[str]:
    notes = []
    # echo servers first, then the stack
    for proc in sorted(run.procs, key=lambda p: p.name == "tas start"):
        note = _stop(proc)
        if note:
            notes.append(note)
    if run.topo is not None:
        if run.args.keep:
            notes.append(
                f"--keep: namespaces {' and '.join(run.topo.namespaces)} left up "
                f"(remove with: ip netns del {run.topo.peer_ns}; ip netns del {run.topo.stack_ns})"
            )
        else:
            run.topo.down()
    return notes
