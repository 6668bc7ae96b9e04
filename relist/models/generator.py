"""GRN, the list generator: fills the n slots one by one with a pointer over the candidates.

The encoder reads the m candidates with their upstream scores and the user's interests
(relist.models.inputs) and lets them attend to each other (what else is on offer); a GRU
reads the items chosen so far; at each slot the GRU state attends to the candidates and a
pointer network scores every candidate that is still allowed (not chosen, not padding,
not breaking a business rule).

With ``conditioned`` (CMR, "Controllable Multi-Objective Re-ranking") the encoder also reads the
request's objective weights (batch key "objective" [B, 4], pv/ipv/buys/gmv): one trained model then
serves any mix of objectives, the weights arriving with each request (:class:`ObjectiveInput`).

Decoding is a pure function of (parameters, inputs, random generator): no state is
kept between calls, so LAST can decode with shifted weights through
``torch.func.functional_call`` or shift the activations ``encode`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from relist.data.padding import NEG_INF, PAD_ID, masked_mean
from relist.io import model_folder
from relist.models.contract import AllowedFn, ListGenerator
from relist.models.inputs import ItemContext
from relist.models.vocab import Vocab
from relist.objective import OBJECTIVES


class GRNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(16, ge=2, description="width of every embedding")
    hidden: int = Field(32, ge=2, description="candidate encoding and GRU state width")
    heads: int = Field(2, ge=1, description="candidate self-attention heads (must divide hidden)")
    list_len: int = Field(10, ge=1, description="slots to fill when a call does not say")
    conditioned: bool = Field(False, description="read each request's objective weights (CMR): one model for "
                                                 "every mix of pv, ipv, buys and gmv")
    objective_scale: tuple[float, float, float, float] | None = Field(
        None, description="conditioned: a typical list's value of pv, ipv, buys and gmv; the weights are read as "
                          "each objective's share of that value, so their units do not matter (None: measured "
                          "by the trainer on the logged valid lists; 1 each for a model built without it)")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> GRNConfig:
        if self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        if self.objective_scale is not None and not all(x > 0 for x in self.objective_scale):
            raise ValueError(f"objective_scale must be positive, got {list(self.objective_scale)}")
        return self


@dataclass
class Encoded:
    """What the decoder reads: candidate states [B, m, h], first GRU state [B, h], real candidates [B, m]."""

    candidates: Tensor
    state: Tensor
    mask: Tensor


class ObjectiveInput(nn.Module):
    """How a conditioned GRN reads a request's objective weights [B, 4] (pv, ipv, buys, gmv).

    The weights are first turned into *shares*: weight x a typical list's value of that objective
    (``scale``), over their sum. {ipv: 1} and {gmv: 1 / price} then both read as "all of one
    objective" although gmv's weight is ~50x smaller, and scaling every weight by a constant (which
    changes no list's rank) changes nothing. The shares scale and shift every candidate's encoding
    (FiLM: which candidates matter depends on what the request values) and shift the first decoder
    state.
    """

    def __init__(self, hidden: int, scale: tuple[float, ...] | None):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale or (1.0,) * len(OBJECTIVES)), persistent=False)
        self.film = nn.Linear(len(OBJECTIVES), 2 * hidden)
        self.state = nn.Linear(len(OBJECTIVES), hidden)

    def shares(self, batch: dict[str, Tensor]) -> Tensor:
        """Each request's share of every objective [B, 4], checked (a clear error rather than NaN lists)."""
        b = batch["mask"].shape[0]
        if "objective" not in batch:
            raise ValueError(f"this GRN is conditioned on the objective: its batch needs 'objective' [{b}, 4], "
                             f"weights of {', '.join(OBJECTIVES)} per request")
        weights = torch.as_tensor(batch["objective"]).to(self.scale)
        if weights.shape != (b, len(OBJECTIVES)):
            raise ValueError(f"objective weights must be [{b}, {len(OBJECTIVES)}] ({', '.join(OBJECTIVES)} per "
                             f"request), got {list(weights.shape)}")
        value = weights * self.scale
        total = value.abs().sum(-1, keepdim=True)
        bad = ~torch.isfinite(total[:, 0]) | (total[:, 0] == 0)
        if bad.any():
            raise ValueError(f"objective weights of request rows {bad.nonzero()[:, 0].tolist()[:10]} are all zero "
                             "or not finite: a request must weigh at least one objective")
        return value / total

    def forward(self, candidates: Tensor, shares: Tensor) -> Tensor:
        """Candidate encodings [B, m, h] modulated by the shares [B, 4]."""
        gain, shift = self.film(shares).unsqueeze(1).chunk(2, -1)
        return candidates * (1 + gain) + shift


class GRN(ListGenerator):
    """Generator: ``predict(batch)`` -> decoded candidate columns and their log-probabilities.

    Its loss is REINFORCE on what each sampled pick earned (``out["step_rewards"]``): the rewards come
    from whoever judges the lists (a frozen evaluator while training, relist.train.generator).
    """

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
        if cfg.conditioned:  # created last: an unconditioned GRN draws the same initial weights as before
            self.objective = ObjectiveInput(h, cfg.objective_scale)

    def encode(self, batch: dict[str, Tensor]) -> Encoded:
        """Candidate states and the first decoder state; a conditioned GRN reads ``batch["objective"]`` too."""
        mask = batch["mask"]
        items, segment = self.inputs(batch)
        enc = self.encode_candidate(torch.cat([items, segment.unsqueeze(1).expand(-1, items.shape[1], -1)], -1))
        if self.cfg.conditioned:
            shares = self.objective.shares(batch)
            enc = self.objective(enc, shares)
        offer, _ = self.offer(
            enc, enc, enc, key_padding_mask=~mask & mask.any(1, keepdim=True), need_weights=False
        )
        enc = enc + offer
        pooled = masked_mean(enc, mask, 1)
        state = self.init_state(torch.cat([pooled, enc.max(1).values], -1))
        if self.cfg.conditioned:
            state = state + self.objective.state(shares)
        return Encoded(enc, torch.tanh(state), mask)

    def pointer_logits(self, enc: Encoded, state: Tensor, keys: Tensor, allowed: Tensor,
                       glimpse_keys: Tensor | None = None) -> Tensor:
        """Scores of every candidate for the next slot [N, m]; not-allowed ones at NEG_INF.

        ``glimpse_keys`` is ``glimpse(enc.candidates)``, the same at every slot (computed here when not given).
        """
        glimpse_keys = self.glimpse(enc.candidates) if glimpse_keys is None else glimpse_keys
        glimpse = torch.einsum("nmh,nh->nm", glimpse_keys, state) / state.shape[-1] ** 0.5
        weights = torch.softmax(glimpse.masked_fill(~allowed, NEG_INF), -1)
        context = torch.einsum("nm,nmh->nh", weights, enc.candidates)
        query = self.pointer_query(torch.cat([state, context], -1))
        logits = self.pointer_out(torch.tanh(keys + query.unsqueeze(1))).squeeze(-1)
        return logits.masked_fill(~allowed, NEG_INF)

    def predict(
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
        narrows each slot's choice further (business rules, see relist.rerank.grn);
        ``forced`` [B, K, n] columns are followed instead of chosen, to score given lists.
        A sample is drawn as the argmax of the log-probabilities plus Gumbel noise
        (:func:`gumbel_noise`, drawn from ``generator`` before the first slot): the same
        distribution as drawing from the softmax, and a decode that is a pure function of its
        inputs, so a compiled decoder given the same noise picks the same lists.
        """
        n = self.cfg.list_len if n is None else n
        enc = self.encode(batch) if encoded is None else encoded
        b, m, _ = enc.candidates.shape
        rows = torch.arange(b, device=enc.mask.device).repeat_interleave(samples)
        enc = Encoded(enc.candidates[rows], enc.state[rows], enc.mask[rows])
        noise = None
        if not greedy and forced is None:
            noise = gumbel_noise((len(rows), n, m), generator, enc.mask.device)
        forced = None if forced is None else forced.reshape(len(rows), -1)
        choice, steps = self.decode_rows(enc, n, rows, allowed_fn, noise, temperature, forced)
        choice, steps = choice.view(b, samples, n), steps.view(b, samples, n)
        return {"choice": choice, "logp": steps.sum(-1), "step_logp": steps}

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """REINFORCE over the K lists sampled per request, with their per-slot mean as the baseline.

        ``out["step_rewards"]`` [B, K, n]: what each pick of ``out["choice"]`` earned.
        """
        rewards = out["step_rewards"]
        advantage = rewards - rewards.mean(1, keepdim=True)
        policy_gradient = -(advantage * out["step_logp"]).sum(-1).mean()
        return {"loss": policy_gradient, "policy_gradient": policy_gradient, "reward": rewards.sum(-1).mean()}

    def decode(self, batch: dict[str, Tensor], n: int, allowed_fn: AllowedFn | None = None) -> Tensor:
        return self.predict(batch, n=n, greedy=True, allowed_fn=allowed_fn)["choice"][:, 0]

    def decode_rows(self, enc: Encoded, n: int, rows: Tensor, allowed_fn: AllowedFn | None = None,
                    noise: Tensor | None = None, temperature: float | Tensor = 1.0,
                    forced: Tensor | None = None, with_allowed: bool = False) -> tuple[Tensor, ...]:
        """The slot loop over N decoded rows: candidate columns [N, n] (-1 once nothing is left) and the
        log-probability of each pick [N, n] (and, ``with_allowed``, the candidates each slot allowed
        [N, n, m], what :meth:`forced_logp` needs to score the picks again).

        ``rows`` [N] says which request each row decodes (what ``allowed_fn`` reads); ``noise`` [N, n, m]
        is added to the log-probabilities before the argmax (None: greedy); ``forced`` [N, n] columns are
        followed instead. Written with shape-free tensor operations only, so that it traces into one graph
        (relist.rerank.compiled).
        """
        keys = self.pointer_keys(enc.candidates)
        glimpse_keys = self.glimpse(enc.candidates)
        state = self.gru(self.start.expand_as(enc.state), enc.state)
        chosen = torch.zeros_like(enc.mask)
        width = enc.candidates.shape[-1]
        choices, step_logp, allowed_masks = [], [], []
        for slot in range(n):
            allowed = enc.mask & ~chosen
            if allowed_fn is not None:
                prefix = torch.stack(choices, 1) if choices else torch.zeros_like(rows[:, None])[:, :0]
                allowed = allowed & allowed_fn(rows, prefix, chosen, slot)
            logits = self.pointer_logits(enc, state, keys, allowed, glimpse_keys)
            logp = torch.log_softmax(logits / temperature, -1)
            if forced is not None:
                pick = forced[:, slot].clamp_min(0)
            elif noise is None:
                pick = logp.argmax(-1)
            else:
                pick = (logp + noise[:, slot]).argmax(-1)
            live = allowed.any(-1)
            allowed_masks.append(allowed)
            at = pick[:, None]
            step_logp.append(torch.where(live, logp.gather(1, at).squeeze(1), torch.zeros_like(logp[:, 0])))
            choices.append(torch.where(live, pick, torch.full_like(pick, -1)))
            chosen = chosen | torch.zeros_like(chosen).scatter(1, at, live[:, None])
            picked = enc.candidates.gather(1, at[:, :, None].expand(-1, 1, width)).squeeze(1)
            state = self.gru(picked, state)
        out = torch.stack(choices, 1), torch.stack(step_logp, 1)
        return (*out, torch.stack(allowed_masks, 1)) if with_allowed else out

    def forced_logp(self, enc: Encoded, choice: Tensor, allowed: Tensor, temperature: float = 1.0) -> Tensor:
        """The log-probability of each pick of decoded rows [N, n] (choice and allowed masks as ``decode_rows``
        returned them), with every slot's pointer computed at once: the slot loop's math without its
        loop, differentiable in ``enc`` (what LAST's gradient needs)."""
        n = choice.shape[1]
        pick = choice.clamp_min(0)
        width = enc.candidates.shape[-1]
        picked = enc.candidates.gather(1, pick[:, :, None].expand(-1, -1, width))  # [N, n, h]
        state = self.gru(self.start.expand_as(enc.state), enc.state)
        states = [state]
        for slot in range(n - 1):
            state = self.gru(picked[:, slot], state)
            states.append(state)
        states = torch.stack(states, 1)  # [N, n, h]
        keys = self.pointer_keys(enc.candidates)
        glimpse = torch.einsum("nmh,nth->ntm", self.glimpse(enc.candidates), states) / width ** 0.5
        weights = torch.softmax(glimpse.masked_fill(~allowed, NEG_INF), -1)
        context = torch.einsum("ntm,nmh->nth", weights, enc.candidates)
        query = self.pointer_query(torch.cat([states, context], -1))
        logits = self.pointer_out(torch.tanh(keys[:, None] + query[:, :, None])).squeeze(-1)
        logp = torch.log_softmax(logits.masked_fill(~allowed, NEG_INF) / temperature, -1)
        step = logp.gather(2, pick[:, :, None]).squeeze(-1)
        return torch.where(allowed.any(-1), step, torch.zeros_like(step))


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """Standard Gumbel noise: argmax(log p + noise) is a draw from p (the Gumbel-max trick)."""
    uniform = torch.rand(shape, generator=generator, device=device)
    return -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))


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


def load_generator(model_dir: str | Path) -> tuple[GRN, GeneratorSpec]:
    """A trained GRN (eval mode) and its spec from a directory written by ``relist train generator``."""
    return model_folder.load_saved(model_dir, SPEC_FILE, GeneratorSpec, lambda spec: GRN(spec.vocab, spec.model))
