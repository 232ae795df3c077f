"""Soak with churn (issue 8): connections opened and closed both ways,
resets both ways, echo servers killed (-9) and restarted, an active-open app
restarted, and link loss switched on and off — for TAS_SOAK_SECONDS
(default 50 s in CI; the on-demand run is ``TAS_SOAK_SECONDS=600 pytest -s
tests/test_soak.py``).  Afterwards (loss off, apps gone) the stack must be
back where it started: no open flows, contexts or buffer memory, the slow
and fast path hold the same fds as before, the slow path's RSS has not
grown beyond allocator noise, and no echoed byte was ever wrong.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from test_faults_util import FaultStack, fd_count, rss_kib, wait_for

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TAP)"),
]

SOAK_S = float(os.environ.get("TAS_SOAK_SECONDS", "50"))
RSS_SLACK_KIB = int(os.environ.get("TAS_SOAK_RSS_SLACK_KIB", str(12 * 1024)))

# Linux side: an echo server for the stack's active opens, and a client
# churning connections to the stack's echo server: verify, close, abort.
PEER_CHURN = """
import random, threading, selectors
DUR = {dur}
rnd = random.Random(7)
stats = {{"echoed": 0, "mismatch": 0, "refused": 0, "reset": 0, "timeout": 0, "aborted": 0, "other": 0}}
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("198.18.0.1", 9000)); srv.listen(512); srv.settimeout(0.5)
stop = time.monotonic() + DUR
def serve():
    while time.monotonic() < stop + 5:
        try:
            c, _ = srv.accept()
        except OSError:
            continue
        def echo(c=c):
            c.settimeout(10)
            try:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)
            except OSError:
                pass
            c.close()
        threading.Thread(target=echo, daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
say("ready")
while time.monotonic() < stop:
    n = rnd.choice([1, 100, 4096, 65536, 300000])
    data = rnd.randbytes(n)
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("198.18.0.2", 7))
        mode = rnd.random()
        if mode < 0.1:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close(); stats["aborted"] += 1; continue
        s.sendall(data)
        got = bytearray()
        while len(got) < n:
            d = s.recv(min(262144, n - len(got)))
            if not d:
                break
            got += d
        if bytes(got) != data[:len(got)]:
            stats["mismatch"] += 1
        elif len(got) == n:
            stats["echoed"] += 1
        if mode < 0.25:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stats["aborted"] += 1
    except ConnectionRefusedError:
        stats["refused"] += 1; time.sleep(0.05)
    except ConnectionResetError:
        stats["reset"] += 1
    except (TimeoutError, socket.timeout):
        stats["timeout"] += 1
    except OSError:
        stats["other"] += 1
    finally:
        s.close()
print("RESULT " + json.dumps(dict(stats, ok=stats["mismatch"] == 0)), flush=True)
"""

# Stack side: active opens to the Linux echo server, verify, close or abort.
STACK_ACTIVE = """
import random
rnd = random.Random(os.getpid())
st = Stack(STATE); ctx = st.context(rx_buf=65536, tx_buf=65536)
say("ready")
res = {"ok": True, "done": 0, "mismatch": 0, "errors": 0}
t_end = time.monotonic() + {dur}
while time.monotonic() < t_end:
    try:
        c = ctx.connect("198.18.0.1", 9000, timeout=5)
        data = rnd.randbytes(rnd.choice([10, 5000, 70000]))
        c.sendall(data, timeout=5)
        got = bytearray()
        while len(got) < len(data):
            d = c.recv(65536, timeout=5)
            if not d:
                break
            got += d
        if bytes(got) != data:
            res["mismatch"] += 1
        if rnd.random() < 0.2:
            c.abort()
        else:
            c.close()
        res["done"] += 1
    except (OSError, TimeoutError):
        res["errors"] += 1
        time.sleep(0.05)
res["ok"] = res["mismatch"] == 0
print("RESULT " + json.dumps(res), flush=True)
"""


def _echo(fs: FaultStack, i: int):
    from conftest import App, tas_argv

    app = App(f"echo-{i}", fs.topo.ns_argv(fs.topo.stack_ns, [*tas_argv(), "echo-server", "--port", "7",
                                                               "--state-dir", str(fs.state_dir)]), fs.workdir)
    fs.apps.append(app)
    app.wait_line("listening", 60)  # generous: a loaded CI machine starts Python slowly
    return app


def _idle(fs: FaultStack) -> dict | None:
    st = fs.stats()
    c = st["control"]
    ok = st["flows_open"] == 0 and st["flows_connecting"] == 0 and c["contexts"] == 0 and c["heap_used"] == 0
    return st if ok else None


def _snapshot(fs: FaultStack) -> dict:
    fp = fs.fp_pids()[0]
    return {"sp_fds": fd_count(fs.pid), "fp_fds": fd_count(fp), "sp_rss": rss_kib(fs.pid), "fp_rss": rss_kib(fp)}


def _churn(fs: FaultStack, dur: float, loss: bool) -> dict:
    peer = fs.peer_py("peer-churn", PEER_CHURN.format(dur=dur), ready="ready", ready_timeout=60)
    t_end = time.monotonic() + dur
    echo = _echo(fs, 0)
    active = None
    i = 0
    lossy = False
    while time.monotonic() < t_end:
        i += 1
        if active is None or active.proc.poll() is not None:
            if active is not None:
                r = active.result(5)
                assert r["mismatch"] == 0, r
            dur_i = str(min(4.0, max(0.5, t_end - time.monotonic())))
            active = fs.stack_py(f"active-{i}", STACK_ACTIVE.replace("{dur}", dur_i), ready="ready", ready_timeout=60)
        time.sleep(min(2.0, max(0.0, t_end - time.monotonic())))
        # app restarts: the echo server dies (alternately -9 and SIGTERM) with open flows
        if time.monotonic() < t_end - 1:
            if i % 2:
                os.kill(echo.pid, signal.SIGKILL)
                echo.wait(5)
            else:
                echo.stop()
            echo = _echo(fs, i)
        if loss and i % 3 == 0:
            lossy = not lossy
            if lossy:
                fs.topo.add_loss(3)
            else:
                fs.topo.clear_loss()
    fs.topo.clear_loss()
    res = peer.result(dur + 30)
    if active is not None:
        assert active.result(15)["mismatch"] == 0
    echo.stop()
    assert res["mismatch"] == 0, res
    assert res["echoed"] > 0, res
    return res


def test_soak_churn_leaves_nothing_behind():
    with FaultStack() as fs:
        # warm-up round: caches, allocator arenas, module imports settle
        _churn(fs, 6, loss=False)
        wait_for(lambda: _idle(fs), 30, "the stack to go idle after the warm-up")
        base = _snapshot(fs)
        t0 = time.monotonic()
        res = _churn(fs, SOAK_S, loss=True)
        wait_for(lambda: _idle(fs), 60, "the stack to go idle after the soak")
        after = _snapshot(fs)
        st = fs.stats()
        print(f"\nsoak {time.monotonic() - t0:.0f} s: peer {res}\n before {base}\n after  {after}\n"
              f" established {st['slowpath']['conns_established']}, time_wait {st['time_wait']}, "
              f"apps gone {st['control']['apps_gone']}")
        assert after["sp_fds"] == base["sp_fds"], (base, after)
        assert after["fp_fds"] == base["fp_fds"], (base, after)
        assert after["sp_rss"] - base["sp_rss"] < RSS_SLACK_KIB, (base, after)
        assert after["fp_rss"] - base["fp_rss"] < RSS_SLACK_KIB, (base, after)
        assert st["flows_open"] == 0 and st["control"]["orphaned_contexts"] == 0
        assert st["control"]["fp_restarts"] == 0
        assert fs.stop() == 0
