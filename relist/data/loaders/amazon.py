"""Amazon Grocery 5-core (ReChorus copy) and its point-wise CTR split.

Mapping chosen:

* ids: ReChorus numbers users and items from 1, so their ids are kept and 0
  stays the padding id.  ``i_category`` uses 0 for "missing", so
  ``cate_id = i_category + 1`` (1 = unknown category) and 0 is padding only.
* items (``item_meta.csv.gz``, tab-separated): ``item_id``, ``cate_id``,
  ``shop_id`` = 0 and ``price`` = 0 (unknown); extra list<int64> columns
  ``also_bought`` (``r_complement``) and ``also_viewed`` (``r_substitute``).
* users (``train.csv.gz``, tab-separated): one row per user; ``hist_items`` =
  all of the user's interactions, most recent first (same day: later file row
  first), ``hist_cates`` their categories.  These histories include the
  validation and test targets of the CTR split: never use them as features
  for that split (its rows carry their own, leak-free histories).
* no lists table: the data has no impressions, only positives.
* the CTR split (``ctr_split/{train,valid,test}.parquet``, one sampled negative
  per positive, see the README) comes as numpy arrays per split from
  :func:`load_amazon_ctr`.  The Parquet files store histories oldest first;
  they are reversed here to the most-recent-first order of DESIGN §4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from relist.data.loaders._text import Tables, check_rows, list_column, read_delimited, read_parquet
from relist.data.padding import PAD_ID
from relist.data.schema import SchemaError

SPLITS = ("train", "valid", "test")
HIST_LEN = 20
_CTR_COLUMNS = ["user_id", "item_id", "cate_id", "label", "hist_item_id", "hist_cate_id", "hist_len", "time"]


@dataclass
class AmazonCtr:
    """Point-wise CTR samples per split (dicts of numpy arrays) and the items they refer to."""

    splits: dict[str, dict[str, np.ndarray]]
    items: pa.Table


def load_amazon(root: str | Path) -> Tables:
    """Items (``item_meta.csv.gz``) and users with their full histories (``train.csv.gz``)."""
    root = Path(root)
    items = read_amazon_items(root / "item_meta.csv.gz")
    return Tables(items=items, users=read_amazon_users(root / "train.csv.gz", items))


def load_amazon_ctr(root: str | Path, splits: tuple[str, ...] = SPLITS) -> AmazonCtr:
    """The prepared CTR split: per split ``user_id``, ``item_id``, ``cate_id``, ``label``, ``time``,
    ``hist_items`` / ``hist_cates`` [N, 20] (most recent first, PAD_ID after the end) and ``hist_mask``."""
    root = Path(root)
    items = read_amazon_items(root / "item_meta.csv.gz")
    n_items = int(items["item_id"].to_numpy().max())
    n_cates = int(items["cate_id"].to_numpy().max())
    return AmazonCtr({split: _read_ctr(root / "ctr_split" / f"{split}.parquet", n_items, n_cates)
                      for split in splits}, items)


def read_amazon_items(path: str | Path) -> pa.Table:
    """Items from ReChorus' ``item_meta`` (relations parsed from their Python-style lists)."""
    raw = read_delimited(path, {"item_id": pa.int64(), "i_category": pa.int32(),
                                "r_complement": pa.string(), "r_substitute": pa.string()})
    item_ids = raw["item_id"].to_numpy()
    check_rows(item_ids < 1, path, "item_id", "item ids must be >= 1 (0 is the padding id)")
    order = np.argsort(item_ids, kind="stable")
    repeated = np.zeros(len(item_ids), bool)
    repeated[order[1:]] = np.diff(item_ids[order]) == 0
    check_rows(repeated, path, "item_id", "item id repeated")
    category = raw["i_category"].to_numpy()
    check_rows(category < 0, path, "i_category", "category must be >= 0 (0 = missing)")
    relations = {name: _id_lists(raw[column].to_pylist(), int(item_ids.max()), path, column)
                 for name, column in (("also_bought", "r_complement"), ("also_viewed", "r_substitute"))}
    return pa.table({
        "item_id": item_ids,
        "cate_id": (category + 1).astype(np.int32),
        "shop_id": np.zeros(len(item_ids), np.int32),
        "price": np.zeros(len(item_ids), np.float32),
        **relations,
    })


def read_amazon_users(path: str | Path, items: pa.Table) -> pa.Table:
    """One row per user with every interaction of ``train.csv``, most recent first."""
    raw = read_delimited(path, {"user_id": pa.int64(), "item_id": pa.int64(), "time": pa.int64()})
    user, item, time = (raw[name].to_numpy() for name in ("user_id", "item_id", "time"))
    item_ids = items["item_id"].to_numpy()
    check_rows(user < 1, path, "user_id", "user ids must be >= 1")
    check_rows(~np.isin(item, item_ids), path, "item_id", "item id not in the items table")
    cate_of = np.zeros(item_ids.max() + 1, np.int32)
    cate_of[item_ids] = items["cate_id"].to_numpy()
    order = np.lexsort((-np.arange(len(user)), -time, user))
    users, counts = np.unique(user, return_counts=True)
    offsets = np.append(0, np.cumsum(counts))
    return pa.table({
        "user_id": users,
        "hist_items": list_column(item[order], offsets, pa.int64()),
        "hist_cates": list_column(cate_of[item[order]], offsets, pa.int32()),
    })


def _id_lists(texts: list[str], n_items: int, path: str | Path, column: str) -> pa.ListArray:
    """Parse ``[1, 2, 3]`` cells into a list<int64> column of item ids in 1..n_items."""
    values, offsets = [], [0]
    for row, text in enumerate(texts):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError:
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, int) and 1 <= i <= n_items for i in ids):
            raise SchemaError(path, row + 2, column, f"not a list of item ids in 1..{n_items}: {text[:60]!r}")
        values.extend(ids)
        offsets.append(len(values))
    return list_column(np.asarray(values, np.int64), np.asarray(offsets), pa.int64())


def _read_ctr(path: Path, n_items: int, n_cates: int) -> dict[str, np.ndarray]:
    """One split as arrays; every value is checked, and a bad one is reported by its 0-based row."""
    table = read_parquet(path, _CTR_COLUMNS)
    column = {name: table[name].combine_chunks() for name in _CTR_COLUMNS}

    def check(bad: np.ndarray, name: str, problem: str) -> None:
        check_rows(bad, path, name, problem, first_row=0)

    for name in _CTR_COLUMNS:
        check(column[name].is_null().to_numpy(zero_copy_only=False), name, "null value")
    user, item, cate, label, hist_len, time = (
        column[name].to_numpy() for name in ("user_id", "item_id", "cate_id", "label", "hist_len", "time"))
    offsets = column["hist_item_id"].offsets.to_numpy()
    lengths = np.diff(offsets)
    hist_items = column["hist_item_id"].values.to_numpy()
    hist_cates = column["hist_cate_id"].values.to_numpy()

    def rows_with(flat_bad: np.ndarray) -> np.ndarray:
        rows = np.zeros(len(lengths), bool)
        rows[np.searchsorted(offsets, np.flatnonzero(flat_bad), side="right") - 1] = True
        return rows

    check(user < 1, "user_id", "user ids must be >= 1")
    check((item < 1) | (item > n_items), "item_id", f"item id outside 1..{n_items}")
    check((cate < 0) | (cate >= n_cates), "cate_id", f"category outside 0..{n_cates - 1}")
    check((label != 0) & (label != 1), "label", "label must be 0 or 1")
    check(lengths != hist_len, "hist_item_id", "history length differs from hist_len")
    check(lengths > HIST_LEN, "hist_item_id", f"history longer than {HIST_LEN}")
    check(np.diff(column["hist_cate_id"].offsets.to_numpy()) != lengths, "hist_cate_id",
          "length differs from hist_item_id")
    check(rows_with((hist_items < 1) | (hist_items > n_items)), "hist_item_id",
          f"item id outside 1..{n_items}")
    check(rows_with((hist_cates < 0) | (hist_cates >= n_cates)), "hist_cate_id",
          f"category outside 0..{n_cates - 1}")
    # Most recent first: column j of row i holds the (j+1)-th item back from the end of its history;
    # padded cells point one past the values, at an appended PAD_ID.
    back = np.arange(HIST_LEN)
    mask = back[None, :] < lengths[:, None]
    index = np.where(mask, (offsets[1:, None] - 1) - back[None, :], len(hist_items))
    return {
        "user_id": user.astype(np.int64),
        "item_id": item.astype(np.int64),
        "cate_id": (cate + 1).astype(np.int32),
        "label": label.astype(np.int8),
        "time": time.astype(np.int64),
        "hist_items": np.append(hist_items, PAD_ID).astype(np.int64)[index],
        "hist_cates": np.append(hist_cates + 1, PAD_ID).astype(np.int32)[index],
        "hist_mask": mask,
    }
