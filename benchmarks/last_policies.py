"""LAST on the simulator: true reward of GRN, serial and parallel LAST, list retrieval with and without LAST.

Per training seed (a run directory ``<models>/s<seed>`` holding ``ev/`` and ``gen/`` from
``relist train evaluator`` / ``relist train generator`` on ``--data``), every policy serves
the same held-out requests; the simulator's true user model judges them (``--shift``:
the world after a behaviour change, while the models only saw logs from before). Next to
the truth stands the evaluator's score of the same lists (the offline metric LAST climbs),
so the gap between the two is visible. Seeds are aggregated with a 95% CI over seeds.

    python benchmarks/last_policies.py --data /tmp/last_sim --models /tmp/last_runs/sim --name default
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_result
from rich.console import Console

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests
from relist.data.requests import Requests
from relist.eval.metrics import mean_ci, paired_relative
from relist.eval.simulated import oracle_lists, policy_table, print_policy_table, true_rewards
from relist.models.generator import load_generator
from relist.rerank.beam import BeamPolicy, ListValue
from relist.rerank.grn_policy import GRNPolicy
from relist.rerank.last import LAST, LASTConfig, LASTPolicy
from relist.rerank.list_ranking import ListRanking
from relist.rerank.list_scorer import ListScorer
from relist.rerank.policy import greedy_by_score
from relist.sim.config import ShiftConfig, load_sim_config
from relist.sim.user_model import OBJECTIVES
from relist.sim.world import World, world_of_logs
from relist.train.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "relist" / "configs"
BASELINE = "grn"  # what LAST is compared with, request by request
UPSTREAM_P_NEXT = 0.85  # assumed scroll probability of the upstream-score beam (no point-wise NEXT model)


def load_models(run_dir: Path, store: FeatureStore):
    """The trained GRN and the evaluator's ListScorer of one seed's run directory."""
    return load_generator(run_dir / "gen")[0], ListScorer.load(run_dir / "ev", store)


def upstream_beam(store: FeatureStore, rules) -> BeamPolicy:
    """Beam search over the upstream scores as CTR and a constant NEXT: a list generator needing no model."""

    def scores(requests: Requests) -> dict[str, np.ndarray]:
        ctr = np.clip(requests.cand_scores, 0.0, 1.0)
        return {"ctr": ctr, "next": np.full_like(ctr, UPSTREAM_P_NEXT)}

    return BeamPolicy(scores, store, k=8, weights=ListValue(pv=0.0, ipv=1.0), rules=rules)


def served_lists(grn, scorer, store, cfg: LASTConfig, requests: Requests, n: int) -> dict[str, np.ndarray]:
    """Every compared policy's lists for ``requests`` (offline: no deadline, so runs are reproducible)."""
    rules = cfg.rules.build() if cfg.rules is not None else None
    offline = cfg.model_copy(update={"budget_ms": None})
    grn_greedy = GRNPolicy(grn, store, rules=rules)
    lists = {"grn": grn_greedy(requests, n)}
    lists["grn_best_of_k"] = GRNPolicy(
        grn, store, "sample", cfg.samples + cfg.k, cfg.temperature, scorer, rules, seed=cfg.seed
    )(requests, n)
    lists["last_serial"] = LASTPolicy(LAST(grn, scorer, store, offline.model_copy(update={"mode": "serial"})))(
        requests, n
    )
    lists["last_parallel"] = LASTPolicy(LAST(grn, scorer, store, offline))(requests, n)
    generators = {
        "greedy_upstream_score": greedy_by_score,
        "beam_upstream": upstream_beam(store, rules).propose,
        "grn": lambda r, k: lists["grn"],
    }
    lists["list_retrieval"] = ListRanking(generators, scorer, store, rules)(requests, n)
    with_last = generators | {"last": lambda r, k: lists["last_parallel"]}
    lists["list_retrieval_last"] = ListRanking(with_last, scorer, store, rules)(requests, n)
    return lists


def judging_world(data: Path, shift_config: Path | None, shift_seed: int) -> World:
    world = world_of_logs(data)
    if shift_config is None:
        return world
    after = load_sim_config(shift_config)
    if after.model_copy(update={"shift": ShiftConfig()}) != world.config.model_copy(update={"shift": ShiftConfig()}):
        raise ValueError(f"{shift_config} describes another world than the one that wrote {data}")
    return world.shifted(after.shift, shift_seed)


def over_seeds(values: list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width over seeds (NaN width for a single seed)."""
    return mean_ci(np.array(values)) if len(values) > 1 else (float(values[0]), float("nan"))


def aggregate(per_seed: list[dict], evaluator: list[dict]) -> dict:
    """Per policy and metric: mean over seeds with a 95% CI over seeds (and mean % of oracle, vs logging)."""
    out = {}
    for name in per_seed[0]["policies"]:
        row = {}
        for metric in OBJECTIVES:
            cells = [table["policies"][name][metric] for table in per_seed]
            mean, ci = over_seeds([c["mean"] for c in cells])
            row[metric] = {
                "mean": mean,
                "ci95_over_seeds": ci,
                "pct_oracle": float(np.mean([c["pct_oracle"] for c in cells])),
                "vs_logging": float(np.mean([c["vs_logging"] for c in cells])),
            }
        if name in evaluator[0]:
            mean, ci = over_seeds([e[name]["mean"] for e in evaluator])
            row["evaluator_lr"] = {"mean": mean, "ci95_over_seeds": ci}
        out[name] = row
    return out


def paired_against(per_request: list[dict], baseline: str) -> dict:
    """Relative change of every policy vs ``baseline`` per metric, paired per (seed, request), 95% CI."""
    out = {}
    for name in per_request[0]:
        out[name] = {}
        for metric in [*OBJECTIVES, "evaluator_lr"]:
            values = np.concatenate([seed[name][metric] for seed in per_request])
            base = np.concatenate([seed[baseline][metric] for seed in per_request])
            change, ci = paired_relative(values, base)
            out[name][metric] = {"change": change, "ci95": ci}
    return out


def print_paired(paired: dict, title: str, console: Console) -> None:
    from rich.table import Table

    table = Table(title=title, caption="relative change of the mean ±95% CI")
    table.add_column("policy")
    metrics = ["evaluator_lr", *OBJECTIVES]
    for metric in metrics:
        table.add_column(metric.upper() if metric in OBJECTIVES else "evaluator LR", justify="right")
    for name, row in paired.items():
        table.add_row(name, *[f"{100 * row[m]['change']:+.2f}% ±{100 * row[m]['ci95']:.2f}" for m in metrics])
    console.print(table)


def print_summary(summary: dict, title: str, console: Console) -> None:
    from rich.table import Table

    table = Table(title=title, caption="mean over seeds ±95% CI over seeds (% of oracle)")
    table.add_column("policy")
    for column in ("evaluator LR", *[m.upper() for m in OBJECTIVES]):
        table.add_column(column, justify="right")
    for name, row in summary.items():
        lr = row.get("evaluator_lr")
        cells = [f"{lr['mean']:.3f} ±{lr['ci95_over_seeds']:.3f}" if lr else "-"]
        cells += [
            f"{row[m]['mean']:.3f} ±{row[m]['ci95_over_seeds']:.3f} ({row[m]['pct_oracle']:.0f}%)" for m in OBJECTIVES
        ]
        table.add_row(name, *cells)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="simulated log directory the models trained on")
    parser.add_argument("--models", type=Path, required=True, help="directory with s<seed>/ev and s<seed>/gen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--requests", type=int, default=500, help="first test requests to serve")
    parser.add_argument("--config", type=Path, default=CONFIGS / "last.yaml")
    parser.add_argument("--shift", type=Path, default=None, help="judge in the shifted world of this sim config")
    parser.add_argument("--shift-seed", type=int, default=1)
    parser.add_argument("--oracle-cache", type=Path, default=None, help=".npy of this scenario's oracle lists")
    parser.add_argument("--name", default="default", help="scenario name: results go to last_policies_<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console()

    cfg = load_config(args.config, LASTConfig)
    world = judging_world(args.data, args.shift, args.shift_seed)
    store = FeatureStore.from_dir(args.data)
    requests, shown = logged_requests(args.data, "test", args.requests)
    n = shown.shape[1]
    started = time.perf_counter()
    if args.oracle_cache is not None and args.oracle_cache.exists():
        oracle = np.load(args.oracle_cache)
    else:
        oracle = oracle_lists(world, requests, n)
        if args.oracle_cache is not None:
            np.save(args.oracle_cache, oracle)
    per_seed, evaluator, seconds, per_request = [], [], {}, []
    for seed in args.seeds:
        grn, scorer = load_models(args.models / f"s{seed}", store)
        tic = time.perf_counter()
        lists = served_lists(grn, scorer, store, cfg, requests, n)
        seconds[seed] = time.perf_counter() - tic
        table = policy_table(world, requests, shown, lists, n, oracle=oracle)
        table["seed"] = seed
        print_policy_table(table, f"{args.name}: seed {seed} (true expected reward)", console)
        per_seed.append(table)
        scores = {name: scorer.list_reward(requests.user_id, served) for name, served in lists.items()}
        evaluator.append({name: dict(zip(("mean", "ci95"), mean_ci(lr), strict=True)) for name, lr in scores.items()})
        per_request.append(
            {
                name: {**true_rewards(world, requests.user_id, served), "evaluator_lr": scores[name]}
                for name, served in lists.items()
            }
        )
    paired = paired_against(per_request, BASELINE)
    print_paired(paired, f"{args.name}: change vs {BASELINE}, paired per (seed, request)", console)
    summary = aggregate(per_seed, evaluator)
    print_summary(summary, f"{args.name}: {len(args.seeds)} seeds, {len(requests)} requests", console)
    path = write_result(
        f"last_policies_{args.name}",
        {
            "scenario": args.name,
            "data": str(args.data),
            "models": str(args.models),
            "seeds": args.seeds,
            "requests": len(requests),
            "list_len": n,
            "last_config": cfg.model_dump(mode="json"),
            "offline_note": "LAST ran without a deadline here (budget_ms=None) so tables are reproducible; "
            "latency is measured in benchmarks/last_latency.py",
            "shift": None
            if args.shift is None
            else {
                "config": str(args.shift),
                "seed": args.shift_seed,
                **load_sim_config(args.shift).shift.model_dump(),
            },
            "sim_config": world.config.model_dump(),
            "summary": summary,
            "per_seed": per_seed,
            "evaluator_lr_per_seed": evaluator,
            "vs_grn_paired": paired,
            "serving_seconds_per_seed": seconds,
            "total_seconds": time.perf_counter() - started,
        },
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
