"""The fine-ranking teacher on Amazon Grocery, tuned on validation: is it at least as good as DIN (.724)?

The README of ``../shared/data/amazon_grocery_5core`` gives DIN (torch-rechub) test GAUC .724 ± .010 on its
CTR split (one sampled negative per positive, last positive per user -> test, the one before -> valid). Two
stages, both choosing on the **validation** split only:

1. ``grid``: seed 0, every candidate setting of the config's ``grid`` (changes to ranking_teacher.yaml:
   regularisation, embedding size, learning rate, batch size), each trained with early stopping on
   validation GAUC; the best by validation GAUC is reported (relist/configs/ranking_teacher_amazon.yaml
   holds it, with the weight decay its seeds chose).
2. ``seeds``: that config file with seeds 0..seeds-1; test GAUC mean ± std.

Every trained run is cached under --work, keyed on the data and its config.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.common import cached, data_key, relist_config, repo_path, selected

DIN = {"test_gauc": 0.724, "std": 0.010, "source": "amazon_grocery_5core/README.md (torch-rechub 0.9.0)"}
GRID: dict[str, dict] = {
    "default": {},
    "wd 0.05": {"train": {"weight_decay": 0.05}},
    "wd 0.2": {"train": {"weight_decay": 0.2}},
    "dropout 0.3": {"teacher": {"dropout": 0.3}},
    "lr 1e-3": {"train": {"lr": 1e-3}},
    "dim 32": {"dim": 32},
    "dim 32, wd 0.2, dropout 0.3": {"dim": 32, "teacher": {"dropout": 0.3}, "train": {"weight_decay": 0.2}},
    "batch 256, lr 1e-3": {"train": {"batch_size": 256, "lr": 1e-3}},
    "dim 64": {"dim": 64},
    "dim 64, wd 0.05": {"dim": 64, "train": {"weight_decay": 0.05}},
    "dim 64, dropout 0.3": {"dim": 64, "teacher": {"dropout": 0.3}},
    "dim 128, wd 0.05": {"dim": 128, "train": {"weight_decay": 0.05}},
}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = "../shared/data/amazon_grocery_5core"
    stages: list[str] = Field(["grid", "seeds"], description="grid, seeds, or both")
    base_config: str = Field("ranking_teacher.yaml", description="relist/configs file the grid changes")
    grid: dict[str, dict] = Field(GRID, description="name -> change to the base config's sections")
    epochs: int = Field(12, ge=1, description="upper bound; early stopping on valid GAUC")
    tuned_config: str = Field("ranking_teacher_amazon.yaml", description="relist/configs file the seeds rerun")
    seeds: int = Field(3, ge=1)


def with_changes(base, change: dict, seed: int, epochs: int):
    from relist.models.ranking.config import RankingConfig

    data = base.model_dump(mode="json")
    for key, value in change.items():
        data[key] = data[key] | value if isinstance(value, dict) else value
    data["train"] |= {"seed": seed, "epochs": epochs, "num_threads": 1}
    return RankingConfig.model_validate(data)


def train_and_score(cfg, data_dir: Path, data, out: Path) -> dict:
    from relist.eval.ranking import evaluate_ranking
    from relist.train.ranking import train_ranking

    def build(run_dir: Path) -> dict:
        start = time.perf_counter()
        result = train_ranking(cfg, data_dir, run_dir, data=data)
        test = evaluate_ranking(run_dir, data_dir, data=data)["ctr"]
        valid = evaluate_ranking(run_dir, data_dir, split="valid", data=data)["ctr"]
        return {"valid_gauc": valid["gauc"], "test_gauc": test["gauc"], "test_auc": test["auc"],
                "best_epoch": result.best_epoch + 1, "epochs_run": result.epochs,
                "train_seconds": time.perf_counter() - start}

    return cached(out, {"data": data_key(data_dir), "config": cfg.model_dump(mode="json")}, build)["record"]


def run(cfg: Config, work: Path) -> dict:
    from relist.io.config import load_config
    from relist.models.ranking.config import RankingConfig
    from relist.models.ranking.samples import load_ranking_data

    selected(cfg.stages, ("grid", "seeds"), "stages")
    torch.set_num_threads(1)
    data_dir = repo_path(cfg.data)
    data = load_ranking_data(data_dir)
    runs = work / f"runs-{data_key(data_dir)}"
    out = {"reference_din": DIN, "data": str(data_dir),
           "negatives": "one uniform negative per positive (the README's ctr_split)"}
    if "grid" in cfg.stages:
        base = load_config(relist_config(cfg.base_config), RankingConfig)
        # click head only, so early stopping on validation GAUC (the base may monitor heads Amazon lacks)
        base = base.model_copy(update={"teacher": base.teacher.model_copy(update={"tasks": ("ctr",)}),
                                       "train": base.train.model_copy(update={"monitor": "gauc",
                                                                              "monitor_mode": "max"})})
        rows = {}
        for name, change in cfg.grid.items():
            slug = "".join(c if c.isalnum() else "_" for c in name)
            rows[name] = train_and_score(with_changes(base, change, 0, cfg.epochs), data_dir, data,
                                         runs / "grid" / slug) | {"change": change}
            print(f"{name:32s} valid GAUC {rows[name]['valid_gauc']:.4f}  test {rows[name]['test_gauc']:.4f}  "
                  f"best epoch {rows[name]['best_epoch']}", flush=True)
        best = max(rows, key=lambda name: rows[name]["valid_gauc"])
        print(f"chosen on validation: {best}")
        out["grid"] = {"seed": 0, "epochs": cfg.epochs, "rows": rows, "chosen": best,
                       "chosen_valid_gauc": rows[best]["valid_gauc"], "chosen_test_gauc": rows[best]["test_gauc"]}
    if "seeds" in cfg.stages:
        tuned = load_config(relist_config(cfg.tuned_config), RankingConfig)
        epochs = tuned.train.epochs if tuned.train.max_steps_per_epoch else cfg.epochs
        per_seed = [train_and_score(with_changes(tuned, {}, seed, epochs), data_dir, data,
                                    runs / Path(cfg.tuned_config).stem / f"seed{seed}") for seed in range(cfg.seeds)]
        gauc = np.array([r["test_gauc"] for r in per_seed])
        std = float(gauc.std(ddof=1)) if len(gauc) > 1 else 0.0
        out["seeds"] = {"config": cfg.tuned_config, "settings": tuned.model_dump(mode="json"), "per_seed": per_seed,
                        "valid_gauc_mean": float(np.mean([r["valid_gauc"] for r in per_seed])),
                        "test_gauc_mean": float(gauc.mean()), "test_gauc_std": std,
                        "test_auc_mean": float(np.mean([r["test_auc"] for r in per_seed])),
                        "test_gauc_minus_din": float(gauc.mean()) - DIN["test_gauc"]}
        print(f"tuned teacher, {cfg.seeds} seeds: test GAUC {gauc.mean():.4f} ± {std:.4f} "
              f"(DIN {DIN['test_gauc']} ± {DIN['std']})")
    return out
