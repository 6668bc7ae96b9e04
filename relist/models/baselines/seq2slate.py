"""Seq2Slate (Bello et al., 2018): a pointer network that writes the list one item at a time.

An LSTM encodes the initial list; a decoder LSTM, fed the item chosen last,
points at the next item among those still available. Training is teacher-forced
on the ideal order of the labelled items (``target``, made by relist.train.baselines) with
``pointer_loss``; ``decode`` runs the pointer greedily, the rules masking each slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from relist.data.padding import NEG_INF
from relist.models.baselines.inputs import BaselineConfig, ItemInputs, ScorePrior
from relist.models.baselines.scorer import softmax_ce
from relist.models.contract import AllowedFn, ListGenerator, greedy_slots
from relist.models.vocab import Vocab


@dataclass
class Slate:
    """Decoder state: encoded items [B, L, h], pointer keys [B, L, h], item inputs [B, L, d], LSTM (h, c),
    and the initial-score prior of every item [B, L] (0 unless the model is residual)."""

    encoded: Tensor
    keys: Tensor
    inputs: Tensor
    state: tuple[Tensor, Tensor]
    prior: Tensor


class Seq2Slate(ListGenerator):
    """``predict(batch)`` -> teacher-forced pointer logits (training); ``decode`` writes the lists."""

    def __init__(self, vocab: Vocab | None, cfg: BaselineConfig):
        super().__init__()
        self.inputs = ItemInputs(vocab, cfg)
        self.encoder = nn.LSTM(cfg.dim, cfg.hidden, batch_first=True)
        self.start = nn.Parameter(torch.zeros(cfg.dim))
        self.decoder = nn.LSTMCell(cfg.dim, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, 1, bias=False)
        self.prior = ScorePrior(cfg)
        self.prior.start_at_zero(self.out)

    def encode(self, batch: dict[str, Tensor]) -> Slate:
        x = self.inputs(batch)
        encoded, (h, c) = self.encoder(x)
        prior = torch.zeros(x.shape[:2], device=x.device) + self.prior(batch)
        return Slate(encoded, self.key(encoded), x, (h[-1], c[-1]), prior)

    def step(self, slate: Slate, previous: Tensor | None) -> tuple[Tensor, Slate]:
        """Pointer logits [B, L] for the next slot, after item column ``previous`` [B] (None: first slot)."""
        rows = torch.arange(slate.inputs.shape[0], device=slate.inputs.device)
        feed = self.start.expand(len(rows), -1) if previous is None else slate.inputs[rows, previous]
        h, c = self.decoder(feed, slate.state)
        logits = self.out(torch.tanh(slate.keys + self.query(h).unsqueeze(1))).squeeze(-1) + slate.prior
        return logits, Slate(slate.encoded, slate.keys, slate.inputs, (h, c), slate.prior)

    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Teacher-forced pointer logits {"pointer": [B, T, L]} along ``batch["target"]`` [B, T] columns.

        At step t the items of target[:, :t] are taken, so their logits are NEG_INF, like padding.
        """
        slate = self.encode(batch)
        target = batch["target"]
        available = batch["mask"].clone()
        previous, steps = None, []
        for t in range(target.shape[1]):
            logits, slate = self.step(slate, previous)
            steps.append(logits.masked_fill(~available, NEG_INF))
            previous = target[:, t]
            available = available.scatter(1, previous[:, None], False)
        return {"pointer": torch.stack(steps, 1)}

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return pointer_loss(out, batch)

    def decode(self, batch: dict[str, Tensor], n: int, allowed_fn: AllowedFn | None = None) -> Tensor:
        return greedy_slots(batch["mask"], n, self.step, self.encode(batch), allowed_fn)


def pointer_loss(out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The list-wise loss at every teacher-forced step over the labelled items not yet placed; once no
    positive is left, the next item of the ideal order (the initial order) is the target.

    Without those tail steps the decoder is trained only while positives remain: any slot after a
    missed positive is decoded by an untrained pointer from a state it never saw, which on noisy lists
    scrambles the order below the initial one. With them it learns to fall back on the initial order.
    """
    pointer, target, gain = out["pointer"], batch["target"], batch["gain"]
    available = batch["label_mask"].clone()
    losses = []
    for t in range(target.shape[1]):
        left = (gain * available).sum(1, keepdim=True) > 0
        following = torch.zeros_like(gain).scatter(1, target[:, t:t + 1], 1.0)
        losses.append(softmax_ce(pointer[:, t], torch.where(left, gain, following), available, reduce=False))
        available = available.scatter(1, target[:, t:t + 1], False)
    per_step = torch.stack(losses, 1)
    steps = batch["target_mask"]
    return {"loss": (per_step * steps).sum() / steps.sum().clamp_min(1)}
