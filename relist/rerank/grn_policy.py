"""The GRN generator as a re-ranking policy, under the business rules.

``mode="greedy"`` serves the most likely list; ``mode="sample"`` draws ``samples``
lists per request and, when there are several, serves the one the evaluator
(a ListScorer) rates highest: the evaluator-guided policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.models.generator import GRN, AllowedFn, candidate_features, chosen_items, load_generator
from relist.rerank.list_scorer import ListScorer
from relist.rerank.rules import BusinessRules


def rules_hook(rules: BusinessRules, batch: dict[str, Tensor]) -> AllowedFn:
    """The GRN's per-slot hook for ``rules`` over the requests of ``batch`` (relaxed when nothing fits)."""
    cates, shops, ids = batch["cate"], batch["shop"], batch["candidates"]

    def allowed(rows: Tensor, prefix: Tensor, chosen: Tensor, slot: int) -> Tensor:
        cand_cates, cand_shops = cates[rows], shops[rows]
        column = prefix.clamp_min(0)
        mask, _ = rules.feasible_mask(
            cand_cates.gather(1, column),
            cand_shops.gather(1, column),
            cand_cates,
            cand_shops,
            chosen,
            slot,
            cand_ids=ids[rows],
            cand_mask=batch["mask"][rows],
        )
        return mask

    return allowed


class GRNPolicy:
    """``policy(requests, n) -> [B, n]`` item ids decoded by a GRN (see the module docstring)."""

    def __init__(
        self,
        model: GRN,
        store: FeatureStore,
        mode: Literal["greedy", "sample"] = "greedy",
        samples: int = 1,
        temperature: float = 1.0,
        scorer: ListScorer | None = None,
        rules: BusinessRules | None = None,
        seed: int = 0,
        batch_size: int = 1024,
    ):
        if mode == "greedy" and samples != 1:
            raise ValueError("greedy decoding gives one list per request; use mode='sample' for several")
        if samples > 1 and scorer is None:
            raise ValueError(f"choosing among {samples} sampled lists needs a scorer (ListScorer)")
        self.model, self.store, self.mode, self.samples = model.eval(), store, mode, samples
        self.temperature, self.scorer, self.rules, self.batch_size = temperature, scorer, rules, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def load(cls, model_dir: str | Path, store: FeatureStore, **kwargs) -> GRNPolicy:
        return cls(load_generator(model_dir)[0], store, **kwargs)

    @torch.no_grad()
    def __call__(self, requests: Requests, n: int) -> np.ndarray:
        out = [
            self._decode(requests[start : start + self.batch_size], n)
            for start in range(0, len(requests), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, n), np.int64)

    def _decode(self, requests: Requests, n: int) -> np.ndarray:
        batch = candidate_features(self.store, requests.user_id, requests.candidates, requests.cand_scores)
        hook = rules_hook(self.rules, batch) if self.rules is not None else None
        out = self.model(
            batch,
            n,
            samples=self.samples,
            greedy=self.mode == "greedy",
            temperature=self.temperature,
            generator=self.generator,
            allowed_fn=hook,
        )
        lists = chosen_items(batch["candidates"], out["choice"]).numpy()
        if self.samples == 1:
            return lists[:, 0]
        return self.scorer.best_of(requests.user_id, lists)[0]
