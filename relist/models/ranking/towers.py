"""The two towers of the coarse ranker: the item side is computed offline, the user side per request.

Neither tower sees the other's input, which is what lets the item tower be
exported as a matrix and thousands of candidates be scored in one product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relist.data.padding import masked_mean
from relist.models.ranking.config import StudentConfig
from relist.models.ranking.layers import MLP, Bilinear, NovaAttention, SENet

N_ITEM_FIELDS = 4


class UserTower(nn.Module):
    """Profile + behaviour sequence -> user vector; behaviours are mean-pooled or NOVA-attended."""

    def __init__(self, dim: int, cfg: StudentConfig):
        super().__init__()
        self.nova = NovaAttention(dim) if cfg.user_attention == "nova" else None
        self.mlp = MLP(3 * dim, cfg.tower_hidden, cfg.vector_dim)

    def forward(self, segment: Tensor, items: Tensor, cates: Tensor, mask: Tensor) -> Tensor:
        """segment [B, d], items/cates [B, L, d], mask [B, L] -> [B, D]."""
        pooled_items = (
            masked_mean(items, mask, dim=-2) if self.nova is None else self.nova(items, cates, mask)
        )
        return self.mlp(torch.cat([segment, pooled_items, masked_mean(cates, mask, dim=-2)], -1))


class ItemTower(nn.Module):
    """Item fields -> item vector; optionally FiBiNET: SENET field weights + bilinear field pairs."""

    def __init__(self, dim: int, cfg: StudentConfig):
        super().__init__()
        self.fibinet = cfg.item_interaction == "senet_bilinear"
        width = N_ITEM_FIELDS * dim
        if self.fibinet:
            self.senet = SENet(N_ITEM_FIELDS, cfg.senet_reduction)
            self.bilinear = Bilinear(N_ITEM_FIELDS, dim)
            width += 2 * (N_ITEM_FIELDS * (N_ITEM_FIELDS - 1) // 2) * dim
        self.mlp = MLP(width, cfg.tower_hidden, cfg.vector_dim)

    def forward(self, fields: Tensor) -> Tensor:
        """fields [N, 4, d] -> [N, D]."""
        parts = [fields.flatten(-2)]
        if self.fibinet:
            parts += [self.bilinear(fields).flatten(-2), self.bilinear(self.senet(fields)).flatten(-2)]
        return self.mlp(torch.cat(parts, -1))
