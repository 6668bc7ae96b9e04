"""Evaluator validity: does the DCWN list reward LR track the true expected clicks (IPV) of a list?

On held-out simulated requests every request gets a diverse set of lists: the logged
list, the upstream-greedy list, shuffles of the logged list (same items, new order: only
context can tell them apart), random lists from the candidates and, when a generator is
given, GRN greedy and sampled lists. Each list is scored by the evaluator's LR (plain sum
and exposure-weighted), by the sum of point-wise CTRs (the same network without context:
no position, Bi-LSTM or self-attention) and by the simulator's exact expected IPV, which is
used here only to judge. Reported: Pearson(score, true IPV) over all lists and within
requests (per-request means removed), how much true IPV each score gets by picking one
list per request, and calibration of the per-position click probability by decile of the
prediction (weighted by the true exposure of the position). Valid and test splits both.

    python benchmarks/rerank_evaluator_validity.py --data /tmp/relist_validity_sim [--generator DIR]

Missing logs are simulated (--sim-requests); missing models are trained with
relist/configs/evaluator.yaml into --work. The recorded result came from
    relist simulate --out /tmp/eval_sim100k --requests 100000
    relist train evaluator --data /tmp/eval_sim100k --out /tmp/ev/dcwn100k
    python benchmarks/rerank_grn_ablation.py --data /tmp/eval_sim100k --evaluator /tmp/ev/dcwn100k \
        --work /tmp/ev/ablation
    python benchmarks/rerank_evaluator_validity.py --data /tmp/eval_sim100k --evaluator /tmp/ev/dcwn100k \
        --work /tmp/ev/valwork --generator /tmp/ev/ablation/grn_advantage_seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from relist.data.features import FeatureStore  # noqa: E402
from relist.data.logs import logged_requests  # noqa: E402
from relist.data.requests import Requests  # noqa: E402
from relist.eval.evaluator_validity import calibration  # noqa: E402
from relist.eval.metrics import pearson  # noqa: E402
from relist.rerank.list_scorer import ListScorer  # noqa: E402
from relist.rerank.policy import greedy_by_score, random_order  # noqa: E402
from relist.sim.user_model import outcomes  # noqa: E402
from relist.sim.world import world_of_logs  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "relist" / "configs" / "evaluator.yaml"


def ensure_data(data: Path, n_requests: int) -> None:
    if not (data / "items.parquet").is_file():
        from relist.sim.config import load_sim_config
        from relist.sim.logs import simulate_logs
        from relist.sim.world import build_world

        simulate_logs(build_world(load_sim_config()), data, n_requests, 0.1, 0.1)


def ensure_evaluator(data: Path, out: Path, context: bool) -> Path:
    if not (out / "evaluator.yaml").is_file():
        from relist.train.config import load_config
        from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator

        cfg = load_config(CONFIG, EvaluatorTrainConfig)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"context": context})})
        train_evaluator(cfg, data, out)
    return out


def proposals(
    requests: Requests,
    shown: np.ndarray,
    shuffles: int,
    randoms: int,
    generator_dir: Path | None,
    store: FeatureStore,
    seed: int,
) -> tuple[np.ndarray, list[str]]:
    """Lists [B, L, n] per request and the name of each of the L kinds."""
    rng = np.random.default_rng(seed)
    n = shown.shape[1]
    lists, names = [shown, greedy_by_score(requests, n)], ["logged", "greedy_upstream"]
    for i in range(shuffles):
        lists.append(np.take_along_axis(shown, rng.random(shown.shape).argsort(1), 1))
        names.append(f"shuffled_logged_{i}")
    for i in range(randoms):
        lists.append(random_order(seed + 1 + i)(requests, n))
        names.append(f"random_{i}")
    if generator_dir is not None:
        from relist.rerank.grn_policy import GRNPolicy

        lists.append(GRNPolicy.load(generator_dir, store)(requests, n))
        names.append("grn_greedy")
        sampler = GRNPolicy.load(generator_dir, store, mode="sample", seed=seed)
        for i in range(2):
            lists.append(sampler(requests, n))
            names.append(f"grn_sample_{i}")
    return np.stack(lists, 1), names


def within(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Pearson of per-request deviations [B, L]; None when the score cannot tell a request's lists apart."""
    centred = scores - scores.mean(1, keepdims=True)
    if np.allclose(centred, 0, atol=1e-6):  # float32 sums of the same items differ in the last bits
        return None
    return pearson(centred, truth - truth.mean(1, keepdims=True))


def study(split: str, args, world, store, scorers: dict[str, ListScorer], pointwise: ListScorer) -> dict:
    requests, shown = logged_requests(args.data, split, args.requests)
    lists, names = proposals(requests, shown, args.shuffles, args.randoms, args.generator, store, args.seed)
    b, k, n = lists.shape
    flat_users, flat = np.repeat(requests.user_id, k), lists.reshape(b * k, n)
    truth = outcomes(world, flat_users, flat)
    true_ipv = truth.ipv.reshape(b, k)
    scores = {name: s.list_reward(flat_users, flat).reshape(b, k) for name, s in scorers.items()}
    scores["sum_pointwise_ctr"] = pointwise.list_reward(flat_users, flat).reshape(b, k)
    perm = [0] + [i for i, name in enumerate(names) if name.startswith("shuffled")]
    best = true_ipv.max(1).mean()
    report = {"requests": b, "lists_per_request": k, "list_kinds": names, "scores": {}}
    for name, score in scores.items():
        picked = true_ipv[np.arange(b), score.argmax(1)]
        report["scores"][name] = {
            "pearson_all_lists": pearson(score, true_ipv),
            "pearson_within_request": within(score, true_ipv),
            "pearson_within_permutations": within(score[:, perm], true_ipv[:, perm]),
            "picked_true_ipv": float(picked.mean()),
            "picked_pct_of_best_proposal": float(100 * picked.mean() / best),
        }
    report["true_ipv"] = {"logged": float(true_ipv[:, 0].mean()), "best_proposal": float(best)}
    exposure = truth.exposure
    report["calibration"] = {
        "dcwn": calibration(scorers["lr_sum"].per_position(flat_users, flat), truth.p_click, exposure),
        "pointwise": calibration(pointwise.per_position(flat_users, flat), truth.p_click, exposure),
    }
    return report


def print_report(name: str, report: dict, console: Console) -> None:
    table = Table(
        title=f"Evaluator validity on {name} ({report['requests']} requests x "
        f"{report['lists_per_request']} lists)"
    )
    for col in (
        "score",
        "Pearson all",
        "Pearson within req.",
        "within permutations",
        "picked true IPV",
        "% best proposal",
    ):
        table.add_column(col, justify="right")
    for score, row in report["scores"].items():
        fmt = [
            f"{row[k]:.3f}" if row[k] is not None else "n/a (constant)"
            for k in ("pearson_all_lists", "pearson_within_request", "pearson_within_permutations")
        ]
        table.add_row(
            score, *fmt, f"{row['picked_true_ipv']:.3f}", f"{row['picked_pct_of_best_proposal']:.1f}"
        )
    console.print(table)
    cal = Table(title=f"Calibration on {name}: exposure-weighted click rate by decile of the prediction")
    for col in ("decile", "DCWN predicted", "true", "point-wise predicted", "true"):
        cal.add_column(col, justify="right")
    for d, p in zip(
        report["calibration"]["dcwn"]["deciles"], report["calibration"]["pointwise"]["deciles"], strict=True
    ):
        cal.add_row(
            str(d["decile"]),
            f"{d['predicted']:.3f}",
            f"{d['true']:.3f}",
            f"{p['predicted']:.3f}",
            f"{p['true']:.3f}",
        )
    console.print(cal)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/relist_validity_sim"))
    parser.add_argument("--sim-requests", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/relist_validity_models"))
    parser.add_argument("--evaluator", type=Path, help="trained DCWN dir (default: train into --work)")
    parser.add_argument(
        "--pointwise", type=Path, help="trained context-free DCWN dir (default: train into --work)"
    )
    parser.add_argument("--generator", type=Path, help="trained GRN dir: adds its greedy and sampled lists")
    parser.add_argument("--requests", type=int, default=2000, help="requests per split")
    parser.add_argument("--shuffles", type=int, default=4)
    parser.add_argument("--randoms", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ensure_data(args.data, args.sim_requests)
    evaluator = args.evaluator or ensure_evaluator(args.data, args.work / "dcwn", context=True)
    pointwise_dir = args.pointwise or ensure_evaluator(args.data, args.work / "pointwise", context=False)
    world, store = world_of_logs(args.data), FeatureStore.from_dir(args.data)
    scorers = {
        "lr_sum": ListScorer.load(evaluator, store, exposure_weighted=False),
        "lr_exposure": ListScorer.load(evaluator, store, exposure_weighted=True),
    }
    pointwise = ListScorer.load(pointwise_dir, store, exposure_weighted=False)
    from relist.models.evaluator import load_evaluator

    payload = {
        "data": str(args.data),
        "evaluator": str(evaluator),
        "pointwise": str(pointwise_dir),
        "generator": None if args.generator is None else str(args.generator),
        "spec_exposure_weighted": load_evaluator(evaluator)[1].exposure_weighted,
        "splits": {},
    }
    console = Console()
    for split in ("valid", "test"):
        payload["splits"][split] = study(split, args, world, store, scorers, pointwise)
        print_report(split, payload["splits"][split], console)
    console.print(f"wrote {write_result('rerank_evaluator_validity', payload)}")


if __name__ == "__main__":
    main()
