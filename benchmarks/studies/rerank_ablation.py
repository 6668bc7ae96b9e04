"""Each remedy of the "wins in truth" issue switched off alone, on the default world's validation requests.

The design bucket: truth on *validation* requests of the default world (never test requests, never
another world). Every row is the full system with one remedy changed — a teacher setting (no slot
context), an evaluator setting (no ensemble, no upstream score, no teacher prior, a prior without the
slot terms, no neighbourhood features), a list-ranking setting (beam without the slot terms, no
pessimism, no safe incumbent, no local search) or a generator setting (no behaviour term, no
pessimism in its reward) — so its change against the full row says what that remedy is worth.
Models a row does not change are shared with the rerank study's seed (its work directory); a row
that changes a model trains its own copy.

    python -m benchmarks rerank_ablation
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.studies.rerank import DONE, WorldSpec, _merged, default_world_models, validity
from relist.data.features import FeatureStore
from relist.eval.metrics import paired_relative
from relist.eval.rerank import LoggedTest, RerankEvalConfig, build_policies, serve
from relist.eval.simulated import true_rewards
from relist.io.config import CONFIGS, load_config
from relist.rerank.registry import Models
from relist.sim.world import world_of_logs


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ranker: dict = Field({}, description="changes to relist/configs/ranking_teacher.yaml (retrains it, the evaluator "
                                         "and the GRN)")
    evaluator: dict = Field({}, description="changes to relist/configs/evaluator.yaml (retrains it and the GRN)")
    generator: dict = Field({}, description="changes to relist/configs/generator.yaml (retrains the GRN)")
    rerank: dict = Field({}, description="changes to the evaluation's rerank section (no training)")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    world: WorldSpec = WorldSpec()
    seed: int = 0
    requests: int = 500
    validity_requests: int = 300
    policies: list[str] = ["list_retrieval", "list_retrieval_last", "grn", "last"]
    variants: dict[str, Variant] = {
        "all remedies": Variant(),
        "teacher: no slot context": Variant(ranker={"teacher": {"slot_context": False}}),
        "beam: no slot terms": Variant(rerank={"beam": {"slot_context": False}}),
        "evaluator as before (one member, no upstream score, no prior, no neighbourhood)": Variant(
            evaluator={"model": {"members": 1, "upstream": False, "prior": False, "neighbourhood": False}}),
        "evaluator: one member (no ensemble)": Variant(evaluator={"model": {"members": 1}}),
        "evaluator: no upstream score": Variant(evaluator={"model": {"upstream": False}}),
        "evaluator: no teacher prior": Variant(evaluator={"model": {"prior": False}}),
        "evaluator: the item's own prior (no slot terms)": Variant(evaluator={"model": {"prior_in_slot": False}}),
        "evaluator: no neighbourhood features": Variant(evaluator={"model": {"neighbourhood": False}}),
        "list ranking: no pessimism (beta 0)": Variant(rerank={"ranking": {"beta": 0.0}, "last": {"beta": 0.0}}),
        "list ranking: no safe incumbent": Variant(rerank={"ranking": {"incumbent": None}}),
        "list ranking: no local search": Variant(rerank={"ranking": {"refine": {"rounds": 0}}}),
        "GRN: no behaviour term": Variant(generator={"imitation": 0.0}),
        "GRN: no pessimism in its reward": Variant(generator={"beta": 0.0}),
    }


def _train_variant(data: Path, base: Path, out: Path, variant: Variant, seed: int) -> None:
    """The base seed's models, with the teacher, the evaluator and/or the GRN retrained as the variant says
    (and what reads a retrained model)."""
    from relist.models.ranking.config import RankingConfig
    from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
    from relist.train.generator import GeneratorTrainConfig, train_generator
    from relist.train.ranking import train_ranking

    out.mkdir(parents=True, exist_ok=True)
    retrain = ({"ranker", "evaluator", "generator"} if variant.ranker else {"evaluator", "generator"}
               if variant.evaluator else ({"generator"} if variant.generator else set()))
    for role in ("ranker", "evaluator", "generator", "prm", "dlcm", "seq2slate"):
        if role not in retrain and not (out / role).exists():
            (out / role).symlink_to(base / role)
    if "ranker" in retrain and not (out / "ranker" / DONE).is_file():
        shutil.rmtree(out / "ranker", ignore_errors=True)
        cfg = load_config(CONFIGS / "ranking_teacher.yaml", RankingConfig).model_dump()
        cfg = RankingConfig.model_validate(_merged(cfg, variant.ranker | {"train": {"seed": seed, "num_threads": 1}}))
        start = time.perf_counter()
        train_ranking(cfg, data, out / "ranker")
        (out / "ranker" / DONE).write_text(f"{time.perf_counter() - start:.1f} s\n")
    if "evaluator" in retrain and not (out / "evaluator" / DONE).is_file():
        shutil.rmtree(out / "evaluator", ignore_errors=True)
        cfg = load_config(CONFIGS / "evaluator.yaml", EvaluatorTrainConfig).model_dump()
        cfg = EvaluatorTrainConfig.model_validate(_merged(cfg, variant.evaluator | {"train": {"seed": seed}}))
        start = time.perf_counter()
        train_evaluator(cfg, data, out / "evaluator", ranker_dir=out / "ranker" if cfg.model.prior else None)
        (out / "evaluator" / DONE).write_text(f"{time.perf_counter() - start:.1f} s\n")
    if "generator" in retrain and not (out / "generator" / DONE).is_file():
        shutil.rmtree(out / "generator", ignore_errors=True)
        cfg = load_config(CONFIGS / "generator.yaml", GeneratorTrainConfig).model_dump()
        cfg = GeneratorTrainConfig.model_validate(_merged(cfg, variant.generator | {"train": {"seed": seed}}))
        start = time.perf_counter()
        train_generator(cfg, data, out / "evaluator", out / "generator", ranker_dir=out / "ranker")
        (out / "generator" / DONE).write_text(f"{time.perf_counter() - start:.1f} s\n")


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    data, base = default_world_models(work, cfg.world.sim_config(), cfg.world.lists, cfg.seed)
    world, store = world_of_logs(data), FeatureStore.from_dir(data)
    logged = LoggedTest.read(data, cfg.requests, "valid")  # the design bucket: validation requests only
    eval_cfg = load_config(CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
    rows, full = {}, None
    for name, variant in cfg.variants.items():
        trains = variant.ranker or variant.evaluator or variant.generator
        models_dir = work / "ablation" / _slug(name) if trains else base
        if models_dir != base:
            _train_variant(data, base, models_dir, variant, cfg.seed)
        models, _ = Models.load(models_dir, store)
        variant_cfg = RerankEvalConfig.model_validate(_merged(eval_cfg.model_dump(), {
            "requests": cfg.requests, "policies": [p for p in cfg.policies if not p.startswith("list_retrieval")],
            "rerank": variant.rerank}))
        variant_cfg = variant_cfg.model_copy(update={"retrieval": {k: v for k, v in variant_cfg.retrieval.items()
                                                                   if k in cfg.policies}})
        policies, _, incumbents = build_policies(variant_cfg, data, models)
        served = serve(policies, logged, models, variant_cfg)
        truth = {p: true_rewards(world, logged.requests.user_id, lists)["ipv"] for p, lists in served.lists.items()}
        full = full or truth
        rows[name] = {p: {"ipv": float(values.mean()),
                          "vs_logging": paired_relative(values, truth["logging"])[0],
                          "vs_all_remedies": paired_relative(values, full[p])[0] if p in full else None,
                          "vs_all_remedies_ci95": paired_relative(values, full[p])[1] if p in full else None}
                      for p, values in truth.items() if p != "logging"}
        rows[name]["incumbent"] = {k: v.get("incumbent") for k, v in incumbents.items()}
        if variant.ranker or variant.evaluator or name == "all remedies":  # the instrument, before and after
            rows[name]["evaluator_validity"] = validity(world, models, policies, logged, variant_cfg,
                                                        cfg.validity_requests)
        print(name, {p: round(100 * r["vs_logging"], 1) for p, r in rows[name].items() if "vs_logging" in r},
              flush=True)
    return {"rows": rows, "requests": cfg.requests, "split": "valid",
            "logging_ipv": float(np.mean(true_rewards(world, logged.requests.user_id, logged.shown)["ipv"]))}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
