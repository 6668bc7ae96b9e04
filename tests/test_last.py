"""LAST: Δθ is thrown away (also under threads), step 0 is GRN, the budget holds, the evaluator gains."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from relist.data.logs import logged_requests
from relist.models.evaluator import DCWNConfig
from relist.models.generator import GRN, GRNConfig, candidate_features
from relist.models.vocab import Vocab
from relist.rerank.grn_policy import GRNPolicy, rules_hook
from relist.rerank.last import (
    LAST,
    LASTConfig,
    LASTPolicy,
    _ActivationShift,
    _directions,
    _sample_with_grad,
    branch_free_rules_hook,
)
from relist.rerank.list_ranking import ListRanking
from relist.rerank.list_scorer import ListScorer
from relist.rerank.rules import BusinessRules
from relist.train.config import TrainConfig, load_config
from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator

TINY = GRNConfig(dim=8, hidden=16, heads=2, list_len=10)
CONFIGS = Path(__file__).resolve().parent.parent / "relist" / "configs"


@pytest.fixture(scope="module")
def scorer(logs, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("dcwn")
    train = TrainConfig(epochs=1, batch_size=64, lr=0.01, monitor="click_logloss", num_threads=1)
    model = DCWNConfig(dim=8, hidden=8, dropout=0.0)
    train_evaluator(EvaluatorTrainConfig(model=model, train=train), logs, out)
    return ListScorer.load(out, store)


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
    rules = BusinessRules(cate_window=2)
    expected = GRNPolicy(grn, store, rules=rules)(requests[:24], 10)
    cfg = LASTConfig(shift=shift, step_sizes=(0.0,), serve_samples=False, budget_ms=None)
    result = LAST(grn, scorer, store, cfg).rerank(requests[:1], 10)
    assert (LASTPolicy(LAST(grn, scorer, store, cfg))(requests[:24], 10) == expected).all()
    assert result.source.tolist() == ["greedy"] and not result.budget_exceeded


def test_branch_free_rules_match_the_rules_hook(store, requests):
    rules = BusinessRules(cate_window=3, max_per_shop=1, pinned={0: int(requests.candidates[0, 5])})
    some = requests[:32]
    batch = candidate_features(store, some.user_id, some.candidates, some.cand_scores)
    exact, free = rules_hook(rules, batch), branch_free_rules_hook(rules, batch)
    rows, generator = torch.arange(32), torch.Generator().manual_seed(0)
    for slot in range(6):
        prefix = torch.stack([torch.randperm(50, generator=generator)[:slot] for _ in rows])
        chosen = torch.zeros(32, 50, dtype=torch.bool).scatter(1, prefix, True)
        assert torch.equal(exact(rows, prefix, chosen, slot), free(rows, prefix, chosen, slot))


def test_the_gradient_direction_raises_the_advantage_weighted_logp(grn, store, requests):
    batch = candidate_features(store, requests.user_id[:8], requests.candidates[:8], requests.cand_scores[:8])
    with torch.no_grad():
        space = _ActivationShift(grn, batch, grn.encode(batch), 10, BusinessRules(), 1.0)
        choice, logp, probe = _sample_with_grad(space, None, 4, torch.Generator().manual_seed(1))
        weights = torch.randn(8, 1, 4, generator=torch.Generator().manual_seed(2))
        direction = {name: 1e-3 * d[:, 0] for name, d in _directions(space, logp, probe, weights).items()}
        moved = space.decode(direction, samples=4, forced=choice)["logp"]
    gain = (weights[:, 0] * (moved - logp.detach())).sum(1)
    assert (gain > 0).all()


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_last_never_serves_below_the_grn_list_by_the_evaluator(grn, scorer, store, requests, mode):
    cfg = LASTConfig(mode=mode, budget_ms=None)
    result = LAST(grn, scorer, store, cfg).rerank(requests, 10)
    assert_valid_lists(result.lists, requests)
    floor = scorer.list_reward(requests.user_id, GRNPolicy(grn, store, rules=BusinessRules())(requests, 10))
    served = scorer.list_reward(requests.user_id, result.lists)
    np.testing.assert_allclose(served, result.reward, rtol=1e-5)
    assert (served >= floor - 1e-6).all() and served.mean() > floor.mean()
    assert set(result.source) - {"greedy"}, "the search never found a better list"


def test_a_tiny_budget_returns_the_flagged_greedy_floor(grn, scorer, store, requests):
    greedy = GRNPolicy(grn, store, rules=BusinessRules())(requests[:1], 10)
    result = LAST(grn, scorer, store, LASTConfig(budget_ms=1e-3)).rerank(requests[:1], 10)
    assert result.budget_exceeded and result.source.tolist() == ["greedy"]
    assert (result.lists == greedy).all()
    assert_valid_lists(result.lists, requests[:1])
    roomy = LAST(grn, scorer, store, LASTConfig(budget_ms=60_000)).rerank(requests[:1], 10)
    assert not roomy.budget_exceeded and "score" in roomy.timings_ms


def test_deployed_weights_unchanged_after_1000_concurrent_requests(grn, scorer, store, requests):
    before = weights_hash(grn), weights_hash(scorer.model)
    cheap = LASTConfig(samples=2, directions=1, step_sizes=(0.1, 0.3), budget_ms=None)
    last = LAST(grn, scorer, store, cheap)
    singles = [requests[i % len(requests) : i % len(requests) + 1] for i in range(1000)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda r: last.rerank(r, 10).lists[0], singles))
    assert (weights_hash(grn), weights_hash(scorer.model)) == before
    alone = [last.rerank(r, 10).lists[0] for r in singles[:50]]  # no request saw another's Δθ
    assert (np.stack(threaded[:50]) == np.stack(alone)).all()
    weights = LAST(grn, scorer, store, cheap.model_copy(update={"shift": "pointer"}))
    with ThreadPoolExecutor(4) as pool:
        shifted = list(pool.map(lambda r: weights.rerank(r, 10).lists[0], singles[:24]))
    assert (np.stack(shifted) == LASTPolicy(weights)(requests[:24], 10)).all()
    assert (weights_hash(grn), weights_hash(scorer.model)) == before


def test_last_plugs_into_list_ranking(grn, scorer, store, requests):
    policies = {
        "grn": GRNPolicy(grn, store, rules=BusinessRules()),
        "last": LASTPolicy(LAST(grn, scorer, store, LASTConfig(budget_ms=None))),
    }
    ranked = ListRanking(policies, scorer, store, BusinessRules()).rank(requests[:64], 10)
    assert_valid_lists(ranked.lists, requests[:64])
    last_lr = scorer.list_reward(requests.user_id[:64], policies["last"](requests[:64], 10))
    assert (ranked.reward >= last_lr - 1e-6).all()
