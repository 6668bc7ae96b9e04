"""DLCM (Ai et al., 2018): a GRU reads the initial list and a local attention function rescores each item.

The GRU reads the list from the bottom up, so its final state summarises the
list with the top items freshest; each item is scored by how its own GRU output
matches that summary: ``score_i = v · (o_i ⊙ tanh(W s + b))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relist.models.baselines.inputs import BaselineConfig, ItemInputs, ScorePrior
from relist.models.baselines.scorer import ItemScorer
from relist.models.vocab import Vocab


class DLCM(ItemScorer):
    """``predict(batch)`` -> {"score": [B, L]} logits; re-ranking sorts the initial list by them."""

    def __init__(self, vocab: Vocab | None, cfg: BaselineConfig):
        super().__init__()
        self.inputs = ItemInputs(vocab, cfg)
        self.gru = nn.GRU(cfg.dim, cfg.hidden, batch_first=True)
        self.summary = nn.Linear(cfg.hidden, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, 1, bias=False)
        self.prior = ScorePrior(cfg)
        self.prior.start_at_zero(self.out)

    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = batch["mask"]
        x = self.inputs(batch)
        lengths = mask.sum(1).clamp_min(1).cpu()
        # Reverse each list's real part so the GRU ends on the top item; padding stays at the end.
        reverse = _reversal(mask)
        packed = nn.utils.rnn.pack_padded_sequence(x.gather(1, reverse[..., None].expand_as(x)), lengths,
                                                   batch_first=True, enforce_sorted=False)
        outputs, last = self.gru(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
        outputs = outputs.gather(1, reverse[..., None].expand_as(outputs))  # back to initial order
        local = outputs * torch.tanh(self.summary(last[-1])).unsqueeze(1)
        return {"score": self.out(local).squeeze(-1) + self.prior(batch)}


def _reversal(mask: Tensor) -> Tensor:
    """Per row, the columns that reverse the real entries and keep padding in place (its own inverse)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    lengths = mask.sum(1, keepdim=True)
    return torch.where(mask, lengths - 1 - positions, positions)
