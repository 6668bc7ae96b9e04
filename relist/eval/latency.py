"""Single-request latency of policies: what a server pays per request, measured, never asserted."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from relist.data.requests import Requests


def request_timings_ms(call: Callable[[Requests], object], requests: Requests, warmup: int = 5) -> np.ndarray:
    """Milliseconds of ``call`` on each request alone (batch of one), after ``warmup`` untimed calls."""
    for r in range(min(warmup, len(requests))):
        call(requests[r:r + 1])
    out = np.empty(len(requests))
    for r in range(len(requests)):
        start = time.perf_counter()
        call(requests[r:r + 1])
        out[r] = (time.perf_counter() - start) * 1e3
    return out


def summary_ms(timings: np.ndarray) -> dict[str, float]:
    return {"median_ms": float(np.median(timings)), "p99_ms": float(np.percentile(timings, 99)),
            "mean_ms": float(timings.mean()), "requests": int(len(timings))}
