"""The HTTP service: bad input battery, fallbacks, budgets, metrics and a schemathesis run.

A tiny model version is built once per module from a tiny simulated log and a
tiny trained evaluator (max_len=10), so the evaluator really fails on lists
longer than it was built for: that is the "model that raises".
"""

from __future__ import annotations

import json

import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from relist.data.logs import logged_requests
from relist.models.evaluator import DCWNConfig
from relist.models.generator import GRNConfig
from relist.models.ranking.config import StudentConfig, TeacherConfig
from relist.serve.app import create_app
from relist.serve.config import PipelineConfig, ServeConfig
from relist.serve.registry import export_version
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world
from relist.train.config import TrainConfig
from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
from relist.train.generator import GeneratorTrainConfig, train_generator
from relist.train.ranking import RankingConfig, train_ranking

TOKEN = "test-token"


def tiny_logs(out) -> None:
    simulate_logs(build_world(load_sim_config()), out, 2000, 0.1, 0.1)


def tiny_train(monitor: str, mode: str = "max") -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=256, max_steps_per_epoch=5, monitor=monitor, monitor_mode=mode,
                       num_threads=1, device="cpu")


def tiny_models(data, root) -> dict:
    """One tiny trained model per role a version can carry (a few seconds in all)."""
    torch.set_num_threads(1)
    train_evaluator(EvaluatorTrainConfig(model=DCWNConfig(dim=4, hidden=4, heads=1, max_len=10),
                                         train=tiny_train("click_logloss", "min")), data, root / "evaluator")
    train_generator(GeneratorTrainConfig(model=GRNConfig(dim=4, hidden=4, heads=1), train=tiny_train("lr"),
                                         samples=2, valid_requests=50),
                    data, root / "evaluator", root / "generator")
    train_ranking(RankingConfig(model="teacher", dim=4, train=tiny_train("gauc"),
                                teacher=TeacherConfig(attention_hidden=4, hidden=(8,), cross_layers=1)),
                  data, root / "ranker")
    train_ranking(RankingConfig(model="student", dim=4, train=tiny_train("gauc"),
                                student=StudentConfig(vector_dim=4, tower_hidden=(8,), head_hidden=(8,))),
                  data, root / "coarse")
    return {role: root / role for role in ("evaluator", "generator", "ranker", "coarse")}


STAGES = ["greedy_upstream_score", "beam_upstream", "beam", "grn", "last"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tiny_logs(root / "logs")
    models = tiny_models(root / "logs", root)
    export_version(root / "models", "v1", root / "logs", models, PipelineConfig(stages=STAGES), activate=True)
    return root


@pytest.fixture(scope="module")
def client(world):
    app = create_app(world / "models", ServeConfig(max_candidates=300, max_body_bytes=64_000,
                                                   watch_pointer=False), admin_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def logged(world):
    requests, _ = logged_requests(world / "logs", "test", 5)
    return requests


def body_of(requests, row: int = 0, n: int = 10, budget_ms: float = 10_000.0, **extra) -> dict:
    """A logged test request as a JSON body; a generous budget, so a busy test machine skips no stage."""
    cands = requests.candidates[row][requests.mask[row]]
    scores = requests.cand_scores[row][requests.mask[row]]
    return {"request_id": int(requests.request_id[row]), "user": {"id": int(requests.user_id[row])},
            "candidates": [{"id": int(c), "score": float(s)} for c, s in zip(cands, scores, strict=True)],
            "n": n, "budget_ms": budget_ms, **extra}


def fields(response) -> list[str]:
    return [e["field"] for e in response.json()["detail"]]


def test_valid_request_serves_best_list_by_evaluator(client, logged):
    body = body_of(logged)
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    cands = [c["id"] for c in body["candidates"]]
    assert len(out["items"]) == 10 and len(set(out["items"])) == 10 and set(out["items"]) <= set(cands)
    assert out["scorer"] == "evaluator" and out["model_version"] == "v1"
    assert not out["fallback"] and out["skipped_stages"] == []
    assert set(out["timings_ms"]) == {"queue", "upstream", *STAGES, "total"}
    # the served list has the highest list reward of the generators: forcing each one never beats it
    for strategy in ("upstream", *STAGES):
        forced = client.post("/v1/rerank", json={**body, "strategy": strategy}).json()
        assert forced["generator"] == strategy
        assert forced["list_reward"] <= out["list_reward"] + 1e-9


@pytest.mark.parametrize("raw, field", [
    (b'{"candidates": [{"id": 1}', "body"),  # malformed JSON
    (b'[1, 2]', "body"),  # not an object
    (b'{"candidates": [{"id": "7"}]}', "candidates.0.id"),  # wrong type (strict: no string numbers)
    (b'{"candidates": [{"id": 7}], "n": "3"}', "n"),
    (b'{"candidates": [{"id": 7.5}]}', "candidates.0.id"),
    (b'{"candidates": [{"id": true}]}', "candidates.0.id"),
    (b'{"user": {"id": 3}}', "candidates"),  # missing field
    (b'{"candidates": [{"score": 0.5}]}', "candidates.0.id"),
    (b'{"candidates": []}', "candidates"),  # empty candidates
    (b'{"candidates": [{"id": 4}, {"id": 5}, {"id": 4}]}', "candidates"),  # duplicate ids
    (b'{"candidates": [{"id": 4}], "n": 0}', "n"),
    (b'{"candidates": [{"id": 4, "score": NaN}]}', "candidates.0.score"),
    (b'{"candidates": [{"id": 4, "score": Infinity}]}', "candidates.0.score"),
    (b'{"candidates": [{"id": 4, "score": -Infinity}]}', "candidates.0.score"),
    (b'{"candidates": [{"id": 4, "price": NaN}]}', "candidates.0.price"),
    (b'{"candidates": [{"id": 4, "score": 0.1}, {"id": 5}]}', "candidates"),  # scores for some only
    (b'{"candidates": [{"id": -9223372036854775809}]}', "candidates.0.id"),  # under int64 (any int64 is an id)
    (b'{"candidates": [{"id": 99999999999999999999}]}', "candidates.0.id"),  # over int64
    (b'{"candidates": [{"id": 4}], "budget_ms": -1}', "budget_ms"),
    (b'{"candidates": [{"id": 4}], "colour": "red"}', "colour"),  # unknown field
    (b'{"candidates": [{"id": 4}], "strategy": "no-such-generator"}', "strategy"),
])
def test_bad_input_is_422_naming_the_field(client, raw, field):
    r = client.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in fields(r), r.text


def test_too_many_candidates_is_422_naming_candidates(client):
    body = {"candidates": [{"id": i} for i in range(1, 302)]}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 422 and fields(r) == ["candidates"] and "at most 300" in r.text


def test_oversized_body_is_413(client):
    big = json.dumps({"candidates": [{"id": 1, "category": 1, "shop": 1, "price": 1.0}] * 3000}).encode()
    r = client.post("/v1/rerank", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and fields(r) == ["body"] and "64000" in r.text

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    r = client.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and fields(r) == ["body"]


def test_n_larger_than_candidates_serves_all_candidates(client):
    r = client.post("/v1/rerank", json={"candidates": [{"id": 11}, {"id": 12}, {"id": 13}], "n": 10})
    assert r.status_code == 200 and sorted(r.json()["items"]) == [11, 12, 13]


def test_unknown_items_and_users_are_served_with_defaults(client, logged):
    body = body_of(logged)
    body["user"] = {"id": 10**12, "history": [10**11, 3]}
    body["candidates"][0]["id"] = 10**15
    body["candidates"][1] = {"id": 10**15 + 1, "score": 0.3, "category": 4, "shop": 9, "price": 12.5}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200 and not r.json()["fallback"]
    served = r.json()["items"]
    assert r.json()["unknown_items"] == len({10**15, 10**15 + 1} & set(served))


def test_failing_model_falls_back_to_upstream_order(client, logged):
    """The evaluator was built for lists of at most 10: n=12 makes it raise on every stage."""
    body = body_of(logged, n=12)
    before = metric_value(client, 'relist_fallbacks_total{endpoint="rerank",stage="upstream"}')
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["fallback"] and out["generator"] == "upstream" and out["list_reward"] is None
    assert out["items"] == [c["id"] for c in body["candidates"][:12]]
    assert metric_value(client, 'relist_fallbacks_total{endpoint="rerank",stage="upstream"}') == before + 1


def test_budget_of_one_ms_serves_a_valid_list_flagged(client, logged):
    body = body_of(logged, budget_ms=1.0)
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["budget_exceeded"] and {"beam", "grn", "last"} <= set(out["skipped_stages"])
    assert not out["fallback"]
    cands = [c["id"] for c in body["candidates"]]
    assert len(out["items"]) == 10 and len(set(out["items"])) == 10 and set(out["items"]) <= set(cands)
    assert out["timings_ms"]["total"] < 20  # skipped up front, not run and discarded


def test_recommend_runs_the_whole_pipeline(client, logged):
    r = client.post("/v1/recommend", json={"user": {"id": int(logged.user_id[0])}, "n": 10, "budget_ms": 1e4})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["items"]) == 10 and len(set(out["items"])) == 10 and out["unknown_items"] == 0
    assert out["candidates_considered"] == 50
    assert {"recall", "coarse", "fine", "upstream", *STAGES} <= set(out["timings_ms"])
    assert client.post("/v1/recommend", json={"user": {"id": 10**13}}).status_code == 200
    assert "user" in fields(client.post("/v1/recommend", json={"n": 3}))


def test_ops_endpoints(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["model_version"] == "v1"
    assert client.get("/v1/strategies").json() == {"model_version": "v1", "strategies": ["upstream", *STAGES],
                                                   "scorer": "evaluator"}
    schema = client.get("/openapi.json").json()
    assert {"/v1/rerank", "/v1/recommend", "/admin/reload"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    text = client.get("/metrics").text
    for name in ("relist_requests_total", "relist_stage_seconds_bucket",
                 'relist_model_version{version="v1"}'):
        assert name in text


def test_requests_are_counted_by_status(client):
    key = 'relist_requests_total{endpoint="rerank",status="422"}'
    before = metric_value(client, key)
    client.post("/v1/rerank", json={"candidates": []})
    assert metric_value(client, key) == before + 1


def test_admin_needs_the_token(client, world):
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.json() == {"model_version": "v1", "previous_version": "v1", "changed": False}
    without = create_app(world / "models", ServeConfig(watch_pointer=False), admin_token=None)
    with TestClient(without) as c:
        assert c.post("/admin/reload").status_code == 404
        assert "/admin/reload" not in c.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_server_error(client, mode):
    """Valid requests (positive) and schema-breaking ones (negative): never a 5xx."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = schema.include(path_regex="^/v1/(rerank|recommend)$")
    failures = []

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operations.as_strategy(GenerationMode(mode)))
    def check(case):
        response = case.call()
        if response.status_code >= 500 or (mode == "positive" and response.status_code not in (200, 422)):
            failures.append((case.path, case.body, response.status_code, response.text[:300]))

    check()
    assert not failures, failures[:3]


def metric_value(client, key: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0

