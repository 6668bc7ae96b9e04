"""List ranking: the second step of list retrieval — every proposed list is scored, the best is served.

Several generators (beam search, GRN greedy and samples, the upstream order, ...)
each propose lists for a request. Duplicates are dropped, all remaining lists
of the batch are scored by the evaluator in one call, and per request the list
with the highest list reward LR is served, together with the generator that
proposed it. Lists that break a business rule are served only when no
proposal keeps them all (and are then flagged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.rerank.list_scorer import ListScorer
from relist.rerank.rules import BusinessRules, item_attributes

Proposer = Callable[[Requests, int], np.ndarray]
"""Lists proposed for a batch: [B, K, n] item ids, or [B, n] for one list per request (any Policy)."""


@dataclass
class RankedLists:
    lists: np.ndarray  # [B, n] served item ids
    reward: np.ndarray  # [B] LR of the served list
    source: np.ndarray  # [B] index into ``generators`` of the generator that proposed it first
    generators: list[str]
    breaks_rules: np.ndarray  # [B] bool: no proposal kept every rule
    proposals: int  # distinct lists scored in the batch

    def source_names(self) -> np.ndarray:
        return np.asarray(self.generators)[self.source]


class ListRanking:
    """``policy(requests, n)`` serving the highest-LR proposal; ``rank`` also says where it came from."""

    def __init__(self, generators: Mapping[str, Proposer], scorer: ListScorer, store: FeatureStore,
                 rules: BusinessRules | None = None):
        if not generators:
            raise ValueError("list ranking needs at least one generator")
        self.generators, self.scorer, self.store, self.rules = dict(generators), scorer, store, rules

    def __call__(self, requests: Requests, n: int) -> np.ndarray:
        return self.rank(requests, n).lists

    def rank(self, requests: Requests, n: int) -> RankedLists:
        proposals, source = self.propose(requests, n)
        B, K, _ = proposals.shape
        fresh = ~duplicates(proposals)
        rows, cols = np.nonzero(fresh)
        reward = np.full((B, K), -np.inf)
        reward[rows, cols] = self.scorer.list_reward(requests.user_id[rows], proposals[rows, cols])
        keeps = self._keeps_rules(requests, proposals) & fresh
        any_keeps = keeps.any(1)
        eligible = np.where(any_keeps[:, None], keeps, fresh)
        pick = np.where(eligible, reward, -np.inf).argmax(1)
        at = np.arange(B)
        return RankedLists(proposals[at, pick], reward[at, pick], source[pick], list(self.generators),
                           ~any_keeps, len(rows))

    def propose(self, requests: Requests, n: int) -> tuple[np.ndarray, np.ndarray]:
        """All generators' lists side by side [B, K, n] and the generator index of each of the K columns."""
        parts, source = [], []
        for index, generate in enumerate(self.generators.values()):
            lists = np.asarray(generate(requests, n))
            lists = lists[:, None] if lists.ndim == 2 else lists
            parts.append(lists)
            source += [index] * lists.shape[1]
        return np.concatenate(parts, 1), np.asarray(source)

    def _keeps_rules(self, requests: Requests, proposals: np.ndarray) -> np.ndarray:
        if self.rules is None:
            return np.ones(proposals.shape[:2], bool)
        B, K, n = proposals.shape
        flat = proposals.reshape(B * K, n)
        cates, shops = item_attributes(self.store, flat)
        candidates = torch.as_tensor(np.repeat(requests.candidates, K, 0))
        ok = self.rules.check(cates, shops, torch.as_tensor(flat), candidates)
        return ok.numpy().reshape(B, K)


def duplicates(lists: np.ndarray) -> np.ndarray:
    """[B, K] True where a list equals an earlier list of the same request (the first one is kept)."""
    same = (lists[:, :, None, :] == lists[:, None, :, :]).all(-1)  # [B, K, K]
    earlier = np.tri(lists.shape[1], k=-1, dtype=bool)  # j < i
    return (same & earlier).any(2)
