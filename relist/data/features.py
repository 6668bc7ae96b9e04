"""Id-indexed feature arrays shared by every model: item side information and user history.

Models receive ids and look features up here, so a request needs only ids.
Ids the store has never seen (new items at serving time) map to the padding
row 0, whose features are the neutral defaults; ``known_items`` tells them apart.

Rows are relist's internal ids (1..N). Built from raw tables, the store maps the
user's ids through an :class:`~relist.data.ids.IdVocabulary` (the identity when
they already are 1..N) and keeps it in ``ids``; a prepared log directory or model
version brings its saved vocabulary (``from_dir``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from relist.data.ids import VOCABULARY, IdMap, IdVocabulary
from relist.data.padding import PAD_ID, pad_lists

PRICE_BUCKETS = 16


@dataclass
class FeatureStore:
    item_cate: np.ndarray  # [n_items + 1] int64, 0 = unknown (real categories are shifted by +1)
    item_shop: np.ndarray  # [n_items + 1] int64, 0 = unknown
    item_price: np.ndarray  # [n_items + 1] float32, standardised log price, 0 = unknown
    item_raw_price: np.ndarray  # [n_items + 1] float32, the price as logged (what GMV sums), 0 = unknown
    item_price_bucket: np.ndarray  # [n_items + 1] int64 in [0, PRICE_BUCKETS]
    user_segment: np.ndarray  # [n_users + 1] int64, 0 = unknown
    user_hist: np.ndarray  # [n_users + 1, L] item ids, most recent first, PAD_ID padded
    user_hist_mask: np.ndarray  # [n_users + 1, L] bool
    ids: IdVocabulary | None = field(default=None, repr=False)  # raw <-> internal ids; None: the identity

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = IdVocabulary.identity(self.n_items, self.n_users)

    @property
    def n_items(self) -> int:
        return len(self.item_cate) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_segment) - 1

    @property
    def n_cates(self) -> int:
        """Vocabulary size of category embeddings (including the unknown id 0)."""
        return int(self.item_cate.max()) + 1

    @property
    def n_shops(self) -> int:
        return int(self.item_shop.max()) + 1

    @property
    def n_segments(self) -> int:
        return int(self.user_segment.max()) + 1

    @classmethod
    def from_tables(cls, items: pa.Table, users: pa.Table) -> FeatureStore:
        """The store of raw ``items`` and ``users`` tables (DESIGN §4); any int64 ids, mapped densely."""
        items_map = IdMap.of(items.column("item_id").to_numpy(), "items", "item_id")
        users_map = IdMap.of(users.column("user_id").to_numpy(), "users", "user_id")
        item_row = items_map.to_internal(items.column("item_id").to_numpy())
        size = len(items_map) + 1
        cate = np.zeros(size, np.int64)
        shop = np.zeros(size, np.int64)
        price = np.zeros(size, np.float32)
        raw_price = np.zeros(size, np.float32)
        raw_price[item_row] = items.column("price").to_numpy()
        cate[item_row] = items.column("cate_id").to_numpy() + 1
        shop[item_row] = items.column("shop_id").to_numpy() + 1
        log_price = np.log1p(np.maximum(items.column("price").to_numpy().astype(np.float64), 0.0))
        price[item_row] = (log_price - log_price.mean()) / (log_price.std() + 1e-6)
        edges = np.quantile(price[item_row], np.linspace(0, 1, PRICE_BUCKETS + 1)[1:-1])
        bucket = np.zeros(size, np.int64)
        bucket[item_row] = np.searchsorted(edges, price[item_row]) + 1

        user_row = users_map.to_internal(users.column("user_id").to_numpy())
        n_users = len(users_map) + 1
        segment = np.zeros(n_users, np.int64)
        if "segment" in users.column_names:
            segment[user_row] = users.column("segment").to_numpy() + 1
        hist_rows, hist_row_mask = pad_lists(users.column("hist_items").to_pylist())
        width = max(hist_rows.shape[1], 1)  # a history column even when no user has one
        hist = np.full((n_users, width), PAD_ID, np.int64)
        hist_mask = np.zeros(hist.shape, bool)
        known = np.where(hist_row_mask, items_map.to_internal(hist_rows), PAD_ID)
        k = hist_rows.shape[1]
        hist[user_row, :k], hist_mask[user_row, :k] = known, hist_row_mask & (known != PAD_ID)
        return cls(cate, shop, price, raw_price, bucket, segment, hist, hist_mask,
                   IdVocabulary(items_map, users_map))

    @classmethod
    def from_dir(cls, data_dir: str | Path) -> FeatureStore:
        """The store of a log directory or model version; its ``vocabulary.parquet`` (if any) names the raw ids."""
        from relist.data.logs import read_items, read_users

        store = cls.from_tables(read_items(data_dir), read_users(data_dir))
        if (Path(data_dir) / VOCABULARY).is_file():
            store.ids = _saved_vocabulary(Path(data_dir), store)
        return store

    def known_items(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids > 0) & (ids <= self.n_items)

    def item_index(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Ids as tensor rows of this store: unknown ids become 0 (neutral features)."""
        return torch.as_tensor(_rows(ids, self.n_items))

    def item_features(self, ids: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Side information of items, any shape of ids (gathered in numpy: a request's few hundred ids cost
        microseconds there, several times less than as torch indexing)."""
        rows = _rows(ids, self.n_items)
        return {
            "item": torch.as_tensor(rows),
            "cate": torch.as_tensor(self.item_cate[rows]),
            "shop": torch.as_tensor(self.item_shop[rows]),
            "price": torch.as_tensor(self.item_price[rows]),
            "price_bucket": torch.as_tensor(self.item_price_bucket[rows]),
            "raw_price": torch.as_tensor(self.item_raw_price[rows]),
        }

    def user_features(self, user_ids: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Profile and behaviour history of users (unknown users get an empty history)."""
        rows = _rows(user_ids, self.n_users)
        hist = self.user_hist[rows]
        return {
            "segment": torch.as_tensor(self.user_segment[rows]),
            "hist": torch.as_tensor(hist),
            "hist_cate": torch.as_tensor(self.item_cate[hist]),
            "hist_mask": torch.as_tensor(self.user_hist_mask[rows]),
        }


def _rows(ids: np.ndarray | torch.Tensor, known: int) -> np.ndarray:
    """Ids as int64 rows of a table of ``known`` entries after the padding row 0: others become 0."""
    ids = np.asarray(ids.numpy() if isinstance(ids, torch.Tensor) else ids).astype(np.int64, copy=False)
    return np.where((ids > 0) & (ids <= known), ids, 0)


def catalogue_price(store: FeatureStore) -> float:
    """The catalogue's mean price: what turns spend into clicks' units ({gmv: 1 / price}); 0 without prices."""
    return float(np.mean(store.item_raw_price[1:])) if store.n_items else 0.0


def _saved_vocabulary(data_dir: Path, store: FeatureStore) -> IdVocabulary:
    """The saved vocabulary of a directory whose tables hold internal ids; it must fit them."""
    from relist.data.schema import SchemaError

    if not store.ids.is_identity:
        raise SchemaError(data_dir / "items.parquet", None, "item_id",
                          f"ids are not 1..N although {VOCABULARY} says they are internal")
    saved = IdVocabulary.load(data_dir)
    if (len(saved.items), len(saved.users)) != (store.n_items, store.n_users):
        raise SchemaError(data_dir / VOCABULARY, None, None,
                          f"has {len(saved.items)} items and {len(saved.users)} users, the tables "
                          f"{store.n_items} and {store.n_users}")
    return saved
