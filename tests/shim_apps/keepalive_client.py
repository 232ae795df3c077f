"""Under `tas run`: two connections to a Linux server, one with
SO_KEEPALIVE set before connect and one set after; prints their local
ports, then waits to be told to exit (stdin closes or 20 s)."""

import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
a = socket.socket()
a.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
a.connect((host, port))
b = socket.create_connection((host, port))
c = socket.create_connection((host, port))
c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
print("ports", a.getsockname()[1], b.getsockname()[1], c.getsockname()[1], flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    time.sleep(0.1)
