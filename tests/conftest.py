"""Fixtures for the interop tests (tests/test_interop.py): a running `tas
start` in a test topology, and helpers to run apps on both sides of it.

``tas_stack`` (session): Topology(linux_server=True) + `tas start` in the
stack namespace with a temporary state dir.  Torn down (SIGTERM, exit status
0 asserted, topology removed) even when tests fail.

``tas`` (function): the same object, checked alive before and after each
test; every app a test starts through it is stopped (by PID) afterwards, and
on failure the stack's log lines written during the test and the apps'
output are attached to the report.

Network safety: only 198.18.0.0/15, only inside the namespaces the topology
creates (and removes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 200

_RUN_KEY = pytest.StashKey["tuple"]()


def tas_argv() -> list[str]:
    exe = shutil.which("tas")
    return [exe] if exe else [sys.executable, "-m", "kernel_slowpath"]


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    parts = text.splitlines()
    if len(parts) > lines:
        parts = [f"... ({len(parts) - lines} earlier lines cut)", *parts[-lines:]]
    return "\n".join(parts)


def _flags(opts: dict) -> list[str]:
    out: list[str] = []
    for key, val in opts.items():
        if val is None or val is False:
            continue
        out.append("--" + key.replace("_", "-"))
        if val is not True:
            out.append(str(val))
    return out


class App:
    """A process started inside a namespace; stdout lines collected by a
    reader thread (so waiting for a line never blocks past its timeout),
    stderr to a file."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.stderr_path = workdir / f"{name}-{os.getpid()}-{time.monotonic_ns()}.stderr"
        self._err = open(self.stderr_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True, bufsize=1
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, name=f"reader-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        with self._cond:
            out = "\n".join(self.lines)
        head = f"--- {self.name} (pid {self.pid}, exit status {self.proc.returncode})"
        return f"{head} stdout:\n{out}\n--- stderr:\n{_tail(self.stderr, 60)}"

    def wait_line(self, needle: str, timeout: float) -> str:
        """The first stdout line containing ``needle``; AssertionError (with
        the app's output) if the app exits or the timeout passes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = 0
            while True:
                while i < len(self.lines):
                    if needle in self.lines[i]:
                        return self.lines[i]
                    i += 1
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        self.proc.poll()
        raise AssertionError(f"{self.name}: no line containing {needle!r} within {timeout}s\n{self.output()}")

    def wait(self, timeout: float) -> int:
        """Wait for exit (kill after the timeout: then AssertionError)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"{self.name}: still running after {timeout}s (killed)\n{self.output()}"
            ) from None
        self._reader.join(5)
        return rc

    def result(self, timeout: float, expect_ok: bool = True) -> dict:
        """Wait for exit and return the ``RESULT {json}`` line as a dict.  With
        expect_ok: assert it says ok and the exit status is 0."""
        rc = self.wait(timeout)
        with self._cond:
            res = [ln for ln in self.lines if ln.startswith("RESULT ")]
        if not res:
            raise AssertionError(f"{self.name}: exited {rc} without a RESULT line\n{self.output()}")
        out = json.loads(res[-1][len("RESULT ") :])
        out["rc"] = rc
        if expect_ok:
            assert out.get("ok") and rc == 0, f"{self.name} failed: {out.get('error')}\n{self.output()}"
        return out

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (then SIGKILL) this process, by its PID."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout)
        self._reader.join(5)
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
        self._err.close()


class TasStack:
    """A running `tas start` inside ``topo.stack_ns``."""

    def __init__(self, topo, state_dir: Path, workdir: Path) -> None:
        self.topo = topo
        self.state_dir = state_dir
        self.workdir = workdir
        self.log_path = workdir / "tas-start.log"
        self.proc: subprocess.Popen | None = None
        self.apps: list[App] = []

    # -- the stack process ------------------------------------------------------
    def start(self) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        argv = [
            *tas_argv(),
            "start",
            "--tap",
            self.topo.tap,
            "--ip",
            f"{self.topo.stack_ip}/{self.topo.prefixlen}",
            "--state-dir",
            str(self.state_dir),
        ]
        self.proc = self.topo.run_in(
            self.topo.stack_ns, argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if "ready" in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"tas start not ready within {READY_TIMEOUT}s (exit status {self.proc.poll()}); log:\n"
            + _tail(self.log())
        )

    def stop(self) -> int | None:
        """SIGTERM, wait; returns the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                rc = None
        self._log.close()
        return rc

    def log(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            raise AssertionError(
                f"tas start is not running (exit status {self.proc.poll() if self.proc else None}); log:\n"
                + _tail(self.log())
            )

    # -- apps ----------------------------------------------------------------------
    def spawn(self, ns: str, name: str, argv: list[str]) -> App:
        app = App(name, self.topo.ns_argv(ns, argv), self.workdir)
        self.apps.append(app)
        return app

    def stack_app(self, *, name: str = "tas_app", ready: str | None = None, **opts) -> App:
        """tests/apps/tas_app.py in the stack namespace (native API).  Keyword
        options become flags (``send_bytes=5`` -> ``--send-bytes 5``, True ->
        bare flag).  Waits for a stdout line containing ``ready`` if given."""
        argv = [sys.executable, str(APPS_DIR / "tas_app.py"), "--state-dir", str(self.state_dir)]
        app = self.spawn(self.topo.stack_ns, name, argv + _flags(opts))
        if ready:
            app.wait_line(ready, 15)
        return app

    def peer(
        self, cmd: str, ip: str, port: int, *, name: str | None = None, ready: str | None = None, **opts
    ) -> App:
        """tests/apps/linux_peer.py ``cmd ip port`` in the peer namespace
        (Linux sockets); options as for :meth:`stack_app`."""
        argv = [sys.executable, str(APPS_DIR / "linux_peer.py"), cmd, ip, str(port)]
        app = self.spawn(self.topo.peer_ns, name or f"linux_{cmd}", argv + _flags(opts))
        if ready:
            app.wait_line(ready, 15)
        return app

    def echo_server(self, port: int) -> App:
        """`tas echo-server` in the stack namespace, waited for 'listening'."""
        app = self.spawn(
            self.topo.stack_ns,
            f"echo-server:{port}",
            [*tas_argv(), "echo-server", "--port", str(port), "--state-dir", str(self.state_dir)],
        )
        app.wait_line("listening", 15)
        return app

    def run_stack_cmd(self, *args: str, timeout: float = 15) -> subprocess.CompletedProcess:
        return self.topo.run(
            self.topo.stack_ns,
            [*tas_argv(), *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stats(self) -> dict:
        """`tas stats --json`."""
        r = self.run_stack_cmd("stats", "--json")
        assert r.returncode == 0, f"tas stats failed ({r.returncode}): {r.stderr}"
        return json.loads(r.stdout)

    def flows(self) -> str:
        r = self.run_stack_cmd("flows")
        return r.stdout + r.stderr

    def stop_apps(self, apps: list[App]) -> None:
        for app in apps:
            app.stop()
            with contextlib.suppress(ValueError):
                self.apps.remove(app)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("interop tests need root (network namespaces, TAP devices); CI runs them as root")


@pytest.fixture(scope="session")
def tas_stack(tmp_path_factory):
    """Topology + running `tas start` for the whole session."""
    _require_root()
    from nicemu.topology import Topology

    for tool in ("ip", "nft"):
        assert shutil.which(tool), f"{tool} is missing (apt-get install -y iproute2 nftables)"
    workdir = tmp_path_factory.mktemp("interop")
    state_dir = workdir / "state"
    topo = Topology(linux_server=True)
    stack = TasStack(topo, state_dir, workdir)
    rc = None
    try:
        topo.up()
        stack.start()
        yield stack
    finally:
        try:
            stack.stop_apps(list(stack.apps))
            rc = stack.stop()
        finally:
            topo.down()
    assert rc == 0, f"tas start exited with {rc} on SIGTERM; log:\n{_tail(stack.log())}"


@pytest.fixture
def tas(request, tas_stack):
    """The session stack, checked alive; apps started during the test are
    stopped afterwards; failures get the stack's log attached."""
    tas_stack.assert_alive()
    request.node.stash[_RUN_KEY] = (tas_stack, tas_stack.log_size(), len(tas_stack.apps))
    before = set(map(id, tas_stack.apps))
    try:
        yield tas_stack
    finally:
        tas_stack.stop_apps([a for a in tas_stack.apps if id(a) not in before])
    tas_stack.assert_alive()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    run = item.stash.get(_RUN_KEY, None)
    if run is None or not (rep.failed or (call.excinfo is not None and rep.when == "call")):
        return
    stack, offset, _ = run
    rep.sections.append((f"tas start log during {rep.when}", _tail(stack.log(offset)) or "(empty)"))
    if rep.when == "call":
        outs = [app.output() for app in stack.apps]
        if outs:
            rep.sections.append(("apps started by the test", "\n".join(outs)))
