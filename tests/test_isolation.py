"""Isolation between applications (issue 6): per-app limits on flows, flow
buffer memory and SYN backlog (`tas start --app-max-flows/--app-max-buf-mb/
--app-syn-backlog`, lowered per app at registration).

One stack, three apps:

* a **hostile** app registers, then floods: connects to a Linux server that
  never reads until the stack refuses (EMFILE at its flow limit, ENOBUFS
  past its buffer memory, each with a message naming the limit), fills
  every send buffer, never reads anything, listens and never accepts (Linux
  clients connecting to it get ECONNREFUSED);
* a **victim** echo server (another app) keeps echoing byte-exactly to Linux
  clients, and a victim client app opens 40 flows and sends 4 MiB to a Linux sink (sha256 checked) — all while the
  hostile app holds everything it could get;
* a third app lowers its SYN backlog at registration (asking for more than
  the stack allows is EPERM); spoofed SYNs to two of its listeners: the
  backlog is shared between them (the rest get SYN cookies).

`tas stats` shows the limits and the hits per app; the hostile app's memory
never exceeds its limit and is released when it exits.  Needs root.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from rawtcp import RawPort, raw_frames_reach_stack, stack_mac, syn_frame
from test_faults_util import FaultStack, check_transfer, wait_for

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TAP)"),
]

APP_FLOWS = 64
APP_BUF_MB = 4
APP_SYN = 8
BUF = 65536
FLOW_BYTES = 64 + BUF + BUF  # appflow block + rx + tx (buddy blocks)
SMALL_FLOW = 64 + 4096 + 4096
N_BIG = 16
VICTIM_FLOWS = 40  # besides its transfer: the stack has room for them while the hostile app is at its limits

# Linux, peer namespace: accepts everything on 7700 and never reads; reads
# and hashes everything on 7701 (one connection).
PEER = """
import selectors
hold = socket.socket(); hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
hold.bind(("198.18.0.1", 7700)); hold.listen(1024); hold.setblocking(False)
sink = socket.socket(); sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sink.bind(("198.18.0.1", 7701)); sink.listen(8)
say("listening")
held = []
sel = selectors.DefaultSelector(); sel.register(hold, selectors.EVENT_READ, "hold")
sel.register(sink, selectors.EVENT_READ, "sink")
end = time.monotonic() + 120
while time.monotonic() < end:
    for key, _ in sel.select(0.5):
        if key.data == "hold":
            try:
                while True:
                    c, _ = hold.accept(); c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096); held.append(c)
            except BlockingIOError:
                pass
        else:
            c, _ = sink.accept(); c.settimeout(60)
            h, n = hashlib.sha256(), 0
            while True:
                b = c.recv(1 << 18)
                if not b:
                    break
                h.update(b); n += len(b)
            c.close()
            say("RESULT " + json.dumps({"ok": True, "rx_bytes": n, "rx_sha256": h.hexdigest(), "held": len(held)}))
"""

HOSTILE = """
out = {"ok": True}
try:
    Stack(STATE, max_flows=10 ** 6)
    out["ask_more"] = "accepted"
except OSError as e:
    out["ask_more"] = [errno.errorcode[e.errno], str(e)]
st = Stack(STATE)
out["limits"] = st.limits
ctx = st.context()
big = b"x" * (1 << 20)
conns = []

def flood(rx, tx, n):
    for _ in range(n):
        try:
            c = ctx.connect("198.18.0.1", 7700, timeout=10, rx_buf=rx, tx_buf=tx)
        except OSError as e:
            return [errno.errorcode[e.errno], str(e)]
        conns.append(c)
        try:
            c.send(big, timeout=0)  # huge sends: as much as the buffer takes, never more
        except BlockingIOError:
            pass
    return None

out["big_err"], out["big_flows"] = flood(0, 0, {n_big}), len(conns)
out["small_err"] = flood(4096, 4096, 1000)  # until the flow limit
conns.pop().abort()
out["huge_err"] = flood(1 << 20, 1 << 20, 1)  # 2 MiB of buffers: past the memory limit
out["refill_err"] = flood(4096, 4096, 1)
out["flows"] = len(conns)
lst = ctx.listen(7702, backlog=4096)  # never accepted
say("RESULT " + json.dumps(out))
time.sleep(120)  # holds everything, reads nothing, until the test stops it
"""

VICTIM_CLIENT = """
st = Stack(STATE); ctx = st.context()
extra = [ctx.connect("198.18.0.1", 7700, timeout=10, rx_buf=4096, tx_buf=4096) for _ in range({n})]
c = ctx.connect("198.18.0.1", 7701, timeout=10)
h, n = hashlib.sha256(), 0
for chunk in pattern_chunks({nbytes}, {seed}):
    c.sendall(chunk, timeout=60); h.update(chunk); n += len(chunk)
c.close()
say("RESULT " + json.dumps({{"ok": True, "tx_bytes": n, "tx_sha256": h.hexdigest(), "extra": len(extra)}}))
time.sleep(60)
"""

LISTENER = """
try:
    Stack(STATE, syn_backlog=10 ** 6)
    more = "accepted"
except PermissionError as e:
    more = str(e)
st = Stack(STATE, syn_backlog=4, max_flows=16)
ctx = st.context()
a, b = ctx.listen(7710, backlog=128), ctx.listen(7711, backlog=128)
say("RESULT " + json.dumps({"ok": True, "limits": st.limits, "ask_more": more}))
time.sleep(60)
"""


def _line_result(app, timeout: float) -> dict:
    """The RESULT {json} line of an app that keeps running afterwards."""
    import json

    return json.loads(app.wait_line("RESULT ", timeout)[len("RESULT "):])


def _per_app(st: dict, pid: int) -> dict:
    return next(a for a in st["control"]["per_app"] if a["pid"] == pid)


def test_flooding_app_hits_its_limits_others_unaffected():
    t0 = time.monotonic()
    args = ["--rx-buf", str(BUF), "--tx-buf", str(BUF), "--app-max-flows", str(APP_FLOWS),
            "--app-max-buf-mb", str(APP_BUF_MB), "--app-syn-backlog", str(APP_SYN)]
    with FaultStack(args) as fs:
        peer = fs.peer_py("linux-peer", PEER, ready="listening")
        echo = fs.stack_py("victim-echo", """
            from libtas.echo import EchoServer
            srv = EchoServer(7, STATE)
            say("listening")
            end = time.monotonic() + 120
            while time.monotonic() < end:
                srv.serve_once(0.2)
        """, ready="listening")
        hostile = fs.stack_py("hostile", HOSTILE.replace("{n_big}", str(N_BIG)))
        h = _line_result(hostile, 60)
        # registration: asking for more than the stack allows is refused with a clear error
        assert h["ask_more"][0] == "EPERM" and "--app-max-flows" in h["ask_more"][1], h
        assert h["limits"] == {"max_flows": APP_FLOWS, "max_buf_bytes": APP_BUF_MB << 20, "syn_backlog": APP_SYN}
        # the flow count (after 16 flows with 64 KiB buffers, 4 KiB ones), then buffer memory
        assert h["big_err"] is None and h["big_flows"] == N_BIG, h
        assert h["small_err"][0] == "EMFILE" and "per-app flow limit" in h["small_err"][1], h
        assert h["huge_err"][0] == "ENOBUFS" and "per-app buffer memory limit" in h["huge_err"][1], h
        assert h["refill_err"] is None and h["flows"] == APP_FLOWS, h

        # the hostile app's listener: Linux clients are refused at once (it is at its flow limit)
        refused = [fs.linux_peer("refused", 7702, name=f"refused{i}") for i in range(3)]
        for r in refused:
            assert r.result(20)["refused"]

        # meanwhile the others work: echo byte-exact, a client opening 40 more
        # flows and sending 4 MiB to a sink intact
        cli = fs.linux_peer("echo", 7, name="echo-client", conns=4, bytes=1 << 20, timeout=60)
        victim = fs.stack_py("victim-client", VICTIM_CLIENT.format(n=VICTIM_FLOWS, nbytes=4 << 20, seed=66))
        vres = _line_result(victim, 90)
        check_transfer(vres, _line_result(peer, 90), 4 << 20, 66)
        assert vres["extra"] == VICTIM_FLOWS
        assert cli.result(90)["ok"]

        st = fs.stats()
        hp, ep, vp = _per_app(st, hostile.pid), _per_app(st, echo.pid), _per_app(st, victim.pid)
        assert hp["flows"] == APP_FLOWS and hp["heap_used"] <= APP_BUF_MB << 20
        assert hp["buf_used"] == hp["heap_used"] == N_BIG * FLOW_BYTES + (APP_FLOWS - N_BIG) * SMALL_FLOW
        assert hp["limit_hits"]["buf"] >= 1 and hp["limit_hits"]["flows"] >= 1 + len(refused), hp
        assert ep["limit_hits"] == vp["limit_hits"] == {"flows": 0, "buf": 0, "syn": 0}
        ctl = st["control"]
        assert ctl["app_limit_flows"] >= 1 + len(refused) and ctl["app_limit_buf"] >= 1
        assert st["slowpath"]["conns_refused_limit"] >= len(refused)

        # the SYN backlog: lowered at registration, shared by the app's listeners
        lapp = fs.stack_py("listener", LISTENER)
        lres = _line_result(lapp, 20)
        assert lres["limits"] == {"max_flows": 16, "max_buf_bytes": APP_BUF_MB << 20, "syn_backlog": 4}
        assert "--app-syn-backlog" in lres["ask_more"]
        cookies0 = st["slowpath"]["syncookies_sent"]
        rng = random.Random(6)
        with raw_frames_reach_stack(fs.topo), RawPort(fs.topo, stack_mac(fs.log())) as rp:
            for port in (7710, 7711):
                for i in range(6):
                    rp.send(syn_frame(rp.mac, rp.stack_mac_b, f"198.18.0.{rng.randrange(20, 250)}",
                                      "198.18.0.2", 20000 + 100 * i + port % 10, port, rng.randrange(1 << 32)))
            wait_for(lambda: fs.stats()["slowpath"]["syncookies_sent"] - cookies0 >= 8, 10, "SYN cookies")
        st2 = fs.stats()
        lp = _per_app(st2, lapp.pid)
        assert st2["half_open"] == 4, st2["half_open"]  # 4 on the first listener, none on the second
        assert st2["slowpath"]["syncookies_sent"] - cookies0 == 8
        assert lp["limit_hits"]["syn"] == 6, lp  # the second listener's SYNs: the app's backlog was full

        # the hostile app goes: everything it held is released, the others unaffected
        hostile.stop()
        wait_for(lambda: not any(a["pid"] == hostile.pid for a in fs.stats()["control"]["per_app"]), 20,
                 "the hostile app to be gone")
        st3 = fs.stats()
        assert st3["control"]["heap_used"] == sum(a["heap_used"] for a in st3["control"]["per_app"])
        assert _per_app(st3, victim.pid)["flows"] == VICTIM_FLOWS  # the victim's flows untouched
        for app in (victim, echo, lapp, peer):
            app.stop()
        wait_for(lambda: fs.stats()["control"]["heap_used"] == 0, 30, "all buffer memory released")
        assert fs.stop() == 0
    print(f"\nisolation test: {time.monotonic() - t0:.1f} s")
