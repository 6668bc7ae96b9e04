"""GRN, the list generator: fills the n slots one by one with a pointer over the candidates.

The encoder reads the m candidates with their upstream scores and the user's interests
(relist.models.inputs) and lets them attend to each other (what else is on offer); a GRU
reads the items chosen so far; at each slot the GRU state attends to the candidates and a
pointer network scores every candidate that is still allowed (not chosen, not padding,
not breaking a business rule).

Decoding is a pure function of (parameters, inputs, random generator): no state is
kept between calls, so LAST can decode with shifted weights through
``torch.func.functional_call`` or shift the activations ``encode`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from relist.data.padding import NEG_INF, PAD_ID, masked_mean
from relist.models import saved
from relist.models.inputs import ItemContext
from relist.models.vocab import Vocab


class GRNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(16, ge=2, description="width of every embedding")
    hidden: int = Field(32, ge=2, description="candidate encoding and GRU state width")
    heads: int = Field(2, ge=1, description="candidate self-attention heads (must divide hidden)")
    list_len: int = Field(10, ge=1, description="slots to fill when a call does not say")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> GRNConfig:
        if self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        return self


AllowedFn = Callable[[Tensor, Tensor, Tensor, int], Tensor]
"""Business-rule hook: (request row of each decoded row [N], prefix columns [N, t] (-1 = none),
already chosen [N, m], slot) -> candidates allowed at this slot [N, m]."""


@dataclass
class Encoded:
    """What the decoder reads: candidate states [B, m, h], first GRU state [B, h], real candidates [B, m]."""

    candidates: Tensor
    state: Tensor
    mask: Tensor


class GRN(nn.Module):
    """Generator: ``forward(batch)`` -> decoded candidate columns and their log-probabilities."""

    def __init__(self, vocab: Vocab, cfg: GRNConfig):
        super().__init__()
        self.vocab, self.cfg = vocab, cfg
        d, h = cfg.dim, cfg.hidden
        self.inputs = ItemContext(vocab, d)
        self.encode_candidate = nn.Sequential(nn.Linear(self.inputs.width + d, h), nn.ReLU(), nn.Linear(h, h))
        self.offer = nn.MultiheadAttention(h, cfg.heads, batch_first=True)
        self.init_state = nn.Linear(2 * h, h)
        self.start = nn.Parameter(torch.zeros(h))
        self.gru = nn.GRUCell(h, h)
        self.glimpse = nn.Linear(h, h, bias=False)
        self.pointer_keys = nn.Linear(h, h, bias=False)
        self.pointer_query = nn.Linear(2 * h, h)
        self.pointer_out = nn.Linear(h, 1, bias=False)

    def encode(self, batch: dict[str, Tensor]) -> Encoded:
        mask = batch["mask"]
        items, segment = self.inputs(batch)
        enc = self.encode_candidate(torch.cat([items, segment.unsqueeze(1).expand(-1, items.shape[1], -1)], -1))
        offer, _ = self.offer(
            enc, enc, enc, key_padding_mask=~mask & mask.any(1, keepdim=True), need_weights=False
        )
        enc = enc + offer
        pooled = masked_mean(enc, mask, 1)
        state = torch.tanh(self.init_state(torch.cat([pooled, enc.max(1).values], -1)))
        return Encoded(enc, state, mask)

    def pointer_logits(self, enc: Encoded, state: Tensor, keys: Tensor, allowed: Tensor) -> Tensor:
        """Scores of every candidate for the next slot [N, m]; not-allowed ones at NEG_INF."""
        glimpse = torch.einsum("nmh,nh->nm", self.glimpse(enc.candidates), state) / state.shape[-1] ** 0.5
        weights = torch.softmax(glimpse.masked_fill(~allowed, NEG_INF), -1)
        context = torch.einsum("nm,nmh->nh", weights, enc.candidates)
        query = self.pointer_query(torch.cat([state, context], -1))
        logits = self.pointer_out(torch.tanh(keys + query.unsqueeze(1))).squeeze(-1)
        return logits.masked_fill(~allowed, NEG_INF)

    def forward(
        self,
        batch: dict[str, Tensor],
        n: int | None = None,
        samples: int = 1,
        greedy: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        allowed_fn: AllowedFn | None = None,
        encoded: Encoded | None = None,
        forced: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Decode ``samples`` lists per request: greedy (argmax) or sampled at ``temperature``.

        Returns "choice" [B, K, n] candidate columns (-1 where a request ran out of
        candidates), "logp" [B, K] (sum over slots) and "step_logp" [B, K, n].
        ``encoded`` replaces ``encode(batch)`` (e.g. shifted activations); ``allowed_fn``
        narrows each slot's choice further (business rules, see relist.rerank.grn_policy);
        ``forced`` [B, K, n] columns are followed instead of chosen, to score given lists.
        """
        n = self.cfg.list_len if n is None else n
        enc = self.encode(batch) if encoded is None else encoded
        b, m, _ = enc.candidates.shape
        rows = torch.arange(b, device=enc.mask.device).repeat_interleave(samples)
        enc = Encoded(enc.candidates[rows], enc.state[rows], enc.mask[rows])
        keys = self.pointer_keys(enc.candidates)
        state = self.gru(self.start.expand_as(enc.state), enc.state)
        chosen = torch.zeros_like(enc.mask)
        choices, step_logp = [], []
        for slot in range(n):
            allowed = enc.mask & ~chosen
            if allowed_fn is not None:
                prefix = torch.stack(choices, 1) if choices else rows.new_zeros(len(rows), 0)
                allowed = allowed & allowed_fn(rows, prefix, chosen, slot)
            logits = self.pointer_logits(enc, state, keys, allowed)
            logp = torch.log_softmax(logits / temperature, -1)
            if forced is not None:
                pick = forced.reshape(len(rows), -1)[:, slot].clamp_min(0)
            elif greedy:
                pick = logp.argmax(-1)
            else:
                pick = torch.multinomial(logp.exp().clamp_min(0), 1, generator=generator).squeeze(-1)
            live = allowed.any(-1)
            step_logp.append(
                torch.where(live, logp.gather(1, pick[:, None]).squeeze(1), torch.zeros_like(logp[:, 0]))
            )
            choices.append(torch.where(live, pick, torch.full_like(pick, -1)))
            chosen = chosen | (nn.functional.one_hot(pick, m).bool() & live[:, None])
            state = self.gru(enc.candidates[torch.arange(len(rows), device=rows.device), pick], state)
        choice = torch.stack(choices, 1).view(b, samples, n)
        steps = torch.stack(step_logp, 1).view(b, samples, n)
        return {"choice": choice, "logp": steps.sum(-1), "step_logp": steps}


def chosen_items(candidates: Tensor, choice: Tensor) -> Tensor:
    """Item ids of decoded columns: candidates [B, m], choice [B, K, n] -> [B, K, n] (PAD_ID where -1)."""
    b, k, n = choice.shape
    ids = candidates.gather(1, choice.clamp_min(0).reshape(b, k * n)).reshape(b, k, n)
    return torch.where(choice >= 0, ids, torch.full_like(ids, PAD_ID))


class GeneratorSpec(BaseModel):
    """What rebuilds a trained generator: its tables and architecture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: Vocab
    model: GRNConfig


SPEC_FILE = "generator.yaml"


def save_spec(spec: GeneratorSpec, model_dir: str | Path) -> None:
    saved.save_spec(spec, model_dir, SPEC_FILE)


def load_generator(model_dir: str | Path) -> tuple[GRN, GeneratorSpec]:
    """A trained GRN (eval mode) and its spec from a directory written by ``relist train generator``."""
    return saved.load_saved(model_dir, SPEC_FILE, GeneratorSpec, lambda spec: GRN(spec.vocab, spec.model))
