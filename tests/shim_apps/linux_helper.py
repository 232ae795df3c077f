"""Linux-side helper servers for the shim error/TLS tests (plain sockets).

rst PORT:   accept, read 5 bytes, send b"bye", close with SO_LINGER 0 (RST)
close PORT: accept, close at once (FIN), then the client's data gets RST
idle PORT:  accept, say nothing for 10 s
tls PORT CERT: TLS client... (see tls_client)
rst_client IP PORT N: a client resetting N connections after an echo
Each connection's peer address is printed as ``peer IP``."""

import json
import socket
import ssl
import struct
import sys
import time

mode, port = sys.argv[1], int(sys.argv[2])
if mode == "tls_client":
    # tls_client IP PORT CAFILE NBYTES: TLS to the shim server, send NBYTES, read them back
    ip, cafile, n = sys.argv[3], sys.argv[4], int(sys.argv[5])
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    with socket.create_connection((ip, port), timeout=20) as raw, ctx.wrap_socket(raw) as s:
        data = bytes(range(256)) * (n // 256)
        s.sendall(data)
        got = bytearray()
        while len(got) < len(data):
            d = s.recv(65536)
            if not d:
                break
            got += d
        out = {"ok": bytes(got) == data, "n": len(got), "version": s.version()}
        print("RESULT " + json.dumps(out), flush=True)
        sys.exit(0 if bytes(got) == data else 1)
if mode == "rst_client":
    # rst_client IP PORT N: N times connect, send 5 bytes, read them back, RST
    ip, n = sys.argv[3], int(sys.argv[4])
    ok = 0
    for _ in range(n):
        s = socket.create_connection((ip, port), timeout=20)
        s.sendall(b"hello")
        got = b""
        while len(got) < 5:
            d = s.recv(5 - len(got))
            if not d:
                break
            got += d
        ok += got == b"hello"
        time.sleep(0.02)  # (the server reads on: the RST reaches a waiting recv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    print("RESULT " + json.dumps({"ok": ok == n, "echoed": ok}), flush=True)
    sys.exit(0 if ok == n else 1)
lst = socket.create_server(("198.18.0.1", port), reuse_port=False)
print("listening", port, flush=True)
while True:
    c, a = lst.accept()
    print("peer", a[0], flush=True)
    if mode == "rst":
        c.recv(5)
        c.sendall(b"bye")
        time.sleep(0.2)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    elif mode == "close":
        c.close()
    elif mode == "idle":
        time.sleep(10)
        c.close()
