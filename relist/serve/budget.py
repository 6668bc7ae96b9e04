"""Per-request time budgets: skip a stage *before* it would overrun, not after.

A stage that has started cannot be interrupted cheaply, so the decision is
made up front from what the stage cost on recent requests. Costs grow with
the size of the request, so the estimate is kept per unit of ``m × n``
(candidates × list length) and scaled to the request at hand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from time import perf_counter


class Budget:
    """A deadline measured from the moment the request reached the pipeline."""

    def __init__(self, ms: float):
        self.ms = ms
        self.start = perf_counter()

    def elapsed_ms(self) -> float:
        return (perf_counter() - self.start) * 1e3

    def remaining_ms(self) -> float:
        return self.ms - self.elapsed_ms()

    def affords(self, expected_ms: float) -> bool:
        return expected_ms <= self.remaining_ms()


class StageCosts:
    """Running estimate of each stage's cost: an exponential moving average of ms per m·n.

    A stage never measured is assumed free, so the warm-up request of a new model
    version (which runs every stage) is what first fills the estimates. A skipped
    stage is not measured, so one slow spell would keep it skipped for good; the
    estimate therefore fades with the time since the stage last ran (``half_life_s``),
    and a stage skipped for long is tried again. Fading with time, not with the number
    of skips, means a flood of tiny-budget requests cannot talk a slow stage into running.
    """

    def __init__(self, smoothing: float = 0.2, half_life_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.smoothing, self.half_life_s, self.clock = smoothing, half_life_s, clock
        self._unit_ms: dict[str, tuple[float, float]] = {}  # stage -> (ms per m·n, when last measured)
        self._lock = threading.Lock()

    def expected_ms(self, stage: str, m: int, n: int) -> float:
        unit, measured = self._unit_ms.get(stage, (0.0, 0.0))
        return unit * m * n * 0.5 ** ((self.clock() - measured) / self.half_life_s)

    def record(self, stage: str, m: int, n: int, ms: float) -> None:
        unit = ms / max(m * n, 1)
        with self._lock:
            old = self._unit_ms.get(stage)
            if old is not None:
                unit = old[0] + self.smoothing * (unit - old[0])
            self._unit_ms[stage] = (unit, self.clock())
