"""Keepalive (SO_KEEPALIVE, issue 4) with short timers: `tas start
--keepalive-idle 1 --keepalive-intvl 0.5 --keepalive-cnt 3`.

* A live Linux peer: the stack probes the idle connection (seq = SND.UNA - 1,
  no data), Linux answers, nothing is reset, and the connection still
  transfers byte-exactly afterwards.
* A dead peer (a spoofed-address endpoint that completes the handshake and
  then never answers): after idle + cnt x intvl the stack resets the flow
  (RST on the wire) and the app's recv raises ETIMEDOUT
  (libtas.api.KeepaliveTimeoutError: a ConnectionResetError and TimeoutError).
* Without keepalive nothing is probed.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from conftest import APPS_DIR, App
from rawtcp import ACK, RST, SYN, RawFlow, RawPort, stack_mac, tcp_from
from test_faults_util import PEER_IP, STACK_IP, FaultStack, check_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

KA = ["--keepalive-idle", "1", "--keepalive-intvl", "0.5", "--keepalive-cnt", "3"]
U32 = 0xFFFFFFFF


@pytest.fixture(scope="module")
def fs():
    with FaultStack(extra=KA) as s:
        yield s


def _linux_server(fs, port: int, script: str) -> App:
    argv = [
        sys.executable,
        str(APPS_DIR / "linux_peer.py"),
        "server",
        PEER_IP,
        str(port),
        "--script",
        script,
        "--timeout",
        "30",
    ]
    app = App(f"linux-server:{port}", fs.topo.ns_argv(fs.topo.peer_ns, argv), fs.workdir)
    fs.apps.append(app)
    app.wait_line("listening", 15)
    return app


def test_keepalive_probes_a_live_peer_and_keeps_the_flow(fs):
    port = 7420
    srv = _linux_server(fs, port, "recv_eof,close")
    sp0 = fs.stats()["slowpath"]
    with RawPort(fs.topo, stack_mac(fs.log())) as rp:
        app = fs.stack_py(
            "ka-live",
            f"""
            st = Stack(STATE); ctx = st.context()
            c = ctx.connect({PEER_IP!r}, {port}, timeout=10, keepalive=True)
            say("connected", c.local_address[1])
            time.sleep(3.2)   # idle: probes at ~1.0, 1.5, 2.0 ... answered each time
            h, n = hashlib.sha256(), 0
            for chunk in pattern_chunks(1 << 20, 42):
                mv = memoryview(chunk)
                while mv:
                    k = c.send(mv, timeout=10); h.update(mv[:k]); mv = mv[k:]; n += k
            c.close()
            say("RESULT " + json.dumps({{"ok": True, "tx_bytes": n, "tx_sha256": h.hexdigest()}}))
        """,
            ready="connected",
        )
        lport = int(app.wait_line("connected", 10).split()[1])
        res = app.result(30)
        segs = rp.find(tcp_from(STACK_IP, lport, PEER_IP, port))
    iss = next(r.seq for r in segs if r.flags & SYN)
    # before any data, SND.UNA - 1 is the ISS: a pure ACK there is a probe
    probes = [r for r in segs if r.flags == ACK and r.plen == 0 and r.seq == iss]
    check_transfer(res, srv.result(30), 1 << 20, 42)
    sp = fs.stats()["slowpath"]
    n_probes = sp["keepalive_probes"] - sp0["keepalive_probes"]
    print(
        f"\nkeepalive, live peer: {n_probes} probes in ~3.2 s idle, {len(probes)} seen on the wire as "
        f"seq = SND.UNA - 1"
    )
    assert n_probes >= 2
    assert probes, "no segment with seq = SND.UNA - 1 on the wire"
    assert sp["keepalive_timeouts"] == sp0["keepalive_timeouts"]


def test_keepalive_resets_a_dead_peer_with_etimedout(fs):
    port = 7421
    sp0 = fs.stats()["slowpath"]
    app = fs.stack_py(
        "ka-dead",
        f"""
        st = Stack(STATE); ctx = st.context()
        lst = ctx.listen({port}, keepalive=True)
        say("listening")
        c = lst.accept(timeout=10)
        t0 = time.monotonic()
        try:
            c.recv(100, timeout=20)
            say("RESULT " + json.dumps({{"ok": False, "error": "recv returned"}}))
        except TimeoutError as e:
            say("RESULT " + json.dumps({{"ok": True, "errno": e.errno, "reset": isinstance(e, ConnectionResetError),
                                        "after": round(time.monotonic() - t0, 2)}}))
    """,
        ready="listening",
    )
    with RawPort(fs.topo, stack_mac(fs.log())) as rp:
        fl = RawFlow(rp, "198.18.0.88", 40088, STACK_IP, port, isn=9000)
        sa = fl.connect()
        res = app.result(20)
        time.sleep(0.2)
        segs = rp.find(fl.from_stack)
    probes = [r for r in segs if r.flags == ACK and r.plen == 0 and r.seq == sa.seq]  # SND.UNA - 1 = ISS
    rsts = [r for r in segs if r.flags & RST]
    sp = fs.stats()["slowpath"]
    print(
        f"\nkeepalive, dead peer: reset after {res['after']} s, {len(probes)} probes on the wire, "
        f"errno {res['errno']}"
    )
    assert res["errno"] == 110 and res["reset"]
    assert len(probes) == 3
    assert rsts, "no RST sent when the keepalive gave up"
    assert 2.0 <= res["after"] <= 6.0
    assert sp["keepalive_timeouts"] == sp0["keepalive_timeouts"] + 1


def test_no_keepalive_no_probes(fs):
    port = 7422
    srv = _linux_server(fs, port, "recv_eof,close")
    sp0 = fs.stats()["slowpath"]
    app = fs.stack_py(
        "ka-off",
        f"""
        st = Stack(STATE); ctx = st.context()
        c = ctx.connect({PEER_IP!r}, {port}, timeout=10)
        time.sleep(2.0)
        c.close()
        say("RESULT " + json.dumps({{"ok": True, "tx_bytes": 0, "tx_sha256": hashlib.sha256().hexdigest()}}))
    """,
    )
    app.result(20)
    srv.result(20)
    assert fs.stats()["slowpath"]["keepalive_probes"] == sp0["keepalive_probes"]
