"""`tas stats --watch`: the frame renderer offline (rates from deltas), and a
bounded smoke run against the session stack."""

from __future__ import annotations

import os

import pytest
from rich.console import Console

from kernel_slowpath.statsview import watch, watch_frame


def _snap(polls, busy, rx_bytes, retx=0, drops=0):
    core = {
        "polls": polls,
        "busy_polls": busy,
        "sleeps": 0,
        "rx_frames": 10,
        "rx_bytes": rx_bytes,
        "tx_frames": 0,
        "tx_bytes": 0,
        "to_slowpath": 0,
        "rexmit_segs": retx,
    }
    return {
        "cores": [core],
        "flows_open": 2,
        "retransmissions": retx,
        "drops": {"bad_tcp_csum": drops},
        "control": {"apps": 1, "contexts": 1},
    }


def _text(renderable) -> str:
    con = Console(width=160, record=True, force_terminal=False)
    con.print(renderable)
    return con.export_text()


def test_watch_frame_rates_from_deltas():
    prev = _snap(1000, 100, 0)
    cur = _snap(2000, 600, 1_000_000, retx=3, drops=2)
    flows = [
        {
            "flow": 7,
            "state": "ESTABLISHED",
            "remote": "198.18.0.1:5",
            "cwnd": 14600,
            "srtt_us": 90,
            "in_flight": 0,
            "snd_wnd": 65535,
            "rx_buffered": 0,
            "rx_buf": 4096,
            "retransmits": 0,
        }
    ]
    out = _text(watch_frame(prev, cur, 1.0, flows))
    assert "50.0%" in out  # 500 busy of 1000 polls
    assert "8.0M" in out  # 1 MB/s = 8 Mbit/s
    assert "retransmits 3 (+3)" in out
    assert "bad_tcp_csum" in out and "ESTABLISHED" in out and "14600" in out
    first = _text(watch_frame(None, cur, 0.0))
    assert "0.0%" in first and "none" not in first


def test_watch_bounded_count_offline():
    calls = []

    def fetch():
        calls.append(1)
        return _snap(len(calls) * 100, 10, 0)

    con = Console(width=160, record=True, force_terminal=False)
    assert watch(fetch, lambda: [], interval=0.01, count=3, console=con) == 0
    assert len(calls) == 3 and "fast-path cores" in con.export_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)")
def test_stats_watch_smoke(tas):
    r = tas.run_stack_cmd("stats", "--watch", "--count", "3", "--interval", "0.3", timeout=20)
    assert r.returncode == 0, r.stderr
    assert "fast-path cores" in r.stdout and "drops by reason" in r.stdout and "flows open" in r.stdout


def test_flow_memory_fields_and_text():
    """Per-flow memory (docs/STATS.md): the fixed slot is record + side record
    + hash share; buffers count rx + tx + the 64-byte appflow block."""
    from flextcp.flowtab import flow_memory, ft_bytes
    from flextcp.native import ffi
    from kernel_slowpath.statsview import render_stats

    m = flow_memory(1024, [(1 << 16, 1 << 17), (4096, 4096)])
    assert m["flow_record_bytes"] == ffi.sizeof("struct tas_flow") == 128
    assert m["flow_side_bytes"] == ffi.sizeof("struct tas_flow_cc") == 320
    assert m["flow_hash_bytes"] == 16  # 2048 slots of 8 B over 1024 flows
    assert m["flow_fixed_bytes"] == 128 + 320 + 16
    assert m["flow_table_bytes"] == ft_bytes(1024) >= 1024 * m["flow_fixed_bytes"]
    assert m["flow_buffer_bytes"] == (1 << 16) + (1 << 17) + 64 + 4096 + 4096 + 64
    assert m["flow_bytes_avg"] == m["flow_fixed_bytes"] + m["flow_buffer_bytes"] // 2
    assert flow_memory(1024, [])["flow_bytes_avg"] == m["flow_fixed_bytes"]
    text = render_stats({**m, "flows_open": 2})
    assert "flow record 128 B" in text and "side record 320 B" in text and "= 464 B fixed" in text


def test_stats_json_reports_flow_memory(tas):
    st = tas.stats()
    assert st["flow_record_bytes"] == 128 and st["flow_side_bytes"] == 320
    assert st["flow_fixed_bytes"] == 128 + 320 + st["flow_hash_bytes"]
    assert st["flow_table_bytes"] >= st["flow_slots"] * st["flow_fixed_bytes"]
