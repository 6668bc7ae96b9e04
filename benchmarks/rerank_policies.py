"""Every re-ranking policy on two simulated worlds, models trained with several seeds.

For each simulator configuration (the default world and relist/configs/sim_alt.yaml, whose effect
strengths differ) this simulates logs, trains per seed the fine-ranking teacher (p_ctr, p_next), the DCWN
evaluator, the GRN generator and the PRM / DLCM / Seq2Slate baselines on the train split (checkpoints
picked on the valid split), then serves the first test requests with every policy of
relist.eval.rerank and judges the lists by the simulator's true expected reward. The pooled table stacks
the (seed, request) pairs of all seeds: means with 95% CIs over them, change vs the logging policy
(paired), % of the oracle (computed once per world). Per-seed tables are kept in the JSON too.

Training budgets are cut to fit a 2-core machine (see ``TRAINING`` in the JSON); trained models are
cached under --work, so a rerun only evaluates.

    python benchmarks/rerank_policies.py --work /tmp/rerank_study
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from _common import write_result

from relist.data.requests import Requests
from relist.eval.rerank import (
    LoggedTest,
    RerankEvalConfig,
    Served,
    build_policies,
    print_rerank_report,
    rerank_report,
    serve,
)
from relist.eval.simulated import oracle_lists
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world, world_of_logs
from relist.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "relist" / "configs"
DONE = ".trained"  # written when a model's training has finished (a cached model is reused)
WORLDS = {"default": None, "alt": CONFIGS / "sim_alt.yaml"}
TRAINING = {
    "teacher": "relist/configs/ranking_teacher.yaml as is",
    "evaluator": "relist/configs/evaluator.yaml as is",
    "generator": "relist/configs/generator.yaml with epochs=2, max_steps_per_epoch=40, valid_requests=500",
    "baselines": "relist/configs/baselines.yaml with epochs=2, valid_lists=1000",
}


def with_seed(cfg, seed: int, **train):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed, **train})})


def train_models(data: Path, models: Path, seed: int) -> dict[str, float]:
    """Train whatever is missing under ``models``; returns seconds per model trained now."""
    from relist.train.baselines import BaselineTrainConfig, train_baseline
    from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
    from relist.train.generator import GeneratorTrainConfig, train_generator
    from relist.train.ranking import RankingConfig, train_ranking

    seconds = {}

    def timed(name, train):
        done = models / name / DONE
        if done.is_file():
            return
        start = time.perf_counter()
        train(models / name)
        seconds[name] = time.perf_counter() - start
        done.write_text(f"{seconds[name]:.1f} s\n")
        print(f"trained {name} (seed {seed}) in {seconds[name]:.0f} s", flush=True)

    teacher = with_seed(load_config(CONFIGS / "ranking_teacher.yaml", RankingConfig), seed, num_threads=1)
    timed("teacher", lambda out: train_ranking(teacher, data, out))
    evaluator = with_seed(load_config(CONFIGS / "evaluator.yaml", EvaluatorTrainConfig), seed)
    timed("evaluator", lambda out: train_evaluator(evaluator, data, out))
    generator = with_seed(load_config(CONFIGS / "generator.yaml", GeneratorTrainConfig), seed, epochs=2,
                          max_steps_per_epoch=40).model_copy(update={"valid_requests": 500})
    timed("generator", lambda out: train_generator(generator, data, models / "evaluator", out))
    base = load_config(CONFIGS / "baselines.yaml", BaselineTrainConfig).model_dump()
    for kind in ("prm", "dlcm", "seq2slate"):
        settings = base | {"model": base["model"] | {"kind": kind}, "valid_lists": 1000,
                           "train": base["train"] | {"seed": seed, "epochs": 2}}
        cfg = BaselineTrainConfig.model_validate(settings)
        timed(kind, lambda out, cfg=cfg: train_baseline(cfg, data, out))
    return seconds


def cached_oracle(world, logged: LoggedTest, cfg: RerankEvalConfig, work: Path) -> np.ndarray:
    """The oracle lists of the evaluated requests, computed once per world and kept under ``work``."""
    path = work / f"oracle_{cfg.objective}_n{cfg.n}_{cfg.requests}.npy"
    if not path.is_file():
        np.save(path, oracle_lists(world, logged.requests, cfg.n, cfg.objective))
    return np.load(path)


def stack_logged(logged: LoggedTest, times: int) -> LoggedTest:
    r = logged.requests
    requests = Requests(*(np.concatenate([getattr(r, f.name)] * times) for f in fields(Requests)))
    shown, clicks = (np.concatenate([x] * times) for x in (logged.shown, logged.clicks))
    return LoggedTest(requests, shown, clicks)


def stack_served(runs: list[Served]) -> Served:
    common = set.intersection(*(set(run.lists) for run in runs))
    out = Served()
    for name in sorted(common, key=list(runs[0].lists).index):
        out.lists[name] = np.concatenate([run.lists[name] for run in runs])
        out.ndcg[name] = np.concatenate([run.ndcg[name] for run in runs])
        if all(name in run.evaluator_lr for run in runs):
            out.evaluator_lr[name] = np.concatenate([run.evaluator_lr[name] for run in runs])
        if all(name in run.seconds for run in runs):
            out.seconds[name] = sum(run.seconds[name] for run in runs)
    sources = {k for run in runs for k in run.list_sources}
    out.list_sources = {k: float(np.mean([run.list_sources.get(k, 0.0) for run in runs])) for k in sources}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rerank_study"))
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lists", type=int, default=20_000, help="simulated requests (train/valid/test)")
    parser.add_argument("--requests", type=int, default=500, help="test requests evaluated per seed")
    parser.add_argument("--config", type=Path, default=CONFIGS / "rerank_eval.yaml")
    parser.add_argument("--train-only", action="store_true", help="train the models, evaluate nothing")
    parser.add_argument("--oracle-only", action="store_true", help="only compute and cache the oracles")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, RerankEvalConfig).model_copy(update={"requests": args.requests})
    results, training_seconds = {}, {}
    for world_name in args.worlds:
        data = args.work / world_name / "sim"
        if not (data / "lists").is_dir():
            simulate_logs(build_world(load_sim_config(WORLDS[world_name])), data, args.lists)
        for seed in [] if args.oracle_only else args.seeds:
            models = args.work / world_name / f"seed{seed}"
            training_seconds[f"{world_name}/seed{seed}"] = train_models(data, models, seed)
        if args.train_only:
            continue
        world = world_of_logs(data)
        logged = LoggedTest.read(data, cfg.requests)
        oracle = cached_oracle(world, logged, cfg, args.work / world_name)
        if args.oracle_only:
            continue
        runs, per_seed = [], {}
        for seed in args.seeds:
            policies, scorer, skipped = build_policies(cfg, data, args.work / world_name / f"seed{seed}")
            runs.append(serve(policies, logged, scorer, cfg.n, cfg.ndcg_k))
            per_seed[seed] = rerank_report(world, logged, runs[-1], cfg.n, cfg.objective, oracle) | {
                "skipped": skipped}
        stacked = stack_logged(logged, len(runs))
        pooled = rerank_report(world, stacked, stack_served(runs), cfg.n, cfg.objective,
                               np.concatenate([oracle] * len(runs)))
        print_rerank_report(pooled | {"skipped": per_seed[args.seeds[0]]["skipped"]})
        results[world_name] = {"pooled_over_seeds": pooled, "per_seed": per_seed,
                               "sim_config": world.config.model_dump(mode="json"), "data": str(data)}
    if args.train_only or args.oracle_only:
        return
    path = write_result("rerank_policies", {
        "seeds": args.seeds, "requests_per_seed": cfg.requests, "simulated_lists": args.lists,
        "eval_config": cfg.model_dump(mode="json"), "training": TRAINING,
        "training_seconds": training_seconds, "ci": "95% CI over (seed, request) pairs, pooled",
        "worlds": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
