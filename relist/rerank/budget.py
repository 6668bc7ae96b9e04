"""Per-request time budgets: skip a piece of work *before* it would overrun, not after.

Work that has started cannot be interrupted cheaply, so the decision is made up front from
what that piece cost on recent requests. One :class:`Budget` is made per request (or per batch
of requests served together) and handed to every stage: list ranking asks it before each
generator runs, LAST before each of its phases, local search before each round. Costs grow with
the size of the work, so :class:`StageCosts` keeps each estimate per unit of size (e.g. lists x
positions) and scales it to the work at hand.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter


class StageCosts:
    """Running estimate of each stage's cost: an exponential moving average of ms per unit of size.

    A stage never measured is assumed free, so the warm-up request of a new model version (which
    runs every stage) is what first fills the estimates. A skipped stage is not measured, so one
    slow spell would keep it skipped for good; the estimate therefore fades with the time since the
    stage last ran (``half_life_s``), and a stage skipped for long is tried again. Fading with time,
    not with the number of skips, means a flood of tiny-budget requests cannot talk a slow stage
    into running. The half-life is short (3 s): under load a stage measured once in a slow spell (a batch
    that shared the cores with the event loop) must be tried again within seconds, or a worker stays on
    the floor for good — measured with wrk at 8 connections (benchmarks/results/serve_load.json): a 30 s
    half-life served 0–37% of the lists from a model stage, 3 s 98–99%.

    Requests served together (relist.serve.batching) cost far less than that many requests alone, so
    the estimates are kept per batch size (rounded up to a power of two). A batch size not measured yet
    is assumed to cost what the nearest measured one costs per call, not per request: optimistic, as
    for a stage never measured, so that it runs once and is measured.
    """

    def __init__(self, smoothing: float = 0.2, half_life_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic):
        self.smoothing, self.half_life_s, self.clock = smoothing, half_life_s, clock
        self._unit_ms: dict[tuple[str, int], tuple[float, float]] = {}  # (stage, rows) -> (ms per unit, when)
        self._lock = threading.Lock()

    def expected_ms(self, stage: str, size: float = 1.0, rows: int = 1) -> float:
        bucket = _bucket(rows)
        measured = [r for (name, r) in self._unit_ms if name == stage]
        if not measured:
            return 0.0
        nearest = bucket if bucket in measured else min(measured, key=lambda r: (abs(math.log2(r / bucket)), -r))
        unit, when = self._unit_ms[(stage, nearest)]
        return unit * size * nearest / bucket * 0.5 ** ((self.clock() - when) / self.half_life_s)

    def record(self, stage: str, size: float, ms: float, rows: int = 1) -> None:
        key = (stage, _bucket(rows))
        unit = ms / max(size, 1.0)
        with self._lock:
            old = self._unit_ms.get(key)
            if old is not None:
                unit = old[0] + self.smoothing * (unit - old[0])
            self._unit_ms[key] = (unit, self.clock())


def _bucket(rows: int) -> int:
    """Batch sizes share an estimate up to the next power of two (1, 2, 4, 8, ...)."""
    return 1 << max(int(rows) - 1, 0).bit_length()


class Budget:
    """A deadline from the moment the work began, what each stage took, and what was skipped for time."""

    def __init__(self, ms: float = math.inf, costs: StageCosts | None = None, rows: int = 1):
        """``rows``: the requests the work is for (a batch served together is costed as one)."""
        self.ms, self.rows = ms, rows
        self.costs = StageCosts() if costs is None else costs
        self.start = perf_counter()
        self.timings_ms: dict[str, float] = {}
        self.skipped: list[str] = []

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.ms)

    def elapsed_ms(self) -> float:
        return (perf_counter() - self.start) * 1e3

    def remaining_ms(self) -> float:
        return self.ms - self.elapsed_ms()

    @property
    def exceeded(self) -> bool:
        """Something was skipped for time, or the deadline has passed."""
        return bool(self.skipped) or self.remaining_ms() < 0

    def affords(self, stage: str, size: float = 1.0, then: tuple[str, float] | None = None) -> bool:
        """Whether ``stage`` is expected to finish in time, and with ``then`` (a stage and its size) also what
        must follow it for its work to count; a refusal is recorded as a skip of ``stage``."""
        expected = self.costs.expected_ms(stage, size, self.rows)
        if then is not None:
            expected += self.costs.expected_ms(*then, self.rows)
        if self.unlimited or expected <= self.remaining_ms():
            return True
        self.skipped.append(stage)
        return False

    @contextmanager
    def stage(self, name: str, size: float = 1.0) -> Iterator[None]:
        """Time a piece of work: its cost estimate and the budget's timings are updated when it ends."""
        start = perf_counter()
        yield
        ms = (perf_counter() - start) * 1e3
        self.timings_ms[name] = self.timings_ms.get(name, 0.0) + ms
        self.costs.record(name, size, ms, self.rows)
