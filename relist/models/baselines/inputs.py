"""What every baseline reads: the initial list, one vector per item, in initial-ranker order.

Items come either as ids looked up in the FeatureStore (simulated logs: item,
category, shop, price and the user's matching interests) or as dense feature
vectors (LETOR, where every query-document pair is a new item and ids say
nothing). Both add the initial ranker's score and the item's initial position,
which is what PRM and DLCM re-rank from.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from relist.data.features import FeatureStore
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.models.inputs import ItemEmbedding, UserInterest, list_inputs
from relist.models.vocab import Vocab


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["prm", "dlcm", "seq2slate"]
    dim: int = Field(16, ge=2, description="width of item vectors (and of the transformer in PRM)")
    hidden: int = Field(32, ge=2, description="recurrent state / feed-forward width")
    heads: int = Field(2, ge=1, description="PRM attention heads (must divide dim)")
    layers: int = Field(1, ge=1, description="PRM transformer layers")
    max_len: int = Field(128, ge=1, description="longest initial list the position embedding covers")
    dropout: float = Field(0.1, ge=0, lt=1)
    n_dense: int = Field(0, ge=0, description=">0: items are dense feature vectors of this size (LETOR)")


class ItemInputs(nn.Module):
    """Initial list -> [B, L, dim]: item representation + initial score + initial position."""

    def __init__(self, vocab: Vocab | None, cfg: BaselineConfig):
        super().__init__()
        self.dense = cfg.n_dense > 0
        if self.dense:
            self.features = nn.Linear(cfg.n_dense, cfg.dim)
        else:
            if vocab is None:
                raise ValueError("id inputs need the vocabulary of the FeatureStore")
            self.items = ItemEmbedding(vocab, cfg.dim)
            self.user = UserInterest(vocab, cfg.dim)
            self.mix = nn.Linear(3 * cfg.dim, cfg.dim)
        self.score = nn.Linear(1, cfg.dim)
        self.position = nn.Embedding(cfg.max_len, cfg.dim)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        mask = batch["mask"]
        if self.dense:
            x = self.features(batch["dense"])
        else:
            items = self.items(batch)
            history = self.items(batch, "hist_")
            interest, segment = self.user(items, history, batch["hist_mask"], batch["segment"])
            x = self.mix(torch.cat([items, interest, segment.unsqueeze(1).expand_as(items)], -1))
        position = self.position(torch.arange(x.shape[1], device=x.device))
        x = x + self.score(batch["score"].unsqueeze(-1)) + position
        return x * mask.unsqueeze(-1)


def initial_order(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Columns [B, m] sorting each request's real candidates by initial score, best first, padding last."""
    return np.argsort(np.where(mask, -scores, np.inf), axis=1, kind="stable")


def initial_list_inputs(
    store: FeatureStore | None,
    user_ids: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    dense: np.ndarray | None = None,
) -> dict[str, Tensor]:
    """Model inputs of initial lists [B, L], already in initial order (``dense`` [B, L, F]: dense models)."""
    if dense is None:
        return list_inputs(store, Requests.from_arrays(np.zeros(len(items)), user_ids, items, scores))
    items_t = torch.as_tensor(items, dtype=torch.long)
    as_float = {"score": scores, "dense": dense}
    return {"candidates": items_t, "mask": items_t != PAD_ID} | {
        name: torch.as_tensor(value, dtype=torch.float32) for name, value in as_float.items()}
