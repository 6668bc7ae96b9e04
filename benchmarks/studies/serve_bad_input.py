"""The bad-input table: hand-written bad requests replayed over real sockets against a live server.

Each case is one way a client can get a request wrong (broken JSON, wrong content type,
every field with a wrong type or out of range, missing or unknown fields, bad admin
calls, wrong methods, stalled headers or bodies). For each, the answer must be a 4xx
whose body names the field at fault (``detail[*].field``); the table counts per group
how many were tried, answered 4xx naming the field, answered 4xx naming something else,
answered 5xx, or accepted (2xx: a bad request let through).

    python -m benchmarks serve_bad_input [--set model_dir=DIR --set admin_token=TOKEN]

Without model_dir it serves a catalogue-only version of a small simulated feed (no
trained models: validation does not depend on them). tests/test_serve_hardening.py
replays the same cases against a version with every model.
"""

from __future__ import annotations

import json
import socket
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

JSON = {"content-type": "application/json"}
TOKEN = "bad-input-token"
BROKEN = "broken"  # a version whose files fail their checksums (the 409 case)
SLOW_TIMEOUT_S = 1.0  # header/body deadline of the server the slow cases run against
MAX_CANDIDATES = 500  # ServeConfig's default: the cap the "too many candidates" case crosses


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    field: str  # what the error must name
    body: bytes | None = None
    path: str = "/v1/rerank"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    slow: bytes | None = None  # raw bytes sent on a socket that then stalls (the timeout cases)


def _rerank(name: str, field_: str, body: str, group: str = "fields") -> Case:
    return Case(group, name, field_, body.encode("utf-8", "surrogatepass"))


def _candidate(name: str, field_: str, candidate: str) -> Case:
    return _rerank(name, f"candidates.0.{field_}", f'{{"candidates": [{candidate}]}}')


def _option(name: str, field_: str, value: str) -> Case:
    """A request whose top-level key ``field_.split('.')[0]`` holds ``value``; the error must name ``field_``."""
    return _rerank(name, field_, f'{{"candidates": [{{"id": 4}}], "{field_.split(".")[0]}": {value}}}')


def build_cases() -> list[Case]:
    many = ", ".join(f'{{"id": {i}}}' for i in range(1, MAX_CANDIDATES + 2))
    history = ", ".join(str(i) for i in range(1, 202))
    big = json.dumps({"candidates": [{"id": i, "category": 1, "shop": 1, "price": 1.0} for i in range(1, 40_000)]})
    cases = [
        # the body as a whole
        Case("json", "unclosed object", "body", b'{"candidates": [{"id": 1}'),
        Case("json", "trailing comma", "body", b'{"candidates": [{"id": 1},]}'),
        Case("json", "single quotes", "body", b"{'candidates': [{'id': 1}]}"),
        Case("json", "empty body", "body", b""),
        Case("json", "whitespace only", "body", b"   \n"),
        Case("json", "top-level array", "body", b"[1, 2]"),
        Case("json", "top-level string", "body", b'"candidates"'),
        Case("json", "top-level number", "body", b"3"),
        Case("json", "top-level null", "body", b"null"),
        Case("json", "top-level true", "body", b"true"),
        Case("json", "invalid UTF-8", "body", b'{"candidates": [{"id": 4}], "strategy": "\xff\xfe"}'),
        Case("json", "unescaped control character", "body", b'{"candidates": [{"id": 4}], "strategy": "a\x01b"}'),
        Case("json", "nested 100,000 deep", "body", b"[" * 100_000 + b"]" * 100_000),
        _rerank("nested lists as a candidate", "candidates.0", '{"candidates": [' + "[" * 50 + "]" * 50 + "]}",
                "json"),
        _rerank("NaN literal", "budget_ms", '{"candidates": [{"id": 4}], "budget_ms": NaN}', "json"),
        _rerank("1e999 (infinite) score", "candidates.0.score", '{"candidates": [{"id": 4, "score": 1e999}]}',
                "json"),
        _rerank("duplicate key, last one wrong", "n", '{"candidates": [{"id": 4}], "n": 3, "n": "x"}', "json"),
        _rerank("lone surrogate in a string", "strategy", '{"candidates": [{"id": 4}], "strategy": "\\ud800"}',
                "json"),
        # how the body is sent
        Case("content type", "no Content-Type", "content-type", b'{"candidates": [{"id": 4}]}', headers={}),
        *[Case("content type", media, "content-type", b'{"candidates": [{"id": 4}]}', headers={"content-type": media})
          for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                        "application/xml", "application/json-seq", "json")],
        Case("content type", "recommend without Content-Type", "content-type", b'{"user": {}}',
             path="/v1/recommend", headers={}),
        Case("content type", "admin reload as text/plain", "content-type", b'{"version": "v1"}',
             path="/admin/reload", headers={"content-type": "text/plain", "authorization": f"Bearer {TOKEN}"}),
        Case("size", "over the limit by Content-Length", "body", big.encode()),
        Case("size", "over the limit, chunked", "body", big.encode(), headers={**JSON, "x-send": "chunked"}),
        _rerank(f"{MAX_CANDIDATES + 1} candidates", "candidates", f'{{"candidates": [{many}]}}', "size"),
        # /v1/rerank fields
        _rerank("no candidates field", "candidates", "{}"),
        _rerank("candidates null", "candidates", '{"candidates": null}'),
        _rerank("candidates an object", "candidates", '{"candidates": {"id": 4}}'),
        _rerank("candidates a string", "candidates", '{"candidates": "4,5"}'),
        _rerank("candidates empty", "candidates", '{"candidates": []}'),
        _rerank("candidates bare ids", "candidates.0", '{"candidates": [4, 5]}'),
        _rerank("candidate null", "candidates.0", '{"candidates": [null]}'),
        _rerank("candidate a list", "candidates.0", '{"candidates": [[]]}'),
        _rerank("unknown field", "colour", '{"candidates": [{"id": 4}], "colour": "red"}'),
        _rerank("unknown candidate field", "candidates.0.colour", '{"candidates": [{"id": 4, "colour": "red"}]}'),
        _rerank("scores for some candidates only", "candidates",
                '{"candidates": [{"id": 4, "score": 0.1}, {"id": 5}]}'),
        _candidate("id missing", "id", '{"score": 0.5}'),
        _candidate("id a string", "id", '{"id": "7"}'),
        _candidate("id 7.5", "id", '{"id": 7.5}'),
        _candidate("id a boolean", "id", '{"id": true}'),
        _candidate("id null", "id", '{"id": null}'),
        _candidate("id 2**63", "id", '{"id": 9223372036854775808}'),  # any int64 is an id (0, negatives)
        _candidate("id under -2**63", "id", '{"id": -9223372036854775809}'),
        _candidate("id 1e30", "id", '{"id": 1e30}'),
        _candidate("id a list", "id", '{"id": [4]}'),
        _candidate("score a string", "score", '{"id": 4, "score": "0.5"}'),
        _candidate("score NaN", "score", '{"id": 4, "score": NaN}'),
        _candidate("score Infinity", "score", '{"id": 4, "score": Infinity}'),
        _candidate("score -Infinity", "score", '{"id": 4, "score": -Infinity}'),
        _candidate("score a boolean", "score", '{"id": 4, "score": true}'),
        _candidate("price negative", "price", '{"id": 4, "price": -1}'),
        _candidate("price NaN", "price", '{"id": 4, "price": NaN}'),
        _candidate("price a string", "price", '{"id": 4, "price": "9.99"}'),
        _candidate("category negative", "category", '{"id": 4, "category": -1}'),
        _candidate("category 2**31", "category", '{"id": 4, "category": 2147483648}'),
        _candidate("category a string", "category", '{"id": 4, "category": "shoes"}'),
        _candidate("shop negative", "shop", '{"id": 4, "shop": -5}'),
        _candidate("shop 1.5", "shop", '{"id": 4, "shop": 1.5}'),
        _option("n 0", "n", "0"),
        _option("n negative", "n", "-3"),
        _option("n 1001", "n", "1001"),
        _option("n a string", "n", '"10"'),
        _option("n 2.5", "n", "2.5"),
        _option("n null", "n", "null"),
        _option("n a boolean", "n", "true"),
        _option("budget 0", "budget_ms", "0"),
        _option("budget negative", "budget_ms", "-1"),
        _option("budget over 60 s", "budget_ms", "1e9"),
        _option("budget a string", "budget_ms", '"20"'),
        _option("budget NaN", "budget_ms", "NaN"),
        _option("strategy empty", "strategy", '""'),
        _option("strategy unknown", "strategy", '"no-such-generator"'),
        _option("strategy with a space", "strategy", '"beam search"'),
        _option("strategy 65 characters", "strategy", '"' + "b" * 65 + '"'),
        _option("strategy a number", "strategy", "5"),
        _option("strategy a list", "strategy", '["beam"]'),
        _option("request_id negative", "request_id", "-1"),
        _option("request_id a string", "request_id", '"abc"'),
        _option("request_id 2**64", "request_id", "18446744073709551616"),
        _option("user a string", "user", '"bob"'),
        _option("user a list", "user", "[]"),
        _option("user.id a string", "user.id", '{"id": "12"}'),
        _option("user.id 2**63", "user.id", '{"id": 9223372036854775808}'),
        _option("user.segment 2**31", "user.segment", '{"segment": 2147483648}'),
        _option("user.history a string", "user.history", '{"history": "1,2"}'),
        _option("user.history 201 items", "user.history", f'{{"history": [{history}]}}'),
        _option("user.history holds a string", "user.history.0", '{"history": ["x"]}'),
        _option("user.history holds 2**63", "user.history.0", '{"history": [9223372036854775808]}'),
        _option("user unknown field", "user.age", '{"age": 31}'),
        _option("objective all zero", "objective", '{"ipv": 0, "gmv": 0}'),
        _option("objective empty", "objective", "{}"),
        _option("objective weight negative", "objective.ipv", '{"ipv": -1}'),
        _option("objective unknown term", "objective.ctr", '{"ctr": 1}'),
        # /v1/recommend
        *[Case("recommend", name, field_, body.encode(), path="/v1/recommend") for name, field_, body in (
            ("no user", "user", "{}"), ("user null", "user", '{"user": null}'),
            ("n 0", "n", '{"user": {}, "n": 0}'), ("strategy unknown", "strategy", '{"user": {}, "strategy": "x"}'),
            ("candidates given", "candidates", '{"user": {}, "candidates": [{"id": 4}]}'),
            ("user.history holds 1.5", "user.history.0", '{"user": {"history": [1.5]}}'))],
        # /admin/reload
        Case("admin", "no token", "authorization", b'{"version": "v1"}', path="/admin/reload"),
        Case("admin", "wrong token", "authorization", b'{"version": "v1"}', path="/admin/reload",
             headers={**JSON, "authorization": "Bearer wrong"}),
        Case("admin", "basic auth scheme", "authorization", b'{"version": "v1"}', path="/admin/reload",
             headers={**JSON, "authorization": f"Basic {TOKEN}"}),
        *[Case("admin", name, field_, body.encode(), path="/admin/reload",
               headers={**JSON, "authorization": f"Bearer {TOKEN}"}) for name, field_, body in (
            ("version escapes the directory", "version", '{"version": "../etc"}'),
            ("version 129 characters", "version", '{"version": "' + "v" * 129 + '"}'),
            ("version a number", "version", '{"version": 5}'),
            ("unknown field", "force", '{"version": "v1", "force": true}'),
            ("no such version (404)", "version", '{"version": "v404"}'),
            ("damaged version (409)", "version", f'{{"version": "{BROKEN}"}}'))],
        # HTTP itself
        Case("http", "GET /v1/rerank", "method", method="GET", headers={}),
        Case("http", "DELETE /v1/recommend", "method", path="/v1/recommend", method="DELETE", headers={}),
        Case("http", "unknown path", "path", b"{}", path="/v1/rerank/extra"),
        Case("slow", "connects and sends nothing", "headers", slow=b""),
        Case("slow", "headers stall half-way", "headers", slow=b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n"),
        Case("slow", "body stalls half-way", "body",
             slow=b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200\r\n\r\n{\"candidates\": ["),
    ]
    return cases


def replay(base_url: str, cases: list[Case], deadline_s: float = 60.0) -> list[dict]:
    """Send every case (fresh connection each) and record what came back."""
    rows = []
    with httpx.Client(base_url=base_url, timeout=deadline_s) as client:
        for case in cases:
            if case.slow is not None:
                status, payload = _stalled(base_url, case.slow, deadline_s)
            else:
                headers = {k: v for k, v in case.headers.items() if k != "x-send"}
                content = case.body
                if case.headers.get("x-send") == "chunked":
                    content = (case.body[i:i + 8192] for i in range(0, len(case.body), 8192))
                response = client.request(case.method, case.path, content=content,
                                          headers={**headers, "connection": "close"})
                status, payload = response.status_code, _json(response.content)
            named = [item.get("field") for item in payload.get("detail", [])] if isinstance(payload, dict) else []
            rows.append({**{k: v for k, v in asdict(case).items() if k in ("group", "name", "field", "path")},
                         "status": status, "named": named, "outcome": _outcome(status, case.field, named)})
    return rows


def _outcome(status: int, expected: str, named: list) -> str:
    if status >= 500:
        return "5xx"
    if 400 <= status < 500:
        return "4xx naming the field" if expected in named else "4xx naming another"
    return "accepted"


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _stalled(base_url: str, prefix: bytes, deadline_s: float) -> tuple[int, object]:
    """Open a socket, send ``prefix`` and stall; return the status and JSON body the server answers with."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=deadline_s) as sock:
        sock.sendall(prefix)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    return status, _json(body)


def add_broken_version(model_dir: Path, data_dir: Path) -> None:
    """Export a version and damage one byte of its catalogue, for the 409 case."""
    from relist.serve.config import PipelineConfig
    from relist.serve.registry import export_version

    version = export_version(model_dir, BROKEN, data_dir, pipeline=PipelineConfig.of(["beam_upstream"]))
    data = bytearray((version / "items.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (version / "items.parquet").write_bytes(bytes(data))


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per group (and "all"): how many were tried, and how many had each outcome."""
    outcomes = ("4xx naming the field", "4xx naming another", "5xx", "accepted")
    table = {}
    for group in [*dict.fromkeys(r["group"] for r in rows), "all"]:
        counts = Counter(r["outcome"] for r in rows if group in ("all", r["group"]))
        table[group] = {"tried": sum(counts.values()), **{o: counts[o] for o in outcomes}}
    return table


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = Field(None, description="serve this model directory (null: a catalogue-only version "
                                                    "of a small simulated feed, made under --work)")
    admin_token: str = TOKEN
    requests: int = Field(2000, ge=10, description="simulated lists of the catalogue-only version")


def run(cfg: Config, work: Path) -> dict:
    from rich.console import Console
    from rich.table import Table

    from relist.serve.app import create_app
    from relist.serve.config import PipelineConfig, ServeConfig
    from relist.serve.http_server import BackgroundServer, limits_of
    from relist.serve.registry import VERSIONS, export_version
    from relist.sim.config import load_sim_config
    from relist.sim.logs import simulate_logs
    from relist.sim.world import build_world

    with tempfile.TemporaryDirectory(dir=work) as fresh:
        model_dir = Path(cfg.model_dir) if cfg.model_dir else None
        if model_dir is None:
            data, model_dir = Path(fresh) / "logs", Path(fresh) / "models"
            simulate_logs(build_world(load_sim_config()), data, cfg.requests, 0.1, 0.1, progress=False)
            pipeline = PipelineConfig.of(["greedy_upstream_score", "beam_upstream"])
            export_version(model_dir, "v1", data, pipeline=pipeline, activate=True)
            add_broken_version(model_dir, data)
        elif not (model_dir / VERSIONS / BROKEN).exists():
            print(f"note: {model_dir} has no version '{BROKEN}': the 409 case will not get its 409")
        config = ServeConfig(watch_pointer=False, header_timeout_s=SLOW_TIMEOUT_S, body_timeout_s=SLOW_TIMEOUT_S,
                             max_candidates=MAX_CANDIDATES)
        app = create_app(model_dir, config, admin_token=cfg.admin_token)
        with BackgroundServer(app, limits_of(config)) as base:
            rows = replay(base, build_cases())
    table = summarise(rows)
    view = Table(title="bad requests over real sockets: every one must be a 4xx naming the field")
    view.add_column("group")
    for column in table["all"]:
        view.add_column(column, justify="right")
    for group, row in table.items():
        view.add_row(group, *map(str, row.values()))
    Console().print(view)
    for row in rows:
        if row["outcome"] != "4xx naming the field":
            print(f"  {row['group']} / {row['name']}: {row['status']} naming {row['named']} "
                  f"(expected {row['field']})")
    return {"table": table, "cases": rows, "server": {"header_timeout_s": SLOW_TIMEOUT_S,
                                                      "body_timeout_s": SLOW_TIMEOUT_S,
                                                      "max_candidates": MAX_CANDIDATES}}
