"""Plain-text rendering of `tas stats` and `tas flows` output."""

from __future__ import annotations


def render_stats(st: dict) -> str:
    lines = [
        f"flows open {st.get('flows_open', 0)}  connecting {st.get('flows_connecting', 0)}  "
        f"half-open {st.get('half_open', 0)}  listeners {st.get('listeners', 0)}  "
        f"time-wait {st.get('time_wait', 0)}  flow record {st.get('flow_record_bytes', 0)} B"
    ]
    if "flow_fixed_bytes" in st:
        # per-flow memory (docs/STATS.md): the fixed slot, then the buffers
        lines.append(
            f"per flow: record {st['flow_record_bytes']} B + side record {st.get('flow_side_bytes', 0)} B + "
            f"hash {st.get('flow_hash_bytes', 0)} B = {st['flow_fixed_bytes']} B fixed "
            f"({st.get('flow_slots', 0)} slots, {st.get('flow_table_bytes', 0)} B); buffers "
            f"{st.get('flow_buffer_bytes', 0)} B in use, {st.get('flow_bytes_avg', 0)} B per flow on average"
        )
    for i, c in enumerate(st.get("cores", [])):
        lines.append(
            f"core {i}: rx {c['rx_frames']} frames / {c['rx_bytes']} B, tx {c['tx_frames']} frames / "
            f"{c['tx_bytes']} B, to slow path {c['to_slowpath']}, acks {c['acks_sent']} "
            f"(delayed {c.get('acks_delayed', 0)}, sent alone after the delay {c.get('delacks_sent', 0)}), "
            f"retransmits {c['rexmit_segs']} (fast {c['rexmit_fast']}), ooo {c['ooo_segs']}, "
            f"busy {c['busy_polls']}/{c['polls']} polls, sleeps {c['sleeps']}"
        )
    drops = {k: v for k, v in st.get("drops", {}).items() if v}
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    sp = {k: v for k, v in st.get("slowpath", {}).items() if v}
    lines.append("slow path: " + ", ".join(f"{k} {v}" for k, v in sorted(sp.items())))
    return "\n".join(lines)


def render_flows(flows: list[dict]) -> str:
    if not flows:
        return "no flows"
    out = [
        f"{'id':>5} {'state':<12} {'local':<21} {'remote':<21} {'cwnd':>8} {'srtt_us':>8} "
        f"{'inflight':>9} {'rx_buf':>12} {'retx':>6}"
    ]
    for f in flows:
        out.append(
            f"{f['flow']:>5} {f['state']:<12} {f['local']:<21} {f['remote']:<21} {f.get('cwnd', 0):>8} "
            f"{f.get('srtt_us', 0):>8} {f.get('in_flight', 0):>9} "
            f"{f.get('rx_buffered', 0):>5}/{f.get('rx_buf', 0):<6} {f.get('retransmits', 0):>6}"
        )
    return "\n".join(out)


# -- `tas stats --watch`: a live view -------------------------------------------------------------------


def _rate(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _bits(nbytes: float) -> str:
    return _rate(nbytes * 8)


def watch_frame(
    prev: dict | None, cur: dict, dt: float, flows: list[dict] | None = None, max_flows: int = 12
):
    """One frame of the live view (a rich renderable) from two `stats`
    snapshots ``dt`` seconds apart (prev None: first frame, rates shown as 0)."""
    from rich.console import Group
    from rich.table import Table

    dt = max(dt, 1e-6)
    pc = prev.get("cores", []) if prev else []
    cores = Table(title="fast-path cores", expand=False)
    for col in ("core", "load", "rx b/s", "tx b/s", "rx pk/s", "tx pk/s", "to SP/s", "retx/s", "sleep/s"):
        cores.add_column(col, justify="right")
    tot_rx = tot_tx = 0.0
    for i, c in enumerate(cur.get("cores", [])):
        p = pc[i] if i < len(pc) else c

        def d(k, c=c, p=p):
            return max(0, c.get(k, 0) - p.get(k, 0))

        polls = d("polls")
        load = d("busy_polls") / polls if polls else 0.0
        rx, tx = d("rx_bytes") / dt, d("tx_bytes") / dt
        tot_rx += rx
        tot_tx += tx
        cores.add_row(
            str(i),
            f"{load * 100:5.1f}%",
            _bits(rx),
            _bits(tx),
            _rate(d("rx_frames") / dt),
            _rate(d("tx_frames") / dt),
            _rate(d("to_slowpath") / dt),
            _rate(d("rexmit_segs") / dt),
            _rate(d("sleeps") / dt),
        )
    summary = Table.grid(padding=(0, 2))
    pretx = prev.get("retransmissions", 0) if prev else cur.get("retransmissions", 0)
    summary.add_row(
        f"flows open [bold]{cur.get('flows_open', 0)}[/]",
        f"connecting {cur.get('flows_connecting', 0)}",
        f"half-open {cur.get('half_open', 0)}",
        f"listeners {cur.get('listeners', 0)}",
        f"time-wait {cur.get('time_wait', 0)}",
    )
    summary.add_row(
        f"rx [bold]{_bits(tot_rx)}bit/s[/]",
        f"tx [bold]{_bits(tot_tx)}bit/s[/]",
        f"retransmits {cur.get('retransmissions', 0)} (+{max(0, cur.get('retransmissions', 0) - pretx)})",
        f"apps {cur.get('control', {}).get('apps', 0)}",
        f"contexts {cur.get('control', {}).get('contexts', 0)}",
    )
    pdrops = prev.get("drops", {}) if prev else {}
    drops = Table(title="drops by reason", expand=False)
    drops.add_column("reason")
    drops.add_column("total", justify="right")
    drops.add_column("/s", justify="right")
    for k, v in sorted(cur.get("drops", {}).items()):
        if v:
            drops.add_row(k, str(v), _rate(max(0, v - pdrops.get(k, v)) / dt))
    if not drops.row_count:
        drops.add_row("none", "0", "0")
    parts = [summary, cores, drops]
    if flows is not None:
        ft = Table(title=f"flows ({len(flows)})", expand=False)
        for col in ("id", "state", "remote", "cwnd", "srtt_us", "in flight", "snd_wnd", "rx buf", "retx"):
            ft.add_column(col, justify="right" if col not in ("state", "remote") else "left")
        busiest = sorted(flows, key=lambda f: f.get("rx_bytes", 0) + f.get("tx_bytes", 0), reverse=True)
        for f in busiest[:max_flows]:
            ft.add_row(
                str(f["flow"]),
                f["state"],
                f["remote"],
                str(f.get("cwnd", "-")),
                str(f.get("srtt_us", "-")),
                str(f.get("in_flight", "-")),
                str(f.get("snd_wnd", "-")),
                f"{f.get('rx_buffered', 0)}/{f.get('rx_buf', 0)}",
                str(f.get("retransmits", "-")),
            )
        parts.append(ft)
    return Group(*parts)


def watch(
    fetch_stats, fetch_flows=None, interval: float = 1.0, count: int | None = None, console=None
) -> int:
    """Refresh the live view every ``interval`` seconds, ``count`` times
    (None: until Ctrl-C).  fetch_* are callables (the control socket)."""
    import time

    from rich.live import Live

    prev, t_prev = None, time.monotonic()
    n = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while count is None or n < count:
                cur, t = fetch_stats(), time.monotonic()
                flows = fetch_flows() if fetch_flows else None
                live.update(watch_frame(prev, cur, t - t_prev, flows), refresh=True)
                prev, t_prev = cur, t
                n += 1
                if count is None or n < count:
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass
    return 0
