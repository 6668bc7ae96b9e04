"""Dynamic batching: concurrent /v1/rerank requests of one worker re-ranked as one batch.

Serving a request alone is dominated by per-call overhead (model calls, the slot loops), so eight
requests re-ranked together cost little more than one. Under load a lone-request server queues:
at 8 connections a request waits for the seven ahead of it, its budget is spent in the queue and it
gets the upstream order. Here a request joins the pending ones; a drainer (at most
``pipeline_threads`` at once, as many as the cores the worker may use) waits ``wait_ms`` for company,
then re-ranks up to ``max_batch`` pending requests of the same model version and strategy in one
:meth:`~relist.serve.pipeline.Pipeline.rerank_batch`, and answers each. While a batch runs, the next
one gathers, so the batch grows with the load. Each request keeps its own deadline: the pipeline serves
together those whose tightest deadline still affords the model (Pipeline.rerank_batch), and each response
records its own queue time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter

import anyio

from relist.serve.pipeline import Pipeline, RerankInput, RerankResult


@dataclass
class _Pending:
    pipeline: Pipeline
    make_input: Callable[[], RerankInput]
    strategy: str | None
    deadline: float  # perf_counter() seconds
    arrived: float
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(self, limiter: anyio.CapacityLimiter, max_batch: int = 16, wait_ms: float = 1.0):
        self.limiter, self.max_batch, self.wait_s = limiter, max_batch, wait_ms / 1e3
        self._pending: list[_Pending] = []
        self._drainers = 0

    async def rerank(self, pipeline: Pipeline, make_input: Callable[[], RerankInput], strategy: str | None,
                     budget_ms: float) -> RerankResult:
        """The request's result, re-ranked with whatever else is pending; raises what its batch raised."""
        now = perf_counter()
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(pipeline, make_input, strategy, now + budget_ms / 1e3, now, future))
        if self._drainers < self.limiter.total_tokens:
            self._drainers += 1
            asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            if self.wait_s > 0:
                await asyncio.sleep(self.wait_s)
            while self._pending:
                batch = self._take()
                try:
                    outcomes = await anyio.to_thread.run_sync(_run, batch, limiter=self.limiter)
                except Exception as err:  # never leave a request waiting
                    outcomes = [err] * len(batch)
                for item, outcome in zip(batch, outcomes, strict=True):
                    if item.future.done():  # the client is gone
                        continue
                    if isinstance(outcome, BaseException):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
        finally:
            self._drainers -= 1

    def _take(self) -> list[_Pending]:
        """Up to ``max_batch`` pending requests for the first one's version and strategy, in arrival order."""
        first = self._pending[0]
        batch, rest = [], []
        for item in self._pending:
            same = item.pipeline is first.pipeline and item.strategy == first.strategy
            (batch if same and len(batch) < self.max_batch else rest).append(item)
        self._pending = rest
        return batch


def _run(batch: list[_Pending]) -> list[RerankResult | BaseException]:
    """Re-rank a batch in a pipeline thread; a request whose input fails gets its own error."""
    start = perf_counter()
    inputs, outcomes = [], []
    for item in batch:
        try:
            inputs.append(item.make_input())
            outcomes.append(None)
        except Exception as err:
            outcomes.append(err)
    ready = [item for item, outcome in zip(batch, outcomes, strict=True) if outcome is None]
    if ready:
        now = perf_counter()
        budget_ms = [max(item.deadline - now, 0.0) * 1e3 for item in ready]
        try:
            results = iter(ready[0].pipeline.rerank_batch(inputs, ready[0].strategy, budget_ms))
        except Exception as err:
            results = iter([err] * len(ready))
        outcomes = [next(results) if outcome is None else outcome for outcome in outcomes]
    end = perf_counter()
    for item, outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, RerankResult):
            outcome.timings_ms = {"queue": (start - item.arrived) * 1e3, **outcome.timings_ms,
                                  "total": (end - item.arrived) * 1e3}
    return outcomes
