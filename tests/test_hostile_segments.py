"""Hostile segments against the running stack (issue 4), crafted with scapy
in the Linux peer's namespace with the real 4-tuple and sequence numbers of
an established connection (learnt by sniffing the peer veth, see
tests/rawtcp.py).

The victim is a Linux socket (peer namespace) connected to `tas echo-server`;
after every injection the same connection echoes 256 KiB byte-exactly
(sha256).  Malformed frames are RSTs at the *exact* expected sequence
number: if any were accepted the connection would be reset, so "dropped" is
observable, and each must be counted under its reason in `tas stats` drops.

Overlapping retransmissions with different bytes use a spoofed-address flow
(tests/rawtcp.RawFlow) to a native-API receiver; what the receiver sees is
documented in docs/RELIABILITY.md ("first copy wins").
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
from rawtcp import ACK, FIN, RawFlow, RawPort, Seg, raw_frames_reach_stack, stack_mac, tcp_from

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

ECHO_PORT = 7400
U32 = 0xFFFFFFFF


def _fp_sum(st: dict, name: str) -> int:
    return sum(c[name] for c in st["cores"])


class Victim:
    """A Linux connection to the stack's echo server plus a raw port."""

    def __init__(self, tas, rp: RawPort) -> None:
        self.tas, self.rp = tas, rp
        topo = tas.topo
        with topo.enter(topo.peer_ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect((topo.stack_ip, ECHO_PORT))
        self.lport = self.sock.getsockname()[1]
        self.peer_ip, self.stack_ip = topo.peer_ip, topo.stack_ip
        self.from_stack = tcp_from(self.stack_ip, ECHO_PORT, self.peer_ip, self.lport)
        self.rounds = 0

    def echo(self, n: int = 256 << 10) -> None:
        self.rounds += 1
        data = hashlib.shake_128(b"hostile:%d" % self.rounds).digest(n)
        err: list[BaseException] = []

        def tx() -> None:
            try:
                self.sock.sendall(data)
            except BaseException as e:  # noqa: BLE001 - reported below
                err.append(e)

        t = threading.Thread(target=tx)
        t.start()
        got = bytearray()
        while len(got) < n:
            chunk = self.sock.recv(min(1 << 16, n - len(got)))
            assert chunk, f"EOF after {len(got)} of {n} echoed bytes"
            got += chunk
        t.join(15)
        assert not err, err
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "echoed bytes differ"

    def seqs(self) -> tuple[int, int]:
        """(stack snd_nxt, stack rcv_nxt) from the last segment the stack sent, once quiet."""
        time.sleep(0.3)
        segs = self.rp.find(self.from_stack)
        assert segs, "no segment of the victim flow seen on the wire"
        first = segs[0]
        snd = max(((r.seq + r.plen - first.seq) & U32) for r in segs)
        rcv = max(((r.ack - first.ack) & U32) for r in segs)
        return (first.seq + snd) & U32, (first.ack + rcv) & U32

    def frame(
        self,
        *,
        seq: int,
        ack: int,
        flags: str,
        payload: bytes = b"",
        ip_kw=None,
        tcp_kw=None,
        eth_dst: str | None = None,
    ) -> bytes:
        from scapy.all import IP, TCP, Ether, Raw

        pkt = (
            Ether(src=self.rp.mac_str, dst=eth_dst or self.rp.stack_mac)
            / IP(**{"src": self.peer_ip, "dst": self.stack_ip, **(ip_kw or {})})
            / TCP(
                sport=self.lport,
                dport=ECHO_PORT,
                seq=seq & U32,
                ack=ack & U32,
                flags=flags,
                window=502,
                **(tcp_kw or {}),
            )
        )
        if payload:
            pkt = pkt / Raw(payload)
        return bytes(pkt)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def victim(tas_stack):
    echo = tas_stack.echo_server(ECHO_PORT)
    rp = RawPort(tas_stack.topo, stack_mac(tas_stack.log()))
    v = Victim(tas_stack, rp)
    try:
        v.echo()
        with raw_frames_reach_stack(tas_stack.topo):
            yield v
    finally:
        v.close()
        rp.close()
        tas_stack.stop_apps([echo])
        deadline = time.monotonic() + 5
        while tas_stack.stats()["flows_open"] and time.monotonic() < deadline:
            time.sleep(0.1)


def _challenge(v: Victim, since: int, rcv_nxt: int, timeout: float = 1.0) -> Seg | None:
    """A pure ACK from the stack acknowledging exactly rcv_nxt (a challenge ACK)."""
    return v.rp.wait(
        lambda r: v.from_stack(r) and r.flags & ACK and not r.plen and r.ack == rcv_nxt, since, timeout
    )


def test_rst_out_of_window_is_ignored(tas, victim):
    snd, rcv = victim.seqs()
    before = tas.stats()["slowpath"]
    m = victim.rp.mark()
    victim.rp.send(victim.frame(seq=rcv + (1 << 30), ack=snd, flags="R"))
    time.sleep(0.5)
    after = tas.stats()["slowpath"]
    assert after["rst_rcvd"] == before["rst_rcvd"] + 1
    assert after["challenge_acks"] == before["challenge_acks"], "out-of-window RST must get no answer"
    assert not victim.rp.find(victim.from_stack, m), "the stack answered an out-of-window RST"
    victim.echo()


def test_rst_in_window_not_exact_gets_challenge_ack(tas, victim):
    snd, rcv = victim.seqs()
    before = tas.stats()["slowpath"]
    m = victim.rp.mark()
    victim.rp.send(victim.frame(seq=rcv + 1000, ack=snd, flags="R"))
    ch = _challenge(victim, m, rcv)
    assert ch is not None, (
        "no challenge ACK for an in-window RST (RFC 5961 3.2)",
        snd,
        rcv,
        victim.rp.find(victim.from_stack, m - 3),
        tas.stats()["slowpath"],
        before,
    )
    assert ch.seq == snd
    after = tas.stats()["slowpath"]
    assert after["challenge_acks"] == before["challenge_acks"] + 1
    victim.echo()


def test_syn_on_established_flow_gets_challenge_ack(tas, victim):
    snd, rcv = victim.seqs()
    before = tas.stats()["slowpath"]
    m = victim.rp.mark()
    victim.rp.send(victim.frame(seq=rcv + 77777, ack=0, flags="S"))
    ch = _challenge(victim, m, rcv)
    assert ch is not None, "no challenge ACK for a SYN on an established flow (RFC 5961 4.2)"
    assert tas.stats()["slowpath"]["challenge_acks"] == before["challenge_acks"] + 1
    victim.echo()


def test_data_beyond_window_dropped_with_ack(tas, victim):
    snd, rcv = victim.seqs()
    before = _fp_sum(tas.stats(), "beyond_window")
    m = victim.rp.mark()
    victim.rp.send(victim.frame(seq=rcv + (8 << 20), ack=snd, flags="PA", payload=b"X" * 500))
    ack = _challenge(victim, m, rcv)
    assert ack is not None, (
        "no ACK for a segment beyond the window",
        snd,
        rcv,
        victim.rp.find(victim.from_stack, m - 3),
        victim.rp.find(lambda r: True, m - 3),
    )
    assert _fp_sum(tas.stats(), "beyond_window") >= before + 1
    victim.echo()


def _bad_opt(v: Victim, snd: int, rcv: int) -> bytes:
    from scapy.all import IP, TCP, Ether, Raw

    # 4 option bytes: MSS kind with length 0 (malformed, RFC 9293 3.1)
    return bytes(
        Ether(src=v.rp.mac_str, dst=v.rp.stack_mac)
        / IP(src=v.peer_ip, dst=v.stack_ip)
        / TCP(sport=v.lport, dport=ECHO_PORT, seq=rcv & U32, ack=snd & U32, flags="R", dataofs=6)
        / Raw(b"\x02\x00\x05\xb4")
    )


def _truncated(v: Victim, snd: int, rcv: int) -> bytes:
    from scapy.all import IP, Ether, Raw

    tcp = v.frame(seq=rcv, ack=snd, flags="R")[34:54]
    return bytes(
        Ether(src=v.rp.mac_str, dst=v.rp.stack_mac)
        / IP(src=v.peer_ip, dst=v.stack_ip, proto=6)
        / Raw(tcp[:12])
    )


MALFORMED = {
    "bad_ip_csum": lambda v, s, r: v.frame(seq=r, ack=s, flags="R", ip_kw={"chksum": 0x1234}),
    "bad_tcp_csum": lambda v, s, r: v.frame(seq=r, ack=s, flags="R", tcp_kw={"chksum": 0x1234}),
    "trunc_tcp": _truncated,
    "bad_opt": _bad_opt,
    "bad_doff": lambda v, s, r: v.frame(seq=r, ack=s, flags="R", tcp_kw={"dataofs": 3}),
    "ip_frag": lambda v, s, r: v.frame(seq=r, ack=s, flags="R", ip_kw={"flags": "MF"}),
    "wrong_dst_mac": lambda v, s, r: v.frame(seq=r, ack=s, flags="R", eth_dst="02:5e:00:de:ad:01"),
    "wrong_dst_ip": lambda v, s, r: v.frame(seq=r, ack=s, flags="R", ip_kw={"dst": "198.18.0.99"}),
}


@pytest.mark.parametrize("reason", list(MALFORMED))
def test_malformed_rst_dropped_and_counted(tas, victim, reason):
    """A RST at the exact sequence number, malformed: dropped (the connection
    survives) and counted under its reason."""
    snd, rcv = victim.seqs()
    before = tas.stats()
    victim.rp.send(MALFORMED[reason](victim, snd, rcv))
    deadline = time.monotonic() + 3
    while True:
        after = tas.stats()
        if after["drops"].get(reason, 0) > before["drops"].get(reason, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after["drops"][reason] == before["drops"].get(reason, 0) + 1, (reason, after["drops"])
    assert after["slowpath"]["rst_rcvd"] == before["slowpath"]["rst_rcvd"], (
        "a malformed RST reached the slow path"
    )
    victim.echo()


def test_overlapping_retransmissions_first_copy_wins(tas):
    """Overlapping segments with different bytes.  In-order overlap: bytes
    already received are kept (the retransmission is trimmed).  Overlap of
    two out-of-order segments: the later copy overwrites the earlier one in
    the buffer (both are still undelivered), so the app sees the second
    copy there.  Either way the app sees one consistent stream, and the
    flow carries on."""
    port = 7401
    app = tas.stack_app(
        name="overlap-rx", listen=port, script="recv_eof,close", timeout=30, ready="listening"
    )
    with RawPort(tas.topo, stack_mac(tas.log())) as rp:
        fl = RawFlow(rp, "198.18.0.77", 40001, tas.topo.stack_ip, port, isn=5000)
        fl.connect()
        base = fl.snd_nxt
        segs = [  # (offset, bytes) in the order sent
            (0, b"A" * 1000),
            (500, b"B" * 1000),  # in-order overlap: [500,1000) already there -> trimmed
            (3000, b"C" * 1000),  # out of order
            (2500, b"D" * 1000),  # overlaps C while both are out of order
            (1500, b"E" * 1000),  # fills the hole: delivers up to 4000
            (1500, b"F" * 1400),  # retransmission of delivered bytes, different content
            (0, b"H" * 1400),
            (4000, b"G" * 1000),  # the flow carries on
            (5000, b"G" * 1000),
        ]
        for off, data in segs:
            fl.send_data(data, seq=base + off)
            time.sleep(0.05)
        end = base + 6000
        m = rp.mark()
        fl.send(seq=end, flags="FA")
        fl.snd_nxt = end + 1
        assert fl.acked(end + 1, m, 3.0) is not None, "FIN not acknowledged"
        res = app.result(15)
        fin = rp.wait(lambda r: fl.from_stack(r) and r.flags & FIN, m, 5.0)
        if fin is not None:
            fl.send(seq=end + 1, ack=fin.seq + 1 + fin.plen, flags="A")
    want = b"A" * 1000 + b"B" * 500 + b"E" * 1000 + b"D" * 1000 + b"C" * 500 + b"G" * 2000
    assert res["rx_bytes"] == 6000
    assert res["rx_sha256"] == hashlib.sha256(want).hexdigest(), "receiver saw an unexpected byte mix"
