"""Bulk neighbour for `tas bench --modes isolation`: N flows sending as fast
as they can to a discard server for a bounded time.

``native``: one app on the stack's native API (its own registration,
separate from the echo server it runs beside).  ``socket``: the same on
Linux sockets.  Prints ``sending N`` once every flow is connected, then
one JSON line ``{"ok": ..., "bytes": ..., "seconds": ..., "gbps": ...}``.
Bounded by --time (and a connect timeout); stops early on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time

from bench_server import _stopper  # same directory: SIGINT/SIGTERM end the run early

CHUNK = 256 << 10


def native(a: argparse.Namespace, stop: list[bool]) -> tuple[int, float]:
    from libtas.api import Stack

    st = Stack(a.state_dir)
    ctx = st.context()
    conns = [ctx.connect(a.host, a.port, timeout=10) for _ in range(a.flows)]
    print(f"sending {len(conns)}", flush=True)
    data = memoryview(b"b" * CHUNK)
    sent, t0 = 0, time.monotonic()
    end = t0 + a.time
    while not stop[0] and time.monotonic() < end:
        progress = 0
        for c in conns:  # round robin, never blocking on one flow
            try:
                progress += c.send(data, timeout=0)
            except BlockingIOError:
                pass
        sent += progress
        if not progress:
            ctx.wait(min(0.05, max(0.0, end - time.monotonic())))
    el = time.monotonic() - t0
    for c in conns:
        c.abort()
    st.close()
    return sent, el


def linux(a: argparse.Namespace, stop: list[bool]) -> tuple[int, float]:
    conns = [socket.create_connection((a.host, a.port), timeout=10) for _ in range(a.flows)]
    sel = selectors.DefaultSelector()
    for s in conns:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_WRITE)
    print(f"sending {len(conns)}", flush=True)
    data = memoryview(b"b" * CHUNK)
    sent, t0 = 0, time.monotonic()
    end = t0 + a.time
    while not stop[0] and time.monotonic() < end:
        for key, _ in sel.select(min(0.05, max(0.0, end - time.monotonic()))):
            try:
                sent += key.fileobj.send(data)
            except BlockingIOError:
                pass
    el = time.monotonic() - t0
    for s in conns:
        s.close()
    return sent, el


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("api", choices=["native", "socket"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=9)
    ap.add_argument("--flows", type=int, default=16)
    ap.add_argument("--time", type=float, default=5.0, help="seconds of sending (bounded)")
    ap.add_argument("--state-dir", default=None)
    a = ap.parse_args()
    stop = _stopper()
    try:
        sent, el = (native if a.api == "native" else linux)(a, stop)
    except OSError as e:
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps({"ok": True, "flows": a.flows, "bytes": sent, "seconds": round(el, 3),
                      "gbps": sent * 8 / el / 1e9 if el > 0 else 0.0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
