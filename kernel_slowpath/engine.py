"""The slow path's TCP engine: everything that is not the common case.

It sees the frames the fast path punts (ARP, ICMP, SYN, RST, segments of
unknown flows) and the flow events it posts (FIN received, FIN acked), and
it does connection set-up and teardown, TIME_WAIT, retransmission
timeouts and zero-window probes (through small C helpers that take the
flow lock), ARP and ICMP echo.  Established flows are installed into the
shared flow table and from then on the fast path moves their bytes.

I/O is injected: frames leave through `send_frame` (the KTX ring of a
fast-path core), time comes from `now_us`, timers from the asyncio loop.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import heapq
import ipaddress
import logging
import os
import secrets
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flextcp.flowtab import flow_memory
from flextcp.native import ffi, lib
from kernel_slowpath.frames import (
    BROADCAST,
    SegmentBuilder,
    arp_frame,
    icmp_echo_reply,
    parse_arp,
)
from kernel_slowpath.tcpstate import CLOSING_STATES, SYNCHRONIZED, Event, State, TcpProtocolError, transition

log = logging.getLogger("tas.engine")

FIN, SYN, RST, PSH, ACK = (lib.TAS_TCP_FIN, lib.TAS_TCP_SYN, lib.TAS_TCP_RST, lib.TAS_TCP_PSH, lib.TAS_TCP_ACK)
ECE, CWR = lib.TAS_TCP_ECE, lib.TAS_TCP_CWR
# (module constants: every `lib.X` is an attribute lookup on the cffi library
# object, and the per-connection paths below use dozens of them)
_KQ_SIZE = lib.TAS_KQ_ENTRY_SIZE
_KRX_PACKET, _KRX_FLOW, _KRX_CTX_BAD = lib.TAS_KRX_PACKET, lib.TAS_KRX_FLOW, lib.TAS_KRX_CTX_BAD
_KTX_FRAME, _KTX_KICK, _KTX_RX = lib.TAS_KTX_FRAME, lib.TAS_KTX_KICK, lib.TAS_KTX_RX
_PK_TCP, _PK_ARP, _PK_ICMP, _PK_OTHER_IP = lib.TAS_PK_TCP, lib.TAS_PK_ARP, lib.TAS_PK_ICMP, lib.TAS_PK_OTHER_IP
_OPT_MSS, _OPT_WS, _OPT_SACKPERM, _OPT_TS = lib.TAS_OPT_MSS, lib.TAS_OPT_WS, lib.TAS_OPT_SACKPERM, lib.TAS_OPT_TS
_EV_FIN_RCVD, _EV_FIN_ACKED, _EV_CC_NEWS = lib.TAS_EV_FIN_RCVD, lib.TAS_EV_FIN_ACKED, lib.TAS_EV_CC_NEWS
_FLOW_FREE, _FLOW_ACTIVE, _FLOW_SLOWPATH = lib.TAS_FLOW_FREE, lib.TAS_FLOW_ACTIVE, lib.TAS_FLOW_SLOWPATH
_FF_NODELAY, _FF_TS, _FF_SACK, _FF_WSCALE, _FF_ECN = (lib.TAS_FF_NODELAY, lib.TAS_FF_TS, lib.TAS_FF_SACK,
                                                      lib.TAS_FF_WSCALE, lib.TAS_FF_ECN)
_FF_DETACHED, _FF_RX_FIN, _FF_FIN_ACKED = lib.TAS_FF_DETACHED, lib.TAS_FF_RX_FIN, lib.TAS_FF_FIN_ACKED
# struct tas_pkt (wire.h) as one unpack: the fields the connection paths read
# (one call instead of a cffi attribute read per field; the offsets are
# checked against the cdef below)
_PKT = struct.Struct("<6x6s10xH3xBIIHHIIHHBB2xII")
_PKT_FIELDS = ("src_mac", "payload_len", "tcp_flags", "src_ip", "dst_ip", "src_port", "dst_port", "seq", "ack",
               "win", "mss", "wscale", "opts", "tsval", "tsecr")
(_P_SRC_MAC, _P_PAYLOAD_LEN, _P_FLAGS, _P_SRC_IP, _P_DST_IP, _P_SRC_PORT, _P_DST_PORT, _P_SEQ, _P_ACK, _P_WIN,
 _P_MSS, _P_WSCALE, _P_OPTS, _P_TSVAL, _P_TSECR) = range(len(_PKT_FIELDS))
OUR_MSS = 1460
EPHEMERAL = (32768, 60999)
SYN_RTO_US = 1_000_000
SYN_RETRIES = 5
SYNACK_RETRIES = 5
ARP_RETRIES = 3
ARP_TTL_US = 60_000_000
TIME_WAIT_US = 60_000_000
FIN_WAIT_2_ORPHAN_US = 60_000_000
# A flow whose app is gone (detached) and whose peer stopped answering:
# given up after this many back-to-back retransmission timeouts or
# zero-window probes (Linux tcp_orphan_retries), checked every CLOSING_SYNC_US.
ORPHAN_RETRIES = 8
# The FIN events of a flow (TAS_EV_*) are hints: the fast path drops one when
# its KRX ring is full (cores[i].krx_full).  The flags in the flow record are
# the truth, so the scan re-reads them for flows in a closing state: at once
# (at most every CLOSING_SYNC_MIN_US) when krx_full grew, else every
# CLOSING_SYNC_US.  Without that, a flow whose FIN-acked event was lost stays
# in LAST-ACK (or FIN-WAIT-1, CLOSING) forever: nothing is in flight, so no
# timer runs.
CLOSING_SYNC_US = 1_000_000
CLOSING_SYNC_MIN_US = 100_000
SCAN_INTERVAL_S = 0.01
IDLE_SCAN_INTERVAL_S = 0.1  # < the 200 ms RTO floor, see Engine._scan
U32 = 0xFFFFFFFF
_KQ_HDR = struct.Struct("<HHII")  # struct tas_krx / tas_ktx head: kind, len, flow_id, events
_FLOW_ZERO = bytes(ffi.sizeof("struct tas_flow"))
_SIDE_ZERO = bytes(ffi.sizeof("struct tas_flow_cc"))
_AF_ZERO = bytes(64)  # an appflow block
# SYN cookies (RFC 4987), used while a listener's SYN queue is full.  The ISN
# carries: bits 31-29 a 64 s tick (mod 8), 28-27 an MSS index, 26-23 the
# peer's window scale + 1 (0: none), 22 SACK permitted, 21 timestamps, 20-0
# a keyed hash (BLAKE2s) of the 4-tuple, the peer's ISN, the tick and those
# bits.  A cookie is valid in its tick and the next one (64..128 s).
COOKIE_MSS = (536, 1220, 1440, 1460)
COOKIE_TICK_US = 64_000_000
COOKIE_MAC_BITS = 21
# Keepalive (RFC 9293 3.8.4, SO_KEEPALIVE): Linux defaults, `tas start
# --keepalive-idle/--keepalive-intvl/--keepalive-cnt` override them.
KEEPALIVE_DEFAULT = (7200.0, 75.0, 9)  # idle s, interval s, probes
KEEPALIVE_SCAN_US = 100_000


def ip2int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def int2ip(v: int) -> str:
    return socket.inet_ntoa((v & U32).to_bytes(4, "big"))


def seq_lt(a: int, b: int) -> bool:
    return ((a - b) & U32) >= 0x80000000


def wscale_for(buf_len: int) -> int:
    shift = 0
    while (buf_len >> shift) > 0xFFFF and shift < 14:
        shift += 1
    return shift


@dataclass
class Listener:
    ctx: Any
    port: int
    backlog: int
    half_open: dict[tuple, HalfOpen] = field(default_factory=dict)
    reuse: bool = False
    # Port sharing (like SO_REUSEPORT): further contexts of the *same app*
    # that listen on the port with reuseaddr join this group; new
    # connections go to its members round robin.  ctx is group[0].
    group: list = field(default_factory=list)
    rr: int = 0
    cookies_until: int = 0  # SYN cookies sent recently: ACKs without a half-open entry are checked until then
    keepalive: bool = False  # accepted connections get SO_KEEPALIVE
    # id(member context) -> (rx_len, tx_len, rcv wscale, its region's base
    # pointer or None, the context) for the connections it accepts
    # (Engine._acc), asked for several times per connection
    acc: dict = field(default_factory=dict)

    def pick(self) -> Any:
        """The context the next new connection goes to (round robin over open members)."""
        for _ in range(len(self.group)):
            ctx = self.group[self.rr % len(self.group)]
            self.rr += 1
            if not getattr(ctx, "closed", False):
                return ctx
        return self.ctx


@dataclass(slots=True)
class HalfOpen:
    """A SYN we answered (SYN-RECEIVED): no flow record or buffers yet."""

    listener: Listener
    remote_ip: int
    remote_port: int
    remote_mac: bytes
    iss: int
    irs: int
    peer_mss: int
    peer_ws: int | None
    sack: bool
    ts_recent: int | None
    tries: int = 0
    timer: Any = None  # unused: SYN-ACK retransmissions are deadlines (Engine._synack_heap)
    ecn: bool = False  # ECN setup SYN (ECE|CWR) and we do ECN (RFC 3168 6.1.1)
    deadline: int = 0  # µs: retransmit the SYN-ACK then (0: none pending)


@dataclass(slots=True)
class Conn:
    fid: int
    gen: int
    ctx: Any
    core: int
    local_port: int
    remote_ip: int
    remote_port: int
    appflow_off: int
    rx_off: int
    rx_len: int
    tx_off: int
    tx_len: int
    state: State
    iss: int = 0
    irs: int = 0
    remote_mac: bytes = b""
    listener: Listener | None = None
    detached: bool = False
    installed: bool = False
    tries: int = 0
    timer: Any = None
    syn_ts: int = 0
    orphan_deadline: int = 0
    keepalive: bool = False  # SO_KEEPALIVE (per flow; accepted flows inherit the listener's)
    ka_seen: int = -1  # last_rx_us of the record when the scan last looked
    ka_since: int = 0  # when that value was first seen (64-bit us): the flow has been silent since
    ka_probes: int = 0  # unanswered keepalive probes
    ka_next: int = 0
    fin_events: int = 0  # TAS_EV_FIN_* already applied to state (from an event or the record's flags)

    def key(self) -> tuple[int, int, int]:
        return (self.local_port, self.remote_ip, self.remote_port)


class Engine:
    """Implements the Engine seam of docs/CONTROL.md."""

    def __init__(self, *, ft, n_flows: int, fpm, ktx: list, loop, local_ip: str, prefix: int,
                 gateway: str | None, mac: bytes, rx_buf: int = 256 << 10, tx_buf: int = 256 << 10,
                 now_us: Callable[[], int] = lib.tas_now_us) -> None:
        self.ft = ft
        self.n_flows = n_flows
        self.fpm = fpm
        self.ktx = ktx
        self.loop = loop
        self.local_ip_int = ip2int(local_ip)
        self.local_ip = local_ip
        self.net = ipaddress.IPv4Network(f"{local_ip}/{prefix}", strict=False)
        self.gateway = ip2int(gateway) if gateway else None
        self.mac = mac
        self.rx_buf = rx_buf
        self.tx_buf = tx_buf
        self.now_us = now_us
        self.segs = SegmentBuilder(mac, self.local_ip_int)
        self.free_ids = list(range(n_flows - 1, -1, -1))
        self.conns: dict[int, Conn] = {}
        self.connecting: dict[tuple, Conn] = {}
        self.listeners: dict[int, Listener] = {}
        self.ports_in_use: dict[int, int] = {}  # local port -> users
        self.bound: dict[int, Any] = {}  # port reserved by bind() -> context
        self.time_wait: dict[tuple, tuple[int, int, int]] = {}  # key -> (expiry, snd_nxt, rcv_nxt)
        self.arp: dict[int, tuple[bytes, int]] = {}
        self.arp_pending: dict[int, list[Callable[[bytes | None], None]]] = {}
        self.next_eph = EPHEMERAL[0] + secrets.randbelow(EPHEMERAL[1] - EPHEMERAL[0])
        self.counters: dict[str, int] = {
            "exceptions": 0, "arp_in": 0, "arp_replies_sent": 0, "icmp_echo_replies": 0,
            "syn_rcvd": 0, "synack_sent": 0, "syn_dropped_backlog": 0, "rst_sent": 0, "rst_rcvd": 0,
            "challenge_acks": 0, "conns_established": 0, "conns_refused": 0, "conns_timed_out": 0,
            "rto_fired": 0, "tlp_fired": 0, "zero_window_probes": 0, "time_wait": 0, "reinjected": 0,
            "non_tcp_ip": 0, "protocol_errors": 0, "ignored": 0, "alloc_failures": 0,
            "conns_refused_limit": 0,
        }
        self.counters.update({"syncookies_sent": 0, "syncookies_validated": 0, "syncookies_failed": 0})
        self._cookie_key = secrets.token_bytes(16)
        self.counters.update({"keepalive_probes": 0, "keepalive_timeouts": 0})
        self.keepalive = KEEPALIVE_DEFAULT  # set by the stack from `tas start` options
        self._ka_next_scan = 0
        self.counters.update({"icmp_frag_needed": 0, "pmtu_updates": 0})
        self.counters.update({"flow_events_recovered": 0, "kicks_deferred": 0, "orphans_timed_out": 0})
        self._kick_retry: set[int] = set()  # flows whose KTX kick found the ring full
        self._krx_full_seen = 0
        self._closing_sync_last = 0
        self._closing_sync_next = 0
        self._ftraw = ft.raw
        self._u32 = ffi.new("uint32_t *")  # (tas_sp_close's flags)
        self.drain_stats = None  # struct tas_sp_drain_stats * of the stack's KRX drain (ICMP echoes in C)
        # the fast paths' doorbells, for _kick (a stand-in manager without them: its kick())
        evfds = getattr(fpm, "evfds", None)
        self._fp_evfds = evfds if isinstance(evfds, list) else None
        self._ftflows = ft.raw.flows
        self._pkt = ffi.new("struct tas_pkt *")
        self._pkt_buf = ffi.buffer(self._pkt)
        self._scan_ids = ffi.new("uint32_t[]", 256)
        self._scan_why = ffi.new("uint8_t[]", 256)
        self._scan_cursor = ffi.new("uint32_t *")
        self._snap = ffi.new("struct tas_flow_snap *")  # record + side record (spflow.h)
        self._ktx_slot = ffi.new("uint8_t[]", lib.TAS_KQ_ENTRY_SIZE)
        self._ktx_buf = ffi.buffer(self._ktx_slot)
        self._seg = ffi.new("struct tas_seg *")  # _send_seg's: our MAC and address set once
        ffi.memmove(self._seg.src_mac, mac, 6)
        self._seg.src_ip = self.local_ip_int
        self._rand = b""  # urandom bytes for ISNs, drawn 4 at a time (one getrandom per 256)
        self._rand_off = 0
        self._scan_handle = None
        self._hi_water = 0  # 1 + highest flow id handed out since the table was last empty
        # what the timer scan looks at, kept as the flows change instead of
        # found by walking every connection on each scan (issue 5: 65k flows)
        # (flow id -> Conn: a Conn is a dataclass, not hashable)
        self._closing: dict[int, Conn] = {}  # installed, in CLOSING_STATES (_sync_closing)
        self._orphans: dict[int, Conn] = {}  # FIN-WAIT-2 with an orphan deadline
        self._ka_conns: dict[int, Conn] = {}  # SO_KEEPALIVE on (own or the listener's)
        self._tw_order: deque[tuple[int, tuple]] = deque()  # (expiry, key) in expiry order
        self._scan_more = False
        # SYN-ACK retransmission deadlines, (deadline, seq, HalfOpen): checked
        # by the timer scan instead of one event-loop timer per half-open
        # connection (set up and cancelled for every connection); an entry
        # whose HalfOpen left its queue or got a new deadline is skipped
        self._synack_heap: list[tuple[int, int, HalfOpen]] = []
        self._synack_seq = 0
        # set by the stack: per-core counter structs (struct tas_fp_stats *)
        self.core_stats: Callable[[], list] = list
        # congestion control (issue 6, docs/CC.md): set by the stack
        self.cc = None  # kernel_slowpath.ccloop.CCLoop, None: NewReno in the fast path
        self.ecn = False  # negotiate ECN (RFC 3168) on our SYNs and SYN-ACKs

    # ------------------------------------------------------------------
    # plumbing
    def start(self) -> None:
        self._scan_handle = self.loop.call_later(SCAN_INTERVAL_S, self._scan)
        self.announce()

    def stop(self) -> None:
        if self._scan_handle:
            self._scan_handle.cancel()

    def _ktx(self, core: int, kind: int, data: bytes = b"", flow_id: int = 0) -> bool:
        evfds = self._fp_evfds
        if evfds is None:  # a stand-in fast-path manager (tests): its kick()
            buf = self._ktx_buf
            _KQ_HDR.pack_into(buf, 0, kind, len(data), flow_id, 0)
            if data:
                buf[32 : 32 + len(data)] = data
            ok = self.ktx[core].enqueue_n(self._ktx_slot, 1) == 1
            self.fpm.kick(core)
            return ok
        # entry, queue and kick (only if the core sleeps) in one C call (sp_flow.c; twin spflow_py.ktx_post)
        return lib.tas_sp_ktx_post(self.ktx[core].raw, kind, flow_id, data, len(data), self._ftraw, core,
                                   evfds[core]) == 1

    def _send_seg(self, core: int, *, dst_mac: bytes, dst_ip: int, sport: int, dport: int, seq: int, ack: int,
                  flags: int, win: int = 0, mss: int | None = None, wscale: int | None = None,
                  sack_perm: bool = False, ts: tuple[int, int] | None = None) -> None:
        """send_frame(self.segs.build(...)) for a control segment, built by the
        same C kernel straight into the KTX slot (no frame object, no copy)."""
        opts = 0
        if mss is not None:
            opts |= lib.TAS_OPT_MSS
        if wscale is not None:
            opts |= lib.TAS_OPT_WS
        if sack_perm:
            opts |= lib.TAS_OPT_SACKPERM
        tsval = tsecr = 0
        if ts is not None:
            opts |= lib.TAS_OPT_TS
            tsval, tsecr = ts[0] & U32, ts[1] & U32
        if len(dst_mac) != 6:
            dst_mac = bytes(dst_mac).ljust(6, b"\0")[:6]
        # fill, build and queue in one C call (sp_flow.c; twin: spflow_py.send_seg)
        n = lib.tas_sp_send_seg(self.ktx[core].raw, self._seg, dst_mac, dst_ip, sport, dport, seq & U32, ack & U32,
                                flags, min(win, 0xFFFF), opts, mss or 0, wscale or 0, tsval, tsecr)
        self._kick(core)
        if not n:
            log.warning("KTX ring full: dropped a control segment")

    def _kick(self, core: int) -> None:
        """Core has a new KTX entry: write its doorbell only if it sleeps
        (sp_flow.c tas_sp_kick; a fast path that spins polls KTX anyway)."""
        evfds = self._fp_evfds
        if evfds is None:
            self.fpm.kick(core)
        else:
            lib.tas_sp_kick(self._ftraw, core, evfds[core])

    def send_frame(self, frame: bytes, core: int = 0) -> None:
        if not self._ktx(core, lib.TAS_KTX_FRAME, frame):
            log.warning("KTX ring full: dropped a %d-byte frame", len(frame))

    def kick_flow(self, conn: Conn) -> None:
        if not self._ktx(conn.core, _KTX_KICK, b"", conn.fid):
            # KTX ring full: a lost kick can leave a queued FIN unsent (and
            # with nothing in flight no timer would send it): retry on the scan
            self._kick_retry.add(conn.fid)
            self.counters["kicks_deferred"] += 1

    def ts_now(self) -> int:
        return (self.now_us() // 1000) & U32

    def _isn(self) -> int:
        """A random 32-bit initial sequence number (RFC 9293 3.4.1, RFC 6528)."""
        off = self._rand_off
        if off + 4 > len(self._rand):
            self._rand, off = os.urandom(1024), 0
        self._rand_off = off + 4
        return int.from_bytes(self._rand[off : off + 4], "little")

    # ------------------------------------------------------------------
    # ARP (RFC 826)
    def announce(self) -> None:
        """Gratuitous ARP so peers update stale caches after a restart."""
        self.send_frame(arp_frame(1, self.mac, self.local_ip_int, b"\0" * 6, self.local_ip_int, BROADCAST))

    def next_hop(self, ip: int) -> int | None:
        if ipaddress.IPv4Address(ip) in self.net:
            return ip
        return self.gateway

    def resolve(self, ip: int, cb: Callable[[bytes | None], None]) -> None:
        hit = self.arp.get(ip)
        if hit and hit[1] > self.now_us():
            cb(hit[0])
            return
        waiting = self.arp_pending.setdefault(ip, [])
        waiting.append(cb)
        if len(waiting) == 1:
            self._arp_request(ip, 0)

    def _arp_request(self, ip: int, tries: int) -> None:
        if ip not in self.arp_pending:
            return
        if tries >= ARP_RETRIES:
            for cb in self.arp_pending.pop(ip, []):
                cb(None)
            return
        self.send_frame(arp_frame(1, self.mac, self.local_ip_int, b"\0" * 6, ip, BROADCAST))
        self.loop.call_later(1.0, self._arp_request, ip, tries + 1)

    def _learn(self, ip: int, mac: bytes) -> None:
        self.arp[ip] = (mac, self.now_us() + ARP_TTL_US)
        for cb in self.arp_pending.pop(ip, []):
            cb(mac)

    def _on_arp(self, frame: bytes) -> None:
        self.counters["arp_in"] += 1
        a = parse_arp(frame)
        if a is None:
            return
        op, smac, sip, tip = a
        if tip == self.local_ip_int and sip != 0:
            self._learn(sip, smac)
            if op == 1:
                self.send_frame(arp_frame(2, self.mac, self.local_ip_int, smac, sip, smac))
                self.counters["arp_replies_sent"] += 1
        elif sip in self.arp or sip in self.arp_pending:
            self._learn(sip, smac)

    # ------------------------------------------------------------------
    # exceptions from the fast path
    def on_krx(self, buf: bytes, n: int) -> None:
        unpack = _KQ_HDR.unpack_from
        counters = self.counters
        for i in range(n):
            off = i * _KQ_SIZE
            kind, length, flow_id, events = unpack(buf, off)
            if kind == _KRX_PACKET:
                counters["exceptions"] += 1
                try:
                    self.on_frame(bytes(buf[off + 32 : off + 32 + length]))
                except Exception:
                    log.exception("slow path failed on a frame; dropped")
            elif kind == _KRX_FLOW:
                try:
                    self.on_flow_event(flow_id, events)
                except Exception:
                    log.exception("slow path failed on a flow event")
            elif kind == _KRX_CTX_BAD:  # flow_id: context, events: its strikes so far
                cb = getattr(self, "on_ctx_bad", None)  # set by the stack (server.ctx_strikes)
                if cb is not None:
                    try:
                        cb(flow_id, events)
                    except Exception:
                        log.exception("slow path failed on a context strike report")

    def on_frame(self, frame: bytes) -> None:
        p = self._pkt
        r = lib.tas_parse_frame(frame, len(frame), p)
        if r == _PK_TCP:
            u = _PKT.unpack_from(self._pkt_buf)
            if u[_P_DST_IP] == self.local_ip_int:
                self.on_tcp(frame, p, u)
        elif r == _PK_ARP:
            self._on_arp(frame)
        elif r == _PK_ICMP:
            if p.dst_ip == self.local_ip_int and frame[p.l4_off] == 8:
                reply = icmp_echo_reply(frame, p, self.mac)
                if reply:
                    self.send_frame(reply)
                    self.counters["icmp_echo_replies"] += 1
            elif p.dst_ip == self.local_ip_int and frame[p.l4_off] == 3 and frame[p.l4_off + 1] == 4:
                self._on_frag_needed(frame, p)  # RFC 1191
        elif r == _PK_OTHER_IP:
            self.counters["non_tcp_ip"] += 1
        else:
            self.counters["ignored"] += 1

    def on_tcp(self, frame: bytes, p, u: tuple | None = None) -> None:
        """A TCP segment for our address; p: its struct tas_pkt, u: the same
        as a _PKT tuple (made here if not given)."""
        if u is None:
            u = _PKT.unpack_from(ffi.buffer(p))
        dport, sip, sport = u[_P_DST_PORT], u[_P_SRC_IP], u[_P_SRC_PORT]
        fid = lib.tas_ft_lookup(self._ftraw, self.local_ip_int, dport, sip, sport)
        if fid >= 0:
            conn = self.conns.get(fid)
            if conn is not None:
                self._on_flow_segment(conn, frame, p)
                return
        key = (dport, sip, sport)
        if self.connecting:
            conn = self.connecting.get(key)
            if conn is not None:
                self._on_syn_sent(conn, p)
                return
        lst = self.listeners.get(dport)
        if lst is not None:
            ho = lst.half_open.get(key)
            if ho is not None:
                self._on_half_open(ho, frame, p, key, u)
                return
        flags = u[_P_FLAGS]
        if self.time_wait:
            tw = self.time_wait.get(key)
            if tw is not None:
                if self._on_time_wait(key, tw, p):
                    return
        if flags & RST:
            return
        if flags & SYN and not flags & ACK and lst is not None:
            self._on_syn(lst, p, key, u)
            return
        if lst is not None and flags & ACK and not flags & SYN and self._cookie_ack(lst, frame, p):
            return
        self._reply_rst(p)

    # -- segments for installed flows (SYN, RST, races) -----------------
    def _on_flow_segment(self, conn: Conn, frame: bytes, p) -> None:
        flags = p.tcp_flags
        snap = self._snapshot(conn)
        rcv_nxt = (snap.rx_seq0 + snap.rx_head + (1 if snap.flags & lib.TAS_FF_RX_FIN else 0)) & U32
        wnd = max(snap.rx_len - (snap.rx_head - snap.rx_tail), 1)
        in_window = ((p.seq - rcv_nxt) & U32) < wnd
        if flags & RST:
            self.counters["rst_rcvd"] += 1
            if p.seq == rcv_nxt:
                self._reset(conn, errno.ECONNRESET, send_rst=False)
            elif in_window:
                self._challenge_ack(conn)  # RFC 5961 3.2
            return
        if flags & SYN:
            self._challenge_ack(conn)  # RFC 5961 4.2
            return
        if snap.status == lib.TAS_FLOW_ACTIVE and flags & ACK and not flags & lib.TAS_TCP_URG:
            # raced with installation: hand the segment back to the fast path
            # (which would punt it again only for SYN/RST/URG or no ACK)
            self.counters["reinjected"] += 1
            self._ktx(conn.core, lib.TAS_KTX_RX, frame)
        else:
            self.counters["ignored"] += 1

    def _log_rto(self, conn: Conn, now: int) -> None:
        """What the sender's recovery state was when its RTO fired (debug)."""
        s = self._snapshot(conn)
        una = s.tx_una
        line = (f"flow {conn.fid}: RTO after {((now - s.rto_start_us) & U32) // 1000} ms "
                f"(rto {s.rto_us // 1000} ms, backoff {s.rto_backoff}, srtt {s.srtt_us} us): "
                f"out {s.tx_max - una} nxt+{s.tx_nxt - una} unsent {s.tx_head - s.tx_nxt} "
                f"cwnd {s.cwnd} ssthresh {s.ssthresh} snd_wnd {s.snd_wnd} flags {s.flags:#x} "
                f"rexmit_nxt+{(s.rexmit_nxt - una) & U32}")
        table = getattr(self.cc, "table", None)
        if table is not None:
            cc = table + conn.fid  # read unlocked: a debug line
            sb = sorted(((a - una) & U32, (b - una) & U32) for a, b in zip(cc.sb_start, cc.sb_end, strict=True)
                        if a != b)
            line += f" sacked {sb} tlp {cc.cnt_tlp} undo {cc.cnt_undo}"
        log.debug(line)

    def _snapshot(self, conn: Conn):
        lib.tas_sp_snapshot(self.ft.raw, conn.fid, self._snap)
        return self._snap

    def _seqs(self, conn: Conn) -> tuple[int, int]:
        s = self._snapshot(conn)
        fin = s.flags & (lib.TAS_FF_FIN_OUT | lib.TAS_FF_FIN_ACKED)
        snd_nxt = (s.tx_seq0 + s.tx_nxt + (1 if fin else 0)) & U32
        rcv_nxt = (s.rx_seq0 + s.rx_head + (1 if s.flags & lib.TAS_FF_RX_FIN else 0)) & U32
        return snd_nxt, rcv_nxt

    def _challenge_ack(self, conn: Conn) -> None:
        self._ack_now(conn)
        self.counters["challenge_acks"] += 1

    def _send_rst_for(self, conn: Conn) -> None:
        snd_nxt, rcv_nxt = self._seqs(conn)
        self.send_frame(self.segs.build(dst_mac=conn.remote_mac, dst_ip=conn.remote_ip, sport=conn.local_port,
                                        dport=conn.remote_port, seq=snd_nxt, ack=rcv_nxt, flags=RST | ACK),
                        conn.core)
        self.counters["rst_sent"] += 1

    def _reply_rst(self, p) -> None:
        """RST for a segment that matches no connection (RFC 9293 3.10.7.1)."""
        mac = bytes(p.src_mac)
        if p.tcp_flags & ACK:
            seq, ack, flags = p.ack, 0, RST
        else:
            seg_len = p.payload_len + (1 if p.tcp_flags & SYN else 0) + (1 if p.tcp_flags & FIN else 0)
            seq, ack, flags = 0, p.seq + seg_len, RST | ACK
        self.send_frame(self.segs.build(dst_mac=mac, dst_ip=p.src_ip, sport=p.dst_port, dport=p.src_port,
                                        seq=seq, ack=ack, flags=flags))
        self.counters["rst_sent"] += 1

    # -- passive open ---------------------------------------------------
    def _at_limit(self, lst: Listener, app_pending: int | None = None) -> bool:
        """No flow slot, or no buffer memory in the listener's context, for
        one more connection on top of those already half open (issue 8).
        app_pending: _app_half_open(lst) if the caller has it."""
        pending = sum(len(x.half_open) for x in self.listeners.values())
        if len(self.free_ids) <= pending:
            return True
        heap = getattr(lst.ctx, "heap", None)
        if heap is None:
            return False
        # what one more accepted flow of this listener takes: its appflow
        # block and the context's buffer sizes (not the stack's defaults:
        # a context of 4 KiB flows holds ~64x more flows than one of 256 KiB)
        rx, tx = self._accept_bufs(lst, lst.ctx)
        need = 64 + rx + tx
        free = getattr(lst.ctx, "free_bytes", None)  # the context's view (its spare blocks count as free)
        if (heap.free_bytes if free is None else free) < need * (len(lst.half_open) + 1):
            return True
        admit = getattr(lst.ctx, "admit_passive", None)  # the app's own flow/buffer limits (issue 6)
        if admit is None:
            return False
        return not admit(need, self._app_half_open(lst) if app_pending is None else app_pending)

    def _app_half_open(self, lst: Listener) -> int:
        """Half-open connections over all listeners of lst's app."""
        if len(self.listeners) == 1 and self.listeners.get(lst.port) is lst:  # the common case
            return len(lst.half_open)
        app = getattr(lst.ctx, "app", None)
        return sum(len(x.half_open) for x in self.listeners.values() if getattr(x.ctx, "app", None) is app)

    def _syn_queue_full(self, lst: Listener, app_pending: int | None = None) -> bool:
        if len(lst.half_open) >= lst.backlog:
            return True
        syn_full = getattr(lst.ctx, "syn_full", None)  # the app's SYN backlog over its listeners
        if syn_full is None:
            return False
        return syn_full(self._app_half_open(lst) if app_pending is None else app_pending)

    def _on_syn(self, lst: Listener, p, key: tuple | None = None, u: tuple | None = None) -> None:
        self.counters["syn_rcvd"] += 1
        if u is None:
            u = _PKT.unpack_from(ffi.buffer(p))
        ctx = lst.ctx
        half_open = lst.half_open
        verdict = getattr(ctx, "syn_verdict", None)  # server.Context: its checks in one call
        if verdict is not None:
            n = len(half_open)
            if len(self.listeners) == 1:  # the common case: this listener's are all the half-open ones
                app_pending = pending = n
            else:
                app_pending = self._app_half_open(lst)
                pending = sum(len(x.half_open) for x in self.listeners.values())
            rx, tx = self._acc(lst, ctx)[:2]
            v = verdict(n, lst.backlog, app_pending, 64 + rx + tx, len(self.free_ids) <= pending)
        else:
            v = self._syn_verdict(lst)
        if v:
            if v == _SYN_COOKIE:
                self._send_cookie_synack(lst, p)  # SYN queue full: stateless (RFC 4987)
            elif v == _SYN_DROP:
                self.counters["syn_dropped_backlog"] += 1
            else:  # refuse at once: the peer's connect() fails cleanly
                self.counters["conns_refused_limit"] += 1
                self._reply_rst(p)
            return
        opts = u[_P_OPTS]
        src_ip, src_port = u[_P_SRC_IP], u[_P_SRC_PORT]
        ho = HalfOpen(lst, src_ip, src_port, u[_P_SRC_MAC], self._isn(), u[_P_SEQ],
                      u[_P_MSS] if opts & _OPT_MSS else 536, u[_P_WSCALE] if opts & _OPT_WS else None,
                      bool(opts & _OPT_SACKPERM), u[_P_TSVAL] if opts & _OPT_TS else None,
                      ecn=self.ecn and u[_P_FLAGS] & (ECE | CWR) == ECE | CWR)
        half_open[key if key is not None else (u[_P_DST_PORT], src_ip, src_port)] = ho
        self._send_synack(ho)

    def _syn_verdict(self, lst: Listener) -> int:
        """What to do with a SYN for lst (no half-open entry yet): 0 answer
        it (SYN-RECEIVED), _SYN_COOKIE (queue full: a SYN cookie), _SYN_DROP
        (the app is behind on its events), _SYN_REFUSE (no room: RST).  For
        contexts without syn_verdict (server.Context has it: the same checks
        in one call)."""
        backlogged = getattr(lst.ctx, "backlogged", None)  # the app is behind on its events
        behind = backlogged is not None and backlogged()
        app_pending = self._app_half_open(lst)  # (asked for twice below)
        if not behind and self._syn_queue_full(lst, app_pending):
            return _SYN_COOKIE
        if len(lst.half_open) >= lst.backlog or behind:
            return _SYN_DROP
        if self._at_limit(lst, app_pending):
            return _SYN_REFUSE
        return 0

    def _accept_bufs(self, lst: Listener, ctx) -> tuple[int, int]:
        """Flow buffer sizes for a connection accepted by ctx: the context's
        own defaults (set at ctx_create), else the stack's."""
        return (_pow2(getattr(ctx, "rx_buf", 0) or self.rx_buf), _pow2(getattr(ctx, "tx_buf", 0) or self.tx_buf))

    def _acc(self, lst: Listener, ctx) -> tuple:
        """(rx_len, tx_len, the window shift for rx_len, base pointer of ctx's
        region or None) for connections ctx accepts on lst: _accept_bufs,
        kept per member context of the listener."""
        c = lst.acc.get(id(ctx))
        if c is None or c[4] is not ctx:
            rx, tx = self._accept_bufs(lst, ctx)
            region = getattr(ctx, "region", None)
            base = ffi.cast("uint8_t *", region.addr) if getattr(region, "addr", None) is not None else None
            c = lst.acc[id(ctx)] = (rx, tx, wscale_for(rx), base, ctx)
        return c

    # -- SYN cookies (RFC 4987) ------------------------------------------
    def _cookie_mac(self, tick: int, p_src_ip: int, sport: int, dport: int, irs: int, info: int) -> int:
        h = hashlib.blake2s(struct.pack("!IIHHIII", p_src_ip, self.local_ip_int, sport, dport, irs & U32, tick, info),
                            key=self._cookie_key, digest_size=4).digest()
        return int.from_bytes(h, "big") & ((1 << COOKIE_MAC_BITS) - 1)

    def _send_cookie_synack(self, lst: Listener, p) -> None:
        """Answer a SYN without keeping state: everything the connection
        needs later is encoded in our ISN."""
        mss = p.mss if p.opts & lib.TAS_OPT_MSS else 536
        idx = max(i for i, m in enumerate(COOKIE_MSS) if m <= mss or i == 0)
        ws = min(p.wscale, 14) + 1 if p.opts & lib.TAS_OPT_WS else 0
        sack = 1 if p.opts & lib.TAS_OPT_SACKPERM else 0
        ts = 1 if p.opts & lib.TAS_OPT_TS else 0
        info = (idx << 6) | (ws << 2) | (sack << 1) | ts
        tick = (self.now_us() // COOKIE_TICK_US) & 7
        iss = (tick << 29) | (info << COOKIE_MAC_BITS) | self._cookie_mac(tick, p.src_ip, p.src_port, p.dst_port,
                                                                          p.seq, info)
        lst.cookies_until = self.now_us() + 2 * COOKIE_TICK_US
        rx_len = self._accept_bufs(lst, lst.ctx)[0]
        our_ws = wscale_for(rx_len) if ws else None
        self.send_frame(self.segs.build(
            dst_mac=bytes(p.src_mac), dst_ip=p.src_ip, sport=p.dst_port, dport=p.src_port, seq=iss,
            ack=(p.seq + 1) & U32, flags=SYN | ACK, win=min(rx_len, 0xFFFF), mss=OUR_MSS, wscale=our_ws,
            sack_perm=bool(sack), ts=(self.ts_now(), p.tsval) if ts else None))
        self.counters["syncookies_sent"] += 1

    def _cookie_ack(self, lst: Listener, frame: bytes, p) -> bool:
        """An ACK at a listener with no half-open entry: if it carries one of
        our recent cookies, open the connection as if it had been queued."""
        now = self.now_us()
        if now >= lst.cookies_until:
            return False
        iss = (p.ack - 1) & U32
        irs = (p.seq - 1) & U32
        tick, info = iss >> 29, (iss >> COOKIE_MAC_BITS) & 0xFF
        if (((now // COOKIE_TICK_US) - tick) & 7) > 1 or (
                iss & ((1 << COOKIE_MAC_BITS) - 1)) != self._cookie_mac(tick, p.src_ip, p.src_port, p.dst_port,
                                                                      irs, info):
            self.counters["syncookies_failed"] += 1
            return False
        self.counters["syncookies_validated"] += 1
        ws = (info >> 2) & 0xF
        ho = HalfOpen(listener=lst, remote_ip=p.src_ip, remote_port=p.src_port, remote_mac=bytes(p.src_mac),
                      iss=iss, irs=irs, peer_mss=COOKIE_MSS[info >> 6], peer_ws=ws - 1 if ws else None,
                      sack=bool(info & 2),
                      ts_recent=p.tsval if info & 1 and p.opts & lib.TAS_OPT_TS else None,
                      timer=_NoTimer())
        lst.half_open[(p.dst_port, p.src_ip, p.src_port)] = ho
        self._on_half_open(ho, frame, p)  # installs the flow (or answers RST) and drops the entry
        return True

    def _send_synack(self, ho: HalfOpen) -> None:
        # (what _send_seg does, for the one segment every connection gets)
        lst = ho.listener
        # the window the flow will have; the shift we announce is the one it will use (rcv_wscale)
        rx_len, _, ws, _, _ = self._acc(lst, lst.ctx)
        now = self.now_us()
        opts = _OPT_MSS
        if ho.peer_ws is not None:
            opts |= _OPT_WS
        if ho.sack:
            opts |= _OPT_SACKPERM
        tsecr = ho.ts_recent
        if tsecr is not None:
            opts |= _OPT_TS
        else:
            tsecr = 0
        n = lib.tas_sp_send_seg(self.ktx[0].raw, self._seg, ho.remote_mac, ho.remote_ip, lst.port, ho.remote_port,
                                ho.iss & U32, (ho.irs + 1) & U32, SYN | ACK | (ECE if ho.ecn else 0),
                                min(rx_len, 0xFFFF), opts, OUR_MSS, ws, (now // 1000) & U32, tsecr & U32)
        self._kick(0)
        if not n:
            log.warning("KTX ring full: dropped a control segment")
        self.counters["synack_sent"] += 1
        ho.deadline = deadline = now + (SYN_RTO_US << ho.tries)
        self._synack_seq += 1
        heapq.heappush(self._synack_heap, (deadline, self._synack_seq, ho))

    def _expire_synacks(self, now: int) -> None:
        """Retransmit (or give up on) the SYN-ACKs whose deadline passed."""
        heap = self._synack_heap
        while heap and heap[0][0] <= now:
            deadline, _, ho = heapq.heappop(heap)
            if ho.deadline == deadline:
                self._synack_timeout(ho)

    def _synack_timeout(self, ho: HalfOpen) -> None:
        key = (ho.listener.port, ho.remote_ip, ho.remote_port)
        ho.deadline = 0
        if ho.listener.half_open.get(key) is not ho or self.listeners.get(ho.listener.port) is not ho.listener:
            return
        ho.tries += 1
        if ho.tries > SYNACK_RETRIES:
            del ho.listener.half_open[key]
            return
        self._send_synack(ho)

    def _on_half_open(self, ho: HalfOpen, frame: bytes, p, key: tuple | None = None, u: tuple | None = None) -> None:
        if u is None:
            u = _PKT.unpack_from(ffi.buffer(p))
        flags = u[_P_FLAGS]
        lst = ho.listener
        if key is None:
            key = (lst.port, ho.remote_ip, ho.remote_port)
        if flags & RST:
            if u[_P_SEQ] == (ho.irs + 1) & U32:
                ho.deadline = 0
                del lst.half_open[key]
            return
        if flags & SYN:
            if u[_P_SEQ] == ho.irs:  # retransmitted SYN
                self._send_synack(ho)  # its new deadline replaces the old one
            return
        if not flags & ACK:
            return
        if u[_P_ACK] != (ho.iss + 1) & U32:
            self._reply_rst(p)
            return
        ho.deadline = 0
        del lst.half_open[key]
        # (Listener.pick: the one member, or round robin over the open ones)
        ctx = lst.ctx if len(lst.group) <= 1 else lst.pick()
        rx_len, tx_len, _, base, _ = self._acc(lst, ctx)
        conn = self._new_conn(ctx, lst.port, ho.remote_ip, ho.remote_port, rx_len, tx_len,
                              State.SYN_RECEIVED, appflow=base is None)
        if conn is None:
            self._reply_rst(p)
            return
        conn.listener = lst
        conn.iss, conn.irs, conn.remote_mac = ho.iss, ho.irs, ho.remote_mac
        peer_ws = ho.peer_ws
        opts = u[_P_OPTS]
        tsecr = u[_P_TSECR]
        if opts & _OPT_TS and tsecr:  # _ts_rtt
            rtt = (self.ts_now() - tsecr) & U32
            rtt = rtt * 1000 + 500 if rtt < 60000 else 0
        else:
            rtt = 0
        self._activate(conn, ho.peer_mss, 0 if peer_ws is None else peer_ws,
                       0 if peer_ws is None else self._acc(lst, lst.ctx)[2], ho.sack, ho.ecn,
                       u[_P_TSVAL] if (opts & _OPT_TS and ho.ts_recent is not None) else None,
                       u[_P_WIN] << (0 if peer_ws is None else peer_ws), u[_P_SEQ], u[_P_ACK], rtt,
                       None if base is None else base + conn.appflow_off)
        newconn = getattr(ctx, "ev_newconn", None)  # server.Context: the event without a dict
        if newconn is not None:
            newconn(self, conn, lst.port)
        else:
            ctx.event({"ev": "newconn", "ctx": ctx.ctx_id, "listener": lst.port, "flow": self.flow_info(conn)})
        if u[_P_PAYLOAD_LEN] or flags & FIN:
            self.counters["reinjected"] += 1
            self._ktx(conn.core, _KTX_RX, frame)

    def _ts_rtt(self, p) -> int:
        if p.opts & _OPT_TS and p.tsecr:
            r = (self.ts_now() - p.tsecr) & U32
            if r < 60000:
                return r * 1000 + 500
        return 0

    # -- active open ----------------------------------------------------
    def _on_syn_sent(self, conn: Conn, p) -> None:
        flags = p.tcp_flags
        ack_ok = bool(flags & ACK) and p.ack == (conn.iss + 1) & U32
        if flags & ACK and not ack_ok:
            if not flags & RST:
                self._reply_rst(p)
            return
        if flags & RST:
            if ack_ok:
                self.counters["conns_refused"] += 1
                self._fail_connect(conn, errno.ECONNREFUSED)
            return
        if not flags & SYN or not ack_ok:
            return  # simultaneous open is not supported; the peer retransmits
        if conn.timer:
            conn.timer.cancel()
        del self.connecting[conn.key()]
        conn.irs = p.seq
        ws_ok = bool(p.opts & lib.TAS_OPT_WS)
        self._install(conn, peer_mss=p.mss if p.opts & lib.TAS_OPT_MSS else 536,
                      snd_wscale=p.wscale if ws_ok else 0, rcv_wscale=wscale_for(conn.rx_len) if ws_ok else 0,
                      sack=bool(p.opts & lib.TAS_OPT_SACKPERM),
                      ts_recent=p.tsval if p.opts & lib.TAS_OPT_TS else None,
                      ecn=self.ecn and p.tcp_flags & (ECE | CWR) == ECE,  # ECN-setup SYN-ACK
                      snd_wnd=p.win, wl1=p.seq, wl2=p.ack, rtt_us=self._ts_rtt(p))
        self._ack_now(conn)  # the handshake's final ACK
        conn.ctx.event({"ev": "connected", "ctx": conn.ctx.ctx_id, "flow": conn.fid})

    def _ack_now(self, conn: Conn) -> None:
        snd_nxt, rcv_nxt = self._seqs(conn)
        s = self._snap
        ts = (self.ts_now(), s.ts_recent) if s.flags & lib.TAS_FF_TS else None
        win = (s.rx_len - (s.rx_head - s.rx_tail)) >> s.rcv_wscale
        self.send_frame(self.segs.build(dst_mac=conn.remote_mac, dst_ip=conn.remote_ip, sport=conn.local_port,
                                        dport=conn.remote_port, seq=snd_nxt, ack=rcv_nxt, flags=ACK,
                                        win=win, ts=ts), conn.core)

    def _send_syn(self, conn: Conn) -> None:
        conn.syn_ts = self.ts_now()
        self.send_frame(self.segs.build(
            dst_mac=conn.remote_mac, dst_ip=conn.remote_ip, sport=conn.local_port, dport=conn.remote_port,
            seq=conn.iss, ack=0, flags=SYN | (ECE | CWR if self.ecn else 0), win=min(conn.rx_len, 0xFFFF), mss=OUR_MSS,
            wscale=wscale_for(conn.rx_len), sack_perm=True, ts=(conn.syn_ts, 0)))
        conn.timer = self.loop.call_later(SYN_RTO_US / 1e6 * (1 << conn.tries), self._syn_timeout, conn)

    def _syn_timeout(self, conn: Conn) -> None:
        if self.connecting.get(conn.key()) is not conn:
            return
        conn.tries += 1
        if conn.tries > SYN_RETRIES:
            self.counters["conns_timed_out"] += 1
            self._fail_connect(conn, errno.ETIMEDOUT)
            return
        self._send_syn(conn)

    def _fail_connect(self, conn: Conn, err: int) -> None:
        if conn.timer:
            conn.timer.cancel()
        self.connecting.pop(conn.key(), None)
        conn.state = State.CLOSED
        log.debug("flow %d connect to %s:%d failed (%s)", conn.fid, int2ip(conn.remote_ip), conn.remote_port,
                  errno.errorcode.get(err, err))
        af = conn.ctx.region.cast("struct tas_appflow", conn.appflow_off)
        af.flags |= lib.TAS_AF_RESET
        conn.ctx.event({"ev": "conn_failed", "ctx": conn.ctx.ctx_id, "flow": conn.fid, "errno": err})
        if conn.detached:
            self._free(conn)

    # -- flows: allocation, installation, teardown -----------------------
    def _alloc_port(self) -> int | None:
        lo, hi = EPHEMERAL
        for _ in range(hi - lo + 1):
            port = self.next_eph
            self.next_eph = lo if self.next_eph >= hi else self.next_eph + 1
            if port not in self.ports_in_use and port not in self.listeners and port not in self.bound:
                return port
        return None

    def _new_conn(self, ctx, local_port: int, rip: int, rport: int, rx_len: int, tx_len: int,
                  state: State, appflow: bool = True) -> Conn | None:
        """A flow id and the context's blocks for a new connection.  With
        ``appflow`` the app's flow block is filled here, else by _install
        (given its address there: tas_sp_activate)."""
        free_ids = self.free_ids
        if not free_ids:
            self.counters["alloc_failures"] += 1
            return None
        alloc_flow = getattr(ctx, "alloc_flow", None)  # server.Context: admit_flow and the three blocks in one call
        if alloc_flow is not None:
            offs = alloc_flow(rx_len, tx_len)
            if offs is None:
                self.counters["alloc_failures"] += 1
                return None
        else:
            admit = getattr(ctx, "admit_flow", None)  # the app's flow/buffer limits (issue 6)
            if admit is not None and not admit(64 + rx_len + tx_len):
                self.counters["alloc_failures"] += 1
                return None
            offs = []
            for size in (64, rx_len, tx_len):
                off = ctx.alloc(size)
                if off is None:
                    for o in offs:
                        ctx.free(o)
                    self.counters["alloc_failures"] += 1
                    return None
                offs.append(off)
        fid = free_ids.pop()
        if fid >= self._hi_water:
            self._hi_water = fid + 1
        gen = (self._ftflows[fid].gen + 1) & 0xFFFF
        af_off, rx_off, tx_off = offs
        conn = Conn(fid, gen, ctx, fid % self.fpm.n_cores, local_port, rip, rport, af_off, rx_off, rx_len,
                    tx_off, tx_len, state)
        if appflow:
            af = ctx.region.cast("struct tas_appflow", af_off)
            ffi.memmove(af, _AF_ZERO, 64)
            af.flow_id, af.gen = fid, gen
            af.rx_off, af.rx_len, af.tx_off, af.tx_len = rx_off, rx_len, tx_off, tx_len
        self.conns[fid] = conn
        ports = self.ports_in_use
        ports[local_port] = ports.get(local_port, 0) + 1
        return conn

    def _install(self, conn: Conn, *, peer_mss: int, snd_wscale: int, rcv_wscale: int, sack: bool, ecn: bool = False,
                 ts_recent: int | None, snd_wnd: int, wl1: int, wl2: int, rtt_us: int, appflow=None) -> None:
        """Fill the flow record and side record, set up congestion control,
        make the flow ACTIVE and index it (_activate).  ``appflow``: address
        of the app's flow block when _new_conn left it to be filled here."""
        self._activate(conn, peer_mss, snd_wscale, rcv_wscale, sack, ecn, ts_recent, snd_wnd, wl1, wl2, rtt_us,
                       appflow)

    def _activate(self, conn: Conn, peer_mss: int, snd_wscale: int, rcv_wscale: int, sack: bool, ecn: bool,
                  ts_recent: int | None, snd_wnd: int, wl1: int, wl2: int, rtt_us: int, appflow) -> None:
        """_install with positional arguments: one C call (sp_flow.c
        tas_sp_activate; twin: spflow_py.activate) after the algorithm is
        chosen."""
        flags = _FF_NODELAY
        if ts_recent is not None:
            flags |= _FF_TS
        else:
            ts_recent = 0
        if sack:
            flags |= _FF_SACK
        if snd_wscale or rcv_wscale:
            flags |= _FF_WSCALE
        if ecn:
            flags |= _FF_ECN
        mss = peer_mss if 64 <= peer_mss <= OUR_MSS else max(64, min(peer_mss, OUR_MSS))
        mac = conn.remote_mac
        if len(mac) != 6:
            mac = bytes(mac).ljust(6, b"\0")[:6]
        fid = conn.fid
        # the algorithm's mode and loss beta for the side record (none: the fast path's NewReno)
        mode, beta = self.cc.register(fid, mss) if self.cc is not None else (0, 0)
        if lib.tas_sp_activate(self._ftraw, fid, conn.gen, flags, conn.ctx.ctx_id, self.local_ip_int,
                               conn.remote_ip, conn.local_port, conn.remote_port, mac, snd_wscale, rcv_wscale, mss,
                               ts_recent, conn.rx_off, conn.rx_len, conn.tx_off, conn.tx_len, conn.appflow_off,
                               (conn.irs + 1) & U32, (conn.iss + 1) & U32, snd_wnd, wl1 & U32, wl2 & U32, rtt_us,
                               self.now_us() & U32, conn.core, mode, beta,
                               ffi.NULL if appflow is None else appflow) != 0:
            raise RuntimeError(f"flow table index refused flow {fid}")
        conn.installed = True
        conn.state = transition(conn.state, Event.ESTABLISH)
        if conn.keepalive or (conn.listener is not None and conn.listener.keepalive):
            self._ka_conns[fid] = conn
        self.counters["conns_established"] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("flow %d established %s:%d <-> %s:%d", fid, self.local_ip, conn.local_port,
                      int2ip(conn.remote_ip), conn.remote_port)

    def _free(self, conn: Conn) -> None:
        """Forget a connection: flow record, index entry, buffers, id."""
        fid = conn.fid
        conns = self.conns
        if conns.get(fid) is not conn:
            return
        if conn.timer:
            conn.timer.cancel()
        if conn.installed:  # FREE + DETACHED, out of the index (sp_flow.c; twin spflow_py.uninstall)
            lib.tas_sp_uninstall(self._ftraw, fid)
        if self.connecting:
            self.connecting.pop(conn.key(), None)
        ctx = conn.ctx
        free_flow = getattr(ctx, "free_flow", None)  # server.Context: the three blocks in one call
        if free_flow is not None:
            free_flow(conn.appflow_off, conn.rx_off, conn.tx_off)
        else:
            for off in (conn.appflow_off, conn.rx_off, conn.tx_off):
                ctx.free(off)
        del conns[fid]
        if self._closing:
            self._closing.pop(fid, None)
        if self._orphans:
            self._orphans.pop(fid, None)
        if self._ka_conns:
            self._ka_conns.pop(fid, None)
        if self.cc is not None:
            self.cc.remove(fid)
        self.free_ids.append(fid)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("flow %d closed (%s) %s:%d <-> %s:%d", fid, conn.state.value, self.local_ip,
                      conn.local_port, int2ip(conn.remote_ip), conn.remote_port)
        if getattr(ctx, "orphaned", False) and not any(c.ctx is ctx for c in conns.values()):
            ctx.on_drained()
        port = conn.local_port
        n = self.ports_in_use.get(port, 0) - 1
        if n > 0:
            self.ports_in_use[port] = n
        else:
            self.ports_in_use.pop(port, None)
        if not conn.detached:
            ctx.event({"ev": "closed", "ctx": ctx.ctx_id, "flow": fid})

    def _reset(self, conn: Conn, err: int, send_rst: bool) -> None:
        """End a connection abruptly; the app learns ECONNRESET."""
        if conn.installed and send_rst and conn.state in SYNCHRONIZED:
            self._send_rst_for(conn)
        if conn.installed:
            lib.tas_sp_set_status(self.ft.raw, conn.fid, lib.TAS_FLOW_SLOWPATH, 0)
        was = conn.state
        conn.state = transition(conn.state, Event.RST)
        self._closing.pop(conn.fid, None)
        log.debug("flow %d reset in %s (%s, %s) %s:%d <-> %s:%d", conn.fid, was.value, errno.errorcode.get(err, err),
                  "RST sent" if send_rst and conn.installed and was in SYNCHRONIZED else "no RST sent",
                  self.local_ip, conn.local_port, int2ip(conn.remote_ip), conn.remote_port)
        if conn.detached:
            self._free(conn)
            return
        if was not in (State.TIME_WAIT, State.CLOSED):
            af = conn.ctx.region.cast("struct tas_appflow", conn.appflow_off)
            af.flags |= lib.TAS_AF_RESET
            conn.ctx.event({"ev": "reset", "ctx": conn.ctx.ctx_id, "flow": conn.fid, "errno": err})

    def on_flow_event(self, fid: int, events: int) -> None:
        if events & _EV_CC_NEWS:  # the CC loop slept armed (kernel_slowpath/ccloop.py)
            if self.cc is not None:
                self.cc.poke()
            events &= ~_EV_CC_NEWS
            if not events:
                return
        conn = self.conns.get(fid)
        if conn is None or not conn.installed:
            return
        # each happens once per connection; one already taken from the
        # record's flags (_catch_up) may still arrive as an event
        events &= ~conn.fin_events
        try:
            if events & _EV_FIN_ACKED:
                conn.state = transition(conn.state, Event.FIN_ACKED)
                conn.fin_events |= _EV_FIN_ACKED
            if events & _EV_FIN_RCVD:
                conn.state = transition(conn.state, Event.FIN_RCVD)
                conn.fin_events |= _EV_FIN_RCVD
        except TcpProtocolError as e:
            self.counters["protocol_errors"] += 1
            log.warning("flow %d: %s", fid, e)
            return
        self._track_closing(conn)
        self._settle(conn)

    def _track_closing(self, conn: Conn) -> None:
        """Keep the set _sync_closing walks in step with conn's state."""
        if conn.installed and conn.state in CLOSING_STATES:
            self._closing[conn.fid] = conn
        elif self._closing:
            self._closing.pop(conn.fid, None)

    def _settle(self, conn: Conn) -> None:
        """Free what a finished connection no longer needs."""
        if not conn.detached:
            return
        state = conn.state
        if state is State.TIME_WAIT:
            snd_nxt, rcv_nxt = self._seqs(conn)
            self._tw_put(conn.key(), snd_nxt, rcv_nxt)
            self.counters["time_wait"] += 1
            self._free(conn)
        elif state is State.CLOSED:
            self._free(conn)
        elif state is State.FIN_WAIT_2:
            conn.orphan_deadline = self.now_us() + FIN_WAIT_2_ORPHAN_US
            self._orphans[conn.fid] = conn

    def _catch_up(self, conn: Conn, snap=None) -> None:
        """Apply the FIN events the record's flags show but the slow path
        never got (the fast path drops them when its KRX ring is full)."""
        if not conn.installed:
            return
        if snap is None:
            snap = self._snapshot(conn)
        self._catch_up_flags(conn, snap.flags)

    def _catch_up_flags(self, conn: Conn, flags: int) -> None:
        """_catch_up from the record's flags as read."""
        ev = 0
        if flags & lib.TAS_FF_FIN_ACKED:
            ev |= lib.TAS_EV_FIN_ACKED
        if flags & lib.TAS_FF_RX_FIN:
            ev |= lib.TAS_EV_FIN_RCVD
        ev &= ~conn.fin_events
        if ev:
            self.counters["flow_events_recovered"] += 1
            log.debug("flow %d: FIN event(s) %#x taken from the flow record (event lost)", conn.fid, ev)
            self.on_flow_event(conn.fid, ev)

    def _sync_closing(self, now: int) -> None:
        """Bounds for flows in a closing state (see CLOSING_SYNC_US): lost
        FIN events are recovered, and an orphan whose peer stopped answering
        is reset after ORPHAN_RETRIES timeouts or probes."""
        lost = sum(int(st.krx_full) for st in self.core_stats())
        if lost != self._krx_full_seen:
            self._krx_full_seen = lost
            self._closing_sync_next = min(self._closing_sync_next, self._closing_sync_last + CLOSING_SYNC_MIN_US)
        if now < self._closing_sync_next:
            return
        self._closing_sync_last = now
        self._closing_sync_next = now + CLOSING_SYNC_US
        for conn in list(self._closing.values()):
            if self.conns.get(conn.fid) is not conn:
                continue
            snap = self._snapshot(conn)
            backoff = int(snap.rto_backoff)
            self._catch_up(conn, snap)
            if (conn.detached and backoff > ORPHAN_RETRIES and self.conns.get(conn.fid) is conn
                    and conn.state in CLOSING_STATES):
                log.info("flow %d: orphan in %s, peer silent for %d timeouts: reset", conn.fid,
                         conn.state.value, backoff)
                self.counters["orphans_timed_out"] += 1
                self._reset(conn, errno.ETIMEDOUT, send_rst=True)

    def _tw_put(self, key: tuple, snd_nxt: int, rcv_nxt: int) -> None:
        """(Re)start a TIME-WAIT entry; every entry lives TIME_WAIT_US, so
        _tw_order stays in expiry order (a restarted one is found again
        later, its older place is skipped)."""
        expiry = self.now_us() + TIME_WAIT_US
        self.time_wait[key] = (expiry, snd_nxt, rcv_nxt)
        self._tw_order.append((expiry, key))

    def _expire_time_wait(self, now: int) -> None:
        """Drop the TIME-WAIT entries that expired: O(expired), not O(entries)."""
        order, tw = self._tw_order, self.time_wait
        while order and order[0][0] <= now:
            _, key = order.popleft()
            v = tw.get(key)
            if v is not None and v[0] <= now:
                del tw[key]
        if not order and tw:  # entries not put by _tw_put: the slow way, once
            for key in [k for k, v in tw.items() if v[0] <= now]:
                del tw[key]
            order.extend(sorted((v[0], k) for k, v in tw.items()))

    def _on_time_wait(self, key: tuple, tw: tuple[int, int, int], p) -> bool:
        """Segments for a TIME-WAIT connection.  True if consumed."""
        expiry, snd_nxt, rcv_nxt = tw
        flags = p.tcp_flags
        if flags & RST:
            return True  # RFC 1337: TIME-WAIT assassination protection
        if flags & SYN and not flags & ACK and not seq_lt(p.seq, rcv_nxt) and p.seq != rcv_nxt - 1:
            del self.time_wait[key]  # a new incarnation (RFC 9293 3.6.1)
            return False
        if flags & FIN:
            self._tw_put(key, snd_nxt, rcv_nxt)
        self.send_frame(self.segs.build(dst_mac=bytes(p.src_mac), dst_ip=p.src_ip, sport=p.dst_port,
                                        dport=p.src_port, seq=snd_nxt, ack=rcv_nxt, flags=ACK))
        return True

    # ------------------------------------------------------------------
    # timers: RTO, zero-window probes, TIME-WAIT, orphans
    def _scan(self) -> None:
        try:
            self.scan_once()
        except Exception:
            log.exception("timer scan failed")
        # fast while some flow has data in flight (RTO precision), slow when
        # none has: any new flight's RTO is >= 200 ms away, more than the idle
        # interval, so nothing is detected late (and an idle stack sleeps)
        busy = self._scan_more or self._kick_retry or (
            self._hi_water and lib.tas_sp_count_busy(self.ft.raw, self._hi_water))
        self._scan_handle = self.loop.call_later(SCAN_INTERVAL_S if busy else IDLE_SCAN_INTERVAL_S, self._scan)

    def scan_once(self) -> None:
        now = self.now_us()
        if not self.conns:
            self._hi_water = 0
            n = 0
        else:
            # ids are handed out lowest first, so the live ones sit below the
            # high-water mark: scan only that part of the table
            # restart at 0 unless the last pass stopped early with a full batch
            if not self._scan_more or self._scan_cursor[0] >= self._hi_water:
                self._scan_cursor[0] = 0
            n = lib.tas_sp_scan_timeouts(self.ft.raw, now & U32, self._hi_water, self._scan_cursor,
                                         self._scan_ids, self._scan_why, 256)
            self._scan_more = n == 256
        for i in range(n):
            fid = self._scan_ids[i]
            conn = self.conns.get(fid)
            if conn is None:
                continue
            if self._scan_why[i] == lib.TAS_TMO_RTO:
                if log.isEnabledFor(logging.DEBUG):
                    self._log_rto(conn, now)
                backoff = lib.tas_sp_rto_fire(self.ft.raw, fid, now & U32)
                if self.cc is not None:
                    self.cc.on_rto(fid)
                self.counters["rto_fired"] += 1
                if backoff > 12:
                    log.info("flow %d: retransmission gave up", fid)
                    self._reset(conn, errno.ETIMEDOUT, send_rst=True)
                    continue
            elif self._scan_why[i] == lib.TAS_TMO_TLP:
                lib.tas_sp_tlp(self.ft.raw, fid)
                self.counters["tlp_fired"] += 1
            else:
                lib.tas_sp_probe(self.ft.raw, fid, now & U32)
                self.counters["zero_window_probes"] += 1
            self.kick_flow(conn)
        if self.time_wait:
            self._expire_time_wait(now)
        if self._synack_heap:
            self._expire_synacks(now)
        if self._ka_conns and now >= self._ka_next_scan:
            self._ka_next_scan = now + KEEPALIVE_SCAN_US
            for conn in list(self._ka_conns.values()):
                self._keepalive(conn, now)
        if self._orphans:
            for conn in [c for c in self._orphans.values() if c.orphan_deadline <= now]:
                self._orphans.pop(conn.fid, None)  # past its deadline it cannot be in FIN-WAIT-2 again
                if conn.state is State.FIN_WAIT_2 and self.conns.get(conn.fid) is conn:
                    self._reset(conn, errno.ETIMEDOUT, send_rst=True)
        if self._kick_retry:
            retry, self._kick_retry = self._kick_retry, set()
            for fid in retry:
                conn = self.conns.get(fid)
                if conn is not None and conn.installed:
                    self.kick_flow(conn)
        self._sync_closing(now)

    def _on_frag_needed(self, frame: bytes, p) -> None:
        """ICMP fragmentation needed (RFC 1191): lower the quoted flow's MSS
        to the next-hop MTU - 40 if the quoted segment is one we have in
        flight (RFC 5927 4.1: SND.UNA <= SEG.SEQ <= SND.MAX), and resend."""
        self.counters["icmp_frag_needed"] += 1
        l4 = p.l4_off
        end = min(len(frame), p.l3_off + struct.unpack_from("!H", frame, p.l3_off + 2)[0])
        q = l4 + 8  # the quoted IP header
        if end - q < 28 or frame[q] >> 4 != 4 or frame[q + 9] != 6:
            return
        ihl = (frame[q] & 0x0F) * 4
        if ihl < 20 or end - q < ihl + 8:
            return
        src, dst = struct.unpack_from("!II", frame, q + 12)
        sport, dport, seq = struct.unpack_from("!HHI", frame, q + ihl)
        mtu = struct.unpack_from("!H", frame, l4 + 6)[0]
        if src != self.local_ip_int or mtu < 68:
            return
        fid = self.ft.lookup(self.local_ip_int, sport, dst, dport)
        conn = self.conns.get(fid) if fid >= 0 else None
        if conn is None or not conn.installed:
            return
        s = self._snapshot(conn)
        una = (s.tx_seq0 + s.tx_una) & U32
        if ((seq - una) & U32) > ((s.tx_max - s.tx_una) & U32):
            return  # not a segment of ours in flight: forged or stale
        old = lib.tas_sp_set_mss(self.ft.raw, fid, max(lib.TAS_SP_MIN_MSS, mtu - 40))
        if old >= 0:
            self.counters["pmtu_updates"] += 1
            log.info("flow %d: path MTU %d (ICMP from %s): mss %d -> %d", fid, mtu, int2ip(p.src_ip), old,
                     max(lib.TAS_SP_MIN_MSS, mtu - 40))
            self.kick_flow(conn)

    def _keepalive(self, conn: Conn, now: int) -> None:
        """SO_KEEPALIVE: after `idle` s without a segment from the peer (the
        fast path stamps last_rx_us) and with nothing in flight, probe every
        `intvl` s with seq = SND.UNA - 1 and no data (the peer answers with
        an ACK); after `cnt` unanswered probes reset the flow (ETIMEDOUT)."""
        if not conn.installed or conn.state not in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_2):
            return
        idle_s, intvl_s, cnt = self.keepalive
        s = self._snapshot(conn)
        if s.status != lib.TAS_FLOW_ACTIVE:
            return
        if s.last_rx_us != conn.ka_seen or conn.ka_seen < 0:
            conn.ka_seen, conn.ka_since, conn.ka_probes = int(s.last_rx_us), now, 0
            return
        if s.tx_max > s.tx_una or s.tx_head > s.tx_una:
            return  # data outstanding: the retransmission timer watches the peer
        if conn.ka_probes == 0:
            if now - conn.ka_since < idle_s * 1e6:
                return
        elif now < conn.ka_next:
            return
        if conn.ka_probes >= cnt:
            self.counters["keepalive_timeouts"] += 1
            log.info("flow %d: keepalive: no answer to %d probes, reset", conn.fid, conn.ka_probes)
            self._reset(conn, errno.ETIMEDOUT, send_rst=True)
            return
        una = (s.tx_seq0 + s.tx_una + (1 if s.flags & lib.TAS_FF_FIN_ACKED else 0)) & U32
        rcv_nxt = (s.rx_seq0 + s.rx_head + (1 if s.flags & lib.TAS_FF_RX_FIN else 0)) & U32
        ts = (self.ts_now(), s.ts_recent) if s.flags & lib.TAS_FF_TS else None
        win = (s.rx_len - (s.rx_head - s.rx_tail)) >> s.rcv_wscale
        self.send_frame(self.segs.build(dst_mac=conn.remote_mac, dst_ip=conn.remote_ip, sport=conn.local_port,
                                        dport=conn.remote_port, seq=(una - 1) & U32, ack=rcv_nxt, flags=ACK,
                                        win=min(win, 0xFFFF), ts=ts), conn.core)
        conn.ka_probes += 1
        conn.ka_next = now + int(intvl_s * 1e6)
        self.counters["keepalive_probes"] += 1

    def set_keepalive(self, ctx, flow: int, on: bool) -> None:
        """setsockopt(SO_KEEPALIVE) on an open flow."""
        conn = self._conn_of(ctx, flow)
        conn.keepalive = bool(on)
        conn.ka_seen = -1
        if conn.keepalive or (conn.listener is not None and conn.listener.keepalive):
            self._ka_conns[conn.fid] = conn
        else:
            self._ka_conns.pop(conn.fid, None)

    # ------------------------------------------------------------------
    # the Engine seam (called by the control server)
    def listen(self, ctx, port: int, backlog: int, reuseaddr: bool, keepalive: bool = False) -> int:
        if port == 0:
            port = self._alloc_port()
            if port is None:
                raise OSError(errno.EADDRINUSE, "no free ephemeral port")
        if not 0 < port < 65536:
            raise OSError(errno.EINVAL, "port out of range")
        owner = self.bound.get(port)
        if owner is not None:
            if owner is not ctx:
                raise OSError(errno.EADDRINUSE, f"port {port} already in use")
            del self.bound[port]  # the context's own bind(): now a listener
        lst = self.listeners.get(port)
        if (lst is not None and reuseaddr and lst.reuse and ctx not in lst.group
                and getattr(ctx, "app", None) is getattr(lst.ctx, "app", None)):
            lst.group.append(ctx)  # port sharing between contexts of one app
            log.debug("listen on port %d: context %d joins (%d sharing)", port, ctx.ctx_id, len(lst.group))
            return port
        if lst is not None or (port in self.ports_in_use and not reuseaddr):
            raise OSError(errno.EADDRINUSE, f"port {port} already in use")
        self.listeners[port] = Listener(ctx=ctx, port=port, backlog=max(1, min(backlog, 65535)),
                                        reuse=reuseaddr, group=[ctx], keepalive=keepalive)
        log.debug("listen on port %d", port)
        return port

    def bind(self, ctx, port: int, reuseaddr: bool) -> int:
        """Reserve a local port for ctx (what bind() does on Linux: the
        port is taken from here on, EADDRINUSE comes now, port 0 picks an
        ephemeral one).  listen() or connect() by the same context use it."""
        if port == 0:
            port = self._alloc_port()
            if port is None:
                raise OSError(errno.EADDRINUSE, "no free ephemeral port")
        if not 0 < port < 65536:
            raise OSError(errno.EINVAL, "port out of range")
        owner = self.bound.get(port)
        if owner is ctx:
            raise OSError(errno.EINVAL, f"port {port} already bound by this context")
        if owner is not None or port in self.listeners or (port in self.ports_in_use and not reuseaddr):
            raise OSError(errno.EADDRINUSE, f"port {port} already in use")
        self.bound[port] = ctx
        return port

    def unbind(self, ctx, port: int) -> None:
        if self.bound.get(port) is ctx:
            del self.bound[port]

    def listen_close(self, ctx, port: int) -> None:
        lst = self.listeners.get(port)
        if lst is None or ctx not in lst.group:
            raise OSError(errno.EBADF, "not a listener of this context")
        lst.group.remove(ctx)
        if lst.group:  # others still share the port
            lst.ctx = lst.group[0]
            return
        for ho in lst.half_open.values():
            ho.deadline = 0
        lst.half_open.clear()
        del self.listeners[port]

    def connect(self, ctx, ip: str, port: int, local_port: int, rx_len: int, tx_len: int,
                keepalive: bool = False) -> dict:
        try:
            rip = ip2int(ip)
        except ValueError:
            raise OSError(errno.EINVAL, f"not an IPv4 address: {ip!r}") from None
        if not 0 < port < 65536:
            raise OSError(errno.EINVAL, "port out of range")
        if rip == self.local_ip_int:
            raise OSError(errno.EADDRNOTAVAIL, "connecting to the stack's own address is not supported")
        hop = self.next_hop(rip)
        if hop is None:
            raise OSError(errno.ENETUNREACH, f"no route to {ip} (no --gateway)")
        if local_port and self.bound.get(local_port) is not None:
            if self.bound[local_port] is not ctx:
                raise OSError(errno.EADDRINUSE, f"port {local_port} already in use")
            del self.bound[local_port]
        if local_port == 0:
            local_port = self._alloc_port()
            if local_port is None:
                raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral port")
        elif (local_port, rip, port) in self.connecting or self.ft.lookup(
                self.local_ip_int, local_port, rip, port) >= 0:
            raise OSError(errno.EADDRINUSE, "connection already exists")
        rx_len = _pow2(rx_len or self.rx_buf)
        tx_len = _pow2(tx_len or self.tx_buf)
        conn = self._new_conn(ctx, local_port, rip, port, rx_len, tx_len, State.SYN_SENT)
        if conn is None:
            raise OSError(errno.ENOBUFS, "no flow slot or buffer memory left")
        conn.iss = self._isn()
        conn.keepalive = keepalive
        self.connecting[conn.key()] = conn

        def arp_done(mac: bytes | None) -> None:
            if self.connecting.get(conn.key()) is not conn:
                return
            if mac is None:
                self._fail_connect(conn, errno.EHOSTUNREACH)
                return
            conn.remote_mac = mac
            self._send_syn(conn)

        self.resolve(hop, arp_done)
        return self.flow_info(conn)

    def _conn_of(self, ctx, fid: int) -> Conn:
        conn = self.conns.get(fid)
        if conn is None or conn.ctx is not ctx or conn.detached:
            raise OSError(errno.EBADF, f"no flow {fid} in this context")
        return conn

    def shutdown(self, ctx, flow: int, tx_head: int) -> None:
        conn = self._conn_of(ctx, flow)
        self._catch_up(conn)
        self._shutdown(conn, tx_head)

    def _shutdown(self, conn: Conn, tx_head: int) -> None:
        if not conn.installed or conn.state not in _SHUTDOWN_STATES:
            return
        if lib.tas_sp_tx_close(self._ftraw, conn.fid, tx_head) != 0:
            raise OSError(errno.EINVAL, "bad send position for shutdown")
        conn.state = transition(conn.state, Event.APP_SHUTDOWN)
        self._track_closing(conn)
        self.kick_flow(conn)

    def close(self, ctx, flow: int, tx_head: int, rx_tail: int) -> None:
        conn = self.conns.get(flow)
        if conn is None or conn.ctx is not ctx or conn.detached:
            raise OSError(errno.EBADF, f"no flow {flow} in this context")
        if not conn.installed:
            conn.detached = True
            if conn.state is State.SYN_SENT:
                self._free(conn)
            elif conn.state is State.CLOSED:
                self._free(conn)
            return
        if conn.state is State.ESTABLISHED or conn.state is State.CLOSE_WAIT:
            self._close_open(conn, tx_head, rx_tail)
        else:
            self._close_general(conn, tx_head, rx_tail)

    def _close_general(self, conn: Conn, tx_head: int, rx_tail: int) -> None:
        """close() of an installed flow, any state (each step its own call)."""
        snap = self._snapshot(conn)
        rx_head = snap.rx_head
        if rx_head > rx_tail and rx_head > snap.rx_tail and conn.state in _UNREAD_RESETS:
            # RFC 9293 3.10.4 / RFC 2525: closing with unread data resets
            conn.detached = True
            self._reset(conn, errno.ECONNRESET, send_rst=True)
            return
        status = snap.status
        # a lost FIN-received event (the record's flags show it): LAST-ACK, not FIN-WAIT-1
        flags = snap.flags
        if ((_EV_FIN_ACKED if flags & _FF_FIN_ACKED else 0) | (_EV_FIN_RCVD if flags & _FF_RX_FIN else 0)) \
                & ~conn.fin_events:
            self._catch_up(conn, snap)
        self._shutdown(conn, tx_head)
        conn.detached = True
        lib.tas_sp_set_status(self._ftraw, conn.fid, status, _FF_DETACHED)
        self._settle(conn)

    def _close_open(self, conn: Conn, tx_head: int, rx_tail: int) -> None:
        """close() of an installed flow in ESTABLISHED or CLOSE-WAIT (the
        common case): the unread-data check, FIN after tx_head and DETACHED
        in one C call (sp_flow.c tas_sp_close; twin spflow_py.app_close).
        A FIN event not taken yet (KRX full) cannot take either state out of
        _SHUTDOWN_STATES, so the decisions are those of the general path."""
        out = self._u32
        rc = lib.tas_sp_close(self._ftraw, conn.fid, tx_head, rx_tail, out)
        if rc == 1:  # RFC 9293 3.10.4 / RFC 2525: closing with unread data resets
            conn.detached = True
            self._reset(conn, errno.ECONNRESET, send_rst=True)
            return
        flags = out[0]
        if ((_EV_FIN_ACKED if flags & _FF_FIN_ACKED else 0) | (_EV_FIN_RCVD if flags & _FF_RX_FIN else 0)) \
                & ~conn.fin_events:
            self._catch_up_flags(conn, flags)
        if rc != 0:
            raise OSError(errno.EINVAL, "bad send position for shutdown")
        conn.state = transition(conn.state, Event.APP_SHUTDOWN)
        self._track_closing(conn)
        self.kick_flow(conn)
        conn.detached = True
        self._settle(conn)

    def abort(self, ctx, flow: int) -> None:
        conn = self._conn_of(ctx, flow)
        conn.detached = True
        if conn.installed:
            self._reset(conn, errno.ECONNRESET, send_rst=True)
        else:
            self._free(conn)

    def context_gone(self, ctx) -> int:
        """The app behind ctx closed it or died.  Flows it closed cleanly
        (FIN queued) keep delivering their data and finish their FIN
        exchange; every other flow is reset.  Returns how many linger; the
        engine calls ctx.on_drained() when the last one is freed."""
        lingering = 0
        for conn in [c for c in self.conns.values() if c.ctx is ctx]:
            graceful = conn.detached and conn.installed and conn.state not in (State.CLOSED, State.TIME_WAIT)
            if graceful:
                lingering += 1
                continue
            conn.detached = True
            if conn.installed:
                self._reset(conn, errno.ECONNRESET, send_rst=True)
            self._free(conn)
        for port in [p for p, owner in self.bound.items() if owner is ctx]:
            del self.bound[port]
        for port in [p for p, lst in self.listeners.items() if ctx in lst.group]:
            self.listen_close(ctx, port)
        return lingering

    def reset_all(self) -> None:
        for conn in list(self.conns.values()):
            conn.detached = True
            if conn.installed:
                self._reset(conn, errno.ECONNRESET, send_rst=True)
            self._free(conn)

    # ------------------------------------------------------------------
    def flow_info(self, conn: Conn) -> dict:
        return {"flow": conn.fid, "gen": conn.gen, "ctx": conn.ctx.ctx_id, "core": conn.core,
                "appflow_off": conn.appflow_off, "rx_off": conn.rx_off, "rx_len": conn.rx_len,
                "tx_off": conn.tx_off, "tx_len": conn.tx_len, "local_ip": self.local_ip,
                "local_port": conn.local_port, "remote_ip": int2ip(conn.remote_ip),
                "remote_port": conn.remote_port}

    def flows(self) -> list[dict]:
        out = []
        for conn in self.conns.values():
            d = {"flow": conn.fid, "state": conn.state.value, "ctx": conn.ctx.ctx_id, "core": conn.core,
                 "local": f"{self.local_ip}:{conn.local_port}",
                 "remote": f"{int2ip(conn.remote_ip)}:{conn.remote_port}", "detached": conn.detached,
                 "keepalive": bool(conn.keepalive or (conn.listener is not None and conn.listener.keepalive))}
            if conn.installed:
                s = self._snapshot(conn)
                d.update({"rx_bytes": int(s.rx_head), "tx_bytes": int(s.tx_una),
                          "rx_buffered": int(s.rx_head - s.rx_tail), "rx_buf": int(s.rx_len),
                          "tx_buffered": int(s.tx_head - s.tx_una), "tx_buf": int(s.tx_len),
                          "in_flight": int(s.tx_nxt - s.tx_una), "cwnd": int(s.cwnd),
                          "ssthresh": int(s.ssthresh), "snd_wnd": int(s.snd_wnd), "srtt_us": int(s.srtt_us),
                          "rto_us": int(s.rto_us), "mss": int(s.mss), "retransmits": int(s.cnt_rexmit),
                          "segs_in": int(s.cnt_rx_segs), "segs_out": int(s.cnt_tx_segs),
                          "ecn": bool(s.flags & lib.TAS_FF_ECN)})
            out.append(d)
        return out

    def _counters(self) -> dict:
        """The counters, with what the KRX drain answered in C (an echo
        request counts as an exception, as when Python answered it)."""
        c = dict(self.counters)
        d = self.drain_stats
        if d is not None:
            n = int(d.echo_replies) + int(d.ktx_full)
            c["exceptions"] += n
            c["icmp_echo_replies"] += n
            c["icmp_echo_ktx_full"] = int(d.ktx_full)
        return c

    def stats(self) -> dict:
        from nicemu.wire import DROP_REASON_NAMES

        names = {-k: v for k, v in DROP_REASON_NAMES.items()}
        names.update({0: "no_context", 14: "wrong_dst_ip", 15: "wrong_dst_mac"})
        cores, drops = [], {}
        for st in self.core_stats():
            d = {name: int(getattr(st, name)) for name, _ in ffi.typeof("struct tas_fp_stats").fields
                 if name not in ("drops", "pad")}
            d["drops"] = {names.get(i, f"reason_{i}"): int(st.drops[i]) for i in range(16)}
            for k, v in d["drops"].items():
                drops[k] = drops.get(k, 0) + v
            cores.append(d)
        return {"cores": cores, "drops": drops,
                "segments_in": sum(c["rx_frames"] for c in cores),
                "segments_out": sum(c["tx_frames"] for c in cores),
                "retransmissions": sum(c["rexmit_segs"] for c in cores),
                "flows_open": sum(1 for c in self.conns.values() if c.installed),
                "flows_connecting": len(self.connecting),
                "half_open": sum(len(lst.half_open) for lst in self.listeners.values()),
                "listeners": len(self.listeners), "time_wait": len(self.time_wait),
                "arp_entries": len(self.arp), **flow_memory(self.ft.n_flows, [(c.rx_len, c.tx_len) for c in self.conns.values()]),
                "slowpath": self._counters(),
                "cc": self.cc.stats() if self.cc is not None else {"cc_algorithm": "fp-newreno"}}


class _NoTimer:
    """Stands in for the retransmission timer of a half-open entry rebuilt from a SYN cookie."""

    def cancel(self) -> None:
        pass


# Engine._syn_verdict / server.Context.syn_verdict
_SYN_COOKIE, _SYN_DROP, _SYN_REFUSE = 1, 2, 3
# states in which shutdown/close queue our FIN
_SHUTDOWN_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING,
                              State.LAST_ACK})
# states in which closing with unread data resets (RFC 9293 3.10.4)
_UNREAD_RESETS = SYNCHRONIZED - {State.TIME_WAIT}


@functools.lru_cache(maxsize=64)  # a few sizes, asked for several times per connection
def _pow2(n: int) -> int:
    n = max(4096, min(int(n), 16 << 20))
    return 1 << (n - 1).bit_length()
