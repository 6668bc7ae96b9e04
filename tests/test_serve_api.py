"""The HTTP service: bad input battery, error shapes, the served schema, fallbacks, budgets and metrics.

A tiny model version is built once per module from a tiny simulated log and a
tiny trained evaluator. The schemathesis run over a live server is in
test_serve_hardening.py.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from serve_helpers import STAGES, metric_value, scored_nan, tiny_logs, tiny_world  # noqa: F401 (tiny_logs: test_serve_pipeline)

from relist.data.logs import logged_requests
from relist.serve.app import create_app
from relist.serve.config import ServeConfig

TOKEN = "test-token"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("serve"))


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
    steps = set(out["timings_ms"]) - {"queue", "upstream", *STAGES, "total"}  # every generator timed, then
    assert {"queue", "upstream", *STAGES, "total"} <= set(out["timings_ms"])  # the steps inside them and after
    assert "list_ranking.score" in steps
    assert all(step.startswith(("last.", "list_ranking.", "local_search.")) for step in steps)
    # the served list has the highest list reward of the generators: forcing each one never beats it
    for strategy in ("upstream", *STAGES):
        forced = client.post("/v1/rerank", json={**body, "strategy": strategy}).json()
        assert forced["generator"] == strategy
        if strategy == "upstream":  # one list and nothing to choose: under a budget it is served unscored
            assert forced["list_reward"] is None
        else:
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
    (b'{"candidates": [{"id": 4}], "strategy": ""}', "strategy"),  # empty strategy: refused by the schema
    (b'{"candidates": [{"id": 4}], "n": 2.5}', "n"),  # not integral
    (b'{"candidates": {"id": 4}}', "candidates"),  # an object, not a list
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


def test_failing_model_falls_back_to_upstream_order(client, logged, monkeypatch):
    """A model that raises (here the evaluator's scoring) on every stage: the upstream order, counted."""
    def broken(*args, **kwargs):
        raise RuntimeError("a model that raises")

    monkeypatch.setattr(client.app.state.registry.pipeline.ranking.scorer, "_score", broken)
    body = body_of(logged, n=12)
    before = rerank_fallbacks(client)
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["fallback"] and out["generator"] == "upstream" and out["list_reward"] is None
    assert out["items"] == [c["id"] for c in body["candidates"][:12]]
    assert rerank_fallbacks(client) == before + 1


def rerank_fallbacks(client) -> float:
    """Fallbacks of /v1/rerank counted over every failed stage."""
    return sum(float(line.split()[-1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith('relist_fallbacks_total{endpoint="rerank"'))


def test_budget_of_one_ms_serves_a_valid_list_flagged(client, logged):
    body = body_of(logged, budget_ms=1.0)
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["budget_exceeded"] and {"beam", "grn", "last"} <= set(out["skipped_stages"])
    assert not out["fallback"]
    cands = [c["id"] for c in body["candidates"]]
    assert len(out["items"]) == 10 and len(set(out["items"])) == 10 and set(out["items"]) <= set(cands)
    assert not {"beam", "grn", "last"} & set(out["timings_ms"])  # skipped up front: they never ran


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


def test_a_request_out_of_time_is_counted_as_degraded_not_as_a_fallback(client, logged):
    key = 'relist_degraded_total{endpoint="rerank",generator="upstream"}'
    before, fallbacks = metric_value(client, key), client.get("/metrics").text.count("relist_fallbacks_total{")
    out = client.post("/v1/rerank", json=body_of(logged, budget_ms=0.001)).json()
    assert out["generator"] == "upstream" and out["budget_exceeded"] and not out["fallback"]
    assert metric_value(client, key) == before + 1
    assert client.get("/metrics").text.count("relist_fallbacks_total{") == fallbacks
    assert metric_value(client, "relist_batch_size_count") >= 1


def test_requests_are_counted_by_status(client):
    key = 'relist_requests_total{endpoint="rerank",status="422"}'
    before = metric_value(client, key)
    client.post("/v1/rerank", json={"candidates": []})
    assert metric_value(client, key) == before + 1


def test_admin_needs_the_token(client, world):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.post("/admin/reload", headers=headers)
        assert r.status_code == 401 and fields(r) == ["authorization"], r.text
        assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.json() == {"model_version": "v1", "previous_version": "v1", "changed": False}
    without = create_app(world / "models", ServeConfig(watch_pointer=False), admin_token=None)
    with TestClient(without) as c:
        assert c.post("/admin/reload").status_code == 404
        assert "/admin/reload" not in c.get("/openapi.json").json()["paths"]


def test_repeated_candidate_ids_count_once_and_are_reported(client):
    body = {"candidates": [{"id": 4, "score": 0.9}, {"id": 5, "score": 0.5}, {"id": 4, "score": 0.1}], "n": 10,
            "strategy": "upstream"}
    before = metric_value(client, "relist_duplicate_candidates_total")
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [4, 5] and r.json()["duplicate_candidates"] == 1
    assert metric_value(client, "relist_duplicate_candidates_total") == before + 1


def test_integral_floats_are_integers_as_json_schema_says(client):
    r = client.post("/v1/rerank", json={"candidates": [{"id": 11.0}, {"id": 12}], "n": 2.0, "strategy": "upstream"})
    assert r.status_code == 200 and r.json()["items"] == [11, 12], r.text


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"}])
def test_a_body_not_sent_as_json_is_415_naming_the_content_type(client, headers):
    r = client.post("/v1/rerank", content=b'{"candidates": [{"id": 4}]}', headers=headers)
    assert r.status_code == 415 and fields(r) == ["content-type"], r.text
    assert "Content-Type: application/json" in r.text
    ok = client.post("/v1/rerank", content=b'{"candidates": [{"id": 4}]}',
                     headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("raw, says", [
    (b'{"candidates": [{"id": 4}], "strategy": "\xff\xfe"}', "not valid UTF-8 (byte 41"),
    (b"[" * 100_000 + b"]" * 100_000, "nests arrays or objects too deeply"),
])
def test_an_unparsable_body_is_400_saying_why(world, raw, says):
    app = create_app(world / "models", ServeConfig(watch_pointer=False))
    with TestClient(app) as c:
        r = c.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and fields(r) == ["body"] and says in r.json()["detail"][0]["msg"], r.text


def test_every_error_has_the_one_shape(client):
    for r, status in ((client.get("/no/such/path"), 404), (client.put("/v1/rerank", json={}), 405),
                      (client.post("/v1/rerank", json={"candidates": []}), 422),
                      (client.post("/admin/reload"), 401)):
        assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
        for item in r.json()["detail"]:
            assert set(item) == {"loc", "field", "msg", "type"} and item["msg"], item
    assert "POST" in client.put("/v1/rerank", json={}).headers["allow"]


def test_the_schema_says_what_the_server_does(client):
    text = client.get("/openapi.json").text
    assert "e+18" not in text and "9223372036854775808" in text  # exact int64 bound
    schema = json.loads(text)
    rerank = schema["components"]["schemas"]["RerankRequest"]["properties"]
    served = client.get("/v1/strategies").json()["strategies"]
    assert [b["enum"] for b in rerank["strategy"]["anyOf"] if b.get("type") == "string"] == [served]
    assert rerank["candidates"]["maxItems"] == 300  # this server's cap, not the schema's ceiling
    paths = schema["paths"]
    assert {"400", "408", "413", "415", "422", "503"} <= set(paths["/v1/rerank"]["post"]["responses"])
    assert {"401", "404", "409"} <= set(paths["/admin/reload"]["post"]["responses"])
    assert paths["/admin/reload"]["post"]["security"] == [{"HTTPBearer": []}]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_a_non_finite_list_reward_is_served_as_a_fallback(client, logged):
    """Finite weights can still overflow: a NaN reward must never reach a client as `list_reward: null`."""

    registry = client.app.state.registry
    good = registry.pipeline
    registry.pipeline = scored_nan(good)
    try:
        r = client.post("/v1/rerank", json=body_of(logged))
    finally:
        registry.pipeline = good
    assert r.status_code == 200
    out = r.json()
    assert out["fallback"] and out["list_reward"] is None and out["generator"] == "upstream"
    assert out["items"] == [c["id"] for c in body_of(logged)["candidates"][:10]]


def test_admin_errors_name_the_version_without_server_paths(client, world):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/admin/reload", json={"version": "v404"}, headers=auth)
    assert r.status_code == 404 and fields(r) == ["version"] and "v404" in r.text, r.text
    assert str(world) not in r.text and "still serving v1" in r.text
    r = client.post("/admin/reload", json={"version": "../etc"}, headers=auth)
    assert r.status_code == 422 and fields(r) == ["version"], r.text


def test_the_request_schema_names_every_list_objective():
    from relist import objective
    from relist.serve import schemas

    assert schemas.OBJECTIVES == objective.OBJECTIVES == tuple(schemas.ObjectiveWeights.model_fields)


def test_per_request_objective_weights_change_what_is_served(client, logged):
    served = {}
    for name, weights in {"clicks": {"ipv": 1.0}, "views": {"pv": 1.0}, "spend": {"gmv": 1.0}}.items():
        outs = [client.post("/v1/rerank", json=body_of(logged, row, objective=weights)) for row in range(len(logged))]
        assert all(r.status_code == 200 for r in outs), outs[0].text
        served[name] = [tuple(r.json()["items"]) for r in outs]
    assert served["clicks"] != served["views"] or served["clicks"] != served["spend"]  # weights reach the ranking
    for bad, field in (({"ipv": 0.0}, "objective"), ({"ipv": -1.0}, "objective.ipv"), ({"cvr": 1.0}, "objective.cvr")):
        r = client.post("/v1/rerank", json=body_of(logged, objective=bad))
        assert r.status_code == 422 and field in fields(r), (bad, r.text)


def test_concurrent_requests_are_re_ranked_together_each_as_it_would_be_alone(world, client):
    import asyncio

    import httpx

    requests, _ = logged_requests(world / "logs", "test", 6)
    bodies = [body_of(requests, row, strategy="beam") for row in range(6)]
    bodies.append(body_of(requests, 0, strategy="no_such_strategy"))  # its own batch, its own error
    app = create_app(world / "models", ServeConfig(watch_pointer=False, batch_wait_ms=100.0, max_batch=4))

    async def together():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await asyncio.gather(*(http.post("/v1/rerank", json=body) for body in bodies))

    responses = asyncio.run(together())
    assert [r.status_code for r in responses] == [200] * 6 + [422]
    served = [r.json() for r in responses[:6]]
    sizes = [out["batch_size"] for out in served]
    assert 1 < max(sizes) <= 4  # together, at most max_batch at once
    alone = [client.post("/v1/rerank", json=body).json() for body in bodies[:6]]
    assert [out["items"] for out in served] == [out["items"] for out in alone]
    assert all(out["batch_size"] == 1 for out in alone)
    assert all(out["timings_ms"]["queue"] >= 0 and out["generator"] in ("beam", "upstream") for out in served)


def test_concurrent_recommendations_are_re_ranked_together_with_reranks_each_as_it_would_be_alone(world, client):
    import asyncio

    import httpx

    requests, _ = logged_requests(world / "logs", "test", 4)
    posts = [("/v1/recommend", {"user": {"id": int(u)}, "n": 10, "strategy": "beam", "budget_ms": 1e4})
             for u in requests.user_id] + [("/v1/rerank", body_of(requests, 0, strategy="beam"))]
    app = create_app(world / "models", ServeConfig(watch_pointer=False, batch_wait_ms=100.0, max_batch=8))

    async def together():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await asyncio.gather(*(http.post(path, json=body) for path, body in posts))

    responses = asyncio.run(together())
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    served = [r.json() for r in responses]
    assert max(out["batch_size"] for out in served) > 1  # recommendations joined a batch
    alone = [client.post(path, json=body).json() for path, body in posts]
    assert [out["items"] for out in served] == [out["items"] for out in alone]
    for out in served[:4]:  # the earlier stages are in each recommendation's result
        assert out["candidates_considered"] == 50 and {"queue", "recall", "fine", "beam"} <= set(out["timings_ms"])
