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
    just above it and the earlier items of its category. Arrays throughout (numpy's small operations cost
    a fraction of torch's); ties go to the earlier beam and candidate.
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
    at_slot = _SlotGains(scores, real, price, cates, context, k)

    rows = np.arange(B)[:, None]
    key = np.full((B, k), -np.inf)
    key[:, 0] = 0.0  # one empty prefix to start from
    exposure = np.ones((B, k))
    totals = np.zeros((B, k, 4))  # PV, IPV, purchases, GMV
    relaxed = np.zeros((B, k), bool)
    chosen = np.zeros((B, k, m + 1), bool)
    prefix = np.zeros((B, k, 0), np.int64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 4)[:, None, None, :]  # [B|1, 1, 1, 4]
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
        gains, nxt = at_slot.gains(slot)  # [B, k|1, m+1, 4] per exposure, [B, k|1, m+1]
        value_per_exposure = (gains * w).sum(-1)  # a candidate's value where it is seen
        cand_key = key[:, :, None] + exposure[:, :, None] * value_per_exposure \
            - RELAX_PENALTY * slot_relaxed[:, :, None]
        cand_key = np.where(allowed, cand_key, -np.inf).reshape(B, k * (m + 1))
        best = np.argsort(-cand_key, axis=1, kind="stable")[:, :k]
        key = cand_key[rows, best]
        beam, col = best // (m + 1), best % (m + 1)
        seen = exposure[rows, beam]
        totals = totals[rows, beam] + seen[:, :, None] * np.broadcast_to(gains, (B, k, m + 1, 4))[rows, beam, col]
        relaxed = relaxed[rows, beam] | slot_relaxed[rows, beam]
        exposure = seen * np.broadcast_to(nxt, (B, k, m + 1))[rows, beam, col]
        at_slot.advance(beam, col)
        chosen = chosen[rows, beam]
        chosen[rows, np.arange(k)[None, :], col] = True
        chosen[:, :, m] = False
        prefix = np.concatenate([prefix[rows, beam], col[:, :, None]], 2)
    valid = np.isfinite(key)
    value = np.where(valid, (totals * w[:, :, 0]).sum(-1), -np.inf)
    items = ids[rows[:, :, None], prefix]
    return BeamLists(prefix, items, value, totals, relaxed, valid)


class _SlotGains:
    """Per exposure, what each candidate [B, m+1] adds to the four objectives in the next slot behind every
    beam's prefix (PV, IPV, purchases, GMV), and its chance to keep the user scrolling.

    Without slot terms these are the items' own, computed once ([B, 1, m+1]). With them, each beam keeps
    the category of its last item and, per candidate, how many items of the candidate's category it holds,
    so a slot costs a few array operations whatever its length; the tables are gathered per candidate once.
    """

    def __init__(self, scores: dict[str, np.ndarray], real: np.ndarray, price: np.ndarray, cates: np.ndarray,
                 context: ContextTerms | None, k: int):
        self.real, self.price, self.context = real, price, context
        if context is None:
            self.fixed = self._gains({task: p[:, None] for task, p in scores.items()})
            return
        b = len(cates)
        self.tasks = [task for task in ("ctr", "next", "buy") if task in context.pair]
        self.own = {task: p[:, None] for task, p in scores.items() if task not in self.tasks}
        self.logits = np.stack([_logit(scores[task]) for task in self.tasks])[:, :, None]  # [T, B, 1, m+1]
        pair = np.stack([context.pair[task] for task in self.tasks])  # [T, C above, C]
        self.cates = np.clip(cates, 0, pair.shape[1] - 1)
        self.pair = pair[:, :, self.cates]  # [T, C above, B, m+1]
        self.repeat = np.stack([context.repeats[task] for task in self.tasks])  # [T, R+1]
        self.position = np.stack([context.position[task] for task in self.tasks])  # [T, P]
        self.above = np.zeros((b, k), np.int64)  # category of each beam's last item (0 before the first)
        self.repeats = np.zeros((b, k, cates.shape[1]), np.int64)  # items of each candidate's category held

    def gains(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        if self.context is None:
            return self.fixed
        rows = np.arange(len(self.above))[:, None]
        terms = (self.pair[:, self.above, rows, :]  # [T, B, k, m+1]
                 + self.repeat[:, np.minimum(self.repeats, self.repeat.shape[1] - 1)]
                 + self.position[:, min(slot, self.position.shape[1] - 1), None, None, None])
        p = _sigmoid(self.logits + terms)
        return self._gains(dict(zip(self.tasks, p, strict=True)) | self.own)

    def advance(self, beam: np.ndarray, col: np.ndarray) -> None:
        """Beam j now extends the earlier beam ``beam[:, j]`` by candidate ``col[:, j]``."""
        if self.context is None:
            return
        rows = np.arange(len(beam))[:, None]
        chosen = self.cates[rows, col]  # [B, k]
        same = (self.cates[:, None, :] == chosen[:, :, None]) & (chosen > 0)[:, :, None]
        self.repeats = self.repeats[rows, beam] + same
        self.above = chosen

    def _gains(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        ctr, buy = p["ctr"], p["buy"] * p["ctr"]
        real = np.broadcast_to(self.real[:, None], ctr.shape)
        gains = np.stack(np.broadcast_arrays(real, ctr, buy, buy * self.price[:, None]), -1)
        return gains, p["next"]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


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
        price = ctx.store.item_features(requests.candidates)["raw_price"].numpy()
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
