"""libtas native API: TCP through the TAS stack with the data path in shared memory.

Usage::

    stack = Stack()                       # $TAS_STATE_DIR or /run/tas/default
    ctx = stack.context()
    lst = ctx.listen(8080)
    conn = lst.accept()
    data = conn.recv(4096)
    conn.sendall(data)

Control operations (listen, connect, close, ...) are request/reply messages
on the stack's control socket (docs/CONTROL.md).  Data never goes through
the control socket: ``send`` copies into the flow's tx buffer in the
context region and posts an ATX update on the flow's core ring (ringing the
fast-path core's eventfd only if it is asleep); ``recv`` copies out of the
rx buffer, whose fill level the fast path publishes in the flow's appflow
block, and posts ATX updates so the fast path can reopen the window.

Threads: a :class:`Context` is meant for one thread.  Every public method
takes the context's (reentrant) lock, so using one context, its listeners
and connections from several threads is safe but serialised; blocking calls
release the lock while they sleep.  For parallelism use one context per
thread (they share the Stack's control socket, which has its own lock).
"""

from __future__ import annotations

import errno
import operator
import os
import select
import socket
import struct
import threading
import time
from array import array as _array
from collections import deque
from collections.abc import Callable

from flextcp import ctlproto, layout
from flextcp.ctlproto import FlowInfo, ProtocolError
from flextcp.doorbell import Doorbell
from flextcp.native import ffi, lib, use_pure
from flextcp.ring import make_ring
from flextcp.shm import Region

__all__ = ["Stack", "Context", "Listener", "Connection", "TAS_ABI_VERSION", "DEFAULT_STATE_DIR"]

TAS_ABI_VERSION = 1
TAS_CTX_MAGIC = 0x54415343
TAS_AF_RX_FIN = 1
TAS_AF_RESET = 2
TAS_ATX_UPDATE = 1
DEFAULT_STATE_DIR = "/run/tas/default"
CALL_TIMEOUT = 30.0  # seconds to wait for a control reply
# Longest single sleep on the eventfd.  The armed-flag protocol is lossless
# (tas_armed_set/get fence in C); this only bounds how long a sleeper takes
# to notice its context was closed under it.
MAX_SLEEP = 0.5
# How long Context.wait() polls before it sleeps on the eventfd (TAS_APP_SPIN_US;
# 0 = sleep at once).  Bounded: an idle app stops spinning after this.
SPIN_US = int(os.environ.get("TAS_APP_SPIN_US", "0"))

_ATX = struct.Struct("<IHHQQQ")
_ARX = struct.Struct("<IHHQ")
_ARX_BATCH = 64
_M64 = 0xFFFFFFFFFFFFFFFF
# the C kernels (flextcp/csrc/app_wait.c): flow ids taken per tas_app_drain call
_IDS_CAP = 1024
_CORE_BYTES = [bytes([c]) for c in range(256)]  # one entry's ``cores`` argument
_POSTED, _FULL, _DROPPED = 1, 0, 2  # tas_app_post's done[] codes
_APP_FLOW = ffi.typeof("struct tas_app_flow *")
_ffi_new = ffi.new
_NULL = ffi.NULL
_ECHO_UNPOSTED = 16  # or-ed into an outcome: the flow's update found its ring full
_NO_FLOWS: frozenset[int] = frozenset()
_ECHO_TAB0 = 1024  # the echo table's first size (flow ids; it doubles as needed)
# tas_app_echo_run (the echo server's wait in C): how long it keeps serving
# wake-ups before it returns to Python
ECHO_RUN_BUDGET_US = 2000
_APPFLOW_BYTES = layout.APPFLOW_BYTES
_new_object = object.__new__
# event kinds (ctlproto's binary records; JSON events are converted to them)
_EV_NEWCONN, _EV_CONNECTED, _EV_CONN_FAILED, _EV_RESET, _EV_CLOSED = 1, 2, 3, 4, 5
_ANC_LEN = socket.CMSG_LEN(ctlproto.MAX_FDS * 4)
_close_record = ctlproto.close_record
_MSG_TRUNC = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)


def _drain_arx_twin(rings, buf: bytearray, ready: set[int]) -> list[int]:
    """Python twin of tas_app_drain: drain each ring (until a batch comes up
    short) into ``ready``; returns the entries taken per ring."""
    got = []
    view = memoryview(buf)
    for ring in rings:
        g = 0
        while True:
            k = ring.dequeue_into(buf)
            if not k:
                break
            g += k
            for e in _ARX.iter_unpack(view[: k * _ARX.size]):
                ready.add(e[0])
            if k < _ARX_BATCH:
                break
        got.append(g)
    return got


def _post_atx_twin(rings, fp_armed, doorbells, data: bytes, cores: bytes) -> tuple[int, bytearray]:
    """Python twin of tas_app_post: entry i (packed ATX) on core cores[i]'s
    ring, in order within a core; ring the armed cores that got entries.
    Returns (posted, done) with tas_app_post's done[] codes."""
    n_cores = len(rings)
    size = _ATX.size
    done = bytearray(_FULL if c < n_cores else _DROPPED for c in cores)
    per_core: dict[int, list[int]] = {}
    for i, c in enumerate(cores):
        if c < n_cores:
            per_core.setdefault(c, []).append(i)
    posted = 0
    for core in sorted(per_core):
        idx = per_core[core]
        k = rings[core].enqueue_n(b"".join([data[i * size : (i + 1) * size] for i in idx]), len(idx))
        for i in idx[:k]:
            done[i] = _POSTED
        posted += k
        if k and lib.tas_armed_get(fp_armed + core):
            doorbells[core].ring()
    return posted, done


# Connection._echo_status and Context._echo_flows (tas_app_echo's TAS_ECHO_*)
ECHO_DONE, ECHO_SKIP, ECHO_MORE, ECHO_EOF = 0, 1, 2, 3


def _echo_twin(conns: dict, ids, post) -> list[tuple[int, int]]:
    """Python twin of tas_app_echo over Connections (their records, appflow
    blocks and buffer views): ``conns`` maps flow ids to the connections the
    kernel may serve (``_fl.echo`` set), ``post(data, cores)`` posts packed
    ATX entries as _post_atx_twin and returns (posted, done).  Returns the
    (flow id, outcome) pairs tas_app_echo writes to out_ids/out_st."""
    out: list[list[int]] = []
    entries: list[bytes] = []
    owners: list[tuple] = []  # (record, its out slot or None), one per entry
    pack = _ATX.pack

    def post_batch() -> None:
        _, done = post(b"".join(entries), bytes([fl.core for fl, _ in owners]))
        for j, (fl, slot) in enumerate(owners):
            if done[j] == _POSTED:
                fl.rx_posted = fl.rx_tail
            elif done[j] == _FULL:
                if slot is None:
                    slot = len(out)
                    out.append([fl.flow_id, ECHO_DONE])
                out[slot][1] |= _ECHO_UNPOSTED
        entries.clear()
        owners.clear()

    for fid in ids:
        conn = conns.get(fid)
        if conn is None or not conn._fl.echo:
            out.append([fid, ECHO_SKIP])
            continue
        fl, af = conn._fl, conn._af
        moved = False
        if af.flags & TAS_AF_RESET:
            st = ECHO_MORE
        else:
            rx_len, tx_len = fl.rx_len, fl.tx_len
            tail, head = fl.rx_tail, fl.tx_head
            avail = (af.rx_head - tail) & _M64
            if avail > rx_len:  # never trust a bogus head
                st = ECHO_MORE
            else:
                used = (head - af.tx_acked) & _M64
                n = 0 if used > tx_len else min(avail, tx_len - used)
                if n:
                    rx, tx = conn._rx, conn._tx
                    src, dst, left = tail & (rx_len - 1), head & (tx_len - 1), n
                    while left:  # at most three pieces: each buffer wraps at most once
                        k = min(left, rx_len - src, tx_len - dst)
                        tx[dst : dst + k] = rx[src : src + k]
                        src = (src + k) & (rx_len - 1)
                        dst = (dst + k) & (tx_len - 1)
                        left -= k
                    fl.rx_tail = (tail + n) & _M64
                    fl.tx_head = (head + n) & _M64
                    moved = True
                if n < avail:
                    st = ECHO_MORE
                else:
                    flags = af.flags
                    if (af.rx_head - fl.rx_tail) & _M64:  # input that arrived meanwhile
                        st = ECHO_MORE
                    elif not flags & (TAS_AF_RX_FIN | TAS_AF_RESET):
                        st = ECHO_DONE
                    else:
                        st = ECHO_MORE if flags & TAS_AF_RESET else ECHO_EOF
        slot = None
        if st != ECHO_DONE:
            slot = len(out)
            out.append([fid, st])
        if moved:
            entries.append(pack(fl.flow_id, fl.gen, TAS_ATX_UPDATE, fl.rx_tail, fl.tx_head, 0))
            owners.append((fl, slot))
            if len(owners) == _ARX_BATCH:
                post_batch()
    if owners:
        post_batch()
    return [(fid, st) for fid, st in out]


_STATE_CONNECTING = "connecting"
_STATE_CONNECTED = "connected"
_STATE_FAILED = "failed"
_STATE_CLOSED = "closed"


def _oserror(err: int, msg: str | None = None) -> OSError:
    """OSError(err) — Python picks the subclass (ConnectionRefusedError, ...)."""
    return OSError(err, msg or os.strerror(err))


class KeepaliveTimeoutError(ConnectionResetError, TimeoutError):
    """The stack reset the connection with ETIMEDOUT (keepalive or
    retransmissions gave up): both a ConnectionResetError and, as recv()
    on Linux reports it, a TimeoutError."""


def _reset_error(err: int) -> OSError:
    if err == errno.ETIMEDOUT:
        return KeepaliveTimeoutError(err, os.strerror(err))
    return ConnectionResetError(err, os.strerror(err))


def _cc_name(name: str) -> str:
    """The algorithm a TCP_CONGESTION name selects (the stack validates)."""
    return {"reno": "newreno"}.get(name, name)


_monotonic = time.monotonic


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Stack:
    """A connection to a running TAS stack (its control socket).

    ``app_id``, ``n_cores``, ``local_ip``, ``local_mac`` come from the
    ``hello`` exchange.

    ``max_flows``, ``max_buf_bytes``, ``syn_backlog``: ask for per-app limits
    below the stack's (`tas start --app-max-flows/--app-max-buf-mb/
    --app-syn-backlog`); asking for more raises ``PermissionError`` (EPERM).
    ``limits`` holds the ones in force (0 = none).  Past them ``connect``
    raises ``OSError(EMFILE)`` (flows) or ``OSError(ENOBUFS)`` (buffer
    memory), and peers connecting to this app's listeners get a RST."""

    def __init__(
        self,
        state_dir: str | os.PathLike | None = None,
        *,
        max_flows: int = 0,
        max_buf_bytes: int = 0,
        syn_backlog: int = 0,
    ) -> None:
        if state_dir is None:
            state_dir = os.environ.get("TAS_STATE_DIR") or DEFAULT_STATE_DIR
        self.state_dir = os.fspath(state_dir)
        path = os.path.join(self.state_dir, "control.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except FileNotFoundError:
            sock.close()
            raise FileNotFoundError(errno.ENOENT, f"no TAS stack running at {self.state_dir}", path) from None
        except ConnectionRefusedError:
            sock.close()
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"no TAS stack running at {self.state_dir}", path
            ) from None
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._lock = threading.Lock()
        self._next_id = 1
        self._contexts: dict[int, Context] = {}
        self._closed = False
        # close requests held back (Connection.close(flush=False)): sent as
        # one message before the next request, or by the next flush/poll/wait
        self._closes: list[bytes] = []
        self._rbuf = bytearray(ctlproto.MAX_MSG + 1)  # _recv_one's
        self.doorbells: list[Doorbell] = []
        try:
            asked = {
                k: v
                for k, v in (
                    ("max_flows", max_flows),
                    ("max_buf_bytes", max_buf_bytes),
                    ("syn_backlog", syn_backlog),
                )
                if v
            }
            # bin_events: events as binary records, many per message (docs/CONTROL.md)
            rep, fds = self._call("hello", abi=TAS_ABI_VERSION, bin_events=1, **asked)
            self.limits: dict = rep.get("limits") or {}
            self.app_id = rep["app_id"]
            self.n_cores = rep["n_cores"]
            self.local_ip = rep["local_ip"]
            self.local_mac = rep["local_mac"]
            # the stack's congestion control (`tas start --cc`); per socket: cc=
            self.default_cc: str = rep.get("cc") or "fp-newreno"
            self.doorbells = [Doorbell(fd) for fd in fds]
            if len(fds) != self.n_cores:
                raise ProtocolError(f"hello carried {len(fds)} doorbells for {self.n_cores} cores")
        except BaseException:
            self.close()
            raise

    # -- control channel ------------------------------------------------------
    def _call(self, op: str, fds: tuple[int, ...] = (), **args) -> tuple[dict, list[int]]:
        """Send a request and wait for its reply, queueing events that arrive
        meanwhile on their contexts.  Raises OSError from error replies."""
        with self._lock:
            if self._closed:
                raise _oserror(errno.EBADF, "stack closed")
            if self._closes:
                self._send_closes()
            req_id = self._next_id
            self._next_id += 1
            try:
                ctlproto.send_msg(self._sock, ctlproto.request(op, req_id, **args), fds)
            except (BrokenPipeError, ConnectionResetError):
                raise ConnectionResetError(errno.ECONNRESET, "TAS stack went away") from None
            deadline = time.monotonic() + CALL_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(errno.ETIMEDOUT, f"no reply to {op} from the TAS stack")
                r, _, _ = select.select([self._sock], [], [], remaining)
                if not r:
                    continue
                msg, rfds = self._recv_one(0)
                if msg is None:
                    continue
                if "ev" in msg:
                    self._dispatch_event(msg)
                    continue
                if msg["id"] != req_id:
                    for fd in rfds:
                        os.close(fd)
                    continue  # stale reply (e.g. to a request that timed out)
                if not msg["ok"]:
                    for fd in rfds:
                        os.close(fd)
                    raise _oserror(msg["errno"], f"{op}: {msg['error']}")
                try:
                    return ctlproto.check_reply(op, msg), rfds
                except ProtocolError:
                    for fd in rfds:
                        os.close(fd)
                    raise

    def _send_closes(self) -> None:
        """Send the held-back close requests (lock held), many per message."""
        recs, self._closes = self._closes, []
        if len(recs) == 1:  # the common case
            try:
                self._sock.send(ctlproto.BIN_CLOSE + recs[0])
            except (BrokenPipeError, ConnectionResetError):
                raise ConnectionResetError(errno.ECONNRESET, "TAS stack went away") from None
            return
        step = (ctlproto.MAX_MSG - len(ctlproto.BIN_CLOSE)) // len(recs[0])
        try:
            for i in range(0, len(recs), step):
                ctlproto.send_msg(self._sock, ctlproto.BIN_CLOSE + b"".join(recs[i : i + step]))
        except (BrokenPipeError, ConnectionResetError):
            raise ConnectionResetError(errno.ECONNRESET, "TAS stack went away") from None

    def _flush_closes(self) -> None:
        with self._lock:
            if self._closes and not self._closed:
                self._send_closes()

    def _post(self, op: str, hold: bool = False, **args) -> None:
        """Send a request without waiting: the stack sends no reply when it
        succeeds (``noreply``), and an error reply is dropped like any reply
        nobody waits for.  For close, which, like close(2), needs no answer:
        the caller goes on at once instead of waiting a slow-path round trip
        (which on a busy stack waits behind connection set-up)."""
        with self._lock:
            if self._closed:
                raise _oserror(errno.EBADF, "stack closed")
            req_id = self._next_id
            self._next_id += 1
            if op == "close":  # the per-connection one: binary, no JSON, batched
                msg = ctlproto.encode_close(req_id, args["flow"], args["tx_head"], args["rx_tail"])
                self._closes.append(msg[len(ctlproto.BIN_CLOSE) :])  # (Connection.close: _post_close)
                if not hold:
                    self._send_closes()
                return
            if self._closes:
                self._send_closes()
            msg = ctlproto.request(op, req_id, noreply=True, **args)
            try:
                ctlproto.send_msg(self._sock, msg)
            except (BrokenPipeError, ConnectionResetError):
                raise ConnectionResetError(errno.ECONNRESET, "TAS stack went away") from None

    def _post_close(self, flow: int, tx_head: int, rx_tail: int, hold: bool) -> None:
        """_post("close", ...) without the keyword dict: one binary record
        (ctlproto.encode_close's, without the prefix) on the held list."""
        with self._lock:
            if self._closed:
                raise _oserror(errno.EBADF, "stack closed")
            req_id = self._next_id
            self._next_id += 1
            try:
                self._closes.append(_close_record(req_id, flow, tx_head, rx_tail))
            except struct.error as e:
                raise ProtocolError(f"close not encodable: {e}", req_id) from None
            if not hold:
                self._send_closes()

    def _recv_one(self, flags: int) -> tuple[dict | None, list[int]]:
        """One message from the control socket: a reply (returned with its
        fds) or events (queued on their contexts here; returns None).
        Received into a buffer kept for it (no 64 KiB bytes per message)."""
        buf = self._rbuf
        try:
            n, anc, msg_flags, _ = self._sock.recvmsg_into([buf], _ANC_LEN, flags)
        except InterruptedError:
            raise BlockingIOError(errno.EAGAIN, "interrupted") from None
        fds: list[int] = []
        if anc:
            fds = ctlproto.fds_of(anc)
        if msg_flags & _MSG_TRUNC or n > ctlproto.MAX_MSG:  # (as ctlproto.recv_msg)
            for fd in fds:
                os.close(fd)
            return None, []
        if not n:
            self._closed = True
            raise ConnectionResetError(errno.ECONNRESET, "TAS stack went away")
        if buf[0] == 0 and buf[1] == 0x45:  # BIN_EVENTS: a batch of events, queued on their contexts
            for fd in fds:
                os.close(fd)
            try:
                recs = ctlproto.decode_events_raw(buf, n)
            except ProtocolError:
                return None, []
            contexts = self._contexts
            for r in recs:
                ctx = contexts.get(r[3])
                if ctx is not None:
                    ctx._events.append(r)
            return None, []
        try:
            return ctlproto.parse_message(bytes(buf[:n])), fds
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            return None, []

    def _dispatch_event(self, msg: dict) -> None:
        """A JSON event (parse_message) onto its context, as a record."""
        ctx = self._contexts.get(msg["ctx"])
        if ctx is not None:
            try:
                ctx._events.append(ctlproto.event_record(msg))
            except ProtocolError:
                pass

    def _drain_events(self, one: bool = False) -> None:
        """Non-blocking: move every queued event to its context (``one``:
        at most one message, for a caller that knows one is there and
        whose next sleep returns at once if more are).  (Waits for the lock
        if another thread is in _call: the stack answers quickly.)"""
        with self._lock:
            if self._closed:
                return
            while True:
                try:
                    msg, fds = self._recv_one(_MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                for fd in fds:
                    os.close(fd)
                if msg is not None and "ev" in msg:
                    self._dispatch_event(msg)
                if one:
                    return

    # -- public ----------------------------------------------------------------
    def context(self, rx_buf: int | None = None, tx_buf: int | None = None) -> Context:
        """A new context (shared region + rings + doorbell).  rx_buf/tx_buf:
        default flow buffer sizes (rounded up to powers of two by the stack)."""
        evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            rep, fds = self._call("ctx_create", fds=(evfd,), rx_buf=rx_buf or 0, tx_buf=tx_buf or 0)
        except BaseException:
            os.close(evfd)
            raise
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            os.close(evfd)
            raise ProtocolError("ctx_create reply without a memfd")
        try:
            ctx = Context(self, rep, fds[0], evfd)
        except BaseException:
            os.close(evfd)
            raise
        self._contexts[ctx.ctx_id] = ctx
        return ctx

    def stats(self) -> dict:
        return self._call("stats")[0]["stats"]

    def flows(self) -> list[dict]:
        return self._call("flows")[0]["flows"]

    def control_fileno(self) -> int:
        """The control socket's fd: readable when the stack sent something
        (for a caller that polls it itself, see Context.poll_ready)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close every context and the control connection (the stack then
        releases everything this app held)."""
        for ctx in list(self._contexts.values()):
            ctx._teardown()
        self._contexts.clear()
        with self._lock:
            if self._closes and not self._closed:  # held-back closes: FINs, not resets
                try:
                    self._send_closes()
                except OSError:
                    pass
            self._closed = True
            self._sock.close()
        for db in self.doorbells:
            db.close()
        self.doorbells = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Context:
    """A set of flows sharing one region, per-core rings and one doorbell."""

    def __init__(self, stack: Stack, rep: dict, memfd: int, evfd: int) -> None:
        self.stack = stack
        self.ctx_id = rep["ctx_id"]
        self.n_cores = rep["n_cores"]
        self.atx_slots = rep["atx_slots"]
        self.arx_slots = rep["arx_slots"]
        self._lock = threading.RLock()
        # control events as ctlproto.decode_events_raw records (Stack._recv_one)
        self._events: deque[tuple] = deque()
        self._flows: dict[int, Connection] = {}
        self._listeners: dict[int, Listener] = {}
        # connections whose buffer views outlived them (a recv_view() still
        # held when they were released): released again at teardown; the
        # open ones are in _flows
        self._pinned: list[Connection] = []
        self._updates: dict[int, Connection] = {}  # flow id -> connection with a pending update
        # fast-path notifications (ARX entries) seen by any poll, internal ones
        # included: ``_hints`` makes the next wait() return at once (a hint an
        # internal poll consumed is never lost to the caller); ``_ready`` holds
        # their flow ids until ready_flows() hands them out
        self._hints = 0
        self._ready: set[int] = set()
        # an ARX ring found full when drained: the fast path may have dropped
        # notifications (it counts them in cores[i].arx_full), so the caller
        # of ready_flows() cannot trust it to be complete (hints_lost())
        self._hints_lost = False
        self.arx_overflows = 0  # drains that found a full ARX ring
        self._closed = False
        self._waiters = 0
        self.evfd = evfd
        self.region = Region.attach(memfd, rep["region_len"])
        try:
            self._hdr = self.region.cast("struct tas_ctx_hdr")
            self._app_armed = ffi.addressof(self._hdr, "app_armed")
            self._fp_armed = ffi.cast("uint32_t *", ffi.addressof(self._hdr, "fp_armed"))
            h = self._hdr
            if (
                h.magic != TAS_CTX_MAGIC
                or h.abi_version != TAS_ABI_VERSION
                or h.ctx_id != self.ctx_id
                or h.n_cores != self.n_cores
            ):
                raise ProtocolError("context region header does not match the ctx_create reply")
            self.layout = layout.ctx_layout(self.n_cores, self.atx_slots, self.arx_slots)
            self._atx = [
                make_ring(
                    self.region, self.layout.atx_off[c], self.atx_slots, layout.TAS_ATX_ENTRY_SIZE, True
                )
                for c in range(self.n_cores)
            ]
            self._arx = [
                make_ring(
                    self.region, self.layout.arx_off[c], self.arx_slots, layout.TAS_ARX_ENTRY_SIZE, False
                )
                for c in range(self.n_cores)
            ]
            self._arxbuf = bytearray(_ARX_BATCH * layout.TAS_ARX_ENTRY_SIZE)
            # the C rings' ``struct tas_ring *`` (None for the pure twin, TAS_PURE=1)
            self._atx_raw = [getattr(r, "raw", None) for r in self._atx]
            self._arx_raw = [getattr(r, "raw", None) for r in self._arx]
            self._sleep_fds = [evfd, stack._sock.fileno()]  # what _wait_locked watches
            # the C wake-up kernels (app_wait.c) when every ring is a C ring;
            # None: the pure twin (TAS_PURE=1)
            self._actx = None
            if all(r is not None for r in self._atx_raw + self._arx_raw):
                self._actx = self._make_actx(stack)
            # the echo kernel's table: flow id -> struct tas_app_flow * of the
            # connections it may serve (kept alive by _echo_conns)
            self._echo_tab = ffi.new("struct tas_app_flow *[]", _ECHO_TAB0)
            self._echo_conns: dict[int, Connection] = {}
            self._echo_ids = ffi.new("uint32_t[]", 64)
            # outcomes of _echo_flows and of the drains' echo (_echo_in_drain)
            self._echo_out_ids = ffi.new("uint32_t[]", _IDS_CAP)
            self._echo_out_st = ffi.new("uint8_t[]", _IDS_CAP)
            self._echo_drain = False
            # the echo server's wait in C (tas_app_echo_run) when the drains
            # echo; False: the Python path (its twin, tests)
            self._echo_run = True
            self._echo_att: list[tuple[int, int]] = []
            self._echo_seen = 0  # flow ids the drains' echo took (the echo server counts them)
            if self._actx is not None:
                a = self._actx
                a.echo_tab, a.echo_tab_n = self._echo_tab, len(self._echo_tab)
                a.echo_ids, a.echo_st = self._echo_out_ids, self._echo_out_st
            self._mv = self.region.view()
            # what Connection._setup needs, as plain ints
            self._addr = int(ffi.cast("uintptr_t", self.region.addr))
            self._base = ffi.cast("uint8_t *", self.region.addr)
            self._heap_off = self.layout.heap_off
            self._region_size = self.region.size
        except BaseException:
            self.region.close()
            raise

    def __repr__(self) -> str:
        return f"<libtas.Context {self.ctx_id}>"

    def _make_actx(self, stack: Stack):
        """The ``struct tas_app_ctx`` the C kernels work on (it points into
        the rings' ``struct tas_ring``s, which self._atx/_arx keep alive)."""
        a = ffi.new("struct tas_app_ctx *")
        a.app_armed = self._app_armed
        a.fp_armed = self._fp_armed
        for c in range(self.n_cores):
            a.atx[c] = self._atx_raw[c]
            a.arx[c] = self._arx_raw[c]
            a.fp_evfd[c] = stack.doorbells[c].fd if c < len(stack.doorbells) else -1
        a.evfd = self.evfd
        a.n_cores = self.n_cores
        a.arx_slots = self.arx_slots
        self._ids = ffi.new("uint32_t[]", _IDS_CAP)
        self._done = ffi.new("uint8_t[]", 64)
        return a

    # -- plumbing ----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise _oserror(errno.EBADF, "context closed")

    def _queue_update(self, conn: Connection) -> None:
        self._updates[conn.flow_id] = conn

    def _flush(self) -> None:
        """Post the pending ATX updates (one per flow, latest positions) and
        ring the fast-path cores that sleep; send held-back closes."""
        if self.stack._closes:
            self.stack._flush_closes()
        self._flush_updates()

    def _flush_updates(self) -> None:
        """Post one ATX update per flow with a pending one (tas_app_post, or
        its twin): entries that found their core's ring full stay pending."""
        updates = self._updates
        if not updates:
            return
        actx = self._actx
        if len(updates) == 1:  # the common case (one request, one reply): no lists
            (c,) = updates.values()
            fl = c._fl
            data = _ATX.pack(c.flow_id, c._gen, TAS_ATX_UPDATE, fl.rx_tail, fl.tx_head, 0)
            if actx is not None:
                done = self._done
                posted = lib.tas_app_post(actx, data, _CORE_BYTES[c._core], 1, done)
            else:
                posted, done = _post_atx_twin(
                    self._atx, self._fp_armed, self.stack.doorbells, data, _CORE_BYTES[c._core]
                )
            if posted:
                fl.rx_posted = fl.rx_tail
                self._updates = {}
            elif done[0] == _DROPPED:
                self._updates = {}
            return
        conns = list(updates.values())
        n = len(conns)
        pack = _ATX.pack
        data = b"".join([pack(c.flow_id, c._gen, TAS_ATX_UPDATE, c._rx_tail, c._tx_head, 0) for c in conns])
        cores = bytes([c._core for c in conns])
        if actx is not None:
            if len(self._done) < n:
                self._done = ffi.new("uint8_t[]", n)
            done = self._done
            posted = lib.tas_app_post(actx, data, cores, n, done)
        else:
            posted, done = _post_atx_twin(self._atx, self._fp_armed, self.stack.doorbells, data, cores)
        if posted == n:
            for c in conns:
                c._rx_posted = c._rx_tail
            self._updates = {}
            return
        left: dict[int, Connection] = {}
        for i, c in enumerate(conns):
            d = done[i]
            if d == _POSTED:
                c._rx_posted = c._rx_tail
            elif d == _FULL:  # ring full: retry on the next call
                left[c.flow_id] = c
        self._updates = left

    # -- the echo kernel (tas_app_echo) -------------------------------------------
    def _echo_add(self, conns: list[Connection]) -> None:
        """Let _echo_flows() serve these connections in the echo kernel
        while they stay in the plain state (connected; no reset, shutdown or
        close), which is what Connection.echo() does in Python.  For the
        echo server."""
        with self._lock:
            if not self._closed:
                for conn in conns:
                    self._echo_add_one(conn)

    def _echo_add_one(self, conn: Connection) -> None:
        if (
            conn.ctx is not self
            or conn._state != _STATE_CONNECTED
            or conn._reset
            or conn._gone
            or conn._shut_rd
            or conn._shut_wr
        ):
            return
        fid = conn.flow_id
        tab = self._echo_tab
        if fid >= len(tab):
            size = max(fid + 1, 2 * len(tab))
            new = ffi.new("struct tas_app_flow *[]", size)
            ffi.memmove(new, tab, len(tab) * ffi.sizeof("void *"))
            self._echo_tab = tab = new
            if self._actx is not None:
                self._actx.echo_tab, self._actx.echo_tab_n = tab, size
        old = self._echo_conns.get(fid)
        if old is not None and old is not conn:
            old._fl.echo = 0
        tab[fid] = conn._fl
        self._echo_conns[fid] = conn
        conn._fl.echo = 1

    def _echo_in_drain(self, on: bool) -> None:
        """On: every drain of the ARX rings (wait, poll) first gives the
        flow ids it took to the echo kernel (tas_app_drain with echo_on):
        those it served are not reported by ready_flows(); the others are
        (ECHO_SKIP), or come out of _echo_taken() (EOF, input left)."""
        with self._lock:
            self._echo_drain = bool(on) and not self._closed
            if self._actx is not None:
                self._actx.echo_on = int(self._echo_drain)

    def _echo_wait(self, timeout: float | None, lst: Listener) -> tuple:
        """The echo server's wait, under one lock: wait(timeout); the
        connections queued on lst (as accept(timeout=0) one at a time,
        without polling), given to the echo kernel (_echo_add) and echoed
        once (_echo_flows); then _echo_taken(), the count of flows the
        drains' echo took, ready_flows() and hints_lost().  Returns (n,
        accepted connections or None, outcomes left, count, ready, lost)."""
        lock = self._lock
        lock.acquire()
        try:
            n = self._wait_body(timeout)
            att = self._echo_att
            if att:
                self._echo_att = []
            new = ids = None
            q = lst._queue
            if q and not lst._closed:
                new = list(q)
                q.clear()
                ids = []
                for conn in new:
                    self._echo_add_one(conn)
                    af = conn._af
                    if af.rx_head or af.flags:  # (else nothing to echo or look at yet)
                        ids.append(conn.flow_id)
                if ids:
                    att = att + self._echo_flows_locked(ids)  # (a new list: att may be _echo_att)
            seen, self._echo_seen = self._echo_seen, 0
            ready = self._ready
            if ready:
                self._ready = set()
                if ids:
                    # the new connections just echoed: their hints (an ARX
                    # entry drained before the accept, an event) came before
                    # that look, whose outcomes are in att
                    ready.difference_update(ids)
                    if not ready:
                        ready = _NO_FLOWS
            else:
                ready = _NO_FLOWS
            lost = self._hints_lost
            if lost:
                self._hints_lost = False
            return n, new, att, seen, ready, lost
        finally:
            lock.release()

    def _echo_taken(self) -> list[tuple[int, int]]:
        """The (flow id, outcome) pairs the drains' echo left since the last
        call (ECHO_MORE, ECHO_EOF), in order."""
        lock = self._lock
        lock.acquire()
        try:
            att, self._echo_att = self._echo_att, []
        finally:
            lock.release()
        return att

    def _echo_outcomes(self, k: int) -> None:
        """The k outcomes a drain's echo wrote (actx.echo_ids/echo_st)."""
        oids, ost = self._echo_out_ids, self._echo_out_st
        if k == 1:
            self._echo_outcome(oids[0], ost[0])
        else:
            for i in range(k):
                self._echo_outcome(oids[i], ost[i])

    def _echo_outcome(self, fid: int, st: int) -> None:
        if st & _ECHO_UNPOSTED:  # its update waits for the next flush
            conn = self._echo_conns.get(fid)
            if conn is not None:
                self._updates[fid] = conn
            st &= ~_ECHO_UNPOSTED
            if st == ECHO_DONE:
                return
        if st == ECHO_SKIP:  # not the kernel's: a hint as usual
            if fid in self._flows:  # (else a flow whose newconn is not read yet: looked at when accepted)
                self._ready.add(fid)
        else:
            self._echo_att.append((fid, st))

    def _post_twin(self, data: bytes, cores: bytes) -> tuple[int, bytearray]:
        return _post_atx_twin(self._atx, self._fp_armed, self.stack.doorbells, data, cores)

    def _echo_drop(self, conn: Connection) -> None:
        """conn leaves the echo kernel (lock held)."""
        conn._fl.echo = 0
        fid = conn.flow_id
        if self._echo_conns.get(fid) is conn:
            del self._echo_conns[fid]
            self._echo_tab[fid] = _NULL

    def _echo_flows(self, ids) -> list[tuple[int, int]]:
        """Echo the flows named by ids (a collection of flow ids, e.g.
        ready_flows()) that _echo_add() gave the kernel, in one call
        (tas_app_echo, or its twin): copy what is readable into their own
        send buffers and post their updates.  Returns (flow id, outcome)
        for every flow not simply done: ECHO_SKIP (not the kernel's: look
        at it as usual), ECHO_MORE (input left, reset, ...: the general
        path), ECHO_EOF (all echoed and the peer's FIN seen: close it).  An
        update that found its ring full is queued for the next flush."""
        lock = self._lock
        lock.acquire()
        try:
            return self._echo_flows_locked(ids)
        finally:
            lock.release()

    def _echo_flows_locked(self, ids) -> list[tuple[int, int]]:
        if self._closed:
            return [(fid, ECHO_SKIP) for fid in ids]
        actx = self._actx
        if actx is None:  # the pure twin (TAS_PURE=1)
            res = _echo_twin(self._echo_conns, ids, self._post_twin)
        else:
            n = len(ids)
            cids = self._echo_ids
            if n > len(cids):
                size = max(n, 2 * len(cids))
                cids = self._echo_ids = ffi.new("uint32_t[]", size)
                if size > len(self._echo_out_ids):
                    self._echo_out_ids = actx.echo_ids = ffi.new("uint32_t[]", size)
                    self._echo_out_st = actx.echo_st = ffi.new("uint8_t[]", size)
            if n == 1:
                for fid in ids:
                    cids[0] = fid
            else:
                ffi.memmove(cids, _array("I", ids), 4 * n)
            tab = self._echo_tab
            k = lib.tas_app_echo(actx, tab, len(tab), cids, n, self._echo_out_ids, self._echo_out_st)
            if not k:
                return []
            oids, ost = self._echo_out_ids, self._echo_out_st
            res = [(oids[i], ost[i]) for i in range(k)]
        if not res:
            return res
        out = []
        for fid, st in res:
            if st & _ECHO_UNPOSTED:  # its update waits for the next flush
                conn = self._echo_conns.get(fid)
                if conn is not None:
                    self._updates[fid] = conn
                st &= ~_ECHO_UNPOSTED
                if st == ECHO_DONE:
                    continue
            out.append((fid, st))
        return out

    def _process_events(self) -> int:
        n = 0
        events, flows = self._events, self._flows
        while events:
            r = events.popleft()
            n += 1
            kind = r[0]
            if kind == _EV_NEWCONN:
                lst = self._listeners.get(r[5])
                try:
                    conn = Connection._from_record(self, r)
                except ProtocolError:
                    continue  # bogus FlowInfo: ignore the flow
                flows[r[4]] = conn
                if lst is None or lst._closed:
                    conn._abort_quiet()  # raced with listener close
                else:
                    conn._cc = lst.cc  # accepted connections inherit the listener's
                    lst._queue.append(conn)
                continue
            conn = flows.get(r[4])
            if conn is None:
                continue
            self._ready.add(conn.flow_id)  # its state changed: a hint for ready_flows()
            if kind != _EV_CONNECTED:
                conn._fl.echo = 0  # not the plain state any more: no echo kernel
            if kind == _EV_CONNECTED:
                if conn._state == _STATE_CONNECTING:
                    conn._state = _STATE_CONNECTED
            elif kind == _EV_CONN_FAILED:  # the app still closes the flow
                conn._state = _STATE_FAILED
                conn._error = r[5]
            elif kind == _EV_RESET:
                conn._reset = r[5] or errno.ECONNRESET
            elif kind == _EV_CLOSED:  # buffers reclaimed: never touch them again
                conn._reset = conn._reset or errno.ECONNRESET
                conn._gone = True
                flows.pop(conn.flow_id, None)
                self._updates.pop(conn.flow_id, None)
                if conn._state != _STATE_CLOSED and not conn._drop_views():  # (nothing reads them now)
                    self._pinned.append(conn)
        return n

    def _poll_arx(self, flags: int = 0) -> int:
        """Drain the ARX rings into the ready set (tas_app_drain, or the
        twin); ``flags`` (C only) may first disarm and clear the eventfd."""
        actx = self._actx
        if actx is None:
            return self._poll_arx_py()
        ids = self._ids
        k = lib.tas_app_drain(actx, ids, _IDS_CAP, flags)
        return self._take_ids(k) if k else 0

    def _take_ids(self, k: int) -> int:
        """Flow ids the C kernel drained (k of them, more if it stopped at
        the cap) into the ready set (with the echo kernel on: what it left,
        _echo_taken); overflow accounting as the twin."""
        actx, ids, ready = self._actx, self._ids, self._ready
        echo = self._echo_drain
        if echo:
            e = actx.echo_n
            if e == 1:
                self._echo_outcome(self._echo_out_ids[0], self._echo_out_st[0])
            elif e:
                self._echo_outcomes(e)
            self._echo_seen += k
        elif k == 1:
            ready.add(ids[0])
        else:
            ready.update(ffi.unpack(ids, k))
        n = k
        while k == _IDS_CAP:
            k = lib.tas_app_drain(actx, ids, _IDS_CAP, lib.TAS_APP_DRAIN_MORE)
            if echo:
                if actx.echo_n:
                    self._echo_outcomes(actx.echo_n)
                self._echo_seen += k
            else:
                ready.update(ffi.unpack(ids, k))
            n += k
        # The fast path drops a notification only while the ring is full,
        # and a drain takes everything up to an empty ring: so a drop since
        # the previous drain means this drain took a whole ring's worth
        # (or more) from some ring.  Fewer: nothing was lost.
        if n >= self.arx_slots and actx.overflows:
            self._hints_lost = True
            self.arx_overflows += actx.overflows
        self._hints += n
        return n

    def _poll_arx_py(self) -> int:
        ready = got = self._ready
        if self._echo_drain:  # the drain goes to the echo kernel's twin first
            got = set()
        n = 0
        for g in _drain_arx_twin(self._arx, self._arxbuf, got):
            if g >= self.arx_slots:  # (see _take_ids)
                self._hints_lost = True
                self.arx_overflows += 1
            n += g
        if got is not ready and got:
            self._echo_seen += len(got)
            for fid, st in _echo_twin(self._echo_conns, got, self._post_twin):
                self._echo_outcome(fid, st)
        if n:
            self._hints += n
        return n

    def _poll_locked(self) -> int:
        self.stack._drain_events()
        n = self._process_events() + self._poll_arx()
        self._flush()
        return n

    def _wait_locked(self, timeout: float | None) -> int:
        """One armed sleep on the eventfd and the control socket (at most
        MAX_SLEEP), lock released: flush, then arm + re-check (C:
        tas_app_arm_drain; twin: tas_armed_set + a drain), sleep (C:
        tas_app_sleep in ppoll; twin: select), then _after_sleep.
        Flushing before arming is as lossless as after: what the fast path
        answers before the doorbell is armed is in the rings when the
        re-check drains them.  The control socket is watched by the same
        sleep instead of being drained (a recvmsg) before and after every
        sleep: the stack sends an event before it rings the eventfd, so a
        pending event makes the sleep return at once, and the socket is
        read only when the sleep says so."""
        stack = self.stack
        if self._updates or stack._closes:
            self._flush()
        if self._events:  # no sleep: no need to arm
            n = self._process_events() + self._poll_arx()
            if self._updates or stack._closes:
                self._flush()
            return n
        actx = self._actx
        if actx is not None and self._echo_drain and self._echo_run and not self._waiters:
            return self._echo_run_locked(timeout)
        if actx is not None:
            k = lib.tas_app_arm_drain(actx, self._ids, _IDS_CAP)
            n = self._take_ids(k) if k else 0
        else:
            lib.tas_armed_set(self._app_armed, 1)
            n = self._poll_arx_py()
            if n:
                self._hdr.app_armed = 0
        if n:
            if self._updates or stack._closes:
                self._flush()
            return n
        t = MAX_SLEEP if self._waiters == 0 else 0.005
        if timeout is not None and timeout < t:
            t = timeout
        sock = -1 if stack._closed else self._sleep_fds[1]
        evfd = self.evfd
        self._waiters += 1
        self._lock.release()
        try:
            if actx is not None:
                ready = lib.tas_app_sleep(evfd, sock, int(t * 1e6))
            else:
                r = select.select([evfd] if sock < 0 else self._sleep_fds, [], [], t)[0]
                ready = (evfd in r) | (2 if sock in r else 0)
        finally:
            self._lock.acquire()
            self._waiters -= 1
        return self._after_sleep(ready)

    def _echo_run_locked(self, timeout: float | None) -> int:
        """_wait_locked of the echo server (the drains echo), in C:
        tas_app_echo_run repeats arm + re-check, sleep, disarm + drain for
        as long as the echo kernel serves every id a drain takes, and
        returns when Python must decide (outcomes, the control socket, a
        timeout or signal) or after ECHO_RUN_BUDGET_US.  The lock stays held
        throughout (a sleep included): the echo server owns its context, and
        this path is taken only when no other thread waits on it."""
        actx = self._actx
        t = MAX_SLEEP if timeout is None or timeout > MAX_SLEEP else timeout
        sock = -1 if self.stack._closed else self._sleep_fds[1]
        k = lib.tas_app_echo_run(actx, self._ids, _IDS_CAP, sock, int(t * 1e6), ECHO_RUN_BUDGET_US)
        n = actx.run_seen
        if n:
            self._echo_seen += n
        why = actx.run_why
        if why == 1:  # TAS_APP_RUN_IDS: that drain's ids (disarmed)
            n += self._take_ids(k)
        elif why == 2:  # TAS_APP_RUN_SLEPT: a sleep's result (armed)
            return n + self._after_sleep(actx.run_ready)
        if self._updates or self.stack._closes:
            self._flush()
        return n

    def _after_sleep(self, ready: int) -> int:
        """The end of a sleep (lock held, doorbell armed): ready is
        tas_app_sleep's result (TAS_APP_READY_EVFD 1, _SOCK 2, or -errno).
        Read one control message if the socket is readable (more: the next
        sleep returns at once), process events, disarm, clear the eventfd
        if it rang, drain the ARX rings (C: tas_app_drain), flush."""
        if self._closed:
            raise _oserror(errno.EBADF, "context closed")
        if ready < 0:
            self._hdr.app_armed = 0
            raise _oserror(-ready)
        stack = self.stack
        if ready & 2:
            stack._drain_events(True)
        n = self._process_events() if self._events else 0
        actx = self._actx
        if actx is not None:
            # disarm, clear the eventfd (if it rang), drain
            k = lib.tas_app_drain(actx, self._ids, _IDS_CAP, 3 if ready & 1 else 1)  # DISARM | CLEAR
            if k:
                n += self._take_ids(k)
        else:
            self._hdr.app_armed = 0
            if ready & 1:
                try:
                    os.eventfd_read(self.evfd)
                except BlockingIOError:
                    pass
            n += self._poll_arx_py()
        if self._updates or stack._closes:
            self._flush()
        return n

    def _spin_locked(self, deadline: float | None) -> int:
        """Poll the ARX rings for up to SPIN_US before sleeping, yielding the
        CPU between polls: a reply that comes back within a few tens of us
        (request/response traffic) then costs no eventfd wake-up on either
        side, and a fast path sharing this CPU still runs (sched_yield)."""
        end = time.monotonic() + SPIN_US / 1e6
        if deadline is not None and deadline < end:
            end = deadline
        self._flush()
        while True:
            n = self._poll_arx()
            if n or self._events:
                return n + self._process_events()
            if time.monotonic() >= end:
                return 0
            self._lock.release()
            try:
                os.sched_yield()
            finally:
                self._lock.acquire()

    def _block_until(self, cond: Callable[[], bool], timeout: float | None, what: str) -> None:
        """Poll/sleep until cond() (lock held); TimeoutError after timeout."""
        deadline = _deadline(timeout)
        while True:
            self._poll_locked()
            if cond():
                return
            remaining = _remaining(deadline)
            if remaining == 0:
                raise TimeoutError(errno.ETIMEDOUT, f"timed out {what}")
            self._wait_locked(remaining)
            self._check_open()

    # -- public ----------------------------------------------------------------
    def fileno(self) -> int:
        """The context eventfd: readable when something may have happened
        (then call poll())."""
        return self.evfd

    def poll(self) -> int:
        """Non-blocking: process control events and fast-path notifications,
        flush pending updates.  Returns the number of events seen."""
        with self._lock:
            self._check_open()
            return self._poll_locked()

    def wait(self, timeout: float | None = None) -> int:
        """Block until something happens (or timeout); returns poll()'s count.
        Returns at once if notifications arrived since the last wait() (also
        those an internal poll of recv/send/accept consumed)."""
        lock = self._lock
        lock.acquire()  # (acquire/release: cheaper than ``with`` on the per-wake-up path)
        try:
            return self._wait_body(timeout)
        finally:
            lock.release()

    def _wait_body(self, timeout: float | None) -> int:
        """wait() with the lock held."""
        if self._closed:
            raise _oserror(errno.EBADF, "context closed")
        if self._hints or self._events:
            n = self._poll_locked() + self._hints
            self._hints = 0
            return n
        start = _monotonic()
        if SPIN_US and timeout != 0:
            n = self._spin_locked(None if timeout is None else start + timeout)
            if n:
                self._hints = 0
                return n
        # the first sleep gets the whole timeout; the deadline is needed
        # only if it comes back empty
        t = None if timeout is None else (timeout if timeout > 0 else 0.0)
        n = self._wait_locked(t)
        if not n and timeout != 0:
            deadline = None if timeout is None else start + timeout
            while not n and _remaining(deadline) != 0:
                n = self._wait_locked(_remaining(deadline))
        self._hints = 0
        return n

    def ready_flows(self) -> set[int]:
        """Flow ids the fast path notified (data, acknowledged data, FIN)
        or a control event concerned (connected, failed, reset, closed)
        since the last call; hints only: read the connection's state.
        Complete unless hints_lost() says otherwise."""
        lock = self._lock
        lock.acquire()
        try:
            r, self._ready = self._ready, set()
        finally:
            lock.release()
        return r

    def poll_ready(self, events: bool = True, clear: bool = False) -> tuple[set[int], bool]:
        """poll(), then ready_flows() and hints_lost(), under one lock (the
        socket shim pump's step).  ``events=False``: without reading the
        control socket (events an earlier read queued are processed), for
        a caller that watches ``stack.control_fileno()`` itself.
        ``clear``: first clear the eventfd (fileno(), it was readable; in
        the drain's C call), for a caller that sleeps on it armed."""
        lock = self._lock
        lock.acquire()
        try:
            self._check_open()
            if events:
                self.stack._drain_events()
            if self._events:
                self._process_events()
            if clear and self._actx is None:
                try:
                    os.eventfd_read(self.evfd)
                except BlockingIOError:
                    pass
            self._poll_arx(lib.TAS_APP_WAKE_CLEAR if clear else 0)
            if self._updates or self.stack._closes:
                self._flush()
            r, self._ready = self._ready, set()
            lost, self._hints_lost = self._hints_lost, False
        finally:
            lock.release()
        return r, lost

    def hints_lost(self) -> bool:
        """True (once) if notifications may have been lost since the last
        call: an ARX ring was found full, so ready_flows() may miss flows;
        look at every connection once.  Counted in ``arx_overflows``."""
        lock = self._lock
        lock.acquire()
        try:
            lost, self._hints_lost = self._hints_lost, False
        finally:
            lock.release()
        return lost

    def flush(self) -> None:
        """Post the pending updates now (see Connection.splice_to's
        ``flush``); poll() and wait() do it too."""
        lock = self._lock
        lock.acquire()
        try:
            if not self._closed and (self._updates or self.stack._closes):
                self._flush()
        finally:
            lock.release()

    def connection(self, flow_id: int) -> Connection | None:
        """The open connection of a flow id (from ready_flows()), or None."""
        return self._flows.get(flow_id)

    def prepare_sleep(self) -> int:
        """For callers that sleep on fileno() in their own poll loop (the
        socket shim): arm the doorbell (the fast path then writes the
        eventfd), then poll once.  If this returns > 0, something happened:
        call finish_sleep() and do not sleep."""
        with self._lock:
            self._check_open()
            lib.tas_armed_set(self._app_armed, 1)
            return self._poll_locked() + len(self._events)

    def finish_sleep(self) -> None:
        """Disarm the doorbell and clear the eventfd (after prepare_sleep)."""
        with self._lock:
            if self._closed:
                return
            self._hdr.app_armed = 0
            try:
                os.eventfd_read(self.evfd)
            except BlockingIOError:
                pass

    def bind(self, port: int = 0, reuseaddr: bool = False) -> int:
        """Reserve a local port now (0: an ephemeral one), like bind(2):
        EADDRINUSE is raised here.  A later listen()/connect(local_port=)
        of this context takes the reservation; unbind() returns it."""
        with self._lock:
            self._check_open()
            rep, _ = self.stack._call("bind", ctx=self.ctx_id, port=port, reuseaddr=reuseaddr)
            return rep["port"]

    def unbind(self, port: int) -> None:
        """Give back a port reserved with bind() and never used."""
        with self._lock:
            self._check_open()
            self.stack._call("unbind", ctx=self.ctx_id, port=port)

    def listen(
        self, port: int, backlog: int = 128, reuseaddr: bool = False, keepalive: bool = False, cc: str = ""
    ) -> Listener:
        """keepalive: accepted connections get SO_KEEPALIVE (timing: `tas start
        --keepalive-idle/--keepalive-intvl/--keepalive-cnt`).  cc: congestion
        control of accepted connections (TCP_CONGESTION: "cubic", "newreno",
        "dctcp", "const", "fp-newreno"; "" = the stack's; unknown:
        FileNotFoundError, errno ENOENT)."""
        with self._lock:
            self._check_open()
            extra: dict = {"keepalive": True} if keepalive else {}
            if cc:
                extra["cc"] = cc
            rep, _ = self.stack._call(
                "listen", ctx=self.ctx_id, port=port, backlog=backlog, reuseaddr=reuseaddr, **extra
            )
            lst = Listener(self, rep["listener"], rep["port"])
            lst.cc = _cc_name(cc) if cc else ""
            self._listeners[lst.listener_id] = lst
            return lst

    def connect(
        self,
        ip: str,
        port: int,
        timeout: float | None = None,
        local_port: int = 0,
        rx_buf: int = 0,
        tx_buf: int = 0,
        keepalive: bool = False,
        cc: str = "",
    ) -> Connection:
        """Open a connection.  Blocks until established unless timeout == 0
        (then returns a connecting Connection: wait for ``connected``).
        Raises ConnectionRefusedError, TimeoutError, OSError(EHOSTUNREACH).
        keepalive: SO_KEEPALIVE (a dead peer resets the connection with
        ETIMEDOUT).  cc: this connection's congestion control
        (TCP_CONGESTION, see ``listen``; "" = the stack's)."""
        with self._lock:
            self._check_open()
            extra: dict = {"keepalive": True} if keepalive else {}
            if cc:
                extra["cc"] = cc
            rep, _ = self.stack._call(
                "connect",
                ctx=self.ctx_id,
                ip=ip,
                port=port,
                local_port=local_port,
                rx_buf=rx_buf,
                tx_buf=tx_buf,
                **extra,
            )
            info: FlowInfo = rep["flow"]
            conn = Connection(self, info, _STATE_CONNECTING)
            conn._cc = _cc_name(cc) if cc else ""
            self._flows[info.flow] = conn
            if timeout == 0:
                return conn
            try:
                self._block_until(lambda: conn._state != _STATE_CONNECTING, timeout, "connecting")
            except TimeoutError:
                conn._abort_quiet()
                raise
            if conn._state == _STATE_FAILED:
                conn._close_quiet()
                raise _oserror(conn._error, f"connect to {ip}:{port}: {os.strerror(conn._error)}")
            return conn

    def close(self) -> None:
        """Close every connection and listener and release the context."""
        with self._lock:
            if self._closed:
                return
            for conn in list(self._flows.values()):
                conn._close_quiet()
            for lst in list(self._listeners.values()):
                try:
                    lst.close()
                except OSError:
                    pass
            self._flush()
            try:
                self.stack._call("ctx_close", ctx=self.ctx_id)
            except OSError:
                pass
            self._teardown()

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._actx = None  # (it points into the rings closed below)
        for conn in self._echo_conns.values():
            conn._fl.echo = 0
        self._echo_conns = {}
        self._echo_drain = False
        self.stack._contexts.pop(self.ctx_id, None)
        for ring in self._atx + self._arx:
            close = getattr(ring, "close", None)
            if close is not None:
                close()
        self._atx = self._arx = []
        for conn in [*self._flows.values(), *self._pinned]:
            conn._gone = True
            conn._drop_views()
        self._pinned = []
        self._mv.release()
        self.region.close()
        os.close(self.evfd)
        self.evfd = -1

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Listener:
    """A listening port; connections complete in the stack and queue here."""

    def __init__(self, ctx: Context, listener_id: int, port: int) -> None:
        self.ctx = ctx
        self.listener_id = listener_id
        self.port = port
        self.cc = ""  # TCP_CONGESTION of accepted connections ("" = the stack's)
        self._queue: deque[Connection] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"<libtas.Listener port={self.port}>"

    def fileno(self) -> int:
        return self.ctx.fileno()

    def pending(self) -> int:
        """Connections waiting to be accepted."""
        with self.ctx._lock:
            if not self.ctx._closed:
                self.ctx._poll_locked()
            return len(self._queue)

    def queued(self) -> int:
        """Connections already queued for accept() (no poll: for callers
        that poll the context themselves, e.g. the socket shim's pump)."""
        return len(self._queue)

    def accept(self, timeout: float | None = None) -> Connection:
        """The next established connection.  timeout=0: BlockingIOError if
        none is queued; TimeoutError after timeout seconds."""
        ctx = self.ctx
        with ctx._lock:
            if self._closed:
                raise _oserror(errno.EBADF, "listener closed")
            ctx._check_open()
            if self._queue:  # the oldest first, as a poll would only queue more behind it
                return self._queue.popleft()
            if timeout == 0:
                ctx._poll_locked()
                if not self._queue:
                    raise BlockingIOError(errno.EAGAIN, "no pending connection")
            else:
                ctx._block_until(lambda: bool(self._queue) or self._closed, timeout, "accepting")
            if self._closed:
                raise _oserror(errno.EBADF, "listener closed")
            return self._queue.popleft()

    @property
    def congestion_control(self) -> str:
        """getsockopt(TCP_CONGESTION) on the listener."""
        return self.cc or self.ctx.stack.default_cc

    def set_congestion_control(self, name: str) -> str:
        """setsockopt(TCP_CONGESTION): connections accepted from now on get
        `name` (FileNotFoundError, ENOENT, if unknown)."""
        with self.ctx._lock:
            if self._closed:
                raise _oserror(errno.EBADF, "listener closed")
            rep, _ = self.ctx.stack._call("set_cc", listener=self.listener_id, cc=name)
            self.cc = rep["cc"]
            return self.cc

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset."""
        ctx = self.ctx
        with ctx._lock:
            if self._closed:
                return
            self._closed = True
            ctx._listeners.pop(self.listener_id, None)
            while self._queue:
                self._queue.popleft()._abort_quiet()
            if not ctx._closed:
                ctx.stack._call("listen_close", listener=self.listener_id)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LazyView:
    """A Connection's buffer view, made on first use and then an instance
    attribute (what most connections of an echo server never need: the
    echo kernel copies in C)."""

    def __init__(self, name: str, off: str, length: str) -> None:
        self.name, self.off, self.length = name, off, length

    def __get__(self, conn, cls=None):
        if conn is None:
            return self
        off = getattr(conn, self.off)
        view = conn.ctx._mv[off : off + getattr(conn, self.length)]
        conn.__dict__[self.name] = view
        return view


def _flow_init_twin(fl, base, af_off, rx_off, rx_len, tx_off, tx_len, flow, gen, core) -> None:
    """Python twin of tas_app_flow_init (TAS_PURE=1)."""
    ffi.memmove(fl, bytes(ffi.sizeof("struct tas_app_flow")), ffi.sizeof("struct tas_app_flow"))
    fl.af = ffi.cast("struct tas_appflow *", base + af_off)
    fl.rx = base + rx_off
    fl.tx = base + tx_off
    fl.rx_len, fl.tx_len, fl.flow_id, fl.gen, fl.core = rx_len, tx_len, flow, gen, core


_flow_init = _flow_init_twin if use_pure() else lib.tas_app_flow_init


def _fl_field(name: str) -> property:
    """A Connection attribute kept in its struct tas_app_flow."""

    def set_(self, value: int) -> None:
        setattr(self._fl, name, value)

    return property(operator.attrgetter("_fl." + name), set_)


class Connection:
    """A TCP connection whose buffers live in the context region."""

    def __init__(self, ctx: Context, info: FlowInfo, state: str) -> None:
        self._info = info
        self._setup(ctx, info.flow, info.gen, info.core, info.appflow_off, info.rx_off, info.rx_len,
                    info.tx_off, info.tx_len, state)

    @classmethod
    def _from_record(cls, ctx: Context, r: tuple) -> Connection:
        """An accepted connection from a checked ``newconn`` record
        (ctlproto.decode_events_raw): its FlowInfo is built only if asked
        for (``info``)."""
        conn = _new_object(cls)
        conn._info = None
        conn._rec = r
        conn._setup(ctx, r[4], r[2], r[1], r[6], r[7], r[8], r[9], r[10], _STATE_CONNECTED)
        return conn

    def _setup(
        self, ctx: Context, flow: int, gen: int, core: int, af_off: int, rx_off: int, rx_len: int,
        tx_off: int, tx_len: int, state: str,
    ) -> None:
        heap, end = ctx._heap_off, ctx._region_size
        if (
            af_off < heap
            or af_off + _APPFLOW_BYTES > end
            or rx_off < heap
            or rx_off + rx_len > end
            or tx_off < heap
            or tx_off + tx_len > end
        ):
            raise ProtocolError(f"flow {flow}: buffer outside the context heap")
        self.ctx = ctx
        self.flow_id = flow
        self._state = state
        self._error = 0
        self._reset = 0  # errno of a reset event
        self._reset_reported = False
        self._cc = ""  # TCP_CONGESTION ("" = the stack's default)
        self._gone = False  # `closed` event seen
        self._shut_wr = False
        self._shut_rd = False
        # positions (rx_tail, tx_head, rx_posted) live in a struct
        # tas_app_flow, shared with the echo kernel (tas_app_echo)
        fl = self._fl = _ffi_new(_APP_FLOW)
        _flow_init(fl, ctx._base, af_off, rx_off, rx_len, tx_off, tx_len, flow, gen, core)
        self._af = fl.af
        self._rx_off = rx_off  # (the buffer views, _rx and _tx, are made on first use)
        self._tx_off = tx_off
        self._rx_mask = rx_len - 1
        self._tx_mask = tx_len - 1
        # the FlowInfo's hot fields as plain attributes
        self._rx_len = rx_len
        self._tx_len = tx_len
        self._core = core
        self._gen = gen

    _rx = _LazyView("_rx", "_rx_off", "_rx_len")  # memoryview of the rx buffer
    _tx = _LazyView("_tx", "_tx_off", "_tx_len")  # memoryview of the tx buffer

    # the positions, in the record (self._fl)
    _rx_tail = _fl_field("rx_tail")  # bytes consumed
    _tx_head = _fl_field("tx_head")  # bytes written
    _rx_posted = _fl_field("rx_posted")  # rx_tail of the last update posted

    @property
    def info(self) -> FlowInfo:
        """The flow's FlowInfo (docs/CONTROL.md); an accepted connection's is
        built on first use."""
        info = self._info
        if info is None:
            info = self._info = ctlproto.record_flowinfo(self._rec)
        return info

    def __repr__(self) -> str:
        return f"<libtas.Connection {self.local_address}->{self.remote_address} {self._state}>"

    # -- properties ----------------------------------------------------------------
    @property
    def local_address(self) -> tuple[str, int]:
        return (self.info.local_ip, self.info.local_port)

    @property
    def remote_address(self) -> tuple[str, int]:
        return (self.info.remote_ip, self.info.remote_port)

    @property
    def connected(self) -> bool:
        with self.ctx._lock:
            if self._state == _STATE_CONNECTING and not self.ctx._closed:
                self.ctx._poll_locked()
            return self._state == _STATE_CONNECTED and not self._is_reset()

    @property
    def at_eof(self) -> bool:
        """The peer sent FIN and every byte before it was consumed."""
        with self.ctx._lock:
            if self._state != _STATE_CONNECTED:
                return False
            if self._gone or self.ctx._closed:
                return False
            return bool(self._flags() & TAS_AF_RX_FIN) and self._rx_avail() == 0

    def fileno(self) -> int:
        return self.ctx.fileno()

    # -- helpers --------------------------------------------------------------------
    def _flags(self) -> int:
        return TAS_AF_RESET if self._gone else self._af.flags

    def _is_reset(self) -> bool:
        if not self._reset and self._state == _STATE_CONNECTED and self._flags() & TAS_AF_RESET:
            self._reset = errno.ECONNRESET
        return bool(self._reset)

    def _rx_avail(self) -> int:
        if self._gone:
            return 0
        avail = (self._af.rx_head - self._rx_tail) & 0xFFFFFFFFFFFFFFFF
        return avail if avail <= self._rx_len else 0  # never trust a bogus head

    def _tx_free(self) -> int:
        if self._gone:
            return 0
        used = (self._tx_head - self._af.tx_acked) & 0xFFFFFFFFFFFFFFFF
        return self._tx_len - used if used <= self._tx_len else 0

    def _check_usable(self) -> None:
        if self._state == _STATE_CLOSED:
            raise _oserror(errno.EBADF, "connection closed")
        if self.ctx._closed:
            raise _oserror(errno.EBADF, "context closed")
        if self._state == _STATE_FAILED:
            raise _oserror(self._error)

    def _wait_connected(self, timeout: float | None) -> None:
        if self._state == _STATE_CONNECTING:
            if timeout == 0:
                self.ctx._poll_locked()
                if self._state == _STATE_CONNECTING:
                    raise BlockingIOError(errno.EAGAIN, "connection in progress")
            else:
                self.ctx._block_until(lambda: self._state != _STATE_CONNECTING, timeout, "connecting")
            self._check_usable()

    def _raise_reset_on_send(self) -> None:
        if self._reset_reported:
            raise BrokenPipeError(errno.EPIPE, "connection was reset")
        self._reset_reported = True
        raise _reset_error(self._reset)

    def _after_consume(self, was_full: bool) -> None:
        """Queue an ATX update if the fast path should learn about freed rx space."""
        freed = self._rx_tail - self._rx_posted
        if freed <= 0:
            return
        # Like a receiver's window update (RFC 1122 4.2.3.3): tell the fast
        # path only when the window it advertises has shrunk to half the
        # buffer or a quarter of the buffer was freed; small reads ride
        # along with the next send's update instead of costing one each.
        rx_len = self._rx_len
        if was_full or freed >= rx_len // 4 or self._af.rx_head - self._rx_posted >= rx_len // 2:
            self.ctx._queue_update(self)

    # -- data ---------------------------------------------------------------------------
    def tx_space(self) -> int:
        """Bytes send() can copy without blocking."""
        with self.ctx._lock:
            if self._state != _STATE_CONNECTED or self._shut_wr:
                return 0
            return self._tx_free()

    def readable(self) -> bool:
        """True if recv() would not block (data, EOF or an error)."""
        with self.ctx._lock:
            if self._state in (_STATE_CLOSED, _STATE_FAILED) or self.ctx._closed:
                return True
            if self._state == _STATE_CONNECTING:
                return False
            return bool(self._rx_avail() or self._flags() & (TAS_AF_RX_FIN | TAS_AF_RESET) or self._reset)

    def writable(self) -> bool:
        """True if send() would not block (space or an error)."""
        with self.ctx._lock:
            if self._state in (_STATE_CLOSED, _STATE_FAILED) or self.ctx._closed:
                return True
            if self._state == _STATE_CONNECTING:
                return False
            return bool(self._shut_wr or self._is_reset() or self._tx_free())

    def send(self, data, timeout: float | None = None) -> int:
        """Copy as much of data as fits into the tx buffer; block while it is
        full (timeout=0: BlockingIOError).  Returns bytes accepted."""
        ctx = self.ctx
        with ctx._lock:
            self._check_usable()
            mv = memoryview(data).cast("B")
            deadline = _deadline(timeout)
            self._wait_connected(timeout)
            while True:
                if self._shut_wr:
                    raise BrokenPipeError(errno.EPIPE, "send after shutdown")
                if self._is_reset():
                    self._raise_reset_on_send()
                if not len(mv):
                    return 0
                space = self._tx_free()
                if space:
                    break
                if timeout == 0:
                    ctx._poll_locked()
                    if self._tx_free() or self._is_reset():
                        continue
                    raise BlockingIOError(errno.EAGAIN, "send buffer full")
                remaining = _remaining(deadline)
                if remaining == 0:
                    raise TimeoutError(errno.ETIMEDOUT, "timed out sending")
                ctx._poll_locked()
                if self._tx_free() or self._is_reset():
                    continue
                ctx._wait_locked(remaining)
                self._check_usable()
            n = min(space, len(mv))
            pos = self._tx_head & self._tx_mask
            first = min(n, self._tx_len - pos)
            self._tx[pos : pos + first] = mv[:first]
            if n > first:
                self._tx[: n - first] = mv[first:n]
            self._tx_head += n
            ctx._queue_update(self)
            ctx._flush()
            return n

    def sendall(self, data, timeout: float | None = None) -> None:
        """Send all of data (timeout applies to the whole call)."""
        mv = memoryview(data).cast("B")
        deadline = _deadline(timeout)
        sent = 0
        while sent < len(mv):
            remaining = _remaining(deadline)
            if remaining == 0 and timeout != 0:
                raise TimeoutError(errno.ETIMEDOUT, f"timed out after sending {sent} bytes")
            sent += self.send(mv[sent:], remaining)

    def _recv_ready(self, timeout: float | None) -> int:
        """Wait for data/EOF; returns readable bytes (0 = EOF).  Lock held."""
        ctx = self.ctx
        self._check_usable()
        self._wait_connected(timeout)
        if self._shut_rd:
            return 0
        deadline = _deadline(timeout)
        while True:
            flags = self._flags()
            avail = self._rx_avail()
            if avail:
                return avail
            if self._is_reset() or flags & TAS_AF_RESET:
                self._reset = self._reset or errno.ECONNRESET
                raise _reset_error(self._reset)
            if flags & TAS_AF_RX_FIN:
                return 0
            ctx._poll_locked()
            if self._rx_avail() or self._reset or self._flags() & (TAS_AF_RX_FIN | TAS_AF_RESET):
                continue
            if timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "nothing to receive")
            remaining = _remaining(deadline)
            if remaining == 0:
                raise TimeoutError(errno.ETIMEDOUT, "timed out receiving")
            ctx._wait_locked(remaining)
            self._check_usable()

    def _copy_out(self, dst: memoryview, n: int) -> None:
        pos = self._rx_tail & self._rx_mask
        first = min(n, self._rx_len - pos)
        dst[:first] = self._rx[pos : pos + first]
        if n > first:
            dst[first:n] = self._rx[: n - first]

    def _consume_locked(self, n: int, avail: int) -> None:
        was_full = avail >= self._rx_len
        self._rx_tail += n
        self._after_consume(was_full)
        self.ctx._flush()

    def recv(self, n: int, timeout: float | None = None) -> bytes:
        """Up to n bytes; b'' at EOF.  Blocks until data (timeout=0:
        BlockingIOError).  ConnectionResetError after a reset."""
        if n < 0:
            raise ValueError("negative count")
        with self.ctx._lock:
            avail = self._recv_ready(timeout)
            k = min(n, avail)
            if not k:
                return b""
            out = bytearray(k)
            self._copy_out(memoryview(out), k)
            self._consume_locked(k, avail)
            return bytes(out)

    def recv_into(self, buf, nbytes: int = 0, timeout: float | None = None) -> int:
        """Like recv() into a writable buffer; returns the byte count."""
        dst = memoryview(buf).cast("B")
        want = len(dst) if nbytes <= 0 else min(nbytes, len(dst))
        with self.ctx._lock:
            avail = self._recv_ready(timeout)
            k = min(want, avail)
            if k:
                self._copy_out(dst, k)
                self._consume_locked(k, avail)
            return k

    def recv_view(self) -> memoryview:
        """Zero-copy: a read-only view of the readable bytes (up to the buffer
        wrap; empty if none).  Valid until consume(); call consume(n) after."""
        with self.ctx._lock:
            self._check_usable()
            if self._state == _STATE_CONNECTING:
                self.ctx._poll_locked()
                if self._state == _STATE_CONNECTING:
                    return memoryview(b"")
            if self._is_reset():
                raise _reset_error(self._reset)
            avail = self._rx_avail()
            pos = self._rx_tail & self._rx_mask
            k = min(avail, self._rx_len - pos)
            return self._rx[pos : pos + k].toreadonly()

    def consume(self, n: int) -> None:
        """Mark n bytes returned by recv_view() as read."""
        with self.ctx._lock:
            self._check_usable()
            avail = self._rx_avail()
            if not 0 <= n <= avail:
                raise ValueError(f"consume({n}) with {avail} bytes readable")
            if n:
                self._consume_locked(n, avail)

    def splice_to(self, dst: Connection, nbytes: int | None = None, flush: bool = True) -> int:
        """Zero-copy relay: move readable bytes of this connection straight
        into dst's send buffer (dst may be this connection: an echo), as many
        as dst has room for (at most nbytes).  Never blocks; returns the bytes
        moved, 0 when nothing is readable (check at_eof) or dst is full (wait
        for acknowledged data).  Both sides' positions go to the fast path in
        one update per flow, which is what makes a relay or an echo cheap:
        recv_view + send + consume cost three locked calls and two updates.
        ``flush=False`` leaves the update queued for the next Context.flush(),
        poll() or wait(): a server serving many flows in one pass then posts
        them in one batch and rings each fast-path core once.
        Errors as recv() for this side and send() for dst."""
        ctx = self.ctx
        if dst is self and nbytes is None:  # an echo: the common case first
            with ctx._lock:
                n = self._echo_locked(flush)
                if n >= 0:
                    return n
        if dst.ctx is not ctx:
            raise ValueError("splice_to: both connections must belong to the same context")
        with ctx._lock:
            self._check_usable()
            dst._check_usable()
            if self._state == _STATE_CONNECTING or dst._state == _STATE_CONNECTING or self._shut_rd:
                return 0
            if self._is_reset():
                raise _reset_error(self._reset)
            if dst._shut_wr:
                raise BrokenPipeError(errno.EPIPE, "send after shutdown")
            if dst._is_reset():
                dst._raise_reset_on_send()
            avail = self._rx_avail()
            n = min(avail, dst._tx_free())
            if nbytes is not None:
                n = min(n, max(nbytes, 0))
            if not n:
                return 0
            rx, tx = self._rx, dst._tx
            rx_len, tx_len = self._rx_len, dst._tx_len
            src = self._rx_tail & self._rx_mask
            out = dst._tx_head & dst._tx_mask
            left = n
            while left:  # at most three pieces: each buffer wraps at most once
                k = min(left, rx_len - src, tx_len - out)
                tx[out : out + k] = rx[src : src + k]
                src = (src + k) & self._rx_mask
                out = (out + k) & dst._tx_mask
                left -= k
            dst._tx_head += n
            self._rx_tail += n
            ctx._queue_update(dst)
            self._after_consume(avail >= rx_len)
            if flush:
                ctx._flush()
            return n

    def _echo_locked(self, flush: bool) -> int:
        """splice_to(self) for a connection in the plain state (connected,
        no reset, FIN or shutdown seen, context open): the bytes moved, or -1
        if the state is not plain (the caller then takes the general path,
        which raises or returns what splice_to always did).  Lock held."""
        ctx = self.ctx
        if (
            self._state != _STATE_CONNECTED
            or self._reset
            or self._gone
            or self._shut_rd
            or self._shut_wr
            or ctx._closed
        ):
            return -1
        af = self._af
        if af.flags & TAS_AF_RESET:
            return -1
        fl = self._fl
        rx_len = self._rx_len
        tail = fl.rx_tail
        avail = (af.rx_head - tail) & _M64
        if avail > rx_len:  # never trust a bogus head
            return 0
        tx_len = self._tx_len
        head = fl.tx_head
        used = (head - af.tx_acked) & _M64
        if used > tx_len:
            return 0
        n = min(avail, tx_len - used)
        if not n:
            return 0
        rx, tx = self._rx, self._tx
        rx_mask, tx_mask = self._rx_mask, self._tx_mask
        src = tail & rx_mask
        out = head & tx_mask
        if src + n <= rx_len and out + n <= tx_len:  # neither buffer wraps
            tx[out : out + n] = rx[src : src + n]
        else:
            left = n
            while left:  # at most three pieces: each buffer wraps at most once
                k = min(left, rx_len - src, tx_len - out)
                tx[out : out + k] = rx[src : src + k]
                src = (src + k) & rx_mask
                out = (out + k) & tx_mask
                left -= k
        fl.tx_head = head + n
        fl.rx_tail = tail + n
        # one update carries both positions (what _after_consume would queue
        # for the rx side is this same flow's update)
        ctx._updates[self.flow_id] = self
        if flush:
            ctx._flush()
        return n

    def echo(self, flush: bool = True) -> bool:
        """``splice_to(self)`` followed by ``readable()``, in one call: move
        what is readable into this connection's own send buffer and return
        True if input is still there to look at (bytes that did not fit,
        EOF or an error: then use splice_to/at_eof as usual), False when
        everything was echoed.  Errors as splice_to."""
        lock = self.ctx._lock
        lock.acquire()  # (cheaper than ``with`` on this path)
        try:
            if self._echo_locked(flush) >= 0:  # the plain state: moved what fits
                af = self._af
                avail = (af.rx_head - self._rx_tail) & _M64
                return 0 < avail <= self._rx_len or bool(af.flags & (TAS_AF_RX_FIN | TAS_AF_RESET))
            self.splice_to(self, flush=flush)
            return self.readable()
        finally:
            lock.release()

    def _echo_status(self, flush: bool) -> int:
        """For the echo server: echo() in the plain state, saying what is
        left: ECHO_DONE (everything echoed: echo() would return False),
        ECHO_EOF (everything echoed and the peer's FIN seen, no reset: the
        connection is at EOF), ECHO_MORE (input left, or any other state:
        go the general way, splice_to/readable/at_eof)."""
        lock = self.ctx._lock
        lock.acquire()
        try:
            if self._echo_locked(flush) < 0:
                return ECHO_MORE
            af = self._af
            flags = af.flags  # (before rx_head: with FIN seen, rx_head is final)
            if (af.rx_head - self._fl.rx_tail) & _M64:
                return ECHO_MORE
            if not flags & (TAS_AF_RX_FIN | TAS_AF_RESET):
                return ECHO_DONE
            return ECHO_EOF if not flags & TAS_AF_RESET else ECHO_MORE
        finally:
            lock.release()

    # -- teardown -------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        """SHUT_WR: send FIN after the bytes written so far.  SHUT_RD: recv()
        returns b'' from now on (local only).  SHUT_RDWR: both."""
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError(f"bad shutdown mode {how}")
        ctx = self.ctx
        with ctx._lock:
            self._check_usable()
            if self._state == _STATE_CONNECTING:
                raise _oserror(errno.ENOTCONN)
            self._fl.echo = 0  # not the plain state any more: no echo kernel
            if how in (socket.SHUT_RD, socket.SHUT_RDWR):
                self._shut_rd = True
            if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._shut_wr:
                self._shut_wr = True
                ctx._flush()
                if not self._is_reset():
                    ctx.stack._call("shutdown", flow=self.flow_id, tx_head=self._tx_head)

    def close(self, flush: bool = True) -> None:
        """Close the connection (FIN after pending data; the stack keeps
        sending it).  Idempotent.  ``flush=False``: the request is held back
        until the context's next flush()/poll()/wait() or the next request
        (a server closing many connections in one pass sends one message)."""
        ctx = self.ctx
        lock = ctx._lock
        lock.acquire()
        try:
            if self._state == _STATE_CLOSED:
                return
            if ctx._closed:
                self._state = _STATE_CLOSED
                return
            if ctx._updates:
                ctx._flush_updates()  # (held closes stay held)
            gone = self._gone
            self._release()
            if gone:
                return
            # no reply awaited: the stack queues the FIN after tx_head (or
            # resets if rx_tail left data unread) in request order
            fl = self._fl
            ctx.stack._post_close(self.flow_id, fl.tx_head, fl.rx_tail, not flush)
        finally:
            lock.release()

    @property
    def congestion_control(self) -> str:
        """getsockopt(TCP_CONGESTION): this connection's algorithm."""
        return self._cc or self.ctx.stack.default_cc

    def set_congestion_control(self, name: str) -> str:
        """setsockopt(TCP_CONGESTION) on an open connection: switch this
        flow's algorithm (it keeps its window).  FileNotFoundError (ENOENT)
        for an unknown name; returns the algorithm now in force."""
        with self.ctx._lock:
            self._check_usable()
            rep, _ = self.ctx.stack._call("set_cc", flow=self.flow_id, cc=name)
            self._cc = rep["cc"]
            return self._cc

    def set_keepalive(self, on: bool = True) -> None:
        """setsockopt(SO_KEEPALIVE): probe an idle peer; if it stays silent
        the connection is reset and recv/send raise KeepaliveTimeoutError
        (errno ETIMEDOUT)."""
        with self.ctx._lock:
            self._check_usable()
            self.ctx.stack._call("keepalive", flow=self.flow_id, on=bool(on))

    def abort(self) -> None:
        """Reset the connection (RST) and discard its buffers."""
        with self.ctx._lock:
            if self._state == _STATE_CLOSED:
                return
            if self.ctx._closed:
                self._state = _STATE_CLOSED
                return
            gone = self._gone
            self._release()
            if gone:
                return
            try:
                self.ctx.stack._call("abort", flow=self.flow_id)
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise

    def _release(self) -> None:
        self._state = _STATE_CLOSED
        ctx = self.ctx
        ctx._flows.pop(self.flow_id, None)
        ctx._updates.pop(self.flow_id, None)
        if self._fl.echo:
            ctx._echo_drop(self)
        if not self._drop_views():
            ctx._pinned.append(self)

    def _drop_views(self) -> bool:
        """Release the buffer views (those made); False if one is still
        exported."""
        d = self.__dict__
        if "_rx" not in d and "_tx" not in d:  # never made
            return True
        ok = True
        for name in ("_rx", "_tx"):
            v = d.get(name)
            if v is not None:
                try:
                    v.release()
                except BufferError:
                    ok = False  # a recv_view() is still held by the caller
        return ok

    def _abort_quiet(self) -> None:
        try:
            self.abort()
        except OSError:
            self._release()

    def _close_quiet(self) -> None:
        try:
            self.close()
        except OSError:
            self._release()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
