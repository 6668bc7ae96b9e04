"""`relist convert` (real data sets into relist's tables), `relist data validate` and `relist data split`."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

console = Console(soft_wrap=True)  # paths and row numbers stay on one line (greppable)
data_app = typer.Typer(help="Check and split your own logs (DESIGN §4 tables, any int64 ids).", no_args_is_help=True)

LISTS_HELP = ("A log directory (items.parquet, optional users.parquet, and lists.parquet or lists/ shards, split "
              "into train/valid/test or not), one lists Parquet file, a directory of shards, or a quoted glob.")


class Dataset(StrEnum):
    letor = "letor"
    amazon = "amazon"
    yandex = "yandex"
    obd = "obd"


class SplitBy(StrEnum):
    time = "time"
    request_id = "request_id"


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

    if features is not None and dataset is not Dataset.letor:
        raise typer.BadParameter("--features is only for letor")
    tables = LOADERS[dataset.value](src, n_features=features) if features else LOADERS[dataset.value](src)
    for path in tables.write(out):
        console.print(f"wrote {path}")
    if tables.lists is None:
        console.print(f"[yellow]no lists table:[/yellow] {dataset.value} has no logged lists (see the loader's "
                      "docstring), so these tables can train point-wise rankers but not `relist demo --data`")
    else:
        console.print(f"next: relist data validate {out}   then   relist demo --data {out} --out DIR")


def validate(
    src: str = typer.Argument(..., help=LISTS_HELP),
    items: Path = typer.Option(None, help="Items table (default: items.parquet beside the lists)."),
    users: Path = typer.Option(None, help="Users table (default: users.parquet beside the lists, if any)."),
    out: Path = typer.Option(None, help="Also write the summary as JSON here."),
) -> None:
    """Check logs against the schema and summarise them; lists that would be refused are named by file,
    row and field. Exits 1 when some would be."""
    from relist.data.summary import summarize_logs

    summary = summarize_logs(src, items, users)
    _print_summary(summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
        console.print(f"wrote {out}")
    if summary["problems"]:
        raise typer.Exit(1)


def split(
    src: str = typer.Option(..., help=LISTS_HELP),
    out: Path = typer.Option(..., help="New directory: items, users, lists/{train,valid,test}/, vocabulary, "
                                        "split.json."),
    by: SplitBy = typer.Option(SplitBy.time, help="time: the last lists (by a time/timestamp column, else file "
                                                   "order) are test; request_id: by a hash of request_id."),
    valid: float = typer.Option(0.1, min=0.0, max=0.9, help="Share of lists for validation."),
    test: float = typer.Option(0.1, min=0.001, max=0.9, help="Share of lists held out for testing."),
    items: Path = typer.Option(None, help="Items table (default: items.parquet beside the lists)."),
    users: Path = typer.Option(None, help="Users table (default: users.parquet beside the lists, if any)."),
) -> None:
    """Split logs into train/valid/test and map their ids to relist's (deterministic; recorded in split.json)."""
    from relist.data.split import find_sources, split_logs

    if valid + test >= 1:
        raise typer.BadParameter(f"--valid + --test must be below 1 (got {valid} + {test})")
    record = split_logs(find_sources(src, items, users), out, by.value, valid, test)
    console.print(f"wrote {out}: {record['lists']} lists (by {record['by']}, {record['order']}); "
                  f"{record['items']} items, {record['users']} users, ids {record['ids']}")


def _print_summary(s: dict) -> None:
    console.print(f"lists: {s['lists']} in {len(s['source']['lists'])} file(s); split: {s['source']['split']}")
    console.print(f"items: {s['items']}   ids: {s['ids']}   users: {s['users']} in lists, "
                  f"{s['users_in_users_table']} in the users table")
    if "candidates_per_list" in s:
        m, n, e = s["candidates_per_list"], s["shown_per_list"], s["exposure"]
        console.print(f"candidates per list: {m['min']}..{m['max']} (median {m['median']:g});  shown: "
                      f"{n['min']}..{n['max']};  mean exposed length {e['mean_exposed_len']:.2f} "
                      f"({e['share_fully_exposed']:.0%} fully exposed)")
        console.print("click rate by position: " + " ".join(f"{r:.3f}" for r in s["click_rate_by_position"]))
    if "ready_to_train" in s:
        ready = s["ready_to_train"]
        console.print("ready to train: yes" if ready == "yes" else
                      f"ready to train: no ({ready}); relist commands split it for you, or run `relist data split`")
    if not s["problems"]:
        console.print("[green]no problems found[/green]")
        return
    console.print(f"[red]{s['refused_lists']} list(s) would be refused[/red]:")
    for p in s["problems"]:
        console.print(f"  {p['lists']} × field '{p['field']}': {p['problem']}")
    for e in s["examples"]:
        where = ", ".join(x for x in (f"row {e['row']}" if e["row"] is not None else "",
                                      f"field '{e['field']}'" if e["field"] else "") if x)
        console.print(f"  e.g. {e['file']}{', ' + where if where else ''}: {e['problem']}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("convert")(convert)
    data_app.command("validate")(validate)
    data_app.command("split")(split)
    app.add_typer(data_app, name="data")
