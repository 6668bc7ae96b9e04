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

# The optional propensity family of ``lists``: the logging policy's probability of each shown item at
# its slot given the items before it, of the item at its slot alone (what per-slot estimators need),
# and of the whole list (the product of the first). Off-policy estimators read them; nothing else does.
PROPENSITY = pa.schema(
    [
        ("propensity", pa.list_(pa.float64())),
        ("propensity_marginal", pa.list_(pa.float64())),
        ("list_propensity", pa.float64()),
    ]
)
PROPENSITY_REQUIRED = ("propensity", "list_propensity")  # propensity_marginal is optional
LISTS_WITH_PROPENSITY = pa.schema(list(LISTS) + list(PROPENSITY))
ROUNDING = 1e-9  # probabilities up to 1 + ROUNDING are taken as 1 (floating-point sums)

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


def validate(table: pa.Table, kind: str, path: str | Path = "<memory>", n_items: int | None = None,
             propensities: bool = False) -> None:
    """Raise :class:`SchemaError` at the first problem; the order of checks is cheapest first.

    With ``n_items`` the item ids of lists must be internal ids 1..n_items; without, any int64.
    ``propensities`` (lists only) demands the propensity family; it is checked whenever any of its
    columns is present too.
    """
    for name in REQUIRED[kind]:
        if name not in table.column_names:
            raise SchemaError(path, None, name, f"missing column (has {table.column_names})")
    if kind == "lists":
        _validate_lists(table, path, n_items)
        if propensities or has_propensities(table):
            _validate_propensities(table, path)
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


def _list_lengths(table: pa.Table, name: str, path) -> np.ndarray:
    lengths, null = _lengths(table, name)
    _first_bad(null, path, name, "null list")
    return lengths


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


def has_propensities(table: pa.Table | pa.Schema) -> bool:
    """Whether a ``lists`` table declares the propensity family (any of its columns is present)."""
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    return any(name in names for name in PROPENSITY.names)


def _validate_propensities(table: pa.Table, path) -> None:
    """Every probability in (0, 1], finite, aligned with ``shown``; the list's is the product of the slots'."""
    for name in PROPENSITY_REQUIRED:
        if name not in table.column_names:
            raise SchemaError(path, None, name, "missing column of the propensity family "
                              f"(needs {', '.join(PROPENSITY_REQUIRED)}; has {table.column_names})")
    n = _list_lengths(table, "shown", path)
    rows = np.repeat(np.arange(len(n)), n)
    for name in ("propensity", "propensity_marginal"):
        if name not in table.column_names:
            continue
        _first_bad(_list_lengths(table, name, path) != n, path, name, "length differs from shown")
        column = table.column(name).combine_chunks().flatten()
        _bad_probability(column, rows, path, name)
    column = table.column("list_propensity").combine_chunks()
    _bad_probability(column, np.arange(len(column)), path, "list_propensity")
    slots = table.column("propensity").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    log_sums = np.concatenate([[0.0], np.cumsum(np.log(slots))])
    product = np.exp(log_sums[np.cumsum(n)] - log_sums[np.cumsum(n) - n])
    listed = column.to_numpy(zero_copy_only=False)
    _first_bad(~np.isclose(listed, product, rtol=1e-6, atol=0.0), path, "list_propensity",
               "differs from the product of the slots' propensity")


def _bad_probability(column: pa.Array, rows: np.ndarray, path, name: str) -> None:
    """Null, NaN, <= 0 or > 1: the row of the first such value."""
    null = column.is_null().to_numpy(zero_copy_only=False)
    values = column.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    for bad, problem in ((null, "missing value (null)"), (np.isnan(values) & ~null, "propensity is NaN"),
                         (values <= 0, "propensity is 0 or negative (the logging policy could not have "
                                       "shown this item here; importance weights need > 0)"),
                         (values > 1 + ROUNDING, "propensity is above 1")):
        if bad.any():
            raise SchemaError(path, int(rows[int(np.argmax(bad))]), name, problem)
