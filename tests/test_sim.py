"""The simulator is what re-ranking needs: order matters, rewards are exact, the oracle is an upper bound."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relist.data.schema import validate
from relist.sim.config import DEFAULT_CONFIG, SimConfig, load_sim_config
from relist.sim.logs import draw_requests, sample_feedback, simulate_logs
from relist.sim.oracle import exhaustive, oracle_list, search, true_ctr_greedy
from relist.sim.user_model import expected, outcomes
from relist.sim.world import build_world

SMALL = SimConfig.model_validate({"catalogue": {"n_items": 300, "n_cates": 8, "n_shops": 40},
                                  "users": {"n_users": 100}})


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


@pytest.fixture(scope="module")
def default_world():
    return build_world(load_sim_config())


def test_same_items_in_another_order_get_another_reward(world):
    rng = np.random.default_rng(0)
    req = draw_requests(world, np.arange(1, 21), rng)
    lists = req.candidates[:, :10]
    reversed_lists = lists[:, ::-1]
    a, b = expected(world, req.user_id, lists), expected(world, req.user_id, reversed_lists)
    assert np.all(np.abs(a - b) > 1e-9)


def test_expected_reward_matches_sampled_feedback(world):
    """The exact expectation is what sampling the user model converges to."""
    rng = np.random.default_rng(1)
    users = np.full(20_000, 7)
    lists = np.tile(draw_requests(world, np.array([7]), rng).candidates[:, :10], (len(users), 1))
    fb = sample_feedback(world, users, lists, rng)
    out = outcomes(world, users[:1], lists[:1])
    assert fb["click"].sum(1).mean() == pytest.approx(out.ipv[0], rel=0.05)
    assert fb["exposed_len"].mean() == pytest.approx(out.pv[0], rel=0.03)


def test_exhaustive_oracle_equals_brute_force(world):
    rng = np.random.default_rng(2)
    for user in (3, 11, 42):
        cands = rng.choice(np.arange(1, world.n_items + 1), size=6, replace=False)
        best, value = exhaustive(world, user, cands, 3)
        brute = max(float(expected(world, np.array([user]), np.array([p]))[0])
                    for p in itertools.permutations(cands, 3))
        assert value == pytest.approx(brute)
        assert float(expected(world, np.array([user]), best[None])[0]) == pytest.approx(value)


def test_oracle_uses_exhaustive_only_up_to_the_limit(world):
    cands = np.arange(1, 13)
    assert math.perm(12, 4) > 10_000
    best, value = oracle_list(world, 5, cands, 4, exhaustive_limit=10_000)  # search path
    exact, exact_value = exhaustive(world, 5, cands, 4)
    assert value <= exact_value + 1e-12
    assert value >= 0.98 * exact_value  # the search is strong, not just valid


def test_large_search_never_worse_than_greedy(default_world):
    rng = np.random.default_rng(3)
    req = draw_requests(default_world, rng.integers(1, default_world.n_users + 1, 8), rng)
    for user, cands in zip(req.user_id, req.candidates, strict=True):
        _, value = search(default_world, int(user), cands, 10)
        greedy = true_ctr_greedy(default_world, int(user), cands, 10)
        assert value >= float(expected(default_world, np.array([user]), greedy[None])[0]) - 1e-12


def test_default_world_rewards_context_aware_reranking(default_world):
    """Oracle beats greedy-by-true-CTR by >= 5% IPV, or the world has nothing to re-rank for."""
    rng = np.random.default_rng(4)
    req = draw_requests(default_world, rng.integers(1, default_world.n_users + 1, 30), rng)
    oracle = np.array([oracle_list(default_world, int(u), c, 10)[1]
                       for u, c in zip(req.user_id, req.candidates, strict=True)])
    greedy = np.stack([true_ctr_greedy(default_world, int(u), c, 10)
                       for u, c in zip(req.user_id, req.candidates, strict=True)])
    gain = oracle.mean() / expected(default_world, req.user_id, greedy).mean() - 1
    assert gain >= 0.05


def test_the_rule_keeping_oracle_keeps_the_rules_and_beats_every_list_that_does():
    from relist.eval.simulated import rule_check
    from relist.rerank.rules import BusinessRules

    world = build_world(SMALL)
    feasible = rule_check(world, BusinessRules(cate_window=2))
    rng = np.random.default_rng(7)
    for user in (2, 9, 33):
        cands = rng.choice(np.arange(1, world.n_items + 1), size=7, replace=False)
        best, value = oracle_list(world, user, cands, 4, feasible=feasible)
        assert feasible(best[None])[0]
        keeping = np.array([p for p in itertools.permutations(cands, 4) if feasible(np.array([p]))[0]])
        assert value == pytest.approx(expected(world, np.full(len(keeping), user), keeping).max())
        free = oracle_list(world, user, cands, 4)[1]
        assert free >= value - 1e-12  # rules only ever cost the oracle
    cands = rng.choice(np.arange(1, world.n_items + 1), size=20, replace=False)  # the search path
    best, value = oracle_list(world, 4, cands, 8, feasible=feasible)
    greedy = true_ctr_greedy(world, 4, cands, 8, feasible)
    assert feasible(best[None])[0] and value >= float(expected(world, np.array([4]), greedy[None])[0]) - 1e-12
    same = np.flatnonzero(world.cate[1:] == world.cate[1])[:5] + 1  # one category: no list keeps the rules
    stuck, stuck_value = oracle_list(world, 4, same, 3, feasible=feasible)
    assert not feasible(stuck[None])[0] and stuck_value == pytest.approx(oracle_list(world, 4, same, 3)[1])


def test_shipped_worlds_load_and_the_sparse_one_is_sparse():
    configs = {name: load_sim_config(DEFAULT_CONFIG.parent / f"sim_{name}.yaml")
               for name in ("default", "alt", "shift", "sparse")}
    sparse = configs["sparse"]
    assert sparse.catalogue.n_items >= 5000 and sparse.requests.n_candidates == 30
    assert len({c.seed for c in configs.values()}) == 3  # shift is the default world, changed later


def test_alternative_config_has_clearly_different_effects():
    default, alt = load_sim_config(), load_sim_config(DEFAULT_CONFIG.parent / "sim_alt.yaml")
    changed = [k for k, v in default.effects.model_dump().items() if alt.effects.model_dump()[k] != v]
    assert len(changed) >= 5 and alt.seed != default.seed


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("effects:\n  fatigue_click: lots\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*effects\.fatigue_click"):
        load_sim_config(bad)
    bad.write_text("efects: {}\n")
    with pytest.raises(ValueError, match="efects"):
        load_sim_config(bad)


def test_logs_are_valid_deterministic_and_split_in_time(tmp_path):
    world = build_world(SMALL)
    a = simulate_logs(world, tmp_path / "a", 500, batch_size=128, shard_size=200, progress=False)
    simulate_logs(world, tmp_path / "b", 500, batch_size=128, shard_size=200, progress=False)
    assert a["requests"] == {"train": 400, "valid": 50, "test": 50}
    tables = {split: pq.read_table(tmp_path / "a" / "lists" / split) for split in ("train", "valid", "test")}
    for table in tables.values():
        validate(table, "lists", n_items=world.n_items)
    assert tables["train"].column("request_id").to_numpy().max() < tables["valid"].column("request_id").to_numpy().min()
    assert len(list((tmp_path / "a" / "lists" / "train").glob("*.parquet"))) == 2  # shards rotate
    assert pq.read_table(tmp_path / "a" / "lists" / "test").equals(pq.read_table(tmp_path / "b" / "lists" / "test"))
    # unseen positions carry no feedback
    t = tables["train"].to_pydict()
    for click, exposed in zip(t["click"], t["exposed_len"], strict=True):
        assert sum(click[exposed:]) == 0


def test_logs_hide_the_truth(tmp_path):
    world = build_world(SMALL)
    simulate_logs(world, tmp_path, 100, progress=False)
    columns = set()
    for name in ("items", "users"):
        columns |= set(pq.read_schema(tmp_path / f"{name}.parquet").names)
    assert not columns & {"latent", "interest", "quality", "patience", "price_sensitivity"}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), user=st.integers(1, 100))
def test_reward_properties(world, seed, n, user):
    rng = np.random.default_rng(seed)
    lists = rng.choice(np.arange(1, world.n_items + 1), size=(4, n), replace=False)
    out = outcomes(world, np.full(4, user), lists)
    for metric in ("pv", "ipv", "buys", "gmv"):
        values = out.metric(metric)
        assert np.all(np.isfinite(values)) and np.all(values >= 0)
    assert np.all(out.pv <= n + 1e-9)
    assert np.all(out.ipv <= out.pv + 1e-9)
    assert np.all(out.buys <= out.ipv + 1e-9)
    assert np.all(np.diff(out.exposure, axis=1) <= 1e-12)  # nobody sees j+1 without j
