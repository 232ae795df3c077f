"""Error types through the shim (stdlib only; run under `tas run`).

errors.py PEER_IP CLOSED_PORT RST_PORT CLOSE_PORT IDLE_PORT: prints RESULT
with one entry per check: the exception class name seen."""

import errno
import json
import select
import socket
import sys
import time

ip = sys.argv[1]
closed_port, rst_port, close_port, idle_port = map(int, sys.argv[2:6])
res = {}


def name(e):
    return type(e).__name__ + (
        f":{errno.errorcode.get(e.errno, e.errno)}" if isinstance(e, OSError) and e.errno else ""
    )


# refused (blocking)
try:
    socket.create_connection((ip, closed_port), timeout=5)
    res["refused"] = "none"
except OSError as e:
    res["refused"] = name(e)

# non-blocking connect: EINPROGRESS, writable after the refusal, SO_ERROR
s = socket.socket()
s.setblocking(False)
res["nb_connect_ex"] = errno.errorcode.get(s.connect_ex((ip, closed_port)))
_, w, _ = select.select([], [s], [], 5)
res["nb_writable"] = bool(w)
res["so_error"] = errno.errorcode.get(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
s.close()

# non-blocking connect that succeeds: not writable before, writable after; EWOULDBLOCK on recv
s = socket.socket()
s.setblocking(False)
try:
    s.connect((ip, idle_port))
    res["nb_connect"] = "none"
except OSError as e:
    res["nb_connect"] = name(e)
_, w, _ = select.select([], [s], [], 5)
res["nb_connected_writable"] = bool(w) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
try:
    s.recv(10)
    res["nb_recv"] = "none"
except OSError as e:
    res["nb_recv"] = name(e)
r, _, _ = select.select([s], [], [], 0.2)
res["idle_not_readable"] = not r
# timeout
s.settimeout(0.3)
t = time.monotonic()
try:
    s.recv(10)
    res["timeout"] = "none"
except OSError as e:
    res["timeout"] = name(e)
res["timeout_waited"] = round(time.monotonic() - t, 1)
s.close()

# reset by peer: data first, then ConnectionResetError, then EOF/EPIPE
s = socket.create_connection((ip, rst_port), timeout=5)
s.sendall(b"hello")
got = b""
try:
    while True:
        d = s.recv(100)
        if not d:
            res["reset"] = "eof"
            break
        got += d
except OSError as e:
    res["reset"] = name(e)
res["reset_data"] = got.decode()
try:
    s.send(b"x")
    res["send_after_reset"] = "none"
except OSError as e:
    res["send_after_reset"] = name(e)
s.close()

# peer closed: sending eventually gives BrokenPipeError (or ConnectionResetError first)
s = socket.create_connection((ip, close_port), timeout=5)
res["peer_close_eof"] = s.recv(10) == b""
errs = []
for _ in range(200):
    try:
        s.send(b"y" * 1000)
    except OSError as e:
        errs.append(name(e))
        if isinstance(e, BrokenPipeError):
            break
    time.sleep(0.01)
res["send_after_close"] = errs
s.close()

# EADDRINUSE
a = socket.socket()
a.bind(("", 7777))
a.listen()
b = socket.socket()
try:
    b.bind(("", 7777))  # the kernel says EADDRINUSE at bind(), not listen()
    res["addrinuse"] = "none"
except OSError as e:
    res["addrinuse"] = name(e)
b.close()
# a bound-but-unused port is taken until closed, then free again
d = socket.socket()
d.bind(("", 7779))
e2 = socket.socket()
try:
    e2.bind(("", 7779))
    res["bound_port_taken"] = False
except OSError:
    res["bound_port_taken"] = True
e2.close()
d.close()
d = socket.socket()
d.bind(("", 7779))
d.close()
# ephemeral bind: the port is known right after bind()
c = socket.socket()
c.bind(("", 0))
eph = c.getsockname()[1]
c.listen()
res["ephemeral"] = eph > 0 and c.getsockname()[1] == eph
c.close()
a.close()
# accept on a non-blocking listener: EWOULDBLOCK
a = socket.create_server(("", 7778))
a.setblocking(False)
try:
    a.accept()
    res["nb_accept"] = "none"
except OSError as e:
    res["nb_accept"] = name(e)
a.close()
# loopback and UDP fall through to the kernel
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
res["udp_type"] = type(u).__name__
u.close()
print("RESULT " + json.dumps(res), flush=True)
