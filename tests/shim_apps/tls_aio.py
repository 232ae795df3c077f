"""asyncio.start_server TLS echo on uvloop; stdlib + uvloop.  tls_aio.py CERT KEY PORT"""

import asyncio
import ssl
import sys

import uvloop

cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)


async def handle(r, w):
    print("peer", w.get_extra_info("peername")[0], w.get_extra_info("ssl_object").version(), flush=True)
    while d := await r.read(65536):
        w.write(d)
        await w.drain()
    w.close()


async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", port, ssl=ctx)
    print("listening", port, flush=True)
    async with srv:
        await srv.serve_forever()


uvloop.run(main())
