"""A deliberately hostile application (issue 8): it registers normally, then
writes garbage into its own context queues and memory — random ATX
entries, out-of-range positions, other apps' flow ids, a producer index far
ahead, random bytes anywhere in its region — driven by hypothesis.  The
fast path must drop and count (atx_bad, ring_corrupt), never crash, never
touch another app's flows: a second app's transfer with a Linux peer runs
throughout and must arrive with the right sha256.  A repeat offender is
disconnected (--strike-limit): its flows are reset, it gets "TAS stack went
away", everyone else carries on.

The hostile app is this test process (libtas, then raw writes into the
mapped region); the victims are separate processes.
"""

from __future__ import annotations

import json
import os
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_faults_util import FaultStack, check_transfer, wait_for

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TAP)"),
]

MiB = 1 << 20
N_EXAMPLES = int(os.environ.get("TAS_HOSTILE_EXAMPLES", "150"))
U64 = (1 << 64) - 1
_ATX = struct.Struct("<IHHQQQ")

HOSTILE_PEER = """
s = socket.create_connection(("198.18.0.2", {port}), timeout=10)
say("connected")
s.settimeout(60)
try:
    while s.recv(65536):
        pass
    out = "eof"
except ConnectionResetError:
    out = "reset"
except OSError as e:
    out = type(e).__name__
print("RESULT " + json.dumps({{"ok": True, "outcome": out, "at": time.monotonic()}}), flush=True)
"""


def _victim(fs: FaultStack, port: int, nbytes: int, seed: int):
    app = fs.tas_app(f"victim-{port}", listen=port, script="recv_eof_paced:65536:0.01,close", timeout=120,
                     ready="listening")
    cli = fs.linux_peer("client", port, name=f"victim-linux-{port}", script="send,close", send_bytes=nbytes,
                        seed=seed, timeout=120)
    return app, cli


def _hostile_with_flow(fs: FaultStack, port: int):
    from libtas.api import Stack

    stack = Stack(fs.state_dir)
    ctx = stack.context()
    lst = ctx.listen(port, reuseaddr=True)
    peer = fs.peer_py(f"hostile-peer-{port}", HOSTILE_PEER.format(port=port), ready="connected")
    conn = lst.accept(timeout=10)
    return stack, ctx, conn, peer


def _flows(fs: FaultStack) -> list[dict]:
    r = fs.tas("flows", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


u64s = st.one_of(st.integers(0, 1 << 20), st.integers(0, U64), st.sampled_from([0, 1, U64, 1 << 63, 1 << 32]))


def _ops(victim_ids: list[int], own_ids: list[int], region_len: int):
    flow_ids = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from(victim_ids + own_ids), st.integers(0, 64))
    entry = st.tuples(st.just("entry"), flow_ids, st.one_of(st.integers(0, 3), st.integers(0, 0xFFFF)),
                      st.one_of(st.just(1), st.integers(0, 0xFFFF)), u64s, u64s)
    raw = st.tuples(st.just("raw"), st.binary(min_size=32, max_size=32 * 16))
    head = st.tuples(st.just("head_ahead"), st.one_of(st.integers(1025, 1 << 20), st.integers(0, U64)))
    scribble = st.tuples(st.just("scribble"), st.integers(0, region_len - 1), st.binary(min_size=1, max_size=256))
    flood = st.tuples(st.just("flood"), st.integers(1, 3000), flow_ids)
    return st.lists(st.one_of(entry, raw, head, scribble, flood), min_size=1, max_size=12)


class Hostile:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.ring = ctx._atx[0]
        self.mv = ctx.region.view()
        self.atx_off = ctx.layout.atx_off[0]
        self.doorbell = ctx.stack.doorbells[0]

    def apply(self, op) -> None:
        kind = op[0]
        if kind == "entry":
            _, fid, gen, k, rx_tail, tx_head = op
            self.ring.enqueue_n(_ATX.pack(fid, gen, k, rx_tail, tx_head, 0), 1)
        elif kind == "raw":
            data = op[1][: len(op[1]) // 32 * 32]
            self.ring.enqueue_n(data, len(data) // 32)
        elif kind == "head_ahead":  # the shared producer index, far ahead (or anywhere)
            struct.pack_into("<Q", self.mv, self.atx_off, op[1])
        elif kind == "scribble":  # random bytes anywhere in our own region
            _, off, data = op
            n = min(len(data), len(self.mv) - off)
            self.mv[off : off + n] = data[:n]
        elif kind == "flood":
            _, n, fid = op
            buf = b"".join(_ATX.pack(fid, i & 0xFFFF, 1, U64 - i, U64 - i, 0) for i in range(n))
            self.ring.enqueue_n(buf, n)
        self.doorbell.ring()

    def close(self) -> None:
        self.mv.release()


def test_hostile_app_garbage_is_dropped_counted_and_harmless():
    with FaultStack(["--strike-limit", "0"]) as fs:
        fp = fs.fp_pids()[0]
        base = fs.stats()
        v_app, v_cli = _victim(fs, 7401, 16 * MiB, 61)
        wait_for(lambda: any(f["local"].endswith(":7401") for f in _flows(fs)), 10, "the victim's flow")
        stack, ctx, conn, peer = _hostile_with_flow(fs, 7402)
        flows = _flows(fs)
        victim_ids = [f["flow"] for f in flows if f["ctx"] != ctx.ctx_id]
        own_ids = [conn.flow_id]
        assert victim_ids
        h = Hostile(ctx)
        checked = {"n": 0}

        @settings(max_examples=N_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(_ops(victim_ids, own_ids, len(h.mv)))
        def run(ops):
            for op in ops:
                h.apply(op)
            checked["n"] += 1
            if checked["n"] % 10 == 0:
                time.sleep(0.005)
                assert os.path.exists(f"/proc/{fp}"), "the fast path died"

        try:
            run()
            time.sleep(0.2)
            assert os.path.exists(f"/proc/{fp}") and fs.proc.poll() is None
            st_ = fs.stats()
            assert st_["control"]["fp_restarts"] == 0
            core, core0 = st_["cores"][0], base["cores"][0]
            assert core["atx_bad"] > core0["atx_bad"]
            assert core["ring_corrupt"] > core0["ring_corrupt"]
            me = [a for a in st_["control"]["per_app"] if a["pid"] == os.getpid()]
            assert me and me[0]["strikes"] > 0
            # the other app's flow is untouched: its transfer completes intact
            check_transfer(v_cli.result(120), v_app.result(120), 16 * MiB, 61)
            print(f"\nhostile: {checked['n']} examples, atx_bad +{core['atx_bad'] - core0['atx_bad']}, "
                  f"ring_corrupt +{core['ring_corrupt'] - core0['ring_corrupt']}, strikes {me[0]['strikes']}")
        finally:
            h.close()
            try:
                stack.close()
            except OSError:
                pass
        peer.result(20)  # the hostile app's own flow ends (reset or EOF), the peer never hangs
        assert fs.stop() == 0


def test_repeat_offender_is_disconnected_and_others_carry_on():
    with FaultStack(["--strike-limit", "64"]) as fs:
        fp = fs.fp_pids()[0]
        v_app, v_cli = _victim(fs, 7411, 8 * MiB, 62)
        stack, ctx, conn, peer = _hostile_with_flow(fs, 7412)
        h = Hostile(ctx)
        try:
            t0 = time.monotonic()
            for i in range(100):  # flow ids out of range: no correct app does that
                h.apply(("entry", 0xFFFFFFF0 + (i & 7), 0, 1, 0, 0))
            res = peer.result(10)
            assert res["outcome"] == "reset", res
            assert res["at"] - t0 < 2.0
            with pytest.raises(ConnectionResetError, match="TAS stack went away"):
                stack.stats()
            st_ = fs.stats()
            assert st_["control"]["hostile_disconnects"] == 1
            assert all(a["pid"] != os.getpid() for a in st_["control"]["per_app"])
            assert "hostile: invalid queue entries" in fs.log()
            check_transfer(v_cli.result(60), v_app.result(60), 8 * MiB, 62)
            assert os.path.exists(f"/proc/{fp}") and st_["control"]["fp_restarts"] == 0
        finally:
            h.close()
            try:
                stack.close()
            except OSError:
                pass
        assert fs.stop() == 0
