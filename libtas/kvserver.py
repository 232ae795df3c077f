"""`tas kv-server`: a Redis-protocol (RESP2) key-value server.

The protocol and the store are sans-I/O (libtas/resp.py, libtas/kvstore.py);
:class:`Session` glues them per connection (bytes in -> replies out).  Two
thin I/O loops run the same sessions:

* :class:`NativeKVServer` on the TAS native API (one context, one thread,
  like libtas/echo.py);
* :class:`SocketKVServer` on plain Linux sockets (``tas kv-server --kernel``),
  for comparing the stack with kernel TCP using identical server code.

Also here: :func:`resp_load`, a small built-in RESP load generator (plain
sockets, pipelined SET/GET) used by `tas demo` when redis-benchmark is not
installed.  Run it as ``python -m libtas.kvserver load HOST PORT``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time

from libtas import resp
from libtas.kvstore import QUIT, Commands, KVStore

log = logging.getLogger("tas.kv")
CHUNK = 256 << 10
OUT_LIMIT = 1 << 20  # stop parsing a client's input while this much output is unsent
MAX_BATCH = 64  # recv/parse rounds per connection per wake-up (fairness)


class Session:
    """One client connection, sans-I/O: ``feed`` received bytes, ``process``
    runs complete commands (until OUT_LIMIT bytes of replies are pending),
    the owner sends ``out`` and closes once ``closing`` and ``out`` is empty."""

    __slots__ = ("cmds", "parser", "out", "closing", "proto")

    def __init__(self, cmds: Commands, max_bulk: int = resp.MAX_BULK) -> None:
        self.cmds = cmds
        self.parser = resp.RequestParser(max_bulk=max_bulk)
        self.out = bytearray()
        self.closing = False
        self.proto = 2  # RESP version, switched by HELLO

    def feed(self, data) -> None:
        if not self.closing:
            self.parser.feed(data)

    def process(self) -> int:
        """Execute buffered commands; returns how many ran."""
        n = 0
        out = self.out
        while not self.closing and len(out) < OUT_LIMIT:
            try:
                cmd = self.parser.next()
            except resp.ProtocolError as e:
                out += b"-ERR Protocol error: " + str(e).encode() + b"\r\n"
                self.closing = True
                log.debug("protocol error: %s", e)
                break
            if cmd is None:
                break
            n += 1
            r = self.cmds.execute(cmd)
            if r is QUIT:
                out += resp.OK
                self.closing = True
            elif isinstance(r, resp.Hello):
                self.proto = r.proto
                out += resp.encode(r.info, self.proto)
            else:
                out += resp.encode(r, self.proto)
        return n

    def end_of_input(self) -> None:
        """The peer sent FIN: run what is complete, then close after replying."""
        self.process()
        self.closing = True

    @property
    def blocked(self) -> bool:
        """Too much unsent output to take more input."""
        return len(self.out) >= OUT_LIMIT


def max_bulk_for(max_memory: int) -> int:
    """Largest single argument accepted: Redis' 512 MiB, or max_memory if smaller."""
    return min(resp.MAX_BULK, max_memory) if max_memory else resp.MAX_BULK


class _Base:
    def __init__(self, max_memory: int = 0, clock=None) -> None:
        self.store = KVStore(max_memory=max_memory, **({"clock": clock} if clock else {}))
        self.cmds = Commands(self.store, info=self._info)
        self.max_bulk = max_bulk_for(max_memory)
        self.stopping = threading.Event()
        self.clients = 0
        self.served = 0

    def _info(self) -> dict:
        return {
            "clients": {"connected_clients": self.clients, "total_connections_received": self.served},
            "server": {"tas_transport": self.transport},
        }

    def new_session(self) -> Session:
        self.served += 1
        self.clients += 1
        return Session(self.cmds, self.max_bulk)


class NativeKVServer(_Base):
    """The server on the TAS native API: one context, one thread."""

    transport = "tas-native"

    def __init__(
        self, port: int, state_dir: str | None = None, max_memory: int = 0, backlog: int = 1024
    ) -> None:
        from libtas.api import Stack

        super().__init__(max_memory)
        self.stack = Stack(state_dir)
        try:
            self.ctx = self.stack.context()
            self.listener = self.ctx.listen(port, backlog=backlog, reuseaddr=True)
        except BaseException:
            self.stack.close()
            raise
        self.port = self.listener.port
        self.conns: dict = {}

    def _accept_all(self) -> None:
        while True:
            try:
                conn = self.listener.accept(timeout=0)
            except BlockingIOError:
                return
            self.conns[conn] = self.new_session()
            log.debug("client %s:%d connected", *conn.remote_address)

    def _service(self, conn, s: Session) -> str:
        """'closed', 'idle' (waits for the stack) or 'busy' (call again soon)."""
        try:
            for _ in range(MAX_BATCH):
                s.process()
                if s.out:
                    try:
                        n = conn.send(s.out, timeout=0)
                    except BlockingIOError:
                        n = 0
                    if n:
                        del s.out[:n]
                if s.closing:
                    if s.out:
                        return "idle"
                    conn.close()
                    return "closed"
                if s.blocked:
                    return "idle"  # wait for tx space
                try:
                    data = conn.recv(CHUNK, timeout=0)
                except BlockingIOError:
                    return "idle"
                if not data:
                    s.end_of_input()
                    continue
                s.feed(data)
            return "busy"
        except (ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
            conn.abort()
            return "closed"

    def serve_forever(self) -> None:
        busy = False
        while not self.stopping.is_set():
            self.ctx.wait(0 if busy else 0.2)
            self._accept_all()
            busy = False
            for conn, s in list(self.conns.items()):
                st = self._service(conn, s)
                if st == "closed":
                    del self.conns[conn]
                    self.clients -= 1
                elif st == "busy":
                    busy = True
            self.store.sweep()

    def close(self) -> None:
        for conn in self.conns:
            conn.abort()
        self.conns.clear()
        self.listener.close()
        self.ctx.close()
        self.stack.close()


class SocketKVServer(_Base):
    """The same server on Linux sockets (selectors, non-blocking)."""

    transport = "linux-socket"

    def __init__(self, port: int, bind: str = "0.0.0.0", max_memory: int = 0, backlog: int = 1024) -> None:
        super().__init__(max_memory)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((bind, port))
        self.lsock.listen(backlog)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)

    def _accept_all(self) -> None:
        while True:
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    return
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(sock, selectors.EVENT_READ, self.new_session())
            log.debug("client %s:%d connected", *addr)

    def _close(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        sock.close()
        self.clients -= 1

    def _flush(self, sock: socket.socket, s: Session) -> None:
        s.process()
        if s.out:
            try:
                n = sock.send(s.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            del s.out[:n]

    def _service(self, sock: socket.socket, s: Session) -> bool:
        """False when the connection is finished."""
        try:
            for _ in range(MAX_BATCH):
                self._flush(sock, s)
                if s.closing or s.blocked or s.out:
                    break
                try:
                    data = sock.recv(CHUNK)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    s.end_of_input()
                else:
                    s.feed(data)
            else:
                self._flush(sock, s)  # budget used up: answer what was read last
            if s.closing and not s.out:
                self._close(sock)
                return False
        except OSError:
            self._close(sock)
            return False
        want_in = not (s.closing or s.blocked)
        self.sel.modify(
            sock, (selectors.EVENT_READ if want_in else 0) | (selectors.EVENT_WRITE if s.out else 0), s
        )
        return True

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.sel.select(0.2):
                if key.data is None:
                    self._accept_all()
                else:
                    self._service(key.fileobj, key.data)
            self.store.sweep()

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


def main(
    port: int, state_dir: str | None = None, max_memory: int = 0, kernel: bool = False, bind: str = "0.0.0.0"
) -> int:
    try:
        if kernel:
            srv: _Base = SocketKVServer(port, bind=bind, max_memory=max_memory)
        else:
            srv = NativeKVServer(port, state_dir, max_memory=max_memory)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"tas kv-server: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"tas kv-server: cannot listen on port {port}: {e.strerror or e}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: srv.stopping.set())
    limit = f", max memory {max_memory} B" if max_memory else ""
    print(f"tas kv-server: listening on port {srv.port} ({srv.transport}{limit})", flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.close()
    return 0


# -- built-in load generator ------------------------------------------------------------------------


def resp_load(
    host: str,
    port: int,
    *,
    clients: int = 16,
    requests: int = 20000,
    pipeline: int = 16,
    value_size: int = 64,
    keyspace: int = 1000,
    timeout: float = 30.0,
) -> dict:
    """Pipelined SET then GET load from ``clients`` connections (plain
    sockets, one selector loop): ``requests`` commands of each kind in
    total.  Returns ops/s and per-batch latency percentiles (ms); counts
    error replies (expected 0)."""
    value = b"v" * value_size
    res: dict = {"clients": clients, "pipeline": pipeline, "requests": requests, "value_size": value_size}
    deadline = time.monotonic() + timeout
    for op in ("SET", "GET"):
        per_client = max(1, requests // clients)
        sel = selectors.DefaultSelector()
        states = []
        for i in range(clients):
            s = socket.create_connection((host, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            st = {
                "sock": s,
                "left": per_client,
                "inflight": 0,
                "parser": resp.ReplyParser(),
                "t0": 0.0,
                "i": i,
                "n": 0,
            }
            states.append(st)
            sel.register(s, selectors.EVENT_READ, st)
        lat: list[float] = []
        errors = 0
        done = 0
        t_start = time.monotonic()

        def send_batch(st, op=op) -> None:
            k = min(pipeline, st["left"])
            cmds = []
            for _ in range(k):
                key = b"key:%d" % ((st["i"] * 7919 + st["n"]) % keyspace)
                st["n"] += 1
                cmds.append(
                    resp.encode_command(op, key, value) if op == "SET" else resp.encode_command(op, key)
                )
            st["left"] -= k
            st["inflight"] = k
            st["t0"] = time.monotonic()
            st["sock"].setblocking(True)
            st["sock"].sendall(b"".join(cmds))
            st["sock"].setblocking(False)

        for st in states:
            send_batch(st)
        active = clients
        while active and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                st = key.data
                try:
                    data = st["sock"].recv(CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError("server closed the connection")
                st["parser"].feed(data)
                for r in st["parser"]:
                    if isinstance(r, resp.Error):
                        errors += 1
                    st["inflight"] -= 1
                    done += 1
                if st["inflight"] == 0:
                    lat.append((time.monotonic() - st["t0"]) * 1000)
                    if st["left"]:
                        send_batch(st)
                    else:
                        active -= 1
        elapsed = time.monotonic() - t_start
        for st in states:
            st["sock"].close()
        sel.close()
        lat.sort()

        def pct(p: float, lat=lat) -> float:
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 3) if lat else 0.0

        res[op.lower()] = {
            "ops": done,
            "ops_per_s": round(done / max(elapsed, 1e-9)),
            "errors": errors,
            "complete": active == 0,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "batch_latencies_ms": [round(x, 3) for x in lat[:: max(1, len(lat) // 500)]],
        }
    return res


def _load_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m libtas.kvserver load")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--value-size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args(argv)
    try:
        r = resp_load(
            a.host,
            a.port,
            clients=a.clients,
            requests=a.requests,
            pipeline=a.pipeline,
            value_size=a.value_size,
            timeout=a.timeout,
        )
        r["ok"] = all(r[k]["complete"] and not r[k]["errors"] for k in ("set", "get"))
    except OSError as e:
        r = {"ok": False, "error": str(e)}
    print("RESULT " + json.dumps(r), flush=True)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        sys.exit(_load_main(sys.argv[2:]))
    print(
        "usage: python -m libtas.kvserver load HOST PORT [options]  (the server: tas kv-server)",
        file=sys.stderr,
    )
    sys.exit(os.EX_USAGE)
