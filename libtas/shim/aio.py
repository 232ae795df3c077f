"""asyncio and uvloop support.

The default asyncio loop needs nothing: its selector transports call
``socket.socket`` (patched) and the socket methods (overridden), and poll
the shim socket's real fd.

uvloop creates TCP sockets and transports in C (libuv), and libuv rejects an
AF_UNIX fd as a TCP handle (it sets TCP_NODELAY).  So for stack sockets the
shim gives uvloop its own transport, :class:`ShimTransport`, driven by
``loop.add_reader``/``add_writer`` on the shim socket's fd (uvloop polls the
fd and runs the timers); ``create_connection``, ``create_server`` and
``connect_accepted_socket`` of ``uvloop.Loop`` are wrapped so stack
addresses (and shim sockets passed as ``sock=``) use it, everything else
goes to uvloop unchanged.  ``asyncio.start_server``/``open_connection`` call
those methods, so streams work too.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import importlib.abc
import ipaddress
import socket
import sys

from . import sock as shimsock

_MAX_READ = 256 << 10


def is_shim(sock) -> bool:
    return isinstance(sock, shimsock.ShimSocket) and sock._st is not None


class ShimTransport(asyncio.Transport):
    """A stream transport over a (non-blocking) shim socket using only the
    public loop API (add_reader/add_writer/call_soon)."""

    def __init__(self, loop, sock, protocol, waiter=None, server=None) -> None:
        super().__init__({"socket": sock})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._server = server
        self._buffer = collections.deque()
        self._buffer_size = 0
        self._closing = False
        self._conn_lost = 0
        self._eof = False
        self._paused = False
        self._reading = False
        self._writing = False
        self._protocol_paused = False
        self._high, self._low = 64 * 1024, 16 * 1024
        sock.setblocking(False)
        for key, fn in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            try:
                self._extra[key] = fn()
            except OSError:
                self._extra[key] = None
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        if server is not None:
            server._attach()
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    # -- reading ------------------------------------------------------------------
    def _start_reading(self) -> None:
        if not self._closing and not self._paused and not self._reading and not self._eof:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if not self._closing and not self._paused:
            self._paused = True
            self._stop_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._start_reading()

    def _read_ready(self) -> None:
        if self._conn_lost:
            return
        try:
            if self._buffered:
                buf = self._protocol.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
                n = self._sock.recv_into(buf)
                data = None
            else:
                data = self._sock.recv(_MAX_READ)
                n = len(data)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc)
            return
        if not n:
            self._read_eof()
            return
        try:
            if self._buffered:
                self._protocol.buffer_updated(n)
            else:
                self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc)

    def _read_eof(self) -> None:
        self._eof = True
        self._stop_reading()
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc)
            return
        if not keep_open:
            self.close()

    # -- writing ------------------------------------------------------------------
    def write(self, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing or self._eof_written():
            if self._eof_written():
                raise RuntimeError("Cannot call write() after write_eof()")
            return
        if self._conn_lost:
            self._conn_lost += 1
            return
        if not data:
            return
        if not self._buffer:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc)
                return
            data = memoryview(data)[n:]
            if not len(data):
                return
        self._buffer.append(bytes(data))
        self._buffer_size += len(data)
        if not self._writing:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writing = True
        self._maybe_pause_protocol()

    def _write_ready(self) -> None:
        if self._conn_lost:
            return
        while self._buffer:
            chunk = self._buffer[0]
            try:
                n = self._sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.remove_writer(self._fd)
                self._writing = False
                self._buffer.clear()
                self._buffer_size = 0
                self._fatal_error(exc)
                return
            self._buffer_size -= n
            if n < len(chunk):
                self._buffer[0] = chunk[n:]
                break
            self._buffer.popleft()
        self._maybe_resume_protocol()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            self._writing = False
            if self._closing:
                self._call_connection_lost(None)
            elif self._write_eof_pending:
                self._sock.shutdown(socket.SHUT_WR)

    _write_eof_pending = False

    def _eof_written(self) -> bool:
        return self._write_eof_pending

    def write_eof(self) -> None:
        if self._closing or self._write_eof_pending:
            return
        self._write_eof_pending = True
        if not self._buffer:
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def get_write_buffer_limits(self):
        return (self._low, self._high)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._buffer_size > self._high and not self._protocol_paused:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler(
                    {"message": "protocol.pause_writing() failed", "exception": exc, "transport": self}
                )

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._buffer_size <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler(
                    {"message": "protocol.resume_writing() failed", "exception": exc, "transport": self}
                )

    # -- lifetime -------------------------------------------------------------------
    def set_protocol(self, protocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self):
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc) -> None:
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler(
                {
                    "message": "Fatal error on tas shim transport",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc) -> None:
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc) -> None:
        if self._sock is None:
            return
        try:
            self._protocol.connection_lost(exc)
        finally:
            if self._writing:
                self._loop.remove_writer(self._fd)
                self._writing = False
            self._stop_reading()
            self._sock.close()
            self._sock = None
            self._protocol = None
            server = self._server
            if server is not None:
                server._detach()
                self._server = None


def _set_result_unless_cancelled(fut, result) -> None:
    if not fut.cancelled():
        fut.set_result(result)


async def _make_transport(
    loop,
    sock,
    protocol_factory,
    ssl=None,
    server_side=False,
    server_hostname=None,
    ssl_handshake_timeout=None,
    ssl_shutdown_timeout=None,
    server=None,
):
    protocol = protocol_factory()
    waiter = loop.create_future()
    if ssl:
        from asyncio import sslproto

        sslcontext = ssl if not isinstance(ssl, bool) else __import__("ssl").create_default_context()
        ssl_protocol = sslproto.SSLProtocol(
            loop,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        ShimTransport(loop, sock, ssl_protocol, server=server)
        try:
            await waiter
        except BaseException:
            ssl_protocol._transport.close() if ssl_protocol._transport else None
            raise
        return ssl_protocol._app_transport, protocol
    tr = ShimTransport(loop, sock, protocol, waiter, server=server)
    try:
        await waiter
    except BaseException:
        tr.close()
        raise
    return tr, protocol


class ShimServer(asyncio.AbstractServer):
    """asyncio.Server look-alike for shim listeners (uvloop)."""

    def __init__(
        self, loop, sockets, protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout
    ) -> None:
        self._loop = loop
        self._sockets = list(sockets)
        self._protocol_factory = protocol_factory
        self._ssl = ssl
        self._backlog = backlog
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._active = 0
        self._waiters: list = []
        self._serving_forever_fut = None

    def _attach(self) -> None:
        self._active += 1

    def _detach(self) -> None:
        self._active -= 1
        if self._active == 0 and self._sockets is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    @property
    def sockets(self):
        return () if self._sockets is None else tuple(self._sockets)

    def get_loop(self):
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    def _start_serving(self) -> None:
        if self._serving or self._sockets is None:
            return
        self._serving = True
        for s in self._sockets:
            s.setblocking(False)
            self._loop.add_reader(s.fileno(), self._accept_ready, s)

    def _accept_ready(self, lsock) -> None:
        for _ in range(self._backlog):
            try:
                conn, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._loop.call_exception_handler(
                        {"message": "socket.accept() out of system resource", "exception": exc}
                    )
                    return
                raise
            conn.setblocking(False)
            self._loop.create_task(self._handle(conn))

    async def _handle(self, conn) -> None:
        try:
            await _make_transport(
                self._loop,
                conn,
                self._protocol_factory,
                self._ssl,
                True,
                None,
                self._ssl_handshake_timeout,
                self._ssl_shutdown_timeout,
                server=self,
            )
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if self._loop.get_debug():
                self._loop.call_exception_handler(
                    {"message": "Error on transport creation", "exception": exc}
                )

    def close(self) -> None:
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for s in sockets:
            if self._serving:
                self._loop.remove_reader(s.fileno())
            s.close()
        self._serving = False
        if self._serving_forever_fut is not None and not self._serving_forever_fut.done():
            self._serving_forever_fut.cancel()
            self._serving_forever_fut = None
        if self._active == 0:
            self._wakeup()

    async def wait_closed(self) -> None:
        if self._sockets is None or self._waiters is None:
            return
        w = self._loop.create_future()
        self._waiters.append(w)
        await w

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
        await self.wait_closed()


# -- uvloop ------------------------------------------------------------------------------------------


def _stack_v4(ip: str) -> bool:
    try:
        a = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return not a.is_loopback and ip != "0.0.0.0"


def patch_uvloop(uvloop) -> None:
    Loop = uvloop.Loop
    if getattr(Loop, "_tas_shim_patched", False):
        return
    orig_cc = Loop.create_connection
    orig_cs = Loop.create_server
    orig_cas = Loop.connect_accepted_socket

    async def create_connection(self, protocol_factory, host=None, port=None, **kw):
        s = kw.get("sock")
        if s is None and host is not None:
            fam = kw.get("family", 0)
            if fam in (0, socket.AF_INET):
                infos = await self.getaddrinfo(host, port, family=fam, type=socket.SOCK_STREAM)
                if infos and infos[0][0] == socket.AF_INET and _stack_v4(infos[0][4][0]):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    try:
                        s.setblocking(False)
                        if kw.get("local_addr"):
                            s.bind(kw["local_addr"])
                        await self.sock_connect(s, infos[0][4])
                    except BaseException:
                        s.close()
                        raise
                    return await _make_transport(
                        self,
                        s,
                        protocol_factory,
                        kw.get("ssl"),
                        False,
                        kw.get("server_hostname") or (host if kw.get("ssl") else None),
                        kw.get("ssl_handshake_timeout"),
                        kw.get("ssl_shutdown_timeout"),
                    )
            return await orig_cc(self, protocol_factory, host, port, **kw)
        if s is not None and is_shim(s):
            return await _make_transport(
                self,
                s,
                protocol_factory,
                kw.get("ssl"),
                False,
                kw.get("server_hostname"),
                kw.get("ssl_handshake_timeout"),
                kw.get("ssl_shutdown_timeout"),
            )
        return await orig_cc(self, protocol_factory, host, port, **kw)

    async def create_server(self, protocol_factory, host=None, port=None, **kw):
        s = kw.get("sock")
        backlog = kw.get("backlog", 100)
        socks = None
        if s is not None:
            if is_shim(s):
                socks = [s]
        elif kw.get("family", 0) in (0, socket.AF_INET):
            hosts = host if isinstance(host, (list, tuple)) else [host]
            from . import runtime

            local = runtime.get().local_ip
            if all(h in (None, "", "0.0.0.0", local) for h in hosts):
                socks = []
                try:
                    for h in dict.fromkeys(hosts):
                        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        socks.append(ls)
                        reuse = kw.get("reuse_address")
                        if reuse is None or reuse:
                            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        ls.bind((h or "0.0.0.0", port or 0))
                        ls.listen(backlog)
                        ls.setblocking(False)
                except BaseException:
                    for ls in socks:
                        ls.close()
                    raise
        if socks is None:
            return await orig_cs(self, protocol_factory, host, port, **kw)
        server = ShimServer(
            self,
            socks,
            protocol_factory,
            kw.get("ssl"),
            backlog,
            kw.get("ssl_handshake_timeout"),
            kw.get("ssl_shutdown_timeout"),
        )
        if kw.get("start_serving", True):
            server._start_serving()
            await asyncio.sleep(0)
        return server

    async def connect_accepted_socket(self, protocol_factory, sock, **kw):
        if is_shim(sock):
            return await _make_transport(
                self,
                sock,
                protocol_factory,
                kw.get("ssl"),
                True,
                None,
                kw.get("ssl_handshake_timeout"),
                kw.get("ssl_shutdown_timeout"),
            )
        return await orig_cas(self, protocol_factory, sock, **kw)

    Loop.create_connection = create_connection
    Loop.create_server = create_server
    Loop.connect_accepted_socket = connect_accepted_socket
    Loop._tas_shim_patched = True


class _UvloopHook(importlib.abc.MetaPathFinder):
    """Patches uvloop right after it is imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "uvloop":
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec("uvloop")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        orig_exec = spec.loader.exec_module

        def exec_module(module, _orig=orig_exec):
            _orig(module)
            patch_uvloop(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if "uvloop" in sys.modules:
        patch_uvloop(sys.modules["uvloop"])
    elif not any(isinstance(f, _UvloopHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _UvloopHook())
