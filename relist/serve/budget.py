"""Per-request time budgets: skip a stage *before* it would overrun, not after.

A stage that has started cannot be interrupted cheaply, so the decision is
made up front from what the stage cost on recent requests. Costs grow with
the size of the request, so the estimate is kept per unit of ``m × n``
(candidates × list length) and scaled to the request at hand.
"""

from __future__ import annotations

import threading
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
    """Running estimate of each stage's cost (an exponential moving average of ms per m·n).

    A stage never measured is assumed free, so the warm-up request of a new
    model version (which runs every stage) is what first fills the estimates.
    """

    def __init__(self, smoothing: float = 0.2):
        self.smoothing = smoothing
        self._unit_ms: dict[str, float] = {}
        self._lock = threading.Lock()

    def expected_ms(self, stage: str, m: int, n: int) -> float:
        return self._unit_ms.get(stage, 0.0) * m * n

    def record(self, stage: str, m: int, n: int, ms: float) -> None:
        unit = ms / max(m * n, 1)
        with self._lock:
            old = self._unit_ms.get(stage)
            self._unit_ms[stage] = unit if old is None else old + self.smoothing * (unit - old)
