"""Business rules every list generator obeys: category scatter, a shop cap and pinned slots.

Generators fill a list slot by slot, so the rules are exposed as a vectorised
per-slot mask (``allowed_mask``) that a decoder combines with its scores, plus
``check`` for whole lists. When no candidate satisfies every rule at some slot
(e.g. all remaining candidates share one category), ``feasible_mask`` relaxes
the rules step by step — first the scatter window, then the shop cap — and
flags the row, so a generator still returns its best partial-rule list and the
caller knows it broke a rule.

The masks and the check take numpy arrays or torch tensors alike (and return the same kind): the decoders of the
neural generators run them on tensors, beam search and greedy sorts on arrays, where a small
operation costs a fraction of a torch one.

Conventions: category and shop 0 mean "unknown" (relist.data.features) and never
conflict with anything; ``pinned`` maps a slot to an item id that must stand
there whenever it is among the request's candidates (it then also may not
appear at any other slot). A pinned item at its slot is exempt from the scatter
and shop rules — the business put it there — but the items after it are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from relist.data.features import FeatureStore

UNKNOWN = 0


@dataclass(frozen=True)
class BusinessRules:
    cate_window: int = 2  # no item of the same category as any of the previous w items (0 = off)
    max_per_shop: int | None = None  # at most q items of one shop per list (None = off)
    pinned: Mapping[int, int] = field(default_factory=dict)  # slot -> item id

    def allowed_mask(
        self,
        prefix_cates: torch.Tensor,
        prefix_shops: torch.Tensor,
        cand_cates: torch.Tensor,
        cand_shops: torch.Tensor,
        chosen: torch.Tensor,
        slot: int,
        *,
        cand_ids: torch.Tensor | None = None,
        cand_mask: torch.Tensor | None = None,
        window: int | None = None,
        shop_cap: bool = True,
        reserve_pinned: bool = True,
    ) -> torch.Tensor:
        """Candidates [B, m] that may fill ``slot`` after a prefix [B, t] without breaking a rule.

        ``chosen`` marks candidates already in the prefix and ``cand_mask`` real
        (non-padding) candidates; ``cand_ids`` is needed only when slots are
        pinned. ``window``, ``shop_cap`` and ``reserve_pinned`` loosen the rules (used to relax them).
        """
        allowed = ~chosen
        if cand_mask is not None:
            allowed = allowed & cand_mask
        reserved = self._reserved(cand_ids, slot) if reserve_pinned else None
        if reserved is not None:
            allowed = allowed & ~reserved
        has_pin = _falses(allowed, (allowed.shape[0], 1))
        if slot in self.pinned and cand_ids is not None:
            pinned_here = (cand_ids == self.pinned[slot]) & allowed
            has_pin = pinned_here.any(1)[:, None]
            allowed = _where(has_pin, pinned_here, allowed)
        window = self.cate_window if window is None else window
        if window > 0 and prefix_cates.shape[1] > 0:
            recent = prefix_cates[:, -window:]
            clash = (recent[:, :, None] == cand_cates[:, None, :]).any(1) & (cand_cates != UNKNOWN)
            allowed = allowed & (~clash | has_pin)
        if shop_cap and self.max_per_shop is not None and prefix_shops.shape[1] > 0:
            count = (prefix_shops[:, :, None] == cand_shops[:, None, :]).sum(1)
            full = (count >= self.max_per_shop) & (cand_shops != UNKNOWN)
            allowed = allowed & (~full | has_pin)
        return allowed

    def feasible_mask(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``allowed_mask``, but rows left with no candidate get the least relaxed rules that leave one.

        Returns the mask and a [B] flag of rows that had to relax a rule. The
        order of relaxation: shrink the scatter window one step at a time, then
        drop the shop cap, and last free the items reserved for other pinned
        slots (never the no-repeat and padding constraints).
        """
        mask = self.allowed_mask(*args, **kwargs)
        relaxed = _falses(mask, (mask.shape[0],))
        empty = ~mask.any(1)
        steps = [(w, True, True) for w in range(self.cate_window - 1, -1, -1)]
        steps += [(0, False, True), (0, False, False)]
        for window, shop_cap, reserve_pinned in steps:
            if not empty.any():
                break
            looser = self.allowed_mask(*args, **kwargs, window=window, shop_cap=shop_cap,
                                       reserve_pinned=reserve_pinned)
            fix = empty & looser.any(1)
            mask = _where(fix[:, None], looser, mask)
            relaxed |= fix
            empty &= ~fix
        return mask, relaxed

    def check(self, list_cates: Mask, list_shops: Mask, list_ids: Mask | None = None,
              candidates: Mask | None = None) -> Mask:
        """Per list [B, n]: True when it keeps every rule (pinned slots need ids and candidates)."""
        n = list_cates.shape[1]
        ok = ~_falses(list_cates, (list_cates.shape[0],))
        exempt = _falses(list_cates, tuple(list_cates.shape))
        if self.pinned and list_ids is not None and candidates is not None:
            for slot, item in self.pinned.items():
                present = (candidates == item).any(1)
                elsewhere = list_ids == item
                if slot < n:
                    elsewhere[:, slot] = False
                ok &= ~elsewhere.any(1)
                if slot < n:
                    ok &= ~present | (list_ids[:, slot] == item)
                    exempt[:, slot] = list_ids[:, slot] == item
        known_cate = list_cates != UNKNOWN
        for lag in range(1, min(self.cate_window, n - 1) + 1):
            clash = (list_cates[:, lag:] == list_cates[:, :-lag]) & known_cate[:, lag:] & ~exempt[:, lag:]
            ok &= ~clash.any(1)
        if self.max_per_shop is not None:
            same = list_shops[:, :, None] == list_shops[:, None, :]
            earlier = _lower_triangle(~_falses(list_shops, (n, n)))
            count = (same & earlier).sum(2)  # items of this shop up to and including each slot
            over = (count > self.max_per_shop) & (list_shops != UNKNOWN) & ~exempt
            ok &= ~over.any(1)
        return ok

    def _reserved(self, cand_ids: Mask | None, slot: int) -> Mask | None:
        """Candidates pinned to another slot, which they alone may fill (None: none are)."""
        others = [item for s, item in self.pinned.items() if s != slot]
        if cand_ids is None or not others:
            return None
        if isinstance(cand_ids, np.ndarray):
            return np.isin(cand_ids, others)
        return torch.isin(cand_ids, torch.as_tensor(others, dtype=cand_ids.dtype, device=cand_ids.device))


Mask = np.ndarray | torch.Tensor


def _falses(like: Mask, shape: tuple[int, ...]) -> Mask:
    if isinstance(like, np.ndarray):
        return np.zeros(shape, dtype=bool)
    return torch.zeros(shape, dtype=torch.bool, device=like.device)


def _where(condition: Mask, a: Mask, b: Mask) -> Mask:
    return np.where(condition, a, b) if isinstance(condition, np.ndarray) else torch.where(condition, a, b)


def _lower_triangle(mask: Mask) -> Mask:
    return np.tril(mask) if isinstance(mask, np.ndarray) else mask.tril()


def item_attributes(store: FeatureStore, ids: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Category and shop of items of any shape, as the rules read them (0 = unknown)."""
    features = store.item_features(ids)
    return features["cate"], features["shop"]


class RulesConfig(BaseModel):
    """Settings of the BusinessRules a generator decodes under (pinned slots are set per deployment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cate_window: int = Field(2, ge=0, description="no category repeated within this many previous slots")
    max_per_shop: int | None = Field(None, ge=1, description="at most this many items of one shop per list")

    def build(self) -> BusinessRules:
        return BusinessRules(cate_window=self.cate_window, max_per_shop=self.max_per_shop)
