"""Ablation of the coarse ranker: test GAUC of each DSSM variant, mean ± std over seeds, and its difference
from the plain DSSM in ‰ (paired by seed), with the fine-ranking teacher as the ceiling.

Every variant is one switch on top of relist/configs/ranking_dssm.yaml; checkpoints are picked by
validation GAUC, the table reports the held-out test split. Run one dataset per process (they merge into one
JSON), e.g.::

    python benchmarks/ranking_ablation.py --dataset sim
    python benchmarks/ranking_ablation.py --dataset amazon
"""

from __future__ import annotations

import argparse
import fcntl
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, write_result

from relist.eval.ranking import evaluate_ranking
from relist.models.ranking.samples import load_ranking_data
from relist.train.config import load_config
from relist.train.ranking import RankingConfig, train_ranking

CONFIGS = Path(__file__).resolve().parents[1] / "relist" / "configs"
AMAZON = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_grocery_5core"
ALL_SWITCHES = {
    "head": "mlp",
    "fm_cross": True,
    "user_attention": "nova",
    "item_interaction": "senet_bilinear",
}
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


def variant_config(base: RankingConfig, change: dict, seed: int, epochs: int, teacher_run: Path) -> RankingConfig:
    data = base.model_dump(mode="json")
    for section, values in change.items():
        data[section] |= values
    data["train"] |= {"seed": seed, "epochs": epochs}
    if data["distill"]["mode"] == "two_stage":
        data["distill"]["teacher_run"] = str(teacher_run)
    return RankingConfig.model_validate(data)


def run(cfg: RankingConfig, data_dir: Path, data, out: Path) -> dict:
    start = time.perf_counter()
    result = train_ranking(cfg, data_dir, out, data=data)
    seconds = time.perf_counter() - start
    report = evaluate_ranking(out, data_dir, data=data)
    return {
        "test_gauc": report["ctr"]["gauc"],
        "test_auc": report["ctr"]["auc"],
        "valid_gauc": result.best_metric,
        "best_epoch": result.best_epoch + 1,
        "train_seconds": seconds,
        "train_samples_per_s": float(np.median([h["samples_per_s"] for h in result.history])),
    }


def summarise(per_seed: dict[str, list[dict]]) -> dict:
    base = np.array([r["test_gauc"] for r in per_seed["dssm"]])
    rows = {}
    for name, runs in per_seed.items():
        gauc = np.array([r["test_gauc"] for r in runs])
        row = {
            "gauc_mean": gauc.mean(),
            "gauc_std": gauc.std(ddof=1) if len(gauc) > 1 else 0.0,
            "auc_mean": float(np.mean([r["test_auc"] for r in runs])),
            "per_seed": runs,
        }
        if name != "teacher":
            diff = (gauc - base[: len(gauc)]) * 1000
            row |= {
                "diff_permille_mean": diff.mean(),
                "diff_permille_std": diff.std(ddof=1) if len(diff) > 1 else 0.0,
            }
        rows[name] = row
    return rows


def print_table(dataset: str, rows: dict) -> None:
    print(f"\n{dataset}: test GAUC, mean ± std over seeds; difference from plain DSSM in ‰ (paired by seed)")
    print(f"{'variant':44s} {'GAUC':>17s} {'Δ vs DSSM (‰)':>16s} {'AUC':>7s} {'samples/s':>10s}")
    for name, row in rows.items():
        diff = f"{row['diff_permille_mean']:+.1f} ± {row['diff_permille_std']:.1f}" if name != "teacher" else "ceiling"
        speed = np.median([r["train_samples_per_s"] for r in row["per_seed"]])
        print(
            f"{name:44s} {row['gauc_mean']:.4f} ± {row['gauc_std']:.4f} {diff:>16s} {row['auc_mean']:.4f} "
            f"{speed:10,.0f}"
        )


def merge_into_results(dataset: str, entry: dict) -> Path:
    """Datasets run in separate processes: update this one's entry under a lock, keep the others."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "relist_ranking_ablation.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = RESULTS / "ranking_ablation.json"
        datasets = json.loads(path.read_text()).get("datasets", {}) if path.is_file() else {}
        datasets[dataset] = entry
        return write_result("ranking_ablation", {"datasets": datasets})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["sim", "amazon"], required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=4)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--sim-requests", type=int, default=50_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ranking_ablation"))
    parser.add_argument("--amazon", type=Path, default=AMAZON, help="Amazon grocery root (with ctr_split/)")
    parser.add_argument("--teacher-config", type=Path, default=CONFIGS / "ranking_teacher.yaml",
                        help="teacher (ceiling and distillation source), e.g. ranking_teacher_amazon.yaml")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="student variants to run (plain DSSM always runs: it is the reference)")
    parser.add_argument("--entry", default=None, help="key of this table in the JSON (default: --dataset)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work / args.dataset
    if args.dataset == "sim":
        data_dir = work / "logs"
        if not (data_dir / "lists").is_dir():
            from relist.sim.config import load_sim_config
            from relist.sim.logs import simulate_logs
            from relist.sim.world import build_world

            simulate_logs(build_world(load_sim_config(None)), data_dir, args.sim_requests)
    else:
        data_dir = args.amazon
    data = load_ranking_data(data_dir)
    teacher_base = load_config(args.teacher_config, RankingConfig)
    student_base = load_config(CONFIGS / "ranking_dssm.yaml", RankingConfig)
    if args.dataset == "amazon":  # no scroll labels: the teacher has the click head only
        teacher_base = teacher_base.model_copy(
            update={"teacher": teacher_base.teacher.model_copy(update={"tasks": ("ctr",)})}
        )
        student_base = student_base.model_copy(update={"teacher": teacher_base.teacher})
    variants = {name: change for name, change in VARIANTS.items() if name == "dssm" or name in args.variants}
    per_seed: dict[str, list[dict]] = {name: [] for name in ["teacher", *variants]}
    configs = {}
    for seed in range(args.seeds):
        teacher_run = work / f"seed{seed}" / "teacher"
        cfg = variant_config(teacher_base, {}, seed, args.teacher_epochs, teacher_run)
        per_seed["teacher"].append(run(cfg, data_dir, data, teacher_run))
        configs["teacher"] = cfg.model_dump(mode="json")
        for name, change in variants.items():
            cfg = variant_config(student_base, change, seed, args.student_epochs, teacher_run)
            slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
            per_seed[name].append(run(cfg, data_dir, data, work / f"seed{seed}" / slug))
            configs[name] = cfg.model_dump(mode="json")
            print(f"seed {seed} {name}: test GAUC {per_seed[name][-1]['test_gauc']:.4f}", flush=True)
    rows = summarise(per_seed)
    print_table(args.entry or args.dataset, rows)
    entry = {
        "data": str(data_dir),
        "samples": {s: len(v["item"]) for s, v in data.splits.items()},
        "seeds": args.seeds,
        "rows": rows,
        "configs": configs,
        "teacher_config": str(args.teacher_config.name),
        "command": f"python benchmarks/ranking_ablation.py --dataset {args.dataset} --seeds {args.seeds} "
        f"--student-epochs {args.student_epochs} --teacher-epochs {args.teacher_epochs} "
        f"--teacher-config {args.teacher_config}",
    }
    print(f"wrote {merge_into_results(args.entry or args.dataset, entry)}")


if __name__ == "__main__":
    main()
