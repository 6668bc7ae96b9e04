"""Beam search list recall over point-wise click (``p_ctr``) and keep-scrolling (``p_next``) scores.

A user sees slot j only if they kept scrolling past every item before it, so the exposure of
slot j is the product of ``p_next`` of the items in front of it; each slot then adds to the four
list objectives of relist.objective (PV: exposure; IPV: exposure x p_ctr; purchases and GMV when a
purchase model and prices exist), and the list value is the request's objective. Greedy sorting
ignores that an item with a high CTR but a low ``p_next`` hides the rest of the list; the beam
keeps the ``k`` best prefixes to see it.

Scores come in as arrays, so the search does not care which model made them. Candidates that
break the business rules are never expanded; a prefix that can only go on by relaxing a rule
(relist.rerank.rules) ranks below every prefix that keeps them, and the returned list is flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from relist.data.features import FeatureStore
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.objective import Objective
from relist.rerank.generators import Context
from relist.rerank.rules import BusinessRules

# A relaxed rule costs more than any list can be worth, so rule-keeping lists always rank first.
RELAX_PENALTY = 1e9
IPV = Objective().vector()


@dataclass
class BeamLists:
    """The ``k`` best lists per request, best first (padded lists have value -inf and valid False)."""

    index: np.ndarray  # [B, k, n] candidate columns (m where a request ran out of candidates)
    items: np.ndarray  # [B, k, n] item ids (PAD_ID where it ran out)
    value: np.ndarray  # [B, k] the objective's value
    totals: np.ndarray  # [B, k, 4] expected PV, IPV, purchases, GMV
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
    weights: np.ndarray = IPV,
    rules: BusinessRules = BusinessRules(),
    p_buy: np.ndarray | None = None,
    price: np.ndarray | None = None,
) -> BeamLists:
    """Search lists of ``n`` of the ``m`` candidates [B, m] that maximise the expected list value.

    ``weights`` are the objective's weights over (PV, IPV, purchases, GMV): [4], or [B, 4] per request.
    Arrays throughout (numpy's small operations cost a fraction of torch's); ties go to the earlier
    beam and candidate.
    """
    ctr, nxt = (np.asarray(x, dtype=np.float64) for x in (p_ctr, p_next))
    ids, cates, shops = (np.asarray(x) for x in (cand_ids, cand_cates, cand_shops))
    mask = np.asarray(cand_mask, dtype=bool)
    buy = np.asarray(p_buy, dtype=np.float64) * ctr if p_buy is not None else np.zeros_like(ctr)
    gmv = buy * np.asarray(price, dtype=np.float64) if price is not None else np.zeros_like(ctr)
    B, m = ctr.shape
    # One extra "nothing left" column (index m) lets a request with fewer than n candidates finish.
    ctr, nxt, buy, gmv, cates, shops = (np.concatenate([x, np.zeros((B, 1), x.dtype)], 1)
                                        for x in (ctr, nxt, buy, gmv, cates, shops))
    ids = np.concatenate([ids, np.full((B, 1), PAD_ID, ids.dtype)], 1)
    real = np.concatenate([mask, np.zeros((B, 1), bool)], 1)

    rows = np.arange(B)[:, None]
    key = np.full((B, k), -np.inf)
    key[:, 0] = 0.0  # one empty prefix to start from
    exposure = np.ones((B, k))
    totals = np.zeros((B, k, 4))  # PV, IPV, purchases, GMV
    relaxed = np.zeros((B, k), bool)
    chosen = np.zeros((B, k, m + 1), bool)
    prefix = np.zeros((B, k, 0), np.int64)
    gains = np.stack([real.astype(np.float64), ctr, buy, gmv], -1)  # per exposure, [B, m+1, 4]
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 4)[:, None, None, :]  # [B|1, 1, 1, 4]
    value_per_exposure = (gains * w[:, 0]).sum(-1)  # [B, m+1]: a candidate's value where it is seen
    beam_cates, beam_shops, beam_ids, beam_real = (np.repeat(x, k, 0) for x in (cates, shops, ids, real))
    beam_rows = np.arange(B * k)[:, None]
    for slot in range(n):
        prefix_cols = prefix.reshape(B * k, slot)
        allowed, slot_relaxed = rules.feasible_mask(
            beam_cates[beam_rows, prefix_cols], beam_shops[beam_rows, prefix_cols],
            beam_cates, beam_shops, chosen.reshape(B * k, m + 1), slot, cand_ids=beam_ids, cand_mask=beam_real,
        )
        allowed = allowed.reshape(B, k, m + 1)
        allowed[:, :, m] = ~allowed[:, :, :m].any(2)  # "nothing left" only when nothing is left
        slot_relaxed = slot_relaxed.reshape(B, k)
        cand_key = key[:, :, None] + exposure[:, :, None] * value_per_exposure[:, None, :] \
            - RELAX_PENALTY * slot_relaxed[:, :, None]
        cand_key = np.where(allowed, cand_key, -np.inf).reshape(B, k * (m + 1))
        best = np.argsort(-cand_key, axis=1, kind="stable")[:, :k]
        key = cand_key[rows, best]
        beam, col = best // (m + 1), best % (m + 1)
        seen = exposure[rows, beam]
        totals = totals[rows, beam] + seen[:, :, None] * gains[rows, col]
        relaxed = relaxed[rows, beam] | slot_relaxed[rows, beam]
        exposure = seen * nxt[rows, col]
        chosen = chosen[rows, beam]
        chosen[rows, np.arange(k)[None, :], col] = True
        chosen[:, :, m] = False
        prefix = np.concatenate([prefix[rows, beam], col[:, :, None]], 2)
    valid = np.isfinite(key)
    value = np.where(valid, (totals * w[:, :, 0]).sum(-1), -np.inf)
    items = ids[rows[:, :, None], prefix]
    return BeamLists(prefix, items, value, totals, relaxed, valid)


ScoresFn = Callable[[Requests, FeatureStore], dict[str, np.ndarray]]
"""Point-wise probabilities of a batch of requests read through a store: "ctr" and "next" [B, m]
(and "buy" given a click), e.g. the fine-ranking teacher's (relist.rerank.registry)."""


class BeamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(8, ge=1, description="beam width, and the lists proposed to list ranking")
    p_next: float = Field(0.85, gt=0, le=1, description="beam_upstream: the assumed chance to keep scrolling "
                                                         "(no model of it)")


class Beam:
    """Beam search as a generator: the ``k`` best lists under the request's objective, best first.

    Point scores come from ``scores`` (e.g. the fine-ranking teacher's). The purchase and GMV terms
    need a purchase model ("buy" among the scores); prices come from the store.
    """

    def __init__(self, scores: ScoresFn, k: int = 8):
        self.scores, self.k = scores, k

    def search(self, requests: Requests, n: int, ctx: Context) -> BeamLists:
        p = self.scores(requests, ctx.store)
        cates, shops = ctx.attributes(requests)
        price = ctx.store.item_features(requests.candidates)["raw_price"].numpy()
        return beam_search(p["ctr"], p["next"], requests.candidates, cates, shops, requests.mask, n, self.k,
                           ctx.objective_weights(len(requests)), ctx.rules, p.get("buy"), price)

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        """The k lists [B, k, n]; where fewer than k exist, the best one stands in for the missing."""
        out = self.search(requests, n, ctx)
        return np.where(out.valid[:, :, None], out.items, out.items[:, :1])


def upstream_scores(p_next: float) -> ScoresFn:
    """The upstream scores as click probabilities, with a constant chance to keep scrolling."""

    def scores(requests: Requests, store: FeatureStore) -> dict[str, np.ndarray]:
        p_ctr = np.clip(np.nan_to_num(requests.cand_scores, nan=0.0), 0.0, 1.0)
        return {"ctr": p_ctr, "next": np.full_like(p_ctr, p_next)}

    return scores


def greedy_under_rules(scores: np.ndarray, requests: Requests, n: int, ctx: Context) -> np.ndarray:
    """Item ids [B, n]: slot by slot the allowed candidate with the highest score (any real scale).

    The lists of a width-1 beam over the summed scores (IPV with no scroll loss), in a quarter of its
    operations: with one prefix per request there is nothing to rank but the next candidate. The rules
    and their relaxation are the same ``feasible_mask`` (ties go to the earlier candidate).
    """
    cates, shops = (x.numpy() for x in ctx.attributes(requests))
    key = np.asarray(scores, dtype=np.float64)
    ids, real = requests.candidates, np.asarray(requests.mask, dtype=bool)
    b, m = key.shape
    chosen = np.zeros((b, m), bool)
    prefix = np.zeros((b, 0), np.int64)
    rows = np.arange(b)
    out = np.full((b, n), PAD_ID, dtype=ids.dtype)
    for slot in range(n):
        allowed, _ = ctx.rules.feasible_mask(cates[rows[:, None], prefix], shops[rows[:, None], prefix], cates, shops,
                                             chosen, slot, cand_ids=ids, cand_mask=real)
        col = np.where(allowed, key, -np.inf).argmax(1)
        left = allowed.any(1)  # a request out of candidates pads the rest of its list
        out[:, slot] = np.where(left, ids[rows, col], PAD_ID)
        chosen[rows[left], col[left]] = True
        prefix = np.concatenate([prefix, col[:, None]], 1)
    return out
