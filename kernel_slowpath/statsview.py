"""Plain-text rendering of `tas stats` and `tas flows` output."""

from __future__ import annotations


def render_stats(st: dict) -> str:
    lines = [f"flows open {st.get('flows_open', 0)}  connecting {st.get('flows_connecting', 0)}  "
             f"half-open {st.get('half_open', 0)}  listeners {st.get('listeners', 0)}  "
             f"time-wait {st.get('time_wait', 0)}  flow record {st.get('flow_record_bytes', 0)} B"]
    for i, c in enumerate(st.get("cores", [])):
        lines.append(f"core {i}: rx {c['rx_frames']} frames / {c['rx_bytes']} B, tx {c['tx_frames']} frames / "
                     f"{c['tx_bytes']} B, to slow path {c['to_slowpath']}, acks {c['acks_sent']}, "
                     f"retransmits {c['rexmit_segs']} (fast {c['rexmit_fast']}), ooo {c['ooo_segs']}, "
                     f"busy {c['busy_polls']}/{c['polls']} polls, sleeps {c['sleeps']}")
    drops = {k: v for k, v in st.get("drops", {}).items() if v}
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    sp = {k: v for k, v in st.get("slowpath", {}).items() if v}
    lines.append("slow path: " + ", ".join(f"{k} {v}" for k, v in sorted(sp.items())))
    return "\n".join(lines)


def render_flows(flows: list[dict]) -> str:
    if not flows:
        return "no flows"
    out = [f"{'id':>5} {'state':<12} {'local':<21} {'remote':<21} {'cwnd':>8} {'srtt_us':>8} "
           f"{'inflight':>9} {'rx_buf':>12} {'retx':>6}"]
    for f in flows:
        out.append(f"{f['flow']:>5} {f['state']:<12} {f['local']:<21} {f['remote']:<21} {f.get('cwnd', 0):>8} "
                   f"{f.get('srtt_us', 0):>8} {f.get('in_flight', 0):>9} "
                   f"{f.get('rx_buffered', 0):>5}/{f.get('rx_buf', 0):<6} {f.get('retransmits', 0):>6}")
    return "\n".join(out)
