"""The coarse-ranking student: a two-tower DSSM whose improvements are switches of StudentConfig.

Exported vectors are ``[tower vector | FM vector]`` (the FM part only with
``fm_cross``): the low-cost FM crossing sum_j <behaviour_j, target> / L equals
<mean behaviour, target>, a dot product of one user-side and one item-side
vector, so it survives the two-tower split for free.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relist.data.padding import masked_mean
from relist.models.ranking.config import StudentConfig
from relist.models.ranking.embeddings import FeatureEmbeddings
from relist.models.ranking.heads import DotHead, MLPHead
from relist.models.ranking.towers import ItemTower, UserTower
from relist.models.vocab import Vocab


class DSSM(nn.Module):
    """``detach_embeddings``: the student reads shared tables but never updates them (sync distillation)."""

    def __init__(
        self,
        vocab: Vocab,
        dim: int,
        cfg: StudentConfig,
        embeddings: FeatureEmbeddings | None = None,
        detach_embeddings: bool = False,
    ):
        super().__init__()
        self.cfg, self.detach_embeddings = cfg, detach_embeddings
        self.embeddings = embeddings if embeddings is not None else FeatureEmbeddings(vocab, dim)
        self.user_tower = UserTower(dim, cfg)
        self.item_tower = ItemTower(dim, cfg)
        self.head = DotHead() if cfg.head == "dot" else MLPHead(cfg.vector_dim, cfg.head_hidden)

    def _read(self, table: Tensor) -> Tensor:
        return table.detach() if self.detach_embeddings else table

    def user_vectors(self, batch: dict[str, Tensor]) -> Tensor:
        """Per request: [B, D (+2d with fm_cross)]."""
        items, cates = (self._read(x) for x in self.embeddings.behaviours(batch))
        mask = batch["hist_mask"]
        vector = self.user_tower(self._read(self.embeddings.segment_of(batch)), items, cates, mask)
        if self.cfg.fm_cross:
            vector = torch.cat([vector, masked_mean(torch.cat([items, cates], -1), mask, dim=-2)], -1)
        return vector

    def item_vectors(self, batch: dict[str, Tensor]) -> Tensor:
        """Offline: [N, D (+2d with fm_cross)], the rows of the exported item matrix."""
        vector = self.item_tower(self._read(self.embeddings.item_fields(batch)))
        if self.cfg.fm_cross:
            vector = torch.cat([vector, self._read(self.embeddings.target_key(batch))], -1)
        return vector

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """Click logits of user vectors against item vectors (broadcasting, e.g. [1, D] x [N, D] -> [N])."""
        d = self.cfg.vector_dim
        logits = self.head(users[..., :d], items[..., :d])
        if self.cfg.fm_cross:
            logits = logits + (users[..., d:] * items[..., d:]).sum(-1)
        return logits

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"ctr": self.score(self.user_vectors(batch), self.item_vectors(batch))}
