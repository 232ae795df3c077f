"""Ordering across the shim's two send paths; stdlib only.

mixed_sends.py IP PORT: small send()s (which the shim writes straight into
the stack) interleaved with sendall()s larger than the flow's send buffer
(whose tail goes through the socketpair and the pump) must arrive in the
order written; then shutdown(SHUT_WR), and a send after it raises EPIPE.
Prints RESULT {"ok", "bytes", "sha256", "epipe"}."""

import errno
import hashlib
import json
import socket
import sys

ip, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((ip, port), timeout=30)
h, total = hashlib.sha256(), 0
sizes = [1, 7, 64, 1000, 70000, 300000, 3, 64, 5000]
for i in range(60):
    n = sizes[i % len(sizes)]
    chunk = bytes((i * 31 + j) & 0xFF for j in range(min(n, 256))) * (n // 256 + 1)
    chunk = chunk[:n]
    h.update(chunk)
    total += n
    if n >= 70000:
        s.sendall(chunk)
    else:
        mv = memoryview(chunk)
        while mv:
            mv = mv[s.send(mv):]
s.shutdown(socket.SHUT_WR)
try:
    s.send(b"late")
    epipe = "none"
except BrokenPipeError as e:
    epipe = errno.errorcode.get(e.errno, str(e.errno))
while s.recv(65536):
    pass
s.close()
print("RESULT " + json.dumps({"ok": True, "bytes": total, "sha256": h.hexdigest(), "epipe": epipe}), flush=True)
