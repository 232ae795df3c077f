"""Child processes of the bundled tools (`tas demo`, `tas bench`): start
them with a log file, wait for a line, stop them and everything they
started — only our own PIDs, never by name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


def tas_argv() -> list[str]:
    """The `tas` command of this installation (same interpreter as ours)."""
    exe = Path(sys.executable).with_name("tas")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    found = shutil.which("tas")
    return [found] if found else [sys.executable, "-m", "kernel_slowpath"]


def tail(path: Path, n: int = 12) -> str:
    """The last n lines of a log, indented, for error messages."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join("    " + ln for ln in lines[-n:]) or "    (no output)"


def wait_for(proc: Proc, needle: str, timeout: float, error: type[Exception] = RuntimeError) -> None:
    """Until `needle` appears in proc's log; `error` if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if needle in proc.log.read_text(errors="replace"):
                return
        rc = proc.popen.poll()
        if rc is not None:
            raise error(f"{proc.name} exited with status {rc} before printing '{needle}':\n{tail(proc.log)}")
        if time.monotonic() > deadline:
            raise error(f"{proc.name} did not print '{needle}' within {timeout:.0f} s:\n{tail(proc.log)}")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """PIDs of the children (recursively) of ``pid``, from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def stop(proc: Proc, grace: float = 5.0) -> str | None:
    """SIGTERM, wait `grace` s, SIGKILL; then kill what it started and left
    behind.  Returns a note if it had to be killed."""
    p = proc.popen
    if p.poll() is not None:
        return None
    kids = descendants(p.pid)
    with contextlib.suppress(ProcessLookupError):
        p.send_signal(signal.SIGTERM)
    note = None
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait(5)
        note = f"{proc.name} did not stop within {grace:.0f} s of SIGTERM; killed"
    for pid in kids:  # only what this process started
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return note


def run_json(argv: list[str], timeout: float, what: str, error: type[Exception] = RuntimeError) -> dict:
    """Run argv (bounded by `timeout` s, killed after) and parse the JSON
    object on the last line of its output; `error` if it hangs or prints none."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise error(f"{what} hung (killed after {timeout:.0f} s)") from None
    except BaseException:
        p.kill()
        p.wait()
        raise
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise error(f"{what} exited {p.returncode} without a result: {err.strip()[-500:]}") from None
