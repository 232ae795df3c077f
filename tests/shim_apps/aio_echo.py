"""asyncio echo, stdlib + optional uvloop, no TAS imports (runs under `tas run`
or on plain Linux).

server PORT [--loop L]: asyncio.start_server echo (prints ``listening PORT``)
client IP PORT [--loop L] [--conns N --msgs M]: N connections, M messages
each (streams, drain() backpressure), checks every echo, prints RESULT.
L: asyncio | uvloop-run | uvloop-install | uvloop-factory
"""

import argparse
import asyncio
import json
import sys
import time


async def handle(reader, writer):
    print("peer", writer.get_extra_info("peername")[0], flush=True)
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def server(port):
    srv = await asyncio.start_server(handle, "0.0.0.0", port)
    print(
        "listening", srv.sockets[0].getsockname()[1], type(asyncio.get_running_loop()).__module__, flush=True
    )
    async with srv:
        await srv.serve_forever()


async def one(ip, port, idx, msgs):
    reader, writer = await asyncio.open_connection(ip, port)
    bad = 0
    for i in range(msgs):
        msg = f"conn {idx} msg {i} ".encode() * (1 + (i % 50))
        writer.write(len(msg).to_bytes(4, "big") + msg)
        await writer.drain()
        hdr = await reader.readexactly(4)
        back = await reader.readexactly(int.from_bytes(hdr, "big"))
        bad += back != msg
    writer.write_eof()
    eof = await reader.read()
    writer.close()
    await writer.wait_closed()
    return msgs - bad, eof == b""


async def client(ip, port, conns, msgs):
    t = time.monotonic()
    res = await asyncio.wait_for(asyncio.gather(*(one(ip, port, i, msgs) for i in range(conns))), 60)
    ok = sum(r[0] for r in res)
    out = {
        "ok": ok == conns * msgs and all(r[1] for r in res),
        "echoed": ok,
        "eofs": sum(r[1] for r in res),
        "elapsed": time.monotonic() - t,
        "loop": type(asyncio.get_running_loop()).__module__,
    }
    print("RESULT " + json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


def run(coro, how):
    if how == "asyncio":
        return asyncio.run(coro)
    import uvloop

    if how == "uvloop-run":
        return uvloop.run(coro)
    if how == "uvloop-install":
        uvloop.install()
        return asyncio.run(coro)
    return (
        asyncio.run(coro, loop_factory=uvloop.new_event_loop)
        if sys.version_info >= (3, 12)
        else asyncio.Runner(loop_factory=uvloop.new_event_loop).run(coro)
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["server", "client"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--loop", default="asyncio")
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--msgs", type=int, default=100)
    a = ap.parse_args()
    if a.cmd == "server":
        return run(server(int(a.args[0])), a.loop)
    return run(client(a.args[0], int(a.args[1]), a.conns, a.msgs), a.loop)


if __name__ == "__main__":
    sys.exit(main())
