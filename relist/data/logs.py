"""Reading a log directory that relist trains from: split, and in relist's internal ids.

Layout: ``items.parquet``, ``users.parquet``, ``lists/{train,valid,test}/``
(Parquet shards) and, when the ids were mapped, ``vocabulary.parquet``
(relist.data.ids). The simulator writes such directories; the user's logs
(any ids, one lists file or many, split or not) become one through
relist.data.split, which every relist command given a log directory runs
for itself. Whole splits are read here for evaluation; training streams
shards with relist.data.stream instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from relist.data.ids import VOCABULARY
from relist.data.requests import Requests
from relist.data.schema import SchemaError, read_table, validate
from relist.data.stream import padded_column

SPLITS = ("train", "valid", "test")
ITEMS, USERS, LISTS = "items.parquet", "users.parquet", "lists"


def not_ready_reason(data_dir: str | Path) -> str | None:
    """Why relist cannot train from ``data_dir`` as it is (None: it can), without reading the lists."""
    data_dir = Path(data_dir)
    for name in (ITEMS, USERS):
        if not (data_dir / name).is_file():
            return f"no {name}"
    missing = [s for s in SPLITS if not (data_dir / LISTS / s).is_dir()]
    if missing:
        return f"no {'/'.join(missing)} split under {LISTS}/"
    if (data_dir / VOCABULARY).is_file():
        return None
    return _raw_ids_reason(str(data_dir / ITEMS), str(data_dir / USERS), *_stamp(data_dir))


def _stamp(data_dir: Path) -> tuple[int, int]:
    return tuple((data_dir / name).stat().st_mtime_ns for name in (ITEMS, USERS))


@lru_cache(maxsize=64)
def _raw_ids_reason(items: str, users: str, *_stamps: int) -> str | None:
    for path, name, kind in ((items, "item_id", "item"), (users, "user_id", "user")):
        try:
            ids = pq.read_table(path, columns=[name])[name].to_numpy()
        except (pa.ArrowInvalid, OSError, KeyError) as err:
            raise SchemaError(path, None, name, f"cannot read the id column ({err})") from err
        if len(ids) and (ids.min() != 1 or ids.max() != len(ids) or len(np.unique(ids)) != len(ids)):
            return f"{kind} ids are not 1..{len(ids)} (relist's internal ids)"
    return None


def require_ready(data_dir: str | Path) -> None:
    """Raise a :class:`SchemaError` that says what to do when ``data_dir`` is not split or not internal."""
    reason = not_ready_reason(data_dir)
    if reason is not None:
        raise SchemaError(data_dir, None, None, f"{reason}; relist reads a split copy in its own ids: run "
                          f"`relist data split --src {data_dir} --out DIR` and use DIR (the `relist` "
                          "commands given this directory do that themselves)")


def split_path(data_dir: str | Path, split: str) -> Path:
    path = Path(data_dir) / LISTS / split
    if not path.is_dir():
        raise SchemaError(path, None, None, f"no '{split}' split in this log directory")
    require_ready(data_dir)
    return path


def n_items_of(data_dir: str | Path) -> int:
    return pq.read_metadata(Path(data_dir) / ITEMS).num_rows


def read_lists(data_dir: str | Path, split: str, limit: int | None = None) -> pa.Table:
    """The first ``limit`` lists of a split (all by default), validated (ids in 1..n_items)."""
    path = split_path(data_dir, split)
    dataset = ds.dataset(path, format="parquet")
    table = dataset.head(limit) if limit is not None else dataset.to_table()
    validate(table, "lists", path, n_items=n_items_of(data_dir))
    return table


def read_items(data_dir: str | Path) -> pa.Table:
    return read_table(Path(data_dir) / ITEMS, "items")


def read_users(data_dir: str | Path) -> pa.Table:
    return read_table(Path(data_dir) / USERS, "users")


def logged_requests(data_dir: str | Path, split: str, limit: int | None = None) -> tuple[Requests, np.ndarray]:
    """Requests of a split and the lists the logging policy showed for them ([B, n], PAD_ID-padded)."""
    table = read_lists(data_dir, split, limit)
    shown, _ = padded_column(table.column("shown").combine_chunks())  # PAD_ID after a shorter list's end
    return Requests.from_table(table), shown


def upstream_score_sample(data_dir: str | Path, limit: int = 20_000) -> np.ndarray:
    """The upstream scores of the first ``limit`` train lists, flattened: what models fit their score scale on."""
    table = ds.dataset(split_path(data_dir, "train"), format="parquet").head(limit, columns=["cand_scores"])
    return table.column("cand_scores").combine_chunks().flatten().to_numpy(zero_copy_only=False)
