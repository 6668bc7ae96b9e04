"""Small building blocks of the towers and the teacher, each with a readable forward."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from relist.data.padding import masked_fill_logits, masked_mean


class MLP(nn.Sequential):
    """Linear-ReLU stack ending in a plain linear layer (no activation on the output)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)


def masked_softmax_pool(scores: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Attention-weighted sum of ``values`` [B, L, D] by ``scores`` [B, L] over real positions only."""
    weights = torch.softmax(masked_fill_logits(scores, mask), dim=-1) * mask
    return (weights.unsqueeze(-1) * values).sum(-2)


class TargetAttention(nn.Module):
    """DIN activation unit: how relevant each past behaviour is to the target item."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = MLP(4 * dim, (hidden,), 1)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        """target [B, D], history [B, L, D], mask [B, L] -> the user's interest in the target [B, D].

        The unit's first layer reads ``[q, h, q - h, q * h]``. Applied block by block (the target's
        terms once per row, only ``q * h`` per behaviour) it is the same function without building that
        [B, L, 4D] input, which was half of the teacher's serving time.
        """
        first, *rest = self.score
        w_query, w_hist, w_diff, w_prod = first.weight.split(target.shape[-1], dim=1)
        hidden = (nn.functional.linear(target, w_query + w_diff, first.bias).unsqueeze(-2)
                  + nn.functional.linear(history, w_hist - w_diff)
                  + nn.functional.linear(target.unsqueeze(-2) * history, w_prod))
        for layer in rest:
            hidden = layer(hidden)
        return masked_softmax_pool(hidden.squeeze(-1), history, mask)


class NovaAttention(nn.Module):
    """NOVA (non-invasive) self-attention: side information shapes where to look, not what is pooled.

    Queries and keys see item id + category; the values carry the item id
    embedding only, so the pooled user vector stays in the item-id space.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(2 * dim, dim)
        self.key = nn.Linear(2 * dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, items: Tensor, side: Tensor, mask: Tensor) -> Tensor:
        """items, side [B, L, d], mask [B, L] -> pooled behaviours [B, d]."""
        fused = torch.cat([items, side], -1)
        scores = self.query(fused) @ self.key(fused).transpose(-1, -2) / math.sqrt(items.shape[-1])
        weights = torch.softmax(masked_fill_logits(scores, mask.unsqueeze(-2)), dim=-1) * mask.unsqueeze(-2)
        attended = weights @ self.value(items) + items  # residual: attention refines, never erases, the item
        return masked_mean(attended, mask, dim=-2)


class SENet(nn.Module):
    """Squeeze-excitation over fields (FiBiNET): learn how much each field matters for this item."""

    def __init__(self, n_fields: int, reduction: int):
        super().__init__()
        hidden = max(1, n_fields // reduction)
        self.excite = nn.Sequential(
            nn.Linear(n_fields, hidden), nn.ReLU(), nn.Linear(hidden, n_fields), nn.ReLU()
        )

    def forward(self, fields: Tensor) -> Tensor:
        """fields [B, F, d] -> re-weighted fields [B, F, d]."""
        return fields * self.excite(fields.mean(-1)).unsqueeze(-1)


class Bilinear(nn.Module):
    """FiBiNET bilinear interaction ("field-all": one shared W): (v_i W) * v_j for every field pair i < j."""

    def __init__(self, n_fields: int, dim: int):
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)
        self.register_buffer("pairs", torch.triu_indices(n_fields, n_fields, offset=1), persistent=False)

    def forward(self, fields: Tensor) -> Tensor:
        """fields [B, F, d] -> pair interactions [B, F(F-1)/2, d]."""
        left, right = self.pairs
        return self.weight(fields[..., left, :]) * fields[..., right, :]


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: explicit feature crossing of bounded degree, x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x
