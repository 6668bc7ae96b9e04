"""The list reward LR of a trained evaluator: how every re-ranker compares whole lists.

LR is the evaluator's expected number of clicks of a list: the per-position click
probabilities summed over real positions, optionally each weighted by the chance the
position is seen (the cumulative product of the evaluator's own predicted ``next``).
Which of the two is used is part of the evaluator's spec, picked on validation logs.
Inputs may be numpy or torch; outputs follow the type of ``lists``. No gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from relist.data.features import FeatureStore
from relist.models.evaluator import DCWN, exposure, list_features, load_evaluator

Array = np.ndarray | Tensor


class ListScorer:
    """A frozen evaluator plus the feature store that turns ids into its inputs."""

    def __init__(
        self, model: DCWN, store: FeatureStore, exposure_weighted: bool = False, batch_size: int = 8192
    ):
        self.model, self.store = model.eval(), store
        self.exposure_weighted, self.batch_size = exposure_weighted, batch_size
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(
        cls, model_dir: str | Path, store: FeatureStore, exposure_weighted: bool | None = None
    ) -> ListScorer:
        """From a ``relist train evaluator`` directory; ``exposure_weighted`` overrides the spec's choice."""
        model, spec = load_evaluator(model_dir)
        return cls(model, store, spec.exposure_weighted if exposure_weighted is None else exposure_weighted)

    def per_position(self, user_ids: Array, lists: Array) -> Array:
        """Click probability of each position of lists [B, n] (0 at padding)."""
        return self._score(user_ids, lists)[0]

    def contributions(self, user_ids: Array, lists: Array) -> Array:
        """Each position's share of LR [B, n]: click probability, times predicted exposure if weighted."""
        return self._score(user_ids, lists)[1]

    def list_reward(self, user_ids: Array, lists: Array) -> Array:
        """LR of each list [B, n] -> [B]."""
        return self.contributions(user_ids, lists).sum(-1)

    def best_of(self, user_ids: Array, lists: Array) -> tuple[Array, Array]:
        """Per request the list with the highest LR among K proposals [B, K, n]: (best [B, n], LR [B, K])."""
        b, k, n = lists.shape
        users = user_ids.repeat_interleave(k) if isinstance(user_ids, Tensor) else np.repeat(user_ids, k)
        reward = self.list_reward(users, lists.reshape(b * k, n)).reshape(b, k)
        pick = reward.argmax(1)
        return lists[np.arange(b) if isinstance(lists, np.ndarray) else torch.arange(b), pick], reward

    @torch.no_grad()
    def _score(self, user_ids: Array, lists: Array) -> tuple[Array, Array]:
        """(click probabilities, LR shares) [B, n], in chunks of ``batch_size`` lists."""
        lists_t, users_t = as_long(lists), as_long(user_ids)
        empty = torch.zeros(0, lists_t.shape[1], device=lists_t.device)
        chunks = [
            self._score_chunk(
                users_t[start : start + self.batch_size], lists_t[start : start + self.batch_size]
            )
            for start in range(0, len(lists_t), self.batch_size)
        ]
        out = (
            tuple(torch.cat([empty, *parts]) for parts in zip(*chunks, strict=True))
            if chunks
            else (empty, empty)
        )
        return tuple(x.cpu().numpy() for x in out) if isinstance(lists, np.ndarray) else out

    def _score_chunk(self, user_ids: Tensor, lists: Tensor) -> tuple[Tensor, Tensor]:
        device = next(self.model.parameters()).device
        batch = list_features(self.store, user_ids, lists.to(device))
        logits = self.model(batch)
        p = torch.sigmoid(logits["click"]) * batch["mask"]
        share = p * exposure(logits["next"]) if self.exposure_weighted else p
        return p.to(lists.device), share.to(lists.device)


def as_long(values: Array) -> Tensor:
    """Ids as a long tensor (numpy arrays are copied: logs come back read-only)."""
    return values.long() if isinstance(values, Tensor) else torch.tensor(np.asarray(values), dtype=torch.long)
