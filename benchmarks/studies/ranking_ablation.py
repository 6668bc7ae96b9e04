"""Ablation of the coarse ranker: test GAUC of each DSSM variant, mean ± std over seeds, and its difference
from the plain DSSM in ‰ (paired by seed), with the fine-ranking teacher as the ceiling.

Every variant is one change on top of relist/configs/ranking_dssm.yaml (the config's ``variants``);
checkpoints are picked by validation GAUC, the table reports the held-out test split. Each entry of
``datasets`` is one table: simulated logs or a log directory (Amazon grocery), its teacher config and
budgets. Every trained model is cached under --work, keyed on its data and config.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.common import SimulatedLogs, cached, data_key, relist_config, repo_path, selected, simulated_logs

ALL_SWITCHES = {"head": "mlp", "fm_cross": True, "user_attention": "nova", "item_interaction": "senet_bilinear"}
VARIANTS: dict[str, dict] = {
    "dssm": {},
    "+ mlp head": {"student": {"head": "mlp"}},
    "+ fm crossing": {"student": {"fm_cross": True}},
    "+ nova attention": {"student": {"user_attention": "nova"}},
    "+ senet/bilinear item tower": {"student": {"item_interaction": "senet_bilinear"}},
    "+ two-stage distillation": {"distill": {"mode": "two_stage"}},
    "+ sync distillation (frozen shared emb.)": {"distill": {"mode": "sync"}},
    "all switches + two-stage distillation": {"student": ALL_SWITCHES, "distill": {"mode": "two_stage"}},
}


class Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(None, description="log directory (e.g. ../shared/data/amazon_grocery_5core); "
                                               "null: simulated logs")
    logs: SimulatedLogs = SimulatedLogs(requests=50_000)
    teacher_config: str = Field("ranking_teacher.yaml", description="relist/configs file of the teacher")
    click_only: bool = Field(False, description="the logs have no scroll labels: the teacher has the click head only")
    seeds: int = Field(3, ge=1)
    student_epochs: int = Field(4, ge=1)
    teacher_epochs: int = Field(5, ge=1)
    variants: list[str] | None = Field(None, description="student variants (null: all; plain DSSM always runs)")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: dict[str, Dataset]
    only: list[str] | None = Field(None, description="run only these datasets (null: all)")
    variants: dict[str, dict] = Field(VARIANTS, description="name -> change to the plain DSSM's config sections")


def variant_config(base, change: dict, seed: int, epochs: int, teacher_run: Path):
    from relist.models.ranking.config import RankingConfig

    data = base.model_dump(mode="json")
    for section, values in change.items():
        data[section] |= values
    data["train"] |= {"seed": seed, "epochs": epochs, "num_threads": 1}
    if data["distill"]["mode"] == "two_stage":
        data["distill"]["teacher_run"] = str(teacher_run)
    return RankingConfig.model_validate(data)


def train_and_test(cfg, data_dir: Path, data, out: Path) -> dict:
    """Train ``cfg`` into ``out`` (cached, keyed on the data and the config) and score the test split."""
    from relist.eval.ranking import evaluate_ranking
    from relist.train.ranking import train_ranking

    def build(run_dir: Path) -> dict:
        start = time.perf_counter()
        result = train_ranking(cfg, data_dir, run_dir, data=data)
        seconds = time.perf_counter() - start
        report = evaluate_ranking(run_dir, data_dir, data=data)
        return {"test_gauc": report["ctr"]["gauc"], "test_auc": report["ctr"]["auc"],
                "valid_gauc": result.best_metric, "best_epoch": result.best_epoch + 1, "train_seconds": seconds,
                "train_samples_per_s": float(np.median([h["samples_per_s"] for h in result.history]))}

    return cached(out, {"data": data_key(data_dir), "config": cfg.model_dump(mode="json")}, build)["record"]


def summarise(per_seed: dict[str, list[dict]]) -> dict:
    base = np.array([r["test_gauc"] for r in per_seed["dssm"]])
    rows = {}
    for name, runs in per_seed.items():
        gauc = np.array([r["test_gauc"] for r in runs])
        row = {"gauc_mean": gauc.mean(), "gauc_std": gauc.std(ddof=1) if len(gauc) > 1 else 0.0,
               "auc_mean": float(np.mean([r["test_auc"] for r in runs])), "per_seed": runs}
        if name != "teacher":
            diff = (gauc - base[: len(gauc)]) * 1000
            row |= {"diff_permille_mean": diff.mean(), "diff_permille_std": diff.std(ddof=1) if len(diff) > 1 else 0.0}
        rows[name] = row
    return rows


def print_table(dataset: str, rows: dict) -> None:
    print(f"\n{dataset}: test GAUC, mean ± std over seeds; difference from plain DSSM in ‰ (paired by seed)")
    print(f"{'variant':44s} {'GAUC':>17s} {'Δ vs DSSM (‰)':>16s} {'AUC':>7s} {'samples/s':>10s}")
    for name, row in rows.items():
        diff = f"{row['diff_permille_mean']:+.1f} ± {row['diff_permille_std']:.1f}" if name != "teacher" else "ceiling"
        speed = np.median([r["train_samples_per_s"] for r in row["per_seed"]])
        print(f"{name:44s} {row['gauc_mean']:.4f} ± {row['gauc_std']:.4f} {diff:>16s} {row['auc_mean']:.4f} "
              f"{speed:10,.0f}")


def run_dataset(name: str, spec: Dataset, variants: dict[str, dict], work: Path) -> dict:
    from relist.io.config import load_config
    from relist.models.ranking.config import RankingConfig
    from relist.models.ranking.samples import load_ranking_data

    data_dir = repo_path(spec.data) if spec.data else simulated_logs(spec.logs, work)
    data = load_ranking_data(data_dir)
    teacher_base = load_config(relist_config(spec.teacher_config), RankingConfig)
    student_base = load_config(relist_config("ranking_dssm.yaml"), RankingConfig)
    if spec.click_only:
        teacher_base = teacher_base.model_copy(
            update={"teacher": teacher_base.teacher.model_copy(update={"tasks": ("ctr",)})})
        student_base = student_base.model_copy(update={"teacher": teacher_base.teacher})
    picked = selected(spec.variants, variants, f"datasets.{name}.variants")
    chosen = {v: change for v, change in variants.items() if v == "dssm" or v in picked}
    per_seed: dict[str, list[dict]] = {v: [] for v in ["teacher", *chosen]}
    configs = {}
    runs = work / f"runs-{data_key(data_dir)}"
    for seed in range(spec.seeds):
        cfg = variant_config(teacher_base, {}, seed, spec.teacher_epochs, Path())
        teacher_run = runs / f"seed{seed}" / f"teacher-{Path(spec.teacher_config).stem}-{spec.teacher_epochs}"
        per_seed["teacher"].append(train_and_test(cfg, data_dir, data, teacher_run))
        configs["teacher"] = cfg.model_dump(mode="json")
        for variant, change in chosen.items():
            cfg = variant_config(student_base, change, seed, spec.student_epochs, teacher_run)
            slug = "".join(c if c.isalnum() else "_" for c in variant).strip("_")
            per_seed[variant].append(train_and_test(cfg, data_dir, data, teacher_run.parent / f"{teacher_run.name}"
                                                    f"-{slug}-{spec.student_epochs}"))
            configs[variant] = cfg.model_dump(mode="json")
            print(f"{name} seed {seed} {variant}: test GAUC {per_seed[variant][-1]['test_gauc']:.4f}", flush=True)
    rows = summarise(per_seed)
    print_table(name, rows)
    return {"data": str(data_dir), "samples": {s: len(v["item"]) for s, v in data.splits.items()},
            "seeds": spec.seeds, "rows": rows, "configs": configs, "teacher_config": spec.teacher_config}


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    names = selected(cfg.only, cfg.datasets, "only")
    return {"datasets": {name: run_dataset(name, cfg.datasets[name], cfg.variants, work) for name in names}}
