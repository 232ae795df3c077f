"""Frames the slow path builds: ARP, ICMP echo replies, TCP control
segments (SYN, SYN-ACK, ACK, RST).  TCP goes through the same C builder
as the fast path, so checksums and option layout have one implementation.
"""

from __future__ import annotations

import struct

from flextcp.native import ffi, lib

BROADCAST = b"\xff" * 6
ETH_ARP = 0x0806
ETH_IP = 0x0800


def arp_frame(op: int, src_mac: bytes, src_ip: int, dst_mac: bytes, dst_ip: int, eth_dst: bytes) -> bytes:
    eth = eth_dst + src_mac + struct.pack("!H", ETH_ARP)
    arp = struct.pack("!HHBBH6sI6sI", 1, ETH_IP, 6, 4, op, src_mac, src_ip, dst_mac, dst_ip)
    return eth + arp


def parse_arp(frame: bytes) -> tuple[int, bytes, int, int] | None:
    """(op, sender mac, sender ip, target ip) of an Ethernet/IPv4 ARP frame."""
    if len(frame) < 42:
        return None
    htype, ptype, hlen, plen, op, smac, sip, _tmac, tip = struct.unpack_from("!HHBBH6sI6sI", frame, 14)
    if htype != 1 or ptype != ETH_IP or hlen != 6 or plen != 4:
        return None
    return op, smac, sip, tip


def csum(data: bytes) -> int:
    return int(lib.tas_csum_fold(lib.tas_csum_partial(data, len(data), 0)))


def icmp_echo_reply(frame: bytes, pkt, my_mac: bytes) -> bytes | None:
    """Echo reply to the echo request in `frame` (already validated)."""
    l3, l4 = pkt.l3_off, pkt.l4_off
    total = struct.unpack_from("!H", frame, l3 + 2)[0]
    icmp = bytearray(frame[l4 : l3 + total])
    if len(icmp) < 8 or icmp[0] != 8:
        return None
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
    ip = bytearray(frame[l3 : l3 + 20])
    ip[12:16], ip[16:20] = frame[l3 + 16 : l3 + 20], frame[l3 + 12 : l3 + 16]
    ip[8] = 64
    ip[10:12] = b"\0\0"
    ip[2:4] = struct.pack("!H", 20 + len(icmp))
    ip[0] = 0x45
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return bytes(frame[6:12]) + my_mac + struct.pack("!H", ETH_IP) + bytes(ip) + bytes(icmp)


class SegmentBuilder:
    """Builds TCP frames from keyword fields with the C kernel."""

    def __init__(self, mac: bytes, ip: int) -> None:
        self.mac = mac
        self.ip = ip
        self._seg = ffi.new("struct tas_seg *")
        self._buf = ffi.new("uint8_t[]", 2048)

    def build(self, *, dst_mac: bytes, dst_ip: int, sport: int, dport: int, seq: int, ack: int,
              flags: int, win: int = 0, mss: int | None = None, wscale: int | None = None,
              sack_perm: bool = False, ts: tuple[int, int] | None = None, payload: bytes = b"") -> bytes:
        s = self._seg
        ffi.memmove(s, b"\0" * ffi.sizeof("struct tas_seg"), ffi.sizeof("struct tas_seg"))
        s.src_mac = list(self.mac)
        s.dst_mac = list(dst_mac)
        s.src_ip, s.dst_ip = self.ip, dst_ip
        s.src_port, s.dst_port = sport, dport
        s.seq, s.ack = seq & 0xFFFFFFFF, ack & 0xFFFFFFFF
        s.win = min(win, 0xFFFF)
        s.flags = flags
        opts = 0
        if mss is not None:
            opts |= lib.TAS_OPT_MSS
            s.mss = mss
        if wscale is not None:
            opts |= lib.TAS_OPT_WS
            s.wscale = wscale
        if sack_perm:
            opts |= lib.TAS_OPT_SACKPERM
        if ts is not None:
            opts |= lib.TAS_OPT_TS
            s.tsval, s.tsecr = ts[0] & 0xFFFFFFFF, ts[1] & 0xFFFFFFFF
        s.opts = opts
        n = lib.tas_build_tcp(self._buf, 2048, s, payload, len(payload), ffi.NULL, 0)
        if n == 0:
            raise ValueError("segment does not fit in a frame")
        return bytes(ffi.buffer(self._buf, n))
