"""The GRN generator as a list generator, under the business rules.

``GRNGreedy`` proposes the most likely list; ``GRNSamples`` draws ``samples`` lists per request at a
temperature (list ranking then chooses among them with the evaluator). Both decode with the rules
masking every slot, relaxed step by step where nothing fits. A GRN conditioned on the objective
(``grn_cmr``: relist.models.generator.ObjectiveInput) reads each request's weights from ``ctx.objective``,
so the same trained model proposes other lists when a request values spend over clicks.

How the GRN runs is a :class:`GRNRunner`: this module's runs the torch modules eagerly; the
compiled one (relist.rerank.compiled) runs the same encoder and slot loop as ONNX graphs and
returns the same lists. Within one list-ranking call the encoding of a batch of requests is
computed once and shared by every generator that decodes from it (relist.rerank.shared).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

from relist.data.requests import Requests
from relist.models.contract import AllowedFn
from relist.models.generator import GRN, Encoded, chosen_items, gumbel_noise
from relist.models.inputs import list_inputs
from relist.rerank import shared
from relist.rerank.generators import Context
from relist.rerank.rules import BusinessRules

RULE_INPUTS = ("cate", "shop", "candidates", "mask")  # what the rules read of a decoded row [N, m]


def rules_hook(rules: BusinessRules, batch: dict[str, Tensor]) -> AllowedFn:
    """The GRN's per-slot hook for ``rules`` over the requests of ``batch`` (relaxed when nothing fits)."""
    cates, shops, ids = batch["cate"], batch["shop"], batch["candidates"]

    def allowed(rows: Tensor, prefix: Tensor, chosen: Tensor, slot: int) -> Tensor:
        cand_cates, cand_shops = cates[rows], shops[rows]
        column = prefix.clamp_min(0)
        mask, _ = rules.feasible_mask(
            cand_cates.gather(1, column),
            cand_shops.gather(1, column),
            cand_cates,
            cand_shops,
            chosen,
            slot,
            cand_ids=ids[rows],
            cand_mask=batch["mask"][rows],
        )
        return mask

    return allowed


def relaxation_levels(rules: BusinessRules) -> list[dict]:
    """``feasible_mask``'s relaxation steps, leaving out those that cannot change the mask under ``rules``
    (no shop cap: dropping it changes nothing; no pinned slot: nothing is reserved)."""
    levels = [{"window": w} for w in range(rules.cate_window - 1, -1, -1)]
    if rules.max_per_shop is not None:
        levels.append({"window": 0, "shop_cap": False})
    if rules.pinned:
        levels.append({"window": 0, "shop_cap": False, "reserve_pinned": False})
    return levels


def branch_free_rules_hook(rules: BusinessRules, batch: dict[str, Tensor]) -> AllowedFn:
    """``rules_hook`` without data-dependent branches, so it runs under ``vmap`` and traces into a graph.

    Same relaxation order as ``BusinessRules.feasible_mask`` (narrower scatter window, then no shop
    cap, then pinned items freed), every level computed and the first that leaves a candidate picked
    per row, with boolean algebra only (ONNX Runtime has no boolean ``Where``).
    """
    cates, shops, ids, real = batch["cate"], batch["shop"], batch["candidates"], batch["mask"]
    levels = relaxation_levels(rules)

    def allowed(rows: Tensor, prefix: Tensor, chosen: Tensor, slot: int) -> Tensor:
        column = prefix.clamp_min(0)
        args = (
            cates[rows].gather(1, column),
            shops[rows].gather(1, column),
            cates[rows],
            shops[rows],
            chosen,
            slot,
        )
        kwargs = {"cand_ids": ids[rows], "cand_mask": real[rows]}
        mask = rules.allowed_mask(*args, **kwargs)
        for level in levels:
            mask = mask | (~mask.any(1, keepdim=True) & rules.allowed_mask(*args, **kwargs, **level))
        return mask

    return allowed


def request_batch(requests: Requests, ctx: Context) -> dict[str, Tensor]:
    """The GRN's inputs for a batch of requests, with the categories and shops the rules read."""
    batch = list_inputs(ctx.store, requests)
    batch["cate"], batch["shop"] = ctx.attributes(requests)
    return batch


def expand(enc: Encoded, batch: dict[str, Tensor], rows: Tensor) -> tuple[Encoded, dict[str, Tensor]]:
    """The encoding and the rules' inputs of decoded rows: request ``rows[i]`` for row i."""
    return (Encoded(enc.candidates[rows], enc.state[rows], enc.mask[rows]),
            {name: batch[name][rows] for name in RULE_INPUTS})


class GRNRunner:
    """A GRN run eagerly: ``encode`` a batch of requests, ``decode`` rows of an encoding under the rules.

    ``decode(enc, rule_inputs, n, rules, noise, temperature)`` fills ``n`` slots of each of the N rows
    of ``enc`` (``rule_inputs``: :data:`RULE_INPUTS` per row, [N, m]) and returns the candidate
    columns [N, n] (-1 once nothing is left), the log-probability of each pick [N, n] and the
    candidates each slot allowed [N, n, m]. ``noise`` [N, n, m] is Gumbel noise for sampled rows and
    zero for greedy ones (None: all greedy). ``logp_gradients`` is what LAST's gradient reads.
    """

    compiled = False

    def __init__(self, model: GRN):
        self.model = model.eval()

    def encode(self, batch: dict[str, Tensor]) -> Encoded:
        return self.model.encode(batch)

    def decode(self, enc: Encoded, rule_inputs: dict[str, Tensor], n: int, rules: BusinessRules | None,
               noise: Tensor | None = None, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        rows = torch.arange(len(enc.state))
        hook = rules_hook(rules, rule_inputs) if rules is not None else None
        return self.model.decode_rows(enc, n, rows, hook, noise, temperature, with_allowed=True)

    def logp_gradients(self, enc: Encoded, choice: Tensor, allowed: Tensor,
                       temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """The gradient of each decoded row's log-probability of its picks (choice [N, n] and allowed masks
        [N, n, m] as ``decode`` returned them) in its candidate states [N, m, h] and first state [N, h]."""
        probe = (torch.zeros_like(enc.candidates, requires_grad=True),
                 torch.zeros_like(enc.state, requires_grad=True))
        with torch.enable_grad():
            probed = Encoded(enc.candidates + probe[0], enc.state + probe[1], enc.mask)
            logp = self.model.forced_logp(probed, choice, allowed, temperature).sum()
            return torch.autograd.grad(logp, probe)


def as_runner(model: GRN | GRNRunner) -> GRNRunner:
    return model if isinstance(model, GRNRunner) else GRNRunner(model)


def encoded_requests(runner: GRNRunner, requests: Requests, ctx: Context) -> tuple[dict[str, Tensor], Encoded]:
    """The GRN's inputs and encoding of a batch of requests, computed once per list-ranking call (and per
    objective, for a GRN conditioned on it)."""
    weights = ctx.objective_weights(len(requests)) if runner.model.cfg.conditioned else None

    def compute():
        batch = request_batch(requests, ctx)
        if weights is not None:
            batch["objective"] = torch.as_tensor(weights, dtype=torch.float32)
        with torch.no_grad():
            return batch, runner.encode(batch)

    return shared.once("grn.encode", runner.model, requests, ctx.store, compute, ctx.cates, ctx.shops, weights)


def decode_requests(runner: GRNRunner, batch: dict[str, Tensor], enc: Encoded, n: int, rules: BusinessRules | None,
                    samples: int = 1, greedy_first: bool = False, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``samples`` decoded rows per request in one pass: choice [B, S, n], step log-probabilities [B, S, n]
    and allowed masks [B, S, n, m]. Rows are sampled (noise from ``generator``), except the first of each
    request when ``greedy_first``, and all of them when ``temperature`` is None."""
    b, m = enc.mask.shape
    rows = torch.arange(b).repeat_interleave(samples)
    noise = None
    if temperature is not None:
        drawn = samples - int(greedy_first)
        noise = gumbel_noise((b * drawn, n, m), generator)
        if greedy_first:
            noise = torch.cat([torch.zeros(b, 1, n, m), noise.view(b, drawn, n, m)], 1).view(b * samples, n, m)
    with torch.no_grad():
        choice, step_logp, allowed = runner.decode(*expand(enc, batch, rows), n, rules, noise,
                                                   1.0 if temperature is None else temperature)
    return choice.view(b, samples, n), step_logp.view(b, samples, n), allowed.view(b, samples, n, m)


class GRNGreedy:
    """The GRN's most likely list per request."""

    def __init__(self, model: GRN | GRNRunner, batch_size: int = 1024):
        self.runner, self.batch_size = as_runner(model), batch_size
        self.model = self.runner.model

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        return _in_batches(self, requests, n, ctx, temperature=None)

    def decode(self, requests: Requests, n: int, ctx: Context, samples: int = 1, temperature: float | None = None,
               generator: torch.Generator | None = None) -> np.ndarray:
        batch, enc = encoded_requests(self.runner, requests, ctx)
        choice, _, _ = decode_requests(self.runner, batch, enc, n, ctx.rules, samples, temperature=temperature,
                                       generator=generator)
        return chosen_items(batch["candidates"], choice).numpy()


class GRNSamples(GRNGreedy):
    """``samples`` lists per request drawn at ``temperature``; the draws depend on the request ids and ``seed``."""

    def __init__(self, model: GRN | GRNRunner, samples: int = 8, temperature: float = 1.0, seed: int = 0,
                 batch_size: int = 1024):
        super().__init__(model, batch_size)
        self.samples, self.temperature, self.seed = samples, temperature, seed

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        generator = torch.Generator().manual_seed(zlib.crc32(requests.request_id.tobytes(), self.seed))
        return _in_batches(self, requests, n, ctx, samples=self.samples, temperature=self.temperature,
                           generator=generator)


def _in_batches(grn: GRNGreedy, requests: Requests, n: int, ctx: Context, **settings) -> np.ndarray:
    parts = [grn.decode(requests[start:start + grn.batch_size], n, ctx.rows(slice(start, start + grn.batch_size)),
                        **settings)
             for start in range(0, len(requests), grn.batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1, n), np.int64)
