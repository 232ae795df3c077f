"""Faults (issue 8): an app dies with open flows, a fast path is killed, the
slow path is killed.  Each against a Linux peer in namespaces, asserting
what users rely on: sha256 of the data that must arrive, the error the app
or the peer sees (and how soon), counters back to zero, no fds, memfds or
processes left behind.  See docs/FAULTS.md for the behaviour.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from test_faults_util import (
    FaultStack,
    check_transfer,
    fd_count,
    memfds,
    pattern_sha256,
    tas_shm_leftovers,
    wait_for,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TAP)"),
]

MiB = 1 << 20
VICTIM_BYTES = 2 * MiB
VICTIM_SEED = 7


@pytest.fixture(scope="module")
def fs():
    with FaultStack() as s:
        yield s


def _settled(fs: FaultStack) -> dict:
    """Wait until the stack holds no app (but the `tas stats` asking),
    context, flow or buffer."""
    def idle():
        st = fs.stats()
        c = st["control"]
        if st["flows_open"] == 0 and st["flows_connecting"] == 0 and c["apps"] == 1 \
                and c["contexts"] == 0 and c["heap_used"] == 0:
            return st
        return None

    return wait_for(idle, 10, "the stack to hold no apps, contexts, flows or buffers")


VICTIM = """
MODE, PORT = {mode!r}, {port}
st = Stack(STATE)
ctx = st.context()
lst = ctx.listen(PORT, reuseaddr=True)
say("listening")
conns = {{}}
for _ in range(2):
    c = lst.accept(timeout=15)
    conns[c.recv(1, timeout=10)] = c
ca, cb = conns[b"A"], conns[b"B"]
cb.sendall(b"b" * 1000, timeout=10)
for chunk in pattern_chunks({nbytes}, {seed}):
    ca.sendall(chunk, timeout=30)
ca.close()  # graceful: FIN once the data is out
say("pid", os.getpid(), "ctx", ctx.ctx_id)
say("dying", time.monotonic())
if MODE == "exit":
    sys.exit(0)
elif MODE == "exception":
    raise RuntimeError("the app crashed")
os.kill(os.getpid(), 9)
"""

VICTIM_PEER = """
import threading
IP, PORT = {ip!r}, {port}
a = socket.create_connection((IP, PORT), timeout=15); a.sendall(b"A")
b = socket.create_connection((IP, PORT), timeout=15); b.sendall(b"B")
say("connected")
res = {{"a_bytes": 0, "a_eof": False}}
def read_a():
    h = hashlib.sha256()
    a.settimeout(30)
    try:
        while True:
            d = a.recv(262144)
            if not d:
                res["a_eof"] = True
                break
            h.update(d); res["a_bytes"] += len(d)
    except OSError as e:
        res["a_error"] = type(e).__name__
    res["a_sha256"] = h.hexdigest()
t = threading.Thread(target=read_a); t.start()
b.settimeout(30)
got = 0
try:
    while True:
        d = b.recv(65536)
        if not d:
            res["b"] = "eof"; break
        got += len(d)
except ConnectionResetError:
    res["b"] = "reset"
except OSError as e:
    res["b"] = type(e).__name__
res["b_time"] = time.monotonic()
res["b_bytes"] = got
t.join(40)
res["ok"] = True
print("RESULT " + json.dumps(res), flush=True)
"""


@pytest.mark.parametrize("mode", ["exit", "exception", "kill9"])
def test_app_death_resets_open_flows_finishes_closed_ones_frees_everything(fs, mode):
    """An app with one cleanly closed flow (2 MiB still being delivered) and
    one open flow dies: within 1 s the peer of the open flow gets a RST, the
    closed flow's data arrives whole with a FIN, the stack forgets the app
    (stats, fds, memfds back to what they were), and another app's transfer
    running meanwhile is intact."""
    base = _settled(fs)
    fp = fs.fp_pids()[0]
    sp_fds, fp_fds, sp_memfds = fd_count(fs.pid), fd_count(fp), memfds(fs.pid)
    port = {"exit": 7101, "exception": 7102, "kill9": 7103}[mode]
    by_port = port + 100
    # a bystander: Linux -> another app, slowed by the app so it spans the death
    by_n, by_seed = 16 * MiB, 31
    by = fs.tas_app(f"bystander-{mode}", listen=by_port, script="recv_eof_paced:65536:0.01,close", timeout=60,
                    ready="listening")
    by_cli = fs.linux_peer("client", by_port, name=f"by-client-{mode}", script="send,close", send_bytes=by_n,
                           seed=by_seed, timeout=60)
    victim = fs.stack_py(f"victim-{mode}", VICTIM.format(mode=mode, port=port, nbytes=VICTIM_BYTES,
                                                          seed=VICTIM_SEED), ready="listening")
    peer = fs.peer_py(f"victim-peer-{mode}", VICTIM_PEER.format(ip="198.18.0.2", port=port))
    died_at = float(victim.wait_line("dying", 30).split()[1])
    victim.wait(10)
    res = peer.result(45)
    # the open flow: reset, promptly
    assert res["b"] == "reset", res
    assert res["b_time"] - died_at < 1.0, f"RST {res['b_time'] - died_at:.2f} s after the app died"
    # the flow the app had closed: every byte, then EOF
    assert res["a_eof"] and res["a_bytes"] == VICTIM_BYTES, res
    assert res["a_sha256"] == pattern_sha256(VICTIM_BYTES, VICTIM_SEED)
    # the stack forgot the app within a second or two
    vpid = int(victim.wait_line("pid", 1).split()[1])
    wait_for(lambda: all(a["pid"] != vpid for a in fs.stats()["control"]["per_app"]), 2,
             "the dead app to vanish from tas stats")
    # the bystander is unaffected
    check_transfer(by_cli.result(60), by.result(60), by_n, by_seed)
    st = _settled(fs)
    assert st["control"]["apps_gone"] >= base["control"]["apps_gone"] + 2
    assert st["slowpath"]["rst_sent"] > base["slowpath"]["rst_sent"]
    # bounded, not timed: the closed flow's FIN exchange may still be finishing on a loaded machine
    wait_for(lambda: fd_count(fs.pid) == sp_fds and fd_count(fp) == fp_fds, 30,
             f"fds back to {sp_fds} (slow path) and {fp_fds} (fast path)")
    assert memfds(fs.pid) == sp_memfds
    assert [m for m in memfds(fp) if "ctx" in m] == []


STREAM_APP_ARGS = dict(script="send,shut_wr,recv_eof,close", timeout=90, ready="listening")


def test_fast_path_killed_is_restarted_and_transfers_complete(fs):
    """kill -9 of the fast path in the middle of a transfer each way: the
    slow path restarts it on the same shared memory and TAP; both transfers
    complete with identical sha256, the apps see nothing."""
    _settled(fs)
    before = fs.stats()["control"]["fp_restarts"]
    old_fp = fs.fp_pids()[0]
    n_in, n_out = 24 * MiB, 24 * MiB
    rx_app = fs.tas_app("fp-kill-rx", listen=7201, script="recv_eof_paced:262144:0.005,close", timeout=90,
                        ready="listening")
    rx_cli = fs.linux_peer("client", 7201, name="fp-kill-tx-linux", script="send,close", send_bytes=n_in,
                           seed=41, timeout=90)
    tx_app = fs.tas_app("fp-kill-tx", listen=7202, send_bytes=n_out, seed=42, **STREAM_APP_ARGS)
    tx_cli = fs.linux_peer("client", 7202, name="fp-kill-rx-linux", script="recv_eof,close", timeout=90)
    wait_for(lambda: fs.stats()["segments_in"] > 2000, 20, "the transfers to be under way")
    os.kill(old_fp, signal.SIGKILL)
    wait_for(lambda: fs.fp_pids() and fs.fp_pids()[0] != old_fp, 20, "a new fast-path process")
    check_transfer(rx_cli.result(90), rx_app.result(90), n_in, 41)
    check_transfer(tx_app.result(90), tx_cli.result(90), n_out, 42)
    st = _settled(fs)
    assert st["control"]["fp_restarts"] == before + 1
    assert not os.path.exists(f"/proc/{old_fp}")
    assert "restarting it with flow state intact" in fs.log()
    # and the restarted fast path serves new connections
    app = fs.tas_app("after-restart", listen=7203, script="recv_eof,close", timeout=30, ready="listening")
    cli = fs.linux_peer("client", 7203, name="after-restart-linux", script="send,close", send_bytes=MiB,
                        seed=43, timeout=30)
    check_transfer(cli.result(30), app.result(30), MiB, 43)


SP_KILL_APP = """
st = Stack(STATE)
ctx = st.context()
lst = ctx.listen(7301, reuseaddr=True)
say("listening")
c = lst.accept(timeout=15)
say("accepted")
t0 = time.monotonic()
err = None
while time.monotonic() - t0 < 20:
    try:
        c.recv(65536, timeout=0.2)
    except TimeoutError:
        continue
    except Exception as e:
        err = e
        break
res = {"ok": err is not None, "error": type(err).__name__, "msg": str(err), "at": time.monotonic()}
try:
    st.context()
    res["next_call"] = "ok"
except Exception as e:
    res["next_call"] = type(e).__name__
print("RESULT " + json.dumps(res), flush=True)
"""


def test_slow_path_killed_everything_stops_and_restart_works():
    """kill -9 of `tas start`: its fast path exits, the app's next call
    raises ConnectionResetError("TAS stack went away"), nothing is left in
    /proc or /dev/shm, and `tas start` on the same state dir works at once."""
    with FaultStack() as fs:
        fps = fs.fp_pids()
        app = fs.stack_py("sp-kill-app", SP_KILL_APP, ready="listening")
        peer = fs.peer_py("sp-kill-peer", """
            s = socket.create_connection(("198.18.0.2", 7301), timeout=10)
            say("connected")
            time.sleep(30)
        """, ready="connected")
        app.wait_line("accepted", 10)
        killed_at = time.monotonic()
        os.kill(fs.pid, signal.SIGKILL)
        fs.proc.wait(5)
        res = app.result(15)
        assert res["error"] == "ConnectionResetError" and "TAS stack went away" in res["msg"], res
        assert res["at"] - killed_at < 2.0
        assert res["next_call"] in ("ConnectionResetError", "OSError"), res
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in fps), 5, "fast paths to exit")
        assert tas_shm_leftovers() == []
        peer.stop()
        # same state dir, right away
        fs.start()
        assert fs.fp_pids() and fs.fp_pids() != fps
        app2 = fs.tas_app("after-sp-restart", listen=7302, script="recv_eof,close", timeout=30, ready="listening")
        cli = fs.linux_peer("client", 7302, name="after-sp-restart-linux", script="send,close",
                            send_bytes=MiB, seed=51, timeout=30)
        check_transfer(cli.result(30), app2.result(30), MiB, 51)
        assert fs.stop() == 0
        new_fps = fs.fp_pids()
    assert not any(os.path.exists(f"/proc/{p}") for p in new_fps)
    assert tas_shm_leftovers() == []
