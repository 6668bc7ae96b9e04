"""Single-request latency of policies: what a server pays per request, measured, never asserted."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from relist.data.requests import Requests


def one_by_one(requests: Requests, n: int = 0) -> list[Requests]:
    """Each request as a batch of one, as a server sees it: its own candidates, padded to no more than the
    ``n`` slots a policy fills (not to the longest request of the batch)."""
    return [requests[r:r + 1].trimmed(n) for r in range(len(requests))]


def request_timings_ms(call: Callable[[Requests], object], singles: Sequence[Requests], repeats: int | None = None,
                       warmup: int = 5) -> np.ndarray:
    """Milliseconds per ``call`` on single-request batches, after ``warmup`` untimed calls.

    ``repeats`` calls cycle over ``singles`` (default: each once).
    """
    repeats = len(singles) if repeats is None else repeats
    for i in range(warmup):
        call(singles[i % len(singles)])
    out = np.empty(repeats)
    for i in range(repeats):
        request = singles[i % len(singles)]
        start = time.perf_counter()
        call(request)
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def summary_ms(timings: np.ndarray) -> dict[str, float]:
    return {"median_ms": float(np.median(timings)), "p99_ms": float(np.percentile(timings, 99)),
            "mean_ms": float(timings.mean()), "requests": int(len(timings))}
