"""Layout of the stack-private shared region (slow path + fast path only).

One memfd holds the flow table (with the per-flow side records), then per fast-path core its KRX ring
(FP -> SP), KTX ring (SP -> FP) and counters.  Apps never get this fd.
"""

from __future__ import annotations

from dataclasses import dataclass

from flextcp.native import ffi, lib

PAGE = 4096


def _align(v: int, a: int = PAGE) -> int:
    return (v + a - 1) & ~(a - 1)


@dataclass(frozen=True)
class StackLayout:
    n_flows: int
    n_cores: int
    kq_slots: int
    ft_off: int
    ft_len: int
    krx_off: tuple[int, ...]
    ktx_off: tuple[int, ...]
    stats_off: tuple[int, ...]
    size: int


def stack_layout(n_flows: int, n_cores: int, kq_slots: int) -> StackLayout:
    # the flow table, its hash, then the side records (struct tas_flow_cc
    # per flow, counted by tas_ft_bytes; docs/ARCHITECTURE.md)
    ft_len = int(lib.tas_ft_cc_bytes(n_flows))
    off = _align(ft_len)
    kq = int(lib.tas_ring_bytes(kq_slots, lib.TAS_KQ_ENTRY_SIZE))
    stats = ffi.sizeof("struct tas_fp_stats")
    krx, ktx, st = [], [], []
    for _ in range(n_cores):
        krx.append(off)
        off = _align(off + kq)
        ktx.append(off)
        off = _align(off + kq)
        st.append(off)
        off = _align(off + stats)
    return StackLayout(n_flows, n_cores, kq_slots, 0, ft_len, tuple(krx), tuple(ktx), tuple(st), off)
