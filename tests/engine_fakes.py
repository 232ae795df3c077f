"""Stand-ins for what kernel_slowpath.engine.Engine takes from the running
stack, for tests that drive an engine in-process: a settable microsecond
clock and a fast-path manager whose kicks go nowhere."""

from __future__ import annotations

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
