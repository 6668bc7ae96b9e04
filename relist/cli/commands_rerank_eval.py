"""`relist eval rerank` (all re-ranking policies) and `relist train baseline` (PRM, DLCM, Seq2Slate)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from relist.eval.provenance import write_stamped
from relist.io.config import CONFIGS, load_config

console = Console()


def train_baseline(
    data: Path = typer.Option(..., help="Log directory (items, users, lists/{train,valid}/)."),
    out: Path = typer.Option(..., help="Run directory: weights, baseline.yaml, checkpoints, curves."),
    kind: str = typer.Option(None, help="prm, dlcm or seq2slate (overrides model.kind of the config)."),
    config: Path = typer.Option(CONFIGS / "baselines.yaml", help="Baseline training config (YAML)."),
    seed: int = typer.Option(None, help="Override train.seed."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
) -> None:
    """Train a re-ranking baseline on logged lists (clicks of the exposed items of each list)."""
    from relist.train.baselines import BaselineTrainConfig
    from relist.train.baselines import train_baseline as train

    settings = load_config(config, BaselineTrainConfig).model_dump()
    if kind is not None:
        settings["model"]["kind"] = kind
    if seed is not None:
        settings["train"]["seed"] = seed
    from relist.data.split import ready_logs_in

    cfg = BaselineTrainConfig.model_validate(settings)
    _, result = train(cfg, ready_logs_in(data, out.parent, console.print), out, resume)
    console.print(f"{cfg.model.kind}: best epoch {result.best_epoch + 1} "
                  f"(valid NDCG@10 {result.best_metric:.4f}); wrote {out}")


def eval_rerank(
    data: Path = typer.Option(..., help="Simulated log directory (from `relist simulate`)."),
    models: Path = typer.Option(..., help="One folder per trained model role: ranker/ evaluator/ generator/ "
                                          "prm/ dlcm/ seq2slate/."),
    config: Path = typer.Option(CONFIGS / "rerank_eval.yaml", help="Evaluation config (YAML)."),
    requests: int = typer.Option(None, help="Override the number of test requests."),
    out: Path = typer.Option(None, help="Write the report as JSON here (default: MODELS/rerank_eval.json)."),
) -> None:
    """Every re-ranking policy vs logging and oracle: true reward, evaluator score, NDCG on logged clicks."""
    from relist.eval.rerank import RerankEvalConfig, evaluate_rerank, print_rerank_report

    cfg = load_config(config, RerankEvalConfig)
    if requests is not None:
        cfg = cfg.model_copy(update={"requests": requests})
    from relist.data.split import ready_logs_in

    report = evaluate_rerank(cfg, ready_logs_in(data, models, console.print), models)
    print_rerank_report(report, console)
    path = write_stamped(report, out if out is not None else models / "rerank_eval.json")
    console.print(f"wrote {path}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    train_app.command("baseline")(train_baseline)
    eval_app.command("rerank")(eval_rerank)
