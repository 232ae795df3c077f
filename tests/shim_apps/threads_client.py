"""One shim socket used from two threads, then close-and-exit; stdlib only.

threads_client.py IP ECHO_PORT SINK_PORT: a thread sendall()s 4 MiB then
shuts down writing while the main thread reads the echo to EOF; then 8 MiB
go to SINK_PORT, close() and exit at once (the shim must still deliver)."""

import hashlib
import json
import socket
import sys
import threading

ip, echo_port, sink_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytes(range(256)) * (4 * 4096)
s = socket.create_connection((ip, echo_port), timeout=30)


def writer():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)


t = threading.Thread(target=writer)
t.start()
h, n = hashlib.sha256(), 0
while True:
    d = s.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
t.join()
s.close()
ok = n == len(data) and h.hexdigest() == hashlib.sha256(data).hexdigest()
k = socket.create_connection((ip, sink_port), timeout=30)
k.sendall(bytes(range(256)) * (8 * 4096))
k.close()
print("RESULT " + json.dumps({"ok": ok, "echoed": n}), flush=True)
