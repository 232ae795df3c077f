"""`tas demo` end to end: namespaces, the stack, a Linux echo server, the client (needs root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_slowpath.demo import DEMO_PREFIX, METRICS
from nicemu.topology import list_namespaces

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and a TAP device"),
]


def _tas() -> list[str]:
    exe = Path(sys.executable).with_name("tas")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("tas")
    return [found] if found else [sys.executable, "-m", "kernel_slowpath"]


def test_demo_small(tmp_path):
    before = {n for n in list_namespaces() if n.startswith(DEMO_PREFIX)}
    r = subprocess.run(
        [*_tas(), "demo", "--requests", "200", "--bulk-mib", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{out}\nstderr:\n{r.stderr}"

    # the side-by-side table
    assert "metric" in out and "stack" in out and "Linux" in out and "ratio stack/Linux" in out
    assert "tas stats (stack): segments in" in out

    doc = json.loads((tmp_path / "out" / "demo" / "results.json").read_text())
    assert doc["ok"] is True and doc["failed"] == []
    assert set(doc["metrics"]) == {m[0] for m in METRICS}
    for key, m in doc["metrics"].items():
        for side in ("stack", "linux"):
            v = m[side]
            assert isinstance(v, (int, float)) and v > 0, f"{key} {side}: {v!r}"
        assert m["ratio"] > 0
    assert doc["bulk_sha256_ok"] == {"stack": True, "linux": True}
    for side in ("stack", "linux"):
        bulk = doc["raw"][side]["bulk"]
        assert bulk["received"] == 4 << 20
        assert bulk["sha256_sent"] == bulk["sha256_received"]
    st = doc["stack_stats"]
    assert st["segments_in"] > 0 and st["segments_out"] > 0
    assert st["retransmissions"] >= 0 and st["drops_total"] >= 0

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "skipped the plot" in out
    else:
        assert (tmp_path / "out" / "demo" / "demo.png").stat().st_size > 0

    # everything of this run is gone (another run may be going on at the same time)
    assert doc["prefix"].startswith(DEMO_PREFIX)
    left = {n for n in list_namespaces() if n.startswith(DEMO_PREFIX)} - before
    assert not left, f"namespaces left behind: {left}"
