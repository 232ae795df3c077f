"""Pure-Python twin of the fast-path engine (flextcp/csrc/fp_main.c,
fp_rx.c, fp_tx.c): :class:`PyFastPath` behaves like ``struct tas_fp`` with
``tas_fp_create/add_ctx/remove_ctx/poll/set_armed`` and :func:`ctx_layout`
like ``tas_ctx_layout``.

It works on the same shared memory as the C engine -- flow records in the
stack region (accessed as cffi ``struct tas_flow *`` and looked up through
:class:`~flextcp.flowtab.PyFlowTable`), KRX/KTX and ATX/ARX rings through
:class:`~flextcp.ring.PyRing`, the ``struct tas_fp_stats`` counters, the
appflow blocks and flow buffers of the registered context regions -- and
reads/writes frames on the TAP fd exactly as the C does, so the two can be
swapped (``TAS_PURE=1``, see flextcp/loop.py) and compared frame for frame
(tests/test_fastpath_twin.py).

The functions mirror the C line by line and keep its names (rx_frame,
rx_segment, rx_ack, ooo_add, ooo_merge, tx_flow, send_segment, send_ack,
flush_acks, poll_apps, poll_sp, notify_app, ...).  C's fixed-width
arithmetic is spelled out with masks; cffi refuses out-of-range stores, so
a missed wrap shows up as an OverflowError rather than a silent divergence.
Time is passed in (``now_us``); nothing here reads a clock.

Things the C cannot express in Python and that therefore differ on purpose:
KRX slots are fully zeroed (C leaves the bytes past the frame/header
uninitialised), and the flow spinlock is taken through the C helper (the
twin has no atomics, like PyFlowTable.lock).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from dataclasses import dataclass

from flextcp import sack_py
from flextcp.flowtab import PyFlowTable, ft_bytes
from flextcp.native import ffi, lib
from flextcp.ring import PyRing
from flextcp.seqnum import seq_diff, seq_ge, seq_gt, seq_le, seq_lt
from flextcp.shm import Region
from nicemu.wire import (
    TAS_OPT_SACK,
    TAS_OPT_TS,
    TAS_PK_TCP,
    TAS_TCP_ACK,
    TAS_TCP_FIN,
    TAS_TCP_PSH,
    TAS_TCP_RST,
    TAS_TCP_SYN,
    TAS_TCP_URG,
    Segment,
    build_tcp,
    parse_frame,
)

__all__ = ["PyFPConfig", "PyFastPath", "CtxLayout", "ctx_layout"]

M16 = 0xFFFF
M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1

# tas_abi.h
TAS_MAX_CORES = 16
TAS_MAX_CTX = 4096
TAS_OOO_RANGES = 8
TAS_ATX_UPDATE = 1
TAS_ATX_ENTRY_SIZE = 32
TAS_ARX_RX = 1
TAS_ARX_TX = 2
TAS_ARX_ENTRY_SIZE = 16
TAS_AF_RX_FIN = 1
TAS_AF_TX_FIN_ACKED = 4
TAS_FLOW_ACTIVE = 1
TAS_FF_TS = 1
TAS_FF_SACK = 2
TAS_FF_RX_FIN = 16
TAS_FF_TX_FIN = 32
TAS_FF_FIN_SENT = 64
TAS_FF_FIN_ACKED = 128
TAS_FF_IN_TXQ = 256
TAS_FF_RECOVERY = 1024
TAS_FF_ACK_NOW = 2048
TAS_FF_DETACHED = 4096
TAS_FF_FIN_OUT = 8192
TAS_FF_PROBE = 16384
TAS_FF_REXMIT_HEAD = 32768
TAS_FF_IN_ACKQ = 65536
TAS_FF_TLP_SEND = 131072
TAS_FF_TLP_OUT = 262144
TAS_FF_IN_DELQ = 524288
TAS_FF_ECN = 8
TAS_CC_SP = 1
TAS_CC_CE = 4
TAS_CC_CWR = 8
TAS_CC_PACE_SLACK_US = 500
TAS_TCP_ECE = 64
TAS_TCP_CWR = 128
TAS_KQ_ENTRY_SIZE = 2048
TAS_KQ_DATA = 2016
TAS_KRX_PACKET = 1
TAS_KRX_FLOW = 2
TAS_KRX_CTX_BAD = 3
FP_STRIKE_REPORT_US = 1000  # fp_internal.h
TAS_EV_FIN_RCVD = 1
TAS_EV_FIN_ACKED = 2
TAS_EV_CC_NEWS = 8  # the slow path's CC loop was asleep: a flow has news (tas_abi.h)
TAS_KTX_FRAME = 1
TAS_KTX_KICK = 2
TAS_KTX_RX = 4

# fp_internal.h
FP_FRAME_MAX = 2048
FP_RX_BATCH_MAX = 64
FP_ATX_BATCH = 64
FP_KTX_BATCH = 32
FP_SEGS_PER_VISIT = 16
FP_TX_QUANTUM = 65536  # transmit scheduling (fp_tx.c fp_tx_run)
FP_TX_VISIT_BYTES = 16384
FP_TX_POLL_BYTES = 262144
FP_TX_POLL_BYTES_SHARED = 65536
FP_TX_SHARED_US = 50000
FP_TX_FRESH_BYTES = 16384
FP_DELACK_US = 500  # delayed ACK (fp_tx.c fp_delay_ack)
FP_DROP_WRONG_DST_IP = 14
FP_DROP_WRONG_DST_MAC = 15
FP_DROP_NO_CTX = 0

# tcp_common.h
TCP_RTO_MIN_US = 200000
TCP_RTO_MAX_US = 60000000
TCP_MAX_WIN = 65535

PAGE = 4096
RING_HDR_BYTES = 192
APPFLOW_BYTES = 64
FLOW_BYTES = 128  # sizeof(struct tas_flow); the side records: struct tas_flow_cc
FT_HDR_BYTES = 64

BCAST = b"\xff" * 6
_KQ_HDR = struct.Struct("<HHIIIQQ")  # tas_krx / tas_ktx up to data[]
_ATX = struct.Struct("<IHHQQQ")
_ARX = struct.Struct("<IHHQ")
_KICK = (1).to_bytes(8, "little")


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class CtxLayout:
    """struct tas_ctx_layout: 16 ATX/ARX offsets (0 past n_cores) and heap_off."""

    atx_off: tuple[int, ...]
    arx_off: tuple[int, ...]
    heap_off: int


def _align_page(v: int) -> int:
    return (v + PAGE - 1) & ~(PAGE - 1) & M64


def _ring_bytes(slots: int, entry_size: int) -> int:
    return (RING_HDR_BYTES + slots * entry_size) & M64


def ctx_layout(n_cores: int, atx_slots: int, arx_slots: int) -> CtxLayout:
    """Twin of tas_ctx_layout (no validation, cores clamped to 16, like C).
    flextcp.layout.ctx_layout is the validating version used by the SP."""
    atx = [0] * TAS_MAX_CORES
    arx = [0] * TAS_MAX_CORES
    off = PAGE
    c = 0
    while c < n_cores and c < TAS_MAX_CORES:
        atx[c] = off
        off = _align_page(off + _ring_bytes(atx_slots, TAS_ATX_ENTRY_SIZE))
        arx[c] = off
        off = _align_page(off + _ring_bytes(arx_slots, TAS_ARX_ENTRY_SIZE))
        c += 1
    return CtxLayout(tuple(atx), tuple(arx), off)


def _ring_params_ok(slots: int, entry_size: int) -> bool:
    return slots >= 2 and slots & (slots - 1) == 0 and entry_size > 0 and entry_size % 8 == 0


# ---------------------------------------------------------------- tcp_common.h


def flow_rcv_nxt(f) -> int:
    return (f.rx_seq0 + (f.rx_head & M32) + (1 if f.flags & TAS_FF_RX_FIN else 0)) & M32


def flow_snd_max(f) -> int:
    return (f.tx_seq0 + (f.tx_max & M32) + (1 if f.flags & TAS_FF_FIN_SENT else 0)) & M32


def flow_snd_una(f) -> int:
    return (f.tx_seq0 + (f.tx_una & M32)) & M32


def flow_rcv_wnd(f) -> int:
    used = (f.rx_head - f.rx_tail) & M64
    if f.flags & TAS_FF_RX_FIN:
        return 0
    return 0 if used >= f.rx_len else (f.rx_len - used) & M32


def flow_win_field(f) -> int:
    w = flow_rcv_wnd(f)
    if f.flags & TAS_FF_RX_FIN:
        w = (f.rx_len - ((f.rx_head - f.rx_tail) & M64)) & M32
    w = (w >> f.rcv_wscale) & M32
    return TCP_MAX_WIN if w > TCP_MAX_WIN else w


def flow_rtt_sample(f, r: int) -> None:
    """RFC 6298 update (tcp_common.h); f: the flow's side record."""
    if f.srtt_us == 0:
        f.srtt_us = r if r else 1
        f.rttvar_us = r // 2
    else:
        srtt = f.srtt_us
        d = r - srtt if r > srtt else srtt - r
        rttvar = f.rttvar_us
        f.rttvar_us = (rttvar - rttvar // 4 + d // 4) & M32
        srtt = (srtt - srtt // 8 + r // 8) & M32
        f.srtt_us = srtt if srtt else 1
    rto = f.srtt_us + 4 * f.rttvar_us
    if rto < TCP_RTO_MIN_US:
        rto = TCP_RTO_MIN_US
    if rto > TCP_RTO_MAX_US:
        rto = TCP_RTO_MAX_US
    f.rto_us = rto


# ---------------------------------------------------------------- engine


@dataclass
class PyFPConfig:
    """struct tas_fp_config with Region + offsets in place of the pointers."""

    core: int
    n_cores: int
    tap_fd: int
    sp_evfd: int
    local_ip: int
    local_mac: bytes
    stack: Region
    ft_off: int
    ft_len: int
    n_flows: int
    kq_slots: int
    krx_off: int
    ktx_off: int
    stats_off: int
    rx_batch: int = 32
    tx_batch: int = 64


class _Ctx:
    """struct fp_ctx."""

    __slots__ = ("region", "base", "len", "evfd", "id", "atx", "arx", "notify", "listed", "mv", "hdr",
                 "strikes", "strikes_reported", "strike_us")

    def close(self) -> None:
        self.atx.close()
        self.arx.close()
        self.mv.release()


class _TxCtx:
    """struct fp_txctx: one context's transmit FIFO (a deque here) and DRR state."""

    __slots__ = ("fifo", "deficit", "in_ring", "in_turn")

    def __init__(self) -> None:
        self.fifo: deque[int] = deque()
        self.deficit = 0
        self.in_ring = False
        self.in_turn = False


class PyFastPath:
    """The fast-path engine in Python; raises ValueError where tas_fp_create
    returns NULL (see :meth:`create` for the None-returning variant)."""

    def __init__(self, cfg: PyFPConfig) -> None:
        if cfg.rx_batch == 0 or cfg.rx_batch > FP_RX_BATCH_MAX or cfg.n_flows == 0:
            raise ValueError("bad fast-path config")
        need = ft_bytes(cfg.n_flows)
        if need == 0 or cfg.ft_len < need:
            raise ValueError("flow table region too small")
        if not _ring_params_ok(cfg.kq_slots, TAS_KQ_ENTRY_SIZE):
            raise ValueError("bad kq_slots")
        self.cfg = cfg
        self.local_mac = bytes(cfg.local_mac)[:6]
        stack = cfg.stack
        self.ft = PyFlowTable.attach(stack, cfg.ft_off, cfg.n_flows)
        try:
            self.krx = PyRing.attach(stack, cfg.krx_off, cfg.kq_slots, TAS_KQ_ENTRY_SIZE, True)
            self.ktx = PyRing.attach(stack, cfg.ktx_off, cfg.kq_slots, TAS_KQ_ENTRY_SIZE, False)
        except ValueError:
            self.ft.close()
            raise
        base = ffi.cast("char *", stack.addr)
        self.flows = ffi.cast("struct tas_flow *", base + cfg.ft_off + FT_HDR_BYTES)
        self._flows_addr = int(ffi.cast("uintptr_t", self.flows))
        # the side records (struct tas_flow_cc, part of the flow-table region)
        cc = lib.tas_cc_table(base + cfg.ft_off, cfg.ft_len, cfg.n_flows)
        if cc == ffi.NULL:
            self.ft.close()
            raise ValueError("flow-table region without side records")
        self.cc = cc
        self.st = ffi.cast("struct tas_fp_stats *", base + cfg.stats_off)
        self.ctx: dict[int, _Ctx] = {}
        self.active: list[int] = []
        # transmit ready queues (fp_tx.c): per flow the slot + 1 it is
        # queued in, per context slot a _TxCtx, the ring of slots
        self.txq_slot = [0] * cfg.n_flows
        self.txc: dict[int, _TxCtx] = {}
        self.ring: deque[int] = deque()
        self.tx_shared_until_us = 0  # transmit shared until then (FP_TX_POLL_BYTES_SHARED)
        self.ackq = [0] * cfg.n_flows
        self.n_ack = 0
        self.delq: deque[tuple[int, int]] = deque()  # (flow id, deadline), n_flows at most
        self.notif_stamp = [0] * cfg.n_flows
        self.notifq: list[tuple[int, int]] = []
        self.poll_stamp = 1
        self.krx_posted = 0
        self.now_us = 0
        self._closed = False

    @classmethod
    def create(cls, cfg: PyFPConfig) -> PyFastPath | None:
        """tas_fp_create: None on a bad configuration."""
        try:
            return cls(cfg)
        except ValueError:
            return None

    def destroy(self) -> None:
        """tas_fp_destroy: drop contexts and release the region views."""
        if self._closed:
            return
        self._closed = True
        for c in self.ctx.values():
            c.close()
        self.ctx.clear()
        self.active.clear()
        self.krx.close()
        self.ktx.close()
        self.ft.close()

    close = destroy

    # -- contexts ---------------------------------------------------------
    def add_ctx(
        self, ctx_id: int, region: Region, length: int, evfd: int, atx_slots: int, arx_slots: int
    ) -> int:
        """tas_fp_add_ctx over ``region[0:length]``: 0 or -1."""
        if ctx_id < 0 or ctx_id >= TAS_MAX_CTX or ctx_id in self.ctx:
            return -1
        lay = ctx_layout(self.cfg.n_cores, atx_slots, arx_slots)
        if lay.heap_off > length:
            return -1
        if length > region.size:
            return -1
        core = self.cfg.core
        if core >= TAS_MAX_CORES:
            return -1
        if not _ring_params_ok(atx_slots, TAS_ATX_ENTRY_SIZE) or not _ring_params_ok(
            arx_slots, TAS_ARX_ENTRY_SIZE
        ):
            return -1
        c = _Ctx()
        c.region = region
        c.base = ffi.cast("char *", region.addr)
        c.len = length
        c.evfd = evfd
        c.id = ctx_id
        try:
            c.atx = PyRing.attach(region, lay.atx_off[core], atx_slots, TAS_ATX_ENTRY_SIZE, False)
        except ValueError:
            return -1
        try:
            c.arx = PyRing.attach(region, lay.arx_off[core], arx_slots, TAS_ARX_ENTRY_SIZE, True)
        except ValueError:
            c.atx.close()
            return -1
        c.notify = 0
        c.listed = 0
        c.strikes = 0
        c.strikes_reported = 0
        c.strike_us = 0
        c.mv = region.view(0, length)
        c.hdr = ffi.cast("struct tas_ctx_hdr *", c.base)
        self.ctx[ctx_id] = c
        self.active.append(ctx_id)
        return 0

    def remove_ctx(self, ctx_id: int) -> int:
        """tas_fp_remove_ctx: 0 or -1 (releases this engine's views of the region)."""
        c = self.ctx.pop(ctx_id, None) if 0 <= ctx_id < TAS_MAX_CTX else None
        if c is None:
            return -1
        c.close()
        act = self.active
        for i in range(len(act)):
            if act[i] == ctx_id:
                act[i] = act[-1]
                act.pop()
                break
        return 0

    def set_armed(self, armed: int) -> None:
        """tas_fp_set_armed."""
        core = self.cfg.core
        for cid in self.active:
            self.ctx[cid].hdr.fp_armed[core] = armed
        if core < lib.TAS_FP_ARMED_CORES:  # the slow path's KTX kicks (tas_sp_kick)
            self.ft.news_hdr().fp_armed[core] = armed

    # -- helpers of fp_main.c ---------------------------------------------
    def flow_ctx(self, f) -> _Ctx | None:
        if f.ctx_id >= TAS_MAX_CTX:
            return None
        return self.ctx.get(f.ctx_id)

    def appflow(self, f):
        """fp_appflow: ``struct tas_appflow *`` or None."""
        c = self.flow_ctx(f)
        if c is None or f.appflow_off + APPFLOW_BYTES > c.len:
            return None
        return ffi.cast("struct tas_appflow *", c.base + f.appflow_off)

    def buf(self, f, tx: bool) -> tuple[memoryview, int] | None:
        """fp_buf: (view of the context region, buffer offset) or None."""
        c = self.flow_ctx(f)
        off = f.tx_off if tx else f.rx_off
        ln = f.tx_len if tx else f.rx_len
        if c is None or ln == 0 or ln & (ln - 1) or off + ln > c.len:
            return None
        return c.mv, off

    def notify_app(self, flow_id: int, f, kind: int) -> None:
        if self.notif_stamp[flow_id] == self.poll_stamp:
            return
        self.notif_stamp[flow_id] = self.poll_stamp
        self.notifq.append((flow_id, kind))

    def post_notifs(self) -> None:
        """fp_post_notifs: the poll's notifications, after all its moves."""
        for flow_id, kind in self.notifq:
            f = self.flows + flow_id
            c = self.flow_ctx(f)
            if c is None:
                continue
            if c.arx.enqueue_n(_ARX.pack(flow_id, f.gen, kind, 0), 1) != 1:
                self.st.arx_full += 1
            notify = c.notify
            c.notify = (notify + 1) & M32
            if not notify and not c.listed:
                c.listed = 1
        self.notifq.clear()

    def to_sp_frame(self, frame, length: int) -> None:
        if length > TAS_KQ_DATA:
            self.st.krx_full += 1
            return
        slot = bytearray(TAS_KQ_ENTRY_SIZE)
        _KQ_HDR.pack_into(slot, 0, TAS_KRX_PACKET, length, 0, 0, self.cfg.core, self.now_us, 0)
        slot[32 : 32 + length] = frame[:length]
        if self.krx.enqueue_n(slot, 1) != 1:
            self.st.krx_full += 1
            return
        self.st.to_slowpath += 1
        self.krx_posted += 1

    def to_sp_event(self, flow_id: int, events: int) -> None:
        slot = bytearray(TAS_KQ_ENTRY_SIZE)
        _KQ_HDR.pack_into(slot, 0, TAS_KRX_FLOW, 0, flow_id, events, self.cfg.core, self.now_us, 0)
        if self.krx.enqueue_n(slot, 1) != 1:
            self.st.krx_full += 1
            return
        self.krx_posted += 1

    def report_strikes(self, c: _Ctx) -> None:
        """fp_main.c report_strikes: hostile entries so far, rate-limited."""
        if c.strikes == c.strikes_reported or (
            c.strikes_reported and ((self.now_us - c.strike_us) & M64) < FP_STRIKE_REPORT_US
        ):
            return
        slot = bytearray(TAS_KQ_ENTRY_SIZE)
        _KQ_HDR.pack_into(slot, 0, TAS_KRX_CTX_BAD, 0, c.id, min(c.strikes, M32), self.cfg.core,
                          self.now_us, 0)
        if self.krx.enqueue_n(slot, 1) != 1:
            self.st.krx_full += 1
            return
        self.krx_posted += 1
        c.strikes_reported = c.strikes
        c.strike_us = self.now_us

    @staticmethod
    def kick(fd: int) -> None:
        try:
            os.write(fd, _KICK)
        except OSError:
            pass

    def poll_apps(self) -> int:
        """Application updates: validated, never trusted."""
        st = self.st
        n_flows = self.cfg.n_flows
        work = 0
        for cid in self.active:
            c = self.ctx[cid]
            corrupt = c.atx.corrupt
            data = c.atx.dequeue_n(FP_ATX_BATCH)
            if c.atx.corrupt != corrupt:
                st.ring_corrupt += 1
                c.strikes += 1
            n = len(data) // TAS_ATX_ENTRY_SIZE
            work += n
            for j in range(n):
                e_flow, e_gen, e_kind, e_rx_tail, e_tx_head, _ = _ATX.unpack_from(
                    data, j * TAS_ATX_ENTRY_SIZE
                )
                if e_flow >= n_flows or e_kind != TAS_ATX_UPDATE:
                    st.atx_bad += 1
                    c.strikes += 1
                    continue
                f = self.flows + e_flow
                lib.tas_flow_lock(f)
                if (
                    f.status != TAS_FLOW_ACTIVE
                    or f.ctx_id != c.id
                    or f.gen != e_gen
                    or f.flags & TAS_FF_DETACHED
                ):
                    if f.status == TAS_FLOW_ACTIVE and f.gen == e_gen and f.ctx_id != c.id:
                        c.strikes += 1  # a live flow of another context
                    lib.tas_flow_unlock(f)
                    st.atx_bad += 1
                    continue
                bad = False
                if e_tx_head > f.tx_head:
                    if ((e_tx_head - f.tx_una) & M64) <= f.tx_len and not f.flags & TAS_FF_TX_FIN:
                        f.tx_head = e_tx_head
                        self.txq_push(e_flow, f)
                    else:
                        bad = True
                if e_rx_tail > f.rx_tail:
                    if e_rx_tail <= f.rx_head:
                        cc = self.fp_cc(f)
                        old_wnd = (cc.rx_adv - f.rx_head) & M32
                        f.rx_tail = e_rx_tail
                        right = (f.rx_tail + f.rx_len) & M64
                        grow = (right - cc.rx_adv) & M64
                        thresh = f.rx_len // 2
                        if thresh > (2 * f.mss) & M32:
                            thresh = (2 * f.mss) & M32
                        # window update when it opens meaningfully from small
                        # (RFC 1122 4.2.3.3 receiver SWS avoidance)
                        if right > cc.rx_adv and grow >= thresh and old_wnd < f.rx_len // 2:
                            self.need_ack(e_flow, f)
                    else:
                        bad = True
                if bad:
                    st.atx_bad += 1
                    c.strikes += 1
                lib.tas_flow_unlock(f)
            self.report_strikes(c)
        return work & M32

    def poll_sp(self) -> int:
        data = self.ktx.dequeue_n(FP_KTX_BATCH)
        n = len(data) // TAS_KQ_ENTRY_SIZE
        mv = memoryview(data)
        for i in range(n):
            k = mv[i * TAS_KQ_ENTRY_SIZE : (i + 1) * TAS_KQ_ENTRY_SIZE]
            kind, ln, flow_id = _KQ_HDR.unpack_from(k, 0)[:3]
            if kind == TAS_KTX_FRAME and ln <= TAS_KQ_DATA:
                self.write_frame(bytes(k[32 : 32 + ln]))
            elif kind == TAS_KTX_RX and ln <= TAS_KQ_DATA:
                # a segment the slow path handed back once it installed the
                # flow (e.g. data riding on the handshake's last ACK)
                self.rx_frame(bytes(k[32 : 32 + ln]))
            elif kind == TAS_KTX_KICK and flow_id < self.cfg.n_flows:
                f = self.flows + flow_id
                lib.tas_flow_lock(f)
                if f.status == TAS_FLOW_ACTIVE:
                    self.txq_push(flow_id, f)
                lib.tas_flow_unlock(f)
        return n

    def poll(self, now_us: int) -> int:
        """tas_fp_poll: one iteration; returns the amount of work done."""
        work = 0
        self.now_us = now_us & M64
        self.poll_stamp = (self.poll_stamp + 1) & M32
        if self.poll_stamp == 0:
            self.poll_stamp = 1
        st = self.st
        st.polls += 1

        # 1. frames from the TAP
        tap = self.cfg.tap_fd
        for _ in range(self.cfg.rx_batch):
            try:
                frame = os.read(tap, FP_FRAME_MAX)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                st.tap_errors += 1
                break
            if not frame:
                break
            self.rx_frame(frame)
            work += 1
        # 2. slow path commands, 3. application updates
        work += self.poll_sp()
        work += self.poll_apps()
        # 4. transmit
        work += self.tx_run(self.cfg.tx_batch)
        # 5. ACKs not piggybacked on data, delayed ACKs whose time is up
        self.flush_acks()
        self.flush_delacks()

        # 6. notifications, then doorbells: apps (only if they sleep) and the slow path
        self.post_notifs()
        for cid in self.active:
            c = self.ctx[cid]
            if c.notify:
                if c.hdr.app_armed:
                    self.kick(c.evfd)
                c.notify = 0
                c.listed = 0
        if self.krx_posted:
            # only if the slow path may sleep (tas_abi.h struct tas_cc_news_hdr)
            h = self.ft.news_hdr()
            a = h.sp_armed
            if a == lib.TAS_SP_ARMED:
                h.sp_armed = lib.TAS_SP_AWAKE
                self.kick(self.cfg.sp_evfd)
            elif a != lib.TAS_SP_AWAKE:
                self.kick(self.cfg.sp_evfd)
            self.krx_posted = 0
        work &= M32
        if work:
            st.busy_polls += 1
        return work

    # -- fp_rx.c ----------------------------------------------------------
    def rx_copy(self, f, pos: int, src, length: int) -> None:
        """Copy payload into the rx ring at absolute position pos."""
        b = self.buf(f, False)
        if b is None or length == 0:
            return
        mv, base = b
        rx_len = f.rx_len
        off = pos & (rx_len - 1)
        first = rx_len - off
        if first > length:
            first = length
        mv[base + off : base + off + first] = src[:first]
        if length > first:
            mv[base : base + length - first] = src[first:length]

    @staticmethod
    def ooo_add(o, start: int, end: int) -> int:
        """Record [start, end) as received out of order in the side-table
        entry o, merging with overlapping or adjacent ranges.  0 if there
        was no room (or no side table)."""
        if o is None:
            return 0
        os_, oe = o.ooo_start, o.ooo_end
        free_slot = -1
        for i in range(TAS_OOO_RANGES):
            s, e = os_[i], oe[i]
            if s == e:
                if free_slot < 0:
                    free_slot = i
                continue
            # overlap or adjacency
            if seq_le(start, e) and seq_ge(end, s):
                if seq_lt(start, s):
                    s = start
                if seq_gt(end, e):
                    e = end
                os_[i] = s
                oe[i] = e
                # the grown range may now touch others: fold them in
                for j in range(TAS_OOO_RANGES):
                    if j == i or os_[j] == oe[j]:
                        continue
                    if seq_le(os_[j], oe[i]) and seq_ge(oe[j], os_[i]):
                        if seq_lt(os_[j], os_[i]):
                            os_[i] = os_[j]
                        if seq_gt(oe[j], oe[i]):
                            oe[i] = oe[j]
                        os_[j] = 0
                        oe[j] = 0
                PyFastPath.ooo_front(o, i)
                return 1
        if free_slot < 0:
            return 0
        os_[free_slot] = start
        oe[free_slot] = end
        PyFastPath.ooo_front(o, free_slot)
        return 1

    @staticmethod
    def ooo_extends_latest(o, start: int, end: int) -> bool:
        """Does [start, end) overlap or touch the most recently updated range?"""
        s, e = o.ooo_start[0], o.ooo_end[0]
        return s != e and seq_le(start, e) and seq_ge(end, s)

    @staticmethod
    def ooo_front(o, i: int) -> None:
        """Move range i to slot 0: most recently updated first (RFC 2018 4)."""
        os_, oe = o.ooo_start, o.ooo_end
        s, e = os_[i], oe[i]
        while i > 0:
            os_[i] = os_[i - 1]
            oe[i] = oe[i - 1]
            i -= 1
        os_[0] = s
        oe[0] = e

    @staticmethod
    def ooo_merge(f, o) -> None:
        """After in-order data advanced rx_head, absorb ranges it reached."""
        if o is None:
            return
        os_, oe = o.ooo_start, o.ooo_end
        again = True
        while again:
            again = False
            head = f.rx_head & M32
            for i in range(TAS_OOO_RANGES):
                s, e = os_[i], oe[i]
                if s == e:
                    continue
                if seq_le(s, head):
                    if seq_gt(e, head):
                        f.rx_head = (f.rx_head + ((e - head) & M32)) & M64
                        again = True
                    os_[i] = 0
                    oe[i] = 0

    @staticmethod
    def ooo_empty(o) -> bool:
        if o is None:
            return True
        os_, oe = o.ooo_start, o.ooo_end
        for i in range(TAS_OOO_RANGES):
            if os_[i] != oe[i]:
                return False
        return True

    def sack_parse(self, f, p, ack: int, out: int) -> tuple[list[tuple[int, int]], bool]:
        """The peer's usable SACK blocks as offsets above ack, and whether a
        D-SACK (counted) came with them."""
        cc = self.fp_cc(f)
        blocks = []
        dsack = False
        ns = min(p.n_sack, 4)
        for i in range(ns):
            so = seq_diff(p.sack_start[i], ack)
            eo = seq_diff(p.sack_end[i], ack)
            if i == 0 and (
                eo <= 0
                or (
                    ns > 1
                    and seq_ge(p.sack_start[0], p.sack_start[1])
                    and seq_le(p.sack_end[0], p.sack_end[1])
                )
            ):
                cc.cnt_dsack = (cc.cnt_dsack + 1) & M32
                self.st.rexmit_spurious += 1
                dsack = True
                continue
            if eo <= 0 or so >= eo or eo > out:
                continue
            blocks.append((max(so, 0), eo))
        return blocks, dsack

    def fp_cc(self, f):
        """fp_cc: the flow's side record (struct tas_flow_cc), never None."""
        return self.cc + (int(ffi.cast("uintptr_t", f)) - self._flows_addr) // FLOW_BYTES

    def cc_news(self, fid: int, cc) -> None:
        """fp_rx.c cc_news: mark a TAS_CC_SP flow in the CC news bits; wake
        the slow path's loop if it sleeps armed (re-arm if the queue was full)."""
        if not cc.mode & TAS_CC_SP:
            return
        if self.ft.cc_news_set(fid):
            full = self.st.krx_full
            self.to_sp_event(fid, TAS_EV_CC_NEWS)
            if self.st.krx_full != full:
                lib.tas_ft_cc_news_rearm(self.ft.news_hdr())

    def enter_recovery(self, fid: int, f, newreno: bool) -> None:
        flight = (f.tx_max - f.tx_una) & M64
        half = (flight // 2) & M32
        cc = self.fp_cc(f)
        if cc is not None:
            # a loss event for the control loop; TAS_CC_SP: the algorithm's beta
            cc.cnt_loss = (cc.cnt_loss + 1) & M32
            self.cc_news(fid, cc)
            if cc.mode & TAS_CC_SP and cc.loss_beta:
                half = (flight * cc.loss_beta // 1000) & M32
            cc.cwr_until = f.tx_max
            # undo marker
            cc.prior_cwnd = f.cwnd if f.cwnd > f.mss else f.mss
            cc.prior_ssthresh = cc.ssthresh
            cc.rexmit_ts = 0
            cc.undo_retrans = 0
        two = (2 * f.mss) & M32
        cc.ssthresh = half if half > two else two
        f.cwnd = (cc.ssthresh + 3 * f.mss) & M32 if newreno else cc.ssthresh
        cc.tx_recover = f.tx_max
        f.flags |= TAS_FF_RECOVERY | TAS_FF_REXMIT_HEAD
        cc.rexmit_nxt = f.tx_una & M32
        self.st.rexmit_fast += 1
        self.txq_push(fid, f)

    def recovery_undo(self, fid: int, f, cc, degree: int) -> None:
        """The last recovery was spurious: restore the window, learn the
        reordering (fp_rx.c recovery_undo)."""
        if cc.prior_cwnd > f.cwnd:
            f.cwnd = cc.prior_cwnd
        if cc.prior_ssthresh > cc.ssthresh:
            cc.ssthresh = cc.prior_ssthresh
        cc.prior_cwnd = 0
        cc.rexmit_ts = 0
        cc.undo_retrans = 0
        f.flags &= ~TAS_FF_RECOVERY & M32
        cc.tx_recover = f.tx_una  # not a loss episode: the next loss starts a recovery
        mss = f.mss or 1
        segs = ((degree + mss - 1) // mss + 1) & M32
        cur = cc.reord or 3
        if segs > cur:
            cc.reord = min(segs, 127)
        mult = cc.reo_mult or 1
        cc.reo_mult = mult + 1 if mult < 16 else 16
        cc.cnt_undo = (cc.cnt_undo + 1) & M32
        self.cc_news(fid, cc)
        self.st.recovery_undo += 1
        self.txq_push(fid, f)

    def rx_ack(self, fid: int, f, p, seg_len: int) -> int:
        """ACK field processing.  Returns 0 if the segment must be dropped."""
        # once our FIN is acknowledged SND.UNA is past it (RFC 9293)
        una = (flow_snd_una(f) + (1 if f.flags & TAS_FF_FIN_ACKED else 0)) & M32
        snd_max = flow_snd_max(f)
        ack = p.ack
        events = 0

        if seq_gt(ack, snd_max):
            # acks something not yet sent: ACK and drop (RFC 9293)
            self.need_ack(fid, f)
            return 0
        acked = seq_diff(ack, una)
        win = (p.win << f.snd_wscale) & M32
        cc = self.fp_cc(f)
        sp_cc = cc is not None and bool(cc.mode & TAS_CC_SP)
        ece = cc is not None and bool(f.flags & TAS_FF_ECN) and bool(p.tcp_flags & TAS_TCP_ECE)
        sb = cc is not None and bool(f.flags & TAS_FF_SACK)
        blocks: list[tuple[int, int]] = []
        dsack = False
        if f.flags & TAS_FF_SACK and p.n_sack and acked >= 0:
            blocks, dsack = self.sack_parse(f, p, ack, seq_diff(snd_max, ack) & M32)
        degree = 0
        first_end = 0
        if sb:
            v = sack_py.sb_view(cc, f)
            degree = v.sacked
            first_end = v.e[0] if v.n else 0

        if acked > 0:
            nbytes = acked
            outstanding = (f.tx_max - f.tx_una) & M64
            if f.flags & TAS_FF_FIN_SENT and ack == snd_max and nbytes == (outstanding + 1) & M64:
                nbytes = outstanding
                f.flags |= TAS_FF_FIN_ACKED
                f.flags &= ~TAS_FF_FIN_OUT & M32
                events |= TAS_EV_FIN_ACKED
            if nbytes > outstanding:
                nbytes = outstanding
            f.tx_una = (f.tx_una + nbytes) & M64
            if f.tx_nxt < f.tx_una:
                f.tx_nxt = f.tx_una
            cc.cnt_acked = (cc.cnt_acked + nbytes) & M64
            if ece:
                cc.cnt_ecn_bytes = (cc.cnt_ecn_bytes + nbytes) & M64
            if sp_cc and nbytes:
                self.cc_news(fid, cc)
            cc.rto_backoff = 0
            cc.rto_start_us = self.now_us & M32
            f.flags &= ~TAS_FF_TLP_OUT & M32
            if sb:
                sack_py.sb_prune(cc, f.tx_una & M32)

            ts = bool(f.flags & TAS_FF_TS and p.opts & TAS_OPT_TS and p.tsecr != 0)
            if ts:
                now_ms = (self.now_us // 1000) & M32
                r_ms = (now_ms - p.tsecr) & M32
                if r_ms < 60000:
                    flow_rtt_sample(cc, (r_ms * 1000 + 500) & M32)

            if cc is not None and cc.prior_cwnd and f.flags & TAS_FF_RECOVERY:
                # first cumulative progress of a recovery: undo if nothing was
                # resent yet, or the hole's filler predates our first resend
                filler = first_end == 0 or nbytes <= first_end
                if cc.undo_retrans == 0 or (
                    filler and ts and cc.rexmit_ts and seq_lt(p.tsecr, cc.rexmit_ts)
                ):
                    self.recovery_undo(fid, f, cc, degree)
                else:
                    if filler and ts and cc.rexmit_ts and cc.reo_mult > 1:
                        cc.reo_mult -= 1  # a real loss: the time window shrinks back
                    cc.rexmit_ts = 0

            # window growth (NewReno, RFC 5681 / 6582)
            mss = f.mss
            if f.flags & TAS_FF_RECOVERY:
                if f.tx_una >= cc.tx_recover:
                    f.flags &= ~TAS_FF_RECOVERY & M32
                    f.cwnd = cc.ssthresh
                elif not sb:
                    # partial ACK without a scoreboard: retransmit the head, deflate
                    f.flags |= TAS_FF_REXMIT_HEAD
                    f.cwnd = (f.cwnd - (nbytes & M32)) & M32 if f.cwnd > nbytes else mss
                    f.cwnd = (f.cwnd + mss) & M32
                elif not blocks and sack_py.sb_empty(cc):
                    f.flags |= TAS_FF_REXMIT_HEAD
            elif sp_cc:
                pass  # the slow path decides the window (kernel_slowpath/ccloop.py)
            elif f.cwnd < cc.ssthresh:
                f.cwnd = (f.cwnd + (min(nbytes, (2 * mss) & M32) & M32)) & M32
            else:
                cwnd = f.cwnd
                inc = ((mss * nbytes) & M64) // (cwnd if cwnd else 1) & M32
                f.cwnd = (cwnd + (inc if inc else 1)) & M32
            cc.dupacks = 0
            if not f.flags & TAS_FF_DETACHED:
                af = self.appflow(f)
                if af is not None:
                    af.tx_acked = f.tx_una
                    if events & TAS_EV_FIN_ACKED:
                        af.flags |= TAS_AF_TX_FIN_ACKED
                self.notify_app(fid, f, TAS_ARX_TX)
            if f.tx_head > f.tx_nxt or f.flags & (TAS_FF_TX_FIN | TAS_FF_REXMIT_HEAD):
                self.txq_push(fid, f)
        elif (
            acked == 0
            and seg_len == 0
            and not p.tcp_flags & TAS_TCP_FIN
            and f.tx_max > f.tx_una
            and (win == f.snd_wnd or blocks)
        ):
            # duplicate ACK (with SACK blocks even if the window changed)
            cc.dupacks = (cc.dupacks + 1) & M16
            if sb and (blocks or not sack_py.sb_empty(cc)):
                pass  # the scoreboard's (below)
            elif cc.dupacks == 3 and not f.flags & TAS_FF_RECOVERY:
                self.enter_recovery(fid, f, True)
            elif cc.dupacks > 3 and f.flags & TAS_FF_RECOVERY:
                f.cwnd = (f.cwnd + f.mss) & M32
                self.txq_push(fid, f)
            elif cc.dupacks < 3 and f.tx_head > f.tx_nxt:
                self.txq_push(fid, f)  # limited transmit

        if sb and dsack and cc.prior_cwnd and cc.undo_retrans:
            cc.undo_retrans -= 1
            if cc.undo_retrans == 0:
                self.recovery_undo(fid, f, cc, degree)
        if sb and acked >= 0 and f.tx_max > f.tx_una:
            base = f.tx_una & M32
            for so, eo in blocks:
                sack_py.sb_add(cc, base, base + so, base + eo)
            v = sack_py.sb_view(cc, f)
            if v.n:
                # repairing: in recovery, or going back after an RTO
                c = -1
                if f.flags & TAS_FF_RECOVERY:
                    c = seq_diff(cc.rexmit_nxt, f.tx_una & M32)
                elif f.tx_una < cc.tx_recover:
                    c = 1 if f.tx_nxt > f.tx_una else 0
                if c >= 0:
                    # lost retransmission: resend the head
                    if (
                        c > 0
                        and cc.srtt_us
                        and sack_py.timer_age(cc, self.now_us) >= (2 * cc.srtt_us + 1000) & M32
                    ):
                        cc.rto_start_us = self.now_us & M32
                        f.flags |= TAS_FF_REXMIT_HEAD
                        if f.flags & TAS_FF_RECOVERY:
                            cc.rexmit_nxt = f.tx_una & M32  # every hole again (fp_rx.c)
                    self.txq_push(fid, f)
                elif sack_py.sb_lost_limit(self.now_us, f, cc, v):
                    self.enter_recovery(fid, f, False)
                elif f.tx_head > f.tx_nxt:
                    self.txq_push(fid, f)

        if ece:
            # ECN-Echo (RFC 3168 6.1.2): counted; once per window CWR, and
            # without TAS_CC_SP the window is halved here as on a loss
            cc.cnt_ecn_acks = (cc.cnt_ecn_acks + 1) & M32
            if f.tx_una > cc.cwr_until:
                cc.cwr_until = f.tx_max
                cc.mode |= TAS_CC_CWR
                if not sp_cc and not f.flags & TAS_FF_RECOVERY:
                    half = ((f.tx_max - f.tx_una) // 2) & M32
                    two = (2 * f.mss) & M32
                    cc.ssthresh = half if half > two else two
                    f.cwnd = cc.ssthresh

        # send window update (RFC 9293 SND.WL1/WL2 rule)
        if seq_lt(cc.snd_wl1, p.seq) or (cc.snd_wl1 == p.seq and seq_le(cc.snd_wl2, ack)):
            old = f.snd_wnd
            f.snd_wnd = win
            cc.snd_wl1 = p.seq
            cc.snd_wl2 = ack
            if win > old and f.tx_head > f.tx_nxt:
                self.txq_push(fid, f)
        if events:
            self.to_sp_event(fid, events)
        return 1

    def dsack_note(self, f, start: int, end: int) -> None:
        """A duplicate arrived: report it first in our next SACK option (RFC 2883)."""
        cc = self.fp_cc(f)
        if cc is None or not f.flags & TAS_FF_SACK or start == end:
            return
        cc.dsack_start = start
        cc.dsack_end = end

    @staticmethod
    def ooo_holds(o, start: int, end: int) -> bool:
        """Is [start, end) all inside one out-of-order range already held?"""
        if o is None:
            return False
        for i in range(TAS_OOO_RANGES):
            if o.ooo_start[i] != o.ooo_end[i] and seq_ge(start, o.ooo_start[i]) and seq_le(end, o.ooo_end[i]):
                return True
        return False

    def rx_segment(self, fid: int, f, frame: bytes, p) -> None:
        st = self.st
        poff = p.payload_off
        plen = p.payload_len
        fin = (p.tcp_flags & TAS_TCP_FIN) != 0
        rcv_nxt = flow_rcv_nxt(f)
        wnd = flow_rcv_wnd(f)
        seg_len = plen + (1 if fin else 0)
        cc = self.fp_cc(f)

        cc.cnt_rx_segs += 1
        cc.last_rx_us = self.now_us & M32

        # PAWS (RFC 7323 section 5)
        if f.flags & TAS_FF_TS and p.opts & TAS_OPT_TS and seq_lt(p.tsval, f.ts_recent):
            st.dup_segs += 1
            self.need_ack(fid, f)
            return

        # acceptability test (RFC 9293 3.10.7.4, first check)
        off = seq_diff(p.seq, rcv_nxt)
        if seg_len == 0:
            ok = off == 0 if wnd == 0 else (0 <= off < wnd) or off == 0
        elif wnd == 0:
            ok = False
        else:
            ok = (0 <= off < wnd) or (off < 0 and off + seg_len > 0)
        if not ok:
            if off < 0:
                st.dup_segs += 1
                if plen:
                    start = ((f.rx_head & M32) + off) & M32
                    self.dsack_note(f, start, (start + plen) & M32)
            else:
                st.beyond_window += 1
            # an unacceptable segment still carries a usable ACK if it is just
            # a pure ACK probing a closed window; RFC says ACK and drop
            if seg_len > 0 or off != 0:
                self.need_ack(fid, f)
            if seg_len == 0 and p.tcp_flags & TAS_TCP_ACK:
                self.rx_ack(fid, f, p, 0)
            return

        if not self.rx_ack(fid, f, p, plen):
            return

        if seg_len == 0:
            return
        cc = self.fp_cc(f)
        if cc is not None and f.flags & TAS_FF_ECN:
            # CE echo per data segment (RFC 8257 3.2)
            ce = (p.ip_tos & 3) == 3
            if ce:
                cc.cnt_ce_rx = (cc.cnt_ce_rx + 1) & M32
            if ce != bool(cc.mode & TAS_CC_CE):
                if f.unacked_segs:
                    self.send_ack(f)
                cc.mode ^= TAS_CC_CE
                f.flags |= TAS_FF_ACK_NOW  # the new state's first ACK is not delayed
        if f.flags & TAS_FF_RX_FIN:
            # data or FIN after the peer's FIN: retransmission, re-ACK
            self.need_ack(fid, f)
            return

        # trim the front (already received bytes)
        if off < 0:
            cut = -off
            start = ((f.rx_head & M32) + off) & M32
            self.dsack_note(f, start, (start + min(cut, plen)) & M32)
            if cut >= plen:
                poff += plen
                plen = 0
            else:
                poff += cut
                plen -= cut
            off = 0
        # trim the tail to the window
        if off + plen > wnd:
            st.beyond_window += 1
            plen = 0 if off >= wnd else wnd - off
            fin = False

        payload = memoryview(frame)[poff : poff + plen]
        old_head = f.rx_head
        if off == 0:
            filled = not self.ooo_empty(cc)  # this segment may fill a hole: ACK at once
            if plen > 0:
                self.rx_copy(f, f.rx_head, payload, plen)
                f.rx_head = (f.rx_head + plen) & M64
                self.ooo_merge(f, cc)
            if p.opts & TAS_OPT_TS and f.flags & TAS_FF_TS:
                f.ts_recent = p.tsval
            f.unacked_segs = (f.unacked_segs + 1) & M16
            if fin and self.ooo_empty(cc) and (f.rx_head & M32) == ((old_head + plen) & M32):
                f.flags |= TAS_FF_RX_FIN
                f.flags |= TAS_FF_ACK_NOW
                self.to_sp_event(fid, TAS_EV_FIN_RCVD)
            if f.rx_head != old_head or f.flags & TAS_FF_RX_FIN:
                if not f.flags & TAS_FF_DETACHED:
                    af = self.appflow(f)
                    if af is not None:
                        if f.flags & TAS_FF_RX_FIN:
                            af.flags |= TAS_AF_RX_FIN
                        af.rx_head = f.rx_head
                    self.notify_app(fid, f, TAS_ARX_RX)
            st.rx_fast += 1
            if (plen > 0 and not filled and self.ooo_empty(cc) and f.unacked_segs < 2
                    and not f.flags & (TAS_FF_ACK_NOW | TAS_FF_DETACHED | TAS_FF_TX_FIN)):  # fmt: skip
                self.delay_ack(fid, f)  # a lone segment: its ACK waits for our reply
            else:
                self.need_ack(fid, f)  # every second segment, FIN, holes filled
        else:
            # out of order: keep it if we have a range for it
            if plen > 0:
                s = ((f.rx_head & M32) + off) & M32
                if self.ooo_holds(cc, s, (s + plen) & M32):
                    self.dsack_note(f, s, (s + plen) & M32)
                elif (f.flags & TAS_FF_ACK_NOW and cc is not None and f.flags & TAS_FF_SACK
                      and not self.ooo_extends_latest(cc, s, (s + plen) & M32)):  # fmt: skip
                    # a pending ACK reports the range it was for (fp_rx.c)
                    self.send_ack(f)
                if self.ooo_add(cc, s, (s + plen) & M32):
                    self.rx_copy(f, (f.rx_head + off) & M64, payload, plen)
                    st.ooo_segs += 1
                else:
                    st.ooo_dropped += 1
            # immediate duplicate ACK tells the sender about the hole
            f.flags |= TAS_FF_ACK_NOW
            self.need_ack(fid, f)

    def rx_frame(self, frame: bytes) -> None:
        st = self.st
        r, p = parse_frame(frame)
        st.rx_frames += 1
        st.rx_bytes += len(frame)
        if r < 0:
            if -r < 16:
                st.drops[-r] += 1
            return
        if r != TAS_PK_TCP:
            self.to_sp_frame(frame, len(frame))
            return
        if p.dst_mac != self.local_mac and p.dst_mac != BCAST:
            st.drops[FP_DROP_WRONG_DST_MAC] += 1
            return
        if p.dst_ip != self.cfg.local_ip:
            st.drops[FP_DROP_WRONG_DST_IP] += 1
            return
        fid = self.ft.lookup(p.dst_ip, p.dst_port, p.src_ip, p.src_port)
        if (
            fid < 0
            or p.tcp_flags & (TAS_TCP_SYN | TAS_TCP_RST | TAS_TCP_URG)
            or not p.tcp_flags & TAS_TCP_ACK
        ):
            self.to_sp_frame(frame, len(frame))
            return
        f = self.flows + fid
        lib.tas_flow_lock(f)
        if (
            f.status != TAS_FLOW_ACTIVE
            or f.remote_ip != p.src_ip
            or f.remote_port != p.src_port
            or f.local_port != p.dst_port
        ):
            lib.tas_flow_unlock(f)
            self.to_sp_frame(frame, len(frame))
            return
        if self.buf(f, False) is None or self.buf(f, True) is None:
            # context not (or no longer) mapped here: nothing to place data in
            lib.tas_flow_unlock(f)
            st.drops[FP_DROP_NO_CTX] += 1
            return
        self.rx_segment(fid, f, frame, p)
        lib.tas_flow_unlock(f)

    # -- fp_tx.c ----------------------------------------------------------
    def write_frame(self, frame: bytes) -> int:
        """fp_write_frame: 0 or -1."""
        try:
            r = os.write(self.cfg.tap_fd, frame)
        except OSError:
            r = -1
        if r != len(frame):
            self.st.tap_errors += 1
            return -1
        self.st.tx_frames += 1
        self.st.tx_bytes += len(frame)
        return 0

    def txq_push(self, flow_id: int, f) -> None:
        if f.flags & TAS_FF_IN_TXQ:
            return
        f.flags |= TAS_FF_IN_TXQ
        if self.txq_slot[flow_id]:
            return  # still linked: it will be visited
        s = f.ctx_id if f.ctx_id < TAS_MAX_CTX else TAS_MAX_CTX
        c = self.txc.get(s)
        if c is None:
            c = self.txc[s] = _TxCtx()
        self.txq_slot[flow_id] = s + 1
        c.fifo.append(flow_id)
        if not c.in_ring:
            # to the head of the ring, first served for FP_TX_FRESH_BYTES
            c.in_ring = True
            c.in_turn = True
            c.deficit = FP_TX_FRESH_BYTES
            self.ring.appendleft(s)

    def need_ack(self, flow_id: int, f) -> None:
        f.flags |= TAS_FF_ACK_NOW
        if f.flags & TAS_FF_IN_ACKQ:
            return
        if self.n_ack >= self.cfg.n_flows:
            return
        f.flags |= TAS_FF_IN_ACKQ
        self.ackq[self.n_ack] = flow_id
        self.n_ack += 1

    def delay_ack(self, flow_id: int, f) -> None:
        """fp_delay_ack: hold the ACK of a lone in-order segment for
        FP_DELACK_US so our reply carries it."""
        self.st.acks_delayed += 1
        if f.flags & TAS_FF_IN_DELQ:
            return
        if len(self.delq) >= self.cfg.n_flows:
            self.need_ack(flow_id, f)
            return
        f.flags |= TAS_FF_IN_DELQ
        self.delq.append((flow_id, (self.now_us + FP_DELACK_US) & M64))

    def flush_delacks(self) -> None:
        """fp_flush_delacks: the delayed ACKs that are due and were not
        carried by data meanwhile; the next deadline into pace_due_us."""
        delq = self.delq
        while delq:
            fid, due = delq[0]
            if due > self.now_us:
                break
            delq.popleft()
            f = self.flows + fid
            lib.tas_flow_lock(f)
            if f.flags & TAS_FF_IN_DELQ:
                f.flags &= ~TAS_FF_IN_DELQ & M32
                if f.unacked_segs and f.status == TAS_FLOW_ACTIVE:
                    self.send_ack(f)
                    self.st.delacks_sent += 1
            lib.tas_flow_unlock(f)
        if delq:
            due = delq[0][1]
            if not self.st.pace_due_us or due < self.st.pace_due_us:
                self.st.pace_due_us = due

    def seg_init(self, f) -> Segment:
        """Fill the header fields every segment of f shares."""
        s = Segment(
            src_mac=self.local_mac,
            dst_mac=bytes(f.remote_mac),
            src_ip=f.local_ip,
            dst_ip=f.remote_ip,
            src_port=f.local_port,
            dst_port=f.remote_port,
            ack=flow_rcv_nxt(f),
            win=flow_win_field(f),
            flags=TAS_TCP_ACK,
        )
        if f.flags & TAS_FF_TS:
            s.opts |= TAS_OPT_TS
            s.tsval = (self.now_us // 1000) & M32
            s.tsecr = f.ts_recent
        cc = self.fp_cc(f)
        if cc is not None and f.flags & TAS_FF_ECN and cc.mode & TAS_CC_CE:
            s.flags |= TAS_TCP_ECE
        if f.flags & TAS_FF_SACK:
            # RFC 2018: report the out-of-order ranges we hold, after a
            # duplicate we were sent (D-SACK, RFC 2883), reported once
            n = 0
            if cc is not None and cc.dsack_start != cc.dsack_end:
                s.sack_start[n] = (f.rx_seq0 + cc.dsack_start) & M32
                s.sack_end[n] = (f.rx_seq0 + cc.dsack_end) & M32
                n += 1
                cc.dsack_start = 0
                cc.dsack_end = 0
            i = 0
            while cc is not None and i < TAS_OOO_RANGES and n < 3:
                if cc.ooo_start[i] != cc.ooo_end[i]:
                    s.sack_start[n] = (f.rx_seq0 + cc.ooo_start[i]) & M32
                    s.sack_end[n] = (f.rx_seq0 + cc.ooo_end[i]) & M32
                    n += 1
                i += 1
            if n:
                s.opts |= TAS_OPT_SACK
                s.n_sack = n
        return s

    def after_send(self, f) -> None:
        cc = self.fp_cc(f)
        f.flags &= ~TAS_FF_ACK_NOW & M32
        f.unacked_segs = 0
        cc.rx_adv = (f.rx_tail + f.rx_len) & M64
        cc.cnt_tx_segs += 1

    def send_ack(self, f) -> None:
        s = self.seg_init(f)
        s.seq = (
            f.tx_seq0 + (f.tx_nxt & M32) + (1 if f.flags & (TAS_FF_FIN_OUT | TAS_FF_FIN_ACKED) else 0)
        ) & M32
        frame = build_tcp(s, b"", FP_FRAME_MAX)
        if frame and self.write_frame(frame) == 0:
            self.st.acks_sent += 1
        self.after_send(f)

    def flush_acks(self) -> None:
        for i in range(self.n_ack):
            fid = self.ackq[i]
            f = self.flows + fid
            lib.tas_flow_lock(f)
            f.flags &= ~TAS_FF_IN_ACKQ & M32
            if f.flags & TAS_FF_ACK_NOW and f.status == TAS_FLOW_ACTIVE:
                self.send_ack(f)
            lib.tas_flow_unlock(f)
        self.n_ack = 0

    def send_segment(self, f, pos: int, length: int, fin: bool) -> int:
        """Send one segment of f starting at absolute tx position pos with
        length payload bytes (0 for a bare FIN).  0 or -1."""
        b = self.buf(f, True)
        if b is None:
            return -1
        mv, base = b
        s = self.seg_init(f)
        s.seq = (f.tx_seq0 + (pos & M32)) & M32
        if fin:
            s.flags |= TAS_TCP_FIN
        if length and pos + length == f.tx_head:
            s.flags |= TAS_TCP_PSH
        cc = self.fp_cc(f)
        if cc is not None and f.flags & TAS_FF_ECN and length and pos >= f.tx_max:
            # ECT(0) on new data only (RFC 3168 6.1.5)
            s.ip_tos = 0x02
            if cc.mode & TAS_CC_CWR:
                s.flags |= TAS_TCP_CWR
                cc.mode &= ~TAS_CC_CWR & M32
        tx_len = f.tx_len
        off = pos & (tx_len - 1)
        first = tx_len - off
        if first > length:
            first = length
        payload = bytes(mv[base + off : base + off + first])
        if length > first:
            payload += bytes(mv[base : base + length - first])
        frame = build_tcp(s, payload, FP_FRAME_MAX)
        if not frame:
            return -1
        if self.write_frame(frame) != 0:
            return -1
        if pos < f.tx_max:
            self.st.rexmit_segs += 1
        self.st.data_segs_sent += 1
        self.after_send(f)
        return 0

    def seg_payload_max(self, f) -> int:
        """Effective payload per segment: the option bytes eat into the MSS."""
        opts = 12 if f.flags & TAS_FF_TS else 0
        if f.flags & TAS_FF_SACK:
            # the SACK blocks seg_init adds (RFC 9293 3.7.1, RFC 6691)
            n = 0
            cc = self.fp_cc(f)
            if cc is not None and cc.dsack_start != cc.dsack_end:
                n += 1
            i = 0
            while cc is not None and i < TAS_OOO_RANGES and n < 3:
                if cc.ooo_start[i] != cc.ooo_end[i]:
                    n += 1
                i += 1
            if n:
                opts += 4 + 8 * n
        return f.mss - opts if f.mss > opts else 1

    def resend(self, f, pos: int, ln: int) -> int:
        """Resend [pos, pos + ln), the FIN too if it ends there (fp_tx.c resend)."""
        fin = bool(f.flags & TAS_FF_FIN_SENT and f.flags & TAS_FF_TX_FIN and pos + ln == f.tx_head)
        if self.send_segment(f, pos, ln, fin) != 0:
            return -1
        cc = self.fp_cc(f)
        cc.cnt_rexmit += 1
        if f.flags & TAS_FF_RECOVERY:
            if cc.undo_retrans == 0:
                ms = (self.now_us // 1000) & M32
                cc.rexmit_ts = ms if ms else M32
            if cc.undo_retrans < 0xFFFF:
                cc.undo_retrans += 1
        return 0

    def send_tlp(self, f, cc, v, smss: int) -> int:
        """Tail loss probe (fp_tx.c send_tlp)."""
        out = (f.tx_max - f.tx_una) & M64
        seq_flight = (f.tx_nxt - f.tx_una) & M64
        avail = (f.tx_head - f.tx_nxt) & M64
        r = -1
        if avail > 0 and f.tx_nxt == f.tx_max and f.snd_wnd > seq_flight:
            ln = min(avail, smss, f.snd_wnd - seq_flight)
            fin = bool(f.flags & TAS_FF_TX_FIN and f.tx_nxt + ln == f.tx_head)
            if f.tx_nxt == f.tx_una:
                cc.rto_start_us = self.now_us & M32
            r = self.send_segment(f, f.tx_nxt, ln, fin)
            if r == 0:
                f.tx_nxt = (f.tx_nxt + ln) & M64
                f.tx_max = f.tx_nxt
                if fin:
                    f.flags |= TAS_FF_FIN_SENT | TAS_FF_FIN_OUT
        elif out > 0:
            ln = min(out, smss)
            pos = f.tx_max - ln
            if v is not None and v.n and v.e[-1] >= out:
                hole = sack_py.sb_next_hole(v, 0, out)
                if hole is not None:
                    pos = f.tx_una + hole[0]
                    ln = min(hole[1] - hole[0], smss)
            r = self.resend(f, pos, ln)
        elif f.flags & TAS_FF_FIN_SENT and not f.flags & TAS_FF_FIN_ACKED:
            r = self.resend(f, f.tx_una, 0)
        if r == 0:
            if cc is not None:
                cc.cnt_tlp = (cc.cnt_tlp + 1) & M32
            self.st.tlp_probes += 1
        return r

    def tx_holes(self, f, cc, v, smss: int, budget: int) -> int:
        """Recovery with a scoreboard: lost holes while pipe < cwnd (fp_tx.c tx_holes)."""
        sent = 0
        out = min(f.tx_max - f.tx_una, 0x7FFFFFFF)
        nxt = min(f.tx_nxt - f.tx_una, out)
        limit = sack_py.sb_lost_limit(self.now_us, f, cc, v)
        force = bool(f.flags & TAS_FF_REXMIT_HEAD)
        f.flags &= ~TAS_FF_REXMIT_HEAD & M32
        c = seq_diff(cc.rexmit_nxt, f.tx_una & M32)
        cur = c if c > 0 else 0
        if not v.n:
            if force and out > 0 and budget > 0 and self.resend(f, f.tx_una, min(out, smss)) == 0:
                sent += 1
            return sent
        limit = min(limit, nxt)
        if force and cur > 0 and budget > 0:
            # the head once more (its last copy was lost), cursor unmoved
            head = sack_py.sb_next_hole(v, 0, out)
            if head is not None and head[0] == 0 and self.resend(f, f.tx_una, min(head[1], smss)) == 0:
                self.st.rexmit_sack += 1
                sent += 1
            force = False
        while sent < budget:
            hole = sack_py.sb_next_hole(v, cur, limit)
            if hole is None:
                break
            hs, he = hole
            pipe = (nxt - sack_py.sb_sacked_below(v, nxt) - sack_py.sb_holes(v, hs, limit)) & M32
            ln = min(he - hs, smss)
            if not force and pipe + ln > f.cwnd:
                break
            if self.resend(f, f.tx_una + hs, ln) != 0:
                break
            self.st.rexmit_sack += 1
            cur = hs + ln
            cc.rexmit_nxt = (f.tx_una + cur) & M32
            force = False
            sent += 1
        return sent

    def tx_flow(self, f, budget: int, bbudget: int) -> tuple[int, bool, int, int]:
        """Transmit what flow f may send now, at most budget segments and
        about bbudget wire bytes: (segments sent, more, pacing due time or
        0, wire bytes)."""
        st = self.st
        wire0 = st.tx_bytes
        sent = 0
        smss = self.seg_payload_max(f)
        now32 = self.now_us & M32
        cc = self.fp_cc(f)
        due = 0
        sb = cc is not None and bool(f.flags & TAS_FF_SACK)
        v = None
        if sb:
            if cc.rto_backoff >= 2:
                sack_py.sb_clear(cc)
            v = sack_py.sb_view(cc, f)

        if f.flags & TAS_FF_TLP_SEND:
            f.flags &= ~TAS_FF_TLP_SEND & M32
            if sb and f.flags & TAS_FF_RECOVERY:
                f.flags |= TAS_FF_REXMIT_HEAD
                cc.rexmit_nxt = f.tx_una & M32
                cc.cnt_tlp = (cc.cnt_tlp + 1) & M32
                self.st.tlp_probes += 1
            elif self.send_tlp(f, cc, v, smss) == 0:
                sent += 1

        if sb and f.flags & TAS_FF_RECOVERY:
            hb = budget - sent if budget > sent else 0
            w = st.tx_bytes - wire0
            left = bbudget - w if bbudget > w else 0
            hb = min(hb, (left + smss - 1) // smss)
            sent += self.tx_holes(f, cc, v, smss, hb)
        elif f.flags & TAS_FF_REXMIT_HEAD:
            f.flags &= ~TAS_FF_REXMIT_HEAD & M32
            out = (f.tx_max - f.tx_una) & M64
            if out > 0:
                ln = min(out, smss)
                if self.resend(f, f.tx_una, ln) == 0:
                    sent += 1
                    if f.flags & TAS_FF_RECOVERY and seq_lt(cc.rexmit_nxt, (f.tx_una + ln) & M32):
                        cc.rexmit_nxt = (f.tx_una + ln) & M32
            elif f.flags & TAS_FF_FIN_SENT and not f.flags & TAS_FF_FIN_ACKED:
                if self.resend(f, f.tx_una, 0) == 0:
                    sent += 1

        while sent < budget and st.tx_bytes - wire0 < bbudget:
            seq_flight = (f.tx_nxt - f.tx_una) & M64
            flight = seq_flight
            lt = 0
            seg_max = smss
            if sb and v.n:
                nxt = min(seq_flight, 0x7FFFFFFF)
                if f.tx_nxt < f.tx_max:
                    # going back after an RTO: skip what the peer SACKed
                    skip = 0
                    for rs, re_ in zip(v.s, v.e, strict=True):
                        if rs <= nxt < re_:
                            skip = re_ - nxt
                            break
                        if rs > nxt:
                            seg_max = min(seg_max, rs - nxt)
                            break
                    if skip:
                        f.tx_nxt = (f.tx_nxt + skip) & M64
                        self.st.sack_skipped += skip
                        continue
                flight = nxt - sack_py.sb_sacked_below(v, nxt)
                if f.flags & TAS_FF_RECOVERY:
                    c = seq_diff(cc.rexmit_nxt, f.tx_una & M32)
                    cur = c if c > 0 else 0
                    limit = min(sack_py.sb_lost_limit(self.now_us, f, cc, v), nxt)
                    flight -= sack_py.sb_holes(v, cur, limit)
            elif not f.flags & TAS_FF_RECOVERY:
                # limited transmit (RFC 3042)
                lt = min(cc.dupacks, 2) * smss
            if f.tx_nxt < f.tx_max and cc is not None and cc.prior_cwnd and not f.flags & TAS_FF_RECOVERY:
                cc.prior_cwnd = 0  # resending after an RTO: no undo
            cw = f.cwnd + lt
            can_cw = cw - flight if cw > flight else 0
            can_rw = f.snd_wnd - seq_flight if f.snd_wnd > seq_flight else 0
            can = min(can_cw, can_rw)
            avail = (f.tx_head - f.tx_nxt) & M64
            ln = min(avail, can, seg_max) & M32
            if ln < smss and ln < avail and flight > 0:
                ln = 0  # no runt cut by a window while ACKs will come (RFC 1122 4.2.3.4)

            if ln == 0 and avail > 0 and f.flags & TAS_FF_PROBE:
                # zero-window probe: one byte past the window (RFC 9293 3.8.6.1)
                f.flags &= ~TAS_FF_PROBE & M32
                ln = 1
            if ln == 0:
                fin_due = (
                    f.flags & TAS_FF_TX_FIN
                    and not f.flags & TAS_FF_FIN_OUT
                    and not f.flags & TAS_FF_FIN_ACKED
                    and f.tx_nxt == f.tx_head
                )
                if fin_due and (can > 0 or f.snd_wnd == 0 or flight == 0):
                    if f.tx_nxt == f.tx_una:
                        cc.rto_start_us = now32
                    if self.send_segment(f, f.tx_nxt, 0, True) == 0:
                        if f.flags & TAS_FF_FIN_SENT:
                            cc.cnt_rexmit += 1
                        f.flags |= TAS_FF_FIN_SENT | TAS_FF_FIN_OUT
                        sent += 1
                break
            if cc is not None and cc.pace_rate and self.now_us < cc.pace_next_us:
                # paced (docs/CC.md): not due yet; stays queued
                due = cc.pace_next_us
                self.st.paced_waits += 1
                break
            fin = bool(
                f.flags & TAS_FF_TX_FIN and f.tx_nxt + ln == f.tx_head and not f.flags & TAS_FF_FIN_ACKED
            )
            if f.tx_nxt == f.tx_una:
                cc.rto_start_us = now32
            if self.send_segment(f, f.tx_nxt, ln, fin) != 0:
                break
            if f.tx_nxt < f.tx_max:
                cc.cnt_rexmit += 1
            f.tx_nxt = (f.tx_nxt + ln) & M64
            if f.tx_nxt > f.tx_max:
                f.tx_max = f.tx_nxt
            if cc is not None:
                flight_now = (f.tx_nxt - f.tx_una) & M64
                if flight_now > cc.max_flight:
                    cc.max_flight = min(flight_now, M32)
                if cc.pace_rate:
                    base = cc.pace_next_us
                    if base + TAS_CC_PACE_SLACK_US < self.now_us:
                        base = self.now_us - TAS_CC_PACE_SLACK_US
                    cc.pace_next_us = (base + ln * 1_000_000 // cc.pace_rate) & M64
            if fin:
                f.flags |= TAS_FF_FIN_SENT | TAS_FF_FIN_OUT
            sent += 1
        w = st.tx_bytes - wire0
        return sent, sent >= budget or w >= bbudget, due, w

    def tx_run(self, budget: int) -> int:
        """fp_tx_run: deficit round robin in bytes across contexts, round
        robin across a context's flows; returns segments sent."""
        segs = 0
        nbytes = 0
        first_due = 0
        idle = 0
        ring = self.ring
        if len(ring) >= 2:
            self.tx_shared_until_us = self.now_us + FP_TX_SHARED_US
        poll_bytes = FP_TX_POLL_BYTES_SHARED if self.now_us < self.tx_shared_until_us else FP_TX_POLL_BYTES
        while ring and idle < len(ring) and segs < budget and nbytes < poll_bytes:
            s = ring[0]
            c = self.txc[s]
            if not c.in_turn:
                c.in_turn = True
                c.deficit += FP_TX_QUANTUM
            owed = c.deficit <= 0
            stuck = 0
            fifo = c.fifo
            while fifo and c.deficit > 0 and stuck < len(fifo) and segs < budget and nbytes < poll_bytes:
                fid = fifo.popleft()
                self.txq_slot[fid] = 0
                f = self.flows + fid
                sent = w = due = 0
                lib.tas_flow_lock(f)
                f.flags &= ~TAS_FF_IN_TXQ & M32
                if f.status == TAS_FLOW_ACTIVE:
                    b = min(budget - segs, FP_SEGS_PER_VISIT)
                    cap = min(c.deficit, FP_TX_VISIT_BYTES, poll_bytes - nbytes)
                    sent, more, due, w = self.tx_flow(f, b, cap)
                    if due and (not first_due or due < first_due):
                        first_due = due
                    if more or due:
                        self.txq_push(fid, f)
                lib.tas_flow_unlock(f)
                segs += sent
                nbytes += w
                c.deficit -= w
                if self.txq_slot[fid] == s + 1 and (due or not w):
                    stuck += 1  # waiting (paced), back in this FIFO
                elif w:
                    stuck = 0
            if fifo and c.deficit > 0 and stuck < len(fifo):
                break  # the poll's budget ran out mid-turn: resume it next poll
            c.in_turn = False
            ring.popleft()
            if not fifo:
                c.deficit = 0
                c.in_ring = False
                continue
            if c.deficit > 0 and not owed:
                c.deficit = 0  # what is left only waits (paced): no credit kept
                idle += 1
            else:
                idle = 0
            ring.append(s)
        self.st.pace_due_us = first_due
        return segs
