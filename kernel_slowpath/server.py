"""The slow path's control server (docs/CONTROL.md).

Listens on ``<state_dir>/control.sock`` (SOCK_SEQPACKET), one connection per
application.  Everything runs on the asyncio loop thread: requests are read
in an ``add_reader`` callback and handled synchronously (the engine's calls
are synchronous); replies and events go through a per-app output queue that
falls back to ``add_writer`` when the socket is full.  The engine calls back
into :class:`Context` (alloc/free/event) on the same thread.

Nothing one application sends can crash the server: malformed requests get
an EINVAL error reply, engine ``OSError``\\s become error replies with their
errno, unexpected exceptions are logged and become EIO.  When an app's
socket reaches EOF (it closed it, or the process died) all its contexts are
torn down: ``engine.context_gone``, ``fpm.remove_ctx``, memfd and eventfd
closed, ids recycled.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from flextcp import ctlproto
from flextcp.ctlproto import FlowInfo, ProtocolError
from flextcp.layout import TAS_ARX_ENTRY_SIZE, TAS_ATX_ENTRY_SIZE, ctx_layout
from flextcp.native import lib
from flextcp.shm import Region
from kernel_slowpath.bufalloc import BuddyAllocator, BufAllocError, DoubleFreeError

log = logging.getLogger("tas.control")

TAS_ABI_VERSION = 1
TAS_CTX_MAGIC = 0x54415343
TAS_MAX_CTX = 4096
MIN_BUF = 4096
MAX_BUF = 16 << 20
DEFAULT_BUF = 64 << 10
# A peer that stops reading its socket is dropped once this many messages wait.
MAX_OUTQ = 16384
# Messages waiting for an app beyond which its listeners take no new
# connections (SYNs dropped, as Linux does when the accept queue is full), so
# a busy but live app is slowed down instead of dropped at max_outq.
ACCEPT_BACKPRESSURE = 2048
_UCRED = struct.Struct("3i")
PRIVILEGED_PORT_MAX = 1023
CAP_NET_BIND_SERVICE = 10
# per-app limits (issue 6, isolation): `tas start --app-max-flows/--app-max-buf-mb/--app-syn-backlog`
DEFAULT_APP_BUF = 1 << 30
DEFAULT_APP_SYN_BACKLOG = 1024
FLOW_BLOCK = 64  # the appflow block every flow takes besides its buffers
# Blocks of closed flows a context keeps for its next flows (per block size,
# at most SPARE_PER_SIZE, in all at most 1/16 of its heap and SPARE_BYTES):
# short connections then skip the buddy allocator's split and merge (~30 us
# a connection).  Spares count as free (limits, heap_used, stats); a failed
# allocation gives them back to the heap first.
SPARE_PER_SIZE = 16
SPARE_BYTES = 4 << 20


@dataclass(frozen=True)
class AppLimits:
    """What one app may hold at once; 0 = no limit.  ``flows``: open flows
    (connecting, established or closing but not yet closed by the app, and
    connections waiting in its accept queues); ``buf_bytes``: flow buffer
    memory (appflow blocks + rx + tx buffers, as allocated, so powers of
    two); ``syn_backlog``: half-open connections over all its listeners (and
    the largest backlog a listen may ask for).  Set at `tas start`, lowered
    per app at registration (``hello``), never raised."""

    flows: int = 0
    buf_bytes: int = DEFAULT_APP_BUF
    syn_backlog: int = DEFAULT_APP_SYN_BACKLOG

    # hello field -> (attribute, tas start flag) for error messages
    FIELDS: ClassVar[dict] = {"max_flows": ("flows", "--app-max-flows"), "max_buf_bytes": ("buf_bytes", "--app-max-buf-mb"),
              "syn_backlog": ("syn_backlog", "--app-syn-backlog")}

    def lowered(self, asked: dict) -> AppLimits:
        """These limits lowered to what an app asked for at registration
        (0/absent: the stack's); asking for more raises OSError(EPERM)."""
        vals = {}
        for field_name, (attr, flag) in self.FIELDS.items():
            cap, want = getattr(self, attr), asked.get(field_name) or 0
            if want and cap and want > cap:
                raise OSError(errno.EPERM, f"{field_name} {want} is above this stack's per-app limit {cap} "
                                           f"(tas start {flag})")
            vals[attr] = want or cap
        return AppLimits(**vals)

    def to_dict(self) -> dict:
        return {"max_flows": self.flows, "max_buf_bytes": self.buf_bytes, "syn_backlog": self.syn_backlog}


def read_cap_eff(pid: int) -> int:
    """The effective capability set of pid (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


class Engine(Protocol):  # the seam documented in docs/CONTROL.md
    local_ip: str

    def listen(self, ctx: Context, port: int, backlog: int, reuseaddr: bool) -> int: ...
    def listen_close(self, ctx: Context, port: int) -> None: ...
    def connect(
        self, ctx: Context, ip: str, port: int, local_port: int, rx_len: int, tx_len: int
    ) -> dict: ...
    def shutdown(self, ctx: Context, flow: int, tx_head: int) -> None: ...
    def close(self, ctx: Context, flow: int, tx_head: int, rx_tail: int) -> None: ...
    def abort(self, ctx: Context, flow: int) -> None: ...
    def context_gone(self, ctx: Context) -> None: ...
    def stats(self) -> dict: ...
    def flows(self) -> list[dict]: ...


class FastPathManager(Protocol):
    n_cores: int
    evfds: list[int]

    def add_ctx(self, ctx_id: int, memfd: int, app_evfd: int, atx_slots: int, arx_slots: int) -> None: ...
    def remove_ctx(self, ctx_id: int) -> None: ...


class IdPool:
    """Small integer ids, lowest free first (recycled through a heap)."""

    def __init__(self, limit: int, first: int = 0) -> None:
        self.limit = limit
        self._next = first
        self._free: list[int] = []

    def get(self) -> int | None:
        if self._free:
            return heapq.heappop(self._free)
        if self._next >= self.limit:
            return None
        self._next += 1
        return self._next - 1

    def put(self, i: int) -> None:
        heapq.heappush(self._free, i)

    def in_use(self) -> int:
        return self._next - len(self._free)


def _round_buf(n: int, default: int) -> int:
    if n == 0:
        return default
    size = max(MIN_BUF, 1 << (n - 1).bit_length())
    if size > MAX_BUF:
        raise OSError(errno.EINVAL, f"buffer size {n} above {MAX_BUF}")
    return size


def _pow2_block(n: int) -> int:
    """The buddy block size alloc(n) takes (min_block 64)."""
    return max(64, 1 << (max(1, n) - 1).bit_length())


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class Context:
    """An application context: a shared region (header, per-core rings, heap)
    plus the app's eventfd.  The engine allocates flow state with
    :meth:`alloc`/:meth:`free` and notifies the app with :meth:`event`.

    Attributes: ``ctx_id``, ``app``, ``region`` (flextcp.shm.Region),
    ``heap`` (BuddyAllocator), ``evfd``, ``layout``, ``n_cores``,
    ``atx_slots``, ``arx_slots``, ``rx_buf``/``tx_buf`` (default flow buffer
    sizes, powers of two), ``flows`` (ids of the app's open flows),
    ``listeners`` (listening ports)."""

    def __init__(
        self,
        server: ControlServer,
        app: App,
        ctx_id: int,
        evfd: int,
        region_len: int,
        n_cores: int,
        atx_slots: int,
        arx_slots: int,
        rx_buf: int,
        tx_buf: int,
    ) -> None:
        self.server = server
        self.app = app
        self.ctx_id = ctx_id
        self.evfd = evfd
        self.n_cores = n_cores
        self.atx_slots = atx_slots
        self.arx_slots = arx_slots
        self.rx_buf = rx_buf
        self.tx_buf = tx_buf
        self.flows: set[int] = set()
        self.listeners: set[int] = set()
        self.listen_cc: dict[int, str] = {}  # listening port -> TCP_CONGESTION for accepted flows
        self.closed = False
        # app gone, but flows it closed cleanly still finish from this region
        self.orphaned = False
        self.on_drained: Callable[[], None] | None = None
        self.layout = ctx_layout(n_cores, atx_slots, arx_slots)
        if self.layout.heap_off >= region_len:
            raise OSError(errno.EINVAL, "region too small for its rings")
        self.region = Region.create(region_len, f"ctx{ctx_id}")
        try:
            for c in range(n_cores):
                if lib.tas_ring_init(self.region.ptr(self.layout.atx_off[c]), atx_slots, TAS_ATX_ENTRY_SIZE):
                    raise OSError(errno.EINVAL, "tas_ring_init failed")
                if lib.tas_ring_init(self.region.ptr(self.layout.arx_off[c]), arx_slots, TAS_ARX_ENTRY_SIZE):
                    raise OSError(errno.EINVAL, "tas_ring_init failed")
            hdr = self.region.cast("struct tas_ctx_hdr")
            hdr.abi_version = TAS_ABI_VERSION
            hdr.region_len = region_len
            hdr.ctx_id = ctx_id
            hdr.n_cores = n_cores
            hdr.atx_slots = atx_slots
            hdr.arx_slots = arx_slots
            hdr.heap_off = self.layout.heap_off
            hdr.magic = TAS_CTX_MAGIC  # last: a complete header
        except BaseException:
            self.region.close()
            raise
        self.heap = BuddyAllocator(self.layout.heap_off, region_len, min_block=64, max_block=MAX_BUF)
        self._unaccounted = False
        self._spare: dict[int, list[int]] = {}  # block size -> offsets of spare blocks (see SPARE_PER_SIZE)
        # (rx size, tx size) -> [(appflow, rx, tx)]: the three blocks of a closed
        # flow kept together (free_flow), for alloc_flow to hand out as they are
        self._spare_flows: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        self._spare_offs: set[int] = set()
        self._spare_bytes = 0
        self._spare_cap = min(SPARE_BYTES, self.heap.capacity // 16)

    @property
    def region_len(self) -> int:
        return self.region.size

    # -- engine callbacks -------------------------------------------------
    @property
    def heap_used(self) -> int:
        """Bytes of the heap held by flows (spare blocks not counted)."""
        return self.heap.used_bytes - self._spare_bytes

    @property
    def free_bytes(self) -> int:
        """Bytes of the heap not held by flows (spare blocks count as free)."""
        return self.heap.free_bytes + self._spare_bytes

    def alloc(self, nbytes: int) -> int | None:
        """Heap offset of a power-of-two block of at least nbytes, or None
        (heap full, context closing, or the app's buffer limit reached)."""
        if self.closed:
            return None
        app = self.app
        size = _pow2_block(nbytes)
        if app.limits.buf_bytes and app.buf_used + size > app.limits.buf_bytes:
            return None
        spare = self._spare.get(size)
        if spare:  # a block of a closed flow: no split
            off = spare.pop()
            self._spare_offs.discard(off)
            self._spare_bytes -= size
            app.buf_used += size
            return off
        off = self.heap.alloc(nbytes)
        if off is None and self._spare_bytes:
            self._release_spares()  # they may merge into what is asked for
            off = self.heap.alloc(nbytes)
        if off is not None:
            app.buf_used += size
        return off

    def free(self, off: int) -> None:
        """Return a block from :meth:`alloc` (raises on double/foreign free)."""
        if self.closed:
            return  # the whole region is going away
        if off in self._spare_offs:
            raise DoubleFreeError(f"offset {off} is not an allocated block (double free?)")
        try:
            size = self.heap.block_size(off)  # ForeignOffsetError if not a block offset
        except KeyError:
            raise DoubleFreeError(f"offset {off} is not an allocated block (double free?)") from None
        self.app.buf_used -= size
        spare = self._spare.setdefault(size, [])
        if len(spare) < SPARE_PER_SIZE and self._spare_bytes + size <= self._spare_cap:
            spare.append(off)
            self._spare_offs.add(off)
            self._spare_bytes += size
            return
        self.heap.free(off)

    def alloc_flow(self, rx_len: int, tx_len: int) -> list[int] | None:
        """One more flow for the engine: admit_flow(FLOW_BLOCK + rx_len +
        tx_len), then alloc(64), alloc(rx_len), alloc(tx_len), in one call:
        [appflow, rx, tx] offsets, or None (and nothing held) if the app's
        limits refuse or one of them cannot be had."""
        if self.closed:
            return None
        app = self.app
        rxs, txs = _pow2_block(rx_len), _pow2_block(tx_len)
        lim = app.limits
        if lim.flows and app.open_flows() >= lim.flows:  # App.admit
            return None
        need = FLOW_BLOCK + rxs + txs
        if lim.buf_bytes and app.buf_used + need > lim.buf_bytes:
            return None
        trio = self._spare_flows.get((rxs, txs))
        if trio:  # the blocks of a closed flow of the same sizes
            offs = trio.pop()
            so = self._spare_offs
            so.discard(offs[0])
            so.discard(offs[1])
            so.discard(offs[2])
            self._spare_bytes -= need
            app.buf_used += need
            return offs
        spares, offs = self._spare, []
        for size in (FLOW_BLOCK, rxs, txs):
            spare = spares.get(size)
            if spare:  # a block of a closed flow: no split
                off = spare.pop()
                self._spare_offs.discard(off)
                self._spare_bytes -= size
            else:
                off = self.heap.alloc(size)
                if off is None and self._spare_bytes:
                    self._release_spares()  # they may merge into what is asked for
                    off = self.heap.alloc(size)
                if off is None:
                    for o in offs:
                        self.free(o)
                    return None
            app.buf_used += size
            offs.append(off)
        return offs

    def free_flow(self, af: int, rx: int, tx: int) -> None:
        """free() of one flow's blocks (alloc_flow's) in one call: kept
        together as spares when there is room (see SPARE_PER_SIZE)."""
        if self.closed:
            return
        heap, app, spares, spare_offs = self.heap, self.app, self._spare, self._spare_offs
        size_of = heap.size_of
        sa, sr, st = size_of(af), size_of(rx), size_of(tx)
        # three distinct allocated blocks, none of them a spare already: kept
        # together if there is room (else, or anything amiss: one by one
        # below, with free()'s checks and errors)
        if (sa == FLOW_BLOCK and sr is not None and st is not None and af not in spare_offs
                and rx not in spare_offs and tx not in spare_offs and af != rx != tx != af):
            size = sa + sr + st
            trios = self._spare_flows.get((sr, st))
            if trios is None:
                trios = self._spare_flows[(sr, st)] = []
            if len(trios) < SPARE_PER_SIZE and self._spare_bytes + size <= self._spare_cap:
                app.buf_used -= size
                trios.append((af, rx, tx))
                spare_offs.add(af)
                spare_offs.add(rx)
                spare_offs.add(tx)
                self._spare_bytes += size
                return
        for off in (af, rx, tx):
            if off in spare_offs:
                raise DoubleFreeError(f"offset {off} is not an allocated block (double free?)")
            try:
                size = heap.block_size(off)  # ForeignOffsetError if not a block offset
            except KeyError:
                raise DoubleFreeError(f"offset {off} is not an allocated block (double free?)") from None
            app.buf_used -= size
            spare = spares.get(size)
            if spare is None:
                spare = spares[size] = []
            if len(spare) < SPARE_PER_SIZE and self._spare_bytes + size <= self._spare_cap:
                spare.append(off)
                spare_offs.add(off)
                self._spare_bytes += size
            else:
                heap.free(off)

    def _release_spares(self) -> None:
        for offs in self._spare.values():
            for off in offs:
                self.heap.free(off)
        for trios in self._spare_flows.values():
            for trio in trios:
                for off in trio:
                    self.heap.free(off)
        self._spare.clear()
        self._spare_flows.clear()
        self._spare_offs.clear()
        self._spare_bytes = 0

    # -- per-app limits (the engine asks through these; optional in its seam) --
    def admit_flow(self, need: int) -> bool:
        """May this context's app open one more flow taking ``need`` bytes of
        buffers (the engine's last check before it allocates one)?"""
        return self.app.admit(need, 0) is None

    def admit_passive(self, need: int, pending: int) -> bool:
        """A SYN for one of this context's listeners: is there room in the
        app's flow and buffer limits for it on top of ``pending`` half-open
        connections of the app?  A refusal is counted against the app."""
        why = self.app.admit(need, pending)
        if why is not None:
            self.app.count_limit(why)
            return False
        return True

    def syn_verdict(self, n_half_open: int, backlog: int, pending: int, need: int, no_slot: bool) -> int:
        """The engine's checks of a SYN for a listener of this context in one
        call (engine.py Engine._syn_verdict, the same order and counts): the
        listener has n_half_open of its backlog, the app `pending` half-open
        connections; a flow takes `need` bytes; `no_slot`: the flow table has
        no id left for one more.  0: answer it; 1: a SYN cookie (queue
        full); 2: drop it (the app is behind); 3: refuse it (RST)."""
        app = self.app
        behind = len(app._outq) + app._outq_events > ACCEPT_BACKPRESSURE  # backlogged()
        if not behind:
            if n_half_open >= backlog:
                return 1
            cap = app.limits.syn_backlog  # syn_full()
            if cap and pending >= cap:
                app.count_limit("syn")
                return 1
        if n_half_open >= backlog or behind:
            return 2
        if no_slot or self.free_bytes < need * (n_half_open + 1):
            return 3
        return 0 if self.admit_passive(need, pending) else 3

    def syn_full(self, pending: int) -> bool:
        """The app has ``pending`` half-open connections over all its
        listeners: at its SYN backlog limit (the engine then answers with
        SYN cookies, as for a full listener queue)?"""
        cap = self.app.limits.syn_backlog
        if cap and pending >= cap:
            self.app.count_limit("syn")
            return True
        return False

    def event(self, msg: dict) -> None:
        """Send an event to the app (``ctx`` is filled in) and ring its eventfd."""
        if self.closed or self.orphaned:
            return
        msg = dict(msg)
        msg["ctx"] = self.ctx_id
        ev = msg.get("ev")
        flow = msg.get("flow")
        if ev == "newconn" and isinstance(flow, FlowInfo):
            msg["flow"] = flow = flow.to_dict()
        if ev == "newconn" and isinstance(flow, dict):
            self.flows.add(flow["flow"])
            cc = self.listen_cc.get(msg.get("listener"))
            if cc:  # accepted connections inherit the listener's algorithm, as on Linux
                self.server._choose_cc(flow["flow"], cc)
        elif ev == "closed" and isinstance(flow, int):  # the engine freed it
            self.flows.discard(flow)
        self.app.send_event(self, msg)

    def ev_newconn(self, engine, conn, listener: int) -> None:
        """event() of a `newconn` for a connection the engine accepted on
        `listener` (an engine.Conn): to a binary-events app the record is
        packed straight from the connection, no dict."""
        if self.closed or self.orphaned:
            return
        fid = conn.fid
        self.flows.add(fid)
        if self.listen_cc:
            cc = self.listen_cc.get(listener)
            if cc:  # accepted connections inherit the listener's algorithm, as on Linux
                self.server._choose_cc(fid, cc)
        app = self.app
        if app.bin_events and app._deferred is None and self.server._loop is not None:
            if app.dead:
                return
            app.queue_record(self, _EV_NEWCONN.pack(
                1, conn.core, conn.gen, self.ctx_id, fid, listener, conn.appflow_off, conn.rx_off, conn.rx_len,
                conn.tx_off, conn.tx_len, engine.local_ip_int, conn.remote_ip, conn.local_port, conn.remote_port))
            return
        app.send_event(self, {"ev": "newconn", "ctx": self.ctx_id, "listener": listener,
                              "flow": engine.flow_info(conn)})

    def backlogged(self) -> bool:
        """True while the app is behind on its control socket: the engine
        then drops SYNs for this context's listeners."""
        return self.app.backlog() > ACCEPT_BACKPRESSURE

    def ring(self) -> None:
        if self.closed:
            return
        try:
            os.eventfd_write(self.evfd, 1)
        except OSError:
            pass

    def _destroy(self) -> None:
        self.closed = True
        if not self._unaccounted:  # the region goes: its blocks no longer count against the app
            self._unaccounted = True
            self.app.buf_used -= self.heap_used
        self.region.close()
        _close_quiet(self.evfd)
        self.evfd = -1

    def __repr__(self) -> str:
        return f"<Context {self.ctx_id} app={self.app.app_id}>"


_DEFERRABLE = frozenset({"close", "abort"})
# binary close records (ctlproto.encode_close / parse_closes): id, flow, tx_head, rx_tail
_CLOSE_REC = struct.Struct("<QIQQ")
_REQ_ID_MAX = ctlproto.ID[1]
# a `newconn` binary event record (ctlproto.encode_event's format, packed by
# Context.ev_newconn from the connection itself; tests/test_ctl_binary.py
# checks the two agree)
_EV_NEWCONN = struct.Struct("<BBHIIIQIIIIIIHH")
assert _EV_NEWCONN.size == ctlproto.EV_REC_SIZE


class App:
    """One connected application: ``app_id``, ``pid``, ``uid``, ``gid``,
    ``contexts`` (ctx_id -> Context)."""

    def __init__(self, server: ControlServer, sock: socket.socket, app_id: int, pid: int, uid: int, gid: int):
        self.server = server
        self.sock = sock
        self.app_id = app_id
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.contexts: dict[int, Context] = {}
        self.hello = False
        self.dead = False
        self.requests = 0
        self.errors = 0
        # read at accept (the pid cannot have been reused yet: its socket is open)
        self.cap_eff = read_cap_eff(pid)
        self._outq: deque[tuple[bytes, list[int]]] = deque()
        self._writing = False
        # binary events (hello bin_events=1): records gathered during one
        # loop pass, sent as one message, then each context rung once
        self.bin_events = False
        self._evbuf: list[bytes] = []
        self._ev_ctxs: dict[int, Context] = {}  # contexts to ring after the flush
        self._outq_events = 0  # event records in _outq (backlog counts events, not messages)
        self._deferred: list[tuple[Context, dict]] | None = None
        self.limits: AppLimits = server.app_limits  # lowered at hello if the app asks
        self.buf_used = 0  # flow buffer bytes allocated in its contexts (orphaned ones included)
        self.limit_hits = {"flows": 0, "buf": 0, "syn": 0}

    def __repr__(self) -> str:
        return f"<App {self.app_id} pid={self.pid} uid={self.uid}>"

    def open_flows(self) -> int:
        n = 0  # (asked on every SYN and every accepted flow: no generator)
        for c in self.contexts.values():
            n += len(c.flows)
        return n

    def admit(self, need: int, pending: int) -> str | None:
        """None if one more flow of ``need`` buffer bytes fits in the app's
        limits on top of ``pending`` flows being set up, else which limit
        ("flows" or "buf") it would cross."""
        lim = self.limits
        if lim.flows and self.open_flows() + pending >= lim.flows:
            return "flows"
        if lim.buf_bytes and self.buf_used + need * (pending + 1) > lim.buf_bytes:
            return "buf"
        return None

    def count_limit(self, which: str) -> None:
        self.limit_hits[which] += 1
        self.server.counters[f"app_limit_{which}"] += 1

    def check_connect(self, need: int) -> None:
        """Raise the error the app sees when a connect would cross its limits."""
        why = self.admit(need, 0)
        if why is None:
            return
        self.count_limit(why)
        if why == "flows":
            raise OSError(errno.EMFILE, f"per-app flow limit reached: {self.open_flows()} of "
                                        f"{self.limits.flows} flows open (tas start --app-max-flows)")
        raise OSError(errno.ENOBUFS, f"per-app buffer memory limit reached: {self.buf_used} of "
                                     f"{self.limits.buf_bytes} bytes in use, this flow needs {need} "
                                     f"(tas start --app-max-buf-mb)")

    def may_bind_privileged(self) -> bool:
        """Linux's rule for ports below 1024: uid 0 or CAP_NET_BIND_SERVICE."""
        return self.uid == 0 or bool(self.cap_eff >> CAP_NET_BIND_SERVICE & 1)

    def backlog(self) -> int:
        """Messages (events counted one by one) sent but waiting for room in
        the app's socket.  Events gathered in this pass do not count: the
        app cannot be behind on them (a pass taking thousands of handshakes
        would otherwise drop the SYNs after them)."""
        return len(self._outq) + self._outq_events

    # -- output -------------------------------------------------------------
    def send(self, msg: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
        if self.dead:
            return
        if self._evbuf:  # events emitted before this message go first
            self.flush_events()
        try:
            data = ctlproto.encode(msg)
        except ProtocolError as e:  # reply too large (e.g. huge flows list)
            data = ctlproto.encode(ctlproto.error_reply(msg.get("id"), e.errno, str(e)))
            fds = ()
        self._enqueue(data, list(fds))

    def _enqueue(self, data: bytes, fds: list[int]) -> None:
        self._outq.append((data, fds))
        if self.backlog() > self.server.max_outq:
            log.warning(
                "app %d (pid %d) does not read its control socket; dropping it", self.app_id, self.pid
            )
            self.server._schedule_gone(self)
            return
        if not self._writing:
            self._flush()

    def send_event(self, ctx: Context, msg: dict) -> None:
        if self._deferred is not None:  # inside a request: after its reply
            self._deferred.append((ctx, msg))
            return
        if self.bin_events and self.server._loop is not None:
            if self.dead:
                return
            try:
                rec = ctlproto.encode_event(msg)
            except ProtocolError:
                log.exception("app %d: event not encodable: %r", self.app_id, msg)
                return
            self.queue_record(ctx, rec)
            return
        self.send(msg)
        ctx.ring()

    def queue_record(self, ctx: Context, rec: bytes) -> None:
        """A binary event record for ctx, sent with the others of this loop
        pass (one message, each context's eventfd rung once) or at once when
        the batch is full."""
        self._evbuf.append(rec)
        self._ev_ctxs[ctx.ctx_id] = ctx
        if len(self._evbuf) >= ctlproto.EV_BATCH_MAX:  # a full message: send it now
            self.flush_events()
        else:
            self.server.events_pending(self)

    def flush_events(self) -> None:
        """Send the gathered event records (one message per EV_BATCH_MAX)
        and ring each context that got one."""
        buf, self._evbuf = self._evbuf, []
        ctxs, self._ev_ctxs = self._ev_ctxs, {}
        if self.dead or not buf:
            return
        if not self._outq and not self._writing and len(buf) <= ctlproto.EV_BATCH_MAX:
            # the common case, one message and nothing queued before it: sent
            # at once (what _enqueue and _flush do then, without the queue)
            data = ctlproto.BIN_EVENTS + b"".join(buf)
            try:
                self.sock.send(data)
            except BlockingIOError:
                self._outq_events += len(buf) - 1
                self._enqueue(data, [])
                if self.dead:
                    return
            except OSError as e:
                log.debug("app %d send failed: %s", self.app_id, e)
                self.server._schedule_gone(self)
                return
            for ctx in ctxs.values():
                ctx.ring()
            return
        step = ctlproto.EV_BATCH_MAX
        for i in range(0, len(buf), step):
            part = buf[i : i + step]
            self._outq_events += len(part) - 1  # the message itself counts once in _outq
            self._enqueue(ctlproto.BIN_EVENTS + b"".join(part), [])
            if self.dead:
                return
        if not self._writing:
            self._flush()
        for ctx in ctxs.values():
            ctx.ring()

    def _flush(self) -> None:
        while self._outq and not self.dead:
            data, fds = self._outq[0]
            try:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.send(data)
            except BlockingIOError:
                if not self._writing:
                    self._writing = True
                    self.server._loop.add_writer(self.sock.fileno(), self._flush)
                return
            except OSError as e:
                log.debug("app %d send failed: %s", self.app_id, e)
                self.server._schedule_gone(self)
                return
            self._outq.popleft()
            if data[:2] == ctlproto.BIN_EVENTS:
                self._outq_events -= len(data) // ctlproto.EV_REC_SIZE - 1
        if self._writing:
            self._writing = False
            try:
                self.server._loop.remove_writer(self.sock.fileno())
            except Exception:
                pass


class ControlServer:
    """Control-socket server.  ``apps``: app_id -> App (for stats)."""

    def __init__(
        self,
        state_dir: str | os.PathLike,
        engine: Engine,
        fpm: FastPathManager,
        local_ip: str,
        local_mac: str,
        region_len: int = 256 << 20,
        allowed_uids: set[int] | None = None,
        atx_slots: int = 1024,
        arx_slots: int = 2048,
        default_buf: int = DEFAULT_BUF,
        allow_privileged_ports: bool = False,
        strike_limit: int = 0,
        max_app_contexts: int = 64,
        max_outq: int = MAX_OUTQ,
        app_limits: AppLimits | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "control.sock"
        self.engine = engine
        self.fpm = fpm
        self.local_ip = local_ip
        self.local_mac = local_mac
        self.region_len = region_len
        self.allowed_uids = set(allowed_uids) if allowed_uids is not None else None
        self.allow_privileged_ports = allow_privileged_ports
        self.strike_limit = strike_limit
        # bounds one app's shared memory: max_app_contexts * region_len
        self.max_app_contexts = max_app_contexts
        # an app this far behind on its control socket is dropped
        self.max_outq = max_outq
        self.app_limits = app_limits if app_limits is not None else AppLimits()
        self.atx_slots = atx_slots
        self.arx_slots = arx_slots
        self.default_buf = _round_buf(default_buf, DEFAULT_BUF)
        ctx_layout(max(1, fpm.n_cores), atx_slots, arx_slots)  # validates
        self.apps: dict[int, App] = {}
        self.contexts: dict[int, Context] = {}
        self._app_ids = IdPool(1 << 31, first=1)
        self._ctx_ids = IdPool(TAS_MAX_CTX)
        self._lsock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters = {"accepted": 0, "refused": 0, "requests": 0, "errors": 0, "bad_requests": 0,
                         "apps_gone": 0, "hostile_disconnects": 0, "privileged_port_denied": 0,
                         "app_limit_flows": 0, "app_limit_buf": 0, "app_limit_syn": 0}
        self.strikes: dict[int, int] = {}  # ctx_id -> invalid queue entries reported by the FPs
        # close/abort requests nobody waits for (noreply), run after the I/O
        # callbacks of this loop iteration: connection set-up the fast path
        # reported at the same time (a SYN, the handshake's ACK) goes first.
        # Any other request of any app runs them first (request order holds).
        self._teardown: deque[tuple[App, ctlproto.Request]] = deque()
        self._teardown_handle = None
        # apps with binary event records waiting for the end of this loop pass
        self._ev_apps: dict[int, App] = {}
        self._ev_handle = None
        # set by the stack while it drains the exception rings: events wait
        # for its flush_events_now at the end of the drain (no call_soon)
        self.draining = False
        self._handlers = {
            "hello": self._op_hello,
            "ctx_create": self._op_ctx_create,
            "ctx_close": self._op_ctx_close,
            "listen": self._op_listen,
            "listen_close": self._op_listen_close,
            "bind": self._op_bind,
            "unbind": self._op_unbind,
            "connect": self._op_connect,
            "keepalive": self._op_keepalive,
            "set_cc": self._op_set_cc,
            "shutdown": self._op_shutdown,
            "close": self._op_close,
            "abort": self._op_abort,
            "stats": self._op_stats,
            "flows": self._op_flows,
        }

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.state_dir.is_dir():
            raise FileNotFoundError(errno.ENOENT, "state directory does not exist", str(self.state_dir))
        self._remove_stale_socket()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            s.bind(str(self.path))
            # the state dir (0700) keeps everyone but root out unless other
            # uids were allowed: then it is 0711 and they are checked with
            # SO_PEERCRED at accept
            os.chmod(self.path, 0o660 if self.allowed_uids is None else 0o666)
            s.listen(128)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._lsock = s
        self._loop.add_reader(s.fileno(), self._on_accept)
        log.info("control socket listening at %s", self.path)

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(errno.EEXIST, "not a socket", str(self.path))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(str(self.path))
        except OSError:
            os.unlink(self.path)  # stale: nobody listening
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, "another slow path is serving", str(self.path))

    async def stop(self) -> None:
        if self._lsock is not None:
            self._loop.remove_reader(self._lsock.fileno())
            self._lsock.close()
            self._lsock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        for app in list(self.apps.values()):
            self._app_gone(app, "server stopping")

    # -- connections ------------------------------------------------------------
    def _on_accept(self) -> None:
        for _ in range(64):
            try:
                sock, _addr = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed: %s", e)
                return
            try:
                pid, uid, gid = _UCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                )
            except OSError as e:
                log.warning("SO_PEERCRED failed: %s", e)
                sock.close()
                continue
            if self.allowed_uids is not None and uid not in self.allowed_uids:
                log.warning("refused app pid %d: uid %d not allowed", pid, uid)
                self.counters["refused"] += 1
                sock.close()
                continue
            app_id = self._app_ids.get()
            if app_id is None:
                sock.close()
                continue
            sock.setblocking(False)
            app = App(self, sock, app_id, pid, uid, gid)
            self.apps[app_id] = app
            self.counters["accepted"] += 1
            self._loop.add_reader(sock.fileno(), self._on_readable, app)
            log.info("app %d connected (pid %d, uid %d)", app_id, pid, uid)

    def _on_readable(self, app: App) -> None:
        for _ in range(64):  # bounded: be fair to other apps
            if app.dead:
                return
            try:
                data, fds = ctlproto.recv_msg(app.sock)
            except (BlockingIOError, InterruptedError):
                return
            except ProtocolError as e:
                self._bad_request(app, e)
                continue
            except OSError as e:  # ECONNRESET etc.
                self._app_gone(app, f"socket error: {e.strerror}")
                return
            if not data and not fds:
                self._app_gone(app, "disconnected")
                return
            if self._handle(app, data, fds):
                # binary closes (the message of a closing connection, mostly
                # alone in the socket): the loop calls again if more is
                # queued, no receive that finds nothing (~2.5 us each)
                return

    def _schedule_gone(self, app: App) -> None:
        if not app.dead:
            app.dead = True
            self._loop.call_soon(self._app_gone, app, "dropped")

    def _app_gone(self, app: App, why: str) -> None:
        if self.apps.get(app.app_id) is not app:
            return
        if self._teardown:  # its last closes: FINs, not resets
            self._run_teardown()
        app.dead = True
        try:
            self._loop.remove_reader(app.sock.fileno())
            if app._writing:
                self._loop.remove_writer(app.sock.fileno())
        except Exception:
            pass
        n = len(app.contexts)
        for ctx in list(app.contexts.values()):
            self._destroy_ctx(ctx)
        app.sock.close()
        del self.apps[app.app_id]
        self._app_ids.put(app.app_id)
        self.counters["apps_gone"] += 1
        log.info("app %d (pid %d) gone: %s; %d context(s) released", app.app_id, app.pid, why, n)

    def _destroy_ctx(self, ctx: Context) -> None:
        """The app closed the context or went away.  Flows it had closed
        cleanly keep their FIN exchange (and so their buffers in this
        region) until they finish; everything else is reset by the engine."""
        lingering = 0
        try:
            lingering = self.engine.context_gone(ctx) or 0
        except Exception:
            log.exception("engine.context_gone(%d) failed", ctx.ctx_id)
        ctx.app.contexts.pop(ctx.ctx_id, None)
        if lingering:
            ctx.orphaned = True
            ctx.on_drained = lambda: self._release_ctx(ctx)
            log.info("context %d: %d closed flow(s) still delivering; region kept until they finish",
                     ctx.ctx_id, lingering)
            return
        self._release_ctx(ctx)

    def _release_ctx(self, ctx: Context) -> None:
        if ctx.closed:
            return
        ctx.closed = True
        try:
            self.fpm.remove_ctx(ctx.ctx_id)
        except Exception:
            log.exception("fpm.remove_ctx(%d) failed", ctx.ctx_id)
        ctx._destroy()
        self.contexts.pop(ctx.ctx_id, None)
        self.strikes.pop(ctx.ctx_id, None)
        self._ctx_ids.put(ctx.ctx_id)

    def ctx_strikes(self, ctx_id: int, total: int) -> None:
        """A fast path reports that context ctx_id has put ``total`` hostile
        entries on its queue (out-of-range flow ids or positions, another
        context's flow, a corrupted ring index).  Past ``strike_limit`` (summed
        over cores) its app is disconnected: all its flows are reset, its
        memory is released, its control socket is closed."""
        ctx = self.contexts.get(ctx_id)
        if ctx is None or ctx.closed or ctx.orphaned:
            return
        # the report is cumulative per core; keep the largest seen per core
        # approximately by summing increments
        prev = self.strikes.get(ctx_id, 0)
        self.strikes[ctx_id] = max(prev, total)
        if self.strike_limit and self.strikes[ctx_id] >= self.strike_limit and not ctx.app.dead:
            app = ctx.app
            log.warning("app %d (pid %d): context %d made %d invalid queue entries: disconnecting it",
                        app.app_id, app.pid, ctx_id, self.strikes[ctx_id])
            self.counters["hostile_disconnects"] += 1
            self._app_gone(app, "hostile: invalid queue entries")

    # -- requests -----------------------------------------------------------
    def _bad_request(self, app: App, e: ProtocolError, fds: list[int] = ()) -> None:
        for fd in fds:
            _close_quiet(fd)
        self.counters["bad_requests"] += 1
        app.errors += 1
        log.debug("app %d: bad request: %s", app.app_id, e)
        app.send(ctlproto.error_reply(e.req_id, e.errno, str(e)))

    def _handle(self, app: App, data: bytes, fds: list[int]) -> bool:
        """Handle one message; True if it was a well-formed binary close
        message queued without a Request object per record (_fast_closes)."""
        if data[:2] == ctlproto.BIN_CLOSE and not fds and self._fast_closes(app, data):
            return True
        try:
            if data[:2] == ctlproto.BIN_CLOSE:  # binary close (noreply) request(s): no JSON
                reqs = ctlproto.parse_closes(data, len(fds))
            else:
                reqs = [ctlproto.parse_request(data, len(fds))]
                reqs[0].fds = fds
        except ProtocolError as e:
            self.counters["requests"] += 1
            app.requests += 1
            self._bad_request(app, e, fds)
            return False
        for req in reqs:
            self._handle_req(app, req)
        return False

    def _fast_closes(self, app: App, data: bytes) -> bool:
        """A binary close message of an app past hello: its records queued
        for _run_teardown as they are ((req_id, flow, tx_head, rx_tail)
        tuples; _close_fast runs each as _dispatch would run the Request
        parse_closes makes of it).  False (nothing done) if the message is
        not one parse_closes accepts or the app is not past hello: the
        general path then answers it."""
        n = len(data) - 2
        if not n or n % _CLOSE_REC.size or not app.hello or self._loop is None:
            return False
        recs = list(_CLOSE_REC.iter_unpack(memoryview(data)[2:]))
        for rec in recs:
            if rec[0] > _REQ_ID_MAX:
                return False
        k = len(recs)
        self.counters["requests"] += k
        app.requests += k
        td = self._teardown
        for rec in recs:
            td.append((app, rec))
        if self._teardown_handle is None:
            self._teardown_handle = self._loop.call_soon(self._run_teardown)
        return True

    def _handle_req(self, app: App, req: ctlproto.Request) -> None:
        self.counters["requests"] += 1
        app.requests += 1
        if req.op in _DEFERRABLE and req.args.get("noreply") and app.hello and self._loop is not None:
            self._teardown.append((app, req))
            if self._teardown_handle is None:
                self._teardown_handle = self._loop.call_soon(self._run_teardown)
            return
        if self._teardown:
            self._run_teardown()
        self._dispatch(app, req)

    def events_pending(self, app: App) -> None:
        """app has event records to send: flush them once this loop pass is
        done, so the events of one pass (SYNs, handshakes, teardowns of many
        connections) reach each app as one message and one doorbell."""
        self._ev_apps[app.app_id] = app
        if self._ev_handle is None and not self.draining:
            self._ev_handle = self._loop.call_soon(self._flush_events)

    def flush_events_now(self) -> None:
        """Send the events gathered so far without waiting for the end of
        the loop pass: called after a drain of the fast path's exception
        rings, so an app learns of a new connection before the other
        callbacks of the pass (control requests, CC, timers) run.  Still one
        message and one doorbell per app for all the drain's events."""
        h = self._ev_handle
        if h is not None:
            h.cancel()
            self._flush_events()
        elif self._ev_apps:  # gathered during a drain (draining): no call_soon was made
            self._flush_events()

    def _flush_events(self) -> None:
        self._ev_handle = None
        apps, self._ev_apps = self._ev_apps, {}
        for app in apps.values():
            app.flush_events()

    def _run_teardown(self) -> None:
        """The close/abort requests deferred by _handle, in arrival order."""
        self._teardown_handle = None
        td, apps = self._teardown, self.apps
        while td:
            app, req = td.popleft()
            if apps.get(app.app_id) is app:
                if type(req) is tuple:
                    self._close_fast(app, *req)
                else:
                    self._dispatch(app, req)

    def _close_fast(self, app: App, req_id: int, flow: int, tx_head: int, rx_tail: int) -> None:
        """_dispatch of Request("close", req_id, {flow, tx_head, rx_tail,
        noreply}) for an app past hello: _op_close, errors answered the
        same way, no reply otherwise."""
        app._deferred = []
        try:
            ctx = self._flow_ctx(app, flow)
            self.engine.close(ctx, flow, tx_head, rx_tail)
            ctx.flows.discard(flow)
        except Exception as e:
            self._fail(app, req_id, "close", e)
        finally:
            deferred, app._deferred = app._deferred, None
            for ctx, msg in deferred:
                if not ctx.closed:
                    app.send_event(ctx, msg)

    def _dispatch(self, app: App, req: ctlproto.Request) -> None:
        app._deferred = []
        try:
            try:
                if req.op != "hello" and not app.hello:
                    raise OSError(errno.EPROTO, "hello first")
                result = self._handlers[req.op](app, req)
            except Exception as e:
                self._fail(app, req.id, req.op, e)
            else:
                if not req.args.get("noreply"):  # close/abort the app does not wait for
                    fields, out_fds = result if isinstance(result, tuple) else (result, ())
                    app.send(ctlproto.reply(req.id, **(fields or {})), out_fds)
        finally:
            for fd in req.fds:  # fds not taken over by a handler
                _close_quiet(fd)
            deferred, app._deferred = app._deferred, None
            for ctx, msg in deferred:
                if not ctx.closed:
                    app.send_event(ctx, msg)

    def _fail(self, app: App, req_id, op: str, e: Exception) -> None:
        """The error reply to a request whose handler raised e."""
        self.counters["errors"] += 1
        if isinstance(e, OSError):
            err = e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EIO
            app.send(ctlproto.error_reply(req_id, err, e.strerror or str(e)))
        elif isinstance(e, (ProtocolError, BufAllocError, ValueError, TypeError)):
            app.send(ctlproto.error_reply(req_id, getattr(e, "errno", None) or errno.EINVAL, str(e)))
        else:
            log.error("app %d: %s failed", app.app_id, op, exc_info=e)
            app.send(ctlproto.error_reply(req_id, errno.EIO, f"internal error: {e!r}"))

    def _ctx(self, app: App, ctx_id: int) -> Context:
        ctx = app.contexts.get(ctx_id)
        if ctx is None:
            raise OSError(errno.EBADF, f"no context {ctx_id}")
        return ctx

    def _flow_ctx(self, app: App, flow: int) -> Context:
        for ctx in app.contexts.values():
            if flow in ctx.flows:
                return ctx
        raise OSError(errno.EBADF, f"no flow {flow}")

    def _op_hello(self, app: App, req: ctlproto.Request):
        if app.hello:
            raise OSError(errno.EPROTO, "hello already done")
        if req.args["abi"] != TAS_ABI_VERSION:
            raise OSError(
                errno.EPROTONOSUPPORT, f"ABI {req.args['abi']} unsupported (stack: {TAS_ABI_VERSION})"
            )
        app.limits = self.app_limits.lowered(req.args)
        app.hello = True
        app.bin_events = bool(req.args.get("bin_events"))
        fields = {
            "app_id": app.app_id,
            "n_cores": self.fpm.n_cores,
            "local_ip": self.local_ip,
            "local_mac": self.local_mac,
            "limits": app.limits.to_dict(),
        }
        cc = getattr(self.engine, "cc", None)
        if cc is not None:
            fields["cc"] = cc.algorithm
        return fields, list(self.fpm.evfds)

    def _op_ctx_create(self, app: App, req: ctlproto.Request):
        evfd = req.fds[0]
        if not _is_eventfd(evfd):
            raise OSError(errno.EINVAL, "ctx_create needs an eventfd")
        rx_buf = _round_buf(req.args["rx_buf"], self.default_buf)
        tx_buf = _round_buf(req.args["tx_buf"], self.default_buf)
        if self.max_app_contexts and len(app.contexts) >= self.max_app_contexts:
            raise OSError(errno.EMFILE, f"an app may have at most {self.max_app_contexts} contexts")
        ctx_id = self._ctx_ids.get()
        if ctx_id is None:
            raise OSError(errno.EMFILE, "too many contexts")
        try:
            ctx = Context(
                self,
                app,
                ctx_id,
                evfd,
                self.region_len,
                self.fpm.n_cores,
                self.atx_slots,
                self.arx_slots,
                rx_buf,
                tx_buf,
            )
        except BaseException:
            self._ctx_ids.put(ctx_id)
            raise
        req.fds.clear()  # the context owns the eventfd now
        try:
            self.fpm.add_ctx(ctx_id, ctx.region.fd, evfd, self.atx_slots, self.arx_slots)
        except BaseException:
            ctx._destroy()
            self._ctx_ids.put(ctx_id)
            raise
        app.contexts[ctx_id] = ctx
        self.contexts[ctx_id] = ctx
        fields = {
            "ctx_id": ctx_id,
            "region_len": ctx.region_len,
            "atx_slots": self.atx_slots,
            "arx_slots": self.arx_slots,
            "n_cores": self.fpm.n_cores,
        }
        return fields, [ctx.region.fd]

    def _op_ctx_close(self, app: App, req: ctlproto.Request):
        self._destroy_ctx(self._ctx(app, req.args["ctx"]))
        return {}

    def _check_port(self, app: App, port: int) -> None:
        if 0 < port <= PRIVILEGED_PORT_MAX and not self.allow_privileged_ports \
                and not app.may_bind_privileged():
            self.counters["privileged_port_denied"] += 1
            raise OSError(errno.EACCES, f"port {port} needs uid 0 or CAP_NET_BIND_SERVICE")

    def _op_bind(self, app: App, req: ctlproto.Request):
        a = req.args
        ctx = self._ctx(app, a["ctx"])
        return {"port": self.engine.bind(ctx, a["port"], a["reuseaddr"])}

    def _op_unbind(self, app: App, req: ctlproto.Request):
        a = req.args
        self.engine.unbind(self._ctx(app, a["ctx"]), a["port"])
        return {}

    def _op_listen(self, app: App, req: ctlproto.Request):
        ctx = self._ctx(app, req.args["ctx"])
        a = req.args
        self._check_port(app, a["port"])
        ka = {"keepalive": True} if a["keepalive"] else {}  # SO_KEEPALIVE (optional in the seam)
        backlog = a["backlog"]
        if app.limits.syn_backlog:  # like net.core.somaxconn: silently capped
            backlog = min(backlog, app.limits.syn_backlog)
        cc = self._check_cc(a["cc"])
        port = self.engine.listen(ctx, a["port"], backlog, a["reuseaddr"], **ka)
        ctx.listeners.add(port)
        if cc:
            ctx.listen_cc[port] = cc
        else:
            ctx.listen_cc.pop(port, None)
        return {"listener": port, "port": port}

    def _op_listen_close(self, app: App, req: ctlproto.Request):
        port = req.args["listener"]
        for ctx in app.contexts.values():
            if port in ctx.listeners:
                self.engine.listen_close(ctx, port)
                ctx.listeners.discard(port)
                ctx.listen_cc.pop(port, None)
                return {}
        raise OSError(errno.EBADF, f"no listener {port}")

    def _op_connect(self, app: App, req: ctlproto.Request):
        a = req.args
        ctx = self._ctx(app, a["ctx"])
        self._check_port(app, a["local_port"])
        rx_len = _round_buf(a["rx_buf"], ctx.rx_buf)
        tx_len = _round_buf(a["tx_buf"], ctx.tx_buf)
        app.check_connect(FLOW_BLOCK + rx_len + tx_len)
        cc = self._check_cc(a["cc"])
        info = FlowInfo.from_dict(
            self.engine.connect(ctx, a["ip"], a["port"], a["local_port"], rx_len, tx_len,
                                **({"keepalive": True} if a["keepalive"] else {}))
        )
        ctx.flows.add(info.flow)
        if cc:
            self._choose_cc(info.flow, cc)  # before the handshake completes: installed with it
        return {"flow": info.to_dict()}

    def _op_keepalive(self, app: App, req: ctlproto.Request):
        flow = req.args["flow"]
        self.engine.set_keepalive(self._flow_ctx(app, flow), flow, req.args["on"])
        return {}

    # -- per-socket congestion control (TCP_CONGESTION, docs/CC.md) -----------
    def _check_cc(self, name: str) -> str:
        """Validate a per-socket algorithm name ("" = the stack's default);
        returns the algorithm it selects, "" for the default."""
        if not name:
            return ""
        cc = getattr(self.engine, "cc", None)
        if cc is None:
            raise OSError(errno.EOPNOTSUPP, "this stack has no per-flow congestion control")
        from kernel_slowpath.ccloop import resolve

        return resolve(name)  # OSError(ENOENT) for an unknown name

    def _choose_cc(self, flow: int, name: str) -> str:
        return self.engine.cc.choose(flow, name)

    def _op_set_cc(self, app: App, req: ctlproto.Request):
        a = req.args
        if (a["flow"] is None) == (a["listener"] is None):
            raise OSError(errno.EINVAL, "set_cc takes either flow or listener")
        name = self._check_cc(a["cc"]) or self.engine.cc.algorithm
        if a["listener"] is not None:
            port = a["listener"]
            for ctx in app.contexts.values():
                if port in ctx.listeners:
                    ctx.listen_cc[port] = name
                    return {"cc": name}
            raise OSError(errno.EBADF, f"no listener {port}")
        self._flow_ctx(app, a["flow"])  # EBADF if not this app's
        return {"cc": self._choose_cc(a["flow"], name)}

    def _op_shutdown(self, app: App, req: ctlproto.Request):
        flow = req.args["flow"]
        self.engine.shutdown(self._flow_ctx(app, flow), flow, req.args["tx_head"])
        return {}

    def _op_close(self, app: App, req: ctlproto.Request):
        flow = req.args["flow"]
        ctx = self._flow_ctx(app, flow)
        self.engine.close(ctx, flow, req.args["tx_head"], req.args["rx_tail"])
        ctx.flows.discard(flow)
        return {}

    def _op_abort(self, app: App, req: ctlproto.Request):
        flow = req.args["flow"]
        ctx = self._flow_ctx(app, flow)
        self.engine.abort(ctx, flow)
        ctx.flows.discard(flow)
        return {}

    def _op_stats(self, app: App, req: ctlproto.Request):
        stats: dict[str, Any] = dict(self.engine.stats())
        stats.setdefault("control", self.stats())
        return {"stats": stats}

    def _op_flows(self, app: App, req: ctlproto.Request):
        return {"flows": list(self.engine.flows())}

    def stats(self) -> dict:
        per_app = []
        for app in self.apps.values():
            ctxs = list(app.contexts.values())
            per_app.append({
                "app_id": app.app_id, "pid": app.pid, "uid": app.uid, "contexts": len(ctxs),
                "flows": sum(len(c.flows) for c in ctxs),
                "heap_used": sum(c.heap_used for c in ctxs),
                "region_bytes": sum(c.region_len for c in ctxs),
                "strikes": sum(self.strikes.get(c.ctx_id, 0) for c in ctxs),
                "buf_used": app.buf_used,
                "limits": app.limits.to_dict(),
                "limit_hits": dict(app.limit_hits),
            })
        orphaned = [c for c in self.contexts.values() if c.orphaned]
        return {
            "apps": len(self.apps),
            "contexts": len(self.contexts),
            "orphaned_contexts": len(orphaned),
            "heap_used": sum(c.heap_used for c in self.contexts.values()),
            "per_app": per_app,
            "fp_restarts": sum(getattr(self.fpm, "restarts", ()) or ()),
            **self.counters,
        }
