"""TLS echo server: ssl wrapping of a listening socket (the http.server
idiom), one thread per connection; stdlib only.  tls_echo.py CERT KEY PORT"""

import socket
import ssl
import sys
import threading

cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
lst = ctx.wrap_socket(socket.create_server(("", port)), server_side=True)
print("listening", port, flush=True)


def serve(c):
    with c:
        print("peer", c.getpeername()[0], c.version(), flush=True)
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)


while True:
    c, a = lst.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
