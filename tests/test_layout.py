"""flextcp.layout.ctx_layout vs the C tas_ctx_layout (once it exists)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flextcp import layout
from flextcp.layout import PAGE, ctx_layout, ring_bytes

try:
    from flextcp.native import ffi, lib  # type: ignore[attr-defined]
except Exception:  # native module not built yet
    ffi = lib = None

pow2 = st.integers(0, 16).map(lambda k: 1 << k)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 16), atx=pow2, arx=pow2)
def test_layout_properties(n, atx, arx):
    lay = ctx_layout(n, atx, arx)
    assert lay.n_cores == n
    spans = [(PAGE * 0, PAGE)]
    for c in range(n):
        spans.append((lay.atx_off[c], lay.atx_off[c] + ring_bytes(atx, 32)))
        spans.append((lay.arx_off[c], lay.arx_off[c] + ring_bytes(arx, 16)))
    for (s, e), (s2, _) in zip(spans, spans[1:], strict=False):
        assert s % PAGE == 0 and e <= s2
    assert lay.heap_off % PAGE == 0 and lay.heap_off >= spans[-1][1]
    assert lay.heap_off - spans[-1][1] < PAGE


def test_layout_small_example():
    lay = ctx_layout(2, 64, 128)
    # 192 + 64*32 = 2240 and 192 + 128*16 = 2240 bytes: one page each
    assert lay.atx_off == (4096, 12288)
    assert lay.arx_off == (8192, 16384)
    assert lay.heap_off == 20480


@pytest.mark.parametrize("args", [(0, 64, 64), (17, 64, 64), (1, 63, 64), (1, 64, 0)])
def test_layout_rejects(args):
    with pytest.raises(ValueError):
        ctx_layout(*args)


def test_header_offsets_match_abi():
    if ffi is None:
        pytest.skip("flextcp.native not available")
    assert ffi.sizeof("struct tas_ctx_hdr") == layout.CTX_HDR_BYTES
    assert ffi.sizeof("struct tas_ring_hdr") == layout.RING_HDR_BYTES
    assert ffi.sizeof("struct tas_appflow") == layout.APPFLOW_BYTES
    for name, off in [
        ("magic", layout.HDR_MAGIC),
        ("abi_version", layout.HDR_ABI_VERSION),
        ("region_len", layout.HDR_REGION_LEN),
        ("ctx_id", layout.HDR_CTX_ID),
        ("n_cores", layout.HDR_N_CORES),
        ("atx_slots", layout.HDR_ATX_SLOTS),
        ("arx_slots", layout.HDR_ARX_SLOTS),
        ("heap_off", layout.HDR_HEAP_OFF),
        ("app_armed", layout.HDR_APP_ARMED),
        ("fp_armed", layout.HDR_FP_ARMED),
    ]:
        assert ffi.offsetof("struct tas_ctx_hdr", name) == off, name
    for name, off in [
        ("rx_head", layout.AF_RX_HEAD),
        ("tx_acked", layout.AF_TX_ACKED),
        ("flags", layout.AF_FLAGS),
        ("flow_id", layout.AF_FLOW_ID),
        ("rx_off", layout.AF_RX_OFF),
        ("rx_len", layout.AF_RX_LEN),
        ("tx_off", layout.AF_TX_OFF),
        ("tx_len", layout.AF_TX_LEN),
        ("gen", layout.AF_GEN),
    ]:
        assert ffi.offsetof("struct tas_appflow", name) == off, name


@settings(max_examples=50, deadline=None)
@given(slots=pow2, es=st.sampled_from([16, 32, 2048]))
def test_ring_bytes_matches_c(slots, es):
    if lib is None or not hasattr(lib, "tas_ring_bytes"):
        pytest.skip("lib.tas_ring_bytes not available")
    assert lib.tas_ring_bytes(slots, es) == ring_bytes(slots, es)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 16), atx=pow2, arx=pow2)
def test_layout_matches_c(n, atx, arx):
    if lib is None or not hasattr(lib, "tas_ctx_layout"):
        pytest.skip("lib.tas_ctx_layout not available yet")
    out = ffi.new("struct tas_ctx_layout *")
    lib.tas_ctx_layout(n, atx, arx, out)
    lay = ctx_layout(n, atx, arx)
    assert out.heap_off == lay.heap_off
    assert [out.atx_off[i] for i in range(n)] == list(lay.atx_off)
    assert [out.arx_off[i] for i in range(n)] == list(lay.arx_off)
