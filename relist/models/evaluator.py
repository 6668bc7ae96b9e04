"""DCWN, the list evaluator: click, scroll and purchase logits of every position of a whole list.

Whether an item is clicked depends on what stands around it, so each position sees its own
features, its upstream score and the user's matching interests (relist.models.inputs) plus three
views of the list:

* its neighbourhood: how often its category and its shop already appeared above it, whether the
  items right before and after share them, how alike its learned vector is to theirs, and the
  items right before and after themselves (their vectors, their element-wise product with the
  item's own, and their teacher logits: what stands beside an item draws the eye to it or away).
  Repetition tires users and contrast draws the eye; made explicit, these extrapolate to lists
  more diverse than the logged ones, where a sequence model fitted to the logs does not;
* a Bi-LSTM (intent drifts both ways while browsing a two-column feed);
* self-attention (synergy regardless of distance).

``context=False`` drops them all and the position: the same network as a point-wise click model,
the context-blind baseline.

With ``prior`` (the default) the heads start from the fine-ranking teacher's point-wise logits of
each item (the ``ranker`` role, relist.models.ranking): the network learns how the list around an
item moves its click, scroll and purchase logits, and where it knows nothing the evaluator falls back
to the teacher — whose point-wise estimates extrapolate to unfamiliar lists far better than a list
model fitted to the logged lists alone.

An evaluator is trusted only as far as it has seen lists like the one it scores, so it is an
ensemble: ``members`` DCWNs, each trained on its own bootstrap resample of the logged lists
(relist.train.evaluator). Their spread on a list says how much they disagree there; it is small
on lists like the logged ones and grows away from them. Outputs carry the members first:
``{"click", "next", "buy"}`` logits [E, B, n]; ``buy`` is the purchase logit given a click.

Its loss (:meth:`Evaluator.loss`) sees labels only where the user looked: clicks and scrolls on the
exposed positions (``j < exposed_len``; an unseen item was not rejected, it was never judged),
purchases on the clicked ones, each list weighted per member by its bootstrap count.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from relist.io import model_folder
from relist.models.contract import ListModel
from relist.models.inputs import ItemContext
from relist.models.vocab import Vocab

HEADS = ("click", "next", "buy")


class DCWNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(16, ge=2, description="width of every embedding")
    hidden: int = Field(32, ge=2, description="LSTM state per direction and MLP width")
    heads: int = Field(2, ge=1, description="self-attention heads (must divide dim)")
    max_len: int = Field(50, ge=1, description="longest list the position embedding covers")
    context: bool = Field(True, description="False: point-wise click model (no position, LSTM, attention)")
    dropout: float = Field(0.1, ge=0, lt=1)
    members: int = Field(4, ge=1, description="ensemble members, each trained on its own bootstrap resample")
    upstream: bool = Field(True, description="read each item's upstream score and rank (False: ablation)")
    prior: bool = Field(True, description="start each head from the fine-ranking teacher's logit of the item "
                                          "(needs the ranker role); False: learn them from the logs alone")
    prior_in_slot: bool = Field(True, description="with a teacher that learned slot terms, the prior is its logit of "
                                                  "the item in its slot of the scored list (position, the category "
                                                  "above, repeats); False: the item's own logit (ablation)")
    neighbourhood: bool = Field(True, description="the explicit neighbourhood features (repeats, what stands "
                                                  "beside each item); False: the sequence models alone (ablation)")
    next_weight: float = Field(0.5, ge=0, description="loss weight of the scroll (next) head, whose cumulative "
                                                      "product estimates exposure")
    buy_weight: float = Field(0.5, ge=0, description="loss weight of the purchase head (a purchase given a click)")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> DCWNConfig:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


NEIGHBOURHOOD = 8  # features per position, see neighbourhood()


def neighbourhood(batch: dict[str, Tensor], vectors: Tensor) -> Tensor:
    """[B, n, 8] per position: log(1 + earlier items of its category), the same for its shop, whether the
    item before / after shares its category, its shop, and the cosine of the item vectors [B, n, d] with
    the item before and after (0 where there is none; unknown attributes, 0, never match)."""
    mask = batch["mask"]
    n = mask.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril(-1)
    out = []
    for field in ("cate", "shop"):
        values = batch[field]
        same = (values[:, :, None] == values[:, None, :]) & (values != 0)[:, :, None] & mask[:, None, :]
        out.append(torch.log1p((same & earlier).sum(-1).to(vectors.dtype)))
        out += list(_beside(same.diagonal(-1, dim1=1, dim2=2).to(vectors.dtype), n))
    unit = nn.functional.normalize(vectors, dim=-1)
    out += list(_beside((unit[:, 1:] * unit[:, :-1]).sum(-1), n))
    return torch.stack(out, -1) * mask.unsqueeze(-1)


def _shifted(x: Tensor) -> tuple[Tensor, Tensor]:
    """What stands right before and right after each position of x [B, n, d] (zeros at the ends)."""
    zero = x.new_zeros(x.shape[0], 1, x.shape[2])
    return torch.cat([zero, x[:, :-1]], 1), torch.cat([x[:, 1:], zero], 1)


def _beside(pairs: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """A relation of neighbours [B, n-1] (position j with j+1) as seen from each position: (before, after)."""
    zero = pairs.new_zeros(pairs.shape[0], 1)
    return torch.cat([zero, pairs], 1)[:, :n], torch.cat([pairs, zero], 1)[:, :n]


class DCWN(nn.Module):
    """One deep context-wise network: ``forward(batch)`` -> {"click", "next", "buy"} logits [B, n]."""

    def __init__(self, vocab: Vocab, cfg: DCWNConfig):
        super().__init__()
        self.cfg = cfg
        d, h = cfg.dim, cfg.hidden
        self.inputs = ItemContext(vocab, d, cfg.upstream)
        priors = len(HEADS) if cfg.prior else 0
        width = self.inputs.width + d + priors
        if cfg.context:
            self.neighbours = nn.Linear(NEIGHBOURHOOD, d)
            self.project = nn.Linear(self.inputs.width + d + priors, d)
            self.position = nn.Embedding(cfg.max_len, d)
            self.lstm = nn.LSTM(d, h, batch_first=True, bidirectional=True)
            self.attention = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
            width += d + d + 2 * h + d + 2 * (d + priors) + 2 * d  # neighbourhood, item, LSTM, attention, beside
        self.mlp = nn.Sequential(
            nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(h, h), nn.ReLU()
        )
        self.heads = nn.Linear(h, len(HEADS))
        if cfg.prior:  # start as the teacher: the list's effects are learned as departures from it
            nn.init.zeros_(self.heads.weight)
            nn.init.zeros_(self.heads.bias)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = batch["mask"]
        items, segment = self.inputs(batch)
        parts = [items, segment.unsqueeze(1).expand(-1, items.shape[1], -1)]
        prior = (torch.stack([batch[f"prior_{name}"] for name in HEADS], -1) * mask.unsqueeze(-1)
                 if self.cfg.prior else items[..., :0])
        parts.append(prior)
        if self.cfg.context:
            repeats = self.neighbours(neighbourhood(batch, items[..., :self.cfg.dim]))
            if not self.cfg.neighbourhood:
                repeats = torch.zeros_like(repeats)
            index = torch.arange(items.shape[1], device=items.device).clamp_max(self.position.num_embeddings - 1)
            positions = self.position(index)  # past max_len: the last position's row (logs of any length)
            seq = (self.project(torch.cat([items, repeats, prior], -1)) + positions) * mask.unsqueeze(-1)
            lstm, _ = self.lstm(seq)  # padding sits at the end and enters as zeros
            keys_ignored = ~mask & mask.any(1, keepdim=True)  # an all-padding row attends to zeros, not NaN
            synergy, _ = self.attention(seq, seq, seq, key_padding_mask=keys_ignored, need_weights=False)
            before, after = _shifted(torch.cat([seq, prior], -1))
            if not self.cfg.neighbourhood:
                before, after = torch.zeros_like(before), torch.zeros_like(after)
            d = self.cfg.dim  # how alike each item is to what stands beside it, field by field
            parts += [repeats, seq, lstm, synergy, before, after, seq * before[..., :d], seq * after[..., :d]]
        logits = self.heads(self.mlp(torch.cat(parts, -1)))
        if self.cfg.prior:
            logits = logits + prior
        return {name: logits[..., i] for i, name in enumerate(HEADS)}


class Evaluator(ListModel):
    """The ensemble: ``predict(batch)`` -> {"click", "next", "buy"} logits [E, B, n], one row per member."""

    def __init__(self, vocab: Vocab, cfg: DCWNConfig):
        super().__init__()
        self.vocab, self.cfg = vocab, cfg
        self.members = nn.ModuleList(DCWN(vocab, cfg) for _ in range(cfg.members))

    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        outs = [member(batch) for member in self.members]
        return {name: torch.stack([out[name] for out in outs]) for name in HEADS}

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Bootstrap-weighted cross-entropy of clicks and scrolls on exposed positions, purchases on clicks
        (``batch``: ``exposed`` [B, n], ``weight`` [E, B], the click/next/buy labels and ``has_buy``)."""
        seen, weight = batch["exposed"], batch["weight"]
        click = _weighted_bce(out["click"], batch["click"], seen, weight)
        scroll = _weighted_bce(out["next"], batch["next"], seen, weight)
        clicked = seen & (batch["click"] > 0) & batch["has_buy"]
        buy = _weighted_bce(out["buy"], batch["buy"], clicked, weight)
        return {"loss": click + self.cfg.next_weight * scroll + self.cfg.buy_weight * buy, "click": click,
                "next": scroll, "buy": buy}


def _weighted_bce(logits: Tensor, labels: Tensor, where: Tensor, weight: Tensor) -> Tensor:
    """Per member the bootstrap-weighted BCE over ``where`` positions; logits [E, B, n], weight [E, B].

    Divided by the number of positions, not by the weights' sum (Poisson(1) weights have mean 1), so
    that under DDP ranks holding as many positions average to the loss of the global batch.
    """
    w = weight[:, :, None] * where[None].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, labels.expand_as(logits), reduction="none")
    return ((bce * w).sum((1, 2)) / where.sum().clamp_min(1)).mean()


def exposure(next_logits: Tensor) -> Tensor:
    """Chance that each position is seen: 1 at the top, then the product of earlier scroll probabilities."""
    p_next = torch.sigmoid(next_logits)
    return torch.cat([torch.ones_like(p_next[..., :1]), torch.cumprod(p_next[..., :-1], -1)], -1)


class EvaluatorSpec(BaseModel):
    """What rebuilds a trained evaluator: tables, architecture, and how its list reward sums positions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: Vocab
    model: DCWNConfig
    exposure_weighted: bool = Field(
        True,
        description="weight positions by the predicted exposure: the click head predicts clicks of seen "
        "positions, so expected clicks are exposure x click probability",
    )
    prior_weights: str | None = Field(None, description="sha256 of the ranker weights the prior was trained "
                                                        "with; the same ranker must score with it")


SPEC_FILE = "evaluator.yaml"


def load_evaluator(model_dir: str | Path) -> tuple[Evaluator, EvaluatorSpec]:
    """A trained ensemble (eval mode) and its spec from a directory written by ``relist train evaluator``."""
    return model_folder.load_saved(model_dir, SPEC_FILE, EvaluatorSpec, lambda spec: Evaluator(spec.vocab, spec.model))
