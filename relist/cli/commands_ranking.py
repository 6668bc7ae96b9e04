"""`relist train ranking` and `relist eval ranking`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from relist.eval.provenance import write_stamped

console = Console()


def train_ranking(
    config: Path = typer.Option(..., help="Ranking YAML config (relist/configs/ranking_*.yaml)."),
    data: Path = typer.Option(..., help="relist log directory, or the Amazon grocery root (with ctr_split/)."),
    out: Path = typer.Option(..., help="Run directory: weights, checkpoints, curves, config."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    teacher: Path = typer.Option(None, help="Trained teacher run (overrides distill.teacher_run)."),
    seed: int = typer.Option(None, help="Override train.seed."),
) -> None:
    """Train the fine-ranking teacher or the (distilled) DSSM student; validation GAUC each epoch."""
    from relist.data.split import ready_logs_in
    from relist.io.config import load_config
    from relist.models.ranking.config import RankingConfig
    from relist.train.api import summary, train_model

    cfg = load_config(config, RankingConfig)
    if teacher is not None:
        cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher_run": str(teacher)})})
    if seed is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    result = train_model(cfg, ready_logs_in(data, out.parent, console.print), out, resume)
    console.print(f"{cfg.model}: {summary(result, cfg.train.monitor)}")


def eval_ranking(
    model: Path = typer.Option(..., help="Run directory written by `relist train ranking`."),
    data: Path = typer.Option(..., help="The data it was trained on (same ids)."),
    split: str = typer.Option("test", help="Held-out time split to score."),
    out: Path = typer.Option(None, help="Write the report as JSON here (default: MODEL/eval_SPLIT.json)."),
) -> None:
    """AUC and GAUC (per user) of a trained ranking model on a held-out split."""
    from relist.data.split import ready_logs_in
    from relist.eval.ranking import evaluate_ranking, print_ranking_report

    report = evaluate_ranking(model, ready_logs_in(data, model.parent, console.print), split)
    print_ranking_report(report, console)
    path = write_stamped(report, out if out is not None else model / f"eval_{split}.json")
    console.print(f"wrote {path}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    train_app.command("ranking")(train_ranking)
    eval_app.command("ranking")(eval_ranking)
