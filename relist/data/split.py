"""From the user's logs to the directory relist trains from: split, in relist's internal ids.

The user's lists may be one file, a directory of shards or a glob, split or
not, with any int64 ids. :func:`split_logs` writes what relist.data.logs reads:
``items.parquet`` and ``users.parquet`` in internal ids (relist.data.ids),
``lists/{train,valid,test}/`` shards, ``vocabulary.parquet`` (the way back to
the user's ids) and ``split.json`` (how it was split, from which files). It
streams the lists file by file, so memory holds one batch plus two int64
columns of the whole log (users and the split key).

Splits are deterministic: ``by="time"`` puts the last ``test`` share of lists
(by a ``time`` or ``timestamp`` column, else by file order, which is the order
logs are written in) into test and the share before it into valid;
``by="request_id"`` ranks lists by a hash of their request id (an order-free
random split). A directory already split into train/valid/test keeps its split.
Users who appear only in lists get a row with an empty history; lists that
name an item the items table lacks are refused, naming file, row and field.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from relist.data.ids import IdMap, IdVocabulary
from relist.data.logs import ITEMS, LISTS, SPLITS, USERS, not_ready_reason
from relist.data.schema import SchemaError, list_problems, read_table, validate

SPLIT_RECORD = "split.json"
TIME_COLUMNS = ("time", "timestamp")
BATCH_ROWS = 65_536
SHARD_ROWS = 200_000
SplitBy = Literal["time", "request_id"]


@dataclass(frozen=True)
class LogSources:
    """Where the user's logs are: lists files in order, the items table, the users table (optional)."""

    lists: list[Path]
    items: Path
    users: Path | None
    given: dict[str, list[Path]] | None = None  # an existing train/valid/test split, kept

    def fingerprint(self, **options) -> str:
        files = [*self.lists, self.items, *([self.users] if self.users else [])]
        stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        blob = json.dumps({"files": stamp, "given": self.given is not None, **options}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_sources(src: str | Path, items: str | Path | None = None, users: str | Path | None = None) -> LogSources:
    """The lists of ``src`` (a log directory, a lists file, a directory of shards or a glob) and the
    items/users tables beside them (or the ones given)."""
    text = str(src)
    given = None
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if p.endswith(".parquet"))
        base = Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path(text).parent
    else:
        src = Path(src)
        if not src.exists():
            raise SchemaError(src, None, None, "no such file or directory")
        base = src if src.is_dir() else src.parent
        if src.is_file():
            files = [src]
        elif (src / LISTS).is_dir():
            root = src / LISTS
            if all((root / s).is_dir() for s in SPLITS):
                given = {s: _parquet_files(root / s) for s in SPLITS}
                files = [f for s in SPLITS for f in given[s]]
            else:
                files = _parquet_files(root)
        elif (src / f"{LISTS}.parquet").is_file():
            files = [src / f"{LISTS}.parquet"]
        elif (src / ITEMS).is_file():  # a log directory: its other tables (e.g. impressions) are no lists
            files = []
        else:  # a directory of shards
            files = _parquet_files(src)
    if not files:
        raise SchemaError(src, None, None, "no lists found (lists.parquet, lists/ with Parquet shards, a "
                          "Parquet file or a glob of them): with no logged lists there is nothing to re-rank")
    items_path = Path(items) if items is not None else _beside(base, ITEMS)
    if items_path is None or not items_path.is_file():
        raise SchemaError(items_path or base / ITEMS, None, None,
                          "no items table beside the lists: put items.parquet there or give --items")
    users_path = Path(users) if users is not None else _beside(base, USERS)
    if users_path is not None and not users_path.is_file():
        raise SchemaError(users_path, None, None, "no such file")
    return LogSources(files, items_path, users_path, given)


def _parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if p.is_file())


def _beside(base: Path, name: str) -> Path | None:
    for folder in (base, base.parent, base.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def split_logs(sources: LogSources, out: str | Path, by: SplitBy = "time", valid: float = 0.1,
               test: float = 0.1, shard_rows: int = SHARD_ROWS) -> dict:
    """Write the ready-to-train copy of ``sources`` into ``out`` (replaced as a whole); returns split.json."""
    if by not in ("time", "request_id"):
        raise ValueError(f"by must be 'time' or 'request_id', got {by!r}")
    if not (0 <= valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"valid and test must be shares with valid + test < 1 (got {valid}, {test})")
    out = Path(out)
    _check_replaceable(out)
    items = read_table(sources.items, "items")
    item_map = IdMap.of(items["item_id"].to_numpy(), sources.items, "item_id")
    users = read_table(sources.users, "users") if sources.users is not None else None
    list_users, key, order = _scan(sources, by)
    user_map = IdMap.union(list_users, *([users["user_id"].to_numpy()] if users is not None else []))
    assignment = _assign(sources, key, valid, test)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / LISTS).mkdir(parents=True)
    try:
        pq.write_table(_internal_items(items, item_map), tmp / ITEMS)
        users_table, dropped, list_only = _internal_users(users, user_map, item_map)
        pq.write_table(users_table, tmp / USERS)
        counts = _write_lists(sources, assignment, item_map, user_map, tmp / LISTS, shard_rows)
        IdVocabulary(item_map, user_map).save(tmp)
        record = {
            "source": {"lists": [str(p) for p in sources.lists], "items": str(sources.items),
                       "users": None if sources.users is None else str(sources.users)},
            "by": "given" if sources.given else by, "order": order,
            "valid": valid, "test": test, "lists": counts,
            "items": len(item_map), "users": len(user_map), "users_only_in_lists": list_only,
            "history_items_not_in_items_table": dropped,
            "ids": "identity" if item_map.is_identity and user_map.is_identity else "mapped",
            "digest": sources.fingerprint(by=by, valid=valid, test=test),
        }
        (tmp / SPLIT_RECORD).write_text(json.dumps(record, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _reason(data: Path) -> str | None:
    return not_ready_reason(data) if data.is_dir() else "a lists file, not a log directory"


def ready_dir(data: str | Path, work: str | Path) -> Path:
    """Where relist reads ``data`` from: itself when it is ready to train from, else ``work``."""
    return Path(data) if _reason(Path(data)) is None else Path(work)


def logs_fingerprint(data: str | Path) -> str:
    """Sizes and times of every Parquet file of ``data``: what a rerun compares to see the logs changed."""
    data = Path(data)
    files = sorted(data.rglob("*.parquet")) if data.is_dir() else [data]
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def ready_logs(data: str | Path, work: str | Path, note: Callable[[str], object] | None = None, *,
               by: SplitBy = "time", valid: float = 0.1, test: float = 0.1) -> Path:
    """``data`` itself when relist can train from it, else its split copy in ``work`` (made once, reused
    while the source files and options are unchanged)."""
    data, work = Path(data), Path(work)
    reason = _reason(data)
    if reason is None:
        return data
    sources = find_sources(data)
    digest = sources.fingerprint(by=by, valid=valid, test=test)
    record = work / SPLIT_RECORD
    if record.is_file() and json.loads(record.read_text()).get("digest") == digest:
        if note:
            note(f"{data}: {reason}; using its split copy {work}")
        return work
    summary = split_logs(sources, work, by, valid, test)
    if note:
        note(f"{data}: {reason}; split it into {work} (by {summary['by']}: {summary['lists']}; "
             f"ids {summary['ids']}; see {record})")
    return work


def ready_logs_in(data: str | Path, folder: str | Path, note: Callable[[str], object] | None = None) -> Path:
    """What a command writing results into ``folder`` reads: ``data`` itself, or (for logs that are not
    ready) their split copy ``folder/<name>.split``, shared by every command writing there. Anything
    that is not a log directory or lists file (e.g. the Amazon CTR split) is returned as it is."""
    data = Path(data)
    if not ((data / ITEMS).is_file() or data.suffix == ".parquet"):
        return data
    return ready_logs(data, Path(folder) / f"{data.resolve().name}.split", note)


def _check_replaceable(out: Path) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / SPLIT_RECORD).is_file()):
        raise SchemaError(out, None, None, "exists and is not an earlier split: give an empty or new --out")


def _scan(sources: LogSources, by: SplitBy) -> tuple[np.ndarray, np.ndarray, str]:
    """User ids of every list, the key lists are ordered by, and how the order was chosen."""
    schema = _schema(sources.lists[0])
    time_column = next((c for c in TIME_COLUMNS if c in schema.names), None)
    if by == "request_id":
        columns, order = ["user_id", "request_id"], "hash of request_id"
    elif time_column is not None:
        columns, order = ["user_id", time_column], f"time column '{time_column}'"
    else:
        columns, order = ["user_id"], "file order (no time or timestamp column)"
    parts = []
    for file in sources.lists:
        names = _schema(file).names
        for name in columns:
            if name not in names:
                raise SchemaError(file, None, name, f"missing column (has {names})")
        parts.append(pq.read_table(file, columns=columns))
    table = pa.concat_tables(parts)
    users = table["user_id"].to_numpy()
    if by == "request_id":
        key = _mix(table["request_id"].to_numpy())
    elif time_column is not None:
        key = _time_key(table[time_column], sources.lists[0], time_column)
    else:
        key = np.arange(len(users))
    return users, key, order


def _schema(file: Path) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(file, None, None, f"not a readable Parquet file ({err})") from err


def _time_key(column: pa.ChunkedArray, file: Path, name: str) -> np.ndarray:
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        column = pc.cast(column, pa.int64())
    elif not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise SchemaError(file, None, name, f"must be a number or a timestamp to split by time, not {column.type}")
    values = column.to_numpy()
    if pc.any(pc.is_null(column)).as_py():
        raise SchemaError(file, int(np.argmax(column.is_null().to_numpy(zero_copy_only=False))), name, "null time")
    return values


def _mix(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each id: a deterministic, well-spread order that does not depend on row order."""
    z = ids.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _assign(sources: LogSources, key: np.ndarray, valid: float, test: float) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of every list, in file order."""
    if sources.given is not None:
        sizes = [sum(pq.read_metadata(f).num_rows for f in sources.given[s]) for s in SPLITS]
        return np.repeat(np.arange(3, dtype=np.int8), sizes)
    total = len(key)
    n_test, n_valid = int(test * total), int(valid * total)  # as the simulator splits (relist.sim.logs)
    if total - n_test - n_valid < 1 or n_test < 1 or (valid > 0 and n_valid < 1):
        raise SchemaError(sources.lists[0], None, None,
                          f"{total} lists are too few to split into train/valid/test shares "
                          f"{1 - valid - test:.2f}/{valid:.2f}/{test:.2f}")
    rank = np.empty(total, np.int64)
    rank[np.lexsort((np.arange(total), key))] = np.arange(total)
    return np.select([rank < total - n_test - n_valid, rank < total - n_test], [0, 1], 2).astype(np.int8)


def _internal_items(items: pa.Table, item_map: IdMap) -> pa.Table:
    internal = item_map.to_internal(items["item_id"].to_numpy())
    table = items.take(np.argsort(internal))
    return table.set_column(table.column_names.index("item_id"), "item_id",
                            pa.array(np.arange(1, len(item_map) + 1), pa.int64()))


def _internal_users(users: pa.Table | None, user_map: IdMap, item_map: IdMap) -> tuple[pa.Table, int, int]:
    """Users in internal ids (histories too; items the catalogue lacks are dropped and counted), plus an
    empty-history row for every user who appears only in lists."""
    if users is None:
        users = pa.table({"user_id": pa.array([], pa.int64()), "segment": pa.array([], pa.int32()),
                          "hist_items": pa.array([], pa.list_(pa.int64())),
                          "hist_cates": pa.array([], pa.list_(pa.int32()))})
    hist = users["hist_items"].combine_chunks()
    offsets = hist.offsets.to_numpy()
    offsets = offsets - offsets[0]
    flat = item_map.to_internal(hist.flatten().to_numpy(zero_copy_only=False))
    keep = flat != 0
    lengths = np.diff(offsets)
    kept_offsets = np.concatenate([[0], np.cumsum(keep)])[offsets]
    columns = {"user_id": pa.array(user_map.to_internal(users["user_id"].to_numpy()), pa.int64()),
               "hist_items": pa.ListArray.from_arrays(pa.array(kept_offsets, pa.int32()),
                                                      pa.array(flat[keep], pa.int64()))}
    cates = users["hist_cates"].combine_chunks()
    if np.array_equal(np.diff(cates.offsets.to_numpy()), lengths):
        columns["hist_cates"] = pa.ListArray.from_arrays(
            pa.array(kept_offsets, pa.int32()), pa.array(cates.flatten().to_numpy(zero_copy_only=False)[keep],
                                                         pa.int32()))
    else:
        columns["hist_cates"] = cates
    table = users
    for name, values in columns.items():
        table = table.set_column(table.column_names.index(name), name, values)
    only_in_lists = np.setdiff1d(np.arange(1, len(user_map) + 1), columns["user_id"].to_numpy())
    if len(only_in_lists):
        empty = pa.table({"user_id": pa.array(only_in_lists, pa.int64()),
                          "hist_items": pa.array([[]] * len(only_in_lists), pa.list_(pa.int64())),
                          "hist_cates": pa.array([[]] * len(only_in_lists), pa.list_(pa.int32()))})
        table = pa.concat_tables([table, empty], promote_options="default")
    if "segment" in table.column_names:
        table = table.set_column(table.column_names.index("segment"), "segment",
                                 pc.fill_null(table["segment"], 0).cast(pa.int32()))
    table = table.take(np.argsort(table["user_id"].to_numpy()))
    validate(table, "users", USERS)
    return table, int((~keep).sum()), len(only_in_lists)


def _write_lists(sources: LogSources, assignment: np.ndarray, item_map: IdMap, user_map: IdMap, out: Path,
                 shard_rows: int) -> dict[str, int]:
    writers = {s: _ShardWriter(out / s, shard_rows) for s in SPLITS}
    start = 0  # lists read so far, over all files
    try:
        for file in sources.lists:
            file_row = 0
            with pq.ParquetFile(file, pre_buffer=False) as reader:
                for batch in reader.iter_batches(BATCH_ROWS):
                    table = pa.Table.from_batches([batch])
                    mapped = _internal_lists(table, item_map, user_map, file, file_row)
                    where = assignment[start:start + table.num_rows]
                    for index, split in enumerate(SPLITS):
                        part = mapped.filter(pa.array(where == index))
                        if part.num_rows:
                            writers[split].write(part, file)
                    start, file_row = start + table.num_rows, file_row + table.num_rows
    finally:
        for writer in writers.values():
            writer.close()
    return {s: writers[s].rows for s in SPLITS}


def _internal_lists(table: pa.Table, item_map: IdMap, user_map: IdMap, file: Path, row0: int) -> pa.Table:
    """A batch of lists validated against the catalogue and mapped to internal ids."""
    required = ["request_id", "user_id", "candidates", "cand_scores", "shown", "click", "next", "exposed_len"]
    for name in required:
        if name not in table.column_names:
            raise SchemaError(file, None, name, f"missing column (has {table.column_names})")
    for field, problem, bad in list_problems(table, item_map.known):
        if bad.any():
            row = int(np.argmax(bad))
            if problem == "item id not in the items table":
                values = table[field][row].as_py()
                missing = next(v for v in values if not item_map.known(np.array([v]))[0])
                problem = f"item id {missing} is not in the items table (add it there, or drop this list)"
            raise SchemaError(file, row0 + row, field, problem)
    for name in ("candidates", "shown"):
        column = table[name].combine_chunks()
        offsets = column.offsets.to_numpy()
        values = item_map.to_internal(column.flatten().to_numpy(zero_copy_only=False))
        table = table.set_column(table.column_names.index(name), name, pa.ListArray.from_arrays(
            pa.array(offsets - offsets[0], pa.int32()), pa.array(values, pa.int64())))
    users = user_map.to_internal(table["user_id"].to_numpy(zero_copy_only=False))
    return table.set_column(table.column_names.index("user_id"), "user_id", pa.array(users, pa.int64()))


class _ShardWriter:
    """Parquet shards of at most ``shard_rows`` lists, all with the first batch's schema."""

    def __init__(self, folder: Path, shard_rows: int):
        self.folder, self.shard_rows = folder, shard_rows
        folder.mkdir(parents=True)
        self.rows, self._in_shard, self._shards = 0, 0, 0
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, table: pa.Table, file: Path) -> None:
        if self._schema is None:
            self._schema = table.schema
        try:
            table = table.select(self._schema.names).cast(self._schema)
        except (KeyError, pa.ArrowInvalid, ValueError) as err:
            raise SchemaError(file, None, None, f"its columns differ from the first lists file's ({err})") from err
        while table.num_rows:
            if self._writer is None or self._in_shard >= self.shard_rows:
                self.close()
                self._writer = pq.ParquetWriter(self.folder / f"part-{self._shards:05d}.parquet", self._schema)
                self._shards, self._in_shard = self._shards + 1, 0
            part = table.slice(0, self.shard_rows - self._in_shard)
            self._writer.write_table(part)
            self._in_shard += part.num_rows
            self.rows += part.num_rows
            table = table.slice(part.num_rows)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
