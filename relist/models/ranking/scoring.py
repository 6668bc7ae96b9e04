"""Inference at the boundaries of the ranking package: logits for samples, probabilities for re-ranking,
and the serving form of the coarse ranker (item matrix offline, user tower per request)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.models.ranking.dssm import DSSM
from relist.models.ranking.samples import FEATURES, Samples, iterate_batches, upstream_features


@torch.no_grad()
def predict_logits(
    model: nn.Module, samples: Samples, batch_size: int = 8192, **options: bool
) -> dict[str, np.ndarray]:
    """Every output logit of ``model`` for every sample, by output name (``options`` go to its forward,
    e.g. the teacher's ``logged``)."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {}
    for batch in iterate_batches({k: samples[k] for k in FEATURES}, batch_size):
        inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
        for name, logits in model(inputs, **options).items():
            parts.setdefault(name, []).append(logits.cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def request_inputs(store: FeatureStore, requests: Requests) -> dict[str, Tensor]:
    """Model inputs for every (user, candidate) pair of the requests, flattened to B*m rows.

    Each pair carries the candidate's upstream score and rank; its position and slot context are 0
    (scoring leaves them out: the item's own score).
    """
    per_row = np.repeat(requests.user_id, requests.candidates.shape[1])
    score, rank = requests.upstream_of(requests.candidates)
    upstream = upstream_features(score.reshape(-1), rank.reshape(-1)) | {
        name: np.zeros(len(per_row), np.int64) for name in ("position", "prev_cate", "repeats")}
    return (store.user_features(per_row) | store.item_features(requests.candidates.reshape(-1))
            | {name: torch.as_tensor(value) for name, value in upstream.items()})


@torch.no_grad()
def point_logits(
    model: nn.Module, store: FeatureStore, requests: Requests, max_pairs: int = 8192
) -> dict[str, np.ndarray]:
    """Click, keep-scrolling and (where the model has the head) purchase-given-click logits of every
    candidate, [B, m] each ("ctr", "next", "buy"; 0 at padding).

    ``model`` is a trained teacher with ``ctr`` and ``next`` heads. Requests are scored in chunks of at
    most ``max_pairs`` (user, candidate) pairs to bound memory.
    """
    model.eval()
    m = requests.candidates.shape[1]
    step = max(1, max_pairs // max(m, 1))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(requests), step):
        chunk = requests[start : start + step]
        logits = model(request_inputs(store, chunk))
        missing = {"ctr", "next"} - set(logits)
        if missing:
            raise ValueError(f"point scores need a model with ctr and next heads; it lacks {sorted(missing)}")
        for name in ("ctr", "next", "buy"):
            if name in logits:
                parts.setdefault(name, []).append(logits[name].numpy().reshape(chunk.candidates.shape))
    return {name: np.where(requests.mask, np.concatenate(chunks), 0.0) if chunks else np.zeros((0, m))
            for name, chunks in parts.items()} if parts else {"ctr": np.zeros((0, m)), "next": np.zeros((0, m))}


def point_scores(
    model: nn.Module, store: FeatureStore, requests: Requests, max_pairs: int = 8192
) -> dict[str, np.ndarray]:
    """Click and keep-scrolling probabilities of every candidate, [B, m] each (0 at padding), and the
    purchase probability given a click ("buy") where the model has that head; beam search consumes these."""
    return probabilities(point_logits(model, store, requests, max_pairs), requests.mask)


def probabilities(logits: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """Logits [B, m] by name as probabilities (0 at padding)."""
    return {name: np.where(mask, 1.0 / (1.0 + np.exp(-value)), 0.0) for name, value in logits.items()}


class CoarseScorer:
    """Serving form of the student: the item matrix is computed once; a request costs one user-tower pass
    and one batched head over the candidates' rows."""

    def __init__(self, model: DSSM, store: FeatureStore):
        self.model, self.store = model.eval(), store
        with torch.no_grad():
            self.item_matrix = model.item_vectors(store.item_features(np.arange(store.n_items + 1)))

    @torch.no_grad()
    def score(self, user_id: int, candidates: np.ndarray) -> np.ndarray:
        """Click logits of up to thousands of candidate ids for one user; unknown ids score as row 0."""
        user = self.model.user_vectors(self.store.user_features(np.array([user_id])))
        return self.model.score(user, self.item_matrix[self.store.item_index(candidates)]).numpy()
