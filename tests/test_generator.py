"""GRN decoding (pointer masks, rules, purity), its pessimistic rewards, policy-gradient training and the
generators built on it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.func import functional_call

from relist.data.logs import logged_requests
from relist.io.train_config import TrainConfig
from relist.models.generator import GRN, GRNConfig, chosen_items, load_generator
from relist.models.inputs import list_inputs
from relist.models.vocab import Vocab
from relist.objective import Objective
from relist.rerank.generators import Context
from relist.rerank.grn import GRNGreedy, GRNSamples, rules_hook
from relist.rerank.rules import BusinessRules, RulesConfig, item_attributes
from relist.train.generator import GeneratorTrainConfig, greedy_value, step_rewards, train_generator, without_each

TINY = GRNConfig(dim=8, hidden=16, heads=2, list_len=10)


def request_batch(logs, store, k=16):
    requests, _ = logged_requests(logs, "test", k)
    return requests, list_inputs(store, requests)


def test_decoded_lists_are_distinct_real_candidates(logs, store):
    torch.manual_seed(0)
    requests, batch = request_batch(logs, store)
    batch["mask"][0, 12:] = False  # a request with only 12 real candidates ...
    batch["mask"][1, 6:] = False  # ... and one with fewer than n: the rest stays empty
    out = GRN(Vocab.of(store), TINY)(batch, samples=3)
    choice = out["choice"]
    assert choice.shape == (16, 3, 10) and out["logp"].shape == (16, 3)
    for b, k in itertools.product(range(16), range(3)):
        picked = choice[b, k][choice[b, k] >= 0]
        assert len(set(picked.tolist())) == len(picked)
        assert batch["mask"][b, picked].all()
    assert (choice[1, :, 6:] == -1).all() and (choice[1, :, :6] >= 0).all()
    assert (choice[0] < 12).all()
    torch.testing.assert_close(out["logp"], out["step_logp"].sum(-1))


def test_list_probabilities_sum_to_one_over_all_permutations(logs, store):
    torch.manual_seed(0)
    _, batch = request_batch(logs, store, 1)
    batch["mask"][:, 4:] = False  # 4 candidates, lists of 3: 24 arrangements
    perms = torch.tensor(list(itertools.permutations(range(4), 3)))
    model = GRN(Vocab.of(store), TINY)
    out = model(batch, n=3, samples=len(perms), forced=perms[None])
    assert out["logp"].exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_sampling_is_reproducible_and_decode_is_a_function_of_params(logs, store):
    torch.manual_seed(0)
    _, batch = request_batch(logs, store)
    model = GRN(Vocab.of(store), TINY).eval()
    params = dict(model.named_parameters())

    def decode(p, seed):
        generator = torch.Generator().manual_seed(seed)
        return functional_call(model, p, (batch,), {"samples": 4, "generator": generator})

    a, b = decode(params, 7), decode(params, 7)
    assert torch.equal(a["choice"], b["choice"]) and torch.equal(a["logp"], b["logp"])
    direct = model(batch, samples=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a["choice"], direct["choice"])
    shifted = {name: p + 0.5 * torch.randn_like(p) for name, p in params.items()}
    forced = functional_call(model, shifted, (batch,), {"samples": 4, "forced": a["choice"]})
    assert not torch.allclose(forced["logp"], a["logp"])


def test_business_rules_hold_in_decoded_lists(logs, store):
    torch.manual_seed(0)
    requests, batch = request_batch(logs, store, 64)
    rules = BusinessRules(cate_window=2, max_per_shop=1)
    out = GRN(Vocab.of(store), TINY)(batch, samples=2, allowed_fn=rules_hook(rules, batch))
    lists = chosen_items(batch["candidates"], out["choice"]).reshape(128, 10)
    cates, shops = item_attributes(store, lists)
    assert rules.check(cates, shops).float().mean() > 0.95  # relaxed only where nothing else fits
    unruled = GRN(Vocab.of(store), TINY)(batch, samples=2)
    free = chosen_items(batch["candidates"], unruled["choice"]).reshape(128, 10)
    assert rules.check(*item_attributes(store, free)).float().mean() < 0.5


def test_without_each_removes_one_slot_and_moves_the_rest_up():
    lists = torch.tensor([[5, 6, 7]])
    assert without_each(lists).tolist() == [[[6, 7, 0], [5, 7, 0], [5, 6, 0]]]


def test_advantage_reward_is_value_with_minus_without_per_member(models, logs):
    scorer = models.evaluator
    requests, shown = logged_requests(logs, "test", 4)
    lists = torch.tensor(shown)
    own = scorer.terms(requests, lists)[..., 1]  # IPV: each slot's exposure x click probability
    torch.testing.assert_close(step_rewards(scorer, requests, lists, "self"), own)
    advantage = step_rewards(scorer, requests, lists, "advantage")
    assert advantage.shape == (scorer.members, 4, 10)
    for t in (0, 4, 9):
        rest = torch.cat([lists[:, :t], lists[:, t + 1 :], torch.zeros_like(lists[:, :1])], 1)
        expected = scorer.values(requests, lists) - scorer.values(requests, rest)
        torch.testing.assert_close(advantage[:, :, t], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(advantage, own)  # the differential part is not zero
    gmv = step_rewards(scorer, requests, lists, "self", Objective.of("gmv"))
    torch.testing.assert_close(gmv, scorer.terms(requests, lists)[..., 3])


def test_policy_gradient_raises_the_pessimistic_value(logs, store, models_dir, models, tmp_path):
    cfg = GeneratorTrainConfig(
        model=TINY, samples=4, valid_requests=100, imitation=0.0, rules=RulesConfig(cate_window=1),
        train=TrainConfig(epochs=2, batch_size=32, lr=0.01, max_steps_per_epoch=12, monitor="value",
                          monitor_mode="max", patience=None, num_threads=1),
    )
    torch.manual_seed(cfg.train.seed)
    requests, _ = logged_requests(logs, "valid", 100)
    validate = greedy_value(models.evaluator, requests, store, cfg)
    before = validate(GRN(Vocab.of(store), TINY))["value"]
    result = train_generator(cfg, logs, models_dir / "evaluator", tmp_path, ranker_dir=models_dir / "ranker")
    model, spec = load_generator(tmp_path)
    assert spec.model == TINY and (tmp_path / "generator_train.yaml").is_file()
    after = validate(model)["value"]
    assert after == pytest.approx(result.best_metric, rel=1e-4)
    assert after > before


def test_imitation_pulls_the_generator_towards_the_logging_policys_choice(logs, store, models_dir, tmp_path):
    from relist.rerank.policy import GreedyUpstreamScore

    requests, _ = logged_requests(logs, "valid", 100)
    ctx = Context(store, BusinessRules(cate_window=1))
    reference = GreedyUpstreamScore().propose(requests, 10, ctx)[:, 0]
    agreement = {}
    for weight in (0.0, 5.0):
        cfg = GeneratorTrainConfig(
            model=TINY, samples=4, valid_requests=50, imitation=weight, rules=RulesConfig(cate_window=1),
            train=TrainConfig(epochs=1, batch_size=32, lr=0.01, max_steps_per_epoch=20, monitor="value",
                              monitor_mode="max", patience=None, num_threads=1))
        train_generator(cfg, logs, models_dir / "evaluator", tmp_path / str(weight), ranker_dir=models_dir / "ranker")
        lists = GRNGreedy(load_generator(tmp_path / str(weight))[0]).propose(requests, 10, ctx)[:, 0]
        agreement[weight] = (lists == reference).mean()
    assert agreement[5.0] > agreement[0.0]


def test_grn_generators_propose_candidates_reproducibly(logs, store):
    requests, _ = logged_requests(logs, "test", 16)
    model = GRN(Vocab.of(store), TINY)
    ctx = Context(store, BusinessRules(cate_window=0))
    greedy = GRNGreedy(model).propose(requests, 10, ctx)
    assert greedy.shape == (16, 1, 10)
    assert all(set(row[0]) <= set(cands) and len(set(row[0])) == 10
               for row, cands in zip(greedy, requests.candidates, strict=True))
    np.testing.assert_array_equal(greedy, GRNGreedy(model).propose(requests, 10, ctx))
    samples = GRNSamples(model, samples=6, seed=3).propose(requests, 10, ctx)
    assert samples.shape == (16, 6, 10)
    np.testing.assert_array_equal(samples, GRNSamples(model, samples=6, seed=3).propose(requests, 10, ctx))
    assert not np.array_equal(samples, GRNSamples(model, samples=6, seed=4).propose(requests, 10, ctx))


def test_greedy_ctr_reference_reads_the_teacher_from_the_evaluator_or_the_ranker_dir(models, models_dir, logs, store):
    from types import SimpleNamespace

    from relist.io.config import ConfigError
    from relist.rerank.registry import GENERATORS, RerankConfig
    from relist.train.generator import reference_generator

    cfg = GeneratorTrainConfig(imitation=0.1, imitate="greedy_ctr")
    no_prior = SimpleNamespace(prior=None)  # an evaluator trained without the teacher
    with pytest.raises(ConfigError, match="--ranker"):
        reference_generator(cfg, no_prior)
    requests, _ = logged_requests(logs, "valid", 8)
    ctx = Context(store, RulesConfig().build())
    expected = GENERATORS["greedy_ctr"](models, RerankConfig()).propose(requests, 5, ctx)
    for reference in (reference_generator(cfg, models.evaluator), reference_generator(cfg, no_prior,
                                                                                      models_dir / "ranker")):
        np.testing.assert_array_equal(reference.propose(requests, 5, ctx), expected)
