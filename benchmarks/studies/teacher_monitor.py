"""Which epoch should the teacher's early stopping keep? What each validation metric keeps, judged by the truth.

The teacher (relist/configs/ranking_teacher.yaml) is trained on the default world's logs for a fixed
number of epochs, keeping every epoch's weights. Per epoch the study records the validation metrics the
trainer logs (click GAUC and AUC of the position-free score, the NEXT head's AUC, and the training loss
on the logged validation impressions with their position term) and the true IPV of the greedy-by-CTR and
beam lists that epoch's teacher serves on validation requests (the design bucket: never test requests,
never another world). For each metric it then replays early stopping (the config's patience) and reports
the epoch that metric keeps and what its lists are truly worth, next to the truly best epoch. The shipped
monitor (``train.monitor`` of the config) must be among them.

    python -m benchmarks teacher_monitor
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.studies.rerank import WorldSpec, cached_oracles, world_logs
from relist.data.features import FeatureStore
from relist.eval.rerank import LoggedTest, RerankEvalConfig, build_policies, rerank_report, serve
from relist.io.config import CONFIGS, load_config
from relist.io.weights import load_weights
from relist.models.ranking.config import RankingConfig
from relist.models.ranking.saved import load_ranking_model
from relist.rerank.registry import Models
from relist.sim.world import world_of_logs
from relist.train.ranking import train_ranking
from relist.train.trainer import EPOCHS, LOG

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("greedy_ctr", "beam")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    world: WorldSpec = WorldSpec()
    seeds: list[int] = [0, 1, 2, 3, 4]
    epochs: int = Field(10, ge=1, description="epochs every run trains (no early stopping; each epoch kept)")
    requests: int = Field(1000, ge=1, description="validation requests the lists are judged on")
    monitors: dict[str, str] = Field({"gauc": "max", "auc": "max", "next_auc": "max", "loss": "min",
                                      "ctr_loss+next_loss": "min"},
                                     description="validation metric (or sum 'a+b') -> the direction early "
                                                 "stopping keeps")
    eval_config: str = "relist/configs/rerank_eval.yaml"


def kept_epoch(values: list[float], mode: str, patience: int | None) -> int:
    """The epoch early stopping on ``values`` keeps, stopping after ``patience`` epochs without progress."""
    best, bad = 0, 0
    for epoch, value in enumerate(values[1:], start=1):
        if (value > values[best]) if mode == "max" else (value < values[best]):
            best, bad = epoch, 0
        else:
            bad += 1
            if patience is not None and bad >= patience:
                break
    return best


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    data = world_logs(work / "default", cfg.world.sim_config(), cfg.world.lists)
    eval_cfg = load_config(ROOT / cfg.eval_config, RerankEvalConfig).model_copy(
        update={"requests": cfg.requests, "policies": list(POLICIES)})
    world, logged = world_of_logs(data), LoggedTest.read(data, cfg.requests, "valid")
    oracles = cached_oracles(work / "default" / f"oracle_valid_{cfg.requests}.npz", world, logged.requests, eval_cfg)
    store = FeatureStore.from_dir(data)
    shipped = load_config(CONFIGS / "ranking_teacher.yaml", RankingConfig)
    patience = shipped.train.patience
    per_seed = {}
    for seed in cfg.seeds:
        run_dir = work / "teacher_monitor" / f"seed{seed}"
        train = shipped.train.model_copy(update={"seed": seed, "epochs": cfg.epochs, "patience": None,
                                                 "keep_epochs": True, "num_threads": 1})
        if not (run_dir / EPOCHS / f"{cfg.epochs - 1}.safetensors").is_file():
            train_ranking(shipped.model_copy(update={"train": train}), data, run_dir)
        with open(run_dir / LOG) as f:
            log = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        model, epochs = load_ranking_model(run_dir), []
        for epoch, row in enumerate(log):
            load_weights(model, run_dir / EPOCHS / f"{epoch}.safetensors")
            models = Models(store, ranker=model.eval())
            policies, _, _ = build_policies(eval_cfg, data, models)
            report = rerank_report(world, logged, serve(policies, logged, models, eval_cfg), eval_cfg, *oracles)
            epochs.append({"epoch": epoch} | {name: sum(row[f"val_{part}"] for part in name.split("+"))
                                              for name in cfg.monitors}
                          | {p: report["policies"][p]["ipv"]["gap_closed"] for p in POLICIES})
            print(f"seed {seed} epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in epochs[-1].items()), flush=True)
        kept = {name: kept_epoch([e[name] for e in epochs], mode, patience) for name, mode in cfg.monitors.items()}
        kept["truth (beam)"] = int(np.argmax([e["beam"] for e in epochs]))
        per_seed[seed] = {"epochs": epochs, "kept": kept}
    monitors = {}
    for name in [*cfg.monitors, "truth (beam)"]:
        rows = [s["epochs"][s["kept"][name]] for s in per_seed.values()]
        monitors[name] = {"epoch_kept": [s["kept"][name] for s in per_seed.values()]} | {
            f"{p}_gap_closed": float(np.mean([r[p] for r in rows])) for p in POLICIES}
    print(f"{'monitor':>18} | epochs kept      | greedy_ctr gap | beam gap")
    for name, row in monitors.items():
        print(f"{name:>18} | {str(row['epoch_kept']):16} | {row['greedy_ctr_gap_closed']:13.1f}% | "
              f"{row['beam_gap_closed']:7.1f}%")
    gain = monitors[shipped.train.monitor]["beam_gap_closed"] - monitors["gauc"]["beam_gap_closed"]
    return {"monitors": monitors, "per_seed": per_seed, "patience": patience, "shipped": shipped.train.monitor,
            "judged_on": f"first {cfg.requests} validation requests of the default world (true IPV, rules kept)",
            "shipped_minus_gauc_beam_gap": gain}
