"""`tas bench --quick`: it completes, prints its table and writes its outputs
(needs root).  Speed is never asserted here; that is what the benchmark is for."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_slowpath.bench import BENCH_PREFIX, FIGURES, build_loadgen
from kernel_slowpath.procs import descendants
from nicemu.topology import Topology, list_namespaces

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


def test_loadgen_builds_and_is_cached():
    a = build_loadgen()
    assert a.is_file() and os.access(a, os.X_OK)
    assert build_loadgen() == a  # cached by source hash
    r = subprocess.run([str(a), "nosuchmode"], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and json.loads(r.stdout)["ok"] is False


def test_loadgen_workers(tmp_path):
    """conns/idle split over worker processes (--per-worker), all held until
    every worker finished; `loadgen serve --workers N` shares its ports over
    N processes (SO_REUSEPORT) and stops them all on SIGTERM."""
    lg = str(build_loadgen())
    topo = Topology(BENCH_PREFIX + secrets.token_hex(2), linux_server=True).up()
    log = tmp_path / "serve.log"
    srv = None
    try:
        with open(log, "wb") as f:
            srv = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    topo.stack_ns,
                    lg,
                    "serve",
                    "--host",
                    topo.linux_ip,
                    "--port",
                    "7",
                    "--workers",
                    "3",
                ],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while "listening" not in log.read_text() and time.monotonic() < deadline and srv.poll() is None:
            time.sleep(0.05)
        assert "(3 processes)" in log.read_text(), log.read_text()
        assert len(descendants(srv.pid)) == 2

        def run(*args: str) -> list[dict]:
            r = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    topo.peer_ns,
                    lg,
                    *args,
                    "--host",
                    topo.linux_ip,
                    "--port",
                    "7",
                    "--per-worker",
                    "100",
                ],
                capture_output=True,
                text=True,
                timeout=40,
            )
            assert r.returncode == 0, r.stdout + r.stderr
            return [json.loads(line) for line in r.stdout.splitlines()]

        (res,) = run("conns", "--count", "300", "--time", "10")
        assert res["ok"] and res["workers"] == 3, res
        assert res["served"] == res["requested"] == 300 and res["failed"] == 0, res
        assert res["seconds"] > 0
        (opened,) = run("idle", "--conns", "250", "--time", "0.3")
        assert opened["ok"] and opened["workers"] == 3 and opened["connections"] == 250, opened
        (one,) = run("conns", "--count", "50", "--time", "10")  # fits one process: no fork
        assert one["workers"] == 1 and one["served"] == 50, one
    finally:
        if srv is not None:
            kids = descendants(srv.pid)
            srv.terminate()
            try:
                srv.wait(10)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait(5)
            for pid in kids:
                assert (
                    not os.path.exists(f"/proc/{pid}")
                    or "zombie" in open(f"/proc/{pid}/status").read().lower()
                )
        topo.down()
    assert "loadgen serve: stopped" in log.read_text()


def test_bench_quick(tmp_path):
    before = {n for n in list_namespaces() if n.startswith(BENCH_PREFIX)}
    r = subprocess.run(
        [*_tas(), "bench", "--quick"], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{out}\nstderr:\n{r.stderr[-4000:]}"
    assert "native/linux" in out and "rr 64 B, 1 conn" in out and "tas bench: ok" in out

    doc = json.loads((tmp_path / "out" / "bench" / "results.json").read_text())
    assert doc["ok"] is True and doc["failed"] == []
    assert doc["machine"]["cpus"] >= 1 and doc["pinning"] and doc["machine"]["python"]
    figs = doc["figures"]
    keys = {f[0] for f in FIGURES}
    assert set(figs) <= keys
    for key in ("rr1_rps", "rr16_rps", "bulk_gbps", "bulkrx_gbps", "crr_cps", "conns_served", "idle_cpu"):
        for server in ("native", "linux"):
            v = figs[key]["values"][server]
            assert v is not None and v["n"] == 1 and v["median"] >= 0, (key, server, v)
    for key in ("rr1_rps", "bulk_gbps", "crr_cps"):
        assert figs[key]["ratio"]["native"] > 0
    # every connection of the conns mode was served, by both
    assert figs["conns_served"]["values"]["native"]["median"] == doc["params"]["conns"]
    assert figs["conns_served"]["values"]["linux"]["median"] == doc["params"]["conns"]
    # the shim column is measured or explicitly n/a
    assert "shim" in doc["servers"]
    if "shim" in doc["not_available"]:
        assert doc["not_available"]["shim"].startswith("n/a")
        assert all(f["values"]["shim"] is None for f in figs.values())
    # raw runs: the rr latency CDF is there
    rr = doc["raw"]["native"]["rr"]
    assert {r["conns"] for r in rr} == {1, 16} and all(len(r["cdf"]) > 100 for r in rr)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        for name in ("latency_cdf.png", "throughput.png"):
            assert (tmp_path / "out" / "bench" / name).stat().st_size > 0
    assert doc["prefix"].startswith(BENCH_PREFIX)
    left = {n for n in list_namespaces() if n.startswith(BENCH_PREFIX)} - before
    assert not left, f"namespaces left behind: {left}"


def _quick_bench(tmp_path, *args: str) -> tuple[str, dict]:
    """`tas bench --quick ARGS` in tmp_path: (its stdout, results.json) once it succeeded."""
    r = subprocess.run(
        [*_tas(), "bench", "--quick", *args], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    assert "tas bench: ok" in r.stdout
    return r.stdout, json.loads((tmp_path / "out" / "bench" / "results.json").read_text())


def test_bench_hop_and_crr_cpu_quick(tmp_path):
    """`tas bench --quick --modes crr,hop`: crr reports the server app's CPU
    per connection (and the stack's slow path's), hop the ICMP echo round
    trip of each server (the stack answers it in its slow path)."""
    out, doc = _quick_bench(tmp_path, "--modes", "crr,hop", "--servers", "native,linux")
    assert "ICMP echo round trip" in out and "slow-path CPU per conn" in out
    assert doc["ok"] is True and doc["params"]["hop_count"] == 100
    figs = doc["figures"]
    for server in ("native", "linux"):
        (hop,) = doc["raw"][server]["hop"]
        assert hop["sent"] == 100 and hop["received"] >= 90, hop
        assert 0 < hop["min_us"] <= hop["avg_us"] <= hop["max_us"], hop
        assert figs["hop_us"]["values"][server]["median"] == hop["avg_us"]
        (crr,) = doc["raw"][server]["crr"]
        assert crr["connections"] > 0 and crr["app_us"] >= 0, crr
    # only the stack has a slow path
    assert doc["raw"]["native"]["hop"][0]["sp_us"] >= 0 and doc["raw"]["native"]["crr"][0]["sp_us"] >= 0
    assert doc["raw"]["linux"]["hop"][0]["sp_us"] is None and doc["raw"]["linux"]["crr"][0]["sp_us"] is None
    assert figs["hop_sp_us"]["values"]["linux"] is None


def test_bench_isolation_quick(tmp_path):
    """`tas bench --quick --modes isolation` completes and reports the echo
    app's p50/p99 alone and beside the bulk app, the ratio and the bulk
    rate, for the stack and for Linux (the bound itself is not asserted)."""
    out, doc = _quick_bench(tmp_path, "--modes", "isolation", "--servers", "native,linux", "--iso-nice", "5")
    assert "p99 beside / alone" in out
    assert doc["ok"] is True and doc["params"]["iso_flows"] == 16 and doc["params"]["iso_nice"] == 5
    figs = doc["figures"]
    for key in (
        "iso_alone_p50",
        "iso_alone_p99",
        "iso_loaded_p50",
        "iso_loaded_p99",
        "iso_p99_ratio",
        "iso_bulk_gbps",
    ):
        for server in ("native", "linux"):
            v = figs[key]["values"][server]
            assert v is not None and v["n"] == 1 and v["median"] > 0, (key, server, v)
    for server in ("native", "linux"):
        (run,) = doc["raw"][server]["isolation"]
        assert run["bulk"]["ok"] and run["bulk"]["flows"] == 16 and run["bulk"]["bytes"] > 0
        assert run["p99_ratio"] == run["loaded"]["p99_us"] / run["alone"]["p99_us"]
        assert run["bulk_nice"] == 5


def test_bench_rejects_a_nice_value_out_of_range(tmp_path):
    r = subprocess.run([*_tas(), "bench", "--modes", "isolation", "--iso-nice", "30"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "--iso-nice must be within -20..19" in r.stderr + r.stdout
