"""DCWN, the list evaluator: click (and scroll) logits of every position of a whole list.

Whether an item is clicked depends on what stands around it, so each position sees
its own features and the user's matching interests (target attention over the
behaviour history) plus two views of the list: a Bi-LSTM (intent drifts both ways
while browsing a two-column feed) and self-attention (synergy regardless of distance).
``context=False`` drops both views and the position: the same network as a
point-wise click model, the context-blind baseline of the evaluator-validity study.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from relist.data.features import FeatureStore
from relist.data.padding import NEG_INF, PAD_ID
from relist.models import saved
from relist.models.vocab import Vocab


class DCWNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(16, ge=2, description="width of every embedding")
    hidden: int = Field(32, ge=2, description="LSTM state per direction and MLP width")
    heads: int = Field(2, ge=1, description="self-attention heads (must divide dim)")
    max_len: int = Field(50, ge=1, description="longest list the position embedding covers")
    context: bool = Field(True, description="False: point-wise click model (no position, LSTM, attention)")
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> DCWNConfig:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


def list_features(
    store: FeatureStore, user_ids: np.ndarray | Tensor, items: np.ndarray | Tensor
) -> dict[str, Tensor]:
    """Model inputs for lists (or candidate sets) ``items`` [B, n] of users [B]: ids only go in.

    Item features keep their store names (item, cate, shop, price, price_bucket), the
    user's history items get a ``hist_`` prefix, ``mask`` marks real (non-padding) entries.
    """
    items = items.long() if isinstance(items, Tensor) else torch.tensor(np.asarray(items), dtype=torch.long)
    user = store.user_features(user_ids.cpu() if isinstance(user_ids, Tensor) else np.array(user_ids))
    batch = store.item_features(items.cpu())
    batch |= {f"hist_{name}": value for name, value in store.item_features(user["hist"]).items()}
    batch |= {"mask": items.cpu() != PAD_ID, "hist_mask": user["hist_mask"], "segment": user["segment"]}
    return {name: value.to(items.device) for name, value in batch.items()}


class ItemEmbedding(nn.Module):
    """Item id, category, shop, price bucket and standardised price -> one vector per item."""

    def __init__(self, vocab: Vocab, dim: int):
        super().__init__()
        self.item = nn.Embedding(vocab.n_items, dim, padding_idx=PAD_ID)
        self.cate = nn.Embedding(vocab.n_cates, dim)
        self.shop = nn.Embedding(vocab.n_shops, dim)
        self.price_bucket = nn.Embedding(vocab.n_price_buckets, dim)
        self.mix = nn.Linear(4 * dim + 1, dim)

    def forward(self, batch: dict[str, Tensor], prefix: str = "") -> Tensor:
        parts = [
            self.item(batch[f"{prefix}item"]),
            self.cate(batch[f"{prefix}cate"]),
            self.shop(batch[f"{prefix}shop"]),
            self.price_bucket(batch[f"{prefix}price_bucket"]),
            batch[f"{prefix}price"].unsqueeze(-1),
        ]
        return self.mix(torch.cat(parts, -1))


class UserInterest(nn.Module):
    """The user's segment and, per target item, attention over the behaviour history (DIN-style)."""

    def __init__(self, vocab: Vocab, dim: int):
        super().__init__()
        self.segment = nn.Embedding(vocab.n_segments, dim)
        self.query = nn.Linear(dim, dim, bias=False)

    def forward(
        self, targets: Tensor, history: Tensor, hist_mask: Tensor, segment: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``targets`` [B, n, d], ``history`` [B, L, d] -> (interest [B, n, d], segment [B, d])."""
        scores = torch.einsum("bnd,bld->bnl", self.query(targets), history) / history.shape[-1] ** 0.5
        scores = scores.masked_fill(~hist_mask[:, None, :], NEG_INF)
        weights = torch.softmax(scores, -1) * hist_mask[:, None, :]  # empty history -> zero interest
        return weights @ history, self.segment(segment)


class DCWN(nn.Module):
    """Deep context-wise network: ``forward(batch)`` -> {"click": [B, n], "next": [B, n]} logits."""

    def __init__(self, vocab: Vocab, cfg: DCWNConfig):
        super().__init__()
        self.vocab, self.cfg = vocab, cfg
        d, h = cfg.dim, cfg.hidden
        self.items = ItemEmbedding(vocab, d)
        self.user = UserInterest(vocab, d)
        width = 3 * d
        if cfg.context:
            self.position = nn.Embedding(cfg.max_len, d)
            self.lstm = nn.LSTM(d, h, batch_first=True, bidirectional=True)
            self.attention = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
            width += d + 2 * h + d
        self.mlp = nn.Sequential(
            nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(h, h), nn.ReLU()
        )
        self.click = nn.Linear(h, 1)
        self.next = nn.Linear(h, 1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = batch["mask"]
        x = self.items(batch) * mask.unsqueeze(-1)
        interest, segment = self.user(x, self.items(batch, "hist_"), batch["hist_mask"], batch["segment"])
        parts = [x, interest, segment.unsqueeze(1).expand_as(x)]
        if self.cfg.context:
            positions = torch.arange(x.shape[1], device=x.device).clamp_max(self.position.num_embeddings - 1)
            seq = x + self.position(positions) * mask.unsqueeze(-1)  # past max_len: the last position's row
            lstm, _ = self.lstm(seq)  # padding sits at the end and enters as zeros
            keys_ignored = ~mask & mask.any(1, keepdim=True)  # an all-padding row attends to zeros, not NaN
            synergy, _ = self.attention(seq, seq, seq, key_padding_mask=keys_ignored, need_weights=False)
            parts += [seq, lstm, synergy]
        hidden = self.mlp(torch.cat(parts, -1))
        return {"click": self.click(hidden).squeeze(-1), "next": self.next(hidden).squeeze(-1)}


def exposure(next_logits: Tensor) -> Tensor:
    """Chance that each position is seen: 1 at the top, then the product of earlier scroll probabilities."""
    p_next = torch.sigmoid(next_logits)
    return torch.cat([torch.ones_like(p_next[:, :1]), torch.cumprod(p_next[:, :-1], 1)], 1)


class EvaluatorSpec(BaseModel):
    """What rebuilds a trained evaluator: tables, architecture, and how its list reward sums positions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: Vocab
    model: DCWNConfig
    exposure_weighted: bool = Field(
        False,
        description="weight positions by the predicted exposure (chosen on "
        "validation logs by relist.train.evaluator)",
    )


SPEC_FILE = "evaluator.yaml"


def save_spec(spec: EvaluatorSpec, model_dir: str | Path) -> None:
    saved.save_spec(spec, model_dir, SPEC_FILE)


def load_evaluator(model_dir: str | Path) -> tuple[DCWN, EvaluatorSpec]:
    """A trained DCWN (eval mode) and its spec from a directory written by ``relist train evaluator``."""
    return saved.load_saved(model_dir, SPEC_FILE, EvaluatorSpec, lambda spec: DCWN(spec.vocab, spec.model))
