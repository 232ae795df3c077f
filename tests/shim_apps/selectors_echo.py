"""selectors echo server mixing a TCP listener with a pipe; stdlib only.

A thread writes 5 lines into a pipe; the server echoes TCP clients and
collects the pipe lines; after PORT's N-th client closed it prints RESULT."""

import json
import os
import selectors
import socket
import sys
import threading
import time

port, nclients = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("", port))
lst.listen(16)
lst.setblocking(False)
rfd, wfd = os.pipe()
os.set_blocking(rfd, False)
sel.register(lst, selectors.EVENT_READ, "accept")
sel.register(rfd, selectors.EVENT_READ, "pipe")


def feeder():
    for i in range(5):
        os.write(wfd, f"line {i}\n".encode())
        time.sleep(0.05)


threading.Thread(target=feeder, daemon=True).start()
print("listening", port, flush=True)
pipe_data = b""
done = echoed = 0
pending = {}
deadline = time.monotonic() + 60
while (done < nclients or pipe_data.count(b"\n") < 5) and time.monotonic() < deadline:
    for key, ev in sel.select(1.0):
        if key.data == "accept":
            c, _ = lst.accept()
            c.setblocking(False)
            pending[c] = b""
            sel.register(c, selectors.EVENT_READ, "conn")
        elif key.data == "pipe":
            pipe_data += os.read(rfd, 4096)
        else:
            c = key.fileobj
            if ev & selectors.EVENT_READ:
                try:
                    d = c.recv(65536)
                except BlockingIOError:
                    continue
                if not d:
                    sel.unregister(c)
                    c.close()
                    done += 1
                    continue
                echoed += len(d)
                pending[c] += d
            if pending[c]:
                try:
                    n = c.send(pending[c])
                    pending[c] = pending[c][n:]
                except BlockingIOError:
                    pass
                sel.modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[c] else 0), "conn")
ok = done == nclients and pipe_data == b"".join(f"line {i}\n".encode() for i in range(5))
print(
    "RESULT " + json.dumps({"ok": ok, "clients": done, "echoed": echoed, "pipe": pipe_data.decode()}),
    flush=True,
)
sys.exit(0 if ok else 1)
