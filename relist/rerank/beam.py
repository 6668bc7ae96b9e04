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
import torch
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
    """
    ctr, nxt, ids, cates, shops, mask = (torch.as_tensor(np.asarray(x)) for x in
                                         (p_ctr, p_next, cand_ids, cand_cates, cand_shops, cand_mask))
    ctr, nxt = ctr.double(), nxt.double()
    mask = mask.bool()
    buy = torch.as_tensor(np.asarray(p_buy)).double() * ctr if p_buy is not None else torch.zeros_like(ctr)
    gmv = buy * torch.as_tensor(np.asarray(price)).double() if price is not None else torch.zeros_like(ctr)
    B, m = ctr.shape
    # One extra "nothing left" column (index m) lets a request with fewer than n candidates finish.
    ctr, nxt, buy, gmv = (torch.cat([x, torch.zeros(B, 1, dtype=x.dtype)], 1) for x in (ctr, nxt, buy, gmv))
    ids = torch.cat([ids, torch.full((B, 1), PAD_ID, dtype=ids.dtype)], 1)
    cates, shops = (torch.cat([x, torch.zeros(B, 1, dtype=x.dtype)], 1) for x in (cates, shops))
    real = torch.cat([mask, torch.zeros(B, 1, dtype=torch.bool)], 1)

    key = torch.full((B, k), -torch.inf, dtype=torch.float64)
    key[:, 0] = 0.0  # one empty prefix to start from
    exposure = torch.ones(B, k, dtype=torch.float64)
    totals = torch.zeros(B, k, 4, dtype=torch.float64)  # PV, IPV, purchases, GMV
    relaxed = torch.zeros(B, k, dtype=torch.bool)
    chosen = torch.zeros(B, k, m + 1, dtype=torch.bool)
    prefix = torch.zeros(B, k, 0, dtype=torch.long)
    gains = torch.stack([real.double(), ctr, buy, gmv], -1)  # per exposure, [B, m+1, 4]
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64).reshape(-1, 4)[:, None, None, :]  # [B|1,1,1,4]
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
        step = exposure[:, :, None, None] * gains[:, None]  # [B, k, m+1, 4]
        step_value = (step * w).sum(-1)
        cand_key = key[:, :, None] + step_value - RELAX_PENALTY * slot_relaxed
        cand_key = cand_key.masked_fill(~allowed, -torch.inf).reshape(B, k * (m + 1))
        key, best = cand_key.topk(k, 1)
        beam, col = best // (m + 1), best % (m + 1)
        totals = _pick(totals, beam) + step.reshape(B, k * (m + 1), 4)[torch.arange(B)[:, None], best]
        relaxed = _pick(relaxed, beam) | slot_relaxed.reshape(B, k * (m + 1)).gather(1, best)
        exposure = _pick(exposure, beam) * nxt.gather(1, col)
        chosen = _pick(chosen, beam).scatter(2, col[:, :, None], True)
        chosen[:, :, m] = False
        prefix = torch.cat([_pick(prefix, beam), col[:, :, None]], 2)
    valid = torch.isfinite(key)
    value = torch.where(valid, (totals * w[:, :, 0]).sum(-1), -torch.inf)
    items = ids[:, None, :].expand(B, k, m + 1).gather(2, prefix)
    return BeamLists(prefix.numpy(), items.numpy(), value.numpy(), totals.numpy(), relaxed.numpy(),
                     valid.numpy())


def _per_beam(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, m] request rows repeated for each of the k beams: [B*k, m]."""
    return x.repeat_interleave(k, 0)


def _pick(x: torch.Tensor, beam: torch.Tensor) -> torch.Tensor:
    """Rows of the surviving beams: x [B, k, ...] indexed by beam [B, k]."""
    index = beam.reshape(*beam.shape, *([1] * (x.dim() - 2))).expand(*beam.shape, *x.shape[2:])
    return x.gather(1, index)


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
        weights = ctx.objective.vector() if isinstance(ctx.objective, Objective) else ctx.objective
        return beam_search(p["ctr"], p["next"], requests.candidates, cates, shops, requests.mask, n, self.k,
                           weights, ctx.rules, p.get("buy"), price)

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
    cates, shops = ctx.attributes(requests)
    key = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    ids, real = torch.as_tensor(requests.candidates), torch.as_tensor(requests.mask).bool()
    b, m = key.shape
    chosen = torch.zeros(b, m, dtype=torch.bool)
    prefix = torch.zeros(b, 0, dtype=torch.long)
    rows = torch.arange(b)
    out = torch.full((b, n), PAD_ID, dtype=ids.dtype)
    for slot in range(n):
        allowed, _ = ctx.rules.feasible_mask(cates.gather(1, prefix), shops.gather(1, prefix), cates, shops, chosen,
                                             slot, cand_ids=ids, cand_mask=real)
        col = key.masked_fill(~allowed, -torch.inf).argmax(1)
        left = allowed.any(1)  # a request out of candidates pads the rest of its list
        out[:, slot] = torch.where(left, ids[rows, col], PAD_ID)
        chosen[rows[left], col[left]] = True
        prefix = torch.cat([prefix, col[:, None]], 1)
    return out.numpy()
