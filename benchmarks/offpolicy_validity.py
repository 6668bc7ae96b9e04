"""Which off-policy estimator to believe on which kind of log: every estimator vs the simulator's truth.

Worlds: the default world, the alternative world (relist/configs/sim_alt.yaml) and the default world
with a randomised bucket of 1% and 5% of requests (uniformly random lists that keep the category rule).
Each is simulated with propensities: train 40% / valid 10% / test 50% of ``--lists`` requests. Per base
world (default, alt) the models are trained on its train split (checkpoints on valid; the bucket worlds
reuse the default world's models, so they differ from it only in the logged lists of the bucket's
requests), every policy serves the test requests, and each estimator estimates each policy's expected
clicks per request (IPV) from the test logs alone. The truth is the simulator's exact expected IPV of
the policy's lists on the same requests (relist.eval.simulated.true_rewards).

Per estimator and world: bias, mean |relative error|, 95% CI coverage over policies, Kendall's tau of
the estimated vs the true policy ranking, median effective sample size. Policies: every one that
relist.eval.rerank.build_policies builds from the trained models (LAST only with ``--with-last``), plus
model-free ones at graded distances from the logging policy (the greedy-by-score list with its first two
swapped, greedy by score under the category rule, greedy by a noisy score, the greedy list reversed,
a random rule-keeping list, and greedy by the *true* CTR — a reference that reads the simulator, used
here only as a list to evaluate). The doubly robust and direct estimators use the trained evaluator
(DCWN) as reward model: per position P(click | seen) × its predicted P(seen).

Trained models, served lists and truth are cached under --work; a rerun only estimates.

    python benchmarks/offpolicy_validity.py --work /tmp/offpolicy_study
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_result
from rerank_policies import train_models
from rich.console import Console
from rich.table import Table

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
from relist.rerank.policy import greedy_by_score
from relist.sim.config import SimConfig, load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.oracle import true_ctr_greedy
from relist.sim.propensity import rule_allowed, rule_keeping_lists
from relist.sim.world import World, build_world, world_of_logs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "relist" / "configs"
WORLDS = {  # name: (base world, config, random bucket share)
    "default": ("default", None, 0.0),
    "alt": ("alt", CONFIGS / "sim_alt.yaml", 0.0),
    "bucket_1pct": ("default", None, 0.01),
    "bucket_5pct": ("default", None, 0.05),
}
console = Console(width=150)


def world_config(config: Path | None, share: float) -> SimConfig:
    cfg = load_sim_config(config)
    logging = cfg.logging.model_copy(update={
        "propensities": True, "random_bucket": cfg.logging.random_bucket.model_copy(update={"share": share})})
    return cfg.model_copy(update={"logging": logging})


def model_free_policies(world: World, requests: Requests, n: int) -> dict[str, np.ndarray]:
    """Lists at graded distances from the logging policy, without any trained model."""
    greedy = greedy_by_score(requests, n)
    rows = np.arange(len(requests))
    cates = world.cate[requests.candidates]

    def by_score(score: np.ndarray, rule: bool) -> np.ndarray:
        available, chosen = requests.mask.copy(), np.zeros((len(requests), n), np.int64)
        for t in range(n):
            allowed = rule_allowed(cates, available, cates[rows[:, None], chosen[:, :t]], 2) if rule else available
            chosen[:, t] = np.where(allowed, score, -np.inf).argmax(1)
            available[rows, chosen[:, t]] = False
        return np.take_along_axis(requests.candidates, chosen, 1)

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


def serve_base(base: str, data: Path, models: Path, work: Path, n_requests: int, with_last: bool,
               model_free_only: bool):
    """Every policy's lists on the base world's test requests (cached), and the evaluator as reward model."""
    path = work / base / f"lists_{n_requests}{'_last' if with_last else ''}{'_free' if model_free_only else ''}.npz"
    table = read_lists(data, "test", n_requests)
    requests = Requests.from_table(table)
    shown = np.array(table.column("shown").to_pylist(), dtype=np.int64)
    world = world_of_logs(data)
    skipped, cached = [], path.is_file()
    if not cached:
        if model_free_only:
            lists = {"upstream": requests.candidates[:, :shown.shape[1]],
                     "greedy_upstream_score": greedy_by_score(requests, shown.shape[1])}
        else:
            skip = () if with_last else ("last", "list_retrieval_last")
            lists, skipped = policy_lists(data, models, requests, shown, skip=skip)
        lists |= model_free_policies(world, requests, shown.shape[1])
        np.savez(path, **lists)
    lists = dict(np.load(path))
    truth = {name: true_rewards(world, requests.user_id, target)["ipv"] for name, target in lists.items()}
    click_model = None if model_free_only else load_click_model(data, models)
    return lists, truth, click_model, skipped, cached


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/offpolicy_study"))
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--lists", type=int, default=40_000, help="simulated requests per world (all splits)")
    parser.add_argument("--requests", type=int, default=20_000, help="logged test requests estimated from")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples for the CIs")
    parser.add_argument("--seed", type=int, default=0, help="model seed")
    parser.add_argument("--with-last", action="store_true", help="serve LAST too (slow on 2 cores)")
    parser.add_argument("--model-free", action="store_true", help="no trained models: no DM/DR, fewer policies")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    timings = args.work / "seconds.json"  # cached stages keep the time of the run that did them
    seconds = json.loads(timings.read_text()) if timings.is_file() else {}
    served, results = {}, {}
    for name in args.worlds:
        base, config, share = WORLDS[name]
        data = args.work / name / "sim"
        start = time.perf_counter()
        if not (data / "lists").is_dir():
            simulate_logs(build_world(world_config(config, share)), data, args.lists, 0.1, 0.5)
            seconds[f"{name}/simulate"] = time.perf_counter() - start
        base_data, models = args.work / base / "sim", args.work / base / f"seed{args.seed}"
        if base not in served:
            if not args.model_free and (trained := train_models(base_data, models, args.seed)):
                seconds[f"{base}/train"] = sum(trained.values())
            start = time.perf_counter()
            lists, truth, click_model, skipped, cached = serve_base(base, base_data, models, args.work,
                                                                    args.requests, args.with_last, args.model_free)
            if not cached:
                seconds[f"{base}/serve_and_truth"] = time.perf_counter() - start
            served[base] = (lists, truth, None if click_model is None else cached_model(click_model, {}), skipped)
        lists, truth, click_model, skipped = served[base]
        start = time.perf_counter()
        table = read_lists(data, "test", args.requests)
        logs = SlateLogs.from_table(table, "ipv")
        evaluator = OffPolicyEvaluator(logs, click_model, simulator_gram(data), args.resamples, seed=0)
        rows = estimate_policies(evaluator, lists, tuple(ESTIMATORS), truth=truth)
        summary = validity(rows)
        seconds[f"{name}/estimate"] = time.perf_counter() - start
        requests = Requests.from_table(table)
        truth_logged = true_rewards(world_of_logs(data), requests.user_id, logs.shown)["ipv"]
        mean, half = mean_ci(logs.list_reward)
        logging = {"mean": mean, "ci95": half, "true_expected": float(truth_logged.mean())}
        results[name] = {"bucket_share": share, "requests": len(logs), "logging": logging, "validity": summary,
                         "policies": rows, "skipped": skipped, "unavailable": {
                             est: evaluator.missing(est) for est in ESTIMATORS if evaluator.missing(est)},
                         "policy_table": policy_table(rows, logging, truth_logged, truth, TRUSTED)}
        print_validity(summary, f"Estimator validity, world {name} ({len(logs)} logged lists, {len(rows)} policies)",
                       console)
        print_policy_table(results[name]["policy_table"], f"{name}: true IPV vs the {TRUSTED} estimate from logs")
    timings.write_text(json.dumps(seconds, indent=2))
    path = write_result("offpolicy_validity", {
        "worlds": results, "lists_per_world": args.lists, "requests_estimated": args.requests,
        "resamples": args.resamples, "model_seed": args.seed, "with_last": args.with_last,
        "models": "none (model-free)" if args.model_free else "benchmarks/rerank_policies.py:train_models "
                  "(cut budgets), trained on each base world's train split; bucket worlds use the default's",
        "reward_model": "relist evaluator (DCWN): P(click | seen) x its predicted P(seen) per position",
        "ci": "95% percentile bootstrap over logged requests",
        "seconds": seconds | {"note": "per stage, from the run that did it (cached stages are reused)"}})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
