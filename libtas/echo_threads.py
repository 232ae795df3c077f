"""`tas echo-server --threads N`: the echo server on N application threads.

Design: one app (one Stack control connection), N contexts, one per thread;
every context listens on the same port with ``reuseaddr``.  The slow path
puts contexts of one app that listen on one port into a group and hands new
connections to the group's members round robin (kernel_slowpath/engine.py
``Listener.pick``, like Linux SO_REUSEPORT), so each connection lives in
exactly one context and is served by exactly one thread, without locks
between threads.  Other apps still get EADDRINUSE for the port.

Each thread runs the single-context echo loop of libtas/echo.py.  The threads
block in select() on their own context doorbell, outside the GIL; the
Python work per byte is under the GIL, so the gain is in overlapping waits
and spreading flows over contexts (and fast-path cores), not in parallel
Python execution.
"""

from __future__ import annotations

import signal
import sys
import threading

from libtas.api import Stack

CHUNK = 256 << 10


class EchoWorker:
    """One context of a shared Stack, listening on the shared port; the echo
    loop of libtas/echo.py (pending output per connection, so a client that
    stops reading stalls only itself)."""

    def __init__(self, stack: Stack, port: int, stopping: threading.Event, backlog: int = 1024) -> None:
        self.stack = stack
        self.ctx = stack.context()
        self.listener = self.ctx.listen(port, backlog=backlog, reuseaddr=True)
        self.port = self.listener.port
        self.conns: dict = {}
        self.stopping = stopping
        self.served = 0

    def _service(self, conn, pending: bytearray) -> bool:
        """Echo what conn has; False when the connection is finished."""
        try:
            while True:
                if pending:
                    try:
                        n = conn.send(pending, timeout=0)
                    except BlockingIOError:
                        return True
                    del pending[:n]
                    if pending:
                        return True
                try:
                    data = conn.recv(CHUNK, timeout=0)
                except BlockingIOError:
                    return True
                if not data:
                    conn.close()
                    return False
                pending += data
        except OSError:  # reset, broken pipe, timeout
            conn.abort()
            return False

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            self.ctx.wait(0.2)
            while True:
                try:
                    conn = self.listener.accept(timeout=0)
                except BlockingIOError:
                    break
                self.conns[conn] = bytearray()
                self.served += 1
            for conn, pending in list(self.conns.items()):
                if not self._service(conn, pending):
                    del self.conns[conn]

    def close(self) -> None:  # the stack is closed by the owner
        for conn in self.conns:
            conn.abort()
        self.listener.close()
        self.ctx.close()


def main(port: int, state_dir: str | None, threads: int) -> int:
    stopping = threading.Event()
    try:
        stack = Stack(state_dir)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"tas echo-server: {e}", file=sys.stderr)
        return 2
    workers: list[EchoWorker] = []
    try:
        try:
            first = EchoWorker(stack, port, stopping)
            workers.append(first)
            for _ in range(threads - 1):  # port 0: the others join the port the first got
                workers.append(EchoWorker(stack, first.port, stopping))
        except OSError as e:
            print(f"tas echo-server: cannot listen on port {port}: {e.strerror or e}", file=sys.stderr)
            return 2
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        ts = [
            threading.Thread(target=w.serve_forever, name=f"echo-{i}", daemon=True)
            for i, w in enumerate(workers)
        ]
        for t in ts:
            t.start()
        print(
            f"tas echo-server: listening on port {first.port} ({threads} threads, one context each)",
            flush=True,
        )
        while not stopping.is_set():
            stopping.wait(0.5)
        for t in ts:
            t.join(5)
        print(
            "tas echo-server: served "
            + ", ".join(str(w.served) for w in workers)
            + " connections per thread",
            flush=True,
        )
    finally:
        for w in workers:
            try:
                w.close()
            except OSError:
                pass
        stack.close()
    return 0
