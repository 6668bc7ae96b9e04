"""Point-wise ranking samples: one row per exposed (user, item), as named numpy columns.

Two sources give the same columns: relist logs (every shown position below
``exposed_len`` is a sample with click/next/buy labels, features from the
FeatureStore) and the Amazon grocery CTR split (relist.data.loaders.amazon:
sampled negatives, click labels only, no shop/price/segment).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relist.data.features import PRICE_BUCKETS, FeatureStore
from relist.data.loaders.amazon import load_amazon_ctr
from relist.data.logs import read_lists
from relist.data.schema import SchemaError
from relist.models.ranking.config import Vocab

Samples = dict[str, np.ndarray]
FEATURES = ("segment", "hist", "hist_cate", "hist_mask", "item", "cate", "shop", "price_bucket")


@dataclass
class RankingData:
    """Samples of each split plus the embedding sizes; ``store`` only for relist logs."""

    vocab: Vocab
    splits: dict[str, Samples]
    store: FeatureStore | None = None


def load_ranking_data(
    data_dir: str | Path, splits: tuple[str, ...] = ("train", "valid", "test")
) -> RankingData:
    """Read a relist log directory or the Amazon grocery root with its ctr_split/ (detected by layout)."""
    data_dir = Path(data_dir)
    if (data_dir / "lists").is_dir():
        store = FeatureStore.from_dir(data_dir)
        vocab = Vocab(
            items=store.n_items + 1,
            cates=store.n_cates,
            shops=store.n_shops,
            price_buckets=PRICE_BUCKETS + 1,
            segments=store.n_segments,
        )
        return RankingData(vocab, {s: samples_from_logs(data_dir, s, store) for s in splits}, store)
    if (data_dir / "ctr_split").is_dir():
        amazon = load_amazon_ctr(data_dir, splits)
        vocab = Vocab(
            items=int(amazon.items["item_id"].to_numpy().max()) + 1,
            cates=int(amazon.items["cate_id"].to_numpy().max()) + 1,
            shops=1,
            price_buckets=1,
            segments=1,
        )
        return RankingData(vocab, {s: samples_from_ctr(amazon.splits[s]) for s in splits})
    raise SchemaError(
        data_dir, None, None, "neither a relist log directory (lists/) nor the Amazon data (ctr_split/)"
    )


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


def samples_from_ctr(split: dict[str, np.ndarray]) -> Samples:
    """One split of relist.data.loaders.amazon.load_amazon_ctr in the columns of the models."""
    zeros = np.zeros(len(split["item_id"]), np.int64)
    return {
        "user": split["user_id"],
        "segment": zeros,
        "hist": split["hist_items"],
        "hist_cate": split["hist_cates"].astype(np.int64),
        "hist_mask": split["hist_mask"],
        "item": split["item_id"],
        "cate": split["cate_id"].astype(np.int64),
        "shop": zeros,
        "price_bucket": zeros,
        "click": split["label"],
    }


def iterate_batches(samples: Samples, batch_size: int, order: np.ndarray | None = None) -> Iterator[Samples]:
    """Consecutive batches of ``samples`` in ``order`` (default: stored order)."""
    order = np.arange(len(samples["item"])) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield {name: column[rows] for name, column in samples.items()}


def first_rows(samples: Samples, limit: int | None) -> Samples:
    """The first ``limit`` samples (all with None), e.g. to cap a quick run."""
    return samples if limit is None else {name: column[:limit] for name, column in samples.items()}
