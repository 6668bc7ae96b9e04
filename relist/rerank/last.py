"""LAST, learning at serving time: a per-request shift Δθ of the deployed GRN, used once and thrown away.

The deployed generator θ never changes. For each request LAST looks for a shift Δθ
that raises the evaluator's list reward LR for *this* request, serves the best list
it has seen, and forgets Δθ. No user feedback is involved, so nothing streams back.

* **parallel** (the one to serve): sample a few lists at θ, score them with the
  evaluator, and turn one backward pass over their log-probabilities into D
  directions (the REINFORCE direction — advantage = LR minus a baseline — and, for
  D > 1, "towards the j-th best sample"); D directions × the step sizes give K shifted
  generators, decoded greedily as one batched computation and scored in one batch.
* **serial**: T rounds of sample → score → step Δθ along the REINFORCE direction →
  decode greedily at θ+Δθ → score.

What Δθ touches is configuration: the two activations the decoder reads (candidate
states and initial decoder state, as the authors' public code does; per request, so a
batch of requests shares every computation), the pointer network's layers, or all
weights (through ``torch.func.functional_call``; K shifted weight sets decode under
``vmap``). Steps are relative: a step of 0.1 moves the touched tensors by 10% of their
norm. Lists are scored by the evaluator ensemble's pessimistic value (mean - beta x spread,
relist.rerank.list_scorer), so a shift is kept only where the members agree it helps. The
GRN greedy list is the floor; the request's budget is asked before every phase, and the
best list scored so far is returned when time runs out (the skip is recorded in the budget).

Cost: for the activation shift the greedy row and the S exploration samples are one decode pass
(the greedy row decodes with zero noise), the gradient re-scores the sampled lists with every slot's
pointer at once (the masks the sampling pass returned: eagerly ``GRN.forced_logp`` and autograd, compiled
one kernel for the forward and backward pass, relist.rerank.grn_decoder) and the K shifted generators
are a second decode pass of B·K rows; every pass goes through the GRN's runner (relist.rerank.grn),
eager or compiled (relist.rerank.compiled), and the encoding is the one ``grn`` and ``grn_samples``
decode from in the same list-ranking call; the teacher's logits, the evaluator's prior, are computed
once per call however often lists are scored (relist.rerank.shared).

Safety under concurrency: the deployed module is only read (its parameters are taken
detached once, shifts are fresh tensors of each call, gradients come from
``torch.autograd.grad`` which never writes ``.grad``), so requests cannot see each
other's Δθ and the weights stay bit-identical. ``functional_call`` swaps a module's
parameters in place while it runs, so weight shifts run on a private copy of the GRN
per thread (tests/test_last.py caught the race).
"""

from __future__ import annotations

import copy
import threading
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor
from torch.func import functional_call, vmap

from relist.data.requests import Requests
from relist.models.generator import GRN, Encoded, chosen_items
from relist.rerank import shared
from relist.rerank.budget import Budget
from relist.rerank.generators import Context
from relist.rerank.grn import (
    GRNRunner,
    as_runner,
    branch_free_rules_hook,
    decode_requests,
    encoded_requests,
    expand,
    rules_hook,
)
from relist.rerank.list_scorer import ListScorer, pessimistic
from relist.rerank.rules import BusinessRules

Shifted = dict[str, Tensor]  # name -> tensor with a leading request dimension
POINTER = (
    "glimpse.weight",
    "pointer_keys.weight",
    "pointer_query.weight",
    "pointer_query.bias",
    "pointer_out.weight",
)


class LASTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["parallel", "serial"] = Field(
        "parallel", description="parallel: K shifts at once; serial: T steps"
    )
    shift: Literal["activations", "pointer", "all"] = Field(
        "activations", description="what Δθ moves: decoder-input activations, pointer layers, or every weight"
    )
    samples: int = Field(4, ge=1, description="lists sampled at θ to explore the gradient")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the exploration")
    baseline: Literal["mean", "greedy"] = Field(
        "mean", description="advantage = LR - mean LR of samples, or - greedy LR"
    )
    directions: int = Field(2, ge=1, description="D: REINFORCE, then towards the 1st, 2nd, ... best sample")
    step_sizes: tuple[float, ...] = Field(
        (0.025, 0.05, 0.1, 0.2),
        min_length=1,
        description="relative step sizes; K = directions × len(step_sizes)",
    )
    serial_steps: int = Field(3, ge=1, description="T: rounds of the serial version")
    serial_step: float = Field(0.1, ge=0, description="relative step of each serial round")
    serve_samples: bool = Field(
        True, description="the exploration samples (already scored) may be served too"
    )
    beta: float = Field(1.0, ge=0, description="pessimism: lists are valued at mean - beta x members' std")
    batch_size: int = Field(256, ge=1, description="requests per call offline (weight shifts run one by one)")
    seed: int = 0

    @model_validator(mode="after")
    def _directions_have_samples(self) -> LASTConfig:
        if self.directions > self.samples + 1:
            raise ValueError(
                f"directions={self.directions} needs samples >= {self.directions - 1} to imitate"
            )
        return self

    @property
    def k(self) -> int:
        return self.directions * len(self.step_sizes)


@dataclass
class LASTResult:
    lists: np.ndarray  # [B, n] item ids served
    reward: np.ndarray  # [B] pessimistic value of the served lists (NaN if the budget left the floor unscored)
    source: np.ndarray  # [B] where each served list came from: greedy | sample | shift | serial
    unscored: np.ndarray  # [B, L, n] lists found but left unscored (``score_shifts=False``; L = 0 otherwise)


class _ActivationShift:
    """Δ on the encoder's candidate states [B, m, h] and the decoder's initial state [B, h], per request."""

    def __init__(
        self,
        runner: GRN | GRNRunner,
        batch: dict[str, Tensor],
        encoded: Encoded,
        n: int,
        rules: BusinessRules | None,
        temperature: float,
    ):
        runner = as_runner(runner)
        self.runner, self.model, self.batch, self.enc, self.n = runner, runner.model, batch, encoded, n
        self.rules, self.temperature = rules, temperature

    def reference(self) -> Shifted:
        return {"candidates": self.enc.candidates, "state": self.enc.state}

    def at(self, delta: Shifted | None) -> Encoded:
        if delta is None:
            return self.enc
        return Encoded(self.enc.candidates + delta["candidates"], self.enc.state + delta["state"], self.enc.mask)

    def decode(self, delta: Shifted | None, **kwargs) -> dict[str, Tensor]:
        """The GRN's eager decode at θ+delta (any ``GRN.predict`` setting, e.g. ``forced``)."""
        return self.model(self.batch, self.n, temperature=self.temperature, allowed_fn=rules_hook(self.rules,
                          self.batch) if self.rules is not None else None, encoded=self.at(delta), **kwargs)

    def greedy(self, delta: Shifted | None) -> Tensor:
        """Greedy lists at θ+delta: choice [B, 1, n]."""
        return decode_requests(self.runner, self.batch, self.at(delta), self.n, self.rules, temperature=None)[0]

    def explore(self, delta: Shifted | None, samples: int, generator: torch.Generator,
                with_greedy: bool) -> tuple[Tensor | None, Tensor, Shifted]:
        """S lists sampled at θ+delta (and the greedy one, in the same pass, ``with_greedy``): greedy choice
        [B, 1, n] or None, sampled choice [B, S, n], and each sample's own gradient of its logp [B, S, ...]
        (the runner's ``logp_gradients``: any weighting of the samples is a sum of those, see ``gradients``)."""
        enc = self.at(delta)
        first = int(with_greedy)
        choice, _, allowed = decode_requests(self.runner, self.batch, enc, self.n, self.rules, samples + first,
                                             greedy_first=with_greedy, temperature=self.temperature,
                                             generator=generator)
        greedy, choice, allowed = (choice[:, :1] if with_greedy else None), choice[:, first:], allowed[:, first:]
        b = choice.shape[0]
        rows_enc, _ = expand(enc, self.batch, torch.arange(b).repeat_interleave(samples))
        grads = self.runner.logp_gradients(rows_enc, choice.reshape(b * samples, self.n),
                                           allowed.reshape(b * samples, self.n, -1), self.temperature)
        return greedy, choice, {name: g.view(b, samples, *g.shape[1:]) for name, g in
                                zip(("candidates", "state"), grads, strict=True)}

    def gradients(self, slope: Shifted, weights: Tensor) -> Shifted:
        """The gradients of the D weighted sums of the samples' logp (weights [B, D, S]) -> [B, D, ...]: the
        per-sample gradients ``slope`` [B, S, ...], weighted and summed per request."""
        return {name: torch.einsum("bds,bs...->bd...", weights, g) for name, g in slope.items()}

    def decode_shifted(self, shifts: Shifted) -> Tensor:
        """Greedy lists of K shifts [B, K, ...] as one batch of B·K rows -> choice [B, K, n]."""
        b, k = shifts["state"].shape[:2]
        rows = torch.arange(b).repeat_interleave(k)
        enc = Encoded(
            (self.enc.candidates[:, None] + shifts["candidates"]).flatten(0, 1),
            (self.enc.state[:, None] + shifts["state"]).flatten(0, 1),
            self.enc.mask[rows],
        )
        _, rule_inputs = expand(self.enc, self.batch, rows)
        with torch.no_grad():
            choice, _, _ = self.runner.decode(enc, rule_inputs, self.n, self.rules)
        return choice.view(b, k, self.n)


class _WeightShift:
    """Δ on named weights of one request (leading dimension 1), applied with ``functional_call``."""

    def __init__(
        self,
        model: GRN,
        params: dict[str, Tensor],
        names: tuple[str, ...],
        batch: dict[str, Tensor],
        encoded: Encoded,
        n: int,
        rules: BusinessRules | None,
        temperature: float,
    ):
        if batch["mask"].shape[0] != 1:
            raise ValueError("weight shifts are per request: pass one request at a time")
        self.model, self.params, self.names, self.batch, self.n = model, params, names, batch, n
        self.temperature = temperature
        self.enc = encoded if set(names).isdisjoint(_encoder_params(model)) else None  # reuse θ's encoding
        self.hook = rules_hook(rules, batch) if rules is not None else None
        self.vmap_hook = branch_free_rules_hook(rules, batch) if rules is not None else None

    def reference(self) -> Shifted:
        return {name: self.params[name][None] for name in self.names}

    def _at(self, delta: Shifted, row: int = 0) -> dict[str, Tensor]:
        return self.params | {name: self.params[name] + delta[name][row] for name in self.names}

    def decode(self, delta: Shifted | None, **kwargs) -> dict[str, Tensor]:
        params = self.params if delta is None else self._at(delta)
        kwargs = {"temperature": self.temperature, "allowed_fn": self.hook, "encoded": self.enc} | kwargs
        return functional_call(self.model, params, (self.batch, self.n), kwargs)

    def greedy(self, delta: Shifted | None) -> Tensor:
        with torch.no_grad():
            return self.decode(delta, greedy=True)["choice"]

    def explore(self, delta: Shifted | None, samples: int, generator: torch.Generator,
                with_greedy: bool) -> tuple[Tensor | None, Tensor, tuple[Tensor, Shifted]]:
        """As ``_ActivationShift.explore``; what ``gradients`` reads is the samples' logp [1, S], differentiable
        in the zero ``probe`` of the weights (one request)."""
        greedy = self.greedy(delta) if with_greedy else None
        probe = {name: torch.zeros_like(value, requires_grad=True) for name, value in self.reference().items()}
        with torch.enable_grad():
            at = probe if delta is None else {name: delta[name] + probe[name] for name in probe}
            out = self.decode(at, samples=samples, generator=generator)
        return greedy, out["choice"], (out["logp"], probe)

    def gradients(self, slope: tuple[Tensor, Shifted], weights: Tensor) -> Shifted:
        """As ``_ActivationShift.gradients``; the samples share one probe (the weights), so one pass per D."""
        logp, probe = slope
        d = weights.shape[1]
        with torch.enable_grad():
            objectives = [(weights[:, j] * logp).sum() for j in range(d)]
        grads = [torch.autograd.grad(objectives[j], list(probe.values()), retain_graph=j < d - 1)
                 for j in range(d)]
        return {name: torch.stack([g[i] for g in grads], 1) for i, name in enumerate(probe)}

    def decode_shifted(self, shifts: Shifted) -> Tensor:
        """Greedy lists of K weight shifts [1, K, ...], the K generators vmapped -> choice [1, K, n]."""
        kwargs = {"greedy": True, "allowed_fn": self.vmap_hook, "encoded": self.enc}

        def greedy(shifted: dict[str, Tensor]) -> Tensor:
            return functional_call(self.model, self.params | shifted, (self.batch, self.n), kwargs)["choice"]

        stacked = {name: self.params[name] + shifts[name][0] for name in self.names}
        return vmap(greedy)(stacked).view(1, -1, self.n)


def _encoder_params(model: GRN) -> set[str]:
    """Parameters that ``encode`` reads (a shift of any of them changes the encoding)."""
    decoder = {"start", *POINTER} | {name for name, _ in model.named_parameters() if name.startswith("gru.")}
    return {name for name, _ in model.named_parameters()} - decoder


def _sample_with_grad(space, delta: Shifted | None, samples: int, generator: torch.Generator):
    """S lists sampled at θ+delta: choice [B, S, n] and what ``space.gradients`` reads of their logp."""
    _, choice, slope = space.explore(delta, samples, generator, with_greedy=False)
    return choice, slope


def _directions(space, slope, weights: Tensor) -> Shifted:
    """D weighted gradients of the samples' logp (weights [B, D, S]) -> relative shifts [B, D, ...]."""
    return _relative(space.gradients(slope, weights), space.reference())


def _relative(directions: Shifted, reference: Shifted) -> Shifted:
    """Each direction [B, D, ...] rescaled to the norm of its request's reference tensors [B, ...]."""
    d_norm = sum(d.pow(2).flatten(2).sum(-1) for d in directions.values()).sqrt()  # [B, D]
    r_norm = sum(r.pow(2).flatten(1).sum(-1) for r in reference.values()).sqrt()  # [B]
    factor = r_norm[:, None] / d_norm.clamp_min(1e-12)
    return {name: d * factor.view(*factor.shape, *[1] * (d.dim() - 2)) for name, d in directions.items()}


def _advantage_weights(lr_samples: Tensor, lr_greedy: Tensor, baseline: str, directions: int) -> Tensor:
    """[B, S] sample LR -> [B, D, S]: REINFORCE advantages, then one-hot rows on the best samples."""
    base = lr_samples.mean(1, keepdim=True) if baseline == "mean" else lr_greedy[:, None]  # lr_greedy [B]
    rows = [lr_samples - base]
    order = lr_samples.argsort(1, descending=True)
    for j in range(directions - 1):
        rows.append(torch.nn.functional.one_hot(order[:, j], lr_samples.shape[1]).to(lr_samples.dtype))
    return torch.stack(rows, 1)


class _Best:
    """The best scored list of each request so far."""

    def __init__(self, lists: Tensor):
        self.lists = lists.clone()  # [B, n]
        self.reward = torch.full((lists.shape[0],), float("nan"))
        self.source = np.full(lists.shape[0], "greedy", dtype=object)

    def offer(self, lists: Tensor, reward: Tensor, source: str) -> None:
        """lists [B, L, n] with LR [B, L]; a tie keeps what is already there (the greedy floor first)."""
        top, pick = reward.max(1)
        better = ~(top <= self.reward)  # NaN (unscored floor) loses to any score
        better &= ~torch.isnan(top)
        if better.any():
            rows = torch.arange(len(pick))
            self.lists[better] = lists[rows, pick][better]
            self.reward[better] = top[better]
            self.source[better.numpy()] = source

    def result(self, unscored: Tensor | None, n: int) -> LASTResult:
        """What was found: the best lists so far, and the lists left unscored (none: [B, 0, n])."""
        rows = len(self.lists)
        found = unscored.numpy() if unscored is not None else np.zeros((rows, 0, n), np.int64)
        return LASTResult(self.lists.numpy(), self.reward.numpy(), self.source, found)


class LAST:
    """Learning at serving time over a deployed GRN and evaluator (see the module docstring).

    ``model`` is the GRN or its runner (relist.rerank.grn: eager or compiled). As a generator,
    ``propose`` returns the best list it found for each request [B, 1, n].
    """

    def __init__(self, model: GRN | GRNRunner, scorer: ListScorer, cfg: LASTConfig = LASTConfig()):
        self.runner = as_runner(model)
        self.model, self.scorer, self.cfg = self.runner.model, scorer, cfg
        self.params = {name: value.detach() for name, value in self.model.named_parameters()}
        names = {"activations": (), "pointer": POINTER, "all": tuple(self.params)}[cfg.shift]
        self.names = tuple(name for name in names if name in self.params)
        self._thread = threading.local()

    def _private_model(self) -> GRN:
        """This thread's copy of the GRN, for ``functional_call`` (which swaps parameters while it runs)."""
        if getattr(self._thread, "model", None) is None:
            self._thread.model = copy.deepcopy(self.model)
        return self._thread.model

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        return self._in_chunks(requests, n, ctx, lambda result: result.lists[:, None])

    def unscored(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        """For a caller that scores and chooses among lists anyway (list ranking): the best list LAST scored
        (its greedy floor or a sample) and the K shifted lists, unscored [B, 1 + K, n] — one evaluator call
        fewer than ``propose``. The serial mode scores every step: its best list alone."""
        if self.cfg.mode == "serial":
            return self.propose(requests, n, ctx)
        return self._in_chunks(requests, n, ctx, lambda result: np.concatenate(
            [result.lists[:, None], result.unscored], 1), score_shifts=False)

    def _in_chunks(self, requests: Requests, n: int, ctx: Context, take, score_shifts: bool = True) -> np.ndarray:
        size = 1 if self.cfg.shift != "activations" else self.cfg.batch_size
        out = [take(self.rerank(requests[start:start + size], n, ctx.rows(slice(start, start + size)),
                                score_shifts)) for start in range(0, len(requests), size)]
        return np.concatenate(out) if out else np.zeros((0, 1, n), np.int64)

    def rerank(self, requests: Requests, n: int, ctx: Context, score_shifts: bool = True) -> LASTResult:
        """The best list LAST finds for each request (one request at a time for weight shifts); with
        ``score_shifts=False`` the shifted lists are returned unscored (``LASTResult.unscored``)."""
        with shared.scope():
            return self._rerank(requests, n, ctx, score_shifts)

    @torch.no_grad()
    def _rerank(self, requests: Requests, n: int, ctx: Context, score_shifts: bool) -> LASTResult:
        budget, rows = ctx.budget, len(requests)
        scorer = self.scorer.on_store(ctx.store)
        generator = torch.Generator().manual_seed(self._seed(requests))
        with budget.stage("last.greedy", rows):
            batch, encoded = encoded_requests(self.runner, requests, ctx)
            space = (
                _ActivationShift(self.runner, batch, encoded, n, ctx.rules, self.cfg.temperature)
                if self.cfg.shift == "activations"
                else _WeightShift(self._private_model(), self.params, self.names, batch, encoded, n, ctx.rules,
                                  self.cfg.temperature)
            )

        def score(lists: Tensor) -> Tensor:
            """Pessimistic value of lists [B, L, n] -> [B, L], all in one batch."""
            return pessimistic(scorer.values(requests, lists, ctx.objective), self.cfg.beta)

        def lists_of(choice: Tensor) -> Tensor:
            return chosen_items(batch["candidates"], choice)

        if not budget.affords("last.explore", rows):
            with budget.stage("last.greedy", rows):
                best = _Best(lists_of(space.greedy(None))[:, 0])
            return best.result(None, n)
        with budget.stage("last.explore", rows):  # the greedy floor decodes in the samples' pass
            greedy, choice, slope = space.explore(None, self.cfg.samples, generator, with_greedy=True)
            floor, samples = lists_of(greedy), lists_of(choice)
            best = _Best(floor[:, 0])
            lr = score(torch.cat([floor, samples], 1))
            lr_greedy, lr = lr[:, 0], lr[:, 1:]
            best.offer(floor, lr_greedy[:, None], "greedy")
            if self.cfg.serve_samples:
                best.offer(samples, lr, "sample")
        if self.cfg.mode == "parallel":
            found = self._parallel(space, lists_of, score if score_shifts else None, (lr, slope, lr_greedy),
                                   best, budget, rows)
        else:
            found = self._serial(space, lists_of, score, (lr, slope, lr_greedy), generator, best, budget,
                                 rows)
        return best.result(found, n)

    def _parallel(self, space, lists_of, score, explored, best, budget: Budget, rows: int) -> Tensor | None:
        """The K shifted generators' lists, offered to ``best`` when ``score`` is given, else returned."""
        lr, slope, lr_greedy = explored
        if not budget.affords("last.gradient", rows):
            return None
        with budget.stage("last.gradient", rows):
            weights = _advantage_weights(lr, lr_greedy, self.cfg.baseline, self.cfg.directions)
            directions = _directions(space, slope, weights)
            steps = torch.tensor(self.cfg.step_sizes)
            shifts = {
                name: (d[:, :, None] * steps.view(1, 1, -1, *[1] * (d.dim() - 2))).flatten(1, 2)
                for name, d in directions.items()
            }  # [B, D·len(steps), ...]
        if not budget.affords("last.decode", rows):
            return None
        with budget.stage("last.decode", rows):
            lists = lists_of(space.decode_shifted(shifts))
        if score is None:
            return lists
        if budget.affords("last.score", rows):
            with budget.stage("last.score", rows):
                best.offer(lists, score(lists), "shift")
        return None

    def _serial(self, space, lists_of, score, explored, generator, best, budget: Budget, rows: int) -> None:
        lr, slope, lr_greedy = explored
        delta = None
        for step in range(self.cfg.serial_steps):
            if step:
                if not budget.affords("last.explore", rows):
                    return
                with budget.stage("last.explore", rows):
                    _, choice, slope = space.explore(delta, self.cfg.samples, generator, with_greedy=False)
                    samples = lists_of(choice)
                    lr = score(samples)
                    if self.cfg.serve_samples:
                        best.offer(samples, lr, "sample")
            if not budget.affords("last.gradient", rows):
                return
            with budget.stage("last.gradient", rows):
                weights = _advantage_weights(lr, lr_greedy, self.cfg.baseline, 1)
                moved = _directions(space, slope, weights)
                delta = {
                    name: self.cfg.serial_step * d[:, 0] + (0 if delta is None else delta[name])
                    for name, d in moved.items()
                }
            if not budget.affords("last.decode", rows):
                return
            with budget.stage("last.decode", rows):
                lists = lists_of(space.greedy(delta))
                lr_greedy = score(lists)[:, 0]
                best.offer(lists, lr_greedy[:, None], "serial")

    def _seed(self, requests: Requests) -> int:
        """A per-call sampling seed from the config seed and the request ids: reproducible and thread-safe."""
        return zlib.crc32(np.asarray(requests.request_id, dtype=np.int64).tobytes(), self.cfg.seed)
