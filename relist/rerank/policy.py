"""The generators every table starts with: they need no trained model.

* ``upstream``: the first n candidates as the upstream stage delivered them (the serving floor);
* ``greedy_upstream_score``: slot by slot the best upstream score the business rules allow — the
  logging policy's own choice without its exploration;
* ``random``: a uniformly random order that keeps the rules (the exploration bucket's lists).
"""

from __future__ import annotations

import zlib

import numpy as np

from relist.data.requests import Requests
from relist.rerank.beam import greedy_under_rules
from relist.rerank.generators import Context, as_proposals


class Upstream:
    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        return as_proposals(requests.candidates[:, :n])


class GreedyUpstreamScore:
    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        order = -np.arange(requests.mask.shape[1], dtype=np.float64)[None, :]
        scores = np.where(np.isnan(requests.cand_scores), order, requests.cand_scores)  # none sent: the order
        return as_proposals(greedy_under_rules(scores, requests, n, ctx))


class RandomOrder:
    """A random rule-keeping order, drawn from the request ids and ``seed`` (reproducible per request)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(requests.request_id.tobytes())])
        keys = rng.random(requests.candidates.shape) + 1.0
        return as_proposals(greedy_under_rules(keys, requests, n, ctx))
