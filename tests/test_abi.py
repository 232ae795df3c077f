"""Sizes and offsets of the shared-memory ABI (tas_abi.h)."""

from __future__ import annotations

import pytest

from flextcp import flowtab, ring
from flextcp.native import ffi


@pytest.mark.parametrize(
    "ctype,size",
    [
        ("struct tas_flow", 128),
        ("struct tas_flow_cc", 320),
        ("struct tas_flow_snap", 448),
        ("struct tas_ring_hdr", 192),
        ("struct tas_atx", 32),
        ("struct tas_arx", 16),
        ("struct tas_krx", 2048),
        ("struct tas_ktx", 2048),
        ("struct tas_appflow", 64),
        ("struct tas_ft_hdr", 64),
        ("struct tas_cc_news_hdr", 64),
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
    assert off("rx_head") == 64
    assert off("cwnd") == 124
    assert flowtab.FLOW_SIZE == ffi.sizeof("struct tas_flow")
    assert flowtab.SIDE_SIZE == ffi.sizeof("struct tas_flow_cc")


# Which cache line each field is on (tas_abi.h; docs/ARCHITECTURE.md "Shared
# memory").  The record: what every segment needs; the side record: the rest.
FLOW_LINES = {
    0: ["lock", "gen", "status", "flags", "ctx_id", "local_ip", "remote_ip", "local_port", "remote_port",
        "remote_mac", "snd_wscale", "rcv_wscale", "mss", "unacked_segs", "rx_off", "rx_len", "tx_off", "tx_len",
        "appflow_off", "ts_recent"],
    1: ["rx_head", "rx_tail", "tx_head", "tx_una", "tx_nxt", "tx_max", "rx_seq0", "tx_seq0", "snd_wnd", "cwnd"],
}  # fmt: skip
SIDE_LINES = {
    0: ["mode", "max_flight", "ssthresh", "srtt_us", "rttvar_us", "rto_us", "rto_start_us", "snd_wl1", "snd_wl2",
        "dupacks", "rto_backoff", "rexmit_nxt", "pace_rate", "pace_next_us"],
    1: ["rx_adv", "tx_recover", "cnt_acked", "cnt_rexmit", "cnt_rx_segs", "cnt_tx_segs", "last_rx_us",
        "dsack_start", "dsack_end", "cnt_dsack"],
    2: ["cnt_ecn_bytes", "cwr_until", "loss_beta", "cnt_loss", "cnt_ecn_acks", "cnt_ce_rx", "core", "rsvd0",
        "rsvd1"],
    3: ["sb_start", "sb_end", "prior_cwnd", "prior_ssthresh", "rexmit_ts", "undo_retrans", "reord", "reo_mult",
        "cnt_undo", "cnt_tlp"],
    4: ["ooo_start", "ooo_end"],
}  # fmt: skip


@pytest.mark.parametrize("ctype,lines", [("struct tas_flow", FLOW_LINES), ("struct tas_flow_cc", SIDE_LINES)])
def test_flow_cache_line_groups(ctype, lines):
    fields = dict(ffi.typeof(ctype).fields)
    assert sorted(fields) == sorted(f for names in lines.values() for f in names)  # every field placed
    for line, names in lines.items():
        for name in names:
            start = fields[name].offset
            end = start + ffi.sizeof(fields[name].type)
            assert start // 64 == line and (end - 1) // 64 == line, (ctype, name)


def test_flow_snap_is_record_then_side():
    """struct tas_flow_snap (spflow.h) is the two records back to back."""
    snap = dict(ffi.typeof("struct tas_flow_snap").fields)
    rec = ffi.typeof("struct tas_flow").fields
    side = ffi.typeof("struct tas_flow_cc").fields
    assert list(snap) == [n for n, _ in rec] + [n for n, _ in side]
    for base, fields in ((0, rec), (ffi.sizeof("struct tas_flow"), side)):
        for name, fld in fields:
            assert snap[name].offset == base + fld.offset, name
            assert snap[name].type == fld.type, name


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


def test_cc_news_region():
    """The CC news header and bits follow the side records in the flow-table
    region, the header on its own cache line, the words 8-byte aligned, the
    region a multiple of 64 bytes; C and the Python twin agree."""
    from flextcp.native import lib

    assert ffi.offsetof("struct tas_cc_news_hdr", "armed") == 0
    assert lib.TAS_EV_CC_NEWS not in (lib.TAS_EV_FIN_RCVD, lib.TAS_EV_FIN_ACKED, lib.TAS_EV_APP_GONE)
    for n in (1, 64, 65, 4096, 65536):
        off = lib.tas_ft_news_off(n)
        assert off == flowtab.news_off(n) == lib.tas_cc_table_off(n) + n * 320
        assert off % 64 == 0
        assert lib.tas_ft_bytes(n) == flowtab.ft_bytes(n) == -(-(off + 64 + 8 * -(-n // 64)) // 64) * 64
