"""`tas trace` against the session stack: the pcap parses with scapy and
holds exactly the bytes of a transfer; --flow keeps only that flow; the CSV
has samples of the flow.  Also the pcap writer and flow filter offline."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time

import pytest
from conftest import tas_argv

from kernel_slowpath.trace import PcapWriter, flow_matcher

STACK_IP = "198.18.0.2"
PEER_IP = "198.18.0.1"
TRACE_ALL_PORT = 5101
TRACE_FLOW_PORT = 5102
TRACE_OTHER_PORT = 5103

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)")


def _frame(src: str, dst: str, sport: int, dport: int) -> bytes:
    from scapy.all import IP, TCP, Ether

    return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport) / b"x")


def test_pcap_writer_and_flow_filter(tmp_path):
    from scapy.all import TCP, rdpcap

    m = flow_matcher({"local": "198.18.0.2:80", "remote": "198.18.0.1:4000"})
    a = _frame("198.18.0.2", "198.18.0.1", 80, 4000)
    b = _frame("198.18.0.1", "198.18.0.2", 4000, 80)
    c = _frame("198.18.0.1", "198.18.0.2", 4001, 80)
    assert m(a) and m(b) and not m(c) and not m(b"\x00" * 20)
    w = PcapWriter(str(tmp_path / "x.pcap"))
    for i, f in enumerate((a, b)):
        w.write(1_700_000_000_000_000_000 + i * 1000, f)
    w.close()
    pk = rdpcap(str(tmp_path / "x.pcap"))
    assert len(pk) == 2 and pk[1][TCP].sport == 4000 and float(pk[1].time) == pytest.approx(1.7e9 + 1e-6)


def _start_trace(tas, *args: str):
    app = tas.spawn(
        tas.topo.stack_ns,
        "tas-trace",
        [*tas_argv(), "trace", *args, "--state-dir", str(tas.state_dir)],
    )
    app.wait_line("capturing", 15)
    return app


def _stop(app) -> None:
    app.proc.send_signal(signal.SIGINT)
    assert app.wait(15) == 0, app.output()
    app.wait_line("frames", 5)


def _data_bytes(pkts, dport: int) -> tuple[int, int]:
    """(bytes the client sent to dport, from ISN to highest seq; segments seen)."""
    from scapy.all import TCP

    isn, top, n, fin = None, 0, 0, None
    for p in pkts:
        if TCP not in p or p[TCP].dport != dport:
            continue
        t = p[TCP]
        n += 1
        if t.flags.S:
            isn = t.seq
            continue
        ln = len(bytes(t.payload))
        if isn is not None and ln:
            top = max(top, (t.seq - isn - 1) % (1 << 32) + ln)
        if isn is not None and t.flags.F:
            fin = (t.seq - isn - 1) % (1 << 32) + ln
    assert fin == top, f"FIN at {fin}, data ends at {top}"
    assert isn is not None, "no SYN in the capture"
    return top, n


@root_only
def test_trace_all_matches_transfer(tas, tmp_path):
    from scapy.all import rdpcap

    n = 3 << 20
    out = tmp_path / "all.pcap"
    tr = _start_trace(tas, "--all", "--out", str(out), "--duration", "60")
    app = tas.stack_app(listen=TRACE_ALL_PORT, script="recv_eof,close", timeout=30, ready="listening")
    cli = tas.peer("client", STACK_IP, TRACE_ALL_PORT, script="send,close", send_bytes=n, seed=5, timeout=30)
    assert app.result(40)["rx_bytes"] == n
    cli.result(10)
    time.sleep(0.3)
    _stop(tr)
    pkts = rdpcap(str(out))
    got, segs = _data_bytes(pkts, TRACE_ALL_PORT)
    assert got == n, f"pcap holds {got} of {n} bytes in {segs} segments"
    # r/w by tshark too, when installed
    if subprocess.run(["which", "tshark"], capture_output=True).returncode == 0:
        r = subprocess.run(["tshark", "-r", str(out), "-c", "3"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "TCP" in r.stdout, r.stderr


@root_only
def test_trace_one_flow_and_csv(tas, tmp_path):
    from scapy.all import TCP, rdpcap

    n = 1 << 20
    app = tas.stack_app(listen=TRACE_FLOW_PORT, script="recv_eof,close", timeout=30, ready="listening")
    cli = tas.peer(
        "client", STACK_IP, TRACE_FLOW_PORT, script="sleep:1.5,send,close", send_bytes=n, seed=6, timeout=30
    )
    fid = None
    for _ in range(50):  # the flow appears once the handshake is done
        r = tas.run_stack_cmd("flows", "--json")
        flows = [f for f in json.loads(r.stdout) if f["local"].endswith(f":{TRACE_FLOW_PORT}")]
        if flows:
            fid = flows[0]["flow"]
            break
        time.sleep(0.05)
    assert fid is not None, "flow not found"
    out = tmp_path / "flow.pcap"
    tr = _start_trace(tas, "--flow", str(fid), "--out", str(out), "--duration", "60", "--interval-ms", "10")
    other = tas.stack_app(
        name="other", listen=TRACE_OTHER_PORT, script="recv_eof,close", timeout=30, ready="listening"
    )
    ocli = tas.peer(
        "client", STACK_IP, TRACE_OTHER_PORT, name="other-client", script="send,close", send_bytes=n, seed=7
    )
    assert app.result(40)["rx_bytes"] == n and other.result(40)["rx_bytes"] == n
    cli.result(10)
    ocli.result(10)
    time.sleep(0.3)
    _stop(tr)
    pkts = rdpcap(str(out))
    ports = {(p[TCP].sport, p[TCP].dport) for p in pkts if TCP in p}
    assert ports and all(TRACE_FLOW_PORT in pp for pp in ports), ports
    payload = sum(len(bytes(p[TCP].payload)) for p in pkts if TCP in p and p[TCP].dport == TRACE_FLOW_PORT)
    assert payload >= n  # started before the data (retransmissions could add more)
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["flow"] for r in rows} == {str(fid)}
    assert int(rows[-1]["rx_bytes"]) > 0 or len(rows) > 5
    for r in rows:
        assert int(r["cwnd"]) > 0 and int(r["snd_wnd"]) >= 0 and int(r["in_flight"]) >= 0


def test_plot_script_trace_csv_and_results_json(tmp_path):
    """scripts/plot.py: PNGs from a trace CSV and from a demo-style results JSON."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("matplotlib")
    script = Path(__file__).resolve().parent.parent / "scripts" / "plot.py"
    csv_path = tmp_path / "t.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "t_s",
                "flow",
                "state",
                "cwnd",
                "ssthresh",
                "srtt_us",
                "in_flight",
                "snd_wnd",
                "rx_bytes",
                "tx_bytes",
                "retransmits",
            ]
        )
        for i in range(20):
            w.writerow(
                [i * 0.01, 3, "ESTABLISHED", 14600 + i * 1460, 2**31 - 1, 200 + i, i * 100, 65535, 0, 0, 0]
            )
    doc = {
        "metrics": {"kv_set_rps": {"label": "KV SET", "unit": "req/s", "stack": 10.0, "linux": 20.0}},
        "raw": {"stack": {"kv": {"set_p50_ms": 1.0, "set_p99_ms": 3.0, "get_latencies_ms": [1.0, 2.0, 3.0]}}},
    }
    json_path = tmp_path / "results.json"
    json_path.write_text(json.dumps(doc))
    for inp, pngs in (
        (csv_path, ("t-cwnd.png", "t-rtt.png")),
        (json_path, ("results-throughput.png", "results-latency-cdf.png")),
    ):
        r = subprocess.run(
            [sys.executable, str(script), str(inp), "--out", str(tmp_path / "png")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        for name in pngs:
            assert (tmp_path / "png" / name).stat().st_size > 1000
