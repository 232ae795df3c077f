"""Stand-ins for what kernel_slowpath.engine.Engine takes from the running
stack, for tests that drive an engine in-process: a settable microsecond
clock, a fast-path manager whose kicks go nowhere, and an engine over a
stack region of its own (EngineRig)."""

from __future__ import annotations

from flextcp.flowtab import FlowTable
from flextcp.native import lib
from flextcp.ring import Ring
from flextcp.shm import Region
from flextcp.stackmem import stack_layout
from kernel_slowpath import engine as eng

S = 1_000_000  # µs


class Clock:
    """now_us for the engine; tests move ``t`` themselves."""

    def __init__(self) -> None:
        self.t = 5_000 * S

    def __call__(self) -> int:
        return self.t


class FakeFPM:
    """One fast-path core; the tests poll it themselves, so kicks are no-ops."""

    n_cores = 1

    def kick(self, core: int) -> None:
        pass


class EngineRig:
    """An Engine over its own stack region (one fast-path core, nobody
    polling it): ``fp_ktx`` is the fast path's end of the KTX ring, so a
    test sees what the engine asked the fast path to do."""

    def __init__(self, name: str, n_flows: int, kq_slots: int, *, loop=None, local_ip: str = "198.18.0.2",
                 mac: bytes = b"\x02\0\0\0\0\x02") -> None:  # fmt: skip
        entry = lib.TAS_KQ_ENTRY_SIZE
        lay = stack_layout(n_flows, 1, kq_slots)
        self.stack = Region.create(lay.size, name)
        self.ft = FlowTable.create(self.stack, lay.ft_off, n_flows)
        self.ktx = Ring.create(self.stack, lay.ktx_off[0], kq_slots, entry, True)
        self.fp_ktx = Ring.attach(self.stack, lay.ktx_off[0], kq_slots, entry, False)
        self.stats = self.stack.cast("struct tas_fp_stats", lay.stats_off[0])
        self.clock = Clock()
        self.engine = eng.Engine(ft=self.ft, n_flows=n_flows, fpm=FakeFPM(), ktx=[self.ktx], loop=loop,
                                 local_ip=local_ip, prefix=24, gateway=None, mac=mac, now_us=self.clock)  # fmt: skip
        self.engine.core_stats = lambda: [self.stats]
