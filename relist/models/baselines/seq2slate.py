"""Seq2Slate (Bello et al., 2018): a pointer network that writes the list one item at a time.

An LSTM encodes the initial list; a decoder LSTM, fed the item chosen last,
points at the next item among those still available. Training is teacher-forced
on the ideal order of the labelled items (relist.train.baselines); decoding under
business rules lives in relist.rerank.baselines, which asks ``step`` for logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from relist.data.padding import NEG_INF
from relist.models.baselines.inputs import BaselineConfig, ItemInputs, ScorePrior
from relist.models.generator import AllowedFn
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


class Seq2Slate(nn.Module):
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

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
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

    def decode(self, batch: dict[str, Tensor], n: int, allowed_fn: AllowedFn | None = None) -> Tensor:
        """Greedy decoding: columns [B, n] (-1 once a request runs out); ``allowed_fn`` narrows each slot."""
        slate = self.encode(batch)
        mask = batch["mask"]
        rows = torch.arange(len(mask), device=mask.device)
        chosen = torch.zeros_like(mask)
        previous, columns = None, []
        for slot in range(n):
            allowed = mask & ~chosen
            if allowed_fn is not None:
                prefix = torch.stack(columns, 1) if columns else rows.new_zeros(len(rows), 0)
                allowed = allowed & allowed_fn(rows, prefix, chosen, slot)
            logits, slate = self.step(slate, previous)
            pick = logits.masked_fill(~allowed, NEG_INF).argmax(1)
            live = allowed.any(1)
            chosen = chosen.scatter(1, pick[:, None], live[:, None]) | chosen
            columns.append(torch.where(live, pick, torch.full_like(pick, -1)))
            previous = pick
        return torch.stack(columns, 1)
