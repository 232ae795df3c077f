"""NIC wire kernels: C (nicemu/csrc/wire.c) against the twin (nicemu/wire.py),
both against scapy, and one hand-crafted frame per drop reason."""

from __future__ import annotations

import ctypes
import mmap
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nicemu import wire as W

native = pytest.importorskip("flextcp._native")
ffi, lib = native.ffi, native.lib

scapy_all = pytest.importorskip("scapy.all")
Ether, IP, TCP, ARP, ICMP, Raw = (
    scapy_all.Ether,
    scapy_all.IP,
    scapy_all.TCP,
    scapy_all.ARP,
    scapy_all.ICMP,
    scapy_all.Raw,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A = 0xC6120001  # 198.18.0.1
IP_B = 0xC6120002  # 198.18.0.2


# ------------------------------------------------------------------ helpers

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_PAGE = mmap.PAGESIZE


class GuardedBuf:
    """Two pages, the second PROT_NONE: a frame placed flush against the
    guard page makes any read past frame[len-1] a SIGSEGV."""

    def __init__(self) -> None:
        self.m = mmap.mmap(-1, 2 * _PAGE)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.m))
        assert _libc.mprotect(self.base + _PAGE, _PAGE, 0) == 0  # PROT_NONE

    def place(self, frame: bytes):
        assert len(frame) <= _PAGE
        off = _PAGE - len(frame)
        self.m[off:_PAGE] = frame
        return ffi.cast("const uint8_t *", self.base + off)


_GUARD = GuardedBuf()


def c_parse(frame: bytes) -> tuple[int, W.Packet]:
    out = ffi.new("struct tas_pkt *")
    # Poison so "filled as far as parsing got" is checked too.
    ffi.memmove(out, b"\xa5" * ffi.sizeof("struct tas_pkt"), ffi.sizeof("struct tas_pkt"))
    r = lib.tas_parse_frame(_GUARD.place(frame), len(frame), out)
    return r, W.pkt_from_c(out)


def c_build(seg: W.Segment, p1: bytes, p2: bytes = b"", cap: int = 70000) -> bytes:
    out = ffi.new("uint8_t[]", cap)
    cs = W.seg_to_c(seg, ffi)
    b1 = ffi.from_buffer(p1) if p1 else ffi.NULL
    b2 = ffi.from_buffer(p2) if p2 else ffi.NULL
    n = lib.tas_build_tcp(out, cap, cs, b1, len(p1), b2, len(p2))
    return bytes(ffi.buffer(out, n))


def c_csum(data: bytes, initial: int = 0) -> int:
    return lib.tas_csum_partial(ffi.from_buffer(data) if data else ffi.NULL, len(data), initial)


def ref_csum(data: bytes, initial: int = 0) -> int:
    """Textbook RFC 1071 word loop, independent of both implementations."""
    s = initial
    if len(data) & 1:
        data += b"\0"
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def fix_csums(frame: bytes) -> bytes:
    """Recompute IPv4 and TCP checksums of a (possibly mutated) frame so that
    mutations reach the checks behind them."""
    f = bytearray(frame)
    if len(f) < 34 or f[12:14] != b"\x08\x00":
        return bytes(f)
    ihl = (f[14] & 0xF) * 4
    if ihl < 20 or 14 + ihl > len(f):
        return bytes(f)
    f[24:26] = b"\0\0"
    f[24:26] = struct.pack("!H", W.csum_fold(W.csum_partial(bytes(f[14 : 14 + ihl]))))
    tot = struct.unpack_from("!H", f, 16)[0]
    l4 = 14 + ihl
    l4len = tot - ihl
    if f[23] == 6 and l4len >= 20 and 14 + tot <= len(f):
        f[l4 + 16 : l4 + 18] = b"\0\0"
        src, dst = struct.unpack_from("!II", f, 26)
        ps = W._pseudo_sum(src, dst, 6, l4len)
        f[l4 + 16 : l4 + 18] = struct.pack("!H", W.csum_fold(W.csum_partial(bytes(f[l4 : l4 + l4len]), ps)))
    return bytes(f)


def seg(**kw) -> W.Segment:
    base = dict(
        src_mac=MAC_A,
        dst_mac=MAC_B,
        src_ip=IP_A,
        dst_ip=IP_B,
        src_port=40000,
        dst_port=80,
        seq=1000,
        ack=2000,
        win=65535,
        flags=W.TAS_TCP_ACK,
    )
    base.update(kw)
    return W.Segment(**base)


u8, u16, u32 = st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)


@st.composite
def segments(draw) -> W.Segment:
    return W.Segment(
        src_mac=draw(st.binary(min_size=6, max_size=6)),
        dst_mac=draw(st.binary(min_size=6, max_size=6)),
        src_ip=draw(u32),
        dst_ip=draw(u32),
        src_port=draw(u16),
        dst_port=draw(u16),
        seq=draw(u32),
        ack=draw(u32),
        win=draw(u16),
        flags=draw(u8),
        opts=draw(st.integers(0, 31)),
        mss=draw(u16),
        wscale=draw(u8),
        n_sack=draw(st.integers(0, 6)),
        tsval=draw(u32),
        tsecr=draw(u32),
        sack_start=draw(st.lists(u32, min_size=4, max_size=4)),
        sack_end=draw(st.lists(u32, min_size=4, max_size=4)),
        ip_tos=draw(u8),
        ip_ttl=draw(u8),
        ip_id=draw(u16),
    )


payloads = st.binary(max_size=300) | st.binary(min_size=1, max_size=3)


# ------------------------------------------------------------------ constants


def test_constants_equal_c() -> None:
    names = [n for n in dir(W) if n.startswith("TAS_")]
    assert len(names) >= 30
    for n in names:
        assert getattr(W, n) == getattr(lib, n), n


def test_drop_reason_names_cover_all_reasons() -> None:
    assert set(W.DROP_REASON_NAMES) == set(range(-W.TAS_DROP_REASONS + 1, 0))
    assert W.DROP_REASON_NAMES[W.TAS_DROP_BAD_TCP_CSUM] == "bad_tcp_csum"
    for name in W.DROP_REASON_NAMES.values():
        assert name.isidentifier() and name == name.lower()


# ------------------------------------------------------------------ checksums


@FAST
@given(st.binary(max_size=200), u32)
def test_csum_partial_twin_c_reference(data: bytes, initial: int) -> None:
    c = c_csum(data, initial)
    assert c == W.csum_partial(data, initial) == ref_csum(data, initial)
    assert W.csum_fold(initial) == lib.tas_csum_fold(initial)


@FAST
@given(st.binary(max_size=100), st.binary(max_size=100))
def test_csum_chaining_even_split(a: bytes, b: bytes) -> None:
    assume(len(a) % 2 == 0)
    assert c_csum(b, c_csum(a)) == c_csum(a + b)


def test_csum_edge_cases() -> None:
    assert c_csum(b"") == 0 == W.csum_partial(b"")
    assert c_csum(b"\0" * 7) == 0
    assert c_csum(b"\xff\xff") == 0xFFFF == W.csum_partial(b"\xff\xff")
    assert c_csum(b"\x01") == 0x0100 == W.csum_partial(b"\x01")
    assert c_csum(b"\xff" * 4000) == 0xFFFF
    assert lib.tas_csum_fold(0) == 0xFFFF and lib.tas_csum_fold(0xFFFF) == 0
    assert lib.tas_csum_fold(0xFFFFFFFF) == W.csum_fold(0xFFFFFFFF)
    # Example from RFC 1071 section 3.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert c_csum(data) == 0xDDF2 == W.csum_partial(data)


# ------------------------------------------------------------------ build


@FAST
@given(segments(), payloads, st.data())
def test_build_c_equals_twin(s: W.Segment, payload: bytes, data) -> None:
    cut = data.draw(st.integers(0, len(payload)))
    c = c_build(s, payload[:cut], payload[cut:])
    py = W.build_tcp(s, payload)
    assert c == py
    cs = W.seg_to_c(s, ffi)
    assert lib.tas_tcp_opts_len(cs) == W.tcp_opts_len(s)
    assert W.tcp_opts_len(s) <= 40 and W.tcp_opts_len(s) % 4 == 0
    # What was built parses back to what was asked for.
    r, p = c_parse(c)
    assert r == W.TAS_PK_TCP
    assert (p.src_ip, p.dst_ip, p.src_port, p.dst_port) == (s.src_ip, s.dst_ip, s.src_port, s.dst_port)
    assert (p.seq, p.ack, p.win, p.tcp_flags, p.ip_tos) == (s.seq, s.ack, s.win, s.flags, s.ip_tos)
    assert p.ip_ttl == (s.ip_ttl or 64)
    assert c[p.payload_off : p.payload_off + p.payload_len] == payload
    want = s.opts & ~W.TAS_OPT_SACK
    if s.opts & W.TAS_OPT_SACK and s.n_sack:
        want |= W.TAS_OPT_SACK
    assert p.opts == want
    if want & W.TAS_OPT_MSS:
        assert p.mss == s.mss
    if want & W.TAS_OPT_WS:
        assert p.wscale == s.wscale
    if want & W.TAS_OPT_TS:
        assert (p.tsval, p.tsecr) == (s.tsval, s.tsecr)
    if want & W.TAS_OPT_SACK:
        n = p.n_sack
        assert 1 <= n <= min(s.n_sack, 4)
        assert p.sack_start[:n] == s.sack_start[:n] and p.sack_end[:n] == s.sack_end[:n]


@pytest.mark.parametrize("l1", [0, 1, 2, 3, 7, 8, 9])
@pytest.mark.parametrize("l2", [0, 1, 2, 5])
def test_build_odd_split(l1: int, l2: int) -> None:
    p = bytes(range(1, l1 + l2 + 1))
    c = c_build(seg(), p[:l1], p[l1:])
    assert c == W.build_tcp(seg(), p)
    assert c_parse(c)[0] == W.TAS_PK_TCP


def test_build_cap() -> None:
    s = seg(opts=W.TAS_OPT_TS)
    n = len(W.build_tcp(s, b"x" * 10))
    assert n == 14 + 20 + 20 + 12 + 10
    assert len(c_build(s, b"x" * 10, cap=n)) == n
    assert c_build(s, b"x" * 10, cap=n - 1) == b""
    assert W.build_tcp(s, b"x" * 10, cap=n - 1) == b""
    # IPv4 total length cannot exceed 65535.
    big = b"\0" * (65535 - 20 - 32 + 1)
    assert c_build(s, big, cap=70000) == b"" == W.build_tcp(s, big)


def test_build_option_layout_like_linux() -> None:
    def opts_of(**kw) -> bytes:
        f = W.build_tcp(seg(**kw), b"")
        return f[54:]

    all_ = W.TAS_OPT_MSS | W.TAS_OPT_SACKPERM | W.TAS_OPT_TS | W.TAS_OPT_WS
    assert opts_of(opts=all_, mss=1460, wscale=7, tsval=1, tsecr=2) == bytes.fromhex(
        "020405b40402080a000000010000000201030307"
    )
    assert opts_of(opts=W.TAS_OPT_TS, tsval=5, tsecr=6) == bytes.fromhex("0101080a0000000500000006")
    assert opts_of(opts=W.TAS_OPT_SACKPERM) == bytes.fromhex("01010402")
    assert opts_of(opts=W.TAS_OPT_WS, wscale=9) == bytes.fromhex("01030309")
    assert opts_of(opts=W.TAS_OPT_SACK, n_sack=1, sack_start=[10], sack_end=[20]) == bytes.fromhex(
        "0101050a0000000a00000014"
    )
    # With timestamps only 3 SACK blocks fit in 40 option bytes.
    s = seg(opts=W.TAS_OPT_TS | W.TAS_OPT_SACK, n_sack=4, sack_start=[1, 3, 5, 7], sack_end=[2, 4, 6, 8])
    assert W.tcp_opts_len(s) == 12 + 4 + 24
    assert lib.tas_tcp_opts_len(W.seg_to_c(s, ffi)) == 40


# ------------------------------------------------------------------ parse: twin == C


def assert_same_parse(frame: bytes) -> tuple[int, W.Packet]:
    rc, pc = c_parse(frame)
    rp, pp = W.parse_frame(frame)
    assert rc == rp
    assert pc == pp
    assert rc in W.DROP_REASON_NAMES or 1 <= rc <= 5
    return rc, pc


@FAST
@given(st.binary(max_size=120))
def test_parse_random_bytes(frame: bytes) -> None:
    assert_same_parse(frame)


@FAST
@given(st.binary(max_size=90))
def test_parse_random_ipv4_tcp_prefix(tail: bytes) -> None:
    # Random bytes behind a plausible Ethernet/IPv4 prefix reach deeper.
    frame = MAC_B + MAC_A + b"\x08\x00\x45" + tail
    assert_same_parse(frame)
    assert_same_parse(fix_csums(frame))


@FAST
@given(
    segments(), st.binary(max_size=64), st.lists(st.tuples(st.integers(0, 200), u8), max_size=4), st.data()
)
def test_parse_mutated_valid_frames(s: W.Segment, payload: bytes, muts, data) -> None:
    f = bytearray(W.build_tcp(s, payload))
    for pos, val in muts:
        f[pos % len(f)] = val
    if data.draw(st.booleans()):
        f = bytearray(fix_csums(bytes(f)))
    cut = data.draw(st.integers(0, len(f)))
    if data.draw(st.booleans()):
        f = f[:cut]
    elif data.draw(st.booleans()):
        f += bytes(data.draw(st.integers(0, 20)))  # Ethernet padding
    assert_same_parse(bytes(f))


@st.composite
def tcp_option_bytes(draw) -> bytes:
    """Option soup, mostly well formed, sometimes not."""
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 30, 254]))
        if kind in (0, 1):
            parts.append(bytes([kind]))
            continue
        good = {2: 4, 3: 3, 4: 2, 8: 10, 5: 2 + 8 * draw(st.integers(0, 4))}.get(
            kind, draw(st.integers(2, 8))
        )
        olen = draw(st.sampled_from([good, good, good, 0, 1, good + 1, 40]))
        body = draw(st.binary(min_size=max(olen - 2, 0), max_size=max(olen - 2, 0)))
        parts.append(bytes([kind, olen]) + body)
    o = b"".join(parts)[:40]
    o += b"\x01" * (-len(o) % 4)
    return o


@FAST
@given(tcp_option_bytes(), st.binary(max_size=20))
def test_parse_option_soup(opts: bytes, payload: bytes) -> None:
    f = bytearray(W.build_tcp(seg(), b""))
    f[14 + 2 : 14 + 4] = struct.pack("!H", 40 + len(opts) + len(payload))
    f[14 + 20 + 12] = ((20 + len(opts)) // 4) << 4
    frame = fix_csums(bytes(f) + opts + payload)
    r, p = assert_same_parse(frame)
    assert r in (W.TAS_PK_TCP, W.TAS_DROP_BAD_OPT)
    if r == W.TAS_PK_TCP:
        assert p.payload_len == len(payload)


# ------------------------------------------------------------------ scapy cross-checks


def test_scapy_decodes_our_frame() -> None:
    s = seg(
        opts=W.TAS_OPT_MSS | W.TAS_OPT_SACKPERM | W.TAS_OPT_TS | W.TAS_OPT_WS | W.TAS_OPT_SACK,
        flags=W.TAS_TCP_SYN | W.TAS_TCP_ACK,
        mss=1460,
        wscale=7,
        tsval=123456,
        tsecr=654321,
        n_sack=2,
        sack_start=[100, 300],
        sack_end=[200, 400],
        ip_tos=0x02,
        ip_id=0x1234,
    )
    payload = b"hello, world!"  # odd length
    frame = c_build(s, payload[:5], payload[5:])
    pkt = Ether(frame)
    assert pkt.type == 0x0800 and pkt.dst == "02:00:00:00:00:02"
    ip, tcp = pkt[IP], pkt[TCP]
    assert ip.src == "198.18.0.1" and ip.dst == "198.18.0.2"
    assert ip.flags == "DF" and ip.ttl == 64 and ip.tos == 2 and ip.id == 0x1234
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (40000, 80, 1000, 2000)
    assert tcp.flags == "SA"
    assert bytes(tcp.payload) == payload
    assert tcp.options == [
        ("MSS", 1460),
        ("SAckOK", b""),
        ("Timestamp", (123456, 654321)),
        ("NOP", None),
        ("WScale", 7),
        ("NOP", None),
        ("NOP", None),
        ("SAck", (100, 200, 300, 400)),
    ]
    # Let scapy recompute both checksums and compare.
    want_ip, want_tcp = ip.chksum, tcp.chksum
    again = Ether(frame)
    del again[IP].chksum
    del again[TCP].chksum
    again = Ether(bytes(again))
    assert again[IP].chksum == want_ip and again[TCP].chksum == want_tcp


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 14),
    st.tuples(u32, u32),
    st.lists(u32, min_size=0, max_size=4).map(lambda x: x[: len(x) // 2 * 2]),
    st.binary(max_size=50),
    st.integers(0, 12),
)
def test_scapy_frames_parse_in_c(mss, ws, ts, sack, payload, padding) -> None:
    opts = [("MSS", mss), ("SAckOK", b""), ("Timestamp", ts), ("WScale", ws)]
    if sack:
        opts.append(("SAck", tuple(sack)))
    p = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.18.0.1", dst="198.18.0.2", tos=1)
        / TCP(sport=1234, dport=5678, seq=7, ack=9, flags="PA", window=512, options=opts)
        / Raw(payload)
    )
    frame = bytes(p) + b"\0" * padding
    r, pkt = assert_same_parse(frame)
    assert r == W.TAS_PK_TCP
    want = W.TAS_OPT_MSS | W.TAS_OPT_SACKPERM | W.TAS_OPT_TS | W.TAS_OPT_WS
    if sack:
        want |= W.TAS_OPT_SACK
    assert pkt.opts == want
    assert (pkt.mss, pkt.wscale, pkt.tsval, pkt.tsecr) == (mss, ws, *ts)
    assert pkt.n_sack == len(sack) // 2
    assert pkt.sack_start[: pkt.n_sack] == sack[0::2]
    assert pkt.sack_end[: pkt.n_sack] == sack[1::2]
    assert (pkt.src_port, pkt.dst_port, pkt.seq, pkt.ack, pkt.win) == (1234, 5678, 7, 9, 512)
    assert pkt.tcp_flags == W.TAS_TCP_PSH | W.TAS_TCP_ACK and pkt.ip_tos == 1
    assert pkt.payload_len == len(payload)
    assert frame[pkt.payload_off : pkt.payload_off + pkt.payload_len] == payload


def test_scapy_other_classes() -> None:
    arp = bytes(Ether() / ARP(psrc="198.18.0.1", pdst="198.18.0.2"))
    assert assert_same_parse(arp)[0] == W.TAS_PK_ARP
    icmp = bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / ICMP())
    r, p = assert_same_parse(icmp)
    assert r == W.TAS_PK_ICMP and p.ip_proto == 1 and p.l4_off == 34
    udp = bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / scapy_all.UDP())
    assert assert_same_parse(udp)[0] == W.TAS_PK_OTHER_IP
    v6 = bytes(Ether() / scapy_all.IPv6())
    assert assert_same_parse(v6)[0] == W.TAS_PK_OTHER
    # IP options are skipped.
    ipo = bytes(
        Ether()
        / IP(src="198.18.0.1", dst="198.18.0.2", options=[scapy_all.IPOption_RR(routers=["1.2.3.4"])])
        / TCP()
        / Raw(b"abc")
    )
    r, p = assert_same_parse(ipo)
    assert r == W.TAS_PK_TCP and p.l4_off > 34 and p.payload_len == 3


def test_parse_batch() -> None:
    frames = [W.build_tcp(seg(seq=i), b"x" * i) for i in range(5)] + [b"\0" * 5]
    buf = b"".join(frames)
    offs, o = [], 0
    for f in frames:
        offs.append(o)
        o += len(f)
    n = len(frames)
    out = ffi.new("struct tas_pkt[]", n)
    res = ffi.new("int32_t[]", n)
    lib.tas_parse_batch(ffi.from_buffer(buf), offs, [len(f) for f in frames], n, out, res)
    for i, f in enumerate(frames):
        r, p = W.parse_frame(f)
        assert res[i] == r and W.pkt_from_c(out[i]) == p
    assert list(res) == [W.TAS_PK_TCP] * 5 + [W.TAS_DROP_TRUNC_ETH]


# ------------------------------------------------------------------ one frame per drop reason


def _valid(payload: bytes = b"data", **kw) -> bytearray:
    return bytearray(W.build_tcp(seg(**kw), payload))


def _with_opts(opts: bytes) -> bytes:
    f = _valid(b"")
    f[16:18] = struct.pack("!H", 40 + len(opts))
    f[46] = ((20 + len(opts)) // 4) << 4
    return fix_csums(bytes(f) + opts)


def _drop_frames() -> list[tuple[int, bytes]]:
    v = _valid()
    cases: list[tuple[int, bytes]] = []
    cases.append((W.TAS_DROP_TRUNC_ETH, bytes(v[:13])))
    cases.append((W.TAS_DROP_TRUNC_IP, bytes(v[: 14 + 19])))
    f = bytearray(v)
    f[14] = 0x46  # IHL 6 but only 20 bytes of IP present
    cases.append((W.TAS_DROP_TRUNC_IP, bytes(f[:34])))
    f = bytearray(v)
    f[14] = 0x65
    cases.append((W.TAS_DROP_BAD_IP_VER, fix_csums(bytes(f))))
    f = bytearray(v)
    f[14] = 0x44
    cases.append((W.TAS_DROP_BAD_IHL, bytes(f)))
    f = bytearray(v)
    f[16:18] = struct.pack("!H", len(v) - 14 + 1)  # longer than the frame
    cases.append((W.TAS_DROP_BAD_IP_LEN, fix_csums(bytes(f))))
    f = bytearray(v)
    f[16:18] = struct.pack("!H", 19)  # shorter than the header
    cases.append((W.TAS_DROP_BAD_IP_LEN, fix_csums(bytes(f))))
    f = bytearray(v)
    f[20:22] = struct.pack("!H", 0x2000)  # MF
    cases.append((W.TAS_DROP_IP_FRAG, fix_csums(bytes(f))))
    f = bytearray(v)
    f[20:22] = struct.pack("!H", 0x4001)  # DF + offset 8
    cases.append((W.TAS_DROP_IP_FRAG, fix_csums(bytes(f))))
    f = bytearray(v)
    f[24] ^= 0x01
    cases.append((W.TAS_DROP_BAD_IP_CSUM, bytes(f)))
    f = bytearray(v[: 14 + 20 + 19])
    f[16:18] = struct.pack("!H", 39)
    cases.append((W.TAS_DROP_TRUNC_TCP, fix_csums(bytes(f))))
    f = bytearray(v)
    f[46] = 0x40  # doff 4
    cases.append((W.TAS_DROP_BAD_DOFF, fix_csums(bytes(f))))
    f = bytearray(v)
    f[46] = 0xF0  # 60 bytes, more than the 24-byte IP payload
    cases.append((W.TAS_DROP_BAD_DOFF, fix_csums(bytes(f))))
    f = bytearray(v)
    f[-1] ^= 0x40
    cases.append((W.TAS_DROP_BAD_TCP_CSUM, bytes(f)))
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x02\x05\x05\xb4")))  # MSS len 5
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x02\x03\x05\x01")))  # MSS len 3
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x01\x03\x02\x07")))  # WS len 2
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x04\x03\x00\x01")))  # SACKPERM len 3
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x05\x06\x00\x00\x00\x00\x01\x01")))  # SACK 2+4
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x08\x08" + b"\0" * 6)))  # TS len 8
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x1e\x00\x01\x01")))  # length 0
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x1e\x01\x01\x01")))  # length 1
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x01\x01\x1e\x05")))  # overruns header
    cases.append((W.TAS_DROP_BAD_OPT, _with_opts(b"\x01\x01\x01\x1e")))  # kind without length
    arp = bytes(Ether() / ARP())
    cases.append((W.TAS_DROP_TRUNC_ARP, arp[: 14 + 27]))
    icmp = bytearray(bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / ICMP()))
    icmp[16:18] = struct.pack("!H", 27)
    cases.append((W.TAS_DROP_TRUNC_ICMP, fix_csums(bytes(icmp[:41]))))
    return cases


@pytest.mark.parametrize(
    "reason,frame", _drop_frames(), ids=lambda x: W.DROP_REASON_NAMES.get(x, "") if isinstance(x, int) else ""
)
def test_drop_reason(reason: int, frame: bytes) -> None:
    assert assert_same_parse(frame)[0] == reason


def test_every_drop_reason_is_exercised() -> None:
    assert {r for r, _ in _drop_frames()} == set(W.DROP_REASON_NAMES)


def test_accepted_edge_cases() -> None:
    # Unknown option with a sane length, EOL stops parsing (junk after it).
    r, p = assert_same_parse(_with_opts(b"\x1e\x04\xaa\xbb" + b"\x03\x03\x07\x00\xff\xff\xff\xff"))
    assert r == W.TAS_PK_TCP and p.opts == W.TAS_OPT_WS and p.wscale == 7
    # Zero-block SACK is well formed.
    r, p = assert_same_parse(_with_opts(b"\x01\x01\x05\x02"))
    assert r == W.TAS_PK_TCP and p.n_sack == 0
    # Ethernet padding behind a short segment is ignored.
    v = bytes(_valid(b"ab"))
    r, p = assert_same_parse(v + b"\0" * 6)
    assert r == W.TAS_PK_TCP and p.payload_len == 2 and p.frame_len == len(v) + 6
    # Exactly-sized ARP and ICMP.
    assert assert_same_parse(bytes(Ether() / ARP())[:42])[0] == W.TAS_PK_ARP
