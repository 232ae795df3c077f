"""Crafted frames from the Linux peer's namespace (issue 4 hostile-segment,
SYN-cookie, PMTU and zero-window tests).  No tests here.

``RawPort``: an AF_PACKET socket on the peer veth (opened inside the peer
namespace) that sends raw Ethernet frames and records every IPv4 TCP/ICMP
frame it sees arrive (a bounded deque), so a test can both inject segments
with real sequence numbers and observe the stack's answers.

``RawFlow``: a minimal TCP endpoint on a spoofed address in 198.18.0.0/24
(the peer kernel does not own it, so it never answers with RSTs of its own;
the stack answers to the source MAC of the SYN, no ARP needed).

Only 198.18.0.0/15 addresses, only in the test topology's namespaces.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import socket
import struct
import threading
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
U32 = 0xFFFFFFFF


@dataclass
class Seg:
    t: float
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    win: int
    payload: bytes
    opts: bytes

    @property
    def plen(self) -> int:
        return len(self.payload)


@dataclass
class Icmp:
    t: float
    src: str
    dst: str
    type: int
    code: int


def _parse(frame: bytes, t: float):
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src = socket.inet_ntoa(frame[26:30])
    dst = socket.inet_ntoa(frame[30:34])
    tot = struct.unpack_from("!H", frame, 16)[0]
    l4 = 14 + ihl
    end = min(len(frame), 14 + tot)
    if proto == 1 and end - l4 >= 4:
        return Icmp(t, src, dst, frame[l4], frame[l4 + 1])
    if proto != 6 or end - l4 < 20:
        return None
    sport, dport, seq, ack, off, flags, win = struct.unpack_from("!HHIIBBH", frame, l4)
    doff = (off >> 4) * 4
    return Seg(
        t,
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        flags,
        win,
        bytes(frame[l4 + doff : end]),
        bytes(frame[l4 + 20 : l4 + doff]),
    )


def stack_mac(log_text: str) -> str:
    """The stack's MAC from its `tas: ready ... mac XX ...` log line."""
    return log_text.split(" mac ", 1)[1].split()[0]


class RawPort:
    """Raw frames on the peer veth.  ``with RawPort(topo, stack_mac) as rp``."""

    def __init__(self, topo, stack_mac_str: str, keep: int = 200_000, outgoing: bool = False) -> None:
        with topo.enter(topo.peer_ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        with contextlib.suppress(OSError):  # a bulk transfer must not overflow the capture
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
        self.sock.bind((topo.peer_veth, 0))
        self.sock.settimeout(0.2)
        self.mac = self.sock.getsockname()[4][:6]
        self.mac_str = ":".join(f"{b:02x}" for b in self.mac)
        self.stack_mac = stack_mac_str
        self.stack_mac_b = bytes.fromhex(stack_mac_str.replace(":", ""))
        self.outgoing = outgoing  # also record frames leaving the peer veth (the peer kernel's and our own)
        self.rx: collections.deque = collections.deque(maxlen=keep)
        self.count = 0  # frames recorded so far (index space of `since`)
        self._cond = threading.Condition()
        self._stop = False
        self._thr = threading.Thread(target=self._run, name="rawport", daemon=True)
        self._thr.start()

    def __enter__(self) -> RawPort:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop = True
        self._thr.join(2)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING and not self.outgoing:
                continue
            rec = _parse(data, time.monotonic())
            if rec is None:
                continue
            with self._cond:
                self.rx.append((self.count, rec))
                self.count += 1
                self._cond.notify_all()

    # -- sending ----------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def eth(self):
        from scapy.all import Ether

        return Ether(src=self.mac_str, dst=self.stack_mac)

    # -- observing --------------------------------------------------------------
    def mark(self) -> int:
        with self._cond:
            return self.count

    def find(self, pred, since: int = 0) -> list:
        with self._cond:
            return [r for i, r in self.rx if i >= since and pred(r)]

    def wait(self, pred, since: int, timeout: float):
        """The first recorded frame (index >= since) matching pred, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, r in self.rx:
                    if i >= since and pred(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.1))


def tcp_from(src: str, sport: int, dst: str, dport: int):
    """Predicate: TCP segments src:sport -> dst:dport."""
    return lambda r: (
        isinstance(r, Seg) and r.src == src and r.sport == sport and r.dst == dst and r.dport == dport
    )


class RawFlow:
    """A TCP endpoint at a spoofed address, driven segment by segment (no
    timestamps, no SACK, no window scaling, MSS 1460)."""

    def __init__(
        self, rp: RawPort, src_ip: str, sport: int, dst_ip: str, dport: int, isn: int = 1000
    ) -> None:
        assert ipaddress.IPv4Address(src_ip) in ipaddress.IPv4Network("198.18.0.0/15")
        self.rp, self.src, self.sport, self.dst, self.dport = rp, src_ip, sport, dst_ip, dport
        self.iss = isn
        self.snd_nxt = isn
        self.rcv_nxt = 0
        self.from_stack = tcp_from(dst_ip, dport, src_ip, sport)

    def frame(
        self,
        *,
        seq: int | None = None,
        ack: int | None = None,
        flags: str = "A",
        payload: bytes = b"",
        win: int = 65535,
        options=None,
    ) -> bytes:
        from scapy.all import IP, TCP, Raw

        t = TCP(
            sport=self.sport,
            dport=self.dport,
            seq=(self.snd_nxt if seq is None else seq) & U32,
            ack=(self.rcv_nxt if ack is None else ack) & U32,
            flags=flags,
            window=win,
            options=options or [],
        )
        pkt = self.rp.eth() / IP(src=self.src, dst=self.dst) / t
        if payload:
            pkt = pkt / Raw(payload)
        return bytes(pkt)

    def send(self, **kw) -> None:
        self.rp.send(self.frame(**kw))

    def connect(self, timeout: float = 5.0) -> Seg:
        m = self.rp.mark()
        self.send(seq=self.iss, ack=0, flags="S", options=[("MSS", 1460)])
        sa = self.rp.wait(lambda r: self.from_stack(r) and r.flags & (SYN | ACK) == SYN | ACK, m, timeout)
        assert sa is not None, f"no SYN-ACK from {self.dst}:{self.dport} to {self.src}:{self.sport}"
        self.snd_nxt = (self.iss + 1) & U32
        self.rcv_nxt = (sa.seq + 1) & U32
        self.send(flags="A")
        return sa

    def send_data(self, data: bytes, seq: int | None = None, flags: str = "PA") -> None:
        seq = self.snd_nxt if seq is None else seq
        self.send(seq=seq, flags=flags, payload=data)
        end = (seq + len(data)) & U32
        if ((end - self.snd_nxt) & U32) < 0x80000000:
            self.snd_nxt = end

    def reset(self) -> None:
        self.send(seq=self.snd_nxt, flags="R")

    def acked(self, upto: int, since: int, timeout: float) -> Seg | None:
        """Wait for an ACK from the stack covering sequence ``upto``."""
        return self.rp.wait(
            lambda r: self.from_stack(r) and r.flags & ACK and ((r.ack - upto) & U32) < 0x80000000,
            since,
            timeout,
        )


@contextlib.contextmanager
def raw_frames_reach_stack(topo):
    """Inside the stack namespace, stop the bridge from handing IPv4 frames
    to netfilter (br_netfilter validates IP headers and checksums and
    reassembles fragments, so malformed frames would never reach the TAP).
    Restored afterwards; only this topology's namespace is touched."""
    path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    old = None
    with topo.enter(topo.stack_ns):
        try:
            with open(path) as f:
                old = f.read().strip()
            with open(path, "w") as f:
                f.write("0")
        except OSError:
            old = None  # no br_netfilter: nothing to undo
    try:
        yield
    finally:
        if old is not None:
            with topo.enter(topo.stack_ns), contextlib.suppress(OSError), open(path, "w") as f:
                f.write(old)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_frame(
    src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int, seq: int
) -> bytes:
    """A plain SYN (MSS 1460 option), checksums filled in; fast (no scapy)."""
    sip, dip = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    tcp = (
        struct.pack("!HHIIBBHHH", sport, dport, seq & U32, 0, 6 << 4, SYN, 64240, 0, 0) + b"\x02\x04\x05\xb4"
    )
    c = _csum(sip + dip + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, sip, dip)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp
