"""The shim's per-process runtime: one libtas Stack + Context and the pump.

Every shim socket the application sees is a real kernel AF_UNIX stream
socket (one end of a socketpair for a connection, a listening AF_UNIX socket
with an abstract address for a listener).  The *pump* thread owns the other
ends and moves bytes between them and the stack's flows in batches:

* stack -> app: ``recv_view()`` of the flow's rx buffer, ``send()`` into the
  pump end (non-blocking), ``consume()`` what the kernel took;
* app -> stack: ``recv_into()`` from the pump end, at most the flow's free
  tx space, ``send()`` into the flow;
* peer FIN -> ``shutdown(SHUT_WR)`` of the pump end (the app reads EOF);
  app EOF (shutdown or close) -> ``shutdown(SHUT_WR)`` of the flow (FIN);
* reset -> the pump end is closed (the app's socket object raises
  ConnectionResetError once, see sock.py);
* a stack connection queued on a listener -> the pump connects a new AF_UNIX
  socket to the app's listening socket; its abstract name carries the TCP
  addresses, so ``accept()`` (even in a forked child) knows them.

The pump sleeps in ``poll()`` on the context eventfd (armed doorbell), a
wake-up eventfd and its socket ends, so readiness of the app's fds changes
without the app calling into the shim.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import select
import socket
import threading
import time
from collections import deque

from libtas.shim import shimio

log = logging.getLogger("libtas.shim")

_BUF = 256 << 10
_FWD_MAX = 1 << 20  # bytes tas_shim_fwd moves per call (then the other links get a turn)
_AF_FIN_RESET = 3  # TAS_AF_RX_FIN | TAS_AF_RESET


def _ctx_buf() -> int | None:
    """The flow buffer size (rx and tx) of the shim's context: TAS_SHIM_BUF
    bytes (the stack rounds it to a power of two in [4 KiB, 16 MiB]), else
    the stack's default (`tas start --rx-buf`, 256 KiB).  Every connection
    of the process, accepted ones included, takes 64 B + rx + tx of the
    context's region (`tas start --ctx-region-mb`, 256 MiB): ~511 flows at
    256 KiB, ~2,000 at 64 KiB, ~32,000 at 4 KiB.  A socket's SO_RCVBUF /
    SO_SNDBUF set before connect() still sizes its own flow."""
    v = os.environ.get("TAS_SHIM_BUF", "")
    try:
        n = int(v) if v else 0
    except ValueError:
        log.warning("TAS_SHIM_BUF=%r is not a number of bytes: ignored", v)
        return None
    return n if n > 0 else None


_ANAME = "tas-shim"
_EXIT_DRAIN = 10.0  # seconds the interpreter exit waits for app data to reach the stack

CONNECTING, ESTABLISHED, FAILED, DONE = "connecting", "established", "failed", "done"


_SET = threading.Event()
_SET.set()


class Link:
    """One stack connection and the pump's end of the app's socketpair."""

    def __init__(self, conn, inner: socket.socket, state: str, junk: int = 0) -> None:
        self.conn = conn
        self.inner = inner
        self.fd = inner.fileno()
        self.state = state
        self.junk = junk  # filler bytes written by connect() so the app fd is not writable yet
        self.error = 0  # connect failure (SO_ERROR)
        self.reset = 0  # errno of a reset
        # connect finished (either way); born established: already set
        self.outcome = threading.Event() if state == CONNECTING else _SET
        self.app_eof = False  # the app shut down writing (or closed)
        self.app_gone = False  # every app fd closed (POLLHUP / EPIPE)
        self.stack_eof = False  # peer FIN passed on (pump end shut down for writing)
        self.want_out = False
        self.abort_req = False
        self.mask = -1
        self.token: str | None = None


class ListenLink:
    """A stack listener and the address of the app's AF_UNIX listening socket."""

    def __init__(self, lst, addr: str, family: int) -> None:
        self.lst = lst
        self.addr = addr
        self.family = family
        self.pending: deque = deque()
        self.closed = False


def _fmt_name(pid: int, token: int, local: tuple, remote: tuple) -> str:
    return f"\0{_ANAME}/{pid}/{token}/{local[0]}/{local[1]}/{remote[0]}/{remote[1]}"


def parse_name(name) -> tuple[int, str, tuple, tuple] | None:
    """(pid, token, local, remote) from an accepted socket's peer name."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if not isinstance(name, str) or not name.startswith("\0" + _ANAME + "/"):
        return None
    try:
        _, pid, token, lip, lport, rip, rport = name[1:].split("/")
        return int(pid), f"{pid}/{token}", (lip, int(lport)), (rip, int(rport))
    except ValueError:
        return None


class Runtime:
    """Stack connection, context and pump thread of this process."""

    def __init__(self, state_dir: str) -> None:
        from libtas.api import Stack

        self.pid = os.getpid()
        self.state_dir = state_dir
        self.stack = Stack(state_dir)
        try:
            buf = _ctx_buf()
            self.ctx = self.stack.context(rx_buf=buf, tx_buf=buf)
        except BaseException:
            self.stack.close()
            raise
        self.local_ip = self.stack.local_ip
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._adds: list = []
        self.links: dict[int, Link] = {}
        self.by_fid: dict[int, Link] = {}  # flow id -> link (ready_flows() names flows)
        self._connecting: set[Link] = set()
        self._fresh: list[Link] = []  # links added since the last pass
        self.listeners: list[ListenLink] = []
        self.accepted: dict[str, Link] = {}
        self._counter = 0
        self._poller = select.poll()
        self._buf = bytearray(_BUF)
        self._bufmv = memoryview(self._buf)
        self._exiting = False
        self._stopped = False
        self._error_logged = False
        self._io = shimio.ShimIO(self.ctx)
        self._thread = threading.Thread(target=self._run, name="tas-shim-pump", daemon=True)
        self._thread.start()
        atexit.register(self._atexit)

    # -- called from application threads ---------------------------------------
    def next_name(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"\0{_ANAME}/{self.pid}/{prefix}{self._counter}"

    def wake(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    def add_link(self, link: Link) -> None:
        with self._lock:
            self._adds.append(("link", link))
        self.wake()

    def add_listener(self, ll: ListenLink) -> None:
        with self._lock:
            self._adds.append(("listener", ll))
        self.wake()

    def close_listener(self, ll: ListenLink) -> None:
        with self.ctx._lock:
            if ll.closed:
                return
            ll.closed = True
            try:
                ll.lst.close()
            except OSError:
                pass
            while ll.pending:
                ll.pending.popleft()._abort_quiet()
        self.wake()

    def abort_link(self, link: Link) -> None:
        link.abort_req = True
        self.wake()

    def send_direct(self, link: Link, data) -> int:
        """The app's send() straight into the flow (see ShimSocket._send_direct):
        allowed only while the pair holds nothing the app wrote before (its
        bytes must reach the stack first).  The pump moves pair -> stack under
        the context lock, so checking the pair and writing here under the same
        lock keeps the app's byte order.  The copy and the flow's update are
        one C call (tas_shim_send).  Returns bytes taken (0: use the pair)."""
        if link.state != ESTABLISHED or link.app_eof or link.app_gone or link.junk:
            return 0
        ctx = self.ctx
        conn = link.conn
        with ctx._lock:
            if ctx._closed or conn._state != "connected" or conn._shut_wr or conn._gone or conn._reset:
                return 0  # the pair path reports it as the kernel would
            try:
                n, st = self._io.send(conn, link.fd, data)  # (BUSY: the pair holds bytes)
            except (OSError, ValueError, TypeError):
                return 0
            if st & shimio.UNPOSTED:
                ctx._queue_update(conn)
            if ctx._updates or ctx.stack._closes:
                ctx._flush()
            return n

    def take_accepted(self, token: str) -> Link | None:
        with self._lock:
            return self.accepted.pop(token, None)

    # -- the pump -----------------------------------------------------------------
    def _run(self) -> None:
        """The pump's loop.  A pass services only what may have changed: the
        links of the flows the context names (ready_flows(): data, acks,
        FIN, state changes), the links whose pair end poll() reported, the
        connecting ones and the listeners with queued connections; a full
        pass (every link) follows new links, a wake-up eventfd write
        (abort, listener close, exit), lost hints and an idle poll()
        timeout.  Then sleep in poll() (doorbell armed, see below): the
        masks are level-triggered, so nothing left over is missed."""
        ctx = self.ctx
        P = self._poller
        cfd = ctx.fileno()
        hdr = ctx._hdr
        P.register(cfd, select.POLLIN)
        P.register(self._wake, select.POLLIN)
        ctl = self.stack.control_fileno()
        P.register(ctl, select.POLLIN)
        full = ctl_ready = True
        rang = False
        touched: set[int] = set()
        while not self._stopped:
            try:
                if self._adds:
                    self._take_adds()
                    full = True
                # the control socket is read only when poll() said so
                ready, lost = ctx.poll_ready(ctl_ready, rang)
                ctl_ready = rang = False
                if lost or self._exiting:
                    full = True
                self._pass(ready, touched, full)
                full = False
                touched = set()
                # The doorbell stays armed while the pump works: armed and
                # re-checked once (prepare_sleep), every later drain (the
                # poll_ready() above, after the eventfd was cleared) is a
                # re-check, since the fast path rings the eventfd for
                # whatever it posts after it.  A wake-up then costs no
                # disarm, re-arm and second drain -- calls that would hand
                # the GIL to the app thread the pump has just woken.  Armed
                # again in full if a libtas wait of an app thread disarmed it.
                if hdr.app_armed != 1 and ctx.prepare_sleep():
                    continue
                # (hints or events an app thread's call took meanwhile: no sleep)
                if ctx._ready or ctx._events:
                    continue
                retry = self.listeners and any(ll.pending for ll in self.listeners)
                events = P.poll(10 if retry else 1000)
                if not events:
                    full = ctl_ready = True
                for fd, ev in events:
                    if fd == ctl:
                        ctl_ready = True
                        if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                            P.unregister(ctl)  # the stack is gone: read once more, then no more
                        continue
                    if fd == cfd:
                        rang = True  # cleared before the next drain (see above)
                        continue
                    if fd == self._wake:
                        try:
                            os.eventfd_read(self._wake)
                        except BlockingIOError:
                            pass
                        full = True
                        continue
                    link = self.links.get(fd)
                    if link is None:
                        continue
                    touched.add(fd)
                    if ev & (select.POLLHUP | select.POLLERR):
                        link.app_gone = True
                        self._unregister(link)
            except OSError as e:
                if e.errno == errno.EBADF and getattr(self.ctx, "_closed", False):
                    return  # context closed (interpreter exit)
                full = ctl_ready = True
                self._log_error(e)
            except Exception as e:  # never die silently: the app would hang
                full = ctl_ready = True
                self._log_error(e)

    def _pass(self, ready: set, touched: set, full: bool) -> None:
        """Service the listeners with work and the links that may have
        changed (all of them if full), then update their poll masks."""
        for ll in list(self.listeners):
            if ll.closed or ll.pending or ll.lst.queued():
                self._service_listener(ll)
        links = self.links
        if full:
            todo = dict(links)
        else:
            todo = {}
            by_fid = self.by_fid
            for fid in ready:
                link = by_fid.get(fid)
                if link is not None and link.fd in links:
                    todo[link.fd] = link
            for fd in touched:
                link = links.get(fd)
                if link is not None:
                    todo[fd] = link
            for link in self._connecting:
                todo[link.fd] = link
            for link in self._fresh:
                todo[link.fd] = link
        self._fresh = []
        for fd, link in todo.items():
            if link.state == DONE or links.get(fd) is not link:
                continue
            self._service(link, full or fd in touched)
            if link.state != DONE:
                self._set_mask(link)

    def _log_error(self, e: BaseException) -> None:
        if not self._error_logged:
            self._error_logged = True
            log.exception("tas shim pump: %s", e)
        time.sleep(0.01)

    def _take_adds(self) -> None:
        with self._lock:
            adds, self._adds = self._adds, []
        for kind, obj in adds:
            if kind == "link":
                self._add(obj)
            else:
                self.listeners.append(obj)

    def _add(self, link: Link) -> None:
        self.links[link.fd] = link
        self.by_fid[link.conn.flow_id] = link
        if link.state == CONNECTING:
            self._connecting.add(link)
        link.mask = 0
        self._poller.register(link.fd, 0)
        self._fresh.append(link)  # serviced in this pass: its hints may be gone already

    def _set_mask(self, link: Link) -> None:
        if link.mask < 0 or link.app_gone:
            return
        m = 0
        if link.state == ESTABLISHED:
            if not link.app_eof and link.conn._tx_free() > 0:  # (no lock: a hint)
                m |= select.POLLIN
            if link.want_out and not link.stack_eof:
                m |= select.POLLOUT
        if m != link.mask:
            link.mask = m
            self._poller.modify(link.fd, m)

    def _unregister(self, link: Link) -> None:
        if link.mask >= 0:
            link.mask = -1
            try:
                self._poller.unregister(link.fd)
            except (KeyError, ValueError):
                pass

    def _service_listener(self, ll: ListenLink) -> bool:
        if ll.closed:
            self.listeners.remove(ll)
            return False
        progress = False
        for _ in range(256):
            if ll.pending:
                conn = ll.pending.popleft()
            else:
                try:
                    conn = ll.lst.accept(timeout=0)
                except BlockingIOError:
                    break
                except OSError:
                    break
            inner = socket.socket(
                socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
            link = Link(conn, inner, ESTABLISHED)
            with self._lock:
                self._counter += 1
                token = self._counter
                # before connect(): the app's accept() may run as soon as
                # connect() wakes it, and must find its link (send_direct,
                # resets), not fall back to the pair for good
                link.token = f"{self.pid}/{token}"
                self.accepted[link.token] = link
            try:
                inner.bind(_fmt_name(self.pid, token, conn.local_address, conn.remote_address))
                inner.connect(ll.addr)
            except OSError as e:
                with self._lock:
                    self.accepted.pop(link.token, None)
                inner.close()
                if isinstance(e, BlockingIOError):  # the app's accept backlog is full: retry soon
                    ll.pending.appendleft(conn)
                    break
                conn._abort_quiet()  # the app's listening socket is gone
                progress = True
                continue
            self._add(link)
            progress = True
        return progress

    def _finish(self, link: Link, close: bool = True) -> None:
        link.state = DONE
        link.outcome.set()
        self._unregister(link)
        self.links.pop(link.fd, None)
        self._connecting.discard(link)
        if self.by_fid.get(link.conn.flow_id) is link:
            del self.by_fid[link.conn.flow_id]
        if link.token:
            with self._lock:
                self.accepted.pop(link.token, None)
        if close:
            link.conn._close_quiet()
        link.inner.close()

    def _stack_eof(self, link: Link) -> None:
        """The peer's FIN has been read out of the flow: the app reads EOF."""
        try:
            link.inner.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        link.stack_eof = True

    def _on_reset(self, link: Link, err: int) -> bool:
        link.reset = err or errno.ECONNRESET
        link.conn._close_quiet()
        self._finish(link, close=False)
        return True

    def _drain_junk(self, link: Link) -> None:
        while link.junk > 0:
            try:
                n = link.inner.recv_into(self._bufmv, min(link.junk, _BUF))
            except BlockingIOError:
                break
            if not n:
                break
            link.junk -= n

    def _service(self, link: Link, look: bool = True) -> bool:
        """Move what can move for one link.  look=False: poll() did not
        report the pair end, so if it was watched for input (POLLIN in the
        mask) the app wrote nothing into the pair: skip reading it."""
        conn = link.conn
        progress = False
        if link.abort_req:
            conn._abort_quiet()
            self._finish(link, close=False)
            return True
        if link.state == CONNECTING:
            st = conn._state
            if st == "connecting":
                return False
            # Record the outcome before draining the filler: draining makes the app's fd
            # writable, and a woken app must already see SO_ERROR / the connected state.
            self._connecting.discard(link)
            if st == "connected":
                link.state = ESTABLISHED
                link.outcome.set()
                look = True
                self._drain_junk(link)
                progress = True
            else:
                link.error = conn._error or errno.ECONNREFUSED
                link.state = FAILED
                link.outcome.set()
                self._drain_junk(link)
                self._finish(link)
                return True
        # stack -> app: one C call per batch (tas_shim_fwd); the Python
        # loop below only for what it leaves (a reset, a bogus position)
        slow = True
        if not link.stack_eof and not link.app_gone and conn._state == "connected" and not conn._gone:
            ctx = self.ctx
            if ctx._closed:
                raise OSError(errno.EBADF, "context closed")
            n, st = self._io.fwd(conn, link.inner, _FWD_MAX)
            if st & shimio.DUE:
                with ctx._lock:
                    if not ctx._closed:
                        ctx._queue_update(conn)
                        ctx._flush()
            if n:
                progress = True
            slow = bool(st & shimio.ODD)
            if st & shimio.GONE:
                link.app_gone = True
                self._unregister(link)
            elif st & shimio.AGAIN:
                link.want_out = True
            elif not st & shimio.ODD:
                link.want_out = not st & shimio.EMPTY  # (max moved: come back when writable)
                if st & shimio.EMPTY and conn._af.flags & _AF_FIN_RESET:
                    if conn._is_reset():
                        return self._on_reset(link, conn._reset)
                    if conn.at_eof:
                        self._stack_eof(link)
                        progress = True
        while slow and not link.stack_eof and not link.app_gone:
            try:
                view = conn.recv_view()
            except ConnectionResetError as e:
                return self._on_reset(link, e.errno)
            except OSError:
                return self._on_reset(link, errno.ECONNRESET)
            k = len(view)
            if not k:
                view.release()
                if conn._is_reset():
                    return self._on_reset(link, conn._reset)
                if conn.at_eof:
                    self._stack_eof(link)
                    progress = True
                break
            try:
                n = link.inner.send(view)
            except BlockingIOError:
                n = -1
            except OSError:  # EPIPE/ECONNRESET: the app closed its socket
                n = -2
            finally:
                view.release()
            if n == -2:
                link.app_gone = True
                self._unregister(link)
                break
            if n == -1:
                link.want_out = True
                break
            link.want_out = False
            conn.consume(n)
            progress = True
        if link.app_gone and not link.stack_eof:
            # nobody reads any more: discard what arrives (the kernel would RST)
            try:
                view = conn.recv_view()
                k = len(view)
                view.release()
                if k:
                    conn.consume(k)
            except OSError:
                pass
        # app -> stack, under the context lock: an app thread's direct send
        # (send_direct) then never lands between bytes read from the pair and
        # their send into the flow
        if not look and link.mask > 0 and link.mask & select.POLLIN and not link.app_eof:
            if conn._is_reset():
                return self._on_reset(link, conn._reset)
            return progress
        with self.ctx._lock:
            while not link.app_eof:
                if conn._is_reset():
                    return self._on_reset(link, conn._reset)
                space = conn.tx_space()
                if space <= 0:
                    break
                try:
                    n = link.inner.recv_into(self._bufmv, min(space, _BUF))
                except BlockingIOError:
                    if self._exiting:
                        n = 0
                        link.app_gone = True
                    else:
                        break
                except OSError:
                    n = 0
                if n == 0:
                    link.app_eof = True
                    progress = True
                    if not (link.stack_eof or link.app_gone):
                        # a half-close: FIN now, the flow stays open.  Else the
                        # flow is closed below, which sends the FIN after the
                        # data as well (no shutdown round trip to the stack).
                        try:
                            conn.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                    break
                try:
                    conn.send(self._bufmv[:n], timeout=0)
                except (ConnectionResetError, BrokenPipeError) as e:
                    return self._on_reset(link, e.errno if e.errno != errno.EPIPE else errno.ECONNRESET)
                progress = True
        if link.app_eof and (link.stack_eof or link.app_gone):
            self._finish(link)
            return True
        return progress

    # -- interpreter exit ---------------------------------------------------------
    def _atexit(self) -> None:
        """Like a process exit on the kernel: every open socket is closed
        after its pending data; wait (bounded) until the stack has it all."""
        if os.getpid() != self.pid or self._stopped:
            return
        self._exiting = True
        self.wake()
        deadline = time.monotonic() + _EXIT_DRAIN
        while self.links and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
            self.wake()
        self._stopped = True
        self.wake()
        self._thread.join(1.0)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def state_dir() -> str:
    return os.environ.get("TAS_SHIM_STATE_DIR") or os.environ.get("TAS_STATE_DIR") or "/run/tas/default"


def get() -> Runtime:
    """This process's runtime (created on first use; a fresh one after fork)."""
    global _runtime
    rt = _runtime
    if rt is not None and rt.pid == os.getpid():
        return rt
    with _runtime_lock:
        rt = _runtime
        if rt is not None and rt.pid == os.getpid():
            return rt
        sd = state_dir()
        try:
            rt = Runtime(sd)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise OSError(errno.ENETDOWN, f"tas shim: no TAS stack running at {sd} ({e.strerror})") from None
        _runtime = rt
        return rt


_pid = os.getpid()  # this process's (updated in a forked child: no getpid() per send)


def current() -> Runtime | None:
    rt = _runtime
    return rt if rt is not None and rt.pid == _pid else None


def _after_fork_in_child() -> None:
    # The parent's runtime (its control socket, context and pump thread) is
    # not usable here: forget it without touching it.  Inherited shim sockets
    # keep working through the parent's pump (their fds are kernel sockets);
    # new stack sockets in the child get a runtime of their own.
    global _runtime, _runtime_lock, _pid
    _pid = os.getpid()
    _runtime = None
    _runtime_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
