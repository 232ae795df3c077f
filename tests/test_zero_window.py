"""Zero-window persist in both directions (issue 4): a receiver that stops
reading for 5 s, then reads everything.  No data lost (sha256 on both
ends), the receiver's window really closed (win = 0 on the wire) and the
sender probed it (stack: `zero_window_probes` in the slow path's counters
and one-byte probes on the wire; Linux: probes seen on the peer veth).
"""

from __future__ import annotations

import os
import time

import pytest
from rawtcp import RawPort, stack_mac, tcp_from
from test_faults_util import check_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

N = 2 << 20
U32 = 0xFFFFFFFF


def test_linux_receiver_stops_reading_stack_probes(tas):
    topo = tas.topo
    port = 7430
    srv = tas.peer(
        "server",
        topo.peer_ip,
        port,
        name="linux-slow-rx",
        script="sleep:5,recv_eof,close",
        timeout=60,
        ready="listening",
    )
    sp0 = tas.stats()["slowpath"]
    with RawPort(topo, stack_mac(tas.log()), outgoing=True) as rp:
        t0 = time.monotonic()
        app = tas.stack_app(
            name="stack-tx",
            connect=f"{topo.peer_ip}:{port}",
            script="send,close",
            send_bytes=N,
            seed=71,
            timeout=60,
            ready="connected",
        )
        lport = int(app.wait_line("connected", 10).split(":")[-1])
        tx, rx = app.result(60), srv.result(60)
        elapsed = time.monotonic() - t0
        zero = rp.find(lambda r: tcp_from(topo.peer_ip, port, topo.stack_ip, lport)(r) and r.win == 0)
        probes = rp.find(lambda r: tcp_from(topo.stack_ip, lport, topo.peer_ip, port)(r) and r.plen == 1)
    check_transfer(tx, rx, N, 71)
    sp = tas.stats()["slowpath"]
    n = sp["zero_window_probes"] - sp0["zero_window_probes"]
    rto = sp["rto_fired"] - sp0["rto_fired"]
    print(
        f"\nLinux receiver paused 5 s: {len(zero)} zero-window ACKs from Linux, {n} persist probes armed, "
        f"{rto} probe retransmissions (RTO backoff), {len(probes)} one-byte segments on the wire at "
        f"{[round(p.t - t0, 2) for p in probes][:12]} s, done in {elapsed:.1f} s"
    )
    assert zero, "Linux never advertised a zero window"
    # the first probe byte is armed by the persist timer; while the window
    # stays shut it is outstanding and resent with the backed-off RTO
    assert n >= 1 and len(probes) >= 3
    assert elapsed >= 5


def test_stack_receiver_stops_reading_linux_probes(tas):
    topo = tas.topo
    port = 7431
    app = tas.stack_app(
        name="stack-slow-rx", listen=port, script="sleep:5,recv_eof,close", timeout=60, ready="listening"
    )
    with RawPort(topo, stack_mac(tas.log()), outgoing=True) as rp:
        t0 = time.monotonic()
        cli = tas.peer(
            "client",
            topo.stack_ip,
            port,
            name="linux-tx",
            script="send,close",
            send_bytes=N,
            seed=72,
            timeout=60,
            ready="connected",
        )
        lport = int(cli.wait_line("connected", 10).split()[-1])
        tx, rx = cli.result(60), app.result(60)
        elapsed = time.monotonic() - t0
        to_peer = tcp_from(topo.stack_ip, port, topo.peer_ip, lport)
        zero = rp.find(lambda r: to_peer(r) and r.win == 0)
        zero_acks = {r.ack for r in zero}
        # Linux's window probe: a segment at SND.UNA - 1 (no data) while the window is zero
        probes = rp.find(
            lambda r: (
                tcp_from(topo.peer_ip, lport, topo.stack_ip, port)(r)
                and r.plen == 0
                and ((r.seq + 1) & U32) in zero_acks
            )
        )
        reopen = next((r for r in rp.find(to_peer) if zero and r.t > zero[-1].t and r.win > 0), None)
    check_transfer(tx, rx, N, 72)
    print(
        f"\nstack receiver paused 5 s: {len(zero)} zero-window ACKs from the stack, {len(probes)} Linux "
        f"probes at {[round(p.t - t0, 2) for p in probes][:12]} s, window reopened at "
        f"{round(reopen.t - t0, 2) if reopen else None} s, done in {elapsed:.1f} s"
    )
    assert zero, "the stack never advertised a zero window"
    assert probes, "no Linux window probe seen"
    assert elapsed >= 5
