"""LAST: Δθ is thrown away (also under threads), step 0 is GRN, the budget holds, the evaluator gains."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from relist.data.logs import logged_requests
from relist.io.config import CONFIGS, load_config
from relist.models.evaluator import DCWNConfig, Evaluator
from relist.models.generator import GRN, GRNConfig
from relist.models.inputs import list_inputs
from relist.models.vocab import Vocab
from relist.rerank.budget import Budget
from relist.rerank.generators import Context
from relist.rerank.grn import GRNGreedy, rules_hook
from relist.rerank.last import (
    LAST,
    LASTConfig,
    _ActivationShift,
    _directions,
    _sample_with_grad,
    branch_free_rules_hook,
)
from relist.rerank.list_ranking import ListRanking, ListRankingConfig
from relist.rerank.list_scorer import ListScorer, pessimistic
from relist.rerank.local_search import LocalSearchConfig
from relist.rerank.rules import BusinessRules

TINY = GRNConfig(dim=8, hidden=16, heads=2, list_len=10)


@pytest.fixture(scope="module")
def scorer(models):
    return models.evaluator


def context(store, budget_ms: float = float("inf")) -> Context:
    return Context(store, BusinessRules(cate_window=2), budget=Budget(budget_ms))


@pytest.fixture(scope="module")
def grn(store):
    torch.manual_seed(0)
    return GRN(Vocab.of(store), TINY).eval()


@pytest.fixture(scope="module")
def requests(logs):
    return logged_requests(logs, "test", 200)[0]


def weights_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode() + value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def assert_valid_lists(lists: np.ndarray, requests, n: int = 10) -> None:
    assert lists.shape == (len(requests), n)
    for row, items in enumerate(lists):
        assert len(set(items.tolist())) == n
        assert set(items.tolist()) <= set(requests.candidates[row][requests.mask[row]].tolist())


def test_config_file_loads_and_directions_need_samples():
    cfg = load_config(CONFIGS / "last.yaml", LASTConfig)
    assert cfg.k == cfg.directions * len(cfg.step_sizes)
    with pytest.raises(ValueError, match="samples"):
        LASTConfig(directions=4, samples=2)


@pytest.mark.parametrize("shift", ["activations", "pointer", "all"])
def test_step_size_zero_reproduces_grn(grn, scorer, store, requests, shift):
    expected = GRNGreedy(grn).propose(requests[:24], 10, context(store))
    cfg = LASTConfig(shift=shift, step_sizes=(0.0,), serve_samples=False)
    ctx = context(store)
    result = LAST(grn, scorer, cfg).rerank(requests[:1], 10, ctx)
    assert (LAST(grn, scorer, cfg).propose(requests[:24], 10, context(store)) == expected).all()
    assert result.source.tolist() == ["greedy"] and not ctx.budget.exceeded


def test_branch_free_rules_match_the_rules_hook(store, requests):
    rules = BusinessRules(cate_window=3, max_per_shop=1, pinned={0: int(requests.candidates[0, 5])})
    batch = list_inputs(store, requests[:32])
    exact, free = rules_hook(rules, batch), branch_free_rules_hook(rules, batch)
    rows, generator = torch.arange(32), torch.Generator().manual_seed(0)
    for slot in range(6):
        prefix = torch.stack([torch.randperm(50, generator=generator)[:slot] for _ in rows])
        chosen = torch.zeros(32, 50, dtype=torch.bool).scatter(1, prefix, True)
        assert torch.equal(exact(rows, prefix, chosen, slot), free(rows, prefix, chosen, slot))


def test_the_gradient_direction_raises_the_advantage_weighted_logp(grn, store, requests):
    batch = list_inputs(store, requests[:8])
    with torch.no_grad():
        space = _ActivationShift(grn, batch, grn.encode(batch), 10, BusinessRules(), 1.0)
        choice, slope = _sample_with_grad(space, None, 4, torch.Generator().manual_seed(1))
        weights = torch.randn(8, 1, 4, generator=torch.Generator().manual_seed(2))
        direction = {name: 1e-3 * d[:, 0] for name, d in _directions(space, slope, weights).items()}
        logp = space.decode(None, samples=4, forced=choice)["logp"]
        moved = space.decode(direction, samples=4, forced=choice)["logp"]
    gain = (weights[:, 0] * (moved - logp)).sum(1)
    assert (gain > 0).all()


def test_one_backward_pass_gives_every_directions_gradient(grn, store, requests):
    """Per-sample probes and one backward pass equal D backward passes through one shared probe, taken on the
    eager decoder's own log-probabilities of the same lists."""
    batch = list_inputs(store, requests[:8])
    with torch.no_grad():
        space = _ActivationShift(grn, batch, grn.encode(batch), 10, BusinessRules(cate_window=2), 1.0)
        choice, slope = _sample_with_grad(space, None, 4, torch.Generator().manual_seed(1))
        weights = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(2))
        fast = space.gradients(slope, weights)
        shared = {name: torch.zeros_like(value, requires_grad=True) for name, value in space.reference().items()}
        with torch.enable_grad():
            eager = space.decode(shared, samples=4, forced=choice)["logp"]
            slow = [torch.autograd.grad((weights[:, j] * eager).sum(), list(shared.values()), retain_graph=True)
                    for j in range(3)]
    for i, name in enumerate(shared):
        torch.testing.assert_close(fast[name], torch.stack([g[i] for g in slow], 1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_last_never_serves_below_the_grn_list_by_the_pessimistic_value(grn, scorer, store, requests, mode):
    cfg = LASTConfig(mode=mode)
    result = LAST(grn, scorer, cfg).rerank(requests, 10, context(store))
    assert_valid_lists(result.lists, requests)

    def value(lists):
        return pessimistic(scorer.values(requests, lists), cfg.beta)

    floor = value(GRNGreedy(grn).propose(requests, 10, context(store))[:, 0])
    served = value(result.lists)
    np.testing.assert_allclose(served, result.reward, rtol=1e-4, atol=1e-6)
    assert (served >= floor - 1e-5).all() and served.mean() > floor.mean()
    assert set(result.source) - {"greedy"}, "the search never found a better list"


def test_a_tiny_budget_returns_the_greedy_floor_and_says_so(grn, scorer, store, requests):
    greedy = GRNGreedy(grn).propose(requests[:1], 10, context(store))[:, 0]
    tiny = context(store, budget_ms=1e-3)
    result = LAST(grn, scorer, LASTConfig()).rerank(requests[:1], 10, tiny)
    assert tiny.budget.exceeded and "last.explore" in tiny.budget.skipped and result.source.tolist() == ["greedy"]
    assert (result.lists == greedy).all()
    assert_valid_lists(result.lists, requests[:1])
    roomy = context(store, budget_ms=60_000)
    LAST(grn, scorer, LASTConfig()).rerank(requests[:1], 10, roomy)
    assert not roomy.budget.exceeded and "last.score" in roomy.budget.timings_ms


def test_deployed_weights_unchanged_after_1000_concurrent_requests(grn, store, requests):
    torch.manual_seed(1)  # a small evaluator of its own: this test is about threads, not about its quality
    scorer = ListScorer(Evaluator(Vocab.of(store), DCWNConfig(dim=4, hidden=4, heads=1, members=2, prior=False)), store)
    before = weights_hash(grn), weights_hash(scorer.model)
    cheap = LASTConfig(samples=2, directions=1, step_sizes=(0.1, 0.3))
    last = LAST(grn, scorer, cheap)
    singles = [requests[i % len(requests) : i % len(requests) + 1] for i in range(1000)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda r: last.rerank(r, 10, context(store)).lists[0], singles))
    assert (weights_hash(grn), weights_hash(scorer.model)) == before
    alone = [last.rerank(r, 10, context(store)).lists[0] for r in singles[:50]]  # no request saw another's Δθ
    assert (np.stack(threaded[:50]) == np.stack(alone)).all()
    weights = LAST(grn, scorer, cheap.model_copy(update={"shift": "pointer"}))
    with ThreadPoolExecutor(4) as pool:
        shifted = list(pool.map(lambda r: weights.rerank(r, 10, context(store)).lists[0], singles[:24]))
    assert (np.stack(shifted) == weights.propose(requests[:24], 10, context(store))[:, 0]).all()
    assert (weights_hash(grn), weights_hash(scorer.model)) == before


def test_last_plugs_into_list_ranking(grn, scorer, store, requests):
    generators = {"grn": GRNGreedy(grn), "last": LAST(grn, scorer, LASTConfig())}
    cfg = ListRankingConfig(incumbent="grn", refine=LocalSearchConfig(rounds=0))
    ranked = ListRanking(generators, scorer, cfg, "grn").rank(requests[:64], 10, context(store))
    assert_valid_lists(ranked.lists, requests[:64])
    assert set(ranked.source) <= {"grn", "last"}


def test_the_lists_left_unscored_for_list_ranking_hold_the_list_last_serves(grn, scorer, store, requests):
    last = LAST(grn, scorer, LASTConfig())
    served = last.propose(requests[:64], 10, context(store))[:, 0]
    handed = last.unscored(requests[:64], 10, context(store))
    assert handed.shape == (64, 1 + last.cfg.k, 10)
    assert (handed == served[:, None]).all(-1).any(1).all()
    assert (handed[:, 1:] != handed[:, :1]).any(-1).any(), "no shift moved any list"
