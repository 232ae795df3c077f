"""Many concurrent connections (issue 5, `tas bench --modes conns`): the
slow path's admission and timer work, checked by counting.

A real Engine runs on a real flow table with a fake clock and a fake event
loop; the test plays the peer (SYN, then the handshake ACK) and the fast
path (it drains KTX).

* A listener's context with small flow buffers accepts as many flows as its
  heap holds: the SYN admission check reserves the *context's* buffer sizes
  (it used to reserve the stack's 2 x 256 KiB per half-open connection, so
  a context sized for 4 KiB flows refused all but a few); the SYN-ACK
  advertises the window the flow will have.  Past the heap, every further
  SYN is refused with a RST and counted (conns_refused_limit), none lost.
* The timer scan's per-pass work does not grow with idle flows: the closing
  flows, the orphans and the keepalive flows are kept in sets as flows
  change state, TIME-WAIT entries expire in order.
"""

from __future__ import annotations

import pytest

from flextcp.native import ffi, lib
from flextcp.shm import Region
from kernel_slowpath import engine as eng
from kernel_slowpath.bufalloc import BuddyAllocator
from kernel_slowpath.frames import SegmentBuilder
from kernel_slowpath.tcpstate import State
from tests.engine_fakes import EngineRig

N_FLOWS = 512
KQ_SLOTS = 64
S = 1_000_000  # µs
LOCAL_IP = "198.18.0.2"
PEER_IP = "198.18.0.1"
LOCAL_MAC = b"\x02\0\0\0\0\x02"
PEER_MAC = b"\x02\0\0\0\0\x01"
PORT = 8


class Handle:
    def cancel(self) -> None:
        pass


class FakeLoop:
    """Timers are never run: the test drives time itself."""

    def call_later(self, delay, fn, *args) -> Handle:
        return Handle()


class HeapCtx:
    """A context as the engine sees it: a buddy heap for flow blocks, the
    context's default buffer sizes, events recorded."""

    def __init__(self, heap_bytes: int, buf: int) -> None:
        self.ctx_id = 0
        self.region = Region.create(4096 + heap_bytes, "conns-scale-ctx")
        self.heap = BuddyAllocator(4096, 4096 + heap_bytes)
        self.rx_buf = self.tx_buf = buf
        self.events: list[dict] = []
        self.orphaned = False

    @property
    def free_bytes(self) -> int:
        return self.heap.free_bytes

    def alloc(self, size: int) -> int | None:
        return self.heap.alloc(size)

    def free(self, off: int) -> None:
        self.heap.free(off)

    def event(self, ev: dict) -> None:
        self.events.append(ev)


class Rig(EngineRig):
    def __init__(self, ctx=None) -> None:
        super().__init__("conns-scale-stack", N_FLOWS, KQ_SLOTS, loop=FakeLoop(), local_ip=LOCAL_IP, mac=LOCAL_MAC)
        self.engine.arp[eng.ip2int(PEER_IP)] = (PEER_MAC, 1 << 62)
        self.peer = SegmentBuilder(PEER_MAC, eng.ip2int(PEER_IP))
        self.ctx = ctx
        self.sport = 20000

    def fp_drain(self) -> list[bytes]:
        """The frames the slow path queued for the fast path to send."""
        out = []
        while True:
            raw = self.fp_ktx.dequeue_n(1)
            if not raw:
                return out
            e = ffi.from_buffer("struct tas_ktx *", raw)
            if e.kind == lib.TAS_KTX_FRAME:
                out.append(bytes(raw[32 : 32 + e.len]))

    def _from_peer(self, sport: int, **fields) -> None:
        self.engine.on_frame(
            self.peer.build(dst_mac=LOCAL_MAC, dst_ip=eng.ip2int(LOCAL_IP), sport=sport, dport=PORT, **fields)
        )

    def syn(self, sport: int) -> None:
        self._from_peer(sport, seq=1000 + sport, ack=0, flags=eng.SYN, win=65535, mss=1460, wscale=7)

    def ack(self, sport: int, iss: int) -> None:
        self._from_peer(sport, seq=1001 + sport, ack=iss + 1, flags=eng.ACK, win=512)

    def connect(self) -> str:
        """One connection from the peer: "ok", "rst" (refused) or "dropped"."""
        self.sport += 1
        sport = self.sport
        self.syn(sport)
        lst = self.engine.listeners[PORT]
        ho = lst.half_open.get((PORT, eng.ip2int(PEER_IP), sport))
        frames = self.fp_drain()
        if ho is None:
            flags = [f[47] for f in frames]  # TCP flags byte (14 + 20 + 13)
            return "rst" if any(fl & eng.RST for fl in flags) else "dropped"
        self.ack(sport, ho.iss)
        self.fp_drain()
        return "ok"


def _fits(heap_bytes: int, buf: int) -> int:
    """How many flows (64 B block + rx + tx) a fresh buddy heap holds."""
    heap = BuddyAllocator(4096, 4096 + heap_bytes)
    n = 0
    while all(heap.alloc(size) is not None for size in (64, buf, buf)):
        n += 1
    return n


@pytest.mark.parametrize("buf", [4096, 16384])
def test_small_buffer_listener_accepts_what_its_region_holds(buf):
    heap_bytes = 1 << 20  # far less than one flow at the stack's 2 x 256 KiB
    rig = Rig(HeapCtx(heap_bytes, buf))
    e = rig.engine
    assert e.rx_buf == 256 << 10  # the stack's default is not what the context uses
    e.listen(rig.ctx, PORT, backlog=1024, reuseaddr=True)
    expect = _fits(heap_bytes, buf)
    assert expect > 20
    outcomes = [rig.connect() for _ in range(expect + 20)]
    # every connection the heap holds was accepted, in order, then refusals
    assert outcomes[:expect] == ["ok"] * expect
    assert outcomes[expect:] == ["rst"] * 20
    assert e.counters["conns_refused_limit"] == 20  # counted, not silent
    assert e.counters["alloc_failures"] == 0
    assert sum(1 for ev in rig.ctx.events if ev["ev"] == "newconn") == expect
    assert all(c.rx_len == buf and c.tx_len == buf for c in e.conns.values())


def test_synack_window_is_the_flows_buffer():
    rig = Rig(HeapCtx(1 << 20, 4096))
    rig.engine.listen(rig.ctx, PORT, backlog=16, reuseaddr=True)
    rig.syn(30000)
    (frame,) = rig.fp_drain()
    p = ffi.new("struct tas_pkt *")
    assert lib.tas_parse_frame(frame, len(frame), p) == lib.TAS_PK_TCP
    assert p.tcp_flags & eng.SYN and p.tcp_flags & eng.ACK
    assert p.win == 4096  # not min(stack default 256 KiB, 65535)


def _count_snapshots(e: eng.Engine) -> list[int]:
    calls = [0]
    real = e._snapshot

    def counting(conn):
        calls[0] += 1
        return real(conn)

    e._snapshot = counting
    return calls


def test_scan_work_does_not_touch_idle_flows():
    rig = Rig(HeapCtx(4 << 20, 4096))
    e = rig.engine
    e.listen(rig.ctx, PORT, backlog=1024, reuseaddr=True)
    for _ in range(300):
        assert rig.connect() == "ok"
    conns = list(e.conns.values())
    assert all(c.state is State.ESTABLISHED for c in conns)
    # one flow closes (the app's close: FIN queued -> FIN-WAIT-1)
    closing = conns[7]
    e.close(rig.ctx, closing.fid, 0, 0)
    assert closing.state is State.FIN_WAIT_1
    assert list(e._closing.values()) == [closing]
    calls = _count_snapshots(e)
    rig.clock.t += 2 * eng.CLOSING_SYNC_US  # the closing sync is due
    e.scan_once()
    assert calls[0] == 1  # only the closing flow was read, not the 299 idle ones
    assert not e._orphans and not e._ka_conns
    # a keepalive flow is looked at by the keepalive pass, the others are not
    e.set_keepalive(rig.ctx, conns[3].fid, True)
    assert list(e._ka_conns.values()) == [conns[3]]
    calls[0] = 0
    rig.clock.t += eng.KEEPALIVE_SCAN_US
    e.scan_once()
    assert calls[0] == 1
    # freed flows leave every set
    e.abort(rig.ctx, conns[3].fid)
    e._reset(closing, 104, send_rst=True)  # the closed (detached) flow ends: freed
    assert closing.fid not in e.conns
    assert not e._closing and not e._ka_conns


def test_time_wait_entries_expire_in_order():
    rig = Rig(HeapCtx(1 << 20, 4096))
    e = rig.engine
    for i in range(5):
        e._tw_put((PORT, 1, i), 1, 2)
        rig.clock.t += S
    rig.clock.t = 5_000 * S + eng.TIME_WAIT_US + S // 2  # the first one is past its time
    e._expire_time_wait(rig.clock.t)
    assert sorted(e.time_wait) == [(PORT, 1, i) for i in range(1, 5)]
    e._tw_put((PORT, 1, 1), 1, 2)  # restarted (a retransmitted FIN): lives on
    rig.clock.t += 10 * S
    e._expire_time_wait(rig.clock.t)
    assert list(e.time_wait) == [(PORT, 1, 1)]
    rig.clock.t += eng.TIME_WAIT_US
    e._expire_time_wait(rig.clock.t)
    assert not e.time_wait and not e._tw_order
