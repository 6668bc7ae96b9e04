"""The three log tables of DESIGN §4 and their validation.

Every producer (simulator, loaders) writes these schemas and every consumer
reads them, so a model never has to know where its data came from.  Item ids
are >= 1: id 0 is the padding id of :mod:`relist.data.padding`.
"""

from __future__ import annotations

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
        ids = table.column("item_id").to_numpy(zero_copy_only=False)
        _first_bad(ids < 1, path, "item_id", "item ids must be >= 1 (0 is the padding id)")
        _first_bad(~np.isfinite(table.column("price").to_numpy(zero_copy_only=False)), path, "price",
                   "price is not finite")


def _first_bad(bad: np.ndarray, path, field: str, problem: str) -> None:
    if bad.any():
        raise SchemaError(path, int(np.argmax(bad)), field, problem)


def _list_lengths(table: pa.Table, name: str, path) -> np.ndarray:
    column = table.column(name).combine_chunks()
    _first_bad(column.is_null().to_numpy(zero_copy_only=False), path, name, "null list")
    return np.diff(column.offsets.to_numpy())


def _validate_lists(table: pa.Table, path, n_items: int | None) -> None:
    m = _list_lengths(table, "candidates", path)
    n = _list_lengths(table, "shown", path)
    _first_bad(m == 0, path, "candidates", "empty candidate list")
    _first_bad(_list_lengths(table, "cand_scores", path) != m, path, "cand_scores", "length differs from candidates")
    _first_bad(n > m, path, "shown", "more shown items than candidates")
    for label in ("click", "next", "buy"):
        if label in table.column_names:
            _first_bad(_list_lengths(table, label, path) != n, path, label, "length differs from shown")
    exposed = table.column("exposed_len").to_numpy(zero_copy_only=False)
    _first_bad((exposed < 0) | (exposed > n), path, "exposed_len", "outside [0, len(shown)]")
    scores = table.column("cand_scores").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if not np.isfinite(scores).all():
        bad_row = int(np.searchsorted(np.cumsum(m), int(np.argmax(~np.isfinite(scores))), side="right"))
        raise SchemaError(path, bad_row, "cand_scores", "score is NaN or infinite")
    for name in ("candidates", "shown"):
        flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        lengths = m if name == "candidates" else n
        bad = (flat < 1) if n_items is None else (flat < 1) | (flat > n_items)
        if bad.any():
            bad_row = int(np.searchsorted(np.cumsum(lengths), int(np.argmax(bad)), side="right"))
            raise SchemaError(path, bad_row, name, f"item id out of range [1, {n_items or 'max'}]")


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
