"""Beam search list recall over point-wise click (``p_ctr``) and keep-scrolling (``p_next``) scores.

A user sees slot j only if they kept scrolling past every item before it, so
the exposure of slot j is the product of ``p_next`` of the items in front of
it. Expected PV is the sum of exposures, expected IPV the sum of exposure ×
``p_ctr``, expected GMV the sum of exposure × ``p_buy`` × price (when a
purchase model exists); the list value is ``r = a·PV + b·IPV + c·GMV``. Greedy
sorting ignores that an item with a high CTR but a low ``p_next`` hides the
rest of the list; the beam keeps the ``k`` best prefixes to see it.

Scores come in as arrays, so the search does not care which model made them.
Candidates that break the business rules are never expanded; a prefix that
can only go on by relaxing a rule (relist.rerank.rules) ranks below every
prefix that keeps them, and the returned list is flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from relist.data.features import FeatureStore
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.rerank.rules import BusinessRules, item_attributes

# A relaxed rule costs more than any list can be worth, so rule-keeping lists always rank first.
RELAX_PENALTY = 1e9


@dataclass(frozen=True)
class ListValue:
    """Weights of the list value ``r = pv·PV + ipv·IPV + gmv·GMV``."""

    pv: float = 1.0
    ipv: float = 1.0
    gmv: float = 0.0


@dataclass
class BeamLists:
    """The ``k`` best lists per request, best first (padded lists have value -inf and valid False)."""

    index: np.ndarray  # [B, k, n] candidate columns (m where a request ran out of candidates)
    items: np.ndarray  # [B, k, n] item ids (PAD_ID where it ran out)
    value: np.ndarray  # [B, k] r
    pv: np.ndarray  # [B, k]
    ipv: np.ndarray  # [B, k]
    gmv: np.ndarray  # [B, k]
    relaxed: np.ndarray  # [B, k] bool: a business rule had to be relaxed
    valid: np.ndarray  # [B, k] bool: a real list (False when fewer than k lists exist)


def beam_search(
    p_ctr: np.ndarray,
    p_next: np.ndarray,
    cand_ids: np.ndarray,
    cand_cates: np.ndarray,
    cand_shops: np.ndarray,
    cand_mask: np.ndarray,
    n: int,
    k: int = 8,
    weights: ListValue = ListValue(),
    rules: BusinessRules = BusinessRules(),
    p_buy: np.ndarray | None = None,
    price: np.ndarray | None = None,
) -> BeamLists:
    """Search lists of ``n`` of the ``m`` candidates [B, m] that maximise the expected list value."""
    ctr, nxt, ids, cates, shops, mask = (torch.as_tensor(np.asarray(x)) for x in
                                         (p_ctr, p_next, cand_ids, cand_cates, cand_shops, cand_mask))
    ctr, nxt = ctr.double(), nxt.double()
    mask = mask.bool()
    gmv = (torch.as_tensor(np.asarray(p_buy)).double() * torch.as_tensor(np.asarray(price)).double()
           if p_buy is not None and price is not None else torch.zeros_like(ctr))
    B, m = ctr.shape
    # One extra "nothing left" column (index m) lets a request with fewer than n candidates finish.
    ctr, nxt, gmv = (torch.cat([x, torch.zeros(B, 1, dtype=x.dtype)], 1) for x in (ctr, nxt, gmv))
    ids = torch.cat([ids, torch.full((B, 1), PAD_ID, dtype=ids.dtype)], 1)
    cates, shops = (torch.cat([x, torch.zeros(B, 1, dtype=x.dtype)], 1) for x in (cates, shops))
    real = torch.cat([mask, torch.zeros(B, 1, dtype=torch.bool)], 1)

    key = torch.full((B, k), -torch.inf, dtype=torch.float64)
    key[:, 0] = 0.0  # one empty prefix to start from
    exposure = torch.ones(B, k, dtype=torch.float64)
    totals = torch.zeros(B, k, 3, dtype=torch.float64)  # PV, IPV, GMV
    relaxed = torch.zeros(B, k, dtype=torch.bool)
    chosen = torch.zeros(B, k, m + 1, dtype=torch.bool)
    prefix = torch.zeros(B, k, 0, dtype=torch.long)
    gains = torch.stack([real.double(), ctr, gmv], -1)  # per exposure, [B, m+1, 3]
    w = torch.tensor([weights.pv, weights.ipv, weights.gmv], dtype=torch.float64)
    beam_cates, beam_shops, beam_ids, beam_real = (_per_beam(x, k) for x in (cates, shops, ids, real))
    for slot in range(n):
        prefix_cols = prefix.reshape(B * k, slot)
        allowed, slot_relaxed = rules.feasible_mask(
            beam_cates.gather(1, prefix_cols), beam_shops.gather(1, prefix_cols), beam_cates, beam_shops,
            chosen.reshape(B * k, m + 1), slot, cand_ids=beam_ids, cand_mask=beam_real,
        )
        allowed = allowed.reshape(B, k, m + 1)
        allowed[:, :, m] = ~allowed[:, :, :m].any(2)  # "nothing left" only when nothing is left
        slot_relaxed = slot_relaxed.reshape(B, k, 1).expand(B, k, m + 1)
        step = exposure[:, :, None, None] * gains[:, None]  # [B, k, m+1, 3]
        step_value = (step * w).sum(-1)
        cand_key = key[:, :, None] + step_value - RELAX_PENALTY * slot_relaxed
        cand_key = cand_key.masked_fill(~allowed, -torch.inf).reshape(B, k * (m + 1))
        key, best = cand_key.topk(k, 1)
        beam, col = best // (m + 1), best % (m + 1)
        totals = _pick(totals, beam) + step.reshape(B, k * (m + 1), 3)[torch.arange(B)[:, None], best]
        relaxed = _pick(relaxed, beam) | slot_relaxed.reshape(B, k * (m + 1)).gather(1, best)
        exposure = _pick(exposure, beam) * nxt.gather(1, col)
        chosen = _pick(chosen, beam).scatter(2, col[:, :, None], True)
        chosen[:, :, m] = False
        prefix = torch.cat([_pick(prefix, beam), col[:, :, None]], 2)
    valid = torch.isfinite(key)
    value = torch.where(valid, (totals * w).sum(-1), -torch.inf)
    items = ids[:, None, :].expand(B, k, m + 1).gather(2, prefix)
    pv, ipv, gmv_total = (t.numpy() for t in totals.unbind(-1))
    return BeamLists(prefix.numpy(), items.numpy(), value.numpy(), pv, ipv, gmv_total,
                     relaxed.numpy(), valid.numpy())


def _per_beam(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, m] request rows repeated for each of the k beams: [B*k, m]."""
    return x.repeat_interleave(k, 0)


def _pick(x: torch.Tensor, beam: torch.Tensor) -> torch.Tensor:
    """Rows of the surviving beams: x [B, k, ...] indexed by beam [B, k]."""
    index = beam.reshape(*beam.shape, *([1] * (x.dim() - 2))).expand(*beam.shape, *x.shape[2:])
    return x.gather(1, index)


ScoresFn = Callable[[Requests], dict[str, np.ndarray]]
"""Point-wise probabilities of a batch of requests: "ctr" and "next" [B, m] (optionally "buy"),
e.g. ``functools.partial(relist.models.ranking.scoring.point_scores, teacher, store)``."""


class BeamPolicy:
    """Beam search as a policy (``__call__``: the best list) and a list generator (``propose``: k lists).

    The GMV term needs a purchase model ("buy" among the scores) and ``item_price``
    (raw prices indexed by item id, e.g. from items.parquet); without them it is 0.
    """

    def __init__(self, scores: ScoresFn, store: FeatureStore, k: int = 8, weights: ListValue = ListValue(),
                 rules: BusinessRules = BusinessRules(), item_price: np.ndarray | None = None):
        self.scores, self.store, self.k, self.weights, self.rules = scores, store, k, weights, rules
        self.item_price = item_price

    def search(self, requests: Requests, n: int) -> BeamLists:
        p = self.scores(requests)
        cates, shops = item_attributes(self.store, requests.candidates)
        money = {}
        if "buy" in p and self.item_price is not None:
            ids = requests.candidates
            known = (ids > 0) & (ids < len(self.item_price))
            price = np.where(known, self.item_price[np.where(known, ids, 0)], 0.0)
            money = {"p_buy": p["buy"], "price": price}
        return beam_search(p["ctr"], p["next"], requests.candidates, cates, shops, requests.mask, n, self.k,
                           self.weights, self.rules, **money)

    def propose(self, requests: Requests, n: int) -> np.ndarray:
        """The k lists [B, k, n]; where fewer than k exist, the best one stands in for the missing."""
        out = self.search(requests, n)
        return np.where(out.valid[:, :, None], out.items, out.items[:, :1])

    def __call__(self, requests: Requests, n: int) -> np.ndarray:
        return self.search(requests, n).items[:, 0]
