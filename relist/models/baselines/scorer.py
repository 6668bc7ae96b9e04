"""Models that score each item of a list (PRM, DLCM, the point-wise MLP): one loss and one decoder for all.

They learn with PRM's list-wise softmax loss (the labelled items' gains as the target
distribution) and write a list by filling each slot with the allowed candidate of highest score.
"""

from __future__ import annotations

import torch
from torch import Tensor

from relist.data.padding import NEG_INF
from relist.models.contract import AllowedFn, ListGenerator, greedy_slots


class ItemScorer(ListGenerator):
    """``predict(batch)`` -> {"score": [B, L]} logits, one per item of the list."""

    prefix_free = True

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return listwise_loss(out, batch)

    def decode(self, batch: dict[str, Tensor], n: int, allowed_fn: AllowedFn | None = None) -> Tensor:
        scores = self.predict(batch)["score"]
        return greedy_slots(batch["mask"], n, lambda state, _previous: (state, state), scores, allowed_fn)


def listwise_loss(out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """PRM's loss: cross-entropy between the gains and the softmax of scores over the labelled items."""
    return {"loss": softmax_ce(out["score"], batch["gain"], batch["label_mask"])}


def softmax_ce(logits: Tensor, gain: Tensor, mask: Tensor, reduce: bool = True) -> Tensor:
    """-Σ q log softmax(logits) over ``mask``, q ∝ gain; rows without gain give 0 (and do not count)."""
    weight = gain * mask
    total = weight.sum(1)
    logp = torch.log_softmax(logits.masked_fill(~mask, NEG_INF), 1)
    per_row = -(weight * logp.masked_fill(~mask, 0.0)).sum(1) / total.clamp_min(1e-9)
    if not reduce:
        return per_row
    has = total > 0
    return per_row[has].mean() if has.any() else logits.sum() * 0.0
