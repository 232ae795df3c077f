"""Helpers shared by the fault, access, hostile-app, exhaustion and soak
tests (issue 8).  No tests here.

``FaultStack``: a private Topology + `tas start` (with extra options) in its
namespaces; apps run as inline Python (``python -c``) through conftest.App
so their output is collected and they are stopped by PID.  Only
198.18.0.0/15, only in the namespaces the topology creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from conftest import APPS_DIR, App, tas_argv

REPO = Path(__file__).resolve().parent.parent
STACK_IP = "198.18.0.2"
PEER_IP = "198.18.0.1"

# Prepended to every inline app: imports, the data pattern, and privilege
# dropping for the access tests (connect() happens after it, so SO_PEERCRED
# sees the new uid).
APP_PRELUDE = f"""
import sys, os, time, json, errno, socket, hashlib, ctypes, struct
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(APPS_DIR)!r})
from steps import pattern_chunks, pattern_sha256
from libtas.api import Stack

def say(*a):
    print(*a, flush=True)

def drop_privileges(uid, keep_caps=()):
    '''setuid(uid) keeping only the capabilities (numbers) in keep_caps effective.'''
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if keep_caps:
        libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if keep_caps:
        mask = 0
        for c in keep_caps:
            mask |= 1 << c
        hdr = struct.pack("Ii", 0x20080522, 0)
        data = struct.pack("6I", mask & 0xffffffff, mask & 0xffffffff, 0, mask >> 32, mask >> 32, 0)
        if libc.capset(ctypes.c_char_p(hdr), ctypes.c_char_p(data)) != 0:
            raise OSError(ctypes.get_errno(), "capset")
"""


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def memfds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/memfd:"):
                out.append(target)
    return sorted(out)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tas_shm_leftovers() -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith("tas")]


def wait_for(cond, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class FaultStack:
    """Topology + `tas start` with ``extra`` options; ``with FaultStack(...) as fs``."""

    def __init__(self, extra: list[str] | None = None, linux_server: bool = False) -> None:
        from nicemu.topology import Topology

        self.topo = Topology(linux_server=linux_server)
        self.workdir = Path(tempfile.mkdtemp(prefix="tas-faults-"))
        os.chmod(self.workdir, 0o711)  # the state dir inside decides who gets in
        self.state_dir = self.workdir / "state"
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "tas-start.log"
        self.apps: list[App] = []

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> FaultStack:
        self.topo.up()
        try:
            self.start()
        except BaseException:
            self.topo.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            for app in self.apps:
                app.stop()
            self.stop()
        finally:
            self.topo.down()

    def start(self, timeout: float = 20.0) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self._log_off = self.log_path.stat().st_size
        argv = [*tas_argv(), "start", "--tap", self.topo.tap, "--ip", f"{STACK_IP}/24",
                "--state-dir", str(self.state_dir), *self.extra]
        self.proc = self.topo.run_in(self.topo.stack_ns, argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "tas: ready" in self.log(self._log_off):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"tas start not ready (rc {self.proc.poll()}):\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def log(self, since: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fp_pids(self) -> list[int]:
        """Fast-path pids of the current `tas start` run (latest per core)."""
        latest: dict[int, int] = {}
        for core, pid in re.findall(r"fast path core (\d+): pid (\d+)", self.log(self._log_off)):
            latest[int(core)] = int(pid)
        return [latest[c] for c in sorted(latest)]

    # -- commands and apps -----------------------------------------------------
    def tas(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return self.topo.run(self.topo.stack_ns, [*tas_argv(), *args, "--state-dir", str(self.state_dir)],
                             capture_output=True, text=True, timeout=timeout)

    def stats(self) -> dict:
        r = self.tas("stats", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def stack_py(self, name: str, code: str, ready: str | None = None, ready_timeout: float = 15) -> App:
        """Inline Python (APP_PRELUDE + code) in the stack namespace; STATE is
        the state dir."""
        src = APP_PRELUDE + f"STATE = {str(self.state_dir)!r}\n" + textwrap.dedent(code)
        app = App(name, self.topo.ns_argv(self.topo.stack_ns, [sys.executable, "-c", src]), self.workdir)
        self.apps.append(app)
        if ready:
            app.wait_line(ready, ready_timeout)
        return app

    def peer_py(self, name: str, code: str, ready: str | None = None, ready_timeout: float = 15) -> App:
        src = APP_PRELUDE + textwrap.dedent(code)
        app = App(name, self.topo.ns_argv(self.topo.peer_ns, [sys.executable, "-c", src]), self.workdir)
        self.apps.append(app)
        if ready:
            app.wait_line(ready, ready_timeout)
        return app

    def tas_app(self, name: str, ready: str | None = None, **opts) -> App:
        from conftest import _flags

        argv = [sys.executable, str(APPS_DIR / "tas_app.py"), "--state-dir", str(self.state_dir), *_flags(opts)]
        app = App(name, self.topo.ns_argv(self.topo.stack_ns, argv), self.workdir)
        self.apps.append(app)
        if ready:
            app.wait_line(ready, 15)
        return app

    def linux_peer(self, cmd: str, port: int, name: str | None = None, ready: str | None = None,
                   **opts) -> App:
        from conftest import _flags

        argv = [sys.executable, str(APPS_DIR / "linux_peer.py"), cmd, STACK_IP, str(port), *_flags(opts)]
        app = App(name or f"linux_{cmd}", self.topo.ns_argv(self.topo.peer_ns, argv), self.workdir)
        self.apps.append(app)
        if ready:
            app.wait_line(ready, 15)
        return app


def pattern_sha256(nbytes: int, seed: int) -> str:
    """sha256 of the interop data pattern (tests/apps/steps.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fault_steps", APPS_DIR / "steps.py")
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    return steps.pattern_sha256(nbytes, seed)


def check_transfer(sender: dict, receiver: dict, nbytes: int, seed: int) -> None:
    want = pattern_sha256(nbytes, seed)
    assert sender["tx_bytes"] == nbytes and sender["tx_sha256"] == want
    assert receiver["rx_bytes"] == nbytes, f"received {receiver['rx_bytes']} of {nbytes}"
    assert receiver["rx_sha256"] == want, "received bytes differ from the sent bytes"


def result_of(app: App, timeout: float) -> dict:
    """The RESULT {json} line of an inline app (asserting exit 0 and ok)."""
    return app.result(timeout)
