"""How a user vector and an item vector become a click logit; both broadcast ([1, D] against [N, D])."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relist.models.ranking.layers import MLP


class DotHead(nn.Module):
    """The plain DSSM: inner product (plus a bias, so the logit can match the base click rate)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return (users * items).sum(-1) + self.bias


class MLPHead(nn.Module):
    """An MLP over [u, v, u*v]: non-linear matching, still one batched call over the item matrix."""

    def __init__(self, dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.mlp = MLP(3 * dim, hidden, 1)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        users, items = torch.broadcast_tensors(users, items)
        return self.mlp(torch.cat([users, items, users * items], -1)).squeeze(-1)
