"""Under `tas run`: per-socket congestion control (TCP_CONGESTION) through
the shim.  Connects to a Linux server with the algorithm set before
connect, the stack's default, and one set on the connected socket; checks
ENOENT for unknown names; listens with one set on the listener and checks
that an accepted socket inherits it.  Prints what it saw as JSON lines."""

import errno
import json
import socket
import ssl
import sys
import time

host, port, lport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
CC = socket.TCP_CONGESTION


def name(s: socket.socket) -> str:
    return s.getsockopt(socket.IPPROTO_TCP, CC, 16).rstrip(b"\0").decode()


def enoent(s: socket.socket, value: bytes) -> bool:
    try:
        s.setsockopt(socket.IPPROTO_TCP, CC, value)
    except OSError as e:
        return e.errno == errno.ENOENT
    return False


a = socket.socket()
a.setsockopt(socket.IPPROTO_TCP, CC, b"cubic")
bad_before = enoent(a, b"bbr-nope")
a.connect((host, port))
b = socket.create_connection((host, port))
c = socket.create_connection((host, port))
c.setsockopt(socket.IPPROTO_TCP, CC, b"reno")
bad_after = enoent(c, b"vegas")
# an ssl-wrapped stack socket (the shim's SSLSocket class) takes it too
tctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
tctx.check_hostname = False
tctx.verify_mode = ssl.CERT_NONE
w = tctx.wrap_socket(socket.create_connection((host, port)), do_handshake_on_connect=False)
w.setsockopt(socket.IPPROTO_TCP, CC, b"reno")
bad_ssl = enoent(w, b"vegas")
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setsockopt(socket.IPPROTO_TCP, CC, b"dctcp")
ls.bind(("0.0.0.0", lport))
ls.listen(4)
out = {
    "a": name(a),
    "b": name(b),
    "c": name(c),
    "listener": name(ls),
    "bad_before": bad_before,
    "bad_after": bad_after,
    "ports": [a.getsockname()[1], b.getsockname()[1], c.getsockname()[1]],
    "int_form": a.getsockopt(socket.IPPROTO_TCP, CC),
    "ssl": name(w),
    "bad_ssl": bad_ssl,
}
print("conns " + json.dumps(out), flush=True)
ls.settimeout(20)
d, _ = ls.accept()
print("accepted " + json.dumps({"d": name(d)}), flush=True)
time.sleep(0.5)
