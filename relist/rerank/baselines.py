"""The baselines as generators, all under the same business rules as every other generator.

* greedy by learned CTR: fill each slot with the allowed candidate of highest ``p_ctr``;
* PRM, DLCM and Seq2Slate decode the initial list (candidates in upstream-score order) with the
  rules masking each slot: PRM and DLCM fill each slot with the allowed candidate of highest score,
  Seq2Slate follows its pointer network.
"""

from __future__ import annotations

import numpy as np
import torch

from relist.data.requests import Requests
from relist.models.baselines.inputs import initial_list_inputs, initial_order
from relist.models.contract import ListGenerator
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
    """A trained list generator (PRM, DLCM, Seq2Slate) decoding the initial list under the rules."""

    def __init__(self, model: ListGenerator, batch_size: int = 1024):
        self.model, self.batch_size = model.eval(), batch_size

    @torch.no_grad()
    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        out = [self._rerank(requests[start:start + self.batch_size], n,
                            ctx.rows(slice(start, start + self.batch_size)))
               for start in range(0, len(requests), self.batch_size)]
        return as_proposals(np.concatenate(out) if out else np.zeros((0, n), np.int64))

    def _rerank(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        order = initial_order(np.nan_to_num(requests.cand_scores, nan=0.0), requests.mask)
        initial, ctx = requests.reorder(order), ctx.reorder(order)
        batch = initial_list_inputs(ctx.store, requests.user_id, initial.candidates, initial.cand_scores)
        batch["cate"], batch["shop"] = ctx.attributes(initial)  # what the rules read (a request's own, if given)
        if self.model.prefix_free:  # the lists of decode's slot loop, filled in numpy in a third of the time
            return greedy_under_rules(self.model.predict(batch)["score"].numpy(), initial, n, ctx)
        columns = self.model.decode(batch, n, rules_hook(ctx.rules, batch))
        return chosen_items(batch["candidates"], columns[:, None]).numpy()[:, 0]
