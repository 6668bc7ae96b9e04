"""What a model must know of its data, read once and saved with every model: embedding-table sizes
(row 0 = padding/unknown) and the scale of the upstream scores."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from relist.data.features import PRICE_BUCKETS, FeatureStore


class ScoreScale(BaseModel):
    """How upstream scores become a model input: logit for probabilities, then standardised on train data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["probability", "raw"] = "probability"
    center: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, scores: np.ndarray) -> ScoreScale:
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if len(scores) == 0:
            return cls()
        kind = "probability" if scores.min() >= 0 and scores.max() <= 1 else "raw"
        x = _logit(scores) if kind == "probability" else scores
        return cls(kind=kind, center=float(x.mean()), scale=float(max(x.std(), 1e-6)))

    def transform(self, scores: Tensor) -> Tensor:
        x = torch.logit(scores.clamp(1e-4, 1 - 1e-4)) if self.kind == "probability" else scores
        return (x - self.center) / self.scale


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class Vocab(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_items: int = Field(ge=1)
    n_cates: int = Field(ge=1)
    n_shops: int = Field(ge=1)
    n_segments: int = Field(ge=1)
    n_price_buckets: int = Field(PRICE_BUCKETS + 1, ge=1)
    score: ScoreScale = ScoreScale()

    @classmethod
    def of(cls, store: FeatureStore, cand_scores: np.ndarray | None = None) -> Vocab:
        """Sizes of ``store``'s tables; the score scale fitted on ``cand_scores`` (e.g. train requests')."""
        return cls(n_items=store.n_items + 1, n_cates=store.n_cates, n_shops=store.n_shops,
                   n_segments=store.n_segments,
                   score=ScoreScale() if cand_scores is None else ScoreScale.fit(cand_scores))
