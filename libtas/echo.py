"""The echo server on the native API (`tas echo-server`).

One context, one thread: wait for the context doorbell, accept what is
queued, then move bytes from each connection the fast path reported back
into its send buffer (zero-copy: rx buffer -> tx buffer).  Input that does
not fit yet stays in the rx buffer, so a client that stops reading only
stalls itself.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from libtas.api import Connection, Stack

log = logging.getLogger("tas.echo")
CHUNK = 256 << 10


class EchoServer:
    def __init__(self, port: int, state_dir: str | None = None, backlog: int = 1024,
                 buf: int | None = None) -> None:
        self.stack = Stack(state_dir)
        self.ctx = self.stack.context(rx_buf=buf, tx_buf=buf)
        self.listener = self.ctx.listen(port, backlog=backlog, reuseaddr=True)
        self.port = self.listener.port
        self.conns: dict[Connection, bytearray] = {}
        self.stopping = threading.Event()
        self.served = 0
        self._blocked: set[Connection] = set()  # rx data waiting for tx space
        self._last_sweep = 0.0

    def _accept_all(self) -> list[Connection]:
        new = []
        # wait() has just drained the control events: take what is queued
        # (accept() does not poll while its queue is not empty)
        while self.listener._queue:
            try:
                conn = self.listener.accept(timeout=0)
            except BlockingIOError:
                break
            self.conns[conn] = bytearray()
            self.served += 1
            new.append(conn)
        return new

    def _service(self, conn: Connection, pending: bytearray) -> bool:
        """Echo what conn has; False when the connection is finished.

        Zero-copy on our side: the bytes go straight from the rx buffer into
        the tx buffer (Connection.splice_to); what does not fit stays
        in the rx buffer (so the window closes: a client that stops reading
        only stalls itself) until the fast path reports acknowledged data."""
        try:
            if pending:  # (older API users' leftovers; kept for close())
                try:
                    n = conn.send(pending, timeout=0)
                except BlockingIOError:
                    return True
                del pending[:n]
                if pending:
                    self._blocked.add(conn)
                    return True
            while True:
                moved = conn.splice_to(conn)  # rx buffer -> tx buffer, one update
                if not conn.readable():  # all echoed (the common case)
                    self._blocked.discard(conn)
                    return True
                if moved:
                    continue
                if conn.at_eof:
                    conn.close()
                    return False
                self._blocked.add(conn)  # input left: it waits for acknowledged output
                return True
        except (ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
            conn.abort()
            return False

    def serve_once(self, timeout: float = 0.2) -> None:
        """Wait for the doorbell (at most timeout), then serve the flows the
        fast path reported (all of them after control events, a timeout, or
        once a second)."""
        n = self.ctx.wait(timeout)
        todo = set(self._accept_all())
        ready = self.ctx.ready_flows()
        now = time.monotonic()
        if not n or not ready or now - self._last_sweep > 1.0:
            self._last_sweep = now
            todo.update(self.conns)
        else:
            for fid in ready:
                conn = self.ctx.connection(fid)
                if conn is not None:
                    todo.add(conn)
            todo.update(self._blocked)
        for conn in todo:
            pending = self.conns.get(conn)
            if pending is not None and not self._service(conn, pending):
                del self.conns[conn]
                self._blocked.discard(conn)

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            self.serve_once(0.2)

    def close(self) -> None:
        for conn in self.conns:
            conn.abort()
        self.listener.close()
        self.ctx.close()
        self.stack.close()


def main(port: int, state_dir: str | None) -> int:
    try:
        srv = EchoServer(port, state_dir)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"tas echo-server: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"tas echo-server: cannot listen on port {port}: {e.strerror or e}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: srv.stopping.set())
    print(f"tas echo-server: listening on port {srv.port}", flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.close()
    return 0
