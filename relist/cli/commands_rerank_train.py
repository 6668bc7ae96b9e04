"""`relist train evaluator` and `relist train generator`: the DCWN evaluator and the GRN generator."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from relist.io.config import CONFIGS, load_config

console = Console()


def train_evaluator(
    data: Path = typer.Option(
        ..., help="Log directory (items.parquet, users.parquet, lists/{train,valid}/)."
    ),
    out: Path = typer.Option(..., help="Run directory: weights, evaluator.yaml, checkpoints, curves."),
    config: Path = typer.Option(CONFIGS / "evaluator.yaml", help="Evaluator training config (YAML)."),
    ranker: Path = typer.Option(None, help="Trained fine-ranking teacher (`relist train ranking`): the evaluator "
                                           "starts from its logits (model.prior); serve the two together."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
) -> None:
    """Train the DCWN list evaluator ensemble on logged lists (labels only where the user looked)."""
    from relist.data.split import ready_logs_in
    from relist.train.api import summary, train_model
    from relist.train.evaluator import EvaluatorTrainConfig

    cfg = load_config(config, EvaluatorTrainConfig)
    result = train_model(cfg, ready_logs_in(data, out.parent, console.print), out, resume, ranker=ranker)
    console.print(f"evaluator of {cfg.model.members} members: {summary(result, cfg.train.monitor)}")


def train_generator(
    data: Path = typer.Option(..., help="Log directory with train and valid requests."),
    evaluator: Path = typer.Option(..., help="Trained evaluator directory (from `relist train evaluator`)."),
    out: Path = typer.Option(..., help="Run directory: weights, generator.yaml, checkpoints, curves."),
    config: Path = typer.Option(CONFIGS / "generator.yaml", help="Generator training config (YAML)."),
    ranker: Path = typer.Option(None, help="The fine-ranking teacher the evaluator was trained on top of."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
) -> None:
    """Train the GRN generator by policy gradient against the frozen evaluator."""
    from relist.data.split import ready_logs_in
    from relist.train.api import summary, train_model
    from relist.train.generator import GeneratorTrainConfig

    cfg = load_config(config, GeneratorTrainConfig)
    result = train_model(cfg, ready_logs_in(data, out.parent, console.print), out, resume, ranker=ranker,
                         evaluator=evaluator)
    console.print(f"generator: {summary(result, cfg.train.monitor)}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    train_app.command("evaluator")(train_evaluator)
    train_app.command("generator")(train_generator)
