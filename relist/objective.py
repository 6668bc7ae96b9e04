"""The list objectives, one definition for everything that values a whole list.

A user sees position j with probability ``exposure_j``, clicks it with ``p_click_j`` (given that it
is seen), buys with ``p_buy_j`` (given a click) and pays ``price_j``. Summed over positions:

* ``pv``: expected page views, sum of exposures;
* ``ipv``: expected clicks, sum of exposure x p_click;
* ``buys``: expected purchases, sum of exposure x p_click x p_buy;
* ``gmv``: expected spend, sum of exposure x p_click x p_buy x price.

An :class:`Objective` is a weighted mix of them (``{"ipv": 1, "gmv": 0.02}``; a bare name weighs
one of them 1). The simulator's truth, the evaluator's heads, beam search over point-wise scores and
the oracle all reduce to the same four per-position terms, so they all value a list the same way.
Weights may differ per request (CMR: a ``[B, 4]`` array), which changes what is served without
retraining anything. Works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

OBJECTIVES = ("pv", "ipv", "buys", "gmv")
Name = Literal["pv", "ipv", "buys", "gmv"]


class Objective(BaseModel):
    """A weighted mix of the list objectives, e.g. ``Objective.of({"ipv": 1, "gmv": 0.02})``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[Name, float] = Field(default_factory=lambda: {"ipv": 1.0},
                                       description="weight of each objective (missing = 0)")

    @field_validator("weights")
    @classmethod
    def _some_weight(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights or all(w == 0 for w in weights.values()):
            raise ValueError(f"an objective needs a non-zero weight on one of {', '.join(OBJECTIVES)}")
        return weights

    @classmethod
    def of(cls, value: str | Mapping[str, float] | Objective) -> Objective:
        """From a name (``"ipv"``), a mapping of weights, or an Objective."""
        if isinstance(value, Objective):
            return value
        if isinstance(value, str):
            if value not in OBJECTIVES:
                raise ValueError(f"unknown objective {value!r}; choose from {', '.join(OBJECTIVES)}")
            return cls(weights={value: 1.0})
        return cls(weights=dict(value))

    def vector(self) -> np.ndarray:
        """Weights in the order of OBJECTIVES, [4]."""
        return np.array([self.weights.get(name, 0.0) for name in OBJECTIVES])

    @property
    def label(self) -> str:
        parts = [f"{w:g}·{name}" for name, w in self.weights.items() if w]
        return parts[0].removeprefix("1·") if len(parts) == 1 else " + ".join(parts)


def terms(exposure, p_click, p_buy=None, price=None):
    """Per-position contributions [..., n, 4] to pv, ipv, buys and gmv (zeros where p_buy/price lack)."""
    ipv = exposure * p_click
    buys = ipv * p_buy if p_buy is not None else ipv * 0
    gmv = buys * price if price is not None else buys * 0
    stack = torch.stack if isinstance(exposure, torch.Tensor) else np.stack
    return stack([exposure, ipv, buys, gmv], -1)


def value(per_position, weights):
    """List values [...] from per-position terms [..., n, 4] and weights broadcastable to [..., 4].

    Weights are [4] for one objective, or per request, e.g. [B, 1, 4] against terms [E, B, K, n, 4].
    """
    totals = per_position.sum(-2)
    if isinstance(totals, torch.Tensor):
        weights = torch.as_tensor(weights, dtype=totals.dtype, device=totals.device)
    return (totals * weights).sum(-1)
