"""Path MTU (RFC 1191, issue 4): an ICMP "fragmentation needed" (type 3 code
4, next-hop MTU 1200) quoting a segment of an established flow lowers that
flow's MSS to 1160; the rest of the transfer leaves in frames of at most
1200 IP bytes and arrives intact.  A forged ICMP quoting a sequence number
outside what is in flight (RFC 5927) changes nothing.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from rawtcp import RawPort, Seg, stack_mac, tcp_from

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

N = 1 << 20
U32 = 0xFFFFFFFF


def _frag_needed(rp: RawPort, topo, lport: int, port: int, seq: int, mtu: int) -> bytes:
    from scapy.all import ICMP, IP, TCP

    quoted = bytes(IP(src=topo.stack_ip, dst=topo.peer_ip) / TCP(sport=lport, dport=port, seq=seq, flags="A"))
    return bytes(
        rp.eth()
        / IP(src=topo.peer_ip, dst=topo.stack_ip)
        / ICMP(type=3, code=4, nexthopmtu=mtu)
        / quoted[:28]
    )


def _flow_mss(tas, lport: int) -> int:
    r = tas.run_stack_cmd("flows", "--json")
    flows = json.loads(r.stdout)
    return next(f["mss"] for f in flows if f["local"].endswith(f":{lport}"))


def test_icmp_frag_needed_lowers_the_flow_mss(tas):
    topo = tas.topo
    port = 7440
    srv = tas.peer(
        "server", topo.peer_ip, port, name="linux-rx", script="recv_eof,close", timeout=60, ready="listening"
    )
    sp0 = tas.stats()["slowpath"]
    with RawPort(topo, stack_mac(tas.log())) as rp:
        app = tas.stack_app(
            name="stack-tx",
            connect=f"{topo.peer_ip}:{port}",
            script="send,sleep:5,send,close",
            send_bytes=N,
            seed=1191,
            timeout=60,
            ready="connected",
        )
        lport = int(app.wait_line("connected", 10).split(":")[-1])
        data = tcp_from(topo.stack_ip, lport, topo.peer_ip, port)
        deadline = time.monotonic() + 10
        while sum(r.plen for r in rp.find(data)) < N and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # first MiB sent and acknowledged: SND.UNA == SND.MAX
        segs = rp.find(data)
        una = max(((r.seq + r.plen - segs[0].seq) & U32) for r in segs) + segs[0].seq & U32
        mss0 = _flow_mss(tas, lport)
        # forged: a sequence number far outside the flight -> ignored
        rp.send(_frag_needed(rp, topo, lport, port, (una + (1 << 30)) & U32, 600))
        time.sleep(0.2)
        assert _flow_mss(tas, lport) == mss0
        m = rp.mark()
        rp.send(_frag_needed(rp, topo, lport, port, una, 1200))
        time.sleep(0.2)
        mss1 = _flow_mss(tas, lport)
        assert app.proc.poll() is None and "send" not in json.dumps(app.lines[1:])  # still in its sleep
        tx, rx = app.result(60), srv.result(60)
        after: list[Seg] = rp.find(data, m)
    sp = tas.stats()["slowpath"]
    big = max((20 + 20 + len(r.opts) + r.plen for r in after), default=0)
    print(
        f"\nPMTU: mss {mss0} -> {mss1}; largest IP packet after the ICMP {big} bytes "
        f"({len(after)} segments); pmtu_updates +{sp['pmtu_updates'] - sp0['pmtu_updates']}"
    )
    assert rx["rx_bytes"] == tx["tx_bytes"] == 2 * N and rx["rx_sha256"] == tx["tx_sha256"]
    assert mss0 == 1460 and mss1 == 1160
    assert sum(r.plen for r in after) >= N and 1000 < big <= 1200
    assert sp["pmtu_updates"] == sp0["pmtu_updates"] + 1
    assert sp["icmp_frag_needed"] == sp0["icmp_frag_needed"] + 2
