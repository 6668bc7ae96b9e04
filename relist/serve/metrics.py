"""Prometheus metrics of the service: requests by status, latency per stage, fallbacks, model version.

Each app owns its own registry (not prometheus_client's global one), so several
apps in one process (tests) never share counters. Under ``--workers N`` every
worker counts its own requests; with ``PROMETHEUS_MULTIPROC_DIR`` set, the
scrape aggregates all workers (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
import tempfile

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_workers(workers: int) -> None:
    """Before uvicorn starts ``workers`` > 1 processes: a fresh directory where they pool their metrics."""
    if workers > 1 and MULTIPROC_ENV not in os.environ:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="relist-metrics-")


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        r = self.registry
        self.requests = Counter("relist_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("relist_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("relist_stage_seconds", "Pipeline stage latency", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter("relist_fallbacks", "Requests served a fallback because a model failed",
                                 ["endpoint", "stage"], registry=r)
        self.skipped = Counter("relist_budget_skips", "Stages skipped because they would overrun the budget",
                               ["stage"], registry=r)
        self.served_by = Counter("relist_served_lists", "Served lists by the generator that produced them",
                                 ["generator"], registry=r)
        self.degraded = Counter("relist_degraded", "Requests served with a stage skipped for time (the budget), "
                                "by endpoint and the generator that served them", ["endpoint", "generator"],
                                registry=r)
        self.batch_size = Histogram("relist_batch_size", "Requests re-ranked together (dynamic batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.duplicates = Counter("relist_duplicate_candidates", "Candidates left out of /v1/rerank requests "
                                  "because their id came earlier in the request", registry=r)
        self.reloads = Counter("relist_reloads", "Model reload attempts by outcome", ["outcome"], registry=r)
        self.unknown_ids = Counter("relist_unknown_ids", "Request ids the served catalogue does not know (read "
                                   "as the shared unknown row)", ["kind"], registry=r)
        self.version = Gauge("relist_model_version", "1 for the model version being served", ["version"],
                             registry=r, multiprocess_mode="livemax")
        self.refused = Gauge("relist_current_refused", "1 while model_dir/CURRENT names a version that was "
                             "refused (an older, good version is served)", registry=r, multiprocess_mode="livemax")

    def child(self, metric, *labels: str):
        """``metric.labels(*labels)``, looked up once: prometheus_client's lookup takes a lock and builds its
        key on every call, a dozen times per request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_version(self, old: str | None, new: str) -> None:
        """The served version reads 1 and the one it replaced 0 (removing a label would not reach workers)."""
        if old is not None and old != new:
            self.version.labels(old).set(0)
        self.version.labels(new).set(1)

    def set_refused(self, refused_version: str | None) -> None:
        self.refused.set(0 if refused_version is None else 1)

    def observe_result(self, endpoint: str, result) -> None:
        """Record one pipeline result (relist.serve.pipeline.RerankResult)."""
        for stage, ms in result.timings_ms.items():
            if stage != "total":  # "queue": the wait for a pipeline thread
                self.child(self.stage_latency, stage).observe(ms / 1e3)
        for stage in result.skipped:
            self.child(self.skipped, stage).inc()
        if result.fallback:
            self.child(self.fallbacks, endpoint, result.failed_stage or "pipeline").inc()
        elif result.skipped:
            self.child(self.degraded, endpoint, result.generator).inc()
        self.child(self.served_by, result.generator).inc()
        self.batch_size.observe(result.batch)

    def exposition(self) -> bytes:
        if MULTIPROC_ENV in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
