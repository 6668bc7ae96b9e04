"""The serving pipeline without HTTP: budgets, the upstream floor, user overrides, recall."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_serve_api import tiny_logs

from relist.data.features import FeatureStore
from relist.eval.metrics import list_reward
from relist.rerank.budget import Budget, StageCosts
from relist.rerank.registry import Models
from relist.serve.config import PipelineConfig
from relist.serve.pipeline import UPSTREAM, UnknownStrategy, build_pipeline, top_indices


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    logs = tmp_path_factory.mktemp("pipeline") / "logs"
    tiny_logs(logs)
    store = FeatureStore.from_dir(logs)
    return build_pipeline("p", store, PipelineConfig(), Models(store))


def user(id=None, segment=None, history=None):
    return SimpleNamespace(id=id, segment=segment, history=history)


def test_stage_costs_scale_with_request_size_and_fade_with_time():
    now = [0.0]
    costs = StageCosts(smoothing=0.5, half_life_s=10.0, clock=lambda: now[0])
    assert costs.expected_ms("beam", 500) == 0.0  # never measured: assumed free
    costs.record("beam", 500, 5.0)
    assert costs.expected_ms("beam", 1000) == pytest.approx(10.0)
    costs.record("beam", 500, 1.0)
    assert costs.expected_ms("beam", 500) == pytest.approx(3.0)
    now[0] = 10.0  # one half-life without running: the estimate halves, the stage gets tried again
    assert costs.expected_ms("beam", 500) == pytest.approx(1.5)
    costs.record("slow", 1, 10.0)
    roomy, tight = Budget(50.0, costs), Budget(1.0, costs)
    assert roomy.affords("slow") and not tight.affords("slow") and tight.skipped == ["slow"] and tight.exceeded


def test_stage_costs_are_kept_per_batch_size_and_an_unmeasured_size_costs_a_call_of_the_nearest():
    costs = StageCosts(smoothing=1.0, half_life_s=1e9)
    costs.record("beam", 500, 5.0, rows=1)  # one request of 500 units: 5 ms
    assert costs.expected_ms("beam", 4000, rows=8) == pytest.approx(5.0)  # 8 together: one call's cost, once
    costs.record("beam", 4000, 12.0, rows=8)
    assert costs.expected_ms("beam", 4000, rows=7) == pytest.approx(12.0)  # 5..8 requests share an estimate
    assert costs.expected_ms("beam", 500, rows=1) == pytest.approx(5.0)
    assert costs.expected_ms("beam", 2000, rows=4) == pytest.approx(12.0)  # nearest measured: 8, a call of it
    budget = Budget(10.0, costs, rows=8)
    assert not budget.affords("beam", 4000) and Budget(20.0, costs, rows=8).affords("beam", 4000)


def test_upstream_scorer_is_the_exposure_weighted_list_reward(pipeline):
    inp = pipeline.request_input(None, np.array([7, 8, 9]), np.array([0.5, 0.2, 2.0]), 3)
    lists = np.array([[[7, 8, 9], [9, 7, 0]]])
    p = pipeline.config.rerank.beam.p_next
    expected = list_reward(np.array([[0.5, 0.2, 1.0], [1.0, 0.5, 0.0]]), lists[0] != 0, p ** np.arange(3))
    np.testing.assert_allclose(pipeline.scorer.values(inp.requests, lists)[0, 0], expected)


def test_best_list_wins_and_upstream_wins_ties(pipeline):
    ids, distinct = np.arange(1, 21), list(range(20))  # one category each: no rule in play
    inp = pipeline.request_input(None, ids, np.linspace(0.9, 0.1, 20), 5, cates=distinct)
    result = pipeline.rerank(inp)
    assert result.generator == "upstream" and not result.breaks_rules  # greedy and beam only tie with it
    inp = pipeline.request_input(None, ids, np.linspace(0.1, 0.9, 20), 5, cates=distinct)
    result = pipeline.rerank(inp)
    upstream_lr = pipeline.scorer.values(inp.requests, inp.requests.candidates[:, :5])[0, 0]
    assert result.generator != "upstream" and result.list_reward > upstream_lr
    forced = pipeline.rerank(inp, strategy="upstream")
    assert forced.generator == "upstream" and list(forced.items) == [1, 2, 3, 4, 5]
    with pytest.raises(UnknownStrategy, match="available: upstream"):
        pipeline.rerank(inp, strategy="nope")


def test_a_list_keeping_the_rules_beats_a_better_scored_one_that_breaks_them(pipeline):
    # the five best-scored candidates share a category: the upstream/greedy list breaks the scatter rule
    cates = [1, 1, 1, 1, 1] + list(range(2, 17))
    inp = pipeline.request_input(None, np.arange(1, 21), np.linspace(0.9, 0.1, 20), 5, cates=cates)
    result = pipeline.rerank(inp)
    assert result.generator != "upstream" and not result.breaks_rules
    assert result.list_reward < pipeline.scorer.values(inp.requests, inp.requests.candidates[:, :5])[0, 0]
    only_one_category = pipeline.request_input(None, np.arange(1, 21), None, 5, cates=[1] * 20)
    assert pipeline.rerank(only_one_category).breaks_rules  # nothing can keep them: served, flagged


def test_zero_budget_serves_the_upstream_order(pipeline):
    inp = pipeline.request_input(None, np.arange(1, 21), np.linspace(0.1, 0.9, 20), 5)
    result = pipeline.rerank(inp, budget_ms=1e-6)
    assert result.budget_exceeded and list(result.items) == [1, 2, 3, 4, 5] and result.list_reward is None
    assert result.skipped == pipeline.strategies  # the floor alone leaves nothing to score


def test_user_overrides_reach_the_models_through_a_store_view(pipeline):
    store = pipeline.store
    inp = pipeline.request_input(user(id=3, segment=4, history=[11, 12, 10**12]), np.arange(1, 11), None, 5)
    view = inp.store.user_features(inp.requests.user_id)
    assert inp.store is not store and inp.store.item_cate is store.item_cate  # items shared, not copied
    assert view["segment"].tolist() == [5]  # raw segment 4 -> store convention 5
    assert view["hist"][0][view["hist_mask"][0]].tolist() == [11, 12]  # unknown history item dropped
    plain = pipeline.request_input(user(id=3), np.arange(1, 11), None, 5)
    assert plain.store is store and plain.requests.user_id.tolist() == [3]


def test_request_categories_override_the_catalogue(pipeline):
    inp = pipeline.request_input(None, np.array([1, 2, 10**12]), None, 3, cates=[None, 7, 3])
    assert inp.cates[0].tolist() == [pipeline.store.item_cate[1], 8, 4]


def test_recall_prefers_history_categories_and_skips_history_items(pipeline):
    store = pipeline.store
    uid = int(np.flatnonzero(store.user_hist_mask.any(1))[0])
    hist = store.user_hist[uid][store.user_hist_mask[uid]]
    ids, scores = pipeline.recall(store, uid, 30)
    assert not np.isin(ids, hist).any() and len(set(ids.tolist())) == 30
    assert np.isin(store.item_cate[ids[:5]], store.item_cate[hist]).all()
    assert ((scores >= 0) & (scores <= 1)).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2, 6), min_size=1, max_size=40), st.integers(1, 45))
def test_recall_takes_the_top_of_the_catalogue_as_a_stable_sort_would(values, size):
    """Without sorting the whole catalogue, and with ties (common: popularity is a count) broken by id."""
    key = np.asarray(values, dtype=np.float64)
    assert top_indices(key, size).tolist() == np.argsort(-key, kind="stable")[:size].tolist()


def test_a_batch_serves_every_request_the_list_it_gets_alone(models, logs):
    from relist.data.logs import logged_requests

    pipeline = build_pipeline("b", models.store, PipelineConfig.of(["upstream", "greedy_ctr", "beam", "grn"]),
                              models)
    requests, _ = logged_requests(logs, "test", 12)
    inputs = [pipeline.request_input(None, ids[real][:30 + 2 * i], scores[real][:30 + 2 * i], 10 if i % 3 else 6)
              for i, (ids, scores, real) in enumerate(zip(requests.candidates, requests.cand_scores, requests.mask,
                                                          strict=True))]  # lists of several lengths, two n
    together = pipeline.rerank_batch(inputs)
    alone = [pipeline.rerank(inp) for inp in inputs]
    assert [list(r.items) for r in together] == [list(r.items) for r in alone]
    assert [r.generator for r in together] == [r.generator for r in alone]
    np.testing.assert_allclose([r.list_reward for r in together], [r.list_reward for r in alone], rtol=1e-5)
    assert {r.batch for r in together} == {4, 8} and all(r.batch == 1 for r in alone)


def test_generators_left_out_at_export_can_still_be_forced(models, models_dir, logs):
    from relist.serve.pipeline import with_incumbent

    config = with_incumbent(PipelineConfig.of(["greedy_ctr", "beam", "grn", "grn_samples"], min_share=0.3), logs,
                            models_dir)
    ranking = config.rerank.ranking
    assert ranking.min_share == 0 and ranking.incumbent in ranking.generators and config.forced_only
    assert not set(config.forced_only) & set(ranking.generators)
    pipeline = build_pipeline("f", models.store, config, models)
    assert set(pipeline.strategies) == {"upstream", "greedy_ctr", "beam", "grn", "grn_samples", ranking.incumbent}
    inp = pipeline.request_input(None, np.arange(1, 31), np.linspace(0.9, 0.1, 30), 10)
    for name in config.forced_only:
        assert pipeline.rerank(inp, strategy=name).generator in (name, "upstream")
    assert pipeline.rerank(inp).generator in (*ranking.generators, "upstream")


def test_a_request_short_of_time_does_not_take_its_batch_to_the_floor(models, logs):
    from relist.data.logs import logged_requests

    pipeline = build_pipeline("b", models.store, PipelineConfig.of(["upstream", "beam"], incumbent="beam"), models)
    requests, _ = logged_requests(logs, "test", 3)
    inputs = [pipeline.request_input(None, ids[real], scores[real], 10)
              for ids, scores, real in zip(requests.candidates, requests.cand_scores, requests.mask, strict=True)]
    first, m = pipeline.ranking.run_order[0], max(inp.m for inp in inputs)
    assert first == "beam"
    for rows in (1, 2, 4):  # the incumbent is known to take 5 ms whatever the batch
        pipeline.costs.record(first, rows * m * 10, 5.0, rows)
    served = pipeline.rerank_batch(inputs, budget_ms=[1000.0, 1.0, 1000.0])
    assert [r.generator for r in served] == ["beam", UPSTREAM, "beam"]
    assert [r.batch for r in served] == [2, 1, 2] and "beam" in served[1].skipped
    tight = pipeline.rerank_batch(inputs, budget_ms=1.0)  # nobody affords it: one batch on the floor
    assert [r.generator for r in tight] == [UPSTREAM] * 3 and {r.batch for r in tight} == {3}
