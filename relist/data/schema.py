"""The three log tables of DESIGN §4 and their validation.

Every producer (simulator, loaders) writes these schemas and every consumer
reads them, so a model never has to know where its data came from.  Item and
user ids are the user's: any int64, 0 and negatives included.  Inside relist
they become dense internal ids 1..N (relist.data.ids), so that 0 stays the
padding id of :mod:`relist.data.padding`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ITEMS = pa.schema(
    [
        ("item_id", pa.int64()),
        ("cate_id", pa.int32()),
        ("shop_id", pa.int32()),
        ("price", pa.float32()),
    ]
)

USERS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("segment", pa.int32()),
        ("hist_items", pa.list_(pa.int64())),
        ("hist_cates", pa.list_(pa.int32())),
    ]
)

LISTS = pa.schema(
    [
        ("request_id", pa.int64()),
        ("user_id", pa.int64()),
        ("candidates", pa.list_(pa.int64())),
        ("cand_scores", pa.list_(pa.float32())),
        ("shown", pa.list_(pa.int64())),
        ("click", pa.list_(pa.int8())),
        ("next", pa.list_(pa.int8())),
        ("buy", pa.list_(pa.int8())),
        ("exposed_len", pa.int16()),
    ]
)

TABLES = {"items": ITEMS, "users": USERS, "lists": LISTS}

# Columns a table must have; others (profile features, dense item features) are optional.
REQUIRED = {
    "items": ["item_id", "cate_id", "shop_id", "price"],
    "users": ["user_id", "hist_items", "hist_cates"],
    "lists": ["request_id", "user_id", "candidates", "cand_scores", "shown", "click", "next", "exposed_len"],
}


MAX_CATEGORY = 10_000_000  # largest cate_id / shop_id: they are rows of embedding tables


class SchemaError(ValueError):
    """Bad input, located: which file, which row, which field, and what is wrong."""

    def __init__(self, path: str | Path, row: int | None, field: str | None, problem: str):
        self.path, self.row, self.field, self.problem = str(path), row, field, problem
        where = [f"file {self.path}"]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {problem}")


def read_table(path: str | Path, kind: str) -> pa.Table:
    """Read and validate one Parquet file (or directory of shards) of the given kind."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(path, None, None, "no such file or directory")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(path, None, None, f"not a readable Parquet file ({err})") from err
    validate(table, kind, path)
    return table


def validate(table: pa.Table, kind: str, path: str | Path = "<memory>", n_items: int | None = None) -> None:
    """Raise :class:`SchemaError` at the first problem; the order of checks is cheapest first.

    With ``n_items`` the item ids of lists must be internal ids 1..n_items; without, any int64.
    """
    for name in REQUIRED[kind]:
        if name not in table.column_names:
            raise SchemaError(path, None, name, f"missing column (has {table.column_names})")
    if kind == "lists":
        _validate_lists(table, path, n_items)
    elif kind == "items":
        _unique(table, "item_id", path)
        _first_bad(~np.isfinite(table.column("price").to_numpy(zero_copy_only=False)), path, "price",
                   "price is not finite")
        for name in ("cate_id", "shop_id"):  # they index embedding tables
            values = table.column(name).to_numpy(zero_copy_only=False)
            _first_bad((values < 0) | (values > MAX_CATEGORY), path, name,
                       f"must be in 0..{MAX_CATEGORY} (it indexes an embedding table: renumber densely)")
    elif kind == "users":
        _unique(table, "user_id", path)


def _unique(table: pa.Table, name: str, path) -> None:
    column = table.column(name)
    _first_bad(column.is_null().to_numpy(zero_copy_only=False), path, name, "null id")
    ids = column.to_numpy(zero_copy_only=False)
    order = np.argsort(ids, kind="stable")
    repeated = np.zeros(len(ids), bool)
    repeated[order[1:]] = np.diff(ids[order]) == 0
    _first_bad(repeated, path, name, "id repeated (each id must appear once)")


def _first_bad(bad: np.ndarray, path, field: str, problem: str) -> None:
    if bad.any():
        raise SchemaError(path, int(np.argmax(bad)), field, problem)


def _lengths(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    column = table.column(name).combine_chunks()
    return np.diff(column.offsets.to_numpy()), column.is_null().to_numpy(zero_copy_only=False)


def _rows_of(flat_bad: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows holding at least one flagged element of a flattened list column."""
    return np.bincount(np.repeat(np.arange(len(lengths)), lengths)[flat_bad], minlength=len(lengths)) > 0


def list_problems(table: pa.Table, known: Callable[[np.ndarray], np.ndarray] | None = None
                  ) -> Iterator[tuple[str, str, np.ndarray]]:
    """Every check of a lists table as (field, problem, rows that fail it), cheapest first.

    ``known(ids)`` says which item ids are acceptable (default: any int64). Validation stops at the
    first failing check; ``relist data validate`` counts them all.
    """
    m, m_null = _lengths(table, "candidates")
    n, n_null = _lengths(table, "shown")
    yield "candidates", "null list", m_null
    yield "shown", "null list", n_null
    yield "candidates", "empty candidate list", m == 0
    scores_len, scores_null = _lengths(table, "cand_scores")
    yield "cand_scores", "null list", scores_null
    yield "cand_scores", "length differs from candidates", scores_len != m
    yield "shown", "more shown items than candidates", n > m
    for label in ("click", "next", "buy"):
        if label in table.column_names:
            length, null = _lengths(table, label)
            yield label, "null list", null
            yield label, "length differs from shown", length != n
    exposed = table.column("exposed_len").to_numpy(zero_copy_only=False)
    yield "exposed_len", "outside [0, len(shown)]", (exposed < 0) | (exposed > n)
    scores = table.column("cand_scores").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if len(scores) == m.sum():
        yield "cand_scores", "score is NaN or infinite", _rows_of(~np.isfinite(scores), m)
    if known is not None:
        for name, lengths in (("candidates", m), ("shown", n)):
            flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            yield name, "item id not in the items table", _rows_of(~known(flat), lengths)


def _validate_lists(table: pa.Table, path, n_items: int | None) -> None:
    known = None if n_items is None else (lambda ids: (ids >= 1) & (ids <= n_items))
    for field, problem, bad in list_problems(table, known):
        if bad.any():
            row = int(np.argmax(bad))
            if problem == "item id not in the items table":
                problem = f"item id out of range [1, {n_items}]"
            raise SchemaError(path, row, field, problem)
