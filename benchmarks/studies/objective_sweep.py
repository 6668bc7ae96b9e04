"""Per-request objective weights (CMR's setting): one set of trained models, a sweep from clicks to spend.

relist.eval.objective_sweep does the sweep (the demo's report shows a shorter one); this study runs it
on the rerank study's default-world models (trained there if missing) with 11 points and writes the
plot. Beam search and list ranking (its incumbent, pessimistic choice and local search) read the
weights from the request; nothing is retrained.

``grn_cmr`` is the GRN conditioned on the weights (CMR: trained once with weights drawn per batch on
the same line from clicks to spend, relist/configs/generator_cmr.yaml), trained into the same models
folder as role ``generator_cmr`` when missing; ``grn`` (trained for clicks alone, it cannot read the
weights) is the reference that shows what conditioning buys.

    python -m benchmarks objective_sweep
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from benchmarks.studies.rerank import ROOT, DefaultWorldStudy, conditioned_generator, default_world_models
from relist.data.features import FeatureStore
from relist.eval.objective_sweep import objective_sweep
from relist.eval.report import objective_front
from relist.eval.rerank import LoggedTest, RerankEvalConfig
from relist.eval.simulated import true_rewards
from relist.io.config import CONFIGS, load_config
from relist.rerank.registry import Models, build_generators, build_ranking
from relist.sim.config import load_sim_config
from relist.sim.world import world_of_logs


class Config(DefaultWorldStudy):
    points: int = Field(11, ge=2, description="weights from all clicks (t=0) to all spend (t=1)")
    requests: int = Field(500, ge=1)
    split: str = "test"
    policies: list[str] = ["beam", "list_retrieval", "grn", "grn_cmr"]
    cmr_config: str = Field("relist/configs/generator_cmr.yaml", description="how grn_cmr is trained when missing")
    plot: str = "benchmarks/results/objective_sweep.png"


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    data, models_dir = default_world_models(work, load_sim_config(ROOT / cfg.world), cfg.lists, cfg.seed)
    trained = conditioned_generator(data, models_dir, cfg.seed, cfg.cmr_config) if "grn_cmr" in cfg.policies else None
    world, store = world_of_logs(data), FeatureStore.from_dir(data)
    models, _ = Models.load(models_dir, store)
    eval_cfg = load_config(CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
    logged = LoggedTest.read(data, cfg.requests, cfg.split)
    requests, n = logged.requests, eval_cfg.n
    generators, missing = build_generators([p for p in cfg.policies if p != "list_retrieval"], models,
                                           eval_cfg.rerank)
    if missing:
        raise ValueError(f"{models_dir}: {'; '.join(missing)}")
    valid = LoggedTest.read(data, eval_cfg.valid_requests, "valid").requests
    if "list_retrieval" in cfg.policies:
        generators["list_retrieval"] = build_ranking(models, eval_cfg.rerank, None, (valid, n))[0]
    sweep = objective_sweep(world, store, generators, requests, n, eval_cfg.rerank.rules.build(), cfg.points)
    for row in sweep["points"]:
        print(f"t={row['t']:.1f}", {name: (round(row[name]["ipv"], 3), round(row[name]["gmv"], 2))
                                    for name in generators})
    path = ROOT / cfg.plot
    path.parent.mkdir(parents=True, exist_ok=True)
    objective_front(sweep).savefig(path, dpi=110, bbox_inches="tight")
    return sweep | {"plot": cfg.plot, "generator_cmr_trained_s": trained,
                    "logging": {metric: float(v.mean()) for metric, v in
                                true_rewards(world, requests.user_id, logged.shown).items()}}
