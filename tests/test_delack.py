"""Delayed ACKs in the fast path (RFC 1122 4.2.3.2, RFC 5681 4.2), on the
C engine and its Python twin: the ACK of a lone in-order segment waits
FP_DELACK_US for data of ours to carry it (a request's reply), anything
else that needs an ACK gets it at the end of the poll as before."""

from __future__ import annotations

import pytest
from fp_harness import M32, FPHarness
from test_fastpath_twin import data_seg, setup_flow, tcp

from flextcp.fastpath_py import FP_DELACK_US
from nicemu.wire import TAS_TCP_ACK

REPLY = b"r" * 64


@pytest.fixture(params=["c", "py"])
def h(request):
    hs = FPHarness(request.param == "py")
    yield hs
    hs.close()


def test_lone_segment_ack_rides_on_the_reply(h):
    ctx, spec = setup_flow(h)
    h.inject(data_seg(h, 0, 64))
    _, frames = h.poll()
    assert frames == []  # held: the app may answer
    assert h.stat("acks_delayed") == 1
    assert h.flow(0).unacked_segs == 1
    assert h.stat("pace_due_us") == h.now + FP_DELACK_US  # the loop must not sleep past it
    h.app_write(0, REPLY)
    _, frames = h.poll(h.now + 20)
    assert len(frames) == 1
    p = tcp(frames[0])
    assert p.payload_len == 64 and p.ack == (spec.rx_seq0 + 64) & M32  # the reply carries the ACK
    _, frames = h.poll(h.now + FP_DELACK_US)
    assert frames == []  # nothing left to acknowledge
    assert h.stat("delacks_sent") == 0 and h.stat("acks_sent") == 0
    assert h.stat("pace_due_us") == 0


def test_lone_segment_without_reply_is_acked_when_the_delay_runs_out(h):
    _, spec = setup_flow(h)
    t0 = h.now
    h.inject(data_seg(h, 0, 64))
    assert h.poll()[1] == []
    assert h.poll(t0 + FP_DELACK_US - 1)[1] == []
    _, frames = h.poll(t0 + FP_DELACK_US)
    assert len(frames) == 1
    p = tcp(frames[0])
    assert p.tcp_flags == TAS_TCP_ACK and p.payload_len == 0
    assert p.ack == (spec.rx_seq0 + 64) & M32
    assert h.stat("delacks_sent") == 1 and h.stat("acks_sent") == 1
    assert h.poll(t0 + 3 * FP_DELACK_US)[1] == []  # once


def test_second_segment_is_acked_at_once(h):
    """At least every second segment is ACKed without delay (RFC 5681 4.2)."""
    _, spec = setup_flow(h)
    t0 = h.now
    h.inject(data_seg(h, 0, 100))
    assert h.poll()[1] == []
    h.inject(data_seg(h, 100, 100))
    _, frames = h.poll(t0 + 10)
    assert len(frames) == 1 and tcp(frames[0]).ack == (spec.rx_seq0 + 200) & M32
    assert h.poll(t0 + 2 * FP_DELACK_US)[1] == []  # the held ACK went with it
    assert h.stat("delacks_sent") == 0


def test_segment_filling_a_hole_is_acked_at_once(h):
    """RFC 5681 4.2: an ACK at once when a segment fills (part of) a hole."""
    _, spec = setup_flow(h, sack=True)
    h.inject(data_seg(h, 100, 100))  # out of order: duplicate ACK at once
    _, frames = h.poll()
    assert len(frames) == 1 and tcp(frames[0]).ack == spec.rx_seq0 & M32
    h.inject(data_seg(h, 0, 100))  # fills the hole
    _, frames = h.poll(h.now + 10)
    assert len(frames) == 1 and tcp(frames[0]).ack == (spec.rx_seq0 + 200) & M32
    assert h.stat("acks_delayed") == 0


def test_fin_is_acked_at_once(h):
    _, spec = setup_flow(h)
    h.inject(data_seg(h, 0, 64, fin=True))
    _, frames = h.poll()
    assert len(frames) == 1 and tcp(frames[0]).ack == (spec.rx_seq0 + 65) & M32
    assert h.stat("acks_delayed") == 0
