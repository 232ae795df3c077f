"""A test bench for one fast-path engine (C ``struct tas_fp`` or the Python
twin ``flextcp.fastpath_py.PyFastPath``) without a TAP device or a slow path.

:class:`FPHarness` builds everything the engine attaches to, the way the
stack does: a stack region (``stack_layout``: flow table, KRX/KTX rings,
counters), context regions laid out by ``ctx_layout`` with their ATX/ARX
rings initialised and the header filled in like kernel_slowpath/server.py
``Context``, appflow blocks and flow records installed like
kernel_slowpath/engine.py ``_new_conn``/``_install``.  The "TAP" is one end
of a non-blocking ``socketpair(AF_UNIX, SOCK_SEQPACKET)``: each write is one
frame and each read returns one frame.

The harness then plays the peer (frames built with nicemu.wire.build_tcp),
the application (tx/rx buffer copies plus ATX updates, ARX draining) and the
slow path (KTX entries, sp_flow.c operations, KRX draining), calls
``poll(now)``, and takes snapshots of all the shared state for comparing two
engines.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field

from flextcp.fastpath_py import PyFastPath, PyFPConfig
from flextcp.flowtab import FlowTable
from flextcp.layout import TAS_ARX_ENTRY_SIZE, TAS_ATX_ENTRY_SIZE, ctx_layout
from flextcp.native import ffi, lib
from flextcp.ring import Ring
from flextcp.shm import Region
from flextcp.stackmem import stack_layout
from nicemu.wire import TAS_OPT_SACK, TAS_OPT_TS, TAS_TCP_ACK, Segment, build_tcp

M32 = 0xFFFFFFFF
ATX = struct.Struct("<IHHQQQ")
ARX = struct.Struct("<IHHQ")
KQ_HDR = struct.Struct("<HHIIIQQ")
KQ_ENTRY = 2048

LOCAL_IP = 0xC6120001  # 198.18.0.1
REMOTE_IP = 0xC6120002  # 198.18.0.2
LOCAL_MAC = bytes.fromhex("020000000001")
REMOTE_MAC = bytes.fromhex("020000000002")
FLOW_SIZE = 128  # sizeof(struct tas_flow)


def _align(v: int, a: int) -> int:
    return (v + a - 1) & ~(a - 1)


@dataclass
class FlowSpec:
    """What the slow path negotiated for one flow (engine._install arguments)."""

    rx_len: int = 2048
    tx_len: int = 2048
    mss: int = 536
    ts: bool = True
    sack: bool = True
    snd_wscale: int = 0
    rcv_wscale: int = 0
    rx_seq0: int = 0xFFFFF000  # IRS + 1: near the wrap on purpose
    tx_seq0: int = 0x7FFFFF00  # ISS + 1
    snd_wnd: int = 8192  # scaled
    ts_recent: int = 1000
    local_port: int = 80
    remote_port: int = 40000
    gen: int = 1


@dataclass
class Flow:
    fid: int
    ctx: Ctx
    spec: FlowSpec
    appflow_off: int
    rx_off: int
    tx_off: int
    # the application's private positions
    app_tx_head: int = 0
    app_rx_tail: int = 0


@dataclass
class Ctx:
    ctx_id: int
    region: Region
    evfd: int
    atx: Ring  # app side: producer
    arx: Ring  # app side: consumer
    heap_next: int
    flows: list[int] = field(default_factory=list)


class CEngine:
    """The C engine behind the same small interface as PyFastPath."""

    def __init__(self, cfg: PyFPConfig) -> None:
        c = ffi.new("struct tas_fp_config *")
        c.core, c.n_cores, c.tap_fd, c.sp_evfd = cfg.core, cfg.n_cores, cfg.tap_fd, cfg.sp_evfd
        c.local_ip = cfg.local_ip
        c.local_mac = list(cfg.local_mac)
        c.ft_mem = cfg.stack.ptr(cfg.ft_off)
        c.ft_len = cfg.ft_len
        c.n_flows = cfg.n_flows
        c.kq_slots = cfg.kq_slots
        c.krx_mem = cfg.stack.ptr(cfg.krx_off)
        c.ktx_mem = cfg.stack.ptr(cfg.ktx_off)
        c.stats = cfg.stack.cast("struct tas_fp_stats", cfg.stats_off)
        c.rx_batch = cfg.rx_batch
        c.tx_batch = cfg.tx_batch
        self._cfg = c
        self.fp = lib.tas_fp_create(c)
        if self.fp == ffi.NULL:
            raise ValueError("tas_fp_create failed")

    def add_ctx(self, ctx_id, region, length, evfd, atx_slots, arx_slots) -> int:
        return lib.tas_fp_add_ctx(self.fp, ctx_id, region.addr, length, evfd, atx_slots, arx_slots)

    def remove_ctx(self, ctx_id) -> int:
        return lib.tas_fp_remove_ctx(self.fp, ctx_id)

    def poll(self, now_us: int) -> int:
        return lib.tas_fp_poll(self.fp, now_us)

    def set_armed(self, armed: int) -> None:
        lib.tas_fp_set_armed(self.fp, armed)

    def destroy(self) -> None:
        if self.fp is not None:
            lib.tas_fp_destroy(self.fp)
            self.fp = None


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _read_evfd(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class FPHarness:
    def __init__(
        self,
        pure: bool,
        *,
        n_flows: int = 4,
        kq_slots: int = 8,
        atx_slots: int = 16,
        arx_slots: int = 8,
        rx_batch: int = 32,
        tx_batch: int = 64,
        n_cores: int = 1,
        core: int = 0,
    ) -> None:
        self.pure = pure
        self.n_flows = n_flows
        self.kq_slots = kq_slots
        self.atx_slots = atx_slots
        self.arx_slots = arx_slots
        self.n_cores = n_cores
        self.core = core
        self.lay = stack_layout(n_flows, n_cores, kq_slots)
        self.stack = Region.create(self.lay.size, "fp-harness-stack")
        self.ft = FlowTable.create(self.stack, self.lay.ft_off, n_flows)
        self.krx = Ring.create(self.stack, self.lay.krx_off[core], kq_slots, KQ_ENTRY, False)  # SP consumes
        self.ktx = Ring.create(self.stack, self.lay.ktx_off[core], kq_slots, KQ_ENTRY, True)  # SP produces
        self.stats = self.stack.cast("struct tas_fp_stats", self.lay.stats_off[core])
        self.tap_fp, self.tap_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.tap_fp, self.tap_peer):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sp_evfd = _eventfd()
        cfg = PyFPConfig(
            core=core,
            n_cores=n_cores,
            tap_fd=self.tap_fp.fileno(),
            sp_evfd=self.sp_evfd,
            local_ip=LOCAL_IP,
            local_mac=LOCAL_MAC,
            stack=self.stack,
            ft_off=self.lay.ft_off,
            ft_len=self.lay.ft_len,
            n_flows=n_flows,
            kq_slots=kq_slots,
            krx_off=self.lay.krx_off[core],
            ktx_off=self.lay.ktx_off[core],
            stats_off=self.lay.stats_off[core],
            rx_batch=rx_batch,
            tx_batch=tx_batch,
        )
        self.engine = PyFastPath(cfg) if pure else CEngine(cfg)
        self.ctxs: dict[int, Ctx] = {}
        self.flows: dict[int, Flow] = {}
        self.now = 5_000_000_000  # µs; arbitrary, far from 0
        self.last_work = 0

    # -- setup: contexts and flows (server.Context / engine._install) -------
    def add_ctx(self, ctx_id: int, region_len: int = 1 << 16) -> Ctx:
        lay = ctx_layout(self.n_cores, self.atx_slots, self.arx_slots)
        region = Region.create(region_len, f"fp-harness-ctx{ctx_id}")
        for c in range(self.n_cores):
            assert lib.tas_ring_init(region.ptr(lay.atx_off[c]), self.atx_slots, TAS_ATX_ENTRY_SIZE) == 0
            assert lib.tas_ring_init(region.ptr(lay.arx_off[c]), self.arx_slots, TAS_ARX_ENTRY_SIZE) == 0
        hdr = region.cast("struct tas_ctx_hdr")
        hdr.abi_version = lib.TAS_ABI_VERSION
        hdr.region_len = region_len
        hdr.ctx_id = ctx_id
        hdr.n_cores = self.n_cores
        hdr.atx_slots = self.atx_slots
        hdr.arx_slots = self.arx_slots
        hdr.heap_off = lay.heap_off
        hdr.magic = lib.TAS_CTX_MAGIC
        ctx = Ctx(
            ctx_id=ctx_id,
            region=region,
            evfd=_eventfd(),
            atx=Ring.attach(region, lay.atx_off[self.core], self.atx_slots, TAS_ATX_ENTRY_SIZE, True),
            arx=Ring.attach(region, lay.arx_off[self.core], self.arx_slots, TAS_ARX_ENTRY_SIZE, False),
            heap_next=lay.heap_off,
        )
        rc = self.engine.add_ctx(ctx_id, region, region_len, ctx.evfd, self.atx_slots, self.arx_slots)
        assert rc == 0, "add_ctx failed"
        self.ctxs[ctx_id] = ctx
        return ctx

    def _alloc(self, ctx: Ctx, size: int) -> int:
        off = _align(ctx.heap_next, max(size, 64))
        ctx.heap_next = off + size
        assert ctx.heap_next <= ctx.region.size
        return off

    def install_flow(self, fid: int, ctx: Ctx, spec: FlowSpec) -> Flow:
        af_off = self._alloc(ctx, 64)
        rx_off = self._alloc(ctx, spec.rx_len)
        tx_off = self._alloc(ctx, spec.tx_len)
        # engine._new_conn: the appflow block
        af = ctx.region.cast("struct tas_appflow", af_off)
        ffi.memmove(af, b"\0" * 64, 64)
        af.flow_id, af.gen = fid, spec.gen
        af.rx_off, af.rx_len, af.tx_off, af.tx_len = rx_off, spec.rx_len, tx_off, spec.tx_len
        # engine._install: the flow record
        f, x = self.ft.flow(fid), self.ft.side(fid)  # record and side record
        ffi.memmove(f, b"\0" * FLOW_SIZE, FLOW_SIZE)
        ffi.memmove(x, b"\0" * ffi.sizeof("struct tas_flow_cc"), ffi.sizeof("struct tas_flow_cc"))
        f.gen = spec.gen
        f.status = lib.TAS_FLOW_FREE
        flags = lib.TAS_FF_NODELAY
        if spec.ts:
            flags |= lib.TAS_FF_TS
            f.ts_recent = spec.ts_recent
        if spec.sack:
            flags |= lib.TAS_FF_SACK
        if spec.snd_wscale or spec.rcv_wscale:
            flags |= lib.TAS_FF_WSCALE
        f.flags = flags
        f.ctx_id = ctx.ctx_id
        f.local_ip, f.remote_ip = LOCAL_IP, REMOTE_IP
        f.local_port, f.remote_port = spec.local_port, spec.remote_port
        f.remote_mac = list(REMOTE_MAC)
        f.snd_wscale, f.rcv_wscale = spec.snd_wscale, spec.rcv_wscale
        f.mss = spec.mss
        x.core = self.core
        f.rx_off, f.rx_len, f.tx_off, f.tx_len = rx_off, spec.rx_len, tx_off, spec.tx_len
        f.appflow_off = af_off
        f.rx_seq0 = spec.rx_seq0 & M32
        f.tx_seq0 = spec.tx_seq0 & M32
        x.rx_adv = spec.rx_len
        f.snd_wnd = spec.snd_wnd
        x.snd_wl1, x.snd_wl2 = (spec.rx_seq0 - 1) & M32, spec.tx_seq0 & M32
        f.cwnd = 10 * spec.mss
        x.ssthresh = 0x7FFFFFFF
        x.rto_us = 1_000_000
        x.rto_start_us = self.now & M32
        f.status = lib.TAS_FLOW_ACTIVE
        assert self.ft.insert(fid) == 0
        fl = Flow(fid, ctx, spec, af_off, rx_off, tx_off)
        self.flows[fid] = fl
        ctx.flows.append(fid)
        return fl

    # -- views ---------------------------------------------------------------
    def flow(self, fid: int):
        return self.ft.flow(fid)

    def side(self, fid: int):
        """The flow's side record (struct tas_flow_cc)."""
        return self.ft.side(fid)

    def appflow(self, fid: int):
        fl = self.flows[fid]
        return fl.ctx.region.cast("struct tas_appflow", fl.appflow_off)

    def rx_bytes(self, fid: int, pos: int, n: int) -> bytes:
        """n bytes of the rx stream from absolute position pos (wrapping)."""
        fl = self.flows[fid]
        ln = fl.spec.rx_len
        mv = fl.ctx.region.view(fl.rx_off, ln)
        try:
            return bytes(mv[(pos + i) & (ln - 1)] for i in range(n))
        finally:
            mv.release()

    def snd_una(self, fid: int) -> int:
        f = self.flow(fid)
        return (f.tx_seq0 + f.tx_una) & M32

    def snd_max(self, fid: int) -> int:
        f = self.flow(fid)
        return (f.tx_seq0 + f.tx_max + (1 if f.flags & lib.TAS_FF_FIN_SENT else 0)) & M32

    def rcv_nxt(self, fid: int) -> int:
        f = self.flow(fid)
        return (f.rx_seq0 + f.rx_head + (1 if f.flags & lib.TAS_FF_RX_FIN else 0)) & M32

    # -- the peer --------------------------------------------------------------
    def peer_frame(
        self,
        fid: int,
        *,
        seq: int,
        ack: int,
        payload: bytes = b"",
        flags: int = TAS_TCP_ACK,
        win: int = 0xFFFF,
        tsval: int | None = None,
        tsecr: int = 0,
        sport: int | None = None,
        dport: int | None = None,
        dst_mac: bytes = LOCAL_MAC,
        dst_ip: int = LOCAL_IP,
        sack: list[tuple[int, int]] | None = None,
    ) -> bytes:
        """A frame from the peer; ``sack``: SACK blocks (start, end) as
        sequence numbers (at most 4; 3 fit next to timestamps)."""
        spec = self.flows[fid].spec
        s = Segment(
            src_mac=REMOTE_MAC,
            dst_mac=dst_mac,
            src_ip=REMOTE_IP,
            dst_ip=dst_ip,
            src_port=spec.remote_port if sport is None else sport,
            dst_port=spec.local_port if dport is None else dport,
            seq=seq & M32,
            ack=ack & M32,
            win=win,
            flags=flags,
        )
        if tsval is not None:
            s.opts |= TAS_OPT_TS
            s.tsval = tsval & M32
            s.tsecr = tsecr & M32
        if sack:
            s.opts |= TAS_OPT_SACK
            s.n_sack = len(sack)
            s.sack_start = [a & M32 for a, _ in sack] + [0] * (4 - len(sack))
            s.sack_end = [b & M32 for _, b in sack] + [0] * (4 - len(sack))
        return build_tcp(s, payload)

    def inject(self, frame: bytes) -> None:
        self.tap_peer.send(frame)

    def frames(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.tap_peer.recv(4096))
            except BlockingIOError:
                return out

    # -- the application -------------------------------------------------------
    def post_atx(self, ctx: Ctx, flow_id: int, gen: int, kind: int, rx_tail: int, tx_head: int) -> int:
        return ctx.atx.enqueue_n(ATX.pack(flow_id & M32, gen & 0xFFFF, kind, rx_tail, tx_head, 0), 1)

    def app_update(self, fid: int) -> int:
        fl = self.flows[fid]
        return self.post_atx(fl.ctx, fid, fl.spec.gen, lib.TAS_ATX_UPDATE, fl.app_rx_tail, fl.app_tx_head)

    def app_write(self, fid: int, data: bytes) -> int:
        """Copy data into the tx buffer (as much as fits) and post an update."""
        fl = self.flows[fid]
        ln = fl.spec.tx_len
        free = ln - (fl.app_tx_head - self.appflow(fid).tx_acked)
        data = data[: max(0, free)]
        mv = fl.ctx.region.view(fl.tx_off, ln)
        try:
            for i, b in enumerate(data):
                mv[(fl.app_tx_head + i) & (ln - 1)] = b
        finally:
            mv.release()
        fl.app_tx_head += len(data)
        self.app_update(fid)
        return len(data)

    def app_read(self, fid: int, n: int) -> bytes:
        fl = self.flows[fid]
        n = max(0, min(n, self.appflow(fid).rx_head - fl.app_rx_tail))
        data = self.rx_bytes(fid, fl.app_rx_tail, n)
        fl.app_rx_tail += n
        self.app_update(fid)
        return data

    def drain_arx(self, ctx: Ctx) -> list[tuple[int, int, int, int]]:
        raw = ctx.arx.dequeue_n(1 << 16)
        return [ARX.unpack_from(raw, i) for i in range(0, len(raw), ARX.size)]

    def set_app_armed(self, ctx: Ctx, armed: int) -> None:
        ctx.region.cast("struct tas_ctx_hdr").app_armed = armed

    # -- the slow path -----------------------------------------------------------
    def drain_krx(self) -> list[tuple[tuple, bytes]]:
        """KRX entries as (header fields, frame bytes).  Only data[0:len] is
        defined (the C leaves the rest of the slot uninitialised)."""
        raw = self.krx.dequeue_n(1 << 16)
        out = []
        for i in range(0, len(raw), KQ_ENTRY):
            hdr = KQ_HDR.unpack_from(raw, i)
            out.append((hdr, raw[i + 32 : i + 32 + hdr[1]] if hdr[0] == lib.TAS_KRX_PACKET else b""))
        return out

    def post_ktx(self, kind: int, flow_id: int = 0, data: bytes = b"") -> int:
        slot = bytearray(KQ_ENTRY)
        KQ_HDR.pack_into(slot, 0, kind, len(data) & 0xFFFF, flow_id, 0, 0, 0, 0)
        slot[32 : 32 + len(data)] = data[: KQ_ENTRY - 32]
        return self.ktx.enqueue_n(bytes(slot), 1)

    # -- driving ---------------------------------------------------------------
    def poll(self, now: int | None = None) -> tuple[int, list[bytes]]:
        if now is not None:
            self.now = now
        self.last_work = self.engine.poll(self.now)
        return self.last_work, self.frames()

    def set_armed(self, armed: int) -> None:
        self.engine.set_armed(armed)

    def snapshot(self) -> dict:
        """All shared state the engine writes (flow records without the lock
        word, buffers, appflow blocks, ring indices, counters, doorbells)."""
        snap: dict = {}
        for fid in range(self.n_flows):
            f = self.ft.flow(fid)
            snap[f"flow{fid}"] = bytes(ffi.buffer(f, FLOW_SIZE))[4:]
        for fid, fl in self.flows.items():
            mv = fl.ctx.region.view()
            try:
                snap[f"rxbuf{fid}"] = bytes(mv[fl.rx_off : fl.rx_off + fl.spec.rx_len])
                snap[f"af{fid}"] = bytes(mv[fl.appflow_off : fl.appflow_off + 64])
            finally:
                mv.release()
        for cid, ctx in self.ctxs.items():
            mv = ctx.region.view()
            try:
                snap[f"ctxhdr{cid}"] = bytes(mv[:192])
                snap[f"atxhdr{cid}"] = bytes(mv[ctx.atx.offset : ctx.atx.offset + 192])
                snap[f"arxhdr{cid}"] = bytes(mv[ctx.arx.offset : ctx.arx.offset + 192])
            finally:
                mv.release()
            snap[f"evfd{cid}"] = _read_evfd(ctx.evfd)
        mv = self.stack.view()
        try:
            snap["krxhdr"] = bytes(mv[self.krx.offset : self.krx.offset + 192])
            snap["ktxhdr"] = bytes(mv[self.ktx.offset : self.ktx.offset + 192])
        finally:
            mv.release()
        snap["stats"] = bytes(ffi.buffer(self.stats, ffi.sizeof("struct tas_fp_stats")))
        snap["sp_evfd"] = _read_evfd(self.sp_evfd)
        cc = lib.tas_cc_table(self.stack.ptr(self.lay.ft_off), self.lay.ft_len, self.n_flows)
        if cc != ffi.NULL:
            # the side table: CC counters and the sender's SACK scoreboard
            snap["cc"] = bytes(ffi.buffer(cc, self.n_flows * ffi.sizeof("struct tas_flow_cc")))
        return snap

    def stat(self, name: str) -> int:
        return int(getattr(self.stats, name))

    def close(self) -> None:
        self.engine.destroy()
        for ctx in self.ctxs.values():
            ctx.region.close()
            os.close(ctx.evfd)
        self.ctxs.clear()
        self.stack.close()
        os.close(self.sp_evfd)
        self.tap_fp.close()
        self.tap_peer.close()

    def __enter__(self) -> FPHarness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_bytes(pos: int, n: int, salt: int = 0) -> bytes:
    """Deterministic content of a byte stream at absolute positions pos..pos+n."""
    return bytes(((p * 131 + 7 + salt) >> 1) & 0xFF for p in range(pos, pos + n))


def fastpath_on(h: FPHarness, poll_us: int):
    """flextcp.loop.FastPath on a harness' regions and TAP pair (the
    harness' own engine destroyed): (the FastPath, the slow path's end of
    its control socket, a clean-up function)."""
    import argparse

    from flextcp import loop

    h.engine.destroy()
    ctl_sp, ctl_fp = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fp_evfd = os.eventfd(0, os.EFD_NONBLOCK)
    a = argparse.Namespace(
        core=0, n_cores=1, stack_fd=os.dup(h.stack.fd), stack_size=h.stack.size, n_flows=h.n_flows,
        kq_slots=h.kq_slots, tap_fd=h.tap_fp.fileno(), sp_evfd=h.sp_evfd, fp_evfd=fp_evfd,
        ctl_fd=ctl_fp.detach(), ip=0xC6120001, cpu=0, poll_us=poll_us, mac=LOCAL_MAC.hex(":"),
    )  # fmt: skip
    fpath = loop.FastPath(a)

    def cleanup():
        fpath.close()
        ctl_sp.close()
        fpath.ctl.close()
        os.close(fp_evfd)
        os.close(a.stack_fd)

    return fpath, ctl_sp, cleanup
