"""Off-policy evaluation: the simulator's propensities are the logging policy's, the estimators are unbiased
where their assumption holds, bad propensities are refused, and `relist eval offpolicy` runs end to end."""

from __future__ import annotations

import hashlib
import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from relist.cli import app
from relist.data.requests import Requests
from relist.data.schema import SchemaError, read_table, validate
from relist.eval.offpolicy import ESTIMATORS, OffPolicyEvaluator, RankGram, SlateLogs
from relist.eval.offpolicy_report import kendall_tau, logs_have_propensities
from relist.io.config import CONFIGS
from relist.rerank.rules import BusinessRules
from relist.sim.config import SimConfig, load_sim_config
from relist.sim.logs import logging_policy, simulate_logs
from relist.sim.propensity import (
    greedy_conditional,
    greedy_marginals,
    greedy_pairwise,
    greedy_ranks,
    rule_keeping_conditional,
    rule_keeping_lists,
)
from relist.sim.world import build_world

runner = CliRunner()


def with_logging(cfg: SimConfig, propensities: bool = True, share: float = 0.0, **bucket) -> SimConfig:
    logging = cfg.logging.model_copy(update={
        "propensities": propensities,
        "random_bucket": cfg.logging.random_bucket.model_copy(update={"share": share, **bucket})})
    return cfg.model_copy(update={"logging": logging})


TINY = SimConfig.model_validate({"catalogue": {"n_items": 60, "n_cates": 3, "n_shops": 6},
                                 "users": {"n_users": 30}, "requests": {"n_candidates": 7, "list_len": 4}})


# ---------------------------------------------------------------- the logging policy's probabilities


def enumerate_greedy(scores: list[float], n: int, eps: float) -> dict[tuple[int, ...], float]:
    """Every list of candidate indices and its probability, by walking the policy's own rule."""
    out: dict[tuple[int, ...], float] = {}

    def walk(prefix: tuple[int, ...], p: float) -> None:
        if len(prefix) == n:
            out[prefix] = out.get(prefix, 0.0) + p
            return
        left = [i for i in range(len(scores)) if i not in prefix]
        best = max(left, key=lambda i: (scores[i], -i))
        for i in left:
            walk(prefix + (i,), p * ((1 - eps) * (i == best) + eps / len(left)))

    walk((), 1.0)
    return out


@pytest.mark.parametrize("scores,n,eps", [([0.3, 0.9, 0.1, 0.5, 0.7], 3, 0.3), ([0.2, 0.2, 0.8, 0.2], 4, 0.5),
                                          ([0.6, 0.1, 0.4, 0.9, 0.3, 0.5], 2, 0.15)])
def test_greedy_probabilities_equal_enumeration(scores, n, eps):
    lists = enumerate_greedy(scores, n, eps)
    m = len(scores)
    s, mask = np.array([scores], dtype=np.float32), np.ones((1, m), bool)
    ranks = greedy_ranks(s, mask)[0]
    marg, pair = np.zeros((n, m)), np.zeros((n, m, n, m))
    for lst, p in lists.items():
        assert greedy_conditional(s, mask, np.array([lst]), eps).prod() == pytest.approx(p, abs=1e-14)
        r = ranks[list(lst)]
        marg[np.arange(n), r] += p
        pair[np.arange(n)[:, None], r[:, None], np.arange(n)[None, :], r[None, :]] += p
    assert sum(lists.values()) == pytest.approx(1.0)
    np.testing.assert_allclose(greedy_marginals(m, n, eps), marg, atol=1e-14)
    np.testing.assert_allclose(greedy_pairwise(m, n, eps), pair, atol=1e-14)


def test_logging_policy_draws_match_its_propensities():
    rng = np.random.default_rng(0)
    m, n, eps, draws = 6, 3, 0.3, 60_000
    scores = rng.random(m).astype(np.float32)
    requests = Requests.from_arrays(np.arange(draws), np.ones(draws), np.tile(np.arange(1, m + 1), (draws, 1)),
                                    np.tile(scores, (draws, 1)))
    shown = logging_policy(requests, n, eps, rng)
    cond = greedy_conditional(requests.cand_scores, requests.mask, shown - 1, eps)
    exact = enumerate_greedy(scores.tolist(), n, eps)
    lists, counts = np.unique(shown - 1, axis=0, return_counts=True)
    for lst, count in zip(lists, counts, strict=True):
        p = exact[tuple(lst)]
        assert abs(count / draws - p) < 5 * np.sqrt(p * (1 - p) / draws) + 1e-4
    first = np.flatnonzero(shown[:, 0] - 1 == lists[0][0])
    np.testing.assert_allclose(cond[first, 0], sum(p for lst, p in exact.items() if lst[0] == lists[0][0]))


def test_random_bucket_draws_match_its_propensities_and_keep_the_rule():
    rng = np.random.default_rng(1)
    cates, draws = np.array([1, 1, 2, 2, 3, 0, 1]), 50_000
    c, mask = np.tile(cates, (draws, 1)), np.ones((draws, len(cates)), bool)
    picks = rule_keeping_lists(c, mask, 4, 2, rng)
    cond = rule_keeping_conditional(c, mask, picks, 2)
    assert (cond > 0).all()
    assert BusinessRules(cate_window=2).check(torch.as_tensor(np.take_along_axis(c, picks, 1)),
                                              torch.zeros(draws, 4)).all()
    lists, index, counts = np.unique(picks, axis=0, return_inverse=True, return_counts=True)
    p = cond[np.unique(index.ravel(), return_index=True)[1]].prod(1)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)  # every drawn list, and nothing else, has mass
    assert np.all(np.abs(counts / draws - p) < 5 * np.sqrt(p * (1 - p) / draws) + 1e-4)


def bucket_lists(cates: list[int], n: int, window: int) -> dict[tuple[int, ...], float]:
    """Every list the random bucket can draw and its probability, by walking its rule."""
    out: dict[tuple[int, ...], float] = {}

    def walk(prefix: tuple[int, ...], p: float) -> None:
        if len(prefix) == n:
            out[prefix] = p
            return
        left = [i for i in range(len(cates)) if i not in prefix]
        for w in range(min(window, len(prefix)), -1, -1):
            recent = {cates[i] for i in prefix[len(prefix) - w:]} if w else set()
            allowed = [i for i in left if cates[i] == 0 or cates[i] not in recent]
            if allowed:
                break
        for i in allowed:
            walk(prefix + (i,), p / len(allowed))

    walk((), 1.0)
    return out


def test_written_propensities_equal_an_independent_recomputation(tmp_path):
    share = 0.3
    cfg = with_logging(TINY, share=share, marginal_draws=3000)
    world = build_world(cfg)
    simulate_logs(world, tmp_path, 40, 0.0, 0.0, progress=False)
    table = pq.read_table(tmp_path / "lists" / "train")
    validate(table, "lists", tmp_path, propensities=True)
    rows = table.to_pylist()
    for row in rows:
        cands, n = row["candidates"], len(row["shown"])
        shown = tuple(cands.index(item) for item in row["shown"])
        main = enumerate_greedy(row["cand_scores"], n, cfg.logging.exploration)
        bucket = bucket_lists([int(world.cate[c]) for c in cands], n, 2)
        mix = {lst: (1 - share) * main.get(lst, 0.0) + share * bucket.get(lst, 0.0) for lst in main}
        assert sum(mix.values()) == pytest.approx(1.0)
        prefix = [sum(p for lst, p in mix.items() if lst[:k] == shown[:k]) for k in range(n + 1)]
        np.testing.assert_allclose(row["propensity"], np.array(prefix[1:]) / np.array(prefix[:-1]), rtol=1e-10)
        assert row["list_propensity"] == pytest.approx(mix[shown], rel=1e-10)
        marginal = [sum(p for lst, p in mix.items() if lst[k] == shown[k]) for k in range(n)]
        np.testing.assert_allclose(row["propensity_marginal"], marginal, rtol=0.03)  # bucket part is estimated


GOLDEN = {  # sha256 of every file written by simulate_logs before the propensity options existed
    "default": "4c202363a56084e84f96b672ca12245420552d7768873f229bab7d08b930f134",
    "alt": "41f346962bb636a51a8e0730860a5439a3f60da0a529da8a745a4c9690155272",
}


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(directory)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def small(cfg: SimConfig) -> SimConfig:
    return cfg.model_copy(update={"catalogue": cfg.catalogue.model_copy(update={"n_items": 300}),
                                  "users": cfg.users.model_copy(update={"n_users": 200})})


@pytest.mark.parametrize("world_name,config", [("default", None), ("alt", CONFIGS / "sim_alt.yaml")])
def test_logs_with_the_options_off_are_byte_identical_to_before(tmp_path, world_name, config):
    simulate_logs(build_world(small(load_sim_config(config))), tmp_path, 600, batch_size=256, shard_size=400,
                  progress=False)
    assert digest(tmp_path) == GOLDEN[world_name]


def test_random_bucket_replaces_only_its_share_and_keeps_the_rule(tmp_path):
    base = small(load_sim_config())
    simulate_logs(build_world(base), tmp_path / "plain", 1000, progress=False)
    world = build_world(with_logging(base, share=0.2))
    simulate_logs(world, tmp_path / "bucket", 1000, progress=False)
    plain, bucket = (pq.read_table(tmp_path / name / "lists" / "train") for name in ("plain", "bucket"))
    for column in ("request_id", "user_id", "candidates", "cand_scores"):
        assert plain.column(column).equals(bucket.column(column))
    a, b = (np.array(t.column("shown").to_pylist()) for t in (plain, bucket))
    changed = (a != b).any(1)
    assert 0.15 < changed.mean() < 0.25
    same = ~changed
    for column in ("click", "next", "buy", "exposed_len"):
        x, y = (np.array(t.column(column).to_pylist()) for t in (plain, bucket))
        assert (x[same] == y[same]).all()
    cates = torch.as_tensor(world.cate[b[changed]])
    assert BusinessRules(cate_window=2).check(cates, torch.zeros_like(cates)).all()
    assert logs_have_propensities(tmp_path / "bucket", "train")
    assert not logs_have_propensities(tmp_path / "plain", "train")


# ---------------------------------------------------------------- schema


def propensity_file(tmp_path: Path, change) -> Path:
    cfg = with_logging(TINY)
    simulate_logs(build_world(cfg), tmp_path / "sim", 30, 0.0, 0.0, progress=False)
    table = pq.read_table(tmp_path / "sim" / "lists" / "train")
    path = tmp_path / "bad.parquet"
    pq.write_table(change(table), path)
    return path


def replace(table: pa.Table, name: str, values) -> pa.Table:
    column = table.column(name)
    return table.set_column(table.column_names.index(name), pa.field(name, column.type), pa.array(values, column.type))


def set_slot(name: str, row: int, slot: int, value):
    def change(table: pa.Table) -> pa.Table:
        values = table.column(name).to_pylist()
        values[row][slot] = value
        return replace(table, name, values)

    return change


def set_list_propensity(row: int, value):
    def change(table: pa.Table) -> pa.Table:
        values = table.column("list_propensity").to_pylist()
        values[row] = value
        return replace(table, "list_propensity", values)

    return change


@pytest.mark.parametrize("change,row,field,problem", [
    (set_slot("propensity", 7, 2, 0.0), 7, "propensity", "0 or negative"),
    (set_slot("propensity", 3, 0, 1.5), 3, "propensity", "above 1"),
    (set_slot("propensity_marginal", 5, 1, float("nan")), 5, "propensity_marginal", "NaN"),
    (set_slot("propensity", 9, 3, None), 9, "propensity", "missing value"),
    (set_list_propensity(4, 0.5), 4, "list_propensity", "product"),
    (set_list_propensity(6, None), 6, "list_propensity", "missing value"),
    (lambda t: t.drop_columns(["propensity"]), None, "propensity", "missing column"),
    (lambda t: replace(t, "propensity", [v[:-1] for v in t.column("propensity").to_pylist()]), 0, "propensity",
     "length"),
])
def test_bad_propensities_are_refused_with_file_row_field(tmp_path, change, row, field, problem):
    path = propensity_file(tmp_path, change)
    with pytest.raises(SchemaError, match=problem) as err:
        read_table(path, "lists")
    assert (err.value.path, err.value.row, err.value.field) == (str(path), row, field)
    assert str(path) in str(err.value) and f"field '{field}'" in str(err.value)


def test_propensities_demanded_of_logs_without_them(tmp_path):
    simulate_logs(build_world(TINY), tmp_path, 20, 0.0, 0.0, progress=False)
    table = pq.read_table(tmp_path / "lists" / "train")
    validate(table, "lists", tmp_path)
    with pytest.raises(SchemaError, match="field 'propensity'.*missing column"):
        validate(table, "lists", tmp_path, propensities=True)


# ---------------------------------------------------------------- estimators


def exact_logs(lists: dict[tuple[int, ...], Fraction], rewards, candidates: np.ndarray, scores: np.ndarray,
               cond=None, marginal=None) -> SlateLogs:
    """A log in which each list appears in proportion to its probability, with its *expected* rewards:
    estimators are linear in the rewards, so their value on it is their exact expectation."""
    denominator = int(np.lcm.reduce([p.denominator for p in lists.values()]))
    shown, reward, rows = [], [], []
    for lst, p in lists.items():
        count = int(p * denominator)
        shown += [candidates[list(lst)]] * count
        reward += [rewards(lst)] * count
        rows += [lst] * count
    shown, rows = np.array(shown), np.array(rows)
    n = shown.shape[1]
    if cond is None:  # from the enumerated distribution
        prefix = [[float(sum(p for q, p in lists.items() if q[:k] == tuple(r[:k]))) for k in range(n + 1)]
                  for r in rows]
        cond = np.array(prefix)[:, 1:] / np.array(prefix)[:, :-1]
        marginal = np.array([[float(sum(p for q, p in lists.items() if q[k] == r[k])) for k in range(n)]
                             for r in rows])
    b = len(shown)
    return SlateLogs(np.ones(b, np.int64), np.tile(candidates, (b, 1)), np.tile(scores, (b, 1)), shown,
                     np.array(reward, np.float64), cond(rows) if callable(cond) else cond,
                     marginal(rows) if callable(marginal) else marginal)


M, N = 4, 2
ITEMS = np.array([11, 12, 13, 14])
SCORES = np.array([0.4, 0.9, 0.2, 0.6], np.float32)
WEIGHTS = [3, 1, 2, 1, 4, 2, 1, 3, 2, 2, 1, 2]  # an arbitrary logging policy with full support (sum 24)
LOGGING = {lst: Fraction(w, 24) for lst, w in zip(itertools.permutations(range(M), N), WEIGHTS, strict=True)}
APPEAL = np.array([0.3, 0.5, 0.2, 0.4])
POSITION = np.array([1.0, 0.6])


def additive(lst):  # a slot's reward depends on its item and position only
    return [APPEAL[i] * POSITION[k] for k, i in enumerate(lst)]


def cascade(lst):  # ... on the items up to it (the second slot suffers a same-parity first item)
    return [APPEAL[lst[0]], APPEAL[lst[1]] * (0.5 if lst[0] % 2 == lst[1] % 2 else 1.0)]


def interacting(lst):  # ... on the item after it too
    return [APPEAL[lst[0]] * (1.2 - APPEAL[lst[1]]), APPEAL[lst[1]] * (0.5 if lst[0] % 2 == lst[1] % 2 else 1.0)]


class EnumeratedGram:
    """θ_L·Γ⁺·1_s with Γ of an enumerated logging policy over one request's candidates."""

    def __init__(self, lists):
        self.gram = np.zeros((N * M, N * M))
        for lst, p in lists.items():
            v = np.zeros(N * M)
            v[[k * M + i for k, i in enumerate(lst)]] = 1
            self.gram += float(p) * np.outer(v, v)
        self.pinv = np.linalg.pinv(self.gram)

    def weights(self, logs, target):
        index = {item: i for i, item in enumerate(ITEMS)}
        out = []
        for s, t in zip(logs.shown, target, strict=True):
            out.append(sum(self.pinv[j * M + index[a], k * M + index[b]]
                           for j, a in enumerate(t) for k, b in enumerate(s)))
        return np.array(out)


def model_of(rewards):
    def click_model(user_ids, cand_ids, cand_scores, lists):
        index = {item: i for i, item in enumerate(ITEMS)}
        return np.array([rewards([index[i] for i in lst]) for lst in lists])

    return click_model


def wrong_additive(lst):
    return [0.25 * POSITION[k] + 0.1 * (i == 2) for k, i in enumerate(lst)]


UNBIASED = {  # estimator -> reward structures (and reward models) under which it is exactly unbiased
    "ips": [(interacting, None)], "snips": [(interacting, None)],
    "iips": [(additive, None)], "sniips": [(additive, None)], "pi": [(additive, None)],
    "rips": [(cascade, None), (additive, None)], "snrips": [(cascade, None)],
    "dm": [(interacting, interacting)],
    "dr": [(interacting, interacting), (additive, wrong_additive)],
    "dr_cascade": [(interacting, interacting), (cascade, wrong_additive), (additive, wrong_additive)],
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_are_unbiased_where_their_assumption_holds(name):
    assert set(UNBIASED) == set(ESTIMATORS)
    for rewards, model in UNBIASED[name]:
        logs = exact_logs(LOGGING, rewards, ITEMS, SCORES)
        evaluator = OffPolicyEvaluator(logs, model_of(model) if model else None, EnumeratedGram(LOGGING),
                                       resamples=10)
        for target in itertools.permutations(range(M), N):
            truth = sum(rewards(target))
            estimate = evaluator.estimate(np.tile(ITEMS[list(target)], (len(logs), 1)), [name])[name]
            assert estimate.value == pytest.approx(truth, abs=1e-10), (name, rewards.__name__, target)


def test_an_estimator_is_biased_where_its_assumption_fails():
    logs = exact_logs(LOGGING, interacting, ITEMS, SCORES)
    evaluator = OffPolicyEvaluator(logs, resamples=10)
    errors = [abs(evaluator.estimate(np.tile(ITEMS[list(t)], (len(logs), 1)), ["iips"])["iips"].value
                  - sum(interacting(t))) for t in itertools.permutations(range(M), N)]
    assert max(errors) > 0.01


def test_pseudo_inverse_with_the_simulators_gram_is_unbiased_for_additive_rewards():
    eps = 0.5  # probabilities in 48ths, so the exact log has whole rows
    exact = enumerate_greedy(SCORES.tolist(), N, eps)
    lists = {lst: Fraction(p).limit_denominator(48) for lst, p in exact.items()}
    assert sum(lists.values()) == 1
    ranks = greedy_ranks(SCORES[None, :], np.ones((1, M), bool))[0]
    logs = exact_logs(lists, additive, ITEMS, SCORES,
                      cond=lambda rows: greedy_conditional(np.tile(SCORES, (len(rows), 1)),
                                                           np.ones((len(rows), M), bool), rows, eps),
                      marginal=lambda rows: greedy_marginals(M, N, eps)[np.arange(N)[None, :], ranks[rows]])
    gram = RankGram(lambda m, n: greedy_pairwise(m, n, eps), lambda logs: greedy_ranks(logs.cand_scores, logs.mask))
    evaluator = OffPolicyEvaluator(logs, gram=gram, resamples=10)
    for target in itertools.permutations(range(M), N):
        est = evaluator.estimate(np.tile(ITEMS[list(target)], (len(logs), 1)), ["pi", "iips", "rips"])
        for e in est.values():
            assert e.value == pytest.approx(sum(additive(target)), abs=1e-10), (e.estimator, target)


def test_sampled_logs_give_cis_that_cover_and_sample_sizes_that_shrink():
    rng = np.random.default_rng(3)
    lists = list(LOGGING)
    p = np.array([float(LOGGING[lst]) for lst in lists])
    pick = rng.choice(len(lists), size=20_000, p=p)
    exact = exact_logs(LOGGING, additive, ITEMS, SCORES)
    first = {tuple(int(np.flatnonzero(ITEMS == i)[0]) for i in s): k for k, s in enumerate(exact.shown)}
    rows = np.array([first[lists[k]] for k in pick])
    expected = exact.rewards[rows]
    logs = SlateLogs(exact.user_id[rows], exact.candidates[rows], exact.cand_scores[rows], exact.shown[rows],
                     (rng.random(expected.shape) < expected).astype(np.float64), exact.propensity[rows],
                     exact.marginal[rows])
    evaluator = OffPolicyEvaluator(logs, model_of(wrong_additive), resamples=300, seed=1)
    unbiased = ("ips", "snips", "iips", "sniips", "rips", "snrips", "dr", "dr_cascade")
    covered = dict.fromkeys(unbiased, 0)
    for target in itertools.permutations(range(M), N):
        est = evaluator.estimate(np.tile(ITEMS[list(target)], (len(logs), 1)))
        truth = sum(additive(target))
        for name in unbiased:
            lo, hi = est[name].ci95
            covered[name] += lo <= truth <= hi
            assert 0 < est[name].ess < len(logs)
        assert est["ips"].ess < est["rips"].ess < est["iips"].ess  # whole lists match least often
        assert est["dm"].ess == len(logs) and "pi" not in est
    assert min(covered.values()) >= 10, covered  # of 12 targets (11.4 expected of a 95% CI)
    assert "pairwise" in evaluator.missing("pi")


def test_estimators_say_what_they_lack():
    logs = exact_logs(LOGGING, additive, ITEMS, SCORES)
    bare = SlateLogs(logs.user_id, logs.candidates, logs.cand_scores, logs.shown, logs.rewards, logs.propensity)
    evaluator = OffPolicyEvaluator(bare, resamples=10)
    assert set(evaluator.available()) == {"ips", "snips", "rips", "snrips"}
    assert "propensity_marginal" in evaluator.missing("iips")
    assert "reward model" in evaluator.missing("dr")
    with pytest.raises(ValueError, match="row 0"):
        evaluator.estimate(np.full_like(logs.shown, 99))


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- the command


def test_eval_offpolicy_on_simulated_logs(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("catalogue: {n_items: 300}\nusers: {n_users: 200}\n"
                      "logging: {propensities: true, random_bucket: {share: 0.05}}\n")
    data, models, out = tmp_path / "sim", tmp_path / "models", tmp_path / "report.json"
    models.mkdir()
    no_rules = tmp_path / "rerank.yaml"  # the logging policy keeps no rule: a policy close to it is estimable
    no_rules.write_text("rerank: {rules: {cate_window: 0}}\n")
    result = runner.invoke(app, ["simulate", "--out", str(data), "--config", str(config), "--requests", "1500",
                                 "--test-frac", "0.5"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "offpolicy", "--data", str(data), "--models", str(models),
                                 "--resamples", "50", "--out", str(out), "--rerank-config", str(no_rules)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["requests"] == 750 and report["truth"]
    assert set(report["policies"]) == {"upstream", "greedy_upstream_score"}
    row = report["policies"]["greedy_upstream_score"]
    assert {"ips", "snips", "iips", "sniips", "rips", "snrips", "pi"} == set(row["estimates"])
    assert any("estimator dr:" in line and "reward model" in line for line in report["skipped"])
    low, high = row["estimates"]["snips"]["ci95"]
    assert low < row["truth"]["mean"] < high
    assert set(report["validity"]) == set(row["estimates"])
    assert "Off-policy estimate" in result.output


def test_eval_offpolicy_refuses_logs_without_propensities(tmp_path):
    simulate_logs(build_world(TINY), tmp_path / "sim", 50, 0.1, 0.5, progress=False)
    (tmp_path / "models").mkdir()
    result = runner.invoke(app, ["eval", "offpolicy", "--data", str(tmp_path / "sim"), "--models",
                                 str(tmp_path / "models")])
    assert isinstance(result.exception, SchemaError)  # relist.cli.main prints it in two lines, exit 2
    assert "field 'propensity'" in str(result.exception) and "no propensities" in str(result.exception)
