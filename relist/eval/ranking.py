"""Offline quality of a trained ranking model on a held-out time split: AUC and GAUC (per user)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from relist.eval.metrics import auc, group_auc
from relist.models.ranking.samples import RankingData, load_ranking_data
from relist.models.ranking.saved import load_ranking_model
from relist.models.ranking.scoring import predict_logits

LABEL_OF = {"ctr": "click", "next": "next", "buy": "buy"}


def evaluate_ranking(
    run_dir: str | Path, data_dir: str | Path, split: str = "test", data: RankingData | None = None
) -> dict:
    """AUC and GAUC of every head the model has whose label the split carries."""
    if data is None:
        data = load_ranking_data(data_dir, (split,))
    samples = data.splits[split]
    logits = predict_logits(load_ranking_model(run_dir), samples)
    report: dict = {
        "model": str(run_dir),
        "data": str(data_dir),
        "split": split,
        "samples": len(samples["item"]),
    }
    for head, values in logits.items():
        labels = samples.get(LABEL_OF[head])
        if labels is None or labels.min() == labels.max():
            continue
        grouped = group_auc(samples["user"], labels, values)
        report[head] = {
            "auc": auc(labels, values),
            "gauc": grouped.value,
            "gauc_users": grouped.n_groups,
            "gauc_users_skipped": grouped.n_skipped,
        }
    return report


def print_ranking_report(report: dict, console: Console | None = None) -> None:
    table = Table(
        title=f"{report['model']} on {report['data']} [{report['split']}], {report['samples']:,} samples"
    )
    for column in ("head", "AUC", "GAUC", "users counted", "users skipped (one class)"):
        table.add_column(column)
    for head in ("ctr", "next", "buy"):
        if head in report:
            r = report[head]
            table.add_row(
                head,
                f"{r['auc']:.4f}",
                f"{r['gauc']:.4f}",
                f"{r['gauc_users']:,}",
                f"{r['gauc_users_skipped']:,}",
            )
    (console or Console()).print(table)
