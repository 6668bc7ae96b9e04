"""Serving cost of the coarse ranker vs the fine-ranking teacher: one user, 5,000 candidates.

The student scores with its precomputed item matrix (user tower once, then one batched head over the
candidates' rows); the teacher runs its full model on every (user, candidate) pair. Both include the
feature lookup, run on the same candidates in the same process, one thread each — the ratio to the
teacher in the same run is the figure. Also the training throughput (samples/s) of each model on the
same simulated logs (one epoch each).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.common import SimulatedLogs, cached, data_key, relist_config, simulated_logs


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(5000, ge=1, description="candidates scored for one user")
    logs: SimulatedLogs = SimulatedLogs(requests=20_000, changes={"catalogue": {"n_items": 10_000}})
    repeats: int = Field(200, ge=1, description="timed calls per model (after 10 warm-up calls)")
    models: dict[str, str] = Field({"teacher": "ranking_teacher.yaml", "dssm": "ranking_dssm.yaml",
                                    "dssm_full": "ranking_dssm_full.yaml"},
                                   description="name -> relist/configs file; 'teacher' is the reference")


def timings_ms(call, repeats: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def train_one_epoch(name: str, file: str, logs: Path, data, work: Path) -> tuple[Path, float]:
    """The model of ``file`` trained one epoch (cached) into ``work/name``; that directory and its training
    samples/s. A two-stage student distils from ``work/teacher``."""
    from relist.io.config import load_config
    from relist.models.ranking.config import RankingConfig
    from relist.train.ranking import train_ranking

    cfg = load_config(relist_config(file), RankingConfig)
    update = {"train": cfg.train.model_copy(update={"epochs": 1, "num_threads": 1})}
    if cfg.distill.mode == "two_stage":
        update["distill"] = cfg.distill.model_copy(update={"teacher_run": str(work / "teacher"), "stage1_epochs": 1})
    cfg = cfg.model_copy(update=update)
    settings = {"data": data_key(logs), "config": cfg.model_dump(mode="json")}
    run_dir = work / name
    done = cached(run_dir, settings, lambda out: {"samples_per_s": train_ranking(cfg, logs, out, data=data)
                                                  .history[-1]["samples_per_s"]})
    return run_dir, done["record"]["samples_per_s"]


def run(cfg: Config, work: Path) -> dict:
    from relist.data.requests import Requests
    from relist.models.ranking import CoarseScorer
    from relist.models.ranking.samples import load_ranking_data
    from relist.models.ranking.saved import load_ranking_model
    from relist.models.ranking.scoring import request_inputs

    torch.set_num_threads(1)
    logs = simulated_logs(cfg.logs, work)
    data = load_ranking_data(logs)
    runs, throughput = {}, {}
    models = work / f"models-{data_key(logs)}"
    for name, file in cfg.models.items():
        runs[name], throughput[name] = train_one_epoch(name, file, logs, data, models)

    rng = np.random.default_rng(0)
    candidates = rng.choice(np.arange(1, data.store.n_items + 1), cfg.candidates, replace=False)
    user = int(data.splits["test"]["user"][0])
    teacher = load_ranking_model(runs["teacher"])
    request = Requests.from_arrays([0], [user], candidates[None, :], np.full((1, len(candidates)), np.nan))

    @torch.no_grad()
    def teacher_call():
        return teacher(request_inputs(data.store, request))["ctr"]

    latency = {"teacher": timings_ms(teacher_call, cfg.repeats)}
    students = [name for name in cfg.models if name != "teacher"]
    for name in students:
        scorer = CoarseScorer(load_ranking_model(runs[name]), data.store)
        latency[name] = timings_ms(lambda scorer=scorer: scorer.score(user, candidates), cfg.repeats)
    start = time.perf_counter()
    CoarseScorer(load_ranking_model(runs[students[-1]]), data.store)
    matrix_ms = (time.perf_counter() - start) * 1000

    teacher_median = float(np.median(latency["teacher"]))
    rows = {name: {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
                   "teacher_over_this_median": teacher_median / float(np.median(t)),
                   "train_samples_per_s": throughput[name]} for name, t in latency.items()}
    print(f"{cfg.candidates} candidates, one user, {cfg.repeats} repeats, 1 thread")
    print(f"{'model':10s} {'median ms':>10s} {'p99 ms':>8s} {'teacher/this':>13s} {'train samples/s':>16s}")
    for name, row in rows.items():
        print(f"{name:10s} {row['median_ms']:10.2f} {row['p99_ms']:8.2f} "
              f"{row['teacher_over_this_median']:13.1f} {row['train_samples_per_s']:16,.0f}")
    print(f"item matrix for {data.store.n_items:,} items (offline, {students[-1]}): {matrix_ms:.1f} ms")
    return {"candidates": cfg.candidates, "catalogue_items": data.store.n_items, "repeats": cfg.repeats,
            "train_samples": len(data.splits["train"]["item"]), "threads": 1, "rows": rows,
            "item_matrix_ms": matrix_ms, "load_average_1_5_15min": os.getloadavg()}
