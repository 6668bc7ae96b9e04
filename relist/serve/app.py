"""The FastAPI app: HTTP in, pipeline, HTTP out. Thin on purpose.

Guarantees kept here: an invalid request gets a 4xx whose body names what is wrong, in one
shape for every error (``{"detail": [{"loc", "field", "msg", "type"}]}``): 422 for a field,
400 for a body that is not UTF-8 JSON, 413 for a body over the limit, 415 for a body not
sent as JSON, 401 for the admin token, 404/409 for a version that is missing/refused. A valid
request never gets a 5xx: a failing model, a non-finite list reward or anything else
unexpected serves the upstream order with ``fallback: true``, logged and counted. Each
response carries the one model version that produced it. The OpenAPI schema says what the
served version accepts (its strategies, the candidate cap) and documents every status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import TypeVar

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from relist.data.ids import RequestItems, RequestUser
from relist.serve.batching import Batcher
from relist.serve.config import ServeConfig, load_serve_config
from relist.serve.metrics import CONTENT_TYPE, ServeMetrics
from relist.serve.pipeline import UPSTREAM, Pipeline, RerankInput, RerankResult, UnknownStrategy
from relist.serve.registry import Registry, UnknownVersion, VersionError
from relist.serve.schemas import (
    ErrorResponse,
    Readiness,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    RerankRequest,
    RerankResponse,
    Strategies,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("relist.access")
Body = TypeVar("Body", bound=BaseModel)  # a request body model (_parse)

ENV_MODEL_DIR = "RELIST_MODEL_DIR"
ENV_CONFIG = "RELIST_SERVE_CONFIG"

JSON_BODY_PATHS = frozenset({"/v1/rerank", "/v1/recommend", "/admin/reload"})  # POST bodies parsed as JSON
CLIENT_CLOSED = 499  # a client that went away before its body arrived (nginx's code; nobody receives it)

ERROR_DESCRIPTIONS = {
    400: "the body is not UTF-8 JSON, or nests too deeply to parse",
    401: "missing or wrong admin token (`Authorization: Bearer <token>`)",
    404: "no such model version",
    408: "the request's headers or body did not arrive in time (the connection is then closed)",
    409: "the version is refused (checksums, weights or smoke request); the served version stays",
    413: "the body is over the server's limit",
    415: "a body not sent with `Content-Type: application/json`",
    422: "a field is invalid; `field` names it",
    503: "the server holds its cap of open connections; retry later",
}


def _errors(*codes: int) -> dict[int | str, dict]:
    return {code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def create_app(model_dir: str | Path, config: ServeConfig = ServeConfig(),
               admin_token: str | None = None) -> FastAPI:
    """The service over ``model_dir``; loads CURRENT now (or the last good version, loudly, when CURRENT's is
    refused; raising when neither can be served).

    ``admin_token`` defaults to the environment variable ``config.admin_token_env``; without a
    token the admin endpoints do not exist.
    """
    registry = Registry(model_dir)
    metrics = ServeMetrics()
    metrics.set_version(None, registry.pipeline.version)
    metrics.set_refused(registry.refused_version)
    admin_token = admin_token or os.environ.get(config.admin_token_env) or None
    # CPU-bound pipelines run in this many threads; more would only contend for the same cores. Concurrent
    # /v1/rerank requests are re-ranked together there.
    batcher = Batcher(config.pipeline_threads, config.max_batch, config.batch_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if config.watch_pointer:
            watcher = asyncio.create_task(_watch_pointer(registry, metrics, config))
        yield
        batcher.close()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = FastAPI(title="relist", version="1", lifespan=lifespan, responses=_errors(408, 503),
                  description="Whole-list re-ranking and recommendation for e-commerce feeds.")
    app.add_middleware(_GuardBody, max_bytes=config.max_body_bytes)
    app.add_middleware(_Observe, metrics=metrics, sample=config.access_log_sample)  # outermost: sees 413/415
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.openapi = _served_openapi(app, registry, config)
    app.state.registry = registry

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["ops"])
    def readyz() -> Readiness:
        """A model version is loaded and warmed up; ``refused_version`` is set while CURRENT names a refused one."""
        return Readiness(status="ready", model_version=registry.pipeline.version,
                         refused_version=registry.refused_version)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    def prometheus() -> Response:
        """Prometheus text exposition (requests, latency per stage, fallbacks, reloads, model version)."""
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

    body_errors = _errors(400, 413, 415, 422)

    @app.post("/v1/rerank", response_model=RerankResponse, tags=["serving"], responses=body_errors,
              openapi_extra=_json_body(RerankRequest))
    async def rerank(request: Request) -> RerankResponse:
        """Re-rank the candidates of one request into the best list the time budget allows."""
        body = _parse(RerankRequest, await request.body())
        if len(body.candidates) > config.max_candidates:
            raise _field_error(("body", "candidates"), f"at most {config.max_candidates} candidates per "
                                                       f"request (got {len(body.candidates)})", "too_long")
        pipeline = registry.pipeline  # one read: the whole request runs on this version
        candidates, repeats = body.unique_candidates()
        if repeats:
            metrics.duplicates.inc(repeats)
        request_items = RequestItems.of(pipeline.store.ids.items, [c.id for c in candidates])  # raw -> internal
        ids, user = request_items.internal, _internal_user(pipeline, body.user, metrics, request_items.unknown)
        scored = candidates[0].score is not None  # the schema checked: all or none
        scores = np.array([c.score for c in candidates], np.float32) if scored else None

        def make_input() -> RerankInput:
            cates, shops = [c.category for c in candidates], [c.shop for c in candidates]
            return pipeline.request_input(user, ids, scores, body.n, cates, shops, body.request_id,
                                          body.objective_of())

        budget_ms = body.budget_ms or config.default_budget_ms
        result = await _serve("rerank", pipeline, lambda: batcher.rerank(pipeline, make_input, body.strategy,
                                                                         budget_ms),
                              floor=(ids[:body.n], UPSTREAM), metrics=metrics)
        return RerankResponse(**_response_fields(pipeline, body.request_id, result, request_items),
                              duplicate_candidates=repeats)

    @app.post("/v1/recommend", response_model=RecommendResponse, tags=["serving"], responses=body_errors,
              openapi_extra=_json_body(RecommendRequest))
    async def recommend(request: Request) -> RecommendResponse:
        """The whole pipeline for a user: recall from the served catalogue, ranking, then re-ranking."""
        body = _parse(RecommendRequest, await request.body())
        pipeline = registry.pipeline
        user = _internal_user(pipeline, body.user, metrics)
        budget_ms = body.budget_ms or config.default_budget_ms
        deadline = perf_counter() + budget_ms / 1e3
        considered = 0

        def make_input() -> RerankInput:  # in a pipeline thread; the candidates are re-ranked in a batch
            nonlocal considered
            inp = pipeline.recommend_input(user, body.n, (deadline - perf_counter()) * 1e3, body.request_id,
                                           body.objective_of())
            considered = inp.m
            return inp

        popular = pipeline.popular[:body.n]
        result = await _serve("recommend", pipeline, lambda: batcher.rerank(pipeline, make_input, body.strategy,
                                                                            budget_ms),
                              floor=(popular, "popular"), metrics=metrics)
        return RecommendResponse(**_response_fields(pipeline, body.request_id, result),
                                 candidates_considered=considered)

    if admin_token:
        bearer = HTTPBearer(auto_error=False, description=f"the admin token (environment variable "
                                                          f"{config.admin_token_env})")

        def check_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            given = credentials.credentials if credentials is not None else ""
            if not hmac.compare_digest(given.encode(), admin_token.encode()):
                raise HTTPException(401, _detail(("header", "authorization"), "missing or wrong admin token "
                                                 "('Authorization: Bearer <token>')", "unauthorized"),
                                    headers={"WWW-Authenticate": "Bearer"})

        @app.post("/admin/reload", response_model=ReloadResponse, tags=["admin"],
                  dependencies=[Depends(check_token)], responses=_errors(400, 401, 404, 409, 413, 415, 422))
        def reload(body: ReloadRequest | None = None) -> ReloadResponse:
            """Load a version (default: the one CURRENT names) and swap it in; a bad one is refused (409)."""
            try:
                old, new = registry.reload(body.version if body else None)
            except VersionError as err:
                metrics.reloads.labels("refused").inc()
                status, kind = (404, "unknown_version") if isinstance(err, UnknownVersion) else (409, "refused")
                raise HTTPException(status, _detail(("body", "version"), f"version refused, still serving "
                                                    f"{registry.pipeline.version}: "
                                                    f"{_public(err, registry.model_dir)}", kind)) from err
            metrics.reloads.labels("ok").inc()
            metrics.set_version(old.version, new.version)
            metrics.set_refused(registry.refused_version)
            return ReloadResponse(model_version=new.version, previous_version=old.version,
                                  changed=old is not new)

    return app


async def _serve(endpoint: str, pipeline: Pipeline, run: Callable[[], Awaitable[RerankResult]],
                 floor: tuple[np.ndarray, str], metrics: ServeMetrics) -> RerankResult:
    """The result of ``run()``. An unknown strategy is the client's error (422); any other error, and a
    list reward that is not finite, serves ``floor`` (items, generator name) flagged as a fallback: never a
    5xx for a valid request."""
    try:
        result = await run()
    except UnknownStrategy as err:
        raise _field_error(("body", "strategy"), str(err), "unknown_strategy") from None
    except Exception as err:
        log.exception("%s on model version %s failed", endpoint, pipeline.version)
        result = RerankResult(floor[0], None, floor[1], fallback=True, error=f"{type(err).__name__}: {err}")
    else:
        if result.list_reward is not None and not math.isfinite(result.list_reward):
            log.error("%s on model version %s: generator %s got list reward %s; serving the floor",
                      endpoint, pipeline.version, result.generator, result.list_reward)
            result = RerankResult(floor[0], None, floor[1], fallback=True, timings_ms=result.timings_ms,
                                  error=f"non-finite list reward {result.list_reward}",
                                  failed_stage=result.generator)
    metrics.observe_result(endpoint, result)
    return result


def _internal_user(pipeline: Pipeline, user, metrics: ServeMetrics, unknown_items: int = 0) -> RequestUser:
    """The request's user in internal ids; ids the served catalogue does not know are counted."""
    internal = RequestUser.of(pipeline.store.ids, user)
    metrics.child(metrics.unknown_ids, "item").inc(unknown_items)
    if user.id is not None and not internal.known:
        metrics.child(metrics.unknown_ids, "user").inc()
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
                timings_ms={k: round(v, 4) for k, v in result.timings_ms.items()}, batch_size=result.batch,
                unknown_items=int((~pipeline.store.known_items(items)).sum()))


def _json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of an endpoint that parses ``model`` itself (:func:`_parse`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _parse(model: type[Body], raw: bytes) -> Body:
    """``raw`` as ``model``, parsed straight from JSON by pydantic (half the cost of ``json.loads`` and then
    validating the dict, as FastAPI does). A body that fails is parsed again FastAPI's way, so an error is
    the one FastAPI would answer, with the same ``loc``: invalid input costs more, valid input less."""
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        pass
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error",
                                       "ctx": {"error": err.msg}}]) from None
    except Exception as err:  # not UTF-8, nested too deeply: 400 saying why (_http_error)
        raise HTTPException(400, "There was an error parsing the body") from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in err.errors(include_url=False)]) from None


def _detail(loc: tuple[str | int, ...], msg: str, kind: str) -> list[dict]:
    """One error in the service's shape (relist.serve.schemas.ErrorResponse's ``detail``)."""
    return [{"loc": list(loc), "field": ".".join(map(str, loc[1:])) or str(loc[0]), "msg": msg, "type": kind}]


def _field_error(loc: tuple[str, ...], msg: str, kind: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg}])


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each wrong field; the offending input is not echoed (it may be huge or not JSON-able)."""
    return JSONResponse({"detail": [_located(e) for e in exc.errors()]}, status_code=422)


def _located(error: dict) -> dict:
    loc = list(error["loc"])
    if error["type"] == "json_invalid":  # loc holds the character position, not a field
        reason = error.get("ctx", {}).get("error", error["msg"])
        return {"loc": ["body"], "field": "body", "msg": f"the body is not valid JSON: {reason} at character "
                                                          f"{loc[-1]}", "type": error["type"]}
    field = ".".join(map(str, loc[1:])) or "body"
    return {"loc": loc, "field": field, "msg": error["msg"], "type": error["type"]}


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Every HTTP error in the one error shape; FastAPI's bare 400 for an unparsable body says why."""
    detail = exc.detail
    if isinstance(exc.__cause__, ClientDisconnect):
        return await _client_gone(request, exc.__cause__)
    if exc.status_code == 400 and not isinstance(detail, list):
        detail = _detail(("body",), _unparsable(exc.__cause__), "body_unparsable")
    elif not isinstance(detail, list):
        where = {404: "path", 405: "method"}.get(exc.status_code, "request")
        detail = _detail((where,), str(detail), f"http_{exc.status_code}")
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


def _unparsable(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte {cause.start}: {cause.reason})"
    if isinstance(cause, RecursionError):
        return "the body nests arrays or objects too deeply to parse"
    return f"the body cannot be parsed ({type(cause).__name__ if cause else 'unknown cause'})"


async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
    return Response(status_code=CLIENT_CLOSED)  # nobody reads it: counted and logged as 499


def _public(err: Exception, model_dir: Path) -> str:
    """An error message without the server's absolute paths: relative to the model directory."""
    text = str(err)
    for root in {str(model_dir.resolve()), str(model_dir)}:
        text = text.replace(root + os.sep, "").replace(root, "model_dir")
    return text


def _served_openapi(app: FastAPI, registry: Registry, config: ServeConfig) -> Callable[[], dict]:
    """``app.openapi`` for the served version: the request bodies the endpoints parse themselves, its
    strategies as an enum, this server's candidate cap, and integer bounds written as integers (FastAPI
    writes them as floats: 9.223372036854776e+18)."""
    generate = app.openapi
    built_for: list[tuple[str, ...]] = []

    def openapi() -> dict:
        served = (registry.pipeline.version, *registry.pipeline.strategies)
        if app.openapi_schema is None or built_for != [served]:
            app.openapi_schema = None
            schema = generate()
            components = schema["components"]["schemas"]
            _, defs = models_json_schema([(RerankRequest, "validation"), (RecommendRequest, "validation")],
                                         ref_template="#/components/schemas/{model}")  # bodies of _json_body
            components.update({k: v for k, v in defs["$defs"].items() if k not in components})
            _exact_integer_bounds(schema)
            for name in ("RerankRequest", "RecommendRequest"):
                for branch in components[name]["properties"]["strategy"]["anyOf"]:
                    if branch.get("type") == "string":
                        branch["enum"] = list(served[1:])
            components["RerankRequest"]["properties"]["candidates"]["maxItems"] = config.max_candidates
            app.openapi_schema, built_for[:] = schema, [served]
        return app.openapi_schema

    return openapi


def _exact_integer_bounds(node: object) -> None:
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if isinstance(node.get(key), float) and node[key].is_integer():
                    node[key] = int(node[key])
        for value in node.values():
            _exact_integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _exact_integer_bounds(value)


async def _watch_pointer(registry: Registry, metrics: ServeMetrics, config: ServeConfig) -> None:
    """Follow model_dir/CURRENT: how a new version reaches every worker and replica."""
    while True:
        await asyncio.sleep(config.watch_interval_s)
        try:
            swapped = await asyncio.to_thread(registry.follow_pointer)
        except VersionError as err:
            log.error("refused new model version: %s", err)
            metrics.reloads.labels("refused").inc()
            metrics.set_refused(registry.refused_version)
            continue
        except Exception:  # the watcher must outlive any surprise
            log.exception("watching %s failed", registry.model_dir)
            continue
        if swapped is not None:
            metrics.reloads.labels("ok").inc()
            metrics.set_version(swapped[0].version, swapped[1].version)
            metrics.set_refused(registry.refused_version)


class _GuardBody:
    """What a request body must be before the app reads it: JSON on the JSON routes (415), and at most
    ``max_bytes`` (413: by Content-Length up front, else while the body streams in)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers or (length is not None and length.strip() not in (b"", b"0"))
        if has_body and scope["method"] == "POST" and scope["path"] in JSON_BODY_PATHS:
            content_type = headers.get(b"content-type")
            if not _is_json(content_type):
                got = f"got '{content_type.decode('latin-1')}'" if content_type else "no Content-Type header"
                response = JSONResponse({"detail": _detail(("header", "content-type"), "send the body as JSON "
                                                           f"with 'Content-Type: application/json' ({got})",
                                                           "unsupported_media_type")}, status_code=415)
                return await response(scope, receive, send)
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
        return _detail(("body",), f"request body of {size} bytes is over the limit of {self.max_bytes} bytes",
                       "too_large")


def _is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class _Observe:
    """Requests by endpoint and status and their latency (known routes only, to bound label values), and a
    sampled access log: one JSON line per logged request on logger ``relist.access``."""

    def __init__(self, app, metrics: ServeMetrics, sample: float):
        self.app, self.metrics, self.sample = app, metrics, sample
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
            seconds = perf_counter() - start
            self.metrics.child(self.metrics.requests, endpoint, str(status)).inc()
            self.metrics.child(self.metrics.latency, endpoint).observe(seconds)
            if self.sample and random.random() < self.sample:
                client = scope.get("client")
                access_log.info(json.dumps({
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "method": scope["method"],
                    "path": scope["path"], "status": status, "ms": round(seconds * 1e3, 3),
                    "client": client[0] if client else None}))


def configure_logging(level: int = logging.INFO) -> None:
    """The service's logs on stderr; access lines (when sampled in) are bare JSON, one per line."""
    logging.basicConfig(level=level)
    access_log.setLevel(logging.INFO)  # sampled in by ServeConfig.access_log_sample, whatever the root level
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.propagate = False


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: model dir and config path come from the environment."""
    config = load_serve_config(os.environ.get(ENV_CONFIG))
    torch.set_num_threads(config.torch_threads)
    configure_logging()
    return create_app(os.environ[ENV_MODEL_DIR], config)
