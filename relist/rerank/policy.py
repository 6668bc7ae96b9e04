"""What a re-ranking policy is, and the simple ones every table starts with.

A policy maps a batch of requests to one ordered list of ``n`` candidate ids
per request. Learned policies (beam search, GRN, list retrieval, LAST) follow
the same signature, so the evaluation never needs to know which it runs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from relist.data.requests import Requests


class Policy(Protocol):
    def __call__(self, requests: Requests, n: int) -> np.ndarray:  # [B, n] item ids
        ...


def upstream_order(requests: Requests, n: int) -> np.ndarray:
    """The first n candidates as the upstream stage delivered them."""
    return requests.candidates[:, :n]


def greedy_by_score(requests: Requests, n: int) -> np.ndarray:
    """Sort by the upstream point-wise score: the context-blind default of a feed."""
    scores = np.where(requests.mask, requests.cand_scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(requests.candidates, order, 1)


def random_order(seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)

    def policy(requests: Requests, n: int) -> np.ndarray:
        keys = np.where(requests.mask, rng.random(requests.candidates.shape), -np.inf)
        order = np.argsort(-keys, axis=1)[:, :n]
        return np.take_along_axis(requests.candidates, order, 1)

    return policy


SIMPLE_POLICIES: dict[str, Policy] = {
    "upstream": upstream_order,
    "greedy_upstream_score": greedy_by_score,
    "random": random_order(0),
}
