"""The GRN generator as a list generator, under the business rules.

``GRNGreedy`` proposes the most likely list; ``GRNSamples`` draws ``samples`` lists per request at a
temperature (list ranking then chooses among them with the evaluator). Both decode with the rules
masking every slot (:func:`rules_hook`), relaxed step by step where nothing fits.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

from relist.data.requests import Requests
from relist.models.generator import GRN, AllowedFn, chosen_items
from relist.models.inputs import list_inputs
from relist.rerank.generators import Context
from relist.rerank.rules import BusinessRules


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


def request_batch(requests: Requests, ctx: Context) -> dict[str, Tensor]:
    """The GRN's inputs for a batch of requests, with the categories and shops the rules read."""
    batch = list_inputs(ctx.store, requests)
    batch["cate"], batch["shop"] = ctx.attributes(requests)
    return batch


class GRNGreedy:
    """The GRN's most likely list per request."""

    def __init__(self, model: GRN, batch_size: int = 1024):
        self.model, self.batch_size = model.eval(), batch_size

    @torch.no_grad()
    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        return _in_batches(self, requests, n, ctx, greedy=True, samples=1)

    def decode(self, requests: Requests, n: int, ctx: Context, **settings) -> np.ndarray:
        batch = request_batch(requests, ctx)
        out = self.model(batch, n, allowed_fn=rules_hook(ctx.rules, batch), **settings)
        return chosen_items(batch["candidates"], out["choice"]).numpy()


class GRNSamples(GRNGreedy):
    """``samples`` lists per request drawn at ``temperature``; the draws depend on the request ids and ``seed``."""

    def __init__(self, model: GRN, samples: int = 8, temperature: float = 1.0, seed: int = 0,
                 batch_size: int = 1024):
        super().__init__(model, batch_size)
        self.samples, self.temperature, self.seed = samples, temperature, seed

    @torch.no_grad()
    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        generator = torch.Generator().manual_seed(zlib.crc32(requests.request_id.tobytes(), self.seed))
        return _in_batches(self, requests, n, ctx, samples=self.samples, temperature=self.temperature,
                           generator=generator)


def _in_batches(grn: GRNGreedy, requests: Requests, n: int, ctx: Context, **settings) -> np.ndarray:
    parts = [grn.decode(requests[start:start + grn.batch_size], n, ctx.rows(slice(start, start + grn.batch_size)),
                        **settings)
             for start in range(0, len(requests), grn.batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1, n), np.int64)
