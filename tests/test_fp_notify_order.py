"""A notification never comes before the positions it announces.

The fast path sends at most one ARX entry per flow per poll.  If that entry
were posted at the first move (an ACK, the first of two segments) and the
app drained it before the poll's later moves, the app would find stale
positions and never be told about the rest: `tas demo`'s 16-connection
echo stalled that way.  The poll's entries are posted at its end
(fp_post_notifs), after every move.  The pure twin is checked step by step
(an app draining between the poll's frames sees nothing); the C engine
against a real concurrent drainer."""

from __future__ import annotations

import threading

from fp_harness import FlowSpec, FPHarness, stream_bytes

from flextcp.native import lib
from nicemu.wire import TAS_TCP_ACK

CTX = 3


def _seg(h: FPHarness, pos: int, n: int) -> bytes:
    f = h.flow(0)
    return h.peer_frame(
        0, seq=f.rx_seq0 + pos, ack=h.snd_una(0), payload=stream_bytes(pos, n), flags=TAS_TCP_ACK
    )


def test_twin_posts_no_entry_before_the_polls_last_move():
    h = FPHarness(True)
    try:
        ctx = h.add_ctx(CTX)
        spec = FlowSpec()
        h.install_flow(0, ctx, spec)
        seen: list[tuple[int, list]] = []  # (rx_head, entries an app draining now would get)
        rx_frame = h.engine.rx_frame

        def rx_then_app_drains(frame):
            rx_frame(frame)
            seen.append((h.appflow(0).rx_head, h.drain_arx(ctx)))

        h.engine.rx_frame = rx_then_app_drains
        h.inject(_seg(h, 0, 100))
        h.inject(_seg(h, 100, 50))
        assert h.poll()[0] == 2
        assert seen == [(100, []), (150, [])]  # moved, nothing announced yet
        assert h.drain_arx(ctx) == [(0, spec.gen, lib.TAS_ARX_RX, 0)]  # one entry, at the end
        assert h.appflow(0).rx_head == 150
    finally:
        h.close()


def test_c_entries_seen_by_a_concurrent_app_announce_every_byte():
    """32 segments per poll (one rx batch); the app drains in a loop while the fast path
    polls and reads rx_head right after an entry.  Each poll's entry must
    show all of them (else the later ones would never be announced)."""
    h = FPHarness(False, arx_slots=1024)
    try:
        ctx = h.add_ctx(CTX, region_len=1 << 20)
        h.install_flow(0, ctx, FlowSpec(rx_len=1 << 18, snd_wnd=1 << 16))
        stop, told = threading.Event(), threading.Event()
        seen = [0]

        def app() -> None:
            while not stop.is_set():
                if h.drain_arx(ctx):
                    seen[0] = h.appflow(0).rx_head
                    told.set()

        t = threading.Thread(target=app)
        t.start()
        pos, stale = 0, []
        try:
            for _ in range(150):  # bounded: 4,800 segments
                for n in range(1, 33):
                    h.inject(_seg(h, pos, n))
                    pos += n
                h.poll()
                assert told.wait(5), "no notification for the poll's data"
                told.clear()
                if seen[0] != pos:
                    stale.append((seen[0], pos))
                h.app_read(0, pos - h.flows[0].app_rx_tail)  # keep the window open
        finally:
            stop.set()
            t.join(5)
        assert h.appflow(0).rx_head == pos
        assert stale == []
    finally:
        h.close()
