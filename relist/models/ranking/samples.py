"""Point-wise ranking samples: one row per exposed (user, item), as named numpy columns.

Two sources give the same columns: relist logs (every shown position below
``exposed_len`` is a sample with click/next/buy labels, features from the
FeatureStore) and a prepared point-wise CTR split (``{split}.parquet`` with
user_id, item_id, cate_id, label, hist_item_id, hist_cate_id, e.g. the Amazon
grocery ctr_split), which has click labels only and no shop/price/segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from relist.data.features import PRICE_BUCKETS, FeatureStore
from relist.data.logs import read_lists
from relist.data.padding import pad_lists
from relist.data.schema import SchemaError
from relist.models.ranking.config import Vocab

Samples = dict[str, np.ndarray]
FEATURES = ("segment", "hist", "hist_cate", "hist_mask", "item", "cate", "shop", "price_bucket")
CTR_SPLIT_COLUMNS = ("user_id", "item_id", "cate_id", "label", "hist_item_id", "hist_cate_id")


@dataclass
class RankingData:
    """Samples of each split plus the embedding sizes; ``store`` only for relist logs."""

    vocab: Vocab
    splits: dict[str, Samples]
    store: FeatureStore | None = None


def load_ranking_data(data_dir: str | Path, splits: tuple[str, ...] = ("train", "valid", "test"),
                      max_samples: int | None = None) -> RankingData:
    """Read a relist log directory or a point-wise CTR split directory (detected by its layout)."""
    data_dir = Path(data_dir)
    if (data_dir / "lists").is_dir():
        store = FeatureStore.from_dir(data_dir)
        vocab = Vocab(items=store.n_items + 1, cates=store.n_cates, shops=store.n_shops,
                      price_buckets=PRICE_BUCKETS + 1, segments=store.n_segments)
        return RankingData(vocab, {s: _head(samples_from_logs(data_dir, s, store), max_samples) for s in splits},
                           store)
    if (data_dir / "train.parquet").is_file():
        every = {s: samples_from_ctr_split(data_dir / f"{s}.parquet") for s in ("train", "valid", "test")}
        vocab = Vocab(items=_size(every, "item", "hist"), cates=_size(every, "cate", "hist_cate"),
                      shops=1, price_buckets=1, segments=1)
        return RankingData(vocab, {s: _head(every[s], max_samples) for s in splits})
    raise SchemaError(data_dir, None, None, "neither a relist log directory (lists/) nor a CTR split (train.parquet)")


def samples_from_logs(data_dir: str | Path, split: str, store: FeatureStore) -> Samples:
    table = read_lists(data_dir, split)
    shown = table.column("shown").combine_chunks()
    lengths = np.diff(shown.offsets.to_numpy())
    row = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(row)) - np.repeat(shown.offsets.to_numpy()[:-1], lengths)
    exposed = position < table.column("exposed_len").to_numpy().astype(np.int64)[row]
    users = table.column("user_id").to_numpy()[row][exposed]
    items = shown.flatten().to_numpy()[exposed]
    samples: Samples = {"user": users, "position": position[exposed]}
    for name, value in (store.user_features(users) | store.item_features(items)).items():
        samples[name] = value.numpy()
    for label in ("click", "next", "buy"):
        if label in table.column_names:
            samples[label] = table.column(label).combine_chunks().flatten().to_numpy()[exposed]
    return samples


def samples_from_ctr_split(path: str | Path) -> Samples:
    path = Path(path)
    if not path.is_file():
        raise SchemaError(path, None, None, "no such file")
    table = pq.read_table(path)
    for name in CTR_SPLIT_COLUMNS:
        if name not in table.column_names:
            raise SchemaError(path, None, name, f"missing column (has {table.column_names})")
    hist, hist_mask = pad_lists(table.column("hist_item_id").to_pylist())
    hist_cate, _ = pad_lists(table.column("hist_cate_id").to_pylist(), hist.shape[1])
    n = table.num_rows
    item = table.column("item_id").to_numpy().astype(np.int64)
    if (item < 1).any():
        raise SchemaError(path, int(np.argmax(item < 1)), "item_id", "item ids must be >= 1 (0 is the padding id)")
    return {
        "user": table.column("user_id").to_numpy().astype(np.int64),
        "segment": np.zeros(n, np.int64),
        "hist": hist, "hist_cate": hist_cate, "hist_mask": hist_mask,
        "item": item,
        "cate": table.column("cate_id").to_numpy().astype(np.int64),
        "shop": np.zeros(n, np.int64),
        "price_bucket": np.zeros(n, np.int64),
        "click": table.column("label").to_numpy().astype(np.int8),
    }


def iterate_batches(samples: Samples, batch_size: int, order: np.ndarray | None = None) -> Iterator[Samples]:
    """Consecutive batches of ``samples`` in ``order`` (default: stored order)."""
    order = np.arange(len(samples["item"])) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield {name: column[rows] for name, column in samples.items()}


def _head(samples: Samples, limit: int | None) -> Samples:
    return samples if limit is None else {name: column[:limit] for name, column in samples.items()}


def _size(splits: dict[str, Samples], *columns: str) -> int:
    return int(max(s[c].max() for s in splits.values() for c in columns)) + 1
