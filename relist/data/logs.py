"""Reading a log directory written in the schema of DESIGN §4.

Layout: ``items.parquet``, ``users.parquet`` and ``lists/{train,valid,test}/``
(Parquet shards). Whole splits are read here for evaluation; training streams
shards with relist.data.stream instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from relist.data.requests import Requests
from relist.data.schema import SchemaError, read_table, validate


def split_path(data_dir: str | Path, split: str) -> Path:
    path = Path(data_dir) / "lists" / split
    if not path.is_dir():
        raise SchemaError(path, None, None, f"no '{split}' split in this log directory")
    return path


def read_lists(data_dir: str | Path, split: str, limit: int | None = None) -> pa.Table:
    """The first ``limit`` lists of a split (all by default), validated."""
    path = split_path(data_dir, split)
    dataset = ds.dataset(path, format="parquet")
    table = dataset.head(limit) if limit is not None else dataset.to_table()
    validate(table, "lists", path)
    return table


def read_items(data_dir: str | Path) -> pa.Table:
    return read_table(Path(data_dir) / "items.parquet", "items")


def read_users(data_dir: str | Path) -> pa.Table:
    return read_table(Path(data_dir) / "users.parquet", "users")


def logged_requests(data_dir: str | Path, split: str, limit: int | None = None) -> tuple[Requests, np.ndarray]:
    """Requests of a split and the lists the logging policy showed for them ([B, n])."""
    table = read_lists(data_dir, split, limit)
    shown = table.column("shown").combine_chunks()
    n = int(np.diff(shown.offsets.to_numpy()).max())
    return Requests.from_table(table), shown.flatten().to_numpy().reshape(-1, n)


def upstream_score_sample(data_dir: str | Path, limit: int = 20_000) -> np.ndarray:
    """The upstream scores of the first ``limit`` train lists, flattened: what models fit their score scale on."""
    table = ds.dataset(split_path(data_dir, "train"), format="parquet").head(limit, columns=["cand_scores"])
    return table.column("cand_scores").combine_chunks().flatten().to_numpy(zero_copy_only=False)
