"""Pure-Python twin of the NIC wire kernels (nicemu/csrc/wire.c).

The twin exists so that every C kernel has an executable specification that
hypothesis can compare against (and so ``TAS_PURE=1`` runs without a
compiler).  It must agree with the C byte for byte and field for field,
including how far a Packet is filled in when a frame is dropped, so the
order of checks below mirrors wire.c exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# Constants duplicated from wire.h on purpose: the twin must import without
# the native extension.  tests/test_wire.py asserts they equal the C ones.
TAS_PK_TCP = 1
TAS_PK_ARP = 2
TAS_PK_ICMP = 3
TAS_PK_OTHER_IP = 4
TAS_PK_OTHER = 5

TAS_DROP_TRUNC_ETH = -1
TAS_DROP_TRUNC_IP = -2
TAS_DROP_BAD_IP_VER = -3
TAS_DROP_BAD_IHL = -4
TAS_DROP_BAD_IP_LEN = -5
TAS_DROP_IP_FRAG = -6
TAS_DROP_BAD_IP_CSUM = -7
TAS_DROP_TRUNC_TCP = -8
TAS_DROP_BAD_DOFF = -9
TAS_DROP_BAD_TCP_CSUM = -10
TAS_DROP_BAD_OPT = -11
TAS_DROP_TRUNC_ARP = -12
TAS_DROP_TRUNC_ICMP = -13
TAS_DROP_REASONS = 14

TAS_TCP_FIN = 1
TAS_TCP_SYN = 2
TAS_TCP_RST = 4
TAS_TCP_PSH = 8
TAS_TCP_ACK = 16
TAS_TCP_URG = 32
TAS_TCP_ECE = 64
TAS_TCP_CWR = 128

TAS_OPT_MSS = 1
TAS_OPT_WS = 2
TAS_OPT_SACKPERM = 4
TAS_OPT_TS = 8
TAS_OPT_SACK = 16

# Short names for `tas stats`, indexed like tas_fp_stats.drops[-reason].
DROP_REASON_NAMES: dict[int, str] = {
    TAS_DROP_TRUNC_ETH: "trunc_eth",
    TAS_DROP_TRUNC_IP: "trunc_ip",
    TAS_DROP_BAD_IP_VER: "bad_ip_ver",
    TAS_DROP_BAD_IHL: "bad_ihl",
    TAS_DROP_BAD_IP_LEN: "bad_ip_len",
    TAS_DROP_IP_FRAG: "ip_frag",
    TAS_DROP_BAD_IP_CSUM: "bad_ip_csum",
    TAS_DROP_TRUNC_TCP: "trunc_tcp",
    TAS_DROP_BAD_DOFF: "bad_doff",
    TAS_DROP_BAD_TCP_CSUM: "bad_tcp_csum",
    TAS_DROP_BAD_OPT: "bad_opt",
    TAS_DROP_TRUNC_ARP: "trunc_arp",
    TAS_DROP_TRUNC_ICMP: "trunc_icmp",
}

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
IP_HLEN = 20
TCP_HLEN = 20
ARP_LEN = 28
ICMP_HLEN = 8
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
TCP_MAX_OPTS = 40
MAX_SACK = 4


def _zeros4() -> list[int]:
    return [0, 0, 0, 0]


@dataclass
class Packet:
    """Mirror of struct tas_pkt (host byte order, MACs as bytes)."""

    dst_mac: bytes = b"\0" * 6
    src_mac: bytes = b"\0" * 6
    ethertype: int = 0
    frame_len: int = 0
    l3_off: int = 0
    l4_off: int = 0
    payload_off: int = 0
    payload_len: int = 0
    ip_proto: int = 0
    ip_tos: int = 0
    ip_ttl: int = 0
    tcp_flags: int = 0
    src_ip: int = 0
    dst_ip: int = 0
    src_port: int = 0
    dst_port: int = 0
    seq: int = 0
    ack: int = 0
    win: int = 0
    mss: int = 0
    wscale: int = 0
    opts: int = 0
    n_sack: int = 0
    pad: int = 0
    tsval: int = 0
    tsecr: int = 0
    sack_start: list[int] = field(default_factory=_zeros4)
    sack_end: list[int] = field(default_factory=_zeros4)


@dataclass
class Segment:
    """Mirror of struct tas_seg; sack lists may be shorter than 4."""

    src_mac: bytes = b"\0" * 6
    dst_mac: bytes = b"\0" * 6
    src_ip: int = 0
    dst_ip: int = 0
    src_port: int = 0
    dst_port: int = 0
    seq: int = 0
    ack: int = 0
    win: int = 0
    flags: int = 0
    opts: int = 0
    mss: int = 0
    wscale: int = 0
    n_sack: int = 0
    tsval: int = 0
    tsecr: int = 0
    sack_start: list[int] = field(default_factory=_zeros4)
    sack_end: list[int] = field(default_factory=_zeros4)
    ip_tos: int = 0
    ip_ttl: int = 0
    ip_id: int = 0


# ---------------------------------------------------------------- checksums


def _fold(s: int) -> int:
    """Fold to 16 bits with end-around carry, as C's fold16 does."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_partial(data: bytes, initial: int = 0) -> int:
    """Folded, uncomplemented one's complement sum of big-endian words plus initial.

    Computed as a big-integer remainder: 2**16 == 1 (mod 0xffff), so the
    number the bytes spell is congruent to the sum of their 16-bit words.
    That is far faster in CPython than a word loop.  The fold of a positive
    sum is never 0, so a zero remainder means 0xffff unless everything was 0.
    """
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total_mod = (int.from_bytes(data, "big") + initial) % 0xFFFF
    if total_mod:
        return total_mod
    if initial == 0 and not any(data):
        return 0
    return 0xFFFF


def csum_fold(s: int) -> int:
    """Complemented 16-bit fold, ready to store in a header (tas_csum_fold)."""
    return ~_fold(s & 0xFFFFFFFF) & 0xFFFF


def _pseudo_sum(src: int, dst: int, proto: int, l4len: int) -> int:
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + l4len


# ---------------------------------------------------------------- parse


def _parse_tcp_opts(p: bytes, pkt: Packet) -> int:
    i, n = 0, len(p)
    while i < n:
        kind = p[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            return TAS_DROP_BAD_OPT
        olen = p[i + 1]
        if olen < 2 or olen > n - i:
            return TAS_DROP_BAD_OPT
        v = i + 2
        if kind == 2:
            if olen != 4:
                return TAS_DROP_BAD_OPT
            pkt.mss = int.from_bytes(p[v : v + 2], "big")
            pkt.opts |= TAS_OPT_MSS
        elif kind == 3:
            if olen != 3:
                return TAS_DROP_BAD_OPT
            pkt.wscale = p[v]
            pkt.opts |= TAS_OPT_WS
        elif kind == 4:
            if olen != 2:
                return TAS_DROP_BAD_OPT
            pkt.opts |= TAS_OPT_SACKPERM
        elif kind == 5:
            if (olen - 2) % 8:
                return TAS_DROP_BAD_OPT
            pkt.opts |= TAS_OPT_SACK
            for k in range((olen - 2) // 8):
                if pkt.n_sack >= MAX_SACK:
                    break
                s, e = struct.unpack_from("!II", p, v + 8 * k)
                pkt.sack_start[pkt.n_sack] = s
                pkt.sack_end[pkt.n_sack] = e
                pkt.n_sack += 1
        elif kind == 8:
            if olen != 10:
                return TAS_DROP_BAD_OPT
            pkt.tsval, pkt.tsecr = struct.unpack_from("!II", p, v)
            pkt.opts |= TAS_OPT_TS
        i += olen
    return 0


def parse_frame(frame: bytes) -> tuple[int, Packet]:
    """Twin of tas_parse_frame: (TAS_PK_* or TAS_DROP_*, packet as far as parsed)."""
    f = bytes(frame)
    n = len(f)
    pkt = Packet(frame_len=n & 0xFFFF)
    if n < ETH_HLEN:
        return TAS_DROP_TRUNC_ETH, pkt
    pkt.dst_mac = f[0:6]
    pkt.src_mac = f[6:12]
    pkt.ethertype = int.from_bytes(f[12:14], "big")
    pkt.l3_off = ETH_HLEN

    if pkt.ethertype == ETH_P_ARP:
        return (TAS_DROP_TRUNC_ARP if n - ETH_HLEN < ARP_LEN else TAS_PK_ARP), pkt
    if pkt.ethertype != ETH_P_IP:
        return TAS_PK_OTHER, pkt

    avail = n - ETH_HLEN
    if avail < IP_HLEN:
        return TAS_DROP_TRUNC_IP, pkt
    ip = ETH_HLEN
    pkt.ip_tos = f[ip + 1]
    pkt.ip_ttl = f[ip + 8]
    pkt.ip_proto = f[ip + 9]
    pkt.src_ip, pkt.dst_ip = struct.unpack_from("!II", f, ip + 12)
    if f[ip] >> 4 != 4:
        return TAS_DROP_BAD_IP_VER, pkt
    ihl = (f[ip] & 0xF) * 4
    if ihl < IP_HLEN:
        return TAS_DROP_BAD_IHL, pkt
    if ihl > avail:
        return TAS_DROP_TRUNC_IP, pkt
    tot, frag = struct.unpack_from("!H2xH", f, ip + 2)
    if tot < ihl or tot > avail:
        return TAS_DROP_BAD_IP_LEN, pkt
    if frag & 0x3FFF:
        return TAS_DROP_IP_FRAG, pkt
    if csum_fold(csum_partial(f[ip : ip + ihl])) != 0:
        return TAS_DROP_BAD_IP_CSUM, pkt
    l4 = ip + ihl
    pkt.l4_off = l4
    l4len = tot - ihl
    if pkt.ip_proto == IPPROTO_ICMP:
        return (TAS_DROP_TRUNC_ICMP if l4len < ICMP_HLEN else TAS_PK_ICMP), pkt
    if pkt.ip_proto != IPPROTO_TCP:
        return TAS_PK_OTHER_IP, pkt

    if l4len < TCP_HLEN:
        return TAS_DROP_TRUNC_TCP, pkt
    (pkt.src_port, pkt.dst_port, pkt.seq, pkt.ack, doff_b, pkt.tcp_flags, pkt.win) = struct.unpack_from(
        "!HHIIBBH", f, l4
    )
    doff = (doff_b >> 4) * 4
    if doff < TCP_HLEN or doff > l4len:
        return TAS_DROP_BAD_DOFF, pkt
    ps = _pseudo_sum(pkt.src_ip, pkt.dst_ip, IPPROTO_TCP, l4len)
    if csum_fold(csum_partial(f[l4 : l4 + l4len], ps)) != 0:
        return TAS_DROP_BAD_TCP_CSUM, pkt
    pkt.payload_off = l4 + doff
    pkt.payload_len = l4len - doff
    r = _parse_tcp_opts(f[l4 + TCP_HLEN : l4 + doff], pkt)
    if r < 0:
        return r, pkt
    return TAS_PK_TCP, pkt


# ---------------------------------------------------------------- build


def _base_opts_len(seg: Segment) -> int:
    n = 0
    if seg.opts & TAS_OPT_MSS:
        n += 4
    if seg.opts & TAS_OPT_TS:
        n += 12
    elif seg.opts & TAS_OPT_SACKPERM:
        n += 4
    if seg.opts & TAS_OPT_WS:
        n += 4
    return n


def _sack_blocks(seg: Segment, base: int) -> int:
    """SACK blocks that still fit in 40 option bytes (3 with timestamps)."""
    if not seg.opts & TAS_OPT_SACK or seg.n_sack == 0:
        return 0
    n = min(seg.n_sack, MAX_SACK)
    if base + 4 + 8 * n > TCP_MAX_OPTS:
        n = 0 if base + 4 >= TCP_MAX_OPTS else (TCP_MAX_OPTS - base - 4) // 8
    return n


def tcp_opts_len(seg: Segment) -> int:
    """Twin of tas_tcp_opts_len."""
    n = _base_opts_len(seg)
    k = _sack_blocks(seg, n)
    if k:
        n += 4 + 8 * k
    return (n + 3) & ~3


def _opts_bytes(seg: Segment) -> bytes:
    o = bytearray()
    k = _sack_blocks(seg, _base_opts_len(seg))
    if seg.opts & TAS_OPT_MSS:
        o += struct.pack("!BBH", 2, 4, seg.mss & 0xFFFF)
    if seg.opts & TAS_OPT_TS:
        o += b"\x04\x02" if seg.opts & TAS_OPT_SACKPERM else b"\x01\x01"
        o += struct.pack("!BBII", 8, 10, seg.tsval & 0xFFFFFFFF, seg.tsecr & 0xFFFFFFFF)
    elif seg.opts & TAS_OPT_SACKPERM:
        o += b"\x01\x01\x04\x02"
    if seg.opts & TAS_OPT_WS:
        o += bytes((1, 3, 3, seg.wscale & 0xFF))
    if k:
        o += bytes((1, 1, 5, 2 + 8 * k))
        for i in range(k):
            o += struct.pack("!II", seg.sack_start[i] & 0xFFFFFFFF, seg.sack_end[i] & 0xFFFFFFFF)
    while len(o) & 3:
        o.append(1)
    return bytes(o)


def build_tcp(seg: Segment, payload: bytes, cap: int = 1 << 32) -> bytes:
    """Twin of tas_build_tcp; returns b"" where C returns 0 (no room)."""
    opts = _opts_bytes(seg)
    thl = TCP_HLEN + len(opts)
    tot = IP_HLEN + thl + len(payload)
    if tot > 0xFFFF or ETH_HLEN + tot > cap:
        return b""
    eth = bytes(seg.dst_mac) + bytes(seg.src_mac) + b"\x08\x00"
    ip = bytearray(
        struct.pack(
            "!BBHHHBBHII",
            0x45,
            seg.ip_tos & 0xFF,
            tot,
            seg.ip_id & 0xFFFF,
            0x4000,
            (seg.ip_ttl & 0xFF) or 64,
            IPPROTO_TCP,
            0,
            seg.src_ip & 0xFFFFFFFF,
            seg.dst_ip & 0xFFFFFFFF,
        )
    )
    struct.pack_into("!H", ip, 10, csum_fold(csum_partial(ip)))
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            seg.src_port & 0xFFFF,
            seg.dst_port & 0xFFFF,
            seg.seq & 0xFFFFFFFF,
            seg.ack & 0xFFFFFFFF,
            (thl // 4) << 4,
            seg.flags & 0xFF,
            seg.win & 0xFFFF,
            0,
            0,
        )
    )
    tcp += opts
    tcp += payload
    ps = _pseudo_sum(seg.src_ip & 0xFFFFFFFF, seg.dst_ip & 0xFFFFFFFF, IPPROTO_TCP, len(tcp))
    struct.pack_into("!H", tcp, 16, csum_fold(csum_partial(tcp, ps)))
    return eth + bytes(ip) + bytes(tcp)


# ---------------------------------------------------------------- cffi glue


def pkt_from_c(c: Any) -> Packet:
    """Convert a struct tas_pkt (cdata or pointer) so results compare with ==."""
    return Packet(
        dst_mac=bytes(c.dst_mac[0:6]),
        src_mac=bytes(c.src_mac[0:6]),
        ethertype=c.ethertype,
        frame_len=c.frame_len,
        l3_off=c.l3_off,
        l4_off=c.l4_off,
        payload_off=c.payload_off,
        payload_len=c.payload_len,
        ip_proto=c.ip_proto,
        ip_tos=c.ip_tos,
        ip_ttl=c.ip_ttl,
        tcp_flags=c.tcp_flags,
        src_ip=c.src_ip,
        dst_ip=c.dst_ip,
        src_port=c.src_port,
        dst_port=c.dst_port,
        seq=c.seq,
        ack=c.ack,
        win=c.win,
        mss=c.mss,
        wscale=c.wscale,
        opts=c.opts,
        n_sack=c.n_sack,
        pad=c.pad,
        tsval=c.tsval,
        tsecr=c.tsecr,
        sack_start=list(c.sack_start[0:4]),
        sack_end=list(c.sack_end[0:4]),
    )


_SEG_SCALARS = (
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "seq",
    "ack",
    "win",
    "flags",
    "opts",
    "mss",
    "wscale",
    "n_sack",
    "tsval",
    "tsecr",
    "ip_tos",
    "ip_ttl",
    "ip_id",
)


def seg_to_c(seg: Segment, ffi: Any) -> Any:
    """Fresh ``struct tas_seg *`` for tas_build_tcp; the ffi is passed in so
    this module never imports the native extension itself."""
    c = ffi.new("struct tas_seg *")
    c.src_mac = list(bytes(seg.src_mac)[:6].ljust(6, b"\0"))
    c.dst_mac = list(bytes(seg.dst_mac)[:6].ljust(6, b"\0"))
    for name in _SEG_SCALARS:
        setattr(c, name, getattr(seg, name))
    for i, v in enumerate(seg.sack_start[:4]):
        c.sack_start[i] = v
    for i, v in enumerate(seg.sack_end[:4]):
        c.sack_end[i] = v
    return c
