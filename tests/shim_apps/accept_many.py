"""Shim server: accept N connections one after another (non-blocking
listener under selectors, as servers do), echo one request on each, then
read on until the client's RST and report what recv() raised.  Each
accepted socket must behave as a kernel one from its first call (the RST
shows as ConnectionResetError, not just EOF)."""

import json
import selectors
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
lst = socket.create_server(("", port))
lst.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(lst, selectors.EVENT_READ)
print("listening", port, flush=True)
outcomes: dict[str, int] = {}
echoed = 0
for _ in range(n):
    while True:
        sel.select(10)
        try:
            c, _ = lst.accept()
            break
        except BlockingIOError:
            continue
    c.settimeout(10)
    req = c.recv(64)
    c.sendall(req)
    echoed += len(req)
    try:
        while c.recv(64):
            pass
        out = "EOF"
    except OSError as e:
        out = type(e).__name__
    outcomes[out] = outcomes.get(out, 0) + 1
    c.close()
print("RESULT " + json.dumps({"ok": True, "outcomes": outcomes, "echoed": echoed}), flush=True)
