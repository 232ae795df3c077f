"""socketserver.ThreadingTCPServer (or ForkingTCPServer) echo; stdlib only."""

import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)


cls = socketserver.ForkingTCPServer if sys.argv[2:] == ["fork"] else socketserver.ThreadingTCPServer
cls.allow_reuse_address = True
with cls(("", int(sys.argv[1])), Echo) as srv:
    print("listening", srv.server_address[1], cls.__name__, flush=True)
    srv.serve_forever()
