"""`relist train initial`: LambdaMART or a point-wise MLP as the upstream ranker of learning-to-rank lists."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

console = Console()


class Kind(StrEnum):
    lambdamart = "lambdamart"
    mlp = "mlp"


def train_initial(
    data: Path = typer.Option(..., help=(
        "A log directory with lists/{train,valid,test}/ whose lists carry graded 'labels' and whose items carry "
        "dense features f1..fN, or the output of `relist convert letor` together with --fold.")),
    out: Path = typer.Option(..., help="Run directory: model/ (the ranker) and data/ (the lists re-ordered by it)."),
    kind: Kind = typer.Option(Kind.lambdamart, help="lambdamart (LightGBM) or mlp (point-wise, list-wise loss)."),
    fold: str | None = typer.Option(None, help="Standard LETOR fold (Fold1..Fold5) of a converted LETOR folder."),
    config: Path | None = typer.Option(None, help="InitialConfig YAML (grid, cross-fitting); default settings."),
    seed: int = typer.Option(0, help="Seed of LightGBM's bagging / the MLP's weights and batches."),
) -> None:
    """Train an initial ranker (settings chosen on the valid split) and write its scores as cand_scores and its
    order as the candidates' order, so every re-ranker and the evaluator can start from it."""
    from relist.io.config import load_config
    from relist.train.initial import InitialConfig, train_initial

    cfg = InitialConfig() if config is None else load_config(config, InitialConfig)
    cfg = cfg.model_copy(update={"kind": kind.value, "seed": seed})
    ranker, ndcg = train_initial(cfg, data, out, fold)  # bad input: relist.cli.main says what and where
    chosen = ", ".join(f"{k}={v}" for k, v in ranker.spec.params.items())
    scores = ", ".join(f"{name} {value:.4f}" for name, value in ndcg.items())
    console.print(f"{kind.value} ({chosen}); NDCG@10 {scores}; wrote {out / 'model'} and {out / 'data'}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    train_app.command("initial")(train_initial)
