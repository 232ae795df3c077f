"""The shim socket: ``socket.socket(AF_INET, SOCK_STREAM)`` on the TAS stack.

A :class:`ShimSocket` starts as an ordinary kernel socket of the requested
family.  On ``bind``/``connect``/``listen`` it decides where it goes:

* IPv4 (and IPv4-mapped / dual-stack ``::`` for AF_INET6) that is not
  loopback -> the stack: the fd is replaced (``dup3`` onto the same number)
  by an AF_UNIX socket the pump thread serves (see runtime.py);
* loopback, real IPv6 -> stays a kernel socket, every call falls through.

State shared by every object on the same open socket (``dup()``, ``ssl``
wrapping, ``socket(fileno=...)``, accept in a forked child) is found through
the inode of the AF_UNIX socket.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import ipaddress
import os
import socket
import struct
import threading

from . import runtime

_orig_socket_new = _socket.socket.__new__
_socket_cls = socket.socket
_sup = _socket_cls  # methods we delegate to

_registry: dict[int, ShimState] = {}
_reg_lock = threading.Lock()

_INT_OPTS_DEFAULT = {
    (socket.SOL_SOCKET, socket.SO_REUSEADDR): 0,
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): 0,
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): 0,
}


def _ino(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def _register(fd: int, st: ShimState) -> None:
    ino = _ino(fd)
    if ino is not None:
        with _reg_lock:
            _registry[ino] = st
        st.ino = ino


def lookup(fd: int) -> ShimState | None:
    if not _registry or fd < 0:
        return None
    ino = _ino(fd)
    return _registry.get(ino) if ino is not None else None


class ShimState:
    """What the stack side knows about one shim socket."""

    def __init__(self, kind: str, family: int, rt, local: tuple, remote: tuple | None = None) -> None:
        self.kind = kind  # "conn" | "listen"
        self.family = family
        self.rt = rt
        self.local = local
        self.remote = remote
        self.link = None
        self.listen = None
        self.opts: dict = {}
        self.error_reported = False
        self.reset_reported = False
        self.linger_abort = False
        self.wr_shut = False  # the app shut down writing (no direct sends after it)
        self.ino: int | None = None

    def fmt(self, addr: tuple) -> tuple:
        if self.family == socket.AF_INET6:
            ip = addr[0]
            if ip == "0.0.0.0":
                ip = "::"
            elif ":" not in ip:
                ip = "::ffff:" + ip
            return (ip, addr[1], 0, 0)
        return (addr[0], addr[1])

    def pending_error(self) -> int:
        link = self.link
        if link is not None and link.error and not self.error_reported:
            self.error_reported = True
            return link.error
        return 0

    def take_reset(self) -> int:
        link = self.link
        if link is not None and link.reset and not self.reset_reported:
            self.reset_reported = True
            return link.reset
        return 0


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.IPv4Address(ip).is_loopback or ip == "0.0.0.0"
    except ValueError:
        return False


def _v4_of(family: int, host: str) -> str | None:
    """The IPv4 address an AF_INET6 address maps to (None: real IPv6)."""
    if family != socket.AF_INET6:
        return host
    try:
        a = ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        return None
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else None


def _resolve4(host: str, port: int) -> str:
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    return infos[0][4][0]


_TCP_CC = (socket.IPPROTO_TCP, getattr(socket, "TCP_CONGESTION", 13))
_CA_NAME_MAX = 16  # Linux TCP_CA_NAME_MAX


def _cc_name(value) -> str:
    """A TCP_CONGESTION value as a name; OSError(ENOENT) unless the stack
    knows it (flextcp.ctlproto.CC_NAMES), as Linux answers an unknown one."""
    from flextcp.ctlproto import CC_NAMES

    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise OSError(errno.EINVAL, "Invalid argument")
    name = bytes(value).split(b"\0", 1)[0][: _CA_NAME_MAX - 1].decode("ascii", "replace")
    if name not in CC_NAMES:
        raise OSError(errno.ENOENT, "No such file or directory")
    return name


def _cc_value(name: str, buflen):
    """getsockopt(TCP_CONGESTION) as Linux returns it: the name NUL-padded
    to min(buflen, 16) bytes (without buflen: its first 4 bytes as an int)."""
    raw = name.encode().ljust(_CA_NAME_MAX, b"\0")
    if buflen is None:
        return struct.unpack("i", raw[:4])[0]
    return raw[: min(buflen, _CA_NAME_MAX)]


def _apply_cc(st: ShimState, name: str) -> None:
    """Switch a stack socket's congestion control (listeners: for the
    connections they accept from now on)."""
    if st.kind == "listen" and st.listen is not None:
        st.opts[_TCP_CC] = st.listen.lst.set_congestion_control(name)
    elif st.kind == "conn" and st.link is not None:
        st.opts[_TCP_CC] = st.link.conn.set_congestion_control(name)
    else:
        st.opts[_TCP_CC] = name


def _cc_of(st: ShimState) -> str:
    """The algorithm in force for a stack socket."""
    if st.kind == "conn" and st.link is not None:
        return st.link.conn.congestion_control
    if st.kind == "listen" and st.listen is not None:
        return st.listen.lst.congestion_control
    return st.opts.get(_TCP_CC) or st.rt.stack.default_cc


def _int_value(value) -> int:
    if isinstance(value, (bytes, bytearray)):
        return struct.unpack("i", bytes(value[:4]).ljust(4, b"\0"))[0]
    return int(value)


class ShimSocket(socket.socket):
    """socket.socket for TCP/IPv4 through the TAS stack (see module doc)."""

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None) -> None:
        super().__init__(family, type, proto, fileno)
        self._st: ShimState | None = lookup(fileno) if fileno is not None else None
        self._kernel = fileno is not None and self._st is None
        self._bound: tuple | None = None  # (ip, port) when bound for the stack
        self._reserved = None  # the runtime holding our bind() reservation
        self._pre_opts: dict = {}

    # -- routing -------------------------------------------------------------------
    def _split(self, address) -> tuple[str, int]:
        if not isinstance(address, tuple) or len(address) < 2:
            raise TypeError(f"{self.family!r} address must be a tuple (host, port)")
        host, port = address[0], address[1]
        if isinstance(host, bytes):
            host = host.decode()
        if not isinstance(port, int):
            raise TypeError("'port' must be an integer")
        if not 0 <= port <= 65535:
            raise OverflowError("bind(): port must be 0-65535.")
        return host, port

    def _v6only(self) -> bool:
        if self.family != socket.AF_INET6:
            return False
        v = self._pre_opts.get((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        if v is None:
            try:
                v = _sup.getsockopt(self, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            except OSError:
                v = 0
        return bool(v)

    def _swap_fd(self, new: socket.socket) -> None:
        timeout = self.gettimeout()
        os.dup2(new.fileno(), self.fileno(), inheritable=False)
        new.close()
        _sup.settimeout(self, timeout)  # O_NONBLOCK belongs to the new open file

    def _opt(self, level: int, name: int, default=0):
        if self._st is not None:
            return self._st.opts.get((level, name), default)
        return self._pre_opts.get((level, name), default)

    # -- bind / listen / accept ------------------------------------------------------
    def bind(self, address) -> None:
        if self._kernel or self._st is not None:
            if self._st is not None:
                raise OSError(errno.EINVAL, "Invalid argument")
            return _sup.bind(self, address)
        if self._bound is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        host, port = self._split(address)
        if self.family == socket.AF_INET6:
            if host in ("", "::") and not self._v6only():
                ip = "0.0.0.0"
            else:
                ip = _v4_of(self.family, host) if host else None
                if ip is None or _is_loopback(ip):
                    self._kernel = True
                    return _sup.bind(self, address)
        else:
            ip = "0.0.0.0" if host in ("", "0.0.0.0") else _resolve4(host, port)
            if ip != "0.0.0.0" and ipaddress.IPv4Address(ip).is_loopback:
                self._kernel = True
                return _sup.bind(self, address)
        if ip != "0.0.0.0":
            rt = runtime.get()
            if ip != rt.local_ip:
                raise OSError(
                    errno.EADDRNOTAVAIL,
                    f"Cannot assign requested address (tas shim: the stack owns only {rt.local_ip})",
                )
        rt = runtime.get()  # fails now (clearly) if no stack runs
        # reserve the port in the stack now, as the kernel does: EADDRINUSE
        # here, and bind(('', 0)) learns its ephemeral port at once
        reuse = bool(self._pre_opts.get((socket.SOL_SOCKET, socket.SO_REUSEADDR)))
        port = rt.ctx.bind(port, reuseaddr=reuse)
        self._bound = (ip, port)
        self._reserved = rt

    def listen(self, backlog: int | None = None) -> None:
        if self._kernel:
            return _sup.listen(self, *(() if backlog is None else (backlog,)))
        backlog = 128 if backlog is None else max(1, min(int(backlog), 4096))
        st = self._st
        if st is not None:
            if st.kind != "listen":
                raise OSError(errno.EINVAL, "Invalid argument")
            return
        if self._bound is None:
            self.bind(("::", 0, 0, 0) if self.family == socket.AF_INET6 else ("0.0.0.0", 0))
            if self._kernel:
                return _sup.listen(self, backlog)
        rt = runtime.get()
        ip, port = self._bound
        reuse = bool(self._opt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
        # accepted connections inherit SO_KEEPALIVE from the listener, as on Linux
        lst = rt.ctx.listen(port, backlog=backlog, reuseaddr=reuse,
                            keepalive=bool(self._opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
                            cc=self._opt(*_TCP_CC, ""))  # fmt: skip
        try:
            name = rt.next_name("L")
            u = _socket_cls(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                u.bind(name)
                u.listen(backlog)
            except BaseException:
                u.close()
                raise
            self._swap_fd(u)
        except BaseException:
            lst.close()
            raise
        st = ShimState("listen", self.family, rt, (ip, lst.port))
        st.opts.update(self._pre_opts)
        st.listen = runtime.ListenLink(lst, name, self.family)
        self._st = st
        _register(self.fileno(), st)
        rt.add_listener(st.listen)

    def _accept(self):
        return _sup._accept(self)

    def accept(self):
        st = self._st
        if st is None or st.kind != "listen":
            if self._st is None and not self._kernel:
                raise OSError(errno.EINVAL, "Invalid argument")
            return _sup.accept(self)
        fd, cst, remote = _accept_fd(self, st)
        sock = ShimSocket(self.family, self.type, self.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, cst.fmt(remote)

    # -- connect -------------------------------------------------------------------
    def connect(self, address) -> None:
        err = self._connect(address, False)
        if err:
            raise OSError(err, os.strerror(err))

    def connect_ex(self, address) -> int:
        return self._connect(address, True)

    def _connect(self, address, ex: bool) -> int:
        if self._kernel:
            return _sup.connect_ex(self, address) if ex else _sup.connect(self, address)
        st = self._st
        if st is not None:
            if st.kind == "listen":
                return errno.EINVAL if ex else _raise(errno.EINVAL)
            link = st.link
            if link is not None and link.state == runtime.CONNECTING:
                return self._wait_connect(st, ex, errno.EALREADY)
            return errno.EISCONN if ex else _raise(errno.EISCONN)
        host, port = self._split(address)
        if self.family == socket.AF_INET6:
            ip = _v4_of(self.family, host)
            if ip is None or _is_loopback(ip):
                return self._to_kernel_connect(address, ex)
        else:
            ip = _resolve4(host, port)
            if _is_loopback(ip):
                return self._to_kernel_connect(address, ex)
        rt = runtime.get()
        local_port = self._bound[1] if self._bound else 0
        rx = self._opt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        tx = self._opt(socket.SOL_SOCKET, socket.SO_SNDBUF, 0)
        try:
            conn = rt.ctx.connect(ip, port, timeout=0, local_port=local_port, rx_buf=rx, tx_buf=tx,
                                  keepalive=bool(self._opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
                                  cc=self._opt(*_TCP_CC, ""))  # fmt: skip
        except OSError as e:
            if ex:
                return e.errno or errno.EIO
            raise
        timeout = self.gettimeout()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        b.setblocking(False)
        junk = 0
        if timeout == 0.0:
            # not writable until the stack connection is established
            a.setblocking(False)
            filler = bytes(65536)
            while True:
                try:
                    junk += a.send(filler)
                except BlockingIOError:
                    break
        self._swap_fd(a)
        link = runtime.Link(conn, b, runtime.CONNECTING, junk)
        st = ShimState("conn", self.family, rt, conn.local_address, (ip, port))
        st.opts.update(self._pre_opts)
        st.link = link
        self._st = st
        _register(self.fileno(), st)
        rt.add_link(link)
        if timeout == 0.0:
            # like Linux: a non-blocking connect always starts with EINPROGRESS,
            # even if the answer (a refusal) already came in; the outcome is
            # then read from SO_ERROR or a second connect()
            return errno.EINPROGRESS if ex else _raise(errno.EINPROGRESS, BlockingIOError)
        return self._wait_connect(st, ex, errno.EINPROGRESS)

    def _wait_connect(self, st: ShimState, ex: bool, busy: int) -> int:
        link = st.link
        timeout = self.gettimeout()
        if timeout == 0.0:
            if not link.outcome.is_set():
                return busy if ex else _raise(busy, BlockingIOError)
        elif not link.outcome.wait(timeout):
            st.rt.abort_link(link)
            if ex:
                return errno.EAGAIN
            raise TimeoutError("timed out")
        err = st.pending_error() or (link.error if link.state == runtime.FAILED else 0)
        if err:
            return err if ex else _raise(err)
        return 0

    def _to_kernel_connect(self, address, ex: bool) -> int:
        self._kernel = True
        if self._bound is not None:
            _sup.bind(self, (self._bound[0], self._bound[1]))
        return _sup.connect_ex(self, address) if ex else _sup.connect(self, address)

    # -- addresses and options ---------------------------------------------------------
    def getsockname(self):
        st = self._st
        if st is not None:
            return st.fmt(st.local)
        if self._bound is not None and not self._kernel:
            b = self._bound
            return (b[0] if self.family == socket.AF_INET else "::", b[1], 0, 0)[
                : 2 if self.family == socket.AF_INET else 4
            ]
        return _sup.getsockname(self)

    def getpeername(self):
        st = self._st
        if st is not None:
            if (
                st.kind != "conn"
                or st.remote is None
                or (st.link is not None and st.link.state == runtime.CONNECTING)
            ):
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            return st.fmt(st.remote)
        if self._kernel:
            return _sup.getpeername(self)
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def setsockopt(self, level, optname, value, optlen=None):
        st = self._st
        if (level, optname) == _TCP_CC and not self._kernel:
            return self._set_cc(st, value)
        if st is None and not self._kernel:
            # not decided yet: keep the kernel socket consistent (fall-through)
            try:
                if optlen is None:
                    _sup.setsockopt(self, level, optname, value)
                else:
                    _sup.setsockopt(self, level, optname, value, optlen)
            except OSError:
                if (level, optname) not in _INT_OPTS_DEFAULT and optname not in (
                    socket.SO_RCVBUF,
                    socket.SO_SNDBUF,
                ):
                    raise
        elif st is None:
            if optlen is None:
                return _sup.setsockopt(self, level, optname, value)
            return _sup.setsockopt(self, level, optname, value, optlen)
        opts = st.opts if st is not None else self._pre_opts
        if level == socket.SOL_SOCKET and optname == socket.SO_LINGER:
            onoff, linger = struct.unpack("ii", bytes(value[:8])) if value is not None else (0, 0)
            opts[(level, optname)] = bytes(value[:8])
            if st is not None:
                st.linger_abort = bool(onoff and linger == 0)
            else:
                self._linger_abort = bool(onoff and linger == 0)
            return None
        opts[(level, optname)] = (
            value
            if value is None
            else _int_value(value)
            if not isinstance(value, (bytes, bytearray)) or len(value) <= 4
            else bytes(value)
        )
        if (level, optname) == (socket.SOL_SOCKET, socket.SO_KEEPALIVE) and st is not None:
            link = st.link
            if st.kind == "conn" and link is not None and link.state != runtime.CONNECTING:
                try:
                    link.conn.set_keepalive(bool(opts[(level, optname)]))
                except OSError:
                    pass  # the connection is gone; the next I/O reports it
        return None

    def _set_cc(self, st: ShimState | None, value) -> None:
        """setsockopt(TCP_CONGESTION): this socket's algorithm in the stack
        (docs/CC.md); accepted sockets inherit a listener's."""
        name = _cc_name(value)
        if st is None:
            # not decided yet: the kernel socket gets it too if it knows it
            # (a loopback connection stays there), the stack at connect/listen
            with contextlib.suppress(OSError):
                _sup.setsockopt(self, *_TCP_CC, name.encode())
            self._pre_opts[_TCP_CC] = name
            return None
        _apply_cc(st, name)
        return None

    def getsockopt(self, level, optname, buflen=None):
        st = self._st
        if (level, optname) == _TCP_CC and not self._kernel:
            if st is None and _TCP_CC not in self._pre_opts:
                return _sup.getsockopt(self, level, optname, *(() if buflen is None else (buflen,)))
            return _cc_value(self._cc_in_force(st), buflen)
        if st is None:
            return (
                _sup.getsockopt(self, level, optname)
                if buflen is None
                else _sup.getsockopt(self, level, optname, buflen)
            )
        if level == socket.SOL_SOCKET and optname == socket.SO_ERROR:
            v = st.pending_error()
        elif level == socket.SOL_SOCKET and optname == socket.SO_TYPE:
            v = socket.SOCK_STREAM
        elif level == socket.SOL_SOCKET and optname == socket.SO_ACCEPTCONN:
            v = int(st.kind == "listen")
        elif level == socket.SOL_SOCKET and optname == socket.SO_DOMAIN:
            v = self.family
        elif level == socket.SOL_SOCKET and optname in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            v = st.opts.get((level, optname))
            if v is None and st.link is not None:
                info = st.link.conn.info
                v = info.rx_len if optname == socket.SO_RCVBUF else info.tx_len
            v = v or (256 << 10)
        elif (level, optname) in st.opts:
            v = st.opts[(level, optname)]
        elif (level, optname) in _INT_OPTS_DEFAULT:
            v = _INT_OPTS_DEFAULT[(level, optname)]
        elif level == socket.IPPROTO_IPV6 and optname == socket.IPV6_V6ONLY:
            v = 0
        else:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available (tas shim)")
        if buflen is None:
            return v if isinstance(v, int) else struct.unpack("i", v[:4])[0]
        raw = v if isinstance(v, bytes) else struct.pack("i", v)
        return raw[:buflen].ljust(min(buflen, len(raw)), b"\0")

    def _cc_in_force(self, st: ShimState | None) -> str:
        return self._pre_opts[_TCP_CC] if st is None else _cc_of(st)

    # -- data ------------------------------------------------------------------------------
    def _check_reset(self) -> None:
        st = self._st
        if st is not None:
            err = st.take_reset()
            if err:
                raise ConnectionResetError(err, os.strerror(err))

    def _check_connected(self) -> None:
        st = self._st
        if st is not None and st.kind == "conn" and st.link is not None:
            link = st.link
            if link.state == runtime.CONNECTING:
                if self.gettimeout() == 0.0:
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            elif link.state == runtime.FAILED and link.error:
                err = st.pending_error()
                raise OSError(err or errno.ENOTCONN, os.strerror(err or errno.ENOTCONN))

    def recv(self, bufsize, flags=0):
        data = _sup.recv(self, bufsize, flags)
        if not data and bufsize and self._st is not None:
            self._check_reset()
            self._check_connected()
        return data

    def recv_into(self, buffer, nbytes=0, flags=0):
        n = _sup.recv_into(self, buffer, nbytes, flags)
        if not n and self._st is not None and (nbytes or len(memoryview(buffer))):
            self._check_reset()
            self._check_connected()
        return n

    def recvfrom(self, bufsize, flags=0):
        if self._st is None:
            return _sup.recvfrom(self, bufsize, flags)
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        if self._st is None:
            return _sup.recvfrom_into(self, buffer, nbytes, flags)
        return self.recv_into(buffer, nbytes, flags), None

    def _send_direct(self, data, flags: int) -> int:
        """Bytes written straight into the flow's send buffer, skipping the
        socketpair and the pump thread (one thread wake-up and one copy per
        send fewer); 0 when that is not possible now and the bytes must go
        through the socketpair (the pump's order: only when nothing the app
        wrote earlier is still in the pair, see Runtime.send_direct)."""
        st = self._st
        if flags or st is None or st.kind != "conn" or st.wr_shut or st.link is None:
            return 0
        rt = st.rt
        if rt is not runtime.current():
            return 0  # a forked child: the link belongs to the parent's pump
        return rt.send_direct(st.link, data)

    def send(self, data, flags=0):
        n = self._send_direct(data, flags)
        if n:
            return n
        try:
            return _sup.send(self, data, flags)
        except (BrokenPipeError, ConnectionResetError, BlockingIOError):
            self._check_reset()
            raise

    def sendall(self, data, flags=0):
        n = self._send_direct(data, flags)
        if n:
            mv = memoryview(data).cast("B")
            if n >= len(mv):
                return None
            data = mv[n:]
        try:
            return _sup.sendall(self, data, flags)
        except (BrokenPipeError, ConnectionResetError):
            self._check_reset()
            raise

    def sendto(self, data, *args):
        if self._st is None:
            return _sup.sendto(self, data, *args)
        if self._st.kind == "conn" and len(args) in (1, 2):
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        return self.send(data)

    # -- teardown ----------------------------------------------------------------------------
    def _real_close(self):
        st = self._st
        if st is None and self._reserved is not None and self._reserved is runtime.current():
            # bound but never listened/connected: give the port back
            try:
                self._reserved.ctx.unbind(self._bound[1])
            except OSError:
                pass
            self._reserved = None
        if st is not None and st.rt is runtime.current():
            if st.kind == "listen" and st.listen is not None:
                st.rt.close_listener(st.listen)
                with _reg_lock:
                    _registry.pop(st.ino, None)
            elif st.kind == "conn" and st.link is not None:
                if st.linger_abort or st.link.state == runtime.CONNECTING:
                    st.rt.abort_link(st.link)
        _socket_cls._real_close(self)

    def shutdown(self, how):
        st = self._st
        if st is not None and st.kind == "listen":
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        _sup.shutdown(self, how)
        if st is not None and how in (socket.SHUT_WR, socket.SHUT_RDWR):
            st.wr_shut = True  # sends go to the (shut) pair now: EPIPE as the kernel's


def _accept_fd(obj, st: ShimState):
    """accept() on a shim listener (any socket object on its fd): the new
    fd, its registered state and the peer address."""
    # accept through an AF_UNIX view of the fd: the peer's (abstract) name
    # carries the TCP addresses, and the object's AF_INET family would
    # truncate it to a sockaddr_in
    u = _orig_socket_new(_socket_cls)
    _socket_cls.__init__(u, socket.AF_UNIX, socket.SOCK_STREAM, 0, _sup.fileno(obj))
    try:
        _sup.settimeout(u, obj.gettimeout())
        fd, name = _sup._accept(u)
    finally:
        u.detach()
    parsed = runtime.parse_name(name)
    if parsed is None:
        os.close(fd)
        raise OSError(errno.EPROTO, "tas shim: unexpected connection on a shim listener")
    pid, token, local, remote = parsed
    cst = ShimState("conn", st.family, st.rt, local, remote)
    cst.opts.update(st.opts)
    rt = runtime.current()
    if rt is not None and pid == rt.pid:
        cst.link = rt.take_accepted(token)
    _register(fd, cst)
    return fd, cst, remote


def _raise(err: int, cls=None):
    raise (cls or OSError)(err, os.strerror(err))


# -- installation ----------------------------------------------------------------------------


def _wants_shim(family, type_, proto) -> bool:
    if family == -1 or family is None:
        family = socket.AF_INET
    if type_ == -1 or type_ is None:
        type_ = socket.SOCK_STREAM
    base = int(type_) & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    return (
        family in (socket.AF_INET, socket.AF_INET6)
        and base == socket.SOCK_STREAM
        and (proto in (-1, 0, None) or proto == socket.IPPROTO_TCP)
    )


def _socket_new(cls, family=-1, type=-1, proto=-1, fileno=None):
    if cls is _socket_cls:
        if fileno is None:
            if _wants_shim(family, type, proto):
                cls = ShimSocket
        elif _registry and lookup(fileno if isinstance(fileno, int) else -1) is not None:
            cls = ShimSocket
    return _orig_socket_new(cls)


_installed = False


def install() -> None:
    """Route new TCP sockets of this process through the stack."""
    global _installed
    if _installed:
        return
    _installed = True
    _socket_cls.__new__ = _socket_new
    _install_ssl()


def _install_ssl() -> None:
    try:
        import ssl
    except ImportError:
        return

    class ShimSSLSocket(ssl.SSLSocket):
        """ssl.SSLSocket that asks the shim for addresses and options."""

        def _shim(self):
            try:
                return lookup(_sup.fileno(self))
            except OSError:
                return None

        def getpeername(self):
            st = self._shim()
            if st is None:
                return super().getpeername()
            if st.kind != "conn" or st.remote is None:
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            return st.fmt(st.remote)

        def getsockname(self):
            st = self._shim()
            return super().getsockname() if st is None else st.fmt(st.local)

        def setsockopt(self, level, optname, value, optlen=None):
            st = self._shim()
            if st is None:
                return super().setsockopt(level, optname, value, *(() if optlen is None else (optlen,)))
            if (level, optname) == _TCP_CC:
                _apply_cc(st, _cc_name(value))
                return None
            st.opts[(level, optname)] = value
            return None

        def getsockopt(self, level, optname, buflen=None):
            st = self._shim()
            if st is None:
                return super().getsockopt(level, optname, *(() if buflen is None else (buflen,)))
            if level == socket.SOL_SOCKET and optname == socket.SO_ERROR:
                return st.pending_error()
            if (level, optname) == _TCP_CC:
                return _cc_value(_cc_of(st), buflen)
            v = st.opts.get((level, optname), 0)
            return v if isinstance(v, int) else struct.unpack("i", bytes(v[:4]))[0]

        def accept(self):
            st = self._shim()
            if st is None or st.kind != "listen":
                return super().accept()
            fd, cst, remote = _accept_fd(self, st)
            raw = ShimSocket(self.family, self.type, self.proto, fileno=fd)
            newsock = self.context.wrap_socket(
                raw,
                do_handshake_on_connect=self.do_handshake_on_connect,
                suppress_ragged_eofs=self.suppress_ragged_eofs,
                server_side=True,
            )
            return newsock, cst.fmt(remote)

        def recv(self, buflen=1024, flags=0):
            try:
                return super().recv(buflen, flags)
            except ssl.SSLEOFError:
                self._shim_reset()
                raise

        def recv_into(self, buffer, nbytes=None, flags=0):
            try:
                return super().recv_into(buffer, nbytes, flags)
            except ssl.SSLEOFError:
                self._shim_reset()
                raise

        def _shim_reset(self):
            st = self._shim()
            if st is not None:
                err = st.take_reset()
                if err:
                    raise ConnectionResetError(err, os.strerror(err))

    ssl.SSLContext.sslsocket_class = ShimSSLSocket
