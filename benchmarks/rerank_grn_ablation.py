"""Advantage-reward ablation: GRN trained with the self reward only vs self + differential reward.

For each seed, two GRNs are trained by policy gradient against the same frozen DCWN
evaluator with relist/configs/generator.yaml, differing only in ``reward``. Their
greedy lists on held-out simulated test requests are judged by the simulator's true
expected PV/IPV/buys/GMV (relist.eval.simulated.policy_table: vs the logging policy and
as % of the oracle); the evaluator's own LR of the same lists is reported next to it.

    python benchmarks/rerank_grn_ablation.py --data /tmp/relist_validity_sim [--seeds 0 1 2]

Missing logs are simulated and a missing evaluator is trained (relist/configs/evaluator.yaml),
in the same places as benchmarks/rerank_evaluator_validity.py, so both can share them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from rerank_evaluator_validity import ensure_data, ensure_evaluator  # noqa: E402

from relist.data.features import FeatureStore  # noqa: E402
from relist.data.logs import logged_requests  # noqa: E402
from relist.eval.simulated import oracle_lists, policy_table, print_policy_table  # noqa: E402
from relist.models.generator import load_generator  # noqa: E402
from relist.rerank.grn_policy import GRNPolicy  # noqa: E402
from relist.rerank.list_scorer import ListScorer  # noqa: E402
from relist.rerank.policy import greedy_by_score  # noqa: E402
from relist.sim.world import world_of_logs  # noqa: E402
from relist.train.config import load_config  # noqa: E402
from relist.train.generator import GeneratorTrainConfig, train_generator  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "relist" / "configs" / "generator.yaml"
REWARDS = ("self", "advantage")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/relist_validity_sim"))
    parser.add_argument("--sim-requests", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/relist_validity_models"))
    parser.add_argument("--evaluator", type=Path, help="trained DCWN dir (default: train into --work)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--requests", type=int, default=1000, help="held-out test requests judged")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ensure_data(args.data, args.sim_requests)
    evaluator = args.evaluator or ensure_evaluator(args.data, args.work / "dcwn", context=True)
    base = load_config(args.config, GeneratorTrainConfig)
    world, store = world_of_logs(args.data), FeatureStore.from_dir(args.data)
    scorer = ListScorer.load(evaluator, store)
    rules = None if base.rules is None else base.rules.build()
    requests, shown = logged_requests(args.data, "test", args.requests)
    n = shown.shape[1]

    served, runs = {"greedy_upstream": greedy_by_score(requests, n)}, []
    for seed in args.seeds:
        for reward in REWARDS:
            cfg = base.model_copy(
                update={"reward": reward, "train": base.train.model_copy(update={"seed": seed})}
            )
            out = args.work / f"grn_{reward}_seed{seed}"
            start = time.perf_counter()
            result = train_generator(cfg, args.data, evaluator, out)
            seconds = time.perf_counter() - start
            name = f"grn_{reward}_seed{seed}"
            served[name] = GRNPolicy(load_generator(out)[0], store, rules=rules)(requests, n)
            runs.append(
                {
                    "name": name,
                    "reward": reward,
                    "seed": seed,
                    "train_seconds": seconds,
                    "best_epoch": result.best_epoch,
                    "valid_lr": result.best_metric,
                    "test_lr": float(scorer.list_reward(requests.user_id, served[name]).mean()),
                }
            )
    report = policy_table(world, requests, shown, served, n, oracle=cached_oracle(args, world, requests, n))
    console = Console()
    print_policy_table(
        report, "GRN reward ablation: true expected reward per test request (simulator)", console
    )
    summary = summarise(report, runs)
    print_summary(summary, console)
    payload = {
        "data": str(args.data),
        "evaluator": str(evaluator),
        "config": base.model_dump(mode="json"),
        "runs": runs,
        "summary": summary,
        "table": report,
    }
    console.print(f"wrote {write_result('rerank_grn_ablation', payload)}")


def cached_oracle(args, world, requests, n: int) -> np.ndarray:
    """Oracle lists of the judged requests (slow: a search on the true model), kept in --work for reruns."""
    path = args.work / f"oracle_test_{args.requests}.npy"
    if not path.is_file():
        args.work.mkdir(parents=True, exist_ok=True)
        np.save(path, oracle_lists(world, requests, n))
    return np.load(path)


def summarise(report: dict, runs: list[dict]) -> dict:
    """Per reward mode: mean and spread over seeds of true IPV/PV, change vs logging, and evaluator LR."""
    out = {}
    for reward in REWARDS:
        mine = [r for r in runs if r["reward"] == reward]
        rows = [report["policies"][r["name"]] for r in mine]
        out[reward] = {
            metric: {
                "mean_over_seeds": float(np.mean([row[metric]["mean"] for row in rows])),
                "std_over_seeds": float(np.std([row[metric]["mean"] for row in rows], ddof=1))
                if len(rows) > 1
                else None,
                "vs_logging_mean": float(np.mean([row[metric]["vs_logging"] for row in rows])),
                "pct_oracle_mean": float(np.mean([row[metric]["pct_oracle"] for row in rows])),
            }
            for metric in ("pv", "ipv")
        } | {"test_lr_mean": float(np.mean([r["test_lr"] for r in mine])), "seeds": [r["seed"] for r in mine]}
    ipv = {
        reward: [report["policies"][r["name"]]["ipv"]["mean"] for r in runs if r["reward"] == reward]
        for reward in REWARDS
    }
    out["advantage_minus_self_ipv_per_seed"] = [
        a - s for a, s in zip(ipv["advantage"], ipv["self"], strict=True)
    ]
    return out


def print_summary(summary: dict, console: Console) -> None:
    table = Table(title="GRN reward ablation over seeds (true expected reward, greedy decoding)")
    for col in ("reward", "IPV mean ± sd", "IPV vs logging", "IPV % oracle", "PV vs logging", "evaluator LR"):
        table.add_column(col, justify="right")
    for reward in REWARDS:
        row = summary[reward]
        sd = row["ipv"]["std_over_seeds"]
        table.add_row(
            reward,
            f"{row['ipv']['mean_over_seeds']:.4f} ± {sd if sd is not None else float('nan'):.4f}",
            f"{100 * row['ipv']['vs_logging_mean']:+.2f}%",
            f"{row['ipv']['pct_oracle_mean']:.1f}",
            f"{100 * row['pv']['vs_logging_mean']:+.2f}%",
            f"{row['test_lr_mean']:.4f}",
        )
    console.print(table)
    console.print(
        "advantage - self, true IPV per seed: "
        + ", ".join(f"{d:+.4f}" for d in summary["advantage_minus_self_ipv_per_seed"])
    )


if __name__ == "__main__":
    main()
