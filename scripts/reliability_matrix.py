#!/usr/bin/env python3
"""Reliability matrix: bulk transfers through the seeded link emulator, the
stack against Linux and Linux against Linux, one row per condition.

Topology(linux_server=True, link="emu"): the Linux peer (198.18.0.1) reaches
both the stack (198.18.0.2, `tas start` on the TAP) and a Linux address on
the bridge (198.18.0.3) through the same emulator, so every row has four
transfers over the same impaired wire:

    linux->stack   Linux client sends, stack app receives
    stack->linux   stack app sends, Linux client receives
    linux->linux   198.18.0.1 sends to 198.18.0.3 (baseline)
    linux<-linux   198.18.0.3 sends to 198.18.0.1 (baseline)

Each transfer is checked byte for byte (sha256 of the pattern on both ends).
Per transfer the table shows goodput (receiver: payload / time from
connection to EOF), wall time, and retransmissions: for the stack the delta
of `tas stats --json` `retransmissions` (fast/RTO split), for Linux the
sender namespace's Tcp RetransSegs.

Sizes: 64 MiB per transfer in every condition (the issue's size; the stack
rows take about 7 minutes on a 2-core VM).  ``TAS_RELIABILITY_QUICK=1`` is
for development: 16 MiB, and less for the conditions that are slow by
construction (``cap_mib`` below: the 10 Mbit/s rate limit, long delays, the
mix); ``TAS_RELIABILITY_MIB`` overrides the size.  Needs root.

    python scripts/reliability_matrix.py                 # all conditions
    python scripts/reliability_matrix.py loss1 rate10    # some
    python scripts/reliability_matrix.py --json out.json --no-linux
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nicemu.topology import Topology  # noqa: E402

APPS = REPO / "tests" / "apps"
MiB = 1 << 20
PEER_IP, STACK_IP, LINUX_IP = "198.18.0.1", "198.18.0.2", "198.18.0.3"


@dataclasses.dataclass
class Condition:
    name: str
    desc: str
    link: dict
    cap_mib: int | None = None  # size cap with TAS_RELIABILITY_QUICK=1


REORDER = {"delay_us": 1000, "reorder_us": 5000}  # reordered frames arrive 5 ms late

CONDITIONS = [
    Condition("clean", "no impairment (emulator only)", {}),
    Condition("loss1", "1% loss each way", {"loss": 1}),
    Condition("loss5", "5% loss each way", {"loss": 5}),
    Condition("reorder5", "5% of frames +5 ms (1 ms base delay)", {"reorder": 5, **REORDER}),
    Condition("reorder25", "25% of frames +5 ms (1 ms base delay)", {"reorder": 25, **REORDER}),
    Condition("dup5", "5% duplicated each way", {"dup": 5}),
    Condition("corrupt1", "1% one-bit corruption each way", {"corrupt": 1}),
    Condition(
        "delay50", "50 ms delay + 0..20 ms jitter each way", {"delay_us": 50000, "jitter_us": 20000}, 8
    ),
    Condition(
        "rate10",
        "10 Mbit/s each way, 32 KiB queue",
        {"rate_bps": 10_000_000, "queue_limit_bytes": 32 << 10},
        4,
    ),
    Condition(
        "mix",
        "1% loss, 1% dup, 0.5% corrupt, 5% reorder +5 ms, 10 ms +0..5 ms delay, 50 Mbit/s 64 KiB queue",
        {
            "loss": 1,
            "dup": 1,
            "corrupt": 0.5,
            "reorder": 5,
            "reorder_us": 5000,
            "delay_us": 10000,
            "jitter_us": 5000,
            "rate_bps": 50_000_000,
            "queue_limit_bytes": 64 << 10,
        },
        8,
    ),
]
BY_NAME = {c.name: c for c in CONDITIONS}
DIRECTIONS = ("linux->stack", "stack->linux", "linux->linux", "linux<-linux")


def size_for(cond: Condition) -> int:
    quick = os.environ.get("TAS_RELIABILITY_QUICK") == "1"
    mib = int(os.environ.get("TAS_RELIABILITY_MIB", "16" if quick else "64"))
    if cond.cap_mib and quick:
        mib = min(mib, cond.cap_mib)
    return mib * MiB


def pattern_sha256(nbytes: int, seed: int) -> str:
    sys.path.insert(0, str(APPS))
    import steps  # noqa: PLC0415

    return steps.pattern_sha256(nbytes, seed)


def tas_argv() -> list[str]:
    exe = shutil.which("tas")
    return [exe] if exe else [sys.executable, "-m", "kernel_slowpath"]


class Proc:
    """A child in a namespace; stdout lines collected, RESULT line parsed."""

    def __init__(self, topo: Topology, ns: str, argv: list[str], errfile: Path) -> None:
        self.err = open(errfile, "w+b")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            topo.ns_argv(ns, argv),
            stdout=subprocess.PIPE,
            stderr=self.err,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(needle in ln for ln in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no {needle!r}: {self.lines} {self.stderr()}")
                self.cond.wait(min(left, 0.2))

    def stderr(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read().decode(errors="replace")[-3000:]

    def result(self, timeout: float) -> dict:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return {"ok": False, "error": f"timed out after {timeout:.0f} s", "rc": None}
        self.t.join(5)
        res = [ln for ln in self.lines if ln.startswith("RESULT ")]
        if not res:
            return {"ok": False, "error": f"exit {rc} without RESULT: {self.stderr()}", "rc": rc}
        out = json.loads(res[-1][7:])
        out["rc"] = rc
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()


class Matrix:
    """Topology + `tas start` + per-condition link emulator."""

    def __init__(self, workdir: Path, seed: int = 1, log=print) -> None:
        self.workdir = workdir
        self.seed = seed
        self.log = log
        self.topo = Topology(linux_server=True, link="emu")
        self.state = workdir / "state"
        self.tas: subprocess.Popen | None = None
        self.emu = None
        self.port = 7000

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self) -> Matrix:
        try:
            self.topo.up()
            self.topo.pin_linux_neighbors()
            self.tas_log = open(self.workdir / "tas-start.log", "wb")  # noqa: SIM115
            argv = [
                *tas_argv(),
                # TAS_MATRIX_LOG=debug: the stack's log (tas-start.log) says why each RTO fired
                *(["--log-level", os.environ["TAS_MATRIX_LOG"]] if os.environ.get("TAS_MATRIX_LOG") else []),
                "start",
                "--tap",
                self.topo.tap,
                "--ip",
                f"{STACK_IP}/24",
                "--state-dir",
                str(self.state),
            ]
            self.tas = self.topo.run_in(
                self.topo.stack_ns,
                argv,
                stdout=self.tas_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 20
            while b"ready" not in (self.workdir / "tas-start.log").read_bytes():
                if time.monotonic() > deadline or self.tas.poll() is not None:
                    raise RuntimeError("tas start not ready:\n" + self.stack_log())
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.set_link(None)
            if self.tas is not None and self.tas.poll() is None:
                self.tas.send_signal(signal.SIGTERM)
                try:
                    self.tas.wait(20)
                except subprocess.TimeoutExpired:
                    self.tas.kill()
                    self.tas.wait(10)
        finally:
            self.topo.down()

    def stack_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "tas-start.log").read_text(errors="replace")[-5000:]
        return ""

    def alive(self) -> bool:
        return self.tas is not None and self.tas.poll() is None

    def set_link(self, cond: Condition | None) -> dict:
        """(Re)start the emulator with cond's impairments (None: stop it);
        returns the previous emulator's counters."""
        prev = {}
        if self.emu is not None:
            prev = self.emu.stop()
            self.emu = None
        if cond is not None:
            self.emu = self.topo.linkemu(seed=self.seed, duration=3600, **cond.link).start()
        return prev

    # -- measurements ---------------------------------------------------------------
    def stats(self) -> dict:
        r = self.topo.run(
            self.topo.stack_ns,
            [*tas_argv(), "stats", "--json", "--state-dir", str(self.state)],
            capture_output=True,
            text=True,
            timeout=15,
        )
        if r.returncode != 0:
            raise RuntimeError(f"tas stats: {r.stderr}")
        return json.loads(r.stdout)

    def stack_counters(self) -> dict:
        st = self.stats()
        cores = st.get("cores", [])
        sp = st.get("slowpath", {})
        out = {
            "rexmit": st.get("retransmissions", 0),
            "fast": sum(c.get("rexmit_fast", 0) for c in cores),
            "rto": sp.get("rto_fired", 0),
            "spurious": sum(c.get("rexmit_spurious", 0) for c in cores),
            "sack_rexmit": sum(c.get("rexmit_sack", 0) for c in cores),
            "tlp": sum(c.get("tlp_probes", 0) for c in cores),
            "undo": sum(c.get("recovery_undo", 0) for c in cores),
        }
        for k, v in st.get("drops", {}).items():
            out["drop_" + k] = v
        return out

    def linux_retrans(self, ns: str) -> int:
        r = self.topo.run(ns, ["cat", "/proc/net/snmp"], capture_output=True, text=True, timeout=10)
        rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("Tcp:")]
        return int(rows[1][rows[0].index("RetransSegs")])

    def _app(self, ns: str, name: str, argv: list[str]) -> Proc:
        return Proc(self.topo, ns, argv, self.workdir / f"{name}-{self.port}.stderr")

    def _stack_app(self, **opts) -> Proc:
        argv = [sys.executable, str(APPS / "tas_app.py"), "--state-dir", str(self.state)]
        for k, v in opts.items():
            argv += ["--" + k.replace("_", "-"), str(v)]
        return self._app(self.topo.stack_ns, "tas_app", argv)

    def _linux(self, ns: str, cmd: str, ip: str, port: int, **opts) -> Proc:
        argv = [sys.executable, str(APPS / "linux_peer.py"), cmd, ip, str(port)]
        for k, v in opts.items():
            argv += ["--" + k.replace("_", "-"), str(v)]
        return self._app(ns, f"linux_{cmd}", argv)

    def transfer(self, direction: str, nbytes: int, seed: int, timeout: float) -> dict:
        """One bulk transfer; returns a row dict (ok, error, goodput, times, retransmissions)."""
        self.port += 1
        port = self.port
        t = self.topo
        stack_side = "stack" in direction
        before = self.stack_counters() if stack_side else None
        sender_ns = {
            "linux->stack": t.peer_ns,
            "stack->linux": None,
            "linux->linux": t.peer_ns,
            "linux<-linux": t.stack_ns,
        }[direction]
        lin_before = self.linux_retrans(sender_ns) if sender_ns else 0
        # receiver listens first
        procs: list[Proc] = []
        t0 = time.monotonic()
        try:
            if direction == "linux->stack":
                srv = self._stack_app(listen=port, script="recv_eof,close", timeout=timeout)
                procs.append(srv)
                srv.wait_line("listening", 15)
                t0 = time.monotonic()
                cli = self._linux(
                    t.peer_ns,
                    "client",
                    STACK_IP,
                    port,
                    script="send,close",
                    send_bytes=nbytes,
                    seed=seed,
                    timeout=timeout,
                )
                procs.append(cli)
                rx, tx = srv.result(timeout + 10), cli.result(15)
            elif direction == "stack->linux":
                srv = self._stack_app(
                    listen=port,
                    script="send,shut_wr,recv_eof,close",
                    send_bytes=nbytes,
                    seed=seed,
                    timeout=timeout,
                )
                procs.append(srv)
                srv.wait_line("listening", 15)
                t0 = time.monotonic()
                cli = self._linux(
                    t.peer_ns, "client", STACK_IP, port, script="recv_eof,close", timeout=timeout
                )
                procs.append(cli)
                rx, tx = cli.result(timeout + 10), srv.result(15)
            elif direction == "linux->linux":
                srv = self._linux(
                    t.stack_ns, "server", LINUX_IP, port, script="recv_eof,close", timeout=timeout
                )
                procs.append(srv)
                srv.wait_line("listening", 15)
                t0 = time.monotonic()
                cli = self._linux(
                    t.peer_ns,
                    "client",
                    LINUX_IP,
                    port,
                    script="send,close",
                    send_bytes=nbytes,
                    seed=seed,
                    timeout=timeout,
                )
                procs.append(cli)
                rx, tx = srv.result(timeout + 10), cli.result(15)
            else:
                srv = self._linux(
                    t.stack_ns,
                    "server",
                    LINUX_IP,
                    port,
                    script="send,shut_wr,recv_eof,close",
                    send_bytes=nbytes,
                    seed=seed,
                    timeout=timeout,
                )
                procs.append(srv)
                srv.wait_line("listening", 15)
                t0 = time.monotonic()
                cli = self._linux(
                    t.peer_ns, "client", LINUX_IP, port, script="recv_eof,close", timeout=timeout
                )
                procs.append(cli)
                rx, tx = cli.result(timeout + 10), srv.result(15)
        finally:
            for p in procs:
                p.stop()
        wall = time.monotonic() - t0
        want = pattern_sha256(nbytes, seed)
        errors = [r.get("error") for r in (tx, rx) if not r.get("ok")]
        if not errors and (rx.get("rx_bytes") != nbytes or rx.get("rx_sha256") != want):
            errors.append(
                f"received {rx.get('rx_bytes')} bytes, sha256 {'ok' if rx.get('rx_sha256') == want else 'DIFFERS'}"
            )
        if not errors and (tx.get("tx_bytes") != nbytes or tx.get("tx_sha256") != want):
            errors.append(f"sent {tx.get('tx_bytes')} bytes")
        row = {
            "direction": direction,
            "bytes": nbytes,
            "ok": not errors,
            "error": "; ".join(map(str, errors)) or None,
            "wall_s": round(wall, 2),
            "rx_elapsed_s": rx.get("elapsed"),
            "goodput_mbit": round(nbytes * 8 / 1e6 / max(rx.get("elapsed") or wall, 1e-6), 1),
        }
        if sender_ns:
            row["linux_retrans"] = self.linux_retrans(sender_ns) - lin_before
        if stack_side:
            after = self.stack_counters()
            row["stack"] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        return row

    def run_condition(self, cond: Condition, *, linux: bool = True, directions=None) -> dict:
        nbytes = size_for(cond)
        self.set_link(cond)
        # generous bound: 0.25 MiB/s worst case, at least 60 s
        timeout = max(60.0, nbytes / (256 << 10))
        rows = []
        dirs = directions or [d for d in DIRECTIONS if linux or "stack" in d]
        try:
            for i, d in enumerate(dirs):
                self.log(f"  {cond.name}: {d} {nbytes / MiB:.0f} MiB ...")
                row = self.transfer(d, nbytes, seed=1000 + 10 * CONDITIONS.index(cond) + i, timeout=timeout)
                self.log(f"    -> {fmt_row(row)}")
                rows.append(row)
                if not self.alive():
                    rows[-1]["ok"] = False
                    rows[-1]["error"] = (rows[-1]["error"] or "") + " tas start died"
                    break
        finally:
            emu = self.set_link(None)
        return {
            "condition": cond.name,
            "desc": cond.desc,
            "mib": nbytes / MiB,
            "rows": rows,
            "emu": {k: v for k, v in emu.items() if k in ("ab", "ba")},
        }


def fmt_row(r: dict) -> str:
    s = f"{'ok ' if r['ok'] else 'FAIL'} {r['goodput_mbit']:8.1f} Mbit/s {r['wall_s']:7.2f} s"
    if "stack" in r:
        st = r["stack"]
        s += f"  rexmit {st.get('rexmit', 0)} (fast {st.get('fast', 0)}, rto {st.get('rto', 0)}"
        s += f", sack {st.get('sack_rexmit', 0)}, spurious {st.get('spurious', 0)}"
        s += f", tlp {st.get('tlp', 0)}, undo {st.get('undo', 0)})"
    if "linux_retrans" in r:
        s += f"  linux retrans {r['linux_retrans']}"
    if r.get("error"):
        s += f"  [{r['error']}]"
    return s


def table(results: list[dict]) -> str:
    head = (
        "| condition | MiB | direction | ok | goodput Mbit/s | time s | stack rexmit (fast/rto/sack/spurious) "
        "| Linux RetransSegs |"
    )
    out = [head, "|" + "---|" * 8]
    for res in results:
        for r in res["rows"]:
            st = r.get("stack")
            stk = (
                (
                    f"{st.get('rexmit', 0)} ({st.get('fast', 0)}/{st.get('rto', 0)}/{st.get('sack_rexmit', 0)}/"
                    f"{st.get('spurious', 0)})"
                )
                if st is not None
                else "-"
            )
            out.append(
                f"| {res['condition']} | {res['mib']:.0f} | {r['direction']} | {'yes' if r['ok'] else 'NO'} "
                f"| {r['goodput_mbit']:.1f} | {r['wall_s']:.1f} | {stk} | {r.get('linux_retrans', '-')} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("conditions", nargs="*", help=f"subset of: {', '.join(BY_NAME)}")
    ap.add_argument("--no-linux", action="store_true", help="skip the Linux-to-Linux baseline")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, TAP)", file=sys.stderr)
        return 2
    conds = [BY_NAME[n] for n in a.conditions] if a.conditions else CONDITIONS
    results = []
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tas-matrix-") as wd, Matrix(Path(wd), seed=a.seed) as m:
        for c in conds:
            print(f"{c.name}: {c.desc}", flush=True)
            results.append(m.run_condition(c, linux=not a.no_linux))
    print()
    print(table(results))
    print(f"\ntotal {time.monotonic() - t_all:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for res in results for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
