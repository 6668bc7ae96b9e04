"""List ranking: every distinct proposal scored in one batch, rules first, a safe incumbent, local search."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relist.data.logs import logged_requests
from relist.rerank.budget import Budget, StageCosts
from relist.rerank.generators import Context
from relist.rerank.list_ranking import FLOOR, ListRanking, ListRankingConfig, duplicates
from relist.rerank.list_scorer import pessimistic
from relist.rerank.local_search import LocalSearch, LocalSearchConfig, neighbours, position_moves
from relist.rerank.policy import RandomOrder, Upstream
from relist.rerank.rules import BusinessRules

NO_SEARCH = LocalSearchConfig(rounds=0)


class Fixed:
    """A generator proposing given lists."""

    def __init__(self, lists: np.ndarray):
        self.lists = lists

    def propose(self, requests, n, ctx):
        return self.lists if self.lists.ndim == 3 else self.lists[:, None]


class TableScorer:
    """Member values of a list looked up from its items (a deterministic function of the list), counting calls."""

    def __init__(self, members: int = 3, seed: int = 0):
        self.members, self.seed, self.calls = members, seed, []

    def on_store(self, store):
        return self

    def values(self, requests, lists, objective=None):
        proposals = lists if lists.ndim == 3 else lists[:, None]
        self.calls.append(proposals.shape[0] * proposals.shape[1])
        key = (proposals * np.arange(1, proposals.shape[-1] + 1)).sum(-1) % 997  # [B, K]
        member = np.arange(self.members)[:, None, None]
        values = np.sin(key[None] * 0.37 + member * 1.3 + self.seed) + 0.2 * np.cos(key[None] * 1.7)
        return values if lists.ndim == 3 else values[..., 0]


def test_serves_the_best_proposal_scored_once_and_names_its_generator(logs, store):
    requests, _ = logged_requests(logs, "test", 30)
    ctx = Context(store, BusinessRules(cate_window=0))
    several = np.concatenate([RandomOrder(s).propose(requests, 10, ctx) for s in (2, 3, 4)], 1)
    generators = {"upstream": Upstream(), "random": RandomOrder(1), "again": Upstream(), "several": Fixed(several)}
    scorer = TableScorer()
    cfg = ListRankingConfig(incumbent=None, beta=0.0, refine=NO_SEARCH)
    ranked = ListRanking(generators, scorer, cfg).rank(requests, 10, ctx)
    proposals = np.concatenate([Upstream().propose(requests, 10, ctx), RandomOrder(1).propose(requests, 10, ctx),
                                several], 1)
    values = scorer.values(requests, proposals).mean(0)
    best = values.argmax(1)
    np.testing.assert_array_equal(ranked.lists, proposals[np.arange(len(best)), best])
    np.testing.assert_allclose(ranked.reward, values.max(1))
    expected = np.array(["upstream", "random", "several", "several", "several"])[best]
    np.testing.assert_array_equal(ranked.source, expected)  # a duplicate credits the first generator
    assert scorer.calls[0] == 6 * len(requests)  # one batch (the duplicate "again" list is scored but never wins)


def test_rule_breaking_lists_lose_to_any_list_that_keeps_the_rules(logs, store):
    requests, _ = logged_requests(logs, "test", 30)
    rules = BusinessRules(cate_window=2)
    ctx = Context(store, rules)
    cates, _ = ctx.attributes(requests)
    breaking = np.stack([row[np.argsort(c, kind="stable")][:10]
                         for row, c in zip(requests.candidates, cates.numpy(), strict=True)])
    cfg = ListRankingConfig(incumbent=None, refine=NO_SEARCH)
    ranked = ListRanking({"breaking": Fixed(breaking), "upstream": Upstream()}, TableScorer(), cfg).rank(requests, 10,
                                                                                                       ctx)
    keeps = ctx.keeps_rules(requests, ranked.lists[:, None])[:, 0]
    upstream_keeps = ctx.keeps_rules(requests, requests.candidates[:, None, :10])[:, 0]
    assert (keeps | ranked.breaks_rules).all()
    np.testing.assert_array_equal(ranked.breaks_rules, ~upstream_keeps & ~keeps)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 3.0), st.floats(0.0, 0.5))
def test_a_list_the_incumbent_dominates_is_never_served_instead_of_it(seed, beta, margin):
    rng = np.random.default_rng(seed)
    b, k, n, members = 12, 6, 4, 3
    requests = _requests(b, 20, rng)
    lists = np.stack([np.stack([rng.permutation(row)[:n] for _ in range(k)]) for row in requests.candidates])
    values = rng.normal(size=(members, b, k))

    class Given:
        def on_store(self, store):
            return self

        def values(self, requests, proposals, objective=None):
            return values

    cfg = ListRankingConfig(incumbent="inc", beta=beta, margin=margin, refine=NO_SEARCH)
    generators = {"inc": Fixed(lists[:, :1]), "others": Fixed(lists[:, 1:])}
    ctx = Context(_NoStore(), BusinessRules(cate_window=0))
    ranked = ListRanking(generators, Given(), cfg, "inc").rank(requests, n, ctx)
    picked = np.array([[(lists[r, j] == ranked.lists[r]).all() for j in range(k)] for r in range(b)]).argmax(1)
    dominated = (values[:, np.arange(b), 0] >= values[:, np.arange(b), picked]).all(0)
    assert (picked[dominated] == 0).all()
    gain = pessimistic(values - values[:, :, :1], beta)[np.arange(b), picked]
    assert (gain[picked != 0] > margin).all()  # a challenger wins only by more than the margin


def test_the_incumbent_runs_first_and_is_served_when_scoring_is_out_of_time(logs, store):
    requests, _ = logged_requests(logs, "test", 10)
    ctx = Context(store, BusinessRules(cate_window=0), budget=Budget(60_000.0, costs := StageCosts()))
    costs.record("list_ranking.score", 1.0, 1e9)  # scoring is known to overrun the budget
    generators = {"upstream": Upstream(), "random": RandomOrder(1), "inc": RandomOrder(2)}
    ranking = ListRanking(generators, TableScorer(), ListRankingConfig(refine=NO_SEARCH), incumbent="inc")
    assert ranking.run_order == ["inc", "upstream", "random"]
    ranked = ranking.rank(requests, 10, ctx)
    np.testing.assert_array_equal(ranked.lists, RandomOrder(2).propose(requests, 10, ctx)[:, 0])
    assert (ranked.source == "inc").all() and np.isnan(ranked.reward).all()
    assert ctx.budget.skipped == ["upstream", "random"]  # challengers whose lists could not be scored


def test_a_challenger_runs_only_when_the_choice_still_fits_after_it(logs, store):
    requests, _ = logged_requests(logs, "test", 10)
    size = len(requests) * requests.candidates.shape[1] * 10
    for budget_ms, runs in ((50.0, True), (25.0, False)):  # challenger 20 ms, then scoring 10 ms
        costs = StageCosts()
        costs.record("challenger", size, 20.0, len(requests))
        costs.record("list_ranking.score", len(requests) * 2 * 10, 10.0, len(requests))
        ctx = Context(store, BusinessRules(cate_window=0), budget=Budget(budget_ms, costs, rows=len(requests)))
        generators = {"inc": RandomOrder(2), "challenger": RandomOrder(3)}
        ranked = ListRanking(generators, TableScorer(), ListRankingConfig(refine=NO_SEARCH), "inc").rank(
            requests, 10, ctx)
        assert ranked.scored == runs and ("challenger" in ctx.budget.skipped) != runs


def test_an_incumbent_left_alone_with_the_floor_serves_its_first_list_unscored_unless_asked_to_choose(logs, store):
    requests, _ = logged_requests(logs, "test", 12)
    ctx = Context(store, BusinessRules(cate_window=0))
    lists = np.concatenate([RandomOrder(s).propose(requests, 10, ctx) for s in (1, 2, 3)], 1)  # like beam's k
    alone = {FLOOR: Upstream(), "inc": Fixed(lists)}  # as the server builds a version: the upstream floor too
    for generators, choose, scored in ((alone, True, True), (alone, False, False),
                                       (alone | {"challenger": RandomOrder(4)}, False, True)):
        scorer = TableScorer()
        cfg = ListRankingConfig(refine=NO_SEARCH, choose_within_incumbent=choose)
        budget = Context(store, BusinessRules(cate_window=0), budget=Budget(60_000.0))
        ranked = ListRanking(generators, scorer, cfg, incumbent="inc").rank(requests, 10, budget)
        assert ranked.scored == scored and bool(scorer.calls) == scored
        if scored:
            assert (ranked.lists != lists[:, 0]).any(1).any()  # the evaluator chose among them
        else:
            np.testing.assert_array_equal(ranked.lists, lists[:, 0])
            assert (ranked.source == "inc").all()
    off = ListRankingConfig(refine=NO_SEARCH, choose_within_incumbent=False)
    offline = ListRanking(alone, TableScorer(), off, incumbent="inc").rank(requests, 10, ctx)
    assert offline.scored  # without a time budget the lists are still scored (the evaluation's reward)


def test_local_search_never_ends_below_its_start(logs, store):
    requests, _ = logged_requests(logs, "test", 20)
    ctx = Context(store, BusinessRules(cate_window=2))
    start = RandomOrder(5).propose(requests, 10, ctx)[:, 0]
    scorer = TableScorer(members=3)

    def criterion(rows, lists):
        return pessimistic(scorer.values(requests[rows], lists), 1.0)

    before = criterion(np.arange(len(start)), start[:, None])[:, 0]
    better, value, moves = LocalSearch(LocalSearchConfig(rounds=4)).improve(requests, start, ctx, criterion)
    np.testing.assert_allclose(value, criterion(np.arange(len(start)), better[:, None])[:, 0])
    assert (value >= before - 1e-12).all() and (moves > 0).any()
    assert (value[moves > 0] > before[moves > 0]).all()
    assert ctx.keeps_rules(requests, better[:, None])[:, 0][ctx.keeps_rules(requests, start[:, None])[:, 0]].all()


def test_neighbours_are_one_move_away_and_real():
    rng = np.random.default_rng(0)
    requests = _requests(3, 12, rng)
    lists = requests.candidates[:, :5].copy()
    lists[2, 3:] = 0  # a short list: padding never moves inward
    moved, ok = neighbours(requests, lists, pool=4)
    assert moved.shape[1] == len(position_moves(5)) + 5 * 4
    for row in range(3):
        for lst in moved[row][ok[row]]:
            real = lst[lst != 0]
            assert len(set(real)) == len(real) and set(real) <= set(requests.candidates[row])
            assert 1 <= ((lst != lists[row]).sum()) <= 5
            assert (lst[(lists[row] == 0)] == 0).all()


def test_duplicates_keep_the_first_copy():
    lists = np.array([[[1, 2], [2, 1], [1, 2], [2, 1], [3, 4]]])
    assert duplicates(lists).tolist() == [[False, False, True, True, False]]


class _NoStore:
    """Stands in for a feature store where nothing reads one (rules off, attributes unknown)."""

    def item_features(self, ids):
        import torch

        zeros = torch.zeros(np.asarray(ids).shape, dtype=torch.long)
        return {"cate": zeros, "shop": zeros}


def _requests(b: int, m: int, rng: np.random.Generator):
    from relist.data.requests import Requests

    candidates = np.stack([rng.choice(np.arange(1, 500), m, replace=False) for _ in range(b)])
    return Requests.from_arrays(np.arange(b), np.ones(b), candidates, rng.random((b, m)))


def test_generators_rarely_served_on_validation_are_left_out_but_never_the_incumbent(models, logs):
    from relist.rerank.registry import RerankConfig, build_ranking

    valid, _ = logged_requests(logs, "valid", 60)
    names = ["upstream", "greedy_upstream_score", "greedy_ctr", "beam", "grn", "grn_samples"]
    cfg = RerankConfig(ranking=ListRankingConfig(generators=names, min_share=0.3, refine=NO_SEARCH))
    ranking, left_out, choice = build_ranking(models, cfg, validation=(valid, 10))
    shares = choice["served_share_on_validation"]
    assert set(shares) >= set(names) and abs(sum(shares.values()) - 1.0) < 1e-9
    assert ranking.incumbent in ranking.generators
    for name in shares:
        kept = name in ranking.generators
        assert kept == (name == ranking.incumbent or shares[name] >= 0.3)
        assert kept or any(line.startswith(f"{name}: served on fewer") for line in left_out)
    assert len(ranking.generators) < len(shares)  # something was left out at this share


def test_a_named_incumbent_outside_the_generators_is_built_and_kept_when_rare_ones_are_left_out(models, logs):
    from relist.rerank.registry import RerankConfig, build_ranking

    valid, _ = logged_requests(logs, "valid", 60)
    cfg = RerankConfig(ranking=ListRankingConfig(generators=["upstream", "grn"], incumbent="greedy_ctr",
                                                 min_share=0.3, refine=NO_SEARCH))
    ranking, _, choice = build_ranking(models, cfg, validation=(valid, 10))
    assert ranking.incumbent == "greedy_ctr" and "greedy_ctr" in ranking.generators
    assert "greedy_ctr" in choice["served_share_on_validation"]


def test_the_incumbent_bound_is_on_the_mean_gain_not_on_each_request():
    """Members that disagree on single requests but agree on the average: a real gain, which the mean of
    per-request pessimistic values would call a loss."""
    from relist.rerank.registry import mean_gain_bound

    rng = np.random.default_rng(0)
    gains = 0.02 + rng.normal(0.0, 0.1, (4, 2000))  # [members, requests]
    assert pessimistic(gains, 1.0).mean() < 0 < mean_gain_bound(gains, 1.0) < gains.mean()
    assert mean_gain_bound(np.full((4, 50), 0.3), 1.0) == pytest.approx(0.3)  # nobody doubts it
    assert mean_gain_bound(gains[:, :5], 1.0) < mean_gain_bound(gains, 1.0)  # few requests, less sure
