"""Servers for `tas bench` besides `tas echo-server` and the C reference server.

``native``: discard (RFC 863) or chargen (RFC 864, an endless stream) on the
stack's native API, or the native echo server (:class:`libtas.echo.EchoServer`)
with a chosen buffer size (``--buf``, for the many-connections mode).

``socket``: echo, discard and chargen on ports base, base+2, base+12 written
against the plain ``socket``/``selectors`` modules, so the same program runs
on Linux sockets and under the socket shim (``tas run -- python ...``).

Every server runs until SIGTERM/SIGINT and prints ``listening`` when ready.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys

CHUNK = 256 << 10


def _stopper() -> list[bool]:
    stop = [False]

    def on_sig(*_):
        stop[0] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_sig)
    return stop


# -- native API ------------------------------------------------------------------------------


def native(mode: str, port: int, state_dir: str | None, buf: int) -> int:
    from libtas.api import Stack

    if mode == "echo":
        from libtas.echo import EchoServer

        srv = EchoServer(port, state_dir, backlog=4096, buf=buf or None)
        stop = _stopper()
        print(f"bench_server native echo: listening on port {srv.port}", flush=True)
        try:
            while not stop[0]:
                srv.serve_once(0.2)
        finally:
            srv.close()
        return 0

    stack = Stack(state_dir)
    ctx = stack.context(rx_buf=buf or None, tx_buf=buf or None)
    lst = ctx.listen(port, backlog=1024, reuseaddr=True)
    stop = _stopper()
    conns: set = set()
    gen = memoryview(b"c" * CHUNK)
    print(f"bench_server native {mode}: listening on port {lst.port}", flush=True)
    try:
        while not stop[0]:
            ctx.wait(0.2)
            while True:
                try:
                    conns.add(lst.accept(timeout=0))
                except BlockingIOError:
                    break
            for c in list(conns):
                try:
                    if mode == "discard":
                        while True:
                            v = c.recv_view()
                            if not len(v):
                                break
                            n = len(v)
                            v.release()
                            c.consume(n)
                        if c.at_eof:
                            c.close()
                            conns.discard(c)
                    else:  # chargen: fill the send buffer; stop at EOF/RST
                        if c.readable():
                            v = c.recv_view()
                            n = len(v)
                            v.release()
                            if n:
                                c.consume(n)
                            elif c.at_eof:
                                c.close()
                                conns.discard(c)
                                continue
                        space = c.tx_space()
                        while space:
                            space -= c.send(gen[: min(space, CHUNK)], timeout=0)
                except (BlockingIOError, TimeoutError):
                    pass
                except OSError:
                    c.abort()
                    conns.discard(c)
    finally:
        for c in conns:
            c.abort()
        lst.close()
        ctx.close()
        stack.close()
    return 0


# -- plain sockets ---------------------------------------------------------------------------


def sockets(host: str, base: int) -> int:
    stop = _stopper()
    sel = selectors.DefaultSelector()
    kinds = {base: "echo", base + 2: "discard", base + 12: "chargen"}
    for port, kind in kinds.items():
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(1024)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, ("listen", kind))
    gen = b"c" * CHUNK
    pending: dict[socket.socket, bytes] = {}
    print(f"bench_server socket: listening on {host} ports {' '.join(map(str, kinds))}", flush=True)

    def drop(s: socket.socket) -> None:
        sel.unregister(s)
        pending.pop(s, None)
        s.close()

    while not stop[0]:
        for key, ev in sel.select(0.2):
            s = key.fileobj
            role, kind = key.data
            if role == "listen":
                while True:
                    try:
                        c, _ = s.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if kind == "chargen" else 0)
                    sel.register(c, mask, ("conn", kind))
                continue
            try:
                if ev & selectors.EVENT_READ:
                    if kind == "echo" and s in pending:
                        pass
                    else:
                        b = s.recv(CHUNK)
                        if not b:
                            drop(s)
                            continue
                        if kind == "echo":
                            n = s.send(b)
                            if n < len(b):
                                pending[s] = b[n:]
                                sel.modify(s, selectors.EVENT_WRITE, key.data)
                if ev & selectors.EVENT_WRITE:
                    if kind == "chargen":
                        s.send(gen)
                    elif s in pending:
                        b = pending[s]
                        n = s.send(b)
                        if n < len(b):
                            pending[s] = b[n:]
                        else:
                            del pending[s]
                            sel.modify(s, selectors.EVENT_READ, key.data)
            except BlockingIOError:
                pass
            except OSError:
                drop(s)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_server")
    sub = p.add_subparsers(dest="kind", required=True)
    n = sub.add_parser("native")
    n.add_argument("mode", choices=["echo", "discard", "chargen"])
    n.add_argument("--port", type=int, required=True)
    n.add_argument("--state-dir")
    n.add_argument("--buf", type=int, default=0, help="flow buffer size (default: the stack's)")
    s = sub.add_parser("socket")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=7, help="echo port; discard +2, chargen +12")
    a = p.parse_args(argv)
    if a.kind == "native":
        return native(a.mode, a.port, a.state_dir, a.buf)
    return sockets(a.host, a.port)


if __name__ == "__main__":
    sys.exit(main())
