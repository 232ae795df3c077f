"""An app on the TAS native API for the interop tests (run it in the stack
namespace).  One connection, passive (``--listen PORT``: prints
``listening PORT``, accepts one connection) or active (``--connect IP:PORT``:
prints ``connected``), then runs a step script (see steps.py) and prints a
``RESULT {json}`` line.  ``--expect-refused``: the connect must fail with
ConnectionRefusedError.  Exit status 0 iff everything went as asked.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from steps import Runner, emit, fail, say  # noqa: E402

from libtas.api import Stack  # noqa: E402


class TasConn:
    """steps.Runner adapter for a libtas Connection."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def recv_into(self, mv, timeout: float) -> int:
        return self.conn.recv_into(mv, timeout=timeout)

    def send(self, mv, timeout: float) -> int:
        return self.conn.send(mv, timeout=timeout)

    def shut_wr(self) -> None:
        self.conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.conn.close()

    def abort(self) -> None:
        self.conn.abort()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--listen", type=int, metavar="PORT")
    g.add_argument("--connect", metavar="IP:PORT")
    ap.add_argument("--script", default="")
    ap.add_argument("--send-bytes", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline for the whole run (s)")
    ap.add_argument("--expect-refused", action="store_true")
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout

    stack = Stack(a.state_dir)
    try:
        ctx = stack.context()
        if a.listen is not None:
            lst = ctx.listen(a.listen, reuseaddr=True)
            say(f"listening {lst.port}")
            try:
                conn = lst.accept(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                fail("no connection to accept before the deadline")
            lst.close()
            say(f"accepted {conn.remote_address[0]}:{conn.remote_address[1]}")
        else:
            ip, _, port = a.connect.rpartition(":")
            t0 = time.monotonic()
            try:
                conn = ctx.connect(ip, int(port), timeout=max(0.01, deadline - time.monotonic()))
            except ConnectionRefusedError as e:
                elapsed = round(time.monotonic() - t0, 3)
                if a.expect_refused:
                    emit({"ok": True, "refused": True, "error": None, "elapsed": elapsed})
                    return 0
                fail(f"ConnectionRefusedError: {e}", elapsed=elapsed)
            except OSError as e:
                fail(f"{type(e).__name__}: {e}", elapsed=round(time.monotonic() - t0, 3))
            if a.expect_refused:
                conn.abort()
                fail("connected, expected ConnectionRefusedError")
            say(f"connected {conn.local_address[0]}:{conn.local_address[1]}")
        runner = Runner(TasConn(conn), a.send_bytes, a.seed, deadline)
        ok = runner.run(a.script)
        emit(runner.result(local_port=conn.local_address[1]))
        ctx.close()
        return 0 if ok else 1
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
