"""Sweep of parallel LAST over K and step sizes (and what Δθ shifts): true reward, evaluator score, latency.

K = directions × step sizes; a scale multiplies the config's step sizes. Every setting
serves the same test requests (true expected reward from the simulator, evaluator LR next
to it) and is timed on single requests. A default is *picked* only by the evaluator's LR
on validation requests within the latency budget — never by the simulator's truth.

    python benchmarks/last_sweep.py --data /tmp/last_sim --run /tmp/last_runs/sim/s0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import RESULTS, write_result
from last_latency import k_config, percentiles
from last_policies import CONFIGS, load_models
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests
from relist.eval.metrics import mean_ci
from relist.eval.simulated import true_rewards
from relist.rerank.grn_policy import GRNPolicy
from relist.rerank.last import LAST, LASTConfig, LASTPolicy
from relist.sim.world import world_of_logs
from relist.train.config import load_config


def settings(
    base: LASTConfig, ks: list[int], scales: list[float], shifts: list[str]
) -> dict[str, LASTConfig]:
    """Named configs: every K × scale with the config's shift, plus the other shifts at the config's K."""
    out = {}
    for k in ks:
        for scale in scales:
            steps = tuple(scale * s for s in base.step_sizes)
            out[f"{base.shift} K={k} x{scale:g}"] = k_config(base.model_copy(update={"step_sizes": steps}), k)
    for shift in shifts:
        if shift != base.shift:
            out[f"{shift} K={base.k} x1"] = base.model_copy(update={"shift": shift})
    return out


def latency(policy, requests, n: int, count: int) -> dict[str, float]:
    ms = []
    for i in range(count + 5):
        tic = time.perf_counter()
        policy(requests[i : i + 1], n)
        if i >= 5:
            ms.append(1e3 * (time.perf_counter() - tic))
    return percentiles(ms)


def plot(rows: list[dict], grn: dict, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    base = [r for r in rows if r["shift"] == rows[0]["shift"] and "scale" in r]
    for scale in sorted({r["scale"] for r in base}):
        line = sorted((r for r in base if r["scale"] == scale), key=lambda r: r["k"])
        ks = [r["k"] for r in line]
        left.errorbar(
            ks,
            [r["true"]["ipv"]["mean"] for r in line],
            [r["true"]["ipv"]["ci95"] for r in line],
            marker="o",
            capsize=3,
            label=f"steps x{scale:g}",
        )
        right.plot(ks, [r["latency"]["p99_ms"] for r in line], marker="o", label=f"p99, steps x{scale:g}")
    for r in rows:
        if "scale" not in r:
            left.errorbar(
                [r["k"]],
                [r["true"]["ipv"]["mean"]],
                [r["true"]["ipv"]["ci95"]],
                marker="s",
                capsize=3,
                linestyle="none",
                label=r["shift"],
            )
            right.plot(
                [r["k"]], [r["latency"]["p99_ms"]], marker="s", linestyle="none", label=f"p99, {r['shift']}"
            )
    left.axhline(grn["true"]["ipv"]["mean"], color="grey", linestyle="--", label="GRN greedy")
    right.axhline(grn["latency"]["p99_ms"], color="grey", linestyle="--", label="GRN greedy p99")
    right.axhline(10.0, color="red", linestyle=":", label="10 ms budget")
    left.set(
        xlabel="K (shifted generators)", ylabel="true expected IPV per request", xscale="log", title="reward"
    )
    right.set(
        xlabel="K (shifted generators)", ylabel="ms per request", xscale="log", yscale="log", title="latency"
    )
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="one seed's run directory (ev/, gen/)")
    parser.add_argument("--config", type=Path, default=CONFIGS / "last.yaml")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--shifts", nargs="+", default=["activations", "pointer", "all"])
    parser.add_argument("--requests", type=int, default=300, help="test requests judged by the simulator")
    parser.add_argument(
        "--valid-requests", type=int, default=300, help="valid requests that pick the default"
    )
    parser.add_argument("--latency-requests", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-ms", type=float, default=10.0, help="latency bound for picking the default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()

    base = load_config(args.config, LASTConfig).model_copy(update={"budget_ms": None})
    world = world_of_logs(args.data)
    store = FeatureStore.from_dir(args.data)
    grn, scorer = load_models(args.run, store)
    test, shown = logged_requests(args.data, "test", args.requests)
    valid, _ = logged_requests(args.data, "valid", args.valid_requests)
    n = shown.shape[1]

    def measure(policy) -> dict:
        served = policy(test, n)
        truth = true_rewards(world, test.user_id, served)
        return {
            "true": {name: dict(zip(("mean", "ci95"), mean_ci(v), strict=True)) for name, v in truth.items()},
            "evaluator_lr_test": float(scorer.list_reward(test.user_id, served).mean()),
            "evaluator_lr_valid": float(scorer.list_reward(valid.user_id, policy(valid, n)).mean()),
            "latency": latency(policy, test, n, args.latency_requests),
        }

    rules = base.rules.build() if base.rules is not None else None
    grn_row = {"name": "grn greedy", "k": 0, **measure(GRNPolicy(grn, store, rules=rules))}
    rows = []
    for name, cfg in settings(base, args.ks, args.scales, args.shifts).items():
        row = {
            "name": name,
            "shift": cfg.shift,
            "k": cfg.k,
            "step_sizes": list(cfg.step_sizes),
            "directions": cfg.directions,
            **measure(LASTPolicy(LAST(grn, scorer, store, cfg))),
        }
        if name.startswith(base.shift):
            row["scale"] = float(name.rsplit("x", 1)[1])
        rows.append(row)
        console.print(
            f"{name}: IPV {row['true']['ipv']['mean']:.4f}, valid LR {row['evaluator_lr_valid']:.4f}, "
            f"p99 {row['latency']['p99_ms']:.1f} ms"
        )
    fast = [r for r in rows if r["latency"]["p99_ms"] <= args.budget_ms] or rows
    picked = max(fast, key=lambda r: r["evaluator_lr_valid"])

    table = Table(
        title=f"LAST sweep ({args.requests} test requests, seed run {args.run.name})",
        caption=f"picked by valid evaluator LR within p99 <= {args.budget_ms} ms: {picked['name']}",
    )
    for column in (
        "setting",
        "K",
        "true IPV ±CI",
        "true buys",
        "true GMV",
        "evaluator LR test",
        "valid LR",
        "median ms",
        "p99 ms",
    ):
        table.add_column(column, justify="right")
    for r in [grn_row, *rows]:
        t = r["true"]
        table.add_row(
            r["name"],
            str(r["k"]),
            f"{t['ipv']['mean']:.4f} ±{t['ipv']['ci95']:.4f}",
            f"{t['buys']['mean']:.4f}",
            f"{t['gmv']['mean']:.2f}",
            f"{r['evaluator_lr_test']:.4f}",
            f"{r['evaluator_lr_valid']:.4f}",
            f"{r['latency']['median_ms']:.2f}",
            f"{r['latency']['p99_ms']:.2f}",
        )
    console.print(table)
    figure = RESULTS / "last_sweep.png"
    plot(rows, grn_row, figure)
    path = write_result(
        "last_sweep",
        {
            "data": str(args.data),
            "run": str(args.run),
            "requests": args.requests,
            "valid_requests": args.valid_requests,
            "latency_requests": args.latency_requests,
            "threads": args.threads,
            "base_config": base.model_dump(mode="json"),
            "grn": grn_row,
            "settings": rows,
            "picked": picked["name"],
            "pick_rule": f"max evaluator LR on valid requests among settings with p99 <= {args.budget_ms} ms",
            "plot": str(figure.relative_to(RESULTS.parent.parent)),
        },
    )
    console.print(f"wrote {path} and {figure}")


if __name__ == "__main__":
    main()
