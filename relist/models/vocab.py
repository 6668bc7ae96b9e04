"""Embedding-table sizes: read from the data once, saved with every model (row 0 = padding/unknown)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from relist.data.features import PRICE_BUCKETS, FeatureStore


class Vocab(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_items: int = Field(ge=1)
    n_cates: int = Field(ge=1)
    n_shops: int = Field(ge=1)
    n_segments: int = Field(ge=1)
    n_price_buckets: int = Field(PRICE_BUCKETS + 1, ge=1)

    @classmethod
    def of(cls, store: FeatureStore) -> Vocab:
        return cls(n_items=store.n_items + 1, n_cates=store.n_cates, n_shops=store.n_shops,
                   n_segments=store.n_segments)
