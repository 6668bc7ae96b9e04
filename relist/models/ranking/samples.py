"""Point-wise ranking samples: one row per exposed (user, item), as named numpy columns.

Two sources give the same columns: relist logs (every shown position below
``exposed_len`` is a sample with click/next/buy labels, features from the
FeatureStore) and the Amazon grocery CTR split (relist.data.loaders.amazon:
sampled negatives, click labels only, no shop/price/segment). Logs are read as
streamed batches of lists (:func:`stream_lists`), each expanded by
:func:`samples_from_lists`, so training can stream what evaluation reads whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from relist.data.features import FeatureStore
from relist.data.loaders.amazon import load_amazon_ctr
from relist.data.logs import split_path, upstream_score_sample
from relist.data.requests import Requests
from relist.data.schema import SchemaError
from relist.data.stream import ParquetStream
from relist.models.vocab import Vocab

Samples = dict[str, np.ndarray]
FEATURES = ("segment", "hist", "hist_cate", "hist_mask", "item", "cate", "shop", "price_bucket",
            "score", "score_rank", "has_score", "position", "prev_cate", "repeats")
LABELS = ("click", "next", "buy")
LIST_COLUMNS = ("user_id", "candidates", "cand_scores", "shown", "exposed_len", "click", "next")  # + "buy"
LISTS_PER_READ = 4096


@dataclass
class RankingData:
    """Samples of each split plus the embedding sizes; ``store`` only for relist logs."""

    vocab: Vocab
    splits: dict[str, Samples]
    store: FeatureStore | None = None


def load_ranking_data(
    data_dir: str | Path, splits: tuple[str, ...] = ("train", "valid", "test")
) -> RankingData:
    """Read a relist log directory or the Amazon grocery root with its ctr_split/ (detected by layout).

    Every split is held in memory; training streams a log directory's train split instead.
    """
    data_dir = Path(data_dir)
    if is_log_dir(data_dir):
        store = FeatureStore.from_dir(data_dir)
        vocab = Vocab.of(store, upstream_score_sample(data_dir))
        return RankingData(vocab, {s: samples_from_logs(data_dir, s, store) for s in splits}, store)
    if (data_dir / "ctr_split").is_dir():
        amazon = load_amazon_ctr(data_dir, splits)
        vocab = Vocab(
            n_items=int(amazon.items["item_id"].to_numpy().max()) + 1,
            n_cates=int(amazon.items["cate_id"].to_numpy().max()) + 1,
            n_shops=1,
            n_price_buckets=1,
            n_segments=1,
        )
        return RankingData(vocab, {s: samples_from_ctr(amazon.splits[s]) for s in splits})
    raise SchemaError(
        data_dir, None, None, "neither a relist log directory (lists/) nor the Amazon data (ctr_split/)"
    )


def is_log_dir(data_dir: str | Path) -> bool:
    """Whether ``data_dir`` is a relist log directory (else the Amazon layout)."""
    return (Path(data_dir) / "lists").is_dir()


def stream_lists(
    data_dir: str | Path,
    split: str,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = None,
) -> ParquetStream:
    """This rank's lists of a split in the columns samples need, ``batch_size`` lists at a time."""
    path = split_path(data_dir, split)
    logged = ds.dataset(path, format="parquet").schema.names
    columns = [*LIST_COLUMNS, *(["buy"] if "buy" in logged else [])]  # buy is optional in the schema
    return ParquetStream(path, columns, batch_size, rank, world_size, seed)


def samples_from_lists(lists: dict[str, np.ndarray], store: FeatureStore) -> Samples:
    """One sample per exposed position of a batch of lists (as :func:`stream_lists` yields them).

    Each sample carries the item's upstream score and rank in its request, its position, and what stood
    before it in the list: the category of the item just above (``prev_cate``, 0 at the top) and how many
    items above it share its category (``repeats``), the slot context a teacher may learn (relist.models.
    ranking.context).
    """
    width = lists["shown"].shape[1]
    exposed = lists["shown_mask"] & (np.arange(width) < lists["exposed_len"][:, None])
    rows, position = np.nonzero(exposed)  # row-major: lists in order, positions within each
    users, items = lists["user_id"][rows], lists["shown"][rows, position]
    requests = Requests.from_stream(lists | {"request_id": np.zeros(len(lists["user_id"]), np.int64)})
    score, rank = requests.upstream_of(np.where(lists["shown_mask"], lists["shown"], 0))
    samples: Samples = {"user": users, "position": position} | upstream_features(score[rows, position],
                                                                                 rank[rows, position])
    shown_cates = store.item_features(np.where(lists["shown_mask"], lists["shown"], 0))["cate"].numpy()
    prev_cate, repeats = slot_context(shown_cates)
    samples |= {"prev_cate": prev_cate[rows, position], "repeats": repeats[rows, position]}
    for name, value in (store.user_features(users) | store.item_features(items)).items():
        samples[name] = value.numpy()
    for label in LABELS:
        if label in lists:
            samples[label] = lists[label][rows, position]
    return samples


def slot_context(cates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slot of lists [B, n] of categories (0 = unknown or padding): the category of the slot above
    (0 at the top) and how many slots above share its category (0 for an unknown one)."""
    prev_cate = np.concatenate([np.zeros_like(cates[:, :1]), cates[:, :-1]], 1)
    above = np.tri(cates.shape[1], k=-1, dtype=bool)  # [slot, earlier slot]
    same = (cates[:, :, None] == cates[:, None, :]) & above & (cates[:, :, None] > 0)
    return prev_cate.astype(np.int64), same.sum(2).astype(np.int64)


def samples_from_logs(data_dir: str | Path, split: str, store: FeatureStore) -> Samples:
    """A whole split in memory (evaluation, validation), expanded read by read as training streams it."""
    stream = stream_lists(data_dir, split, LISTS_PER_READ)
    return concat_samples([samples_from_lists(lists, store) for lists in stream])


def upstream_features(score: np.ndarray, rank: np.ndarray) -> Samples:
    """The upstream score columns of samples (relist.models.inputs conventions: NaN score = none)."""
    has = np.isfinite(score)
    return {"score": np.where(has, score, 0.0).astype(np.float32),
            "score_rank": np.where(has, rank, 0.0).astype(np.float32), "has_score": has}


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
        "position": zeros,
        "prev_cate": zeros,
        "repeats": zeros,
    } | upstream_features(np.full(len(zeros), np.nan), np.zeros(len(zeros)))


def iterate_batches(samples: Samples, batch_size: int, order: np.ndarray | None = None) -> Iterator[Samples]:
    """Consecutive batches of ``samples`` in ``order`` (default: stored order)."""
    order = np.arange(len(samples["item"])) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield {name: column[rows] for name, column in samples.items()}


def first_rows(samples: Samples, limit: int | None) -> Samples:
    """The first ``limit`` samples (all with None), e.g. to cap a quick run."""
    return samples if limit is None else {name: column[:limit] for name, column in samples.items()}


def concat_samples(parts: Sequence[Samples]) -> Samples:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def first_samples(parts: Iterable[Samples], limit: int | None) -> Iterator[Samples]:
    """The first ``limit`` samples of a stream of parts (all with None), reading no part past them."""
    for part in parts:
        part = first_rows(part, limit)
        yield part
        if limit is not None:
            limit -= len(part["item"])
            if limit == 0:
                return


def rebatch(parts: Iterable[Samples], batch_size: int) -> Iterator[Samples]:
    """Regroup parts of any sizes into batches of exactly ``batch_size`` samples (the last may be short)."""
    pending: list[Samples] = []
    count = 0
    for part in parts:
        pending.append(part)
        count += len(part["item"])
        if count >= batch_size:
            samples = concat_samples(pending)
            full = count - count % batch_size
            yield from iterate_batches(first_rows(samples, full), batch_size)
            pending, count = [{name: column[full:] for name, column in samples.items()}], count - full
    if count:
        yield concat_samples(pending)
