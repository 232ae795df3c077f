"""Every flow of an app that is gone is reclaimed within a bounded time.

The slow path learns that a FIN was received or acknowledged from flow
events the fast path posts on its KRX ring, and it asks the fast path to
send (a queued FIN) by a KTX "kick".  Both rings are bounded: under load the
fast path drops an event when KRX is full (cores[i].krx_full) and a kick can
find KTX full.  Before the fix a flow whose app had closed it and exited
then stayed in LAST-ACK (or FIN-WAIT-1, CLOSING) forever -- nothing in
flight, so no timer ran -- and `flows_open` never reached 0 (the CI flake of
test_exhaustion's "all flows to be freed" wait).

Here a real Engine runs on a real flow table with a fake clock; the test
plays the fast path by setting the record's flags (FIN sent, FIN acked, FIN
received) *without* posting the events, or by leaving KTX full, and checks
each closing state ends within its documented bound:

* lost FIN events: recovered from the record's flags within CLOSING_SYNC_US
  (then CLOSED, TIME-WAIT, or FIN-WAIT-2 with its 60 s orphan timeout);
* lost kick: retried on the next scan;
* an orphan whose peer stopped answering (window shut for good): reset after
  ORPHAN_RETRIES zero-window probes.
"""

from __future__ import annotations

import pytest

from flextcp.native import lib
from flextcp.shm import Region
from kernel_slowpath import engine as eng
from kernel_slowpath.tcpstate import CLOSING_STATES, State
from tests.engine_fakes import EngineRig

N_FLOWS = 8
KQ_SLOTS = 8
KQ_ENTRY = lib.TAS_KQ_ENTRY_SIZE
S = 1_000_000  # µs


class FakeCtx:
    """What the engine uses of server.Context: a region with a bump allocator."""

    def __init__(self) -> None:
        self.ctx_id = 0
        self.region = Region.create(1 << 20, "orphan-test-ctx")
        self.next = 4096
        self.events: list[dict] = []
        self.orphaned = False
        self.drained = 0
        self.on_drained = self._drained

    def _drained(self) -> None:
        self.drained += 1

    def alloc(self, size: int) -> int:
        off = self.next
        self.next += max(size, 64)
        return off

    def free(self, off: int) -> None:
        pass

    def event(self, ev: dict) -> None:
        self.events.append(ev)


class Bench(EngineRig):
    def __init__(self) -> None:
        super().__init__("orphan-test-stack", N_FLOWS, KQ_SLOTS)
        self.ctx = FakeCtx()
        self.port = 40000

    def flow(self) -> eng.Conn:
        """An established flow (as _on_half_open leaves it)."""
        self.port += 1
        conn = self.engine._new_conn(
            self.ctx, 7500, eng.ip2int("198.18.0.1"), self.port, 4096, 4096, State.SYN_RECEIVED
        )
        conn.remote_mac = b"\x02\0\0\0\0\x01"
        conn.iss, conn.irs = 1000, 5000
        self.engine._install(
            conn,
            peer_mss=1460,
            snd_wscale=0,
            rcv_wscale=0,
            sack=False,
            ts_recent=None,
            snd_wnd=65535,
            wl1=5001,
            wl2=1001,
            rtt_us=1000,
        )
        assert conn.state is State.ESTABLISHED
        return conn

    def rec(self, conn: eng.Conn):
        return self.ft.flow(conn.fid)

    def fp_drain(self) -> list[tuple[int, int]]:
        """Take what the slow path queued for the fast path: (kind, flow_id)."""
        out = []
        while True:
            data = self.fp_ktx.dequeue_n(KQ_SLOTS)
            n = len(data) // KQ_ENTRY
            if not n:
                return out
            for i in range(n):
                kind, _len, fid = eng.struct.unpack_from("<HHI", data, i * KQ_ENTRY)
                out.append((kind, fid))

    def fp_fin_sent(self, conn: eng.Conn, acked: bool) -> None:
        """The fast path sent the FIN (and got it acknowledged) but the
        FIN-acked event was dropped (KRX full)."""
        f = self.rec(conn)
        f.flags |= lib.TAS_FF_FIN_SENT | (lib.TAS_FF_FIN_ACKED if acked else lib.TAS_FF_FIN_OUT)
        if acked:
            f.flags &= ~lib.TAS_FF_FIN_OUT
        self.stats.krx_full += 1

    def fp_fin_rcvd(self, conn: eng.Conn, post_event: bool) -> None:
        self.rec(conn).flags |= lib.TAS_FF_RX_FIN
        if post_event:
            self.engine.on_flow_event(conn.fid, lib.TAS_EV_FIN_RCVD)
        else:
            self.stats.krx_full += 1

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Timer scans (as Engine._scan schedules them) for `seconds` of fake time."""
        end = self.clock.t + int(seconds * S)
        while self.clock.t < end:
            self.clock.t += int(step * S)
            self.engine.scan_once()

    def open_flows(self) -> int:
        return sum(1 for c in self.engine.conns.values() if c.installed)


@pytest.fixture
def bench():
    return Bench()


# (peer FIN before our close?, our FIN acked?, peer FIN after our close?) ->
# the state the slow path must reach and the bound for freeing the flow
CASES = {
    # passive close: CLOSE-WAIT -> LAST-ACK; FIN-acked lost -> CLOSED
    "last-ack": (True, True, False),
    # active close, FIN acked (event lost), peer never closes: FIN-WAIT-2 orphan timeout
    "fin-wait-2": (False, True, False),
    # simultaneous close: FIN-WAIT-1 -> CLOSING; FIN-acked lost -> TIME-WAIT
    "closing": (False, True, True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fin_rcvd_event_lost", [False, True])
def test_lost_fin_events_do_not_strand_an_exited_apps_flow(bench, case, fin_rcvd_event_lost):
    before, acked, after = CASES[case]
    e = bench.engine
    conn = bench.flow()
    if before:
        bench.fp_fin_rcvd(conn, post_event=not fin_rcvd_event_lost)
    e.close(bench.ctx, conn.fid, tx_head=0, rx_tail=0)
    # a FIN received before close is honoured even if its event was lost
    assert conn.state is (State.LAST_ACK if before else State.FIN_WAIT_1)
    assert conn.detached and (lib.TAS_KTX_KICK, conn.fid) in bench.fp_drain()
    if after:
        bench.fp_fin_rcvd(conn, post_event=not fin_rcvd_event_lost)
    bench.fp_fin_sent(conn, acked=acked)
    assert e.context_gone(bench.ctx) == 1  # lingers: closed cleanly, FIN exchange under way
    bench.ctx.orphaned = True
    bound = eng.CLOSING_SYNC_US / S + 0.1
    if case == "fin-wait-2":
        bench.run(bound)
        assert conn.state is State.FIN_WAIT_2 and bench.open_flows() == 1
        bound = eng.FIN_WAIT_2_ORPHAN_US / S + 0.1
    bench.run(bound)
    assert bench.open_flows() == 0, (conn.state, e.counters)
    assert bench.ctx.drained == 1
    assert e.counters["flow_events_recovered"] >= 1
    assert e.counters["protocol_errors"] == 0
    if case == "closing":
        assert len(e.time_wait) == 1


def test_lost_event_recovered_quickly_after_krx_overflow(bench):
    """krx_full growing makes the scan look at once, not after a second."""
    e = bench.engine
    bench.run(0.05)  # the first sync pass happens at once; the next is a second away
    conn = bench.flow()
    bench.fp_fin_rcvd(conn, post_event=True)
    e.close(bench.ctx, conn.fid, tx_head=0, rx_tail=0)
    bench.fp_fin_sent(conn, acked=True)  # krx_full grows
    bench.run(eng.CLOSING_SYNC_MIN_US / S + 0.02)
    assert conn.fid not in e.conns


def test_event_arriving_after_recovery_is_not_a_protocol_error(bench):
    e = bench.engine
    conn = bench.flow()
    bench.fp_fin_rcvd(conn, post_event=False)
    e.shutdown(bench.ctx, conn.fid, tx_head=0)  # takes the FIN from the record
    assert conn.state is State.LAST_ACK
    e.on_flow_event(conn.fid, lib.TAS_EV_FIN_RCVD)  # the event was only late, not lost
    assert conn.state is State.LAST_ACK and e.counters["protocol_errors"] == 0


def test_kick_lost_to_a_full_ktx_ring_is_retried(bench):
    """Close with KTX full: the FIN must still be asked for (nothing else
    would send it: no data in flight, no timer)."""
    e = bench.engine
    conn = bench.flow()
    bench.fp_fin_rcvd(conn, post_event=True)
    while e._ktx(0, lib.TAS_KTX_KICK, flow_id=N_FLOWS - 1):
        pass  # the fast path is behind: ring full
    e.close(bench.ctx, conn.fid, tx_head=0, rx_tail=0)
    assert e.counters["kicks_deferred"] == 1
    bench.fp_drain()  # the fast path catches up
    bench.run(0.02)
    assert (lib.TAS_KTX_KICK, conn.fid) in bench.fp_drain()


def test_orphan_against_a_window_shut_for_good_is_reset(bench):
    """An app writes, closes and exits; the peer never opens its window
    again.  Zero-window probing persists forever for a live app, but an
    orphan is reset after ORPHAN_RETRIES unanswered probes (like Linux's
    tcp_orphan_retries)."""
    e = bench.engine
    conn = bench.flow()
    f = bench.rec(conn)
    f.tx_head = 1000  # the app's data, of which the probe byte is out
    f.tx_nxt = f.tx_max = 1
    f.snd_wnd = 0
    e.close(bench.ctx, conn.fid, tx_head=1000, rx_tail=0)
    assert conn.state in CLOSING_STATES
    e.context_gone(bench.ctx)
    bench.ctx.orphaned = True
    # probes back off from the RTO to 60 s: 8 of them take well under 10 minutes
    bench.run(600, step=0.1)
    assert bench.open_flows() == 0
    assert e.counters["zero_window_probes"] > eng.ORPHAN_RETRIES
    assert e.counters["orphans_timed_out"] == 1
    assert e.counters["rst_sent"] == 1


def test_live_app_keeps_probing_a_shut_window(bench):
    """The orphan bound does not touch a flow whose app is still there."""
    e = bench.engine
    conn = bench.flow()
    f = bench.rec(conn)
    f.tx_head = 1000
    f.tx_nxt = f.tx_max = 1
    f.snd_wnd = 0
    e.shutdown(bench.ctx, conn.fid, tx_head=1000)
    bench.run(600, step=0.1)
    assert conn.fid in e.conns and conn.state is State.FIN_WAIT_1
    assert e.counters["orphans_timed_out"] == 0
