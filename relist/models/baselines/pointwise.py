"""A point-wise MLP over dense features: the initial ranker of LETOR lists that the re-rankers start from."""

from __future__ import annotations

from torch import Tensor, nn

from relist.models.baselines.scorer import ItemScorer


class PointwiseMLP(ItemScorer):
    """``predict(batch)`` -> {"score": [B, L]} relevance logits from ``batch["dense"]`` [B, L, F] alone."""

    def __init__(self, n_features: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"score": self.net(batch["dense"]).squeeze(-1)}
