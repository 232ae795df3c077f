"""Sizes and offsets of the shared-memory ABI (tas_abi.h)."""

from __future__ import annotations

import pytest

from flextcp import flowtab, ring
from flextcp.native import ffi


@pytest.mark.parametrize(
    "ctype,size",
    [
        ("struct tas_flow", 256),
        ("struct tas_ring_hdr", 192),
        ("struct tas_atx", 32),
        ("struct tas_arx", 16),
        ("struct tas_krx", 2048),
        ("struct tas_ktx", 2048),
        ("struct tas_appflow", 64),
        ("struct tas_ft_hdr", 64),
    ],
)
def test_sizes(ctype, size):
    assert ffi.sizeof(ctype) == size


def test_entry_size_defines():
    from flextcp.native import lib

    assert lib.TAS_ATX_ENTRY_SIZE == ffi.sizeof("struct tas_atx")
    assert lib.TAS_ARX_ENTRY_SIZE == ffi.sizeof("struct tas_arx")
    assert lib.TAS_KQ_ENTRY_SIZE == ffi.sizeof("struct tas_krx")
    assert lib.TAS_KQ_DATA == ffi.sizeof("struct tas_krx") - ffi.offsetof("struct tas_krx", "data")
    assert lib.TAS_KQ_DATA == ffi.sizeof("struct tas_ktx") - ffi.offsetof("struct tas_ktx", "data")


def test_ring_hdr_offsets():
    assert ffi.offsetof("struct tas_ring_hdr", "head") == 0
    assert ffi.offsetof("struct tas_ring_hdr", "tail") == 64
    assert ffi.offsetof("struct tas_ring_hdr", "slots") == 128
    assert ffi.offsetof("struct tas_ring_hdr", "entry_size") == 132
    assert ring.HDR_SIZE == ffi.sizeof("struct tas_ring_hdr")


def test_flow_offsets():
    off = lambda f: ffi.offsetof("struct tas_flow", f)  # noqa: E731
    assert off("lock") == 0
    assert off("gen") == 4
    assert off("status") == 6 == flowtab._OFF_STATUS
    assert off("local_ip") == 16 == flowtab._OFF_LOCAL_IP
    assert off("remote_ip") == 20 == flowtab._OFF_REMOTE_IP
    assert off("local_port") == 24 == flowtab._OFF_LOCAL_PORT
    assert off("remote_port") == 26 == flowtab._OFF_REMOTE_PORT
    assert off("cwnd") == 192
    assert off("cnt_rx_segs") == 240


def test_flow_cache_line_groups():
    off = lambda f: ffi.offsetof("struct tas_flow", f)  # noqa: E731
    assert off("rx_head") == 64
    assert off("tx_head") == 128


def test_queue_entry_offsets():
    assert ffi.offsetof("struct tas_atx", "rx_tail") == 8
    assert ffi.offsetof("struct tas_atx", "tx_head") == 16
    assert ffi.offsetof("struct tas_arx", "kind") == 6
    assert ffi.offsetof("struct tas_krx", "data") == 32
    assert ffi.offsetof("struct tas_ktx", "data") == 32
    assert ffi.offsetof("struct tas_appflow", "gen") == 40
    assert ffi.offsetof("struct tas_ft_hdr", "flows_off") == 16
    assert ffi.offsetof("struct tas_ctx_hdr", "app_armed") == 64
    assert ffi.offsetof("struct tas_ctx_hdr", "fp_armed") == 128
