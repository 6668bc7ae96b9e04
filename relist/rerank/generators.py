"""The generator contract: every way of proposing lists has one signature.

A generator proposes ordered lists for a batch of requests::

    propose(requests, n, ctx) -> [B, K, n] item ids   (PAD_ID where a request has fewer than n candidates)

with its preferred list first. It keeps no per-request state: what differs per request or per
call — the feature store view, the attributes the business rules read, the objective and the time
budget — arrives in ``ctx`` (:class:`Context`). Generators are built by name from the trained
models (relist.rerank.registry), and :class:`~relist.rerank.list_ranking.ListRanking` is the only
place that chooses among their lists, for the evaluation, the server and every benchmark alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.objective import Objective
from relist.rerank.budget import Budget
from relist.rerank.rules import BusinessRules, item_attributes


@dataclass(frozen=True)
class Context:
    """What a generator reads besides the requests themselves."""

    store: FeatureStore  # the model version's store, or a view carrying a request's user overrides
    rules: BusinessRules = BusinessRules()
    objective: Objective | np.ndarray = field(default_factory=Objective)  # or per-request weights [B, 4]
    budget: Budget = field(default_factory=Budget)
    cates: np.ndarray | None = None  # [B, m] category of each candidate as the rules read it (None: store's)
    shops: np.ndarray | None = None  # [B, m] shop of each candidate (None: store's)

    def attributes(self, requests: Requests) -> tuple[torch.Tensor, torch.Tensor]:
        """Category and shop of every candidate [B, m], request overrides applied (0 = unknown)."""
        if self.cates is None or self.shops is None:
            cates, shops = item_attributes(self.store, requests.candidates)
        if self.cates is not None:
            cates = torch.as_tensor(self.cates, dtype=torch.long)
        if self.shops is not None:
            shops = torch.as_tensor(self.shops, dtype=torch.long)
        return cates, shops

    def rows(self, rows: np.ndarray | slice) -> Context:
        """The context of a sub-batch of the requests (same store, rules and budget)."""
        def pick(x):
            return None if x is None else x[rows]

        objective = self.objective if isinstance(self.objective, Objective) else self.objective[rows]
        return replace(self, objective=objective, cates=pick(self.cates), shops=pick(self.shops))

    def reorder(self, order: np.ndarray) -> Context:
        """The context of the same requests with their candidates in ``order`` (``Requests.reorder``)."""
        def take(x):
            return None if x is None else np.take_along_axis(np.asarray(x), order, 1)

        return replace(self, cates=take(self.cates), shops=take(self.shops))

    def objective_weights(self, b: int) -> np.ndarray:
        """Each of the ``b`` requests' objective weights [B, 4]: the one objective for all, or each one's own."""
        if isinstance(self.objective, Objective):
            return np.tile(self.objective.vector(), (b, 1))
        return np.asarray(self.objective, dtype=np.float64)

    def keeps_rules(self, requests: Requests, lists: np.ndarray) -> np.ndarray:
        """Per proposal [B, K]: True when it keeps the business rules (pinned slots checked by id)."""
        b, k, n = lists.shape
        columns = requests.columns_of(lists).reshape(b, k * n)
        cates, shops = (np.asarray(x) for x in self.attributes(requests))
        at, real = np.maximum(columns, 0), columns >= 0
        list_cates = np.where(real, np.take_along_axis(cates, at, 1), 0).reshape(b * k, n)
        list_shops = np.where(real, np.take_along_axis(shops, at, 1), 0).reshape(b * k, n)
        candidates = np.repeat(requests.candidates, k, 0)
        return self.rules.check(list_cates, list_shops, lists.reshape(b * k, n), candidates).reshape(b, k)


class Generator(Protocol):
    """Anything that proposes lists: ``propose(requests, n, ctx) -> [B, K, n]`` item ids, best first."""

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray: ...


def first_list(generator: Generator, requests: Requests, n: int, ctx: Context) -> np.ndarray:
    """A generator as a policy: its preferred list per request, [B, n]."""
    return generator.propose(requests, n, ctx)[:, 0]


def as_proposals(lists: np.ndarray) -> np.ndarray:
    """One list per request [B, n] as proposals [B, 1, n]."""
    return np.asarray(lists)[:, None, :]
