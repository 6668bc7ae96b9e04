"""Which off-policy estimator to believe on which kind of log: every estimator vs the simulator's truth.

Worlds: the default world, the alternative world (relist/configs/sim_alt.yaml) and the default world
with a randomised bucket of 1% and 5% of requests (uniformly random lists that keep the category rule).
Each is simulated with propensities: train 40% / valid 10% / test 50% of ``lists`` requests. Per base
world (default, alt) the models are trained on its train split (benchmarks.common.train_world_models,
budgets cut; checkpoints on valid; the bucket worlds reuse the default world's models, so they differ
from it only in the logged lists of the bucket's requests), every policy serves the test requests, and
each estimator estimates each policy's expected clicks per request (IPV) from the test logs alone. The
truth is the simulator's exact expected IPV of the policy's lists on the same requests
(relist.eval.simulated.true_rewards).

Per estimator and world: bias, mean |relative error|, 95% CI coverage over policies, Kendall's tau of
the estimated vs the true policy ranking, median effective sample size. Policies: every one that
relist.eval.rerank.build_policies builds from the trained models (LAST only with ``with_last``), plus
model-free ones at graded distances from the logging policy (the greedy-by-score list with its first two
swapped, greedy by score under the category rule, greedy by a noisy score, the greedy list reversed,
a random rule-keeping list, and greedy by the *true* CTR — a reference that reads the simulator, used
here only as a list to evaluate). The doubly robust and direct estimators use the trained evaluator
(DCWN) as reward model: per position P(click | seen) × its predicted P(seen).

Logs, trained models and served lists are cached under --work; a rerun only estimates.

    python -m benchmarks offpolicy_validity --work /tmp/offpolicy_study
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from benchmarks.common import (
    SimulatedLogs,
    WorldModels,
    cached,
    digest,
    selected,
    simulated_logs,
    train_world_models,
)
from relist.data.logs import read_lists
from relist.data.requests import Requests
from relist.eval.metrics import mean_ci
from relist.eval.offpolicy import ESTIMATORS, OffPolicyEvaluator, SlateLogs
from relist.eval.offpolicy_report import (
    TRUSTED,
    estimate_policies,
    load_click_model,
    policy_lists,
    print_validity,
    simulator_gram,
    validity,
)
from relist.eval.simulated import true_rewards
from relist.sim.oracle import true_ctr_greedy
from relist.sim.propensity import rule_allowed, rule_keeping_lists
from relist.sim.world import World, world_of_logs

console = Console(width=150)


class WorldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(..., description="the world whose models and served lists this one reuses (itself or another)")
    world: str | None = Field(None, description="simulator config file; null: the default world")
    bucket_share: float = Field(0.0, ge=0, lt=1, description="share of requests logged from the random bucket")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worlds: dict[str, WorldSpec]
    only: list[str] | None = Field(None, description="run only these worlds (null: all)")
    lists: int = Field(40_000, ge=100, description="simulated requests per world: train 40% / valid 10% / test 50%")
    requests: int = Field(20_000, ge=10, description="logged test requests estimated from")
    resamples: int = Field(500, ge=10, description="bootstrap resamples for the CIs")
    models: WorldModels = WorldModels()
    with_last: bool = Field(False, description="serve LAST too (slow on 2 cores)")
    model_free: bool = Field(False, description="no trained models: no DM/DR, fewer policies")


def world_logs(spec: WorldSpec, cfg: Config) -> SimulatedLogs:
    changes = {"logging": {"propensities": True, "random_bucket": {"share": spec.bucket_share}}}
    return SimulatedLogs(world=spec.world, requests=cfg.lists, valid_frac=0.1, test_frac=0.5, changes=changes)


def model_free_policies(world: World, requests: Requests, n: int) -> dict[str, np.ndarray]:
    """Lists at graded distances from the logging policy, without any trained model."""
    rows = np.arange(len(requests))
    cates = world.cate[requests.candidates]

    def by_score(score: np.ndarray, rule: bool) -> np.ndarray:
        available, chosen = requests.mask.copy(), np.zeros((len(requests), n), np.int64)
        for t in range(n):
            allowed = rule_allowed(cates, available, cates[rows[:, None], chosen[:, :t]], 2) if rule else available
            chosen[:, t] = np.where(allowed, score, -np.inf).argmax(1)
            available[rows, chosen[:, t]] = False
        return np.take_along_axis(requests.candidates, chosen, 1)

    greedy = by_score(requests.cand_scores, rule=False)
    logit = np.log(requests.cand_scores / (1 - requests.cand_scores))
    noise = np.random.default_rng(11).normal(size=logit.shape)
    swapped = greedy.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    random_rule = rule_keeping_lists(cates, requests.mask, n, 2, np.random.default_rng(12))
    return {
        "swap_top2": swapped,
        "greedy_score_rules": by_score(requests.cand_scores, rule=True),
        "noisy_score_0.5": by_score(logit + 0.5 * noise, rule=False),
        "noisy_score_1.5": by_score(logit + 1.5 * noise, rule=False),
        "reversed_greedy": greedy[:, ::-1].copy(),
        "random_rule_keeping": np.take_along_axis(requests.candidates, random_rule, 1),
        "reference_true_ctr": np.stack([true_ctr_greedy(world, int(u), c[m], n) for u, c, m in
                                        zip(requests.user_id, requests.candidates, requests.mask, strict=True)]),
    }


def cached_model(click_model, cache: dict):
    """The reward model, remembering its predictions per (requests, lists) — bucket worlds share them."""

    def predict(user_ids, cand_ids, cand_scores, lists):
        key = hashlib.sha1(np.ascontiguousarray(user_ids).tobytes() + np.ascontiguousarray(lists).tobytes()).hexdigest()
        if key not in cache:
            cache[key] = click_model(user_ids, cand_ids, cand_scores, lists)
        return cache[key]

    return predict


def serve_base(data: Path, models: Path | None, cfg: Config, work: Path):
    """Every policy's lists on the base world's test requests (cached), their true IPV, and the evaluator as
    reward model (None without models)."""
    table = read_lists(data, "test", cfg.requests)
    requests = Requests.from_table(table)
    shown = np.array(table.column("shown").to_pylist(), dtype=np.int64)
    world = world_of_logs(data)

    def build(out: Path) -> dict:
        if models is None:
            lists, skipped = model_free_generators(data, requests, shown.shape[1]), []
        else:
            skip = () if cfg.with_last else ("last", "list_retrieval_last")
            lists, skipped = policy_lists(data, models, requests, shown, skip=skip)
        lists |= model_free_policies(world, requests, shown.shape[1])
        np.savez(out / "lists.npz", **lists)
        return {"skipped": skipped}

    settings = {"data": str(data), "models": str(models), "requests": cfg.requests, "with_last": cfg.with_last}
    out = work / f"served-{digest(settings)}"
    done = cached(out, settings, build)
    lists = dict(np.load(out / "lists.npz"))
    truth = {name: true_rewards(world, requests.user_id, target)["ipv"] for name, target in lists.items()}
    click_model = None if models is None else load_click_model(data, models)
    return lists, truth, click_model, done["record"]["skipped"]


def model_free_generators(data: Path, requests: Requests, n: int) -> dict[str, np.ndarray]:
    """The registered generators that need no trained model, under the default business rules."""
    from relist.data.features import FeatureStore
    from relist.rerank.generators import Context, first_list
    from relist.rerank.policy import GreedyUpstreamScore, Upstream
    from relist.rerank.rules import RulesConfig

    ctx = Context(FeatureStore.from_dir(data), RulesConfig().build())
    return {name: first_list(generator, requests, n, ctx)
            for name, generator in (("upstream", Upstream()), ("greedy_upstream_score", GreedyUpstreamScore()))}


def policy_table(rows: dict, logging: dict, truth_logged: np.ndarray, truth: dict, estimator: str) -> dict:
    """`relist eval rerank`'s table, estimated from logs alone next to the truth."""
    out = {}
    for name, row in rows.items():
        e = row["estimates"].get(estimator)
        true_rel = float(truth[name].mean() / truth_logged.mean() - 1)
        out[name] = {"true_ipv": row["truth"], "true_vs_logging": true_rel,
                     "estimate": None if e is None else {k: e[k] for k in ("value", "ci95", "vs_logging",
                                                                           "vs_logging_ci95", "ess")}}
    return {"estimator": estimator, "logging_on_policy": logging, "policies": out}


def print_policy_table(table: dict, title: str) -> None:
    t = Table(title=title, caption="truth: the simulator's exact expected IPV; estimate: from the test logs alone")
    for column in ("policy", "true IPV", "true vs logging", "estimate [95% CI]", "est. vs logging", "ESS"):
        t.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in table["policies"].items():
        e = row["estimate"]
        if e is None:
            cells = ["-"] * 3
        else:
            lo, hi = (100 * v for v in e["vs_logging_ci95"])
            cells = [f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]",
                     f"{100 * e['vs_logging']:+.1f}% [{lo:+.0f}, {hi:+.0f}]", f"{e['ess']:.0f}"]
        t.add_row(name, f"{row['true_ipv']['mean']:.3f}", f"{100 * row['true_vs_logging']:+.1f}%", *cells)
    console.print(t)


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    names = selected(cfg.only, cfg.worlds, "only")
    served, results, seconds = {}, {}, {}
    for name in names:
        spec = cfg.worlds[name]
        data = simulated_logs(world_logs(spec, cfg), work)
        base = spec.base
        if base not in served:
            base_data = simulated_logs(world_logs(cfg.worlds[base], cfg), work)
            models = None
            if not cfg.model_free:
                models, trained = train_world_models(base_data, cfg.models, work)
                seconds[f"{base}/train"] = sum(trained.values())
            lists, truth, click_model, skipped = serve_base(base_data, models, cfg, work)
            served[base] = (lists, truth, None if click_model is None else cached_model(click_model, {}), skipped)
        lists, truth, click_model, skipped = served[base]
        start = time.perf_counter()
        table = read_lists(data, "test", cfg.requests)
        logs = SlateLogs.from_table(table, "ipv")
        evaluator = OffPolicyEvaluator(logs, click_model, simulator_gram(data), cfg.resamples, seed=0)
        rows = estimate_policies(evaluator, lists, tuple(ESTIMATORS), truth=truth)
        summary = validity(rows)
        seconds[f"{name}/estimate"] = time.perf_counter() - start
        requests = Requests.from_table(table)
        truth_logged = true_rewards(world_of_logs(data), requests.user_id, logs.shown)["ipv"]
        mean, half = mean_ci(logs.list_reward)
        logging = {"mean": mean, "ci95": half, "true_expected": float(truth_logged.mean())}
        results[name] = {"bucket_share": spec.bucket_share, "requests": len(logs), "logging": logging,
                         "validity": summary, "policies": rows, "skipped": skipped, "unavailable": {
                             est: evaluator.missing(est) for est in ESTIMATORS if evaluator.missing(est)},
                         "policy_table": policy_table(rows, logging, truth_logged, truth, TRUSTED)}
        print_validity(summary, f"Estimator validity, world {name} ({len(logs)} logged lists, {len(rows)} policies)",
                       console)
        print_policy_table(results[name]["policy_table"], f"{name}: true IPV vs the {TRUSTED} estimate from logs")
    return {"worlds": results, "lists_per_world": cfg.lists, "requests_estimated": cfg.requests,
            "resamples": cfg.resamples, "with_last": cfg.with_last,
            "models": "none (model-free)" if cfg.model_free else "benchmarks.common.train_world_models (cut "
                      "budgets), trained on each base world's train split; bucket worlds use their base's",
            "reward_model": "relist evaluator (DCWN): P(click | seen) x its predicted P(seen) per position",
            "ci": "95% percentile bootstrap over logged requests",
            "seconds": seconds | {"note": "per stage; training as long as it took when it ran (cached models keep "
                                             "their time)"}}
