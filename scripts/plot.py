#!/usr/bin/env python3
"""Plots (PNG, matplotlib) from a `tas trace` CSV or a benchmark/demo result JSON.

    scripts/plot.py trace.csv [--out DIR]        # <stem>-cwnd.png, <stem>-rtt.png
    scripts/plot.py out/demo/results.json [--out DIR]
                                                 # <stem>-throughput.png, <stem>-latency-cdf.png

Trace CSV (`tas trace`): per flow, cwnd, bytes in flight and the peer's
window over time, and the smoothed RTT over time.

Result JSON (`tas demo` results.json, or any JSON with the same "metrics"
layout): throughput-like metrics (unit ending in "/s") as stack-vs-Linux
bars; latency CDFs from every list of samples whose key mentions "lat"
(e.g. the built-in KV load's batch latencies), else from the reported
percentiles (p50/p99/max) as points on the CDF.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trace(path: Path, out: Path) -> list[Path]:
    plt = _plt()
    series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            s = series[row["flow"]]
            for k in ("t_s", "cwnd", "in_flight", "snd_wnd", "srtt_us"):
                try:
                    s[k].append(float(row[k]))
                except (KeyError, ValueError):
                    s[k].append(float("nan"))
    if not series:
        raise SystemExit(f"{path}: no samples")
    written = []
    fig, ax = plt.subplots(figsize=(10, 5))
    for flow, s in sorted(series.items(), key=lambda kv: int(kv[0])):
        (line,) = ax.plot(s["t_s"], [v / 1024 for v in s["cwnd"]], label=f"flow {flow} cwnd")
        ax.plot(
            s["t_s"],
            [v / 1024 for v in s["in_flight"]],
            "--",
            color=line.get_color(),
            alpha=0.7,
            label=f"flow {flow} in flight",
        )
        ax.plot(
            s["t_s"],
            [v / 1024 for v in s["snd_wnd"]],
            ":",
            color=line.get_color(),
            alpha=0.5,
            label=f"flow {flow} peer window",
        )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("KiB")
    ax.set_title(f"congestion window over time ({path.name})")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out / f"{path.stem}-cwnd.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)

    fig, ax = plt.subplots(figsize=(10, 4))
    for flow, s in sorted(series.items(), key=lambda kv: int(kv[0])):
        ax.plot(s["t_s"], [v / 1000 for v in s["srtt_us"]], label=f"flow {flow}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("smoothed RTT (ms)")
    ax.set_title("RTT over time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out / f"{path.stem}-rtt.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    return written


def _latency_samples(obj, prefix: str = "") -> dict[str, list[float]]:
    """Every list of numbers under a key that mentions 'lat' (name -> values)."""
    found: dict[str, list[float]] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{prefix}/{k}" if prefix else str(k)
            if (
                isinstance(v, list)
                and v
                and all(isinstance(x, (int, float)) for x in v)
                and "lat" in str(k).lower()
            ):
                found[name] = [float(x) for x in v]
            else:
                found.update(_latency_samples(v, name))
    return found


def _percentiles(raw: dict) -> dict[str, list[tuple[float, float]]]:
    """(value_ms, quantile) points from p50/p99/max fields, per side/test."""
    out: dict[str, list[tuple[float, float]]] = {}
    for side, tests in raw.items():
        if not isinstance(tests, dict):
            continue
        for test, res in tests.items():
            if not isinstance(res, dict):
                continue
            groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for k, v in res.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                for tag, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
                    for unit, scale in (("_us", 1e-3), ("_ms", 1.0)):
                        if k.endswith(tag + unit):
                            op = k[: -len(tag + unit)].rstrip("_")
                            groups[op].append((v * scale, q))
            for op, pts in groups.items():
                out[f"{side} {test}{' ' + op if op else ''}"] = sorted(pts)
    return out


def plot_results(path: Path, out: Path) -> list[Path]:
    plt = _plt()
    doc = json.loads(path.read_text())
    written = []
    metrics = doc.get("metrics", {})
    rates = {k: m for k, m in metrics.items() if str(m.get("unit", "")).endswith("/s")}
    if rates:
        n = len(rates)
        cols = min(4, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
        for ax, (_key, m) in zip(axes.flat, rates.items(), strict=False):
            vals = [m.get("stack") or 0, m.get("linux") or 0]
            bars = ax.bar(["stack", "Linux"], vals, color=["tab:orange", "tab:blue"])
            ax.bar_label(bars, labels=[f"{v:,.3g}" for v in vals], fontsize=8)
            ax.set_title(str(m.get("label", _key)).strip(), fontsize=9)
            ax.set_ylabel(m.get("unit", ""))
            ax.margins(y=0.15)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"throughput: stack vs Linux ({path.name})")
        fig.tight_layout()
        p = out / f"{path.stem}-throughput.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)

    samples = _latency_samples(doc.get("raw", doc))
    points = _percentiles(doc.get("raw", {}))
    if samples or points:
        fig, ax = plt.subplots(figsize=(9, 5))
        for name, vals in sorted(samples.items()):
            vals = sorted(vals)
            ys = [(i + 1) / len(vals) for i in range(len(vals))]
            ax.step(vals, ys, where="post", label=f"{name} ({len(vals)} samples)")
        for name, pts in sorted(points.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", alpha=0.8, label=f"{name} (p50/p99/max)")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"latency CDF ({path.name})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        p = out / f"{path.stem}-latency-cdf.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    if not written:
        raise SystemExit(f"{path}: nothing to plot (no 'metrics' and no latencies)")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="a tas trace CSV or a results JSON")
    ap.add_argument("--out", type=Path, help="directory for the PNGs (default: next to the input)")
    a = ap.parse_args(argv)
    out = a.out or a.input.resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        _plt()
    except ImportError:
        print("plot.py: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    if a.input.suffix == ".csv":
        written = plot_trace(a.input, out)
    else:
        written = plot_results(a.input, out)
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
