"""Every re-ranking policy on every shipped world, models trained with several seeds, judged by the truth.

For each world (default, alternative, shift, sparse) this simulates logs, trains per seed every
role model on the train split (checkpoints picked on the valid split), serves the first test (or
valid) requests with every policy of `relist eval rerank`, and judges the lists by the simulator's
true expected reward: change vs the logging policy and vs the best baseline (paired 95% CIs) and the
share of the logging→oracle gap closed (the oracle obeys the same business rules). The shift world
is the default world's logs and models, judged after the users' behaviour changed. The pooled table
stacks the (seed, request) pairs of all seeds. Per seed it also records the evaluator-validity
instrument (relist.eval.evaluator_validity) on each generator's proposals, and how list retrieval
chose its incumbent (on validation requests). Trained models and oracles are cached under --work.

    python -m benchmarks rerank                        # the full study (hours on 2 cores)
    python -m benchmarks rerank --set split=valid      # the design bucket: validation requests
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.eval.evaluator_validity import generator_validity
from relist.eval.rerank import (
    LoggedTest,
    RerankEvalConfig,
    Served,
    build_policies,
    compute_oracles,
    print_rerank_report,
    rerank_report,
    serve,
)
from relist.io.config import CONFIGS, load_config
from relist.rerank.generators import Context
from relist.rerank.registry import Models
from relist.sim.config import SimConfig, load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import World, build_world, world_of_logs

ROOT = Path(__file__).resolve().parents[2]
DONE = ".trained"  # written when a model's training has finished (a cached model is reused)


class WorldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str = Field("relist/configs/sim_default.yaml", description="simulator config (relative to the repo)")
    lists: int = Field(20_000, ge=1000, description="logged lists (train/valid/test)")
    logs_of: str | None = Field(None, description="reuse another world's logs and models, judged by this config's "
                                                  "shift (the behaviour change after training)")
    shift_seed: int = 1
    overrides: dict = Field({}, description="simulator settings changed on top of the config file, e.g. "
                                            "{logging: {random_bucket: {share: 0.05}}} (the exploration study)")

    def sim_config(self) -> SimConfig:
        base = load_sim_config(ROOT / self.config).model_dump()
        return SimConfig.model_validate(_merged(base, self.overrides))


def _merged(base: dict, changes: dict) -> dict:
    return {key: _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
            for key, value in changes.items()} | {key: value for key, value in base.items() if key not in changes}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    worlds: dict[str, WorldSpec] = {
        "default": WorldSpec(), "alt": WorldSpec(config="relist/configs/sim_alt.yaml"),
        "shift": WorldSpec(config="relist/configs/sim_shift.yaml", logs_of="default"),
        "sparse": WorldSpec(config="relist/configs/sim_sparse.yaml")}
    seeds: list[int] = [0, 1, 2]
    requests: int = Field(1000, ge=1, description="requests evaluated per seed")
    split: Literal["test", "valid"] = Field("test", description="valid: the design bucket; test: reporting")
    eval_config: str = "relist/configs/rerank_eval.yaml"
    validity_requests: int = Field(300, ge=1, description="requests of the evaluator-validity instrument per seed")
    generator_steps: int | None = Field(None, ge=1, description="cap on GRN steps per epoch (None: its config's)")


def train_role(cfg, data: Path, models: Path, role: str) -> float | None:
    """Train ``models/<role>`` from ``cfg`` unless a finished one is there (its siblings ranker and evaluator are
    what it reads); the seconds it took, None when cached."""
    from relist.train.api import train_model

    if (models / role / DONE).is_file():
        return None
    start = time.perf_counter()
    train_model(cfg, data, models / role, ranker=models / "ranker", evaluator=models / "evaluator")
    seconds = time.perf_counter() - start
    (models / role / DONE).write_text(f"{seconds:.1f} s\n")
    print(f"trained {role} (seed {cfg.train.seed}) in {seconds:.0f} s", flush=True)
    return seconds


def seeded(cfg, seed: int, **train):
    """A training config with its ``train`` section's seed (and other ``train`` fields) set."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed, **train})})


def conditioned_generator(data: Path, models: Path, seed: int,
                          config: str = "relist/configs/generator_cmr.yaml") -> float | None:
    """Train the GRN conditioned on the objective into ``models/generator_cmr`` from ``config`` unless it is there;
    the seconds it took, None when cached."""
    from relist.train.generator import GeneratorTrainConfig

    return train_role(seeded(load_config(ROOT / config, GeneratorTrainConfig), seed), data, models, "generator_cmr")


def train_models(data: Path, models: Path, seed: int, generator_steps: int | None) -> dict[str, float]:
    """Train whatever is missing under ``models/<role>`` with the shipped configs; seconds per model trained now."""
    from relist.models.ranking.config import RankingConfig
    from relist.train.baselines import BaselineTrainConfig
    from relist.train.evaluator import EvaluatorTrainConfig
    from relist.train.generator import GeneratorTrainConfig

    steps = {} if generator_steps is None else {"max_steps_per_epoch": generator_steps}
    base = load_config(CONFIGS / "baselines.yaml", BaselineTrainConfig).model_dump()
    configs = {
        "ranker": seeded(load_config(CONFIGS / "ranking_teacher.yaml", RankingConfig), seed, num_threads=1),
        "evaluator": seeded(load_config(CONFIGS / "evaluator.yaml", EvaluatorTrainConfig), seed),
        "generator": seeded(load_config(CONFIGS / "generator.yaml", GeneratorTrainConfig), seed, **steps),
    } | {kind: BaselineTrainConfig.model_validate(base | {"model": base["model"] | {"kind": kind},
                                                          "train": base["train"] | {"seed": seed}})
         for kind in ("prm", "dlcm", "seq2slate")}
    seconds = {role: train_role(cfg, data, models, role) for role, cfg in configs.items()}
    return {role: s for role, s in seconds.items() if s is not None}


def world_logs(home: Path, sim: SimConfig, lists: int) -> Path:
    """A world's logs under ``home/sim``, simulated where missing (every study given the same ``--work`` reuses
    them)."""
    data = home / "sim"
    if not (data / "lists").is_dir():
        simulate_logs(build_world(sim), data, lists, progress=False)
    return data


def cached_oracles(path: Path, world: World, requests: Requests, cfg: RerankEvalConfig
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The oracle lists of ``requests`` (under the rules, without), computed once and kept at ``path``."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, *compute_oracles(world, requests, cfg))
    with np.load(path) as saved:
        return saved["arr_0"], saved["arr_1"]


class DefaultWorldStudy(BaseModel):
    """The settings of a study that runs on this study's default-world models of one seed (``default_world_models``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    world: str = "relist/configs/sim_default.yaml"
    lists: int = 20_000
    seed: int = 0


def default_world_models(work: Path, sim: SimConfig, lists: int, seed: int) -> tuple[Path, Path]:
    """This study's default-world logs and one seed's models under ``work`` (made where missing), so that
    every study given the same ``--work`` reuses them: (log directory, models directory)."""
    data = world_logs(work / "default", sim, lists)
    models = work / "default" / f"seed{seed}"
    train_models(data, models, seed, None)
    return data, models


def judging_world(spec: WorldSpec, data: Path) -> World:
    """The world whose truth judges the lists: the one that wrote the logs, or it after a behaviour change."""
    world = world_of_logs(data)
    if spec.logs_of is None:
        return world
    return world.shifted(load_sim_config(ROOT / spec.config).shift, spec.shift_seed)


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
    for name in runs[0].sources:
        keys = {k for run in runs for k in run.sources.get(name, {})}
        out.sources[name] = {k: float(np.mean([run.sources[name].get(k, 0.0) for run in runs])) for k in keys}
    return out


def validity(world: World, models: Models, policies: dict, logged: LoggedTest, cfg: RerankEvalConfig,
             requests: int) -> dict:
    """The evaluator-validity instrument on each generator's proposals, without its scatter sample."""
    ctx = Context(models.store, cfg.rerank.rules.build(), cfg.rerank.objective)
    report = generator_validity(world, models.evaluator, policies, logged.requests[:requests],
                                logged.shown[:requests], cfg.n, ctx, cfg.rerank.ranking.beta)
    report.pop("scatter")
    return report


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    eval_cfg = load_config(ROOT / cfg.eval_config, RerankEvalConfig).model_copy(update={"requests": cfg.requests})
    results, training = {}, {}
    for name, spec in cfg.worlds.items():
        home = work / (spec.logs_of or name)
        source = cfg.worlds[spec.logs_of] if spec.logs_of else spec
        data = world_logs(home, source.sim_config(), source.lists)
        world = judging_world(spec, data)
        logged = LoggedTest.read(data, cfg.requests, cfg.split)
        oracles = cached_oracles(work / name / f"oracle_{cfg.split}_{cfg.requests}.npz", world, logged.requests,
                                 eval_cfg)
        store = FeatureStore.from_dir(data)
        runs, per_seed = [], {}
        for seed in cfg.seeds:
            models_dir = home / f"seed{seed}"
            training[f"{name}/seed{seed}"] = train_models(data, models_dir, seed, cfg.generator_steps)
            models, missing = Models.load(models_dir, store)
            policies, skipped, incumbents = build_policies(eval_cfg, data, models)
            served = serve(policies, logged, models, eval_cfg)
            served.incumbents = incumbents
            runs.append(served)
            per_seed[seed] = rerank_report(world, logged, served, eval_cfg, *oracles) | {
                "skipped": missing + skipped,
                "evaluator_validity": validity(world, models, policies, logged, eval_cfg, cfg.validity_requests)}
        pooled = rerank_report(world, stack_logged(logged, len(runs)), stack_served(runs), eval_cfg,
                               *(np.concatenate([o] * len(runs)) for o in oracles))
        print_rerank_report(pooled | {"skipped": per_seed[cfg.seeds[0]]["skipped"]})
        results[name] = {"pooled_over_seeds": pooled, "per_seed": per_seed, "data": str(data),
                         "sim_config": world.config.model_dump(mode="json")}
    return {"worlds": results, "eval_config": eval_cfg.model_dump(mode="json"), "training_seconds": training,
            "ci": "95% CI over (seed, request) pairs, pooled; paired per request vs logging and the best baseline"}
