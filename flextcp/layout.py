"""Context region layout, shared by the slow path, the fast path and libtas.

Pure-Python twin of the C function ``tas_ctx_layout`` (flextcp/csrc): the
two must give identical offsets (tests/test_layout.py compares them).

A context region is::

    page 0          struct tas_ctx_hdr
    per core c:     ATX ring (app -> FP), tas_ring_bytes(atx_slots, 32) bytes
                    ARX ring (FP -> app), tas_ring_bytes(arx_slots, 16) bytes
    heap            appflow blocks and flow buffers (allocated by the SP)

Every ring starts on a 4096-byte boundary and ``heap_off`` is the first
4096-aligned offset after the last ring.

The byte offsets of the ``struct tas_ctx_hdr`` and ``struct tas_appflow``
fields are also given here (``HDR_*``, ``AF_*``) so Python code that reads the
region through a memoryview does not need cffi; tests check them against
``ffi.offsetof``.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE = 4096
TAS_MAX_CORES = 16
TAS_ATX_ENTRY_SIZE = 32
TAS_ARX_ENTRY_SIZE = 16
# sizeof(struct tas_ring_hdr): head (64) + tail (64) + slots/entry_size (64).
RING_HDR_BYTES = 192

# struct tas_ctx_hdr field offsets (tas_abi.h).
CTX_HDR_BYTES = 192
HDR_MAGIC = 0
HDR_ABI_VERSION = 4
HDR_REGION_LEN = 8
HDR_CTX_ID = 16
HDR_N_CORES = 20
HDR_ATX_SLOTS = 24
HDR_ARX_SLOTS = 28
HDR_HEAP_OFF = 32
HDR_APP_ARMED = 64
HDR_FP_ARMED = 128  # uint32_t fp_armed[16]

# struct tas_appflow field offsets (tas_abi.h); 64 bytes.
APPFLOW_BYTES = 64
AF_RX_HEAD = 0
AF_TX_ACKED = 8
AF_FLAGS = 16
AF_FLOW_ID = 20
AF_RX_OFF = 24
AF_RX_LEN = 28
AF_TX_OFF = 32
AF_TX_LEN = 36
AF_GEN = 40


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _align(x: int, a: int = PAGE) -> int:
    return (x + a - 1) & ~(a - 1)


def ring_bytes(slots: int, entry_size: int) -> int:
    """Bytes a ring of ``slots`` entries of ``entry_size`` occupies (tas_ring_bytes)."""
    return RING_HDR_BYTES + slots * entry_size


@dataclass(frozen=True)
class Layout:
    atx_off: tuple[int, ...]
    arx_off: tuple[int, ...]
    heap_off: int

    @property
    def n_cores(self) -> int:
        return len(self.atx_off)


def ctx_layout(n_cores: int, atx_slots: int, arx_slots: int) -> Layout:
    """Offsets of the per-core rings and of the heap in a context region.

    Raises ValueError for n_cores outside 1..TAS_MAX_CORES or ring sizes that
    are not powers of two.
    """
    if not 1 <= n_cores <= TAS_MAX_CORES:
        raise ValueError(f"n_cores must be 1..{TAS_MAX_CORES}, got {n_cores}")
    for name, slots in (("atx_slots", atx_slots), ("arx_slots", arx_slots)):
        if not _is_pow2(slots) or slots >= 1 << 31:
            raise ValueError(f"{name} must be a power of two < 2**31, got {slots}")
    atx_len = ring_bytes(atx_slots, TAS_ATX_ENTRY_SIZE)
    arx_len = ring_bytes(arx_slots, TAS_ARX_ENTRY_SIZE)
    off = PAGE  # page 0: struct tas_ctx_hdr
    atx, arx = [], []
    for _ in range(n_cores):
        off = _align(off)
        atx.append(off)
        off += atx_len
        off = _align(off)
        arx.append(off)
        off += arx_len
    return Layout(tuple(atx), tuple(arx), _align(off))
