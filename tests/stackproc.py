"""Run `tas start` (and friends) in a namespace for tests."""

from __future__ import annotations

import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class StackProcess:
    """`tas start` in namespace `ns`; `start()` waits for the ready line."""

    def __init__(self, ns: str, tap: str, ip: str = "198.18.0.2/24", state_dir: str | None = None,
                 extra: list[str] | None = None) -> None:
        self.ns = ns
        self.tap = tap
        self.ip = ip
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="tas-test-")
        self.extra = extra or []
        self.log_path = Path(self.state_dir + ".log")
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, "tas", "start", "--tap", self.tap, "--ip", self.ip,
                "--state-dir", self.state_dir, *self.extra]

    def start(self, timeout: float = 20.0) -> StackProcess:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=self._log, text=True)
        deadline = time.monotonic() + timeout
        buf = ""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                line = self.proc.stdout.readline()
                buf += line
                if "ready" in line:
                    self.ready_line = line.strip()
                    return self
                if not line:
                    break
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"tas start did not become ready: {buf!r}\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def tas(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """Run another `tas` subcommand against this stack."""
        return subprocess.run(["ip", "netns", "exec", self.ns, "tas", *args, "--state-dir", self.state_dir],
                              capture_output=True, text=True, timeout=timeout)
