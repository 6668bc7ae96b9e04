"""PRM (Pei et al., 2019): a transformer over the initial list rescores each item among the others."""

from __future__ import annotations

from torch import Tensor, nn

from relist.models.baselines.inputs import BaselineConfig, ItemInputs, ScorePrior
from relist.models.baselines.scorer import ItemScorer
from relist.models.vocab import Vocab


class PRM(ItemScorer):
    """``predict(batch)`` -> {"score": [B, L]} logits; re-ranking sorts the initial list by them."""

    def __init__(self, vocab: Vocab | None, cfg: BaselineConfig):
        super().__init__()
        self.inputs = ItemInputs(vocab, cfg)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.hidden, cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        self.prior = ScorePrior(cfg)
        self.prior.start_at_zero(self.head[-1])

    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = batch["mask"]
        ignored = ~mask & mask.any(1, keepdim=True)  # an all-padding row attends to itself, not to nothing
        context = self.encoder(self.inputs(batch), src_key_padding_mask=ignored)
        return {"score": self.head(context).squeeze(-1) + self.prior(batch)}
