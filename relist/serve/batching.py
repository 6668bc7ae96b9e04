"""Dynamic batching: concurrent /v1/rerank requests of one worker re-ranked as one batch.

Serving a request alone is dominated by per-call overhead (model calls, the slot loops), so eight
requests re-ranked together cost little more than one. Under load a lone-request server queues:
at 8 connections a request waits for the seven ahead of it, its budget is spent in the queue and it
gets the upstream order. Here a request joins a queue that ``threads`` long-lived pipeline threads (as
many as the cores the worker may use) serve: a thread takes the first request, waits until ``wait_ms``
after its arrival for company, then re-ranks up to ``max_batch`` queued requests, those of one model
version and strategy in one :meth:`~relist.serve.pipeline.Pipeline.rerank_batch`, and answers each.
While a batch runs, the next one gathers, so the batch grows with the load. Each request keeps its own
deadline: the pipeline serves together those whose tightest deadline still affords the model
(Pipeline.rerank_batch), and each response records its own queue time. A /v1/recommend request joins the
same batches: its input is made in the pipeline thread (recall and ranking, Pipeline.recommend_input, one
request at a time) and its candidates are re-ranked with the others, so the worker never runs more pipelines
at once than it has threads.

The threads live as long as the app: handing a batch to a fresh thread-pool call and sleeping on the
event loop for company cost the event loop ~0.25 ms per batch, as much as parsing a request.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter

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
    def __init__(self, threads: int = 1, max_batch: int = 16, wait_ms: float = 1.0):
        self.threads, self.max_batch, self.wait_s = threads, max_batch, wait_ms / 1e3
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._running: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def rerank(self, pipeline: Pipeline, make_input: Callable[[], RerankInput], strategy: str | None,
                     budget_ms: float) -> RerankResult:
        """The request's result, re-ranked with whatever else is queued; raises what its batch raised."""
        now = perf_counter()
        future = asyncio.get_running_loop().create_future()
        self._put(_Pending(pipeline, make_input, strategy, now + budget_ms / 1e3, now, future))
        return await future

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the threads once the work queued before this call is done."""
        with self._lock:
            running, self._running = self._running, []
        for _ in running:
            self._queue.put(None)
        for thread in running:
            thread.join(timeout_s)

    def _put(self, item: _Pending) -> None:
        if len(self._running) < self.threads:  # started on first use: in the process that serves
            with self._lock:
                while len(self._running) < self.threads:
                    thread = threading.Thread(target=self._serve, name=f"relist-pipeline-{len(self._running)}",
                                              daemon=True)
                    thread.start()
                    self._running.append(thread)
        self._queue.put(item)

    def _serve(self) -> None:
        while (first := self._queue.get()) is not None:
            work = [first]
            until = first.arrived + self.wait_s
            while len(work) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(until - perf_counter(), 0.0))
                except queue.Empty:
                    break
                if item is None:  # closing: served after this batch
                    self._queue.put(None)
                    break
                work.append(item)
            self._do(work)

    def _do(self, work: list[_Pending]) -> None:
        """Each (version, strategy) group of the requests as one batch, in arrival order."""
        groups: dict[tuple[int, str | None], list[_Pending]] = {}
        for item in work:
            groups.setdefault((id(item.pipeline), item.strategy), []).append(item)
        for batch in groups.values():
            try:
                outcomes = _run(batch)
            except Exception as err:  # never leave a request waiting
                outcomes = [err] * len(batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                _settle(item.future, outcome)


def _settle(future: asyncio.Future, outcome: object) -> None:
    """Answer ``future`` on its own event loop (from a pipeline thread)."""
    def settle() -> None:
        if future.done():  # the client is gone
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    try:
        future.get_loop().call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits for the answer
        pass


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
