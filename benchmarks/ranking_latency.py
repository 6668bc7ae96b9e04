"""Serving cost of the coarse ranker vs the fine-ranking teacher: one user, 5,000 candidates.

The student scores with its precomputed item matrix (user tower once, then one batched head over the
candidates' rows); the teacher runs its full model on every (user, candidate) pair. Both include the
feature lookup, run on the same candidates in the same process, one thread each. Also measures the
training throughput (samples/s) of each model on the same simulated logs.

    python benchmarks/ranking_latency.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_result

from relist.data.requests import Requests
from relist.models.ranking import CoarseScorer
from relist.models.ranking.samples import load_ranking_data
from relist.models.ranking.scoring import request_inputs
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world
from relist.train.config import load_config
from relist.train.ranking import RankingConfig, load_ranking_model, train_ranking

CONFIGS = Path(__file__).resolve().parents[1] / "relist" / "configs"
MODELS = {
    "teacher": "ranking_teacher.yaml",
    "dssm": "ranking_dssm.yaml",
    "dssm_full": "ranking_dssm_full.yaml",
}


def timings_ms(call, repeats: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--items", type=int, default=10_000, help="catalogue size of the simulated world")
    parser.add_argument("--requests", type=int, default=20_000, help="simulated lists to train on")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ranking_latency"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    logs = args.work / "logs"
    if not (logs / "lists").is_dir():
        sim = load_sim_config(None)
        sim = sim.model_copy(update={"catalogue": sim.catalogue.model_copy(update={"n_items": args.items})})
        simulate_logs(build_world(sim), logs, args.requests)
    data = load_ranking_data(logs)

    throughput = {}
    for name, file in MODELS.items():
        cfg = load_config(CONFIGS / file, RankingConfig)
        update = {"train": cfg.train.model_copy(update={"epochs": 1, "num_threads": 1})}
        if cfg.distill.mode == "two_stage":
            update["distill"] = cfg.distill.model_copy(
                update={"teacher_run": str(args.work / "teacher"), "stage1_epochs": 1}
            )
        result = train_ranking(cfg.model_copy(update=update), logs, args.work / name, data=data)
        throughput[name] = result.history[-1]["samples_per_s"]

    rng = np.random.default_rng(0)
    candidates = rng.choice(np.arange(1, data.store.n_items + 1), args.candidates, replace=False)
    user = int(data.splits["test"]["user"][0])
    teacher = load_ranking_model(args.work / "teacher")

    @torch.no_grad()
    def teacher_call():
        return teacher(request_inputs(data.store, Requests.from_arrays([0], [user], candidates[None, :],
                                                                       np.full((1, len(candidates)), np.nan))))["ctr"]

    latency = {"teacher": timings_ms(teacher_call, args.repeats)}
    for name in ("dssm", "dssm_full"):
        scorer = CoarseScorer(load_ranking_model(args.work / name), data.store)
        latency[name] = timings_ms(lambda scorer=scorer: scorer.score(user, candidates), args.repeats)
    start = time.perf_counter()
    CoarseScorer(load_ranking_model(args.work / "dssm_full"), data.store)
    matrix_ms = (time.perf_counter() - start) * 1000

    teacher_median = float(np.median(latency["teacher"]))
    rows = {
        name: {
            "median_ms": float(np.median(t)),
            "p99_ms": float(np.percentile(t, 99)),
            "teacher_over_this_median": teacher_median / float(np.median(t)),
            "train_samples_per_s": throughput[name],
        }
        for name, t in latency.items()
    }
    print(f"{args.candidates} candidates, one user, {args.repeats} repeats, 1 thread")
    print(f"{'model':10s} {'median ms':>10s} {'p99 ms':>8s} {'teacher/this':>13s} {'train samples/s':>16s}")
    for name, row in rows.items():
        print(
            f"{name:10s} {row['median_ms']:10.2f} {row['p99_ms']:8.2f} "
            f"{row['teacher_over_this_median']:13.1f} {row['train_samples_per_s']:16,.0f}"
        )
    print(f"item matrix for {data.store.n_items:,} items (offline, dssm_full): {matrix_ms:.1f} ms")
    path = write_result(
        "ranking_latency",
        {
            "candidates": args.candidates,
            "catalogue_items": data.store.n_items,
            "repeats": args.repeats,
            "train_samples": len(data.splits["train"]["item"]),
            "threads": 1,
            "rows": rows,
            "item_matrix_ms": matrix_ms,
            "load_average_1_5_15min": os.getloadavg(),  # the machine is shared: say how busy it was
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
