"""`relist convert`: real data sets into relist's Parquet tables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

console = Console()


class Dataset(StrEnum):
    letor = "letor"
    amazon = "amazon"
    yandex = "yandex"
    obd = "obd"


def convert(
    dataset: Dataset = typer.Argument(..., help="Which data set (and so which format) SRC holds."),
    src: Path = typer.Option(..., help=(
        "letor: an S*.txt[.gz] file or a directory of them; amazon: the folder with item_meta.csv.gz and "
        "train.csv.gz; yandex: sessions_long.tsv.gz; obd: a log file <policy>/<campaign>.csv.gz "
        "(its <campaign>_item_context.csv.gz must lie beside it).")),
    out: Path = typer.Option(..., help="Directory for items.parquet, users.parquet, lists.parquet, extras."),
    features: int | None = typer.Option(None, min=1, help=(
        "letor only: number of feature columns f1..fN (default: the highest feature index in the files).")),
) -> None:
    """Convert a real data set into the DESIGN §4 tables (the mapping is in each loader's docstring)."""
    from relist.data.loaders import LOADERS
    from relist.data.schema import SchemaError

    if features is not None and dataset is not Dataset.letor:
        console.print("[red]bad input:[/red] --features is only for letor")
        raise typer.Exit(2)
    try:
        tables = LOADERS[dataset.value](src, n_features=features) if features else LOADERS[dataset.value](src)
    except SchemaError as err:
        console.print(f"[red]bad input:[/red] {err}")
        raise typer.Exit(1) from None
    for path in tables.write(out):
        console.print(f"wrote {path}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("convert")(convert)
