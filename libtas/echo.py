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

from libtas.api import ECHO_DONE, ECHO_EOF, Connection, Stack

log = logging.getLogger("tas.echo")
CHUNK = 256 << 10


class EchoServer:
    """Work per wake-up is proportional to the flows that have something:
    the connections just accepted, the flows ready_flows() names (fast-path
    notifications and control events), and the flows whose input waits for
    send space.  Every connection is looked at only when the context says
    notifications were lost (an ARX ring overflowed: ``sweeps``), and
    otherwise at most every SAFETY_SWEEP_S on an idle timeout
    (``timer_sweeps``), never per wake-up: with 65k connections a pass over
    all of them costs ~0.5 s of Python."""

    SAFETY_SWEEP_S = 30.0

    def __init__(
        self, port: int, state_dir: str | None = None, backlog: int = 1024, buf: int | None = None
    ) -> None:
        self.stack = Stack(state_dir)
        self.ctx = self.stack.context(rx_buf=buf, tx_buf=buf)
        self.listener = self.ctx.listen(port, backlog=backlog, reuseaddr=True)
        self.port = self.listener.port
        self.conns: dict[int, Connection] = {}  # flow id -> open connection
        self.stopping = threading.Event()
        self.served = 0
        self._blocked: dict[int, Connection] = {}  # rx data waiting for tx space
        self._last_sweep = time.monotonic()
        # counters (tests and `tas bench` read them): connections looked at,
        # sweeps over all of them after lost notifications / idle timeouts
        self.serviced = 0
        self.sweeps = 0
        self.timer_sweeps = 0
        self._trace: list[int] | None = None
        # The connections' echo is in C: in the drains of wait() (then the
        # flows it served are not in ready_flows()) and over ready_flows().
        # (The fast path posts a poll's notifications after every position
        # it moves in that poll, so a drained notification never finds
        # stale positions: tests/test_fp_notify_order.py.)
        self.ctx._echo_in_drain(True)

    @property
    def trace(self) -> list[int] | None:
        """(tests) A list: the flow ids the server looks at are appended
        (the drains then leave every flow to the server's pass)."""
        return self._trace

    @trace.setter
    def trace(self, seen: list[int] | None) -> None:
        self._trace = seen
        self.ctx._echo_in_drain(seen is None)

    def _service(self, conn: Connection) -> bool:
        """Echo what conn has; False when the connection is finished.

        Zero-copy on our side: the bytes go straight from the rx buffer into
        the tx buffer (Connection.splice_to); what does not fit stays
        in the rx buffer (so the window closes: a client that stops reading
        only stalls itself) until the fast path reports acknowledged data.
        The update is posted with the others of this pass (flush=False)."""
        self.serviced += 1
        fid = conn.flow_id
        if self._trace is not None:
            self._trace.append(fid)
        try:
            # (flush=False) echo() in one call, also saying whether the
            # connection is at EOF (then close it)
            st = conn._echo_status(False)
            if st == ECHO_DONE:  # all echoed (the common case)
                if self._blocked:
                    self._blocked.pop(fid, None)
                return True
            if st == ECHO_EOF:  # what the loop below finds: moved nothing, readable, at_eof
                conn.close(flush=False)  # sent with this pass's others (ctx.flush below)
                return False
            while True:
                moved = conn.splice_to(conn, flush=False)  # rx buffer -> tx buffer, one update
                if not conn.readable():  # all echoed (the common case)
                    self._blocked.pop(fid, None)
                    return True
                if moved:
                    continue
                if conn.at_eof:
                    conn.close(flush=False)  # sent with this pass's others (ctx.flush below)
                    return False
                self._blocked[fid] = conn  # input left: it waits for acknowledged output
                return True
        except (ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
            conn.abort()
            return False

    def _close(self, conn: Connection, alone: bool = False) -> None:
        """A connection at EOF: close it (sent with this pass's others,
        or at once when it is alone)."""
        try:
            conn.close(flush=alone)
        except (ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
            conn.abort()

    def serve_once(self, timeout: float = 0.2) -> None:
        """Wait for the doorbell (at most timeout), then serve the flows
        that have something (see the class docstring)."""
        ctx = self.ctx
        # wait(), then (one lock) accept what is queued (given to the echo
        # kernel and echoed once), what the drains' echo left (EOF, input
        # left) and how many flows it served, ready_flows(), hints_lost()
        n, new, att, seen, ready, lost = ctx._echo_wait(timeout, self.listener)
        self.serviced += seen
        if new:
            conns = self.conns
            for conn in new:
                conns[conn.flow_id] = conn
            self.served += len(new)
            self.serviced += len(new)
            if self._trace is not None:
                self._trace.extend(c.flow_id for c in new)
        if not (
            lost
            or self._blocked
            or (not n and time.monotonic() - self._last_sweep > self.SAFETY_SWEEP_S)
        ):
            # the common case: the flows the fast path named, each once (a
            # set), no dict of them to build
            if ready:
                # one call echoes them all (Context._echo_flows: the echo
                # kernel); the rest (EOF, input left, ...) are looked at here
                self.serviced += len(ready)
                if self._trace is not None:
                    self._trace.extend(ready)
                att = att + ctx._echo_flows(ready) if att else ctx._echo_flows(ready)
            if att:
                conns, service = self.conns, self._service
                for fid, st in att:
                    conn = conns.get(fid)
                    if conn is None:
                        continue
                    if st == ECHO_EOF:  # all echoed, the peer's FIN seen
                        self._close(conn, len(att) == 1)
                    elif service(conn):  # input left, not the kernel's, ...
                        continue
                    conns.pop(fid, None)
                    self._blocked.pop(fid, None)
            if ctx._updates or self.stack._closes:  # (what flush() would look at)
                ctx.flush()
            return
        now = time.monotonic()
        todo: dict[int, Connection] = {c.flow_id: c for c in new or ()}
        if lost:
            self.sweeps += 1
            self._last_sweep = now
            todo = dict(self.conns)
        elif not n and now - self._last_sweep > self.SAFETY_SWEEP_S:
            self.timer_sweeps += 1
            self._last_sweep = now
            todo = dict(self.conns)
        else:
            conns = self.conns
            for fid in ready:
                conn = conns.get(fid)
                if conn is not None:
                    todo[fid] = conn
            todo.update(self._blocked)
        for fid, _ in att or ():  # what the drains' echo left
            conn = self.conns.get(fid)
            if conn is not None:
                todo[fid] = conn
        for fid, conn in todo.items():
            if not self._service(conn):
                self.conns.pop(fid, None)
                self._blocked.pop(fid, None)
        if todo:
            ctx.flush()

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            self.serve_once(0.2)

    def close(self) -> None:
        for conn in self.conns.values():
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
