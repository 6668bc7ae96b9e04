"""What every list model reads, and the input modules they share.

A model sees a request (a user and candidates with their upstream scores) and, for an
evaluator, lists made of those candidates. :func:`list_inputs` turns ids into tensors:
the items' side information, the user's behaviour history, and for every item its
upstream score and its rank among the request's candidates. The upstream score is the
earlier stage's prediction, the strongest single signal a production re-ranker has; id
embeddings alone do not generalise where items are seen rarely. A missing score (NaN,
e.g. a request that sent none) is marked by ``has_score`` and reads as zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from relist.data.features import FeatureStore
from relist.data.padding import NEG_INF, PAD_ID
from relist.data.requests import Requests
from relist.models.vocab import ScoreScale, Vocab


def list_inputs(store: FeatureStore, requests: Requests, lists: np.ndarray | Tensor | None = None,
                rows: np.ndarray | None = None) -> dict[str, Tensor]:
    """Model inputs of lists of item ids (default: each request's candidates themselves).

    ``lists`` [R, n] belong to ``requests[rows]`` (default: one list per request). Item features keep
    their store names (item, cate, shop, price, price_bucket, raw_price); ``mask`` marks real entries;
    ``score``/``score_rank``/``has_score`` are each item's upstream score, its rank among its request's
    candidates (0 best, 1 worst) and whether a score exists; ``candidates`` are the candidate ids of each
    list's request. The user's side (``segment``, ``hist_*`` features of the history items) is given
    once per request, and ``user_row`` [R] says which request each list belongs to, so K lists of one
    request share one history encoding.
    """
    device = lists.device if isinstance(lists, Tensor) else torch.device("cpu")
    rows = np.arange(len(requests)) if rows is None else np.asarray(rows)
    own = requests[rows]
    items = own.candidates if lists is None else (lists.cpu().numpy() if isinstance(lists, Tensor)
                                                  else np.asarray(lists, dtype=np.int64))
    score, rank = own.upstream_of(items)
    items_t = torch.as_tensor(items, dtype=torch.long)
    user = store.user_features(requests.user_id)
    batch = store.item_features(items_t)
    batch |= {f"hist_{name}": value for name, value in store.item_features(user["hist"]).items()}
    has = np.isfinite(score) & (items != PAD_ID)
    batch |= {
        "mask": items_t != PAD_ID, "hist_mask": user["hist_mask"], "segment": user["segment"],
        "user_row": torch.as_tensor(rows, dtype=torch.long),
        "score": torch.as_tensor(np.where(has, score, 0.0), dtype=torch.float32),
        "score_rank": torch.as_tensor(np.where(has, rank, 0.0), dtype=torch.float32),
        "has_score": torch.as_tensor(has),
        "candidates": torch.as_tensor(own.candidates, dtype=torch.long),
    }
    return {name: value.to(device) for name, value in batch.items()}


class ItemEmbedding(nn.Module):
    """Item id, category, shop, price bucket and standardised price -> one vector per item."""

    def __init__(self, vocab: Vocab, dim: int):
        super().__init__()
        self.item = nn.Embedding(vocab.n_items, dim, padding_idx=PAD_ID)
        self.cate = nn.Embedding(vocab.n_cates, dim)
        self.shop = nn.Embedding(vocab.n_shops, dim)
        self.price_bucket = nn.Embedding(vocab.n_price_buckets, dim)
        self.mix = nn.Linear(4 * dim + 1, dim)

    def forward(self, batch: dict[str, Tensor], prefix: str = "") -> Tensor:
        parts = [
            self.item(batch[f"{prefix}item"]),
            self.cate(batch[f"{prefix}cate"]),
            self.shop(batch[f"{prefix}shop"]),
            self.price_bucket(batch[f"{prefix}price_bucket"]),
            batch[f"{prefix}price"].unsqueeze(-1),
        ]
        return self.mix(torch.cat(parts, -1))


class UpstreamScore(nn.Module):
    """The upstream score, its rank in the request and whether it exists -> one vector per item."""

    def __init__(self, scale: ScoreScale, dim: int):
        super().__init__()
        self.scale = scale
        self.embed = nn.Linear(3, dim)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        has = batch["has_score"].to(batch["score"].dtype)
        score = self.scale.transform(batch["score"]) * has
        return self.embed(torch.stack([score, batch["score_rank"] * has, has], -1))


class UserInterest(nn.Module):
    """The user's segment and, per target item, attention over the behaviour history (DIN-style)."""

    def __init__(self, vocab: Vocab, dim: int):
        super().__init__()
        self.segment = nn.Embedding(vocab.n_segments, dim)
        self.query = nn.Linear(dim, dim, bias=False)

    def forward(
        self, targets: Tensor, history: Tensor, hist_mask: Tensor, segment: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``targets`` [B, n, d], ``history`` [B, L, d] -> (interest [B, n, d], segment [B, d])."""
        scores = torch.einsum("bnd,bld->bnl", self.query(targets), history) / history.shape[-1] ** 0.5
        scores = scores.masked_fill(~hist_mask[:, None, :], NEG_INF)
        weights = torch.softmax(scores, -1) * hist_mask[:, None, :]  # empty history -> zero interest
        return weights @ history, self.segment(segment)


class ItemContext(nn.Module):
    """Everything a list model knows about each item of a list: features, upstream score, user interest.

    ``forward(batch)`` -> [B, n, width] (item, upstream score and interest vectors, concatenated) and
    the user's segment vector [B, dim]. Padding rows are zero. ``upstream=False`` leaves the upstream
    score out (an ablation: ids and side information only).
    """

    def __init__(self, vocab: Vocab, dim: int, upstream: bool = True):
        super().__init__()
        self.items = ItemEmbedding(vocab, dim)
        self.upstream = UpstreamScore(vocab.score, dim) if upstream else None
        self.user = UserInterest(vocab, dim)
        self.width = (3 if upstream else 2) * dim

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        real = batch["mask"].unsqueeze(-1)
        x = self.items(batch) * real
        rows = batch["user_row"]  # the history is encoded once per request, then shared by its lists
        history = self.items(batch, "hist_")[rows]
        interest, segment = self.user(x, history, batch["hist_mask"][rows], batch["segment"][rows])
        parts = [x, interest] if self.upstream is None else [x, self.upstream(batch) * real, interest]
        return torch.cat(parts, -1), segment
