"""What every baseline reads: the initial list, one vector per item, in initial-ranker order.

Items come either as ids looked up in the FeatureStore (simulated logs: item,
category, shop, price and the user's matching interests) or as dense feature
vectors (LETOR, where every query-document pair is a new item and ids say
nothing). Both add the initial ranker's score and the item's initial position,
which is what PRM and DLCM re-rank from.

The position enters as fixed sinusoids of the rank (and its logarithm) under a
learned linear map, not as a table of ``max_len`` rows: a list longer than any
seen in training still gets a position, and no length limit has to be guessed.
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
    dropout: float = Field(0.1, ge=0, lt=1)
    n_dense: int = Field(0, ge=0, description=">0: items are dense feature vectors of this size (LETOR)")
    residual: bool = Field(False, description="score = w * initial score + the model's score, which starts at 0: "
                           "training starts from the initial ranking instead of from noise")


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
        self.position = nn.Linear(POSITION_FEATURES, cfg.dim)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        mask = batch["mask"]
        if self.dense:
            x = self.features(batch["dense"])
        else:
            items = self.items(batch)
            history = self.items(batch, "hist_")
            interest, segment = self.user(items, history, batch["hist_mask"], batch["segment"])
            x = self.mix(torch.cat([items, interest, segment.unsqueeze(1).expand_as(items)], -1))
        position = self.position(position_features(x.shape[1], x.device))
        x = x + self.score(batch["score"].unsqueeze(-1)) + position
        return x * mask.unsqueeze(-1)


POSITION_FEATURES = 16


def position_features(length: int, device: torch.device | None = None) -> Tensor:
    """[length, POSITION_FEATURES]: sin/cos of rank 0..length-1 at geometric wavelengths 2..~1000, plus
    log1p(rank) and rank / (rank + 10) (monotone, bounded), defined for any length."""
    rank = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    n_waves = (POSITION_FEATURES - 2) // 2
    wavelength = 2.0 * 500.0 ** (torch.arange(n_waves, dtype=torch.float32, device=device) / (n_waves - 1))
    angle = 2 * torch.pi * rank / wavelength
    return torch.cat([torch.sin(angle), torch.cos(angle), torch.log1p(rank), rank / (rank + 10)], 1)


class ScorePrior(nn.Module):
    """``w * score`` (w learned, starting at 1) when the model is residual, else nothing.

    With the model's own output layer started at zero, a residual re-ranker's
    first list is the initial list, and every step away from it must pay off on
    the training lists; early stopping on validation then keeps only what helps.
    """

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(())) if cfg.residual else None

    def forward(self, batch: dict[str, Tensor]) -> Tensor | float:
        return 0.0 if self.weight is None else self.weight * batch["score"]

    def start_at_zero(self, layer: nn.Linear) -> None:
        """Zero the model's last layer (residual models only), so it adds nothing before training."""
        if self.weight is not None:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


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
