"""The echo server on the native API (`tas echo-server`).

One context, one thread: wait for the context doorbell, accept what is
queued, then move bytes from each readable connection back into its send
buffer.  Output that does not fit yet stays pending per connection, so a
client that stops reading only stalls itself.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

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

    def _accept_all(self) -> None:
        while True:
            try:
                conn = self.listener.accept(timeout=0)
            except BlockingIOError:
                return
            self.conns[conn] = bytearray()
            self.served += 1

    def _service(self, conn: Connection, pending: bytearray) -> bool:
        """Echo what conn has; False when the connection is finished."""
        try:
            if pending:
                try:
                    n = conn.send(pending, timeout=0)
                except BlockingIOError:
                    return True
                del pending[:n]
                if pending:
                    return True
            while True:
                try:
                    data = conn.recv(CHUNK, timeout=0)
                except BlockingIOError:
                    return True
                if not data:
                    conn.close()
                    return False
                try:
                    n = conn.send(data, timeout=0)
                except BlockingIOError:
                    n = 0
                if n < len(data):
                    pending += data[n:]
                    return True
        except (ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
            conn.abort()
            return False

    def serve_once(self, timeout: float = 0.2) -> None:
        """Wait for the doorbell (at most timeout), then serve what is ready."""
        self.ctx.wait(timeout)
        self._accept_all()
        for conn, pending in list(self.conns.items()):
            if not self._service(conn, pending):
                del self.conns[conn]

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
