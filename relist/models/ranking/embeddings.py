"""The id embedding tables, one module so that teacher and student can share them.

Item and behaviour fields are looked up from the same tables, so the target
item and the user's past items live in one space (what target attention and
FM crossing compare). Row 0 of every table is padding/unknown and stays zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relist.models.vocab import Vocab

ITEM_FIELDS = ("item", "cate", "shop", "price_bucket")


class FeatureEmbeddings(nn.Module):
    def __init__(self, vocab: Vocab, dim: int):
        super().__init__()
        self.dim = dim
        self.item = nn.Embedding(vocab.n_items, dim, padding_idx=0)
        self.cate = nn.Embedding(vocab.n_cates, dim, padding_idx=0)
        self.shop = nn.Embedding(vocab.n_shops, dim, padding_idx=0)
        self.price_bucket = nn.Embedding(vocab.n_price_buckets, dim, padding_idx=0)
        self.segment = nn.Embedding(vocab.n_segments, dim, padding_idx=0)
        for table in (self.item, self.cate, self.shop, self.price_bucket, self.segment):
            nn.init.normal_(table.weight, std=0.05)
            table.weight.data[0] = 0

    def item_fields(self, batch: dict[str, Tensor]) -> Tensor:
        """Target item fields [B, 4, d]: item id, category, shop, price bucket."""
        return torch.stack([getattr(self, name)(batch[name]) for name in ITEM_FIELDS], dim=-2)

    def target_key(self, batch: dict[str, Tensor]) -> Tensor:
        """Target item as a behaviour would look [B, 2d] (id and category), to compare with the history."""
        return torch.cat([self.item(batch["item"]), self.cate(batch["cate"])], dim=-1)

    def behaviours(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Behaviour sequence as (item-id part, category part), each [B, L, d]."""
        return self.item(batch["hist"]), self.cate(batch["hist_cate"])

    def segment_of(self, batch: dict[str, Tensor]) -> Tensor:
        return self.segment(batch["segment"])
