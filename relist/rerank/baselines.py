"""The baselines as generators, all under the same business rules as every other generator.

* greedy by learned CTR: fill each slot with the allowed candidate of highest ``p_ctr``;
* PRM and DLCM rescore the initial list (candidates in upstream-score order) and fill each slot
  with the allowed candidate of highest score;
* Seq2Slate decodes its pointer network with the rules masking each slot.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from relist.data.requests import Requests
from relist.models.baselines.inputs import initial_list_inputs, initial_order
from relist.models.baselines.seq2slate import Seq2Slate
from relist.models.generator import chosen_items
from relist.rerank.beam import ScoresFn, greedy_under_rules
from relist.rerank.generators import Context, as_proposals
from relist.rerank.grn import rules_hook


class GreedyCTR:
    """Sort by the learned point-wise CTR: the context-blind baseline every list model must beat."""

    def __init__(self, scores: ScoresFn):
        self.scores = scores

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        return as_proposals(greedy_under_rules(self.scores(requests, ctx.store)["ctr"], requests, n, ctx))


class Baseline:
    """A trained PRM, DLCM or Seq2Slate re-ranking the initial list."""

    def __init__(self, model: nn.Module, batch_size: int = 1024):
        self.model, self.batch_size = model.eval(), batch_size

    @torch.no_grad()
    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        out = [self._rerank(requests[start:start + self.batch_size], n,
                            ctx.rows(slice(start, start + self.batch_size)))
               for start in range(0, len(requests), self.batch_size)]
        return as_proposals(np.concatenate(out) if out else np.zeros((0, n), np.int64))

    def _rerank(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        order = initial_order(np.nan_to_num(requests.cand_scores, nan=0.0), requests.mask)
        cates, shops = (x.numpy() for x in ctx.attributes(requests))
        initial = Requests(requests.request_id, requests.user_id,
                           *(np.take_along_axis(x, order, 1) for x in
                             (requests.candidates, requests.cand_scores, requests.mask)))
        ctx = replace(ctx, cates=np.take_along_axis(cates, order, 1), shops=np.take_along_axis(shops, order, 1))
        batch = initial_list_inputs(ctx.store, initial.user_id, initial.candidates, initial.cand_scores)
        if isinstance(self.model, Seq2Slate):
            batch["cate"], batch["shop"] = ctx.attributes(initial)
            columns = self.model.decode(batch, n, rules_hook(ctx.rules, batch))
            return chosen_items(batch["candidates"], columns[:, None]).numpy()[:, 0]
        scores = self.model(batch)["score"].numpy()
        return greedy_under_rules(scores, initial, n, ctx)
