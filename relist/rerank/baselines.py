"""The baselines as re-ranking policies, all under the same business rules as every other generator.

* greedy by learned CTR: fill each slot with the allowed candidate of highest ``p_ctr``;
* PRM and DLCM rescore the initial list (candidates in upstream-score order) and
  fill each slot with the allowed candidate of highest score;
* Seq2Slate decodes its pointer network with the rules masking each slot.

"Allowed" is relist.rerank.rules: greedy under the rules is a width-1 beam
that values only the summed scores (``ListValue(pv=0, ipv=1)`` with no scroll
loss), so the rule handling lives in one place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.models.baselines.inputs import initial_list_inputs, initial_order
from relist.models.baselines.seq2slate import Seq2Slate
from relist.models.baselines.spec import load_baseline
from relist.models.generator import chosen_items
from relist.rerank.beam import ListValue, ScoresFn, beam_search
from relist.rerank.grn_policy import rules_hook
from relist.rerank.policy import Policy
from relist.rerank.rules import BusinessRules, item_attributes

SCORE_SUM = ListValue(pv=0.0, ipv=1.0, gmv=0.0)


def greedy_under_rules(scores: np.ndarray, requests: Requests, store: FeatureStore, rules: BusinessRules,
                       n: int) -> np.ndarray:
    """Item ids [B, n]: slot by slot the allowed candidate with the highest score (any real scale)."""
    cates, shops = item_attributes(store, requests.candidates)
    out = beam_search(scores, np.ones_like(scores), requests.candidates, cates, shops, requests.mask, n, 1,
                      SCORE_SUM, rules)
    return out.items[:, 0]


def greedy_by_ctr(scores: ScoresFn, store: FeatureStore, rules: BusinessRules) -> Policy:
    """Sort by the learned point-wise CTR: the context-blind baseline every list model must beat."""

    def policy(requests: Requests, n: int) -> np.ndarray:
        return greedy_under_rules(scores(requests)["ctr"], requests, store, rules, n)

    return policy


class BaselinePolicy:
    """A trained PRM, DLCM or Seq2Slate as ``policy(requests, n) -> [B, n]`` item ids."""

    def __init__(self, model: nn.Module, store: FeatureStore, rules: BusinessRules, batch_size: int = 1024):
        self.model, self.store, self.rules, self.batch_size = model.eval(), store, rules, batch_size

    @classmethod
    def load(cls, model_dir: str | Path, store: FeatureStore, rules: BusinessRules) -> BaselinePolicy:
        return cls(load_baseline(model_dir)[0], store, rules)

    @torch.no_grad()
    def __call__(self, requests: Requests, n: int) -> np.ndarray:
        out = [self._rerank(requests[start:start + self.batch_size], n)
               for start in range(0, len(requests), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, n), np.int64)

    def _rerank(self, requests: Requests, n: int) -> np.ndarray:
        order = initial_order(requests.cand_scores, requests.mask)
        initial = Requests(requests.request_id, requests.user_id,
                           *(np.take_along_axis(x, order, 1) for x in
                             (requests.candidates, requests.cand_scores, requests.mask)))
        batch = initial_list_inputs(self.store, initial.user_id, initial.candidates, initial.cand_scores)
        if isinstance(self.model, Seq2Slate):
            columns = self.model.decode(batch, n, rules_hook(self.rules, batch))
            return chosen_items(batch["candidates"], columns[:, None]).numpy()[:, 0]
        scores = self.model(batch)["score"].numpy()
        return greedy_under_rules(scores, initial, self.store, self.rules, n)
