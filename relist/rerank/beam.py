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
from typing import NamedTuple

import numba
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from relist.data.features import FeatureStore
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.models.ranking.context import ContextTerms
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
    context: ContextTerms | None = None,
) -> BeamLists:
    """Search lists of ``n`` of the ``m`` candidates [B, m] that maximise the expected list value.

    ``weights`` are the objective's weights over (PV, IPV, purchases, GMV): [4], or [B, 4] per request.
    ``p_buy`` is a purchase given a click. With ``context`` (a teacher's slot terms), each probability is
    the item's own plus, on the logit scale, what the prefix in front of it adds: its slot, the category
    just above it and the earlier items of its category. The rules mask each slot as arrays
    (``feasible_mask``, shared with every generator); extending the beams is one compiled step per slot
    (:func:`_extend`), since numpy's small operations made the search ~40 per slot. Ties go to the earlier
    beam and candidate.
    """
    ids, cates, shops = (np.asarray(x) for x in (cand_ids, cand_cates, cand_shops))
    mask = np.asarray(cand_mask, dtype=bool)
    B, m = ids.shape
    # One extra "nothing left" column (index m) lets a request with fewer than n candidates finish.
    extend = lambda x: np.concatenate([x, np.zeros((B, 1), x.dtype)], 1)  # noqa: E731
    scores = {"ctr": p_ctr, "next": p_next, "buy": p_buy if p_buy is not None else np.zeros_like(p_ctr)}
    scores = {task: extend(np.asarray(x, dtype=np.float64)) for task, x in scores.items()}
    price = extend(np.asarray(price, dtype=np.float64)) if price is not None else np.zeros((B, m + 1))
    cates, shops = extend(cates), extend(shops)
    ids = np.concatenate([ids, np.full((B, 1), PAD_ID, ids.dtype)], 1)
    real = np.concatenate([mask, np.zeros((B, 1), bool)], 1)
    terms = _SlotTerms.of(scores, cates, context)
    w = np.ascontiguousarray(np.broadcast_to(np.asarray(weights, dtype=np.float64).reshape(-1, 4), (B, 4)))

    key = np.full((B, k), -np.inf)
    key[:, 0] = 0.0  # one empty prefix to start from
    exposure = np.ones((B, k))
    totals = np.zeros((B, k, 4))  # PV, IPV, purchases, GMV
    relaxed = np.zeros((B, k), bool)
    chosen = np.zeros((B, k, m + 1), bool)
    prefix = np.zeros((B, k, n), np.int64)
    above = np.zeros((B, k), np.int64)  # slot terms: category of each beam's last item (0 before the first)
    repeats = np.zeros((B, k, m + 1), np.int64)  # ... and, per candidate, the items of its category it holds
    beam_cates, beam_shops, beam_ids, beam_real = (np.repeat(x, k, 0) for x in (cates, shops, ids, real))
    beam_rows = np.arange(B * k)[:, None]
    pv = real.astype(np.float64)  # what a real candidate adds to PV where it is seen
    for slot in range(n):
        prefix_cols = prefix[:, :, :slot].reshape(B * k, slot)
        allowed, slot_relaxed = rules.feasible_mask(
            beam_cates[beam_rows, prefix_cols], beam_shops[beam_rows, prefix_cols],
            beam_cates, beam_shops, chosen.reshape(B * k, m + 1), slot, cand_ids=beam_ids, cand_mask=beam_real,
        )
        key, exposure, totals, relaxed, chosen, prefix, above, repeats = _extend(
            slot, allowed.reshape(B, k, m + 1), slot_relaxed.reshape(B, k), w, pv, price,
            *terms, key, exposure, totals, relaxed, chosen, prefix, above, repeats)
    valid = np.isfinite(key)
    value = np.where(valid, (totals * w[:, None, :]).sum(-1), -np.inf)
    items = ids[np.arange(B)[:, None, None], prefix]
    return BeamLists(prefix, items, value, totals, relaxed, valid)


class _SlotTerms(NamedTuple):
    """What :func:`_extend` reads to price a candidate behind a prefix, per task (ctr, next, buy).

    ``own`` are the items' own probabilities [3, B, m+1]. A task the teacher learned slot terms for
    (``learned``) is instead the sigmoid of its own logit plus the terms of the prefix: the pair table
    [3, C above, C] at (last category, candidate's category), the repeat table [3, R+1] at the items of its
    category already shown, and the position table [3, P] at the slot (the last entry stands for later
    slots). Without terms the tables are single zeros and never read.
    """

    own: np.ndarray
    logits: np.ndarray
    learned: np.ndarray
    cates: np.ndarray  # [B, m+1] categories clipped to the pair table
    pair: np.ndarray
    repeat: np.ndarray
    position: np.ndarray

    @classmethod
    def of(cls, scores: dict[str, np.ndarray], cates: np.ndarray, context: ContextTerms | None) -> _SlotTerms:
        own = np.stack([scores[task] for task in _TASKS])
        learned = np.array([context is not None and task in context.pair for task in _TASKS])
        if not learned.any():
            nothing = np.zeros((3, 1, 1), np.float32), np.zeros((3, 1), np.float32), np.zeros((3, 1), np.float32)
            return cls(own, own, learned, np.zeros(cates.shape, np.int64), *nothing)
        tables = [(context.pair[task], context.repeats[task], context.position[task]) if on else None
                  for task, on in zip(_TASKS, learned, strict=True)]
        like = next(t for t in tables if t is not None)
        tables = [t if t is not None else tuple(np.zeros_like(x) for x in like) for t in tables]
        pair, repeat, position = (np.stack([t[i] for t in tables]) for i in range(3))  # in their dtype
        clipped = np.clip(cates, 0, pair.shape[1] - 1).astype(np.int64)
        return cls(own, _logit(own), learned, clipped, pair, repeat, position)


_TASKS = ("ctr", "next", "buy")


@numba.njit(cache=True, nogil=True)
def _extend(slot, allowed, slot_relaxed, w, real, price, own, logits, learned, cates, pair, repeat, position,
            key, exposure, totals, relaxed, chosen, prefix, above, repeats):  # pragma: no cover - compiled
    """One slot of the search: every beam [B, k] extended by every allowed candidate (the "nothing left"
    column m only where nothing else is), the ``k`` best kept. Returns the new beam state."""
    B, k, m1 = allowed.shape
    m = m1 - 1
    new_key = np.full((B, k), -np.inf)
    new_exposure = np.zeros((B, k))
    new_totals = np.zeros((B, k, 4))
    new_relaxed = np.zeros((B, k), np.bool_)
    new_chosen = np.zeros((B, k, m1), np.bool_)
    new_prefix = np.zeros(prefix.shape, np.int64)
    new_above = np.zeros((B, k), np.int64)
    new_repeats = np.zeros((B, k, m1), np.int64)
    flat = np.empty(k * m1)
    top = np.empty(k, np.int64)
    gains = np.empty(7)  # the four gains, then the three probabilities
    for b in range(B):
        for j in range(k):
            if key[b, j] == -np.inf:  # no such prefix (yet): nothing behind it can be kept
                flat[j * m1:(j + 1) * m1] = -np.inf
                continue
            left = False
            for c in range(m):
                left = left or allowed[b, j, c]
            for c in range(m1):
                ok = allowed[b, j, c] if c < m else not left
                if not ok:
                    flat[j * m1 + c] = -np.inf
                    continue
                _gains(gains, b, j, c, slot, real, price, own, logits, learned, cates, pair, repeat, position,
                       above, repeats)
                value = gains[0] * w[b, 0] + gains[1] * w[b, 1] + gains[2] * w[b, 2] + gains[3] * w[b, 3]
                flat[j * m1 + c] = key[b, j] + exposure[b, j] * value - RELAX_PENALTY * slot_relaxed[b, j]
        _top(flat, top)
        for r in range(k):
            best = top[r]
            j, c = best // m1, best % m1
            nxt = _gains(gains, b, j, c, slot, real, price, own, logits, learned, cates, pair, repeat, position,
                         above, repeats)
            new_key[b, r] = flat[best]
            for t in range(4):
                new_totals[b, r, t] = totals[b, j, t] + exposure[b, j] * gains[t]
            new_exposure[b, r] = exposure[b, j] * nxt
            new_relaxed[b, r] = relaxed[b, j] or slot_relaxed[b, j]
            new_chosen[b, r] = chosen[b, j]
            new_chosen[b, r, c] = c < m
            new_prefix[b, r, :slot] = prefix[b, j, :slot]
            new_prefix[b, r, slot] = c
            cate = cates[b, c]
            new_above[b, r] = cate
            for i in range(m1):
                new_repeats[b, r, i] = repeats[b, j, i] + (cate > 0 and cates[b, i] == cate)
    return new_key, new_exposure, new_totals, new_relaxed, new_chosen, new_prefix, new_above, new_repeats


@numba.njit(cache=True)
def _top(values, out):  # pragma: no cover - compiled
    """The indices of the ``len(out)`` largest values into ``out``, largest first, ties to the earlier index (a
    stable descending sort's first ones, in one pass)."""
    k, kept = len(out), 0
    for f in range(len(values)):
        v = values[f]
        if kept == k and not v > values[out[k - 1]]:
            continue
        at = min(kept, k - 1)
        while at > 0 and v > values[out[at - 1]]:
            out[at] = out[at - 1]
            at -= 1
        out[at] = f
        kept = min(kept + 1, k)


@numba.njit(cache=True, inline="always")
def _gains(out, b, j, c, slot, real, price, own, logits, learned, cates, pair, repeat, position, above,
           repeats):  # pragma: no cover - compiled
    """Candidate c behind beam j: what it adds per exposure to PV, IPV, purchases and GMV (into ``out``), and
    its chance to keep the user scrolling (returned)."""
    for t in range(3):
        if learned[t]:
            terms = (pair[t, above[b, j], cates[b, c]] + repeat[t, min(repeats[b, j, c], repeat.shape[1] - 1)]
                     + position[t, min(slot, position.shape[1] - 1)])
            out[4 + t] = 0.5 * (1.0 + np.tanh(0.5 * (logits[t, b, c] + terms)))
        else:
            out[4 + t] = own[t, b, c]
    buy = out[6] * out[4]
    out[0], out[1], out[2], out[3] = real[b, c], out[4], buy, buy * price[b, c]
    return out[5]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


ScoresFn = Callable[[Requests, FeatureStore], dict[str, np.ndarray]]
"""Point-wise probabilities of a batch of requests read through a store: "ctr" and "next" [B, m]
(and "buy" given a click), e.g. the fine-ranking teacher's (relist.rerank.registry)."""


class BeamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(8, ge=1, description="beam width, and the lists proposed to list ranking")
    p_next: float = Field(0.85, gt=0, le=1, description="beam_upstream: the assumed chance to keep scrolling "
                                                         "(no model of it)")
    slot_context: bool = Field(True, description="add the teacher's slot terms (position, the category above, "
                                                 "repeats of a category) prefix by prefix, where it learned them")


class Beam:
    """Beam search as a generator: the ``k`` best lists under the request's objective, best first.

    Point scores come from ``scores`` (e.g. the fine-ranking teacher's). The purchase and GMV terms
    need a purchase model ("buy" among the scores); prices come from the store. ``context``: the slot
    terms the scores' teacher learned (relist.models.ranking.context), added behind every prefix.
    """

    def __init__(self, scores: ScoresFn, k: int = 8, context: ContextTerms | None = None):
        self.scores, self.k, self.context = scores, k, context

    def search(self, requests: Requests, n: int, ctx: Context) -> BeamLists:
        p = self.scores(requests, ctx.store)
        cates, shops = ctx.attributes(requests)
        price = ctx.store.item_raw_price[ctx.store.item_index(requests.candidates).numpy()]
        return beam_search(p["ctr"], p["next"], requests.candidates, cates, shops, requests.mask, n, self.k,
                           ctx.objective_weights(len(requests)), ctx.rules, p.get("buy"), price, self.context)

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
