"""Interop: the stack (tas start + native-API apps) against Linux TCP/ICMP.

Needs root (network namespaces, TAP); CI runs it as root.  Run with
``pytest -s tests/test_interop.py`` to see timings and retransmission counts.
Fixtures and the app runners are in tests/conftest.py; the apps in
tests/apps/ (tas_app.py: native API in the stack namespace; linux_peer.py:
Linux sockets / scapy in the peer namespace; steps.py: the step scripts both
run, e.g. ``send,shut_wr,recv_eof,close``, and the data pattern).

Every transfer compares sha256 and byte counts on both ends with the
pattern's expected digest.  The tests share one running stack and run in
file order; the last one checks that no flow was left open.
"""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
from conftest import APPS_DIR

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="interop tests need root (network namespaces, TAP devices)"),
]

_spec = importlib.util.spec_from_file_location("interop_steps", APPS_DIR / "steps.py")
steps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(steps)

PEER_IP = "198.18.0.1"
STACK_IP = "198.18.0.2"
MiB = 1 << 20

# one port per test: no interference through TIME-WAIT or late segments
ECHO_PORT = 7
BULK_IN_PORT = 5001
BULK_OUT_PORT = 5002
HALF_A_PORT = 5003
HALF_B_PORT = 5004
ABORT_PORT = 5005
LINGER_PORT = 5006
LOSS_IN_PORT = 5007
LOSS_OUT_PORT = 5008
LAST_ACK_PORT = 5009
CLOSE_EXIT_PORT = 5010
RR_PORT = 5011
CLOSED_PORT = 5999
LINUX_SRV_PORT = 6001
LINUX_CLOSED_PORT = 6002


def _check_transfer(sender: dict, receiver: dict, nbytes: int, seed: int) -> None:
    want = steps.pattern_sha256(nbytes, seed)
    assert sender["tx_bytes"] == nbytes
    assert sender["tx_sha256"] == want
    assert receiver["rx_bytes"] == nbytes, f"received {receiver['rx_bytes']} of {nbytes} bytes"
    assert receiver["rx_sha256"] == want, "received bytes differ from the sent bytes"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB:.0f} MiB in {seconds:.2f} s ({nbytes / MiB / max(seconds, 1e-9):.1f} MiB/s)"


# -- ICMP ---------------------------------------------------------------------------------------


def test_ping(tas):
    r = tas.topo.run(
        tas.topo.peer_ns, ["ping", "-c", "3", "-W", "2", STACK_IP], capture_output=True, text=True, timeout=20
    )
    assert r.returncode == 0, f"ping failed:\n{r.stdout}\n{r.stderr}"
    assert " 0% packet loss" in r.stdout, r.stdout


# -- echo server ----------------------------------------------------------------------------------


def test_echo_one_connection(tas):
    tas.echo_server(ECHO_PORT)
    res = tas.peer("echo", STACK_IP, ECHO_PORT, conns=1, bytes=4 * MiB, seed=1, timeout=30).result(40)
    assert res["mismatched"] == [] and res["eofs"] == 1
    print(f"\necho, 1 connection: {_rate(4 * MiB, res['elapsed'])} each way")


def test_echo_100_concurrent_connections(tas):
    tas.echo_server(ECHO_PORT)
    res = tas.peer("echo", STACK_IP, ECHO_PORT, conns=100, bytes=64 << 10, seed=100, timeout=40).result(50)
    assert res["conns"] == 100
    assert res["mismatched"] == [], f"connections that got different bytes back: {res['mismatched']}"
    assert res["eofs"] == 100
    print(f"\necho, 100 concurrent connections x 64 KiB: {res['elapsed']:.2f} s")


def test_request_response_acks_ride_on_the_replies(tas):
    """300 closed-loop 64 B exchanges with the echo server: every request is
    a lone segment, so the fast path holds its ACK (docs/ARCHITECTURE.md
    "Delayed ACK") and the reply carries it; a pure ACK goes out only when
    the delay ran out (``delacks_sent``) or for the handshake and close."""
    tas.echo_server(RR_PORT)
    before = tas.stats()["cores"][0]
    n = 300
    c = tas.peer("client", STACK_IP, RR_PORT, script=f"rr:{n}:64,close", seed=41, timeout=30).result(40)
    assert c["ok"], c["error"]
    assert c["tx_bytes"] == c["rx_bytes"] == n * 64
    assert c["rx_sha256"] == c["tx_sha256"] == steps.pattern_sha256(n * 64, 41)
    after = tas.stats()["cores"][0]
    d = {k: after[k] - before[k] for k in ("acks_sent", "acks_delayed", "delacks_sent")}
    assert d["acks_delayed"] >= n, d
    # besides the ones sent after the delay: handshake and close only
    assert d["acks_sent"] - d["delacks_sent"] <= 10, d
    print(f"\nrr {n} x 64 B: pure ACKs {d['acks_sent']}, of them after the delay {d['delacks_sent']}")


# -- bulk transfers ---------------------------------------------------------------------------------


def test_bulk_linux_to_stack_64mib(tas):
    n, seed = 64 * MiB, 11
    app = tas.stack_app(listen=BULK_IN_PORT, script="recv_eof,close", timeout=60, ready="listening")
    cli = tas.peer("client", STACK_IP, BULK_IN_PORT, script="send,close", send_bytes=n, seed=seed, timeout=60)
    rx = app.result(70)
    tx = cli.result(10)
    _check_transfer(tx, rx, n, seed)
    print(f"\nLinux -> stack app: {_rate(n, rx['elapsed'])}")


def test_bulk_stack_to_linux_64mib(tas):
    """The app closes only after Linux's FIN (a lingering close): an app that
    closes and exits at once can lose its unsent tail, see
    test_stack_app_close_then_exit_delivers_everything."""
    n, seed = 64 * MiB, 12
    app = tas.stack_app(
        listen=BULK_OUT_PORT,
        script="send,shut_wr,recv_eof,close",
        send_bytes=n,
        seed=seed,
        timeout=60,
        ready="listening",
    )
    cli = tas.peer("client", STACK_IP, BULK_OUT_PORT, script="recv_eof,close", timeout=60)
    rx = cli.result(70)
    tx = app.result(10)
    _check_transfer(tx, rx, n, seed)
    print(f"\nstack app -> Linux: {_rate(n, rx['elapsed'])}")


# -- the stack as a client ----------------------------------------------------------------------------


def test_stack_client_to_linux_server(tas):
    n_up, n_down = 2 * MiB + 123, 3 * MiB + 7
    srv = tas.peer(
        "server",
        PEER_IP,
        LINUX_SRV_PORT,
        script=f"recv:{n_up},send,close",
        send_bytes=n_down,
        seed=22,
        timeout=30,
        ready="listening",
    )
    app = tas.stack_app(
        connect=f"{PEER_IP}:{LINUX_SRV_PORT}",
        script="send,recv_eof,close",
        send_bytes=n_up,
        seed=21,
        timeout=30,
    )
    a = app.result(40)
    s = srv.result(10)
    _check_transfer(a, s, n_up, 21)
    _check_transfer(s, a, n_down, 22)
    assert a["eof"]


def test_stack_connect_to_closed_linux_port_refused(tas):
    res = tas.stack_app(connect=f"{PEER_IP}:{LINUX_CLOSED_PORT}", expect_refused=True, timeout=10).result(20)
    assert res["refused"]
    assert res["elapsed"] < 5, f"refusal took {res['elapsed']} s"


# -- half-close -----------------------------------------------------------------------------------------


def test_half_close_linux_shuts_write_first(tas):
    """Linux sends, SHUT_WR; the app reads to EOF, then replies and closes;
    Linux gets the whole reply, then EOF.  The app keeps its context for a
    second after close(): exiting at once can reset the flow before the FIN
    is out (see test_stack_app_close_then_exit_delivers_everything)."""
    n_req, n_rep = 1 * MiB + 5, 2 * MiB + 3
    app = tas.stack_app(
        listen=HALF_A_PORT,
        script="recv_eof,send,close,sleep:1",
        send_bytes=n_rep,
        seed=32,
        timeout=30,
        ready="listening",
    )
    cli = tas.peer(
        "client",
        STACK_IP,
        HALF_A_PORT,
        script="send,shut_wr,recv_eof,close",
        send_bytes=n_req,
        seed=31,
        timeout=30,
    )
    c = cli.result(40)
    a = app.result(10)
    _check_transfer(c, a, n_req, 31)
    _check_transfer(a, c, n_rep, 32)
    assert a["eof"] and c["eof"]


def test_half_close_stack_shuts_write_first(tas):
    """The app sends, SHUT_WR; Linux reads EOF, then still sends and closes;
    the app receives all of it, then EOF.  (Regression: pure ACKs sent after
    our FIN was acknowledged carried SND.NXT - 1, so Linux dropped them and
    stalled after ~16 KB.)"""
    n_app, n_linux = 1 * MiB + 9, 2 * MiB + 1
    app = tas.stack_app(
        listen=HALF_B_PORT,
        script="send,shut_wr,recv_eof,close",
        send_bytes=n_app,
        seed=41,
        timeout=30,
        ready="listening",
    )
    cli = tas.peer(
        "client", STACK_IP, HALF_B_PORT, script="recv_eof,send,close", send_bytes=n_linux, seed=42, timeout=30
    )
    c = cli.result(40)
    a = app.result(10)
    _check_transfer(a, c, n_app, 41)
    _check_transfer(c, a, n_linux, 42)
    assert a["eof"] and c["eof"]


# -- closing ----------------------------------------------------------------------------------------------


def test_stack_active_close_peer_leaves_last_ack(tas):
    """The stack closes first (a bare FIN after all data was acked), Linux
    reads EOF and closes (LAST-ACK); the stack's ACK of Linux's FIN must be
    acceptable so Linux's socket finishes.  The app stays alive meanwhile (an
    exiting app resets its flows, see the next test).  (Regression: that ACK
    carried SND.NXT - 1 and Linux stayed in LAST-ACK, retransmitting its FIN.)"""
    app = tas.stack_app(
        listen=LAST_ACK_PORT,
        script="send,sleep:0.5,close,sleep:4",
        send_bytes=65536,
        seed=71,
        timeout=15,
        ready="listening",
    )
    cli = tas.peer("client", STACK_IP, LAST_ACK_PORT, script="recv_eof,close", timeout=10)
    port = str(cli.result(15)["local_port"])
    deadline = time.monotonic() + 2
    while True:
        r = tas.topo.run(
            tas.topo.peer_ns, ["ss", "-Htan", "state", "last-ack"], capture_output=True, text=True, timeout=10
        )
        lingering = [
            ln for ln in r.stdout.splitlines() if ln.split()[2:3] and ln.split()[2].endswith(":" + port)
        ]
        if not lingering or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    app.result(10)
    assert not lingering, f"Linux socket still in LAST-ACK 2 s after its close(): {lingering}"


def test_stack_app_close_then_exit_delivers_everything(tas):
    """sendall(); close(); exit — with a slow Linux reader, so data is still
    buffered in the stack when the app's context goes away."""
    n, seed = 1 * MiB, 61
    app = tas.stack_app(
        listen=CLOSE_EXIT_PORT, script="send,close", send_bytes=n, seed=seed, timeout=20, ready="listening"
    )
    cli = tas.peer(
        "client",
        STACK_IP,
        CLOSE_EXIT_PORT,
        rcvbuf=16384,
        script="sleep:0.3,recv_eof_paced:16384:0.01,close",
        timeout=20,
    )
    tx = app.result(25)
    rx = cli.result(25)
    _check_transfer(tx, rx, n, seed)


# -- resets -------------------------------------------------------------------------------------------------


def test_stack_abort_resets_linux(tas):
    app = tas.stack_app(listen=ABORT_PORT, script="recv:5,abort", timeout=20, ready="listening")
    cli = tas.peer("client", STACK_IP, ABORT_PORT, script="send,expect_reset", send_bytes=5, timeout=15)
    c = cli.result(25)
    app.result(10)
    assert c["reset"] and c["rx_bytes"] == 0, c


def test_linux_linger0_close_resets_stack_app(tas):
    """Linux sends 5 bytes, waits for a 2-byte answer, then closes with
    SO_LINGER 0 (RST); the app's next recv raises ConnectionResetError."""
    app = tas.stack_app(
        listen=LINGER_PORT, script="recv:5,send,expect_reset", send_bytes=2, timeout=20, ready="listening"
    )
    cli = tas.peer("client", STACK_IP, LINGER_PORT, script="send,recv:2,abort", send_bytes=5, timeout=15)
    cli.result(25)
    a = app.result(25)
    assert a["reset"] and a["rx_bytes"] == 5, a


# -- closed ports --------------------------------------------------------------------------------------------


def test_syn_to_closed_port_gets_rst_ack(tas):
    res = tas.peer("synprobe", STACK_IP, CLOSED_PORT, timeout=15).result(40)
    assert res["src"] == STACK_IP
    assert (res["ans_sport"], res["ans_dport"]) == (CLOSED_PORT, res["sport"])
    assert res["flags_int"] & 0x3F == 0x14, f"answer flags {res['flags']}, expected RA: {res['summary']}"
    assert res["ack"] == (res["syn_seq"] + 1) % (1 << 32)


def test_linux_connect_to_closed_port_refused(tas):
    res = tas.peer("refused", STACK_IP, CLOSED_PORT, timeout=10).result(20)
    assert res["refused"]
    assert res["elapsed"] < 2, f"refusal took {res['elapsed']} s"


# -- loss -----------------------------------------------------------------------------------------------------


@pytest.fixture
def lossy_link(tas):
    tas.topo.add_loss(1)
    try:
        yield tas
    finally:
        tas.topo.clear_loss()


def _rexmit(st: dict) -> dict:
    sp = st.get("slowpath", {})
    cores = st.get("cores", [])
    return {
        "retransmissions": st.get("retransmissions"),
        "rexmit_fast": sum(c.get("rexmit_fast", 0) for c in cores),
        "rto_fired": sp.get("rto_fired"),
        "ooo_segs": sum(c.get("ooo_segs", 0) for c in cores),
        "ooo_dropped": sum(c.get("ooo_dropped", 0) for c in cores),
        "dup_segs": sum(c.get("dup_segs", 0) for c in cores),
    }


def _linux_retrans(tas) -> int:
    """Tcp RetransSegs of the peer namespace (Linux's own retransmissions)."""
    r = tas.topo.run(tas.topo.peer_ns, ["cat", "/proc/net/snmp"], capture_output=True, text=True, timeout=10)
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def _delta(after: dict, before: dict) -> dict:
    return {
        k: v - before[k] if isinstance(v, int) and isinstance(before[k], int) else v for k, v in after.items()
    }


@pytest.mark.parametrize("direction", ["linux_to_stack", "stack_to_linux"])
def test_16mib_with_1pct_loss(lossy_link, direction):
    tas = lossy_link
    n = 16 * MiB
    before, linux_before = _rexmit(tas.stats()), _linux_retrans(tas)
    t0 = time.monotonic()
    if direction == "linux_to_stack":
        seed = 50
        app = tas.stack_app(listen=LOSS_IN_PORT, script="recv_eof,close", timeout=120, ready="listening")
        cli = tas.peer(
            "client", STACK_IP, LOSS_IN_PORT, script="send,close", send_bytes=n, seed=seed, timeout=120
        )
        rx, tx = app.result(130), cli.result(10)
    else:
        seed = 51  # lingering close, as in test_bulk_stack_to_linux_64mib
        app = tas.stack_app(
            listen=LOSS_OUT_PORT,
            script="send,shut_wr,recv_eof,close",
            send_bytes=n,
            seed=seed,
            timeout=120,
            ready="listening",
        )
        cli = tas.peer("client", STACK_IP, LOSS_OUT_PORT, script="recv_eof,close", timeout=120)
        rx, tx = cli.result(130), app.result(10)
    elapsed = time.monotonic() - t0
    _check_transfer(tx, rx, n, seed)
    counts = _delta(_rexmit(tas.stats()), before)
    print(
        f"\n1% loss, {direction}: {_rate(n, elapsed)}; stack counters during the transfer: {counts}; "
        f"Linux RetransSegs: {_linux_retrans(tas) - linux_before}"
    )


# -- last: nothing left behind ---------------------------------------------------------------------------------


def test_zz_no_open_flows_left(tas):
    """Runs last (file order): every app has exited; the stack must have
    released every flow (flows_open == 0 within ~2 s)."""
    deadline = time.monotonic() + 2.5
    while True:
        st = tas.stats()
        if st["flows_open"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert st["flows_open"] == 0, f"flows still open: {st['flows_open']}\n{tas.flows()}"
    assert st["flows_connecting"] == 0
    assert st["listeners"] == 0
    print(
        f"\nfinal: flows_open={st['flows_open']} time_wait={st['time_wait']} "
        f"retransmissions={st['retransmissions']} segments_in={st['segments_in']} "
        f"segments_out={st['segments_out']}"
    )
