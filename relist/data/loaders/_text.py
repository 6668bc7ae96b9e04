"""Shared reading helpers for the loaders.

Every loader reads its files through these, so that every kind of bad input
(missing file, truncated gzip, missing column, garbage in a field, a line with
too few fields, a corrupt Parquet file) ends as one :class:`SchemaError` naming
the file, the row and the field.  Rows of text files are 1-based line numbers
(the header is line 1); rows of Parquet files are 0-based row indexes.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.parquet as pq

from relist.data.schema import REQUIRED, SchemaError, validate


@dataclass
class Tables:
    """What one loader produced: the §4 tables the data can fill, plus extra tables it needs."""

    items: pa.Table | None = None
    users: pa.Table | None = None
    lists: pa.Table | None = None
    extra: dict[str, pa.Table] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate on construction, so no loader can hand out a table that breaks the §4 contract."""
        n_items = None if self.items is None else pc.max(self.items["item_id"]).as_py()
        for kind in REQUIRED:
            if getattr(self, kind) is not None:
                validate(getattr(self, kind), kind, n_items=n_items)

    def write(self, out: str | Path) -> list[Path]:
        """Write every table as ``<name>.parquet`` under ``out``; returns the paths written."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        named = {kind: getattr(self, kind) for kind in REQUIRED} | self.extra
        paths = []
        for name, table in named.items():
            if table is not None:
                pq.write_table(table, out / f"{name}.parquet")
                paths.append(out / f"{name}.parquet")
        return paths


def read_bytes(path: str | Path) -> bytes:
    """The file's content, gunzipped when it ends in ``.gz``; a broken stream names the line it stops in."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(path, None, None, "no such file")
    if path.suffix != ".gz":
        return path.read_bytes()
    chunks: list[bytes] = []
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read1(1 << 20):  # read1 hands over all it decoded before a break
                chunks.append(chunk)
    except (EOFError, OSError, zlib.error) as err:
        line = sum(chunk.count(b"\n") for chunk in chunks) + 1
        raise SchemaError(path, line, None, f"corrupt or truncated gzip stream ({err})") from err
    return b"".join(chunks)


def read_delimited(
    path: str | Path, columns: Mapping[str, pa.DataType], delimiter: str = "\t"
) -> pa.Table:
    """Read the named ``columns`` (with their types) of a delimited text file with a header line.

    Fields are read as text first and converted afterwards, so a value that does
    not convert is reported with its exact line instead of pyarrow's guess.
    """
    data = read_bytes(path)
    header = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace").split(delimiter)
    for name in columns:
        if name not in header:
            raise SchemaError(path, 1, name, f"missing column (header has {len(header)} columns)")
    bad_rows: list[csv.InvalidRow] = []

    def on_invalid(row: csv.InvalidRow) -> str:
        bad_rows.append(row)
        return "skip"

    try:
        table = csv.read_csv(
            pa.BufferReader(data),
            read_options=csv.ReadOptions(use_threads=False),  # single-threaded: invalid rows get line numbers
            parse_options=csv.ParseOptions(delimiter=delimiter, ignore_empty_lines=False,
                                           invalid_row_handler=on_invalid),
            convert_options=csv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string()),
                                               include_columns=list(columns)),
        )
    except pa.ArrowInvalid as err:
        raise SchemaError(path, None, None, f"not readable as delimited text ({err})") from err
    if bad_rows:
        row = bad_rows[0]
        raise SchemaError(path, row.number, None,
                          f"expected {row.expected_columns} fields, got {row.actual_columns}")
    return pa.table({name: _convert(table.column(name), kind, path, name) for name, kind in columns.items()})


def _convert(text: pa.ChunkedArray, kind: pa.DataType, path: str | Path, name: str) -> pa.Array:
    """Cast a text column; the first value that does not convert (or is not finite) is reported by line."""
    text = text.combine_chunks()
    if kind == pa.string():
        return text
    try:
        values = pc.cast(text, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = _first_failure(len(text), lambda lo, hi: pc.cast(text[lo:hi], kind))
        raise SchemaError(path, row + 2, name, f"not a valid {kind}: {text[row].as_py()!r}") from None
    if pa.types.is_floating(kind):
        finite = np.isfinite(values.to_numpy(zero_copy_only=False))
        if not finite.all():
            row = int(np.argmin(finite))
            raise SchemaError(path, row + 2, name, f"not a finite number: {text[row].as_py()!r}")
    return values


def _first_failure(n: int, attempt: Callable[[int, int], object]) -> int:
    """Index of the first element for which ``attempt`` fails, by bisection (O(log n) attempts)."""
    lo, hi = 0, n  # elements before lo convert; [lo, hi) holds a failure
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            attempt(lo, mid)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def read_parquet(path: str | Path, columns: list[str]) -> pa.Table:
    """Read the named columns of a Parquet file; a missing column or a corrupt file is a SchemaError."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(path, None, None, "no such file")
    try:
        present = pq.read_schema(path).names
        missing = [name for name in columns if name not in present]
        table = None if missing else pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(path, None, None, f"not a readable Parquet file ({err})") from err
    if missing:
        raise SchemaError(path, None, missing[0], f"missing column (has {present})")
    return table


def check_rows(bad: np.ndarray, path: str | Path, name: str, problem: str, first_row: int = 2) -> None:
    """Raise for the first True in ``bad``, counted from ``first_row`` (2: first data line of a text file)."""
    if bad.any():
        raise SchemaError(path, int(np.argmax(bad)) + first_row, name, problem)


def list_column(values: np.ndarray, offsets: np.ndarray, kind: pa.DataType) -> pa.ListArray:
    """A list<kind> column from flat values and row offsets."""
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, kind))


def neutral_items(item_ids: np.ndarray, **extra: pa.Array | np.ndarray) -> pa.Table:
    """Items table for data without category, shop or price (all 0: unknown), then the ``extra`` columns."""
    n = len(item_ids)
    return pa.table({
        "item_id": pa.array(item_ids, pa.int64()),
        "cate_id": pa.array(np.zeros(n, np.int32)),
        "shop_id": pa.array(np.zeros(n, np.int32)),
        "price": pa.array(np.zeros(n, np.float32)),
        **extra,
    })
