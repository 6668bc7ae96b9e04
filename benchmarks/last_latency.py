"""Latency of parallel LAST per request (m=50, n=10, 2 threads) for K shifted generators, against plain GRN.

Each timed request runs plain GRN greedy decoding and parallel LAST at every K back to
back, so machine load hits all of them alike and the ratios compare like with like.
LAST runs without a deadline here (the full search is what is timed); the share of
requests a ``--budget-ms`` deadline would have cut short is reported, and a second pass
with the deadline on shows what serving with it costs. Per-phase medians show what bounds it.

    python benchmarks/last_latency.py --data /tmp/last_sim --run /tmp/last_runs/sim/s0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_result
from last_policies import CONFIGS, load_models
from rich.console import Console
from rich.table import Table

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests
from relist.rerank.grn_policy import GRNPolicy
from relist.rerank.last import LAST, LASTConfig
from relist.train.config import load_config


def k_config(cfg: LASTConfig, k: int) -> LASTConfig:
    """The config's step sizes, with as many directions as K needs (K=1: one direction, one step)."""
    if k == 1:
        return cfg.model_copy(
            update={"directions": 1, "step_sizes": cfg.step_sizes[1:2] or cfg.step_sizes[:1]}
        )
    steps = len(cfg.step_sizes)
    if k % steps:
        raise ValueError(f"K={k} is not a multiple of the {steps} step sizes")
    return cfg.model_copy(update={"directions": k // steps, "samples": max(cfg.samples, k // steps - 1)})


def percentiles(ms: list[float]) -> dict[str, float]:
    x = np.asarray(ms)
    return {
        "median_ms": float(np.median(x)),
        "p99_ms": float(np.percentile(x, 99)),
        "mean_ms": float(x.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="one seed's run directory (ev/, gen/)")
    parser.add_argument("--config", type=Path, default=CONFIGS / "last.yaml")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--shifts", nargs="+", default=None, help="default: the config's; e.g. activations pointer"
    )
    parser.add_argument("--requests", type=int, default=300, help="timed single requests")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-ms", type=float, default=10.0)
    parser.add_argument("--name", default="last_latency")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()

    base = load_config(args.config, LASTConfig).model_copy(update={"budget_ms": None})
    store = FeatureStore.from_dir(args.data)
    grn, scorer = load_models(args.run, store)
    requests, shown = logged_requests(args.data, "test", args.requests + args.warmup)
    n = shown.shape[1]
    rules = base.rules.build() if base.rules is not None else None
    plain = GRNPolicy(grn, store, rules=rules)
    shifts = args.shifts or [base.shift]
    variants = {
        (shift, k): LAST(grn, scorer, store, k_config(base.model_copy(update={"shift": shift}), k))
        for shift in shifts
        for k in args.ks
    }
    served = {
        key: LAST(grn, scorer, store, last.cfg.model_copy(update={"budget_ms": args.budget_ms}))
        for key, last in variants.items()
    }
    times = {"grn": [], **{key: [] for key in variants}, **{("budget", *key): [] for key in served}}
    phases = {key: [] for key in variants}
    flagged = {key: 0 for key in served}
    load_before = os.getloadavg()
    for i in range(len(requests)):
        one = requests[i : i + 1]
        tic = time.perf_counter()
        plain(one, n)
        elapsed = {"grn": time.perf_counter() - tic}
        for key, last in variants.items():
            tic = time.perf_counter()
            result = last.rerank(one, n)
            elapsed[key] = time.perf_counter() - tic
            phases[key].append(result.timings_ms)
        for key, last in served.items():
            tic = time.perf_counter()
            result = last.rerank(one, n)
            elapsed[("budget", *key)] = time.perf_counter() - tic
            flagged[key] += result.budget_exceeded and i >= args.warmup
        if i >= args.warmup:
            for key, seconds in elapsed.items():
                times[key].append(1e3 * seconds)
    load_after = os.getloadavg()

    grn_stats = percentiles(times["grn"])
    rows = []
    table = Table(
        title=f"parallel LAST, single request, m={requests.candidates.shape[1]}, n={n}, "
        f"{args.threads} threads ({args.requests} requests)",
        caption=f"ratio = LAST / plain GRN decoding, same run; budget pass: deadline {args.budget_ms} ms",
    )
    for column in (
        "shift",
        "K",
        "median ms",
        "p99 ms",
        "x GRN median",
        "x GRN p99",
        "would exceed budget",
        "with budget: p99 ms",
        "phases (median ms)",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        "grn greedy", "-", f"{grn_stats['median_ms']:.2f}", f"{grn_stats['p99_ms']:.2f}", "1", "1", "", "", ""
    )
    for (shift, k), ms in ((key, times[key]) for key in variants):
        stats = percentiles(ms)
        budgeted = percentiles(times[("budget", shift, k)])
        phase = {
            name: float(np.median([p.get(name, 0.0) for p in phases[(shift, k)][args.warmup :]]))
            for name in phases[(shift, k)][-1]
        }
        over = float(np.mean(np.asarray(ms) > args.budget_ms))
        row = {
            "shift": shift,
            "k": k,
            **stats,
            "ratio_median": stats["median_ms"] / grn_stats["median_ms"],
            "ratio_p99": stats["p99_ms"] / grn_stats["p99_ms"],
            "share_over_budget": over,
            "with_budget": {**budgeted, "flagged_share": flagged[(shift, k)] / args.requests},
            "phases_median_ms": phase,
        }
        rows.append(row)
        table.add_row(
            shift,
            str(k),
            f"{stats['median_ms']:.2f}",
            f"{stats['p99_ms']:.2f}",
            f"{row['ratio_median']:.1f}",
            f"{row['ratio_p99']:.1f}",
            f"{100 * over:.0f}%",
            f"{budgeted['p99_ms']:.2f} ({100 * row['with_budget']['flagged_share']:.0f}% flagged)",
            " ".join(f"{name}={v:.2f}" for name, v in phase.items()),
        )
    console.print(table)
    console.print(
        f"load average before {load_before}, after {load_after} (2-core machine shared with others)"
    )
    path = write_result(
        args.name,
        {
            "data": str(args.data),
            "run": str(args.run),
            "threads": args.threads,
            "requests": args.requests,
            "m": int(requests.candidates.shape[1]),
            "n": n,
            "budget_ms": args.budget_ms,
            "last_config": base.model_dump(mode="json"),
            "grn": grn_stats,
            "last": rows,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
