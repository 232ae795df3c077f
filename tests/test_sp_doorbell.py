"""The doorbells between the slow path and the fast paths (tas_abi.h struct
tas_cc_news_hdr: sp_armed, fp_armed): a core writes the slow path's eventfd
once per slow-path sleep (every poll that posted if the slow path does not
arm), the slow path writes a core's eventfd after a KTX entry only while the
core sleeps -- nothing posted is lost, the C engine and the twin alike."""

from __future__ import annotations

import os
import struct

import pytest
from fp_harness import LOCAL_IP, LOCAL_MAC, REMOTE_IP, REMOTE_MAC, FPHarness, _read_evfd

from flextcp import spflow_py
from flextcp.flowtab import news_off
from flextcp.native import ffi, lib
from kernel_slowpath.frames import csum


def echo_request(seq: int) -> bytes:
    """An ICMP echo request to the fast path's address (it punts it to KRX)."""
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 1, seq) + b"x" * 16)
    icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0, REMOTE_IP, LOCAL_IP))
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return LOCAL_MAC + REMOTE_MAC + b"\x08\x00" + bytes(ip) + bytes(icmp)


def news_hdr(h: FPHarness):
    """The stack region's struct tas_cc_news_hdr (the doorbell words)."""
    return h.stack.cast("struct tas_cc_news_hdr", h.lay.ft_off + news_off(h.n_flows))


@pytest.fixture(params=["c", "py"])
def h(request):
    with FPHarness(request.param == "py") as hs:
        yield hs


def punt_and_poll(h: FPHarness, seq: int) -> None:
    h.inject(echo_request(seq))
    h.poll()


def test_fast_path_wakes_the_slow_path_once_per_sleep(h):
    hdr = news_hdr(h)
    # a slow path that does not arm (0): a write for every poll that posted
    punt_and_poll(h, 1)
    punt_and_poll(h, 2)
    assert _read_evfd(h.sp_evfd) == 2
    # armed: the first poll that posts writes once and marks it awake
    hdr.sp_armed = lib.TAS_SP_ARMED
    punt_and_poll(h, 3)
    assert _read_evfd(h.sp_evfd) == 1
    assert hdr.sp_armed == lib.TAS_SP_AWAKE
    # awake (draining, or will look again before it sleeps): no write
    punt_and_poll(h, 4)
    punt_and_poll(h, 5)
    assert _read_evfd(h.sp_evfd) == 0
    # nothing lost: every request is in KRX
    assert [e[0][0] for e in h.drain_krx()] == [lib.TAS_KRX_PACKET] * 5
    # a poll that posts nothing writes nothing, armed or not
    hdr.sp_armed = lib.TAS_SP_ARMED
    h.poll()
    assert _read_evfd(h.sp_evfd) == 0 and hdr.sp_armed == lib.TAS_SP_ARMED


def test_set_armed_publishes_the_core_sleeping(h):
    hdr = news_hdr(h)
    assert hdr.fp_armed[h.core] == 0
    h.set_armed(1)
    assert hdr.fp_armed[h.core] == 1
    h.set_armed(0)
    assert hdr.fp_armed[h.core] == 0


@pytest.mark.parametrize("pure", [False, True])
def test_slow_path_kicks_a_core_only_while_it_sleeps(pure):
    with FPHarness(False, n_flows=4) as hs:
        hdr = news_hdr(hs)
        evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            def kick(core: int) -> int:
                if pure:
                    return spflow_py.kick(hdr, core, evfd)
                return lib.tas_sp_kick(hs.ft.raw, core, evfd)

            assert kick(0) == 0 and _read_evfd(evfd) == 0  # spinning: it polls KTX anyway
            hdr.fp_armed[0] = 1
            assert kick(0) == 1 and _read_evfd(evfd) == 1
            last = lib.TAS_FP_ARMED_CORES  # beyond the armed words: always
            assert kick(last) == 1 and _read_evfd(evfd) == 1
            if not pure:
                assert lib.tas_sp_kick(ffi.NULL, 0, evfd) == 1 and _read_evfd(evfd) == 1
        finally:
            os.close(evfd)


def test_doorbell_twin():
    with FPHarness(False) as hs:
        hdr = news_hdr(hs)
        for state in (lib.TAS_SP_ARMED, lib.TAS_SP_AWAKE, 0):
            lib.tas_sp_doorbell(hs.ft.raw, state)
            assert hdr.sp_armed == state
            spflow_py.doorbell(hdr, lib.TAS_SP_ARMED)
            assert hdr.sp_armed == lib.TAS_SP_ARMED
