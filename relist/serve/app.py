"""The FastAPI app: HTTP in, pipeline, HTTP out. Thin on purpose.

Guarantees kept here: an invalid request gets 4xx naming the field (422) or
the body (413); a valid one never gets a 5xx (a failing model or anything
else unexpected serves the upstream order with ``fallback: true``, logged and
counted); each response carries the one model version that produced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from time import perf_counter

import anyio
import numpy as np
import torch
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from relist.data.ids import RequestItems, RequestUser
from relist.serve.config import ServeConfig, load_serve_config
from relist.serve.metrics import CONTENT_TYPE, ServeMetrics
from relist.serve.pipeline import Pipeline, RerankResult, UnknownStrategy
from relist.serve.registry import Registry, VersionError
from relist.serve.schemas import (
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    RerankRequest,
    RerankResponse,
    Strategies,
)
from relist.serve.stages import UPSTREAM

log = logging.getLogger(__name__)

ENV_MODEL_DIR = "RELIST_MODEL_DIR"
ENV_CONFIG = "RELIST_SERVE_CONFIG"


def create_app(model_dir: str | Path, config: ServeConfig = ServeConfig(),
               admin_token: str | None = None) -> FastAPI:
    """The service over ``model_dir``; loads CURRENT now (raising if it cannot be served).

    ``admin_token`` defaults to the environment variable ``config.admin_token_env``; without a
    token the admin endpoints do not exist.
    """
    registry = Registry(model_dir)
    metrics = ServeMetrics()
    metrics.set_version(None, registry.pipeline.version)
    admin_token = admin_token or os.environ.get(config.admin_token_env) or None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if config.watch_pointer:
            watcher = asyncio.create_task(_watch_pointer(registry, metrics, config))
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = FastAPI(title="relist", version="1", lifespan=lifespan,
                  description="Whole-list re-ranking and recommendation for e-commerce feeds.")
    app.add_middleware(_LimitBody, max_bytes=config.max_body_bytes)
    app.add_middleware(_CountRequests, metrics=metrics)  # outermost: counts the 413s too
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> dict[str, str]:
        """A model version is loaded and warmed up."""
        return {"status": "ready", "model_version": registry.pipeline.version}

    @app.get("/metrics", tags=["ops"])
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.post("/v1/noop", tags=["ops"])
    async def noop(request: Request) -> dict[str, bool]:
        """Reads the body and does nothing: the HTTP floor that load benchmarks compare against."""
        await request.body()
        return {"ok": True}

    @app.get("/v1/strategies", response_model=Strategies, tags=["serving"])
    def strategies() -> Strategies:
        pipeline = registry.pipeline
        return Strategies(model_version=pipeline.version, strategies=pipeline.strategies,
                          scorer=pipeline.scorer.name)

    # CPU-bound pipelines run in at most this many threads; more would only contend for the same cores.
    limiter = anyio.CapacityLimiter(config.pipeline_threads)

    @app.post("/v1/rerank", response_model=RerankResponse, tags=["serving"])
    async def rerank(body: RerankRequest) -> RerankResponse:
        """Re-rank the candidates of one request into the best list the time budget allows."""
        if len(body.candidates) > config.max_candidates:
            raise _field_error(("body", "candidates"), f"at most {config.max_candidates} candidates per "
                                                       f"request (got {len(body.candidates)})", "too_long")
        pipeline = registry.pipeline  # one read: the whole request runs on this version
        request_items = RequestItems.of(pipeline.store.ids.items, [c.id for c in body.candidates])  # raw -> internal
        ids, user = request_items.internal, _internal_user(pipeline, body.user, metrics, request_items.unknown)
        scored = body.candidates[0].score is not None  # the schema checked: all or none
        scores = np.array([c.score for c in body.candidates], np.float32) if scored else None

        def attempt(budget_ms: float) -> RerankResult:
            cates, shops = [c.category for c in body.candidates], [c.shop for c in body.candidates]
            inp = pipeline.request_input(user, ids, scores, body.n, cates, shops, body.request_id)
            return pipeline.rerank(inp, body.strategy, budget_ms)

        result = await _serve("rerank", pipeline, attempt, body.budget_ms or config.default_budget_ms,
                              floor=(ids[:body.n], UPSTREAM), metrics=metrics, limiter=limiter)
        return RerankResponse(**_response_fields(pipeline, body.request_id, result, request_items))

    @app.post("/v1/recommend", response_model=RecommendResponse, tags=["serving"])
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """The whole pipeline for a user: recall from the served catalogue, ranking, then re-ranking."""
        pipeline = registry.pipeline
        considered = 0
        user = _internal_user(pipeline, body.user, metrics)

        def attempt(budget_ms: float) -> RerankResult:
            nonlocal considered
            result, considered = pipeline.recommend(user, body.n, body.strategy, budget_ms,
                                                    body.request_id)
            return result

        popular = np.argsort(-pipeline.popularity[1:], kind="stable")[:body.n] + 1
        result = await _serve("recommend", pipeline, attempt, body.budget_ms or config.default_budget_ms,
                              floor=(popular, "popular"), metrics=metrics, limiter=limiter)
        return RecommendResponse(**_response_fields(pipeline, body.request_id, result),
                                 candidates_considered=considered)

    if admin_token:
        def check_token(authorization: str = Header("", description="Bearer <admin token>")) -> None:
            given = authorization.removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), admin_token.encode()):
                raise HTTPException(401, "missing or wrong admin token ('Authorization: Bearer <token>')")

        @app.post("/admin/reload", response_model=ReloadResponse, tags=["admin"],
                  dependencies=[Depends(check_token)])
        def reload(body: ReloadRequest | None = None) -> ReloadResponse:
            """Load a version (default: the one CURRENT names) and swap it in; a bad one is refused (409)."""
            try:
                old, new = registry.reload(body.version if body else None)
            except VersionError as err:
                metrics.reloads.labels("refused").inc()
                raise HTTPException(409, f"version refused, still serving "
                                         f"{registry.pipeline.version}: {err}") from err
            metrics.reloads.labels("ok").inc()
            metrics.set_version(old.version, new.version)
            return ReloadResponse(model_version=new.version, previous_version=old.version,
                                  changed=old is not new)

    return app


async def _serve(endpoint: str, pipeline: Pipeline, attempt: Callable[[float], RerankResult],
                 budget_ms: float, floor: tuple[np.ndarray, str], metrics: ServeMetrics,
                 limiter: anyio.CapacityLimiter) -> RerankResult:
    """Run ``attempt(budget left)`` in a pipeline thread; the wait for one counts against the budget (an
    overloaded server degrades to cheaper lists instead of falling behind). An unknown strategy is the
    client's error (422); any other error serves ``floor`` (items, generator name) flagged as a fallback:
    never a 5xx for a valid request."""
    arrived = perf_counter()

    def run() -> RerankResult:
        waited_ms = (perf_counter() - arrived) * 1e3
        result = attempt(max(budget_ms - waited_ms, 0.0))
        total_ms = (perf_counter() - arrived) * 1e3
        result.timings_ms = {"queue": waited_ms, **result.timings_ms, "total": total_ms}
        return result

    try:
        result = await anyio.to_thread.run_sync(run, limiter=limiter)
    except UnknownStrategy as err:
        raise _field_error(("body", "strategy"), str(err), "unknown_strategy") from None
    except Exception as err:
        log.exception("%s on model version %s failed", endpoint, pipeline.version)
        result = RerankResult(floor[0], None, floor[1], fallback=True, error=f"{type(err).__name__}: {err}")
    metrics.observe_result(endpoint, result)
    return result


def _internal_user(pipeline: Pipeline, user, metrics: ServeMetrics, unknown_items: int = 0) -> RequestUser:
    """The request's user in internal ids; ids the served catalogue does not know are counted."""
    internal = RequestUser.of(pipeline.store.ids, user)
    metrics.unknown_ids.labels("item").inc(unknown_items)
    if user.id is not None and not internal.known:
        metrics.unknown_ids.labels("user").inc()
    return internal


def _response_fields(pipeline: Pipeline, request_id: int | None, result: RerankResult,
                     request_items: RequestItems | None = None) -> dict:
    items = result.items[result.items > 0]
    raw = (request_items.to_raw(pipeline.store.ids.items, items) if request_items is not None
           else pipeline.store.ids.items.to_raw(items))  # internal -> the catalogue's own ids
    return dict(request_id=request_id, items=raw.tolist(), list_reward=result.list_reward,
                scorer=pipeline.scorer.name, generator=result.generator, model_version=pipeline.version,
                fallback=result.fallback, breaks_rules=result.breaks_rules,
                budget_exceeded=result.budget_exceeded, skipped_stages=result.skipped,
                timings_ms={k: round(v, 4) for k, v in result.timings_ms.items()},
                unknown_items=int((~pipeline.store.known_items(items)).sum()))


def _field_error(loc: tuple[str, ...], msg: str, kind: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg}])


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each wrong field; the offending input is not echoed (it may be huge or not JSON-able)."""
    return JSONResponse({"detail": [_located(e) for e in exc.errors()]}, status_code=422)


def _located(error: dict) -> dict:
    loc = list(error["loc"])
    if error["type"] == "json_invalid":  # loc holds the character position, not a field
        return {"loc": ["body"], "field": "body", "msg": f"{error['msg']} at character {loc[-1]}",
                "type": error["type"]}
    field = ".".join(map(str, loc[1:])) or "body"
    return {"loc": loc, "field": field, "msg": error["msg"], "type": error["type"]}


async def _watch_pointer(registry: Registry, metrics: ServeMetrics, config: ServeConfig) -> None:
    """Follow model_dir/CURRENT: how a new version reaches every worker and replica."""
    while True:
        await asyncio.sleep(config.watch_interval_s)
        try:
            swapped = await asyncio.to_thread(registry.follow_pointer)
        except VersionError as err:
            log.error("refused new model version: %s", err)
            metrics.reloads.labels("refused").inc()
            continue
        except Exception:  # the watcher must outlive any surprise
            log.exception("watching %s failed", registry.model_dir)
            continue
        if swapped is not None:
            metrics.reloads.labels("ok").inc()
            metrics.set_version(swapped[0].version, swapped[1].version)


class _LimitBody:
    """413 for bodies over ``max_bytes``: by Content-Length up front, else while the body streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"detail": self._message(int(length))}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message(received))
            return message

        return await self.app(scope, limited, send)

    def _message(self, size: int) -> list[dict]:
        return [{"loc": ["body"], "field": "body", "type": "too_large",
                 "msg": f"request body of {size} bytes is over the limit of {self.max_bytes} bytes"}]


class _CountRequests:
    """Requests by endpoint and status, and their latency (known routes only, to bound label values)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics
        self.routes = {"/v1/rerank": "rerank", "/v1/recommend": "recommend", "/v1/noop": "noop",
                       "/admin/reload": "reload"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = self.routes.get(scope["path"], "other")
        start = perf_counter()
        status = 500

        async def record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(perf_counter() - start)


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: model dir and config path come from the environment."""
    config = load_serve_config(os.environ.get(ENV_CONFIG))
    torch.set_num_threads(config.torch_threads)
    logging.basicConfig(level=logging.INFO)
    return create_app(os.environ[ENV_MODEL_DIR], config)
