"""Fine-ranking teacher: point-wise, rich enough to be the distillation target and the p_ctr/p_next source.

DIN-style target attention pools the behaviours that matter for *this*
item; DCN cross layers and a deep MLP cross the target's fields with that
interest and the user profile; one linear head per task (click, keeps
scrolling, purchase) shares the representation (multi-task). The item's upstream
score and its rank in the request are read too (``upstream``), and a position
term per task absorbs where the item stood while training (``position_bias``,
PAL-style): at scoring time it is left out, so the score is the item's own. The slot context
(``slot_context``: the category just above the item and repeats of its category, relist.models.ranking.
context) is learned and left out the same way; beam search adds it back (``context_terms``). Validation compares
the model with *logged* clicks, so it keeps the term there (``logged=True``): a score without it is
judged against clicks that still carry their slot's effect, and the better the term absorbs position
the worse such a score looks (validation GAUC of the position-free score peaked an epoch or more
before the lists it orders were truly best; benchmarks/results/teacher_monitor.json).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relist.data.padding import masked_mean
from relist.models.inputs import UpstreamScore
from relist.models.ranking.config import TeacherConfig
from relist.models.ranking.context import ContextTerms, SlotContext
from relist.models.ranking.embeddings import FeatureEmbeddings
from relist.models.ranking.layers import MLP, CrossNetwork, TargetAttention
from relist.models.vocab import Vocab


class FineRankTeacher(nn.Module):
    def __init__(
        self, vocab: Vocab, dim: int, cfg: TeacherConfig, embeddings: FeatureEmbeddings | None = None
    ):
        super().__init__()
        self.embeddings = embeddings if embeddings is not None else FeatureEmbeddings(vocab, dim)
        self.attention = TargetAttention(2 * dim, cfg.attention_hidden)
        self.upstream = UpstreamScore(vocab.score, dim) if cfg.upstream else None
        # item fields, interest, mean history, interest*target, segment (+ upstream score)
        width = 4 * dim + 3 * (2 * dim) + dim + (dim if cfg.upstream else 0)
        self.cross = CrossNetwork(width, cfg.cross_layers)
        self.deep = nn.Sequential(MLP(width, cfg.hidden[:-1], cfg.hidden[-1], cfg.dropout), nn.ReLU())
        self.heads = nn.ModuleDict({task: nn.Linear(width + cfg.hidden[-1], 1) for task in cfg.tasks})
        self.position = (nn.Embedding(cfg.max_position, len(cfg.tasks)) if cfg.position_bias else None)
        if self.position is not None:
            nn.init.zeros_(self.position.weight)
        self.max_position = cfg.max_position
        self.context = SlotContext(vocab.n_cates, len(cfg.tasks), cfg.max_repeats) if cfg.slot_context else None

    def forward(self, batch: dict[str, Tensor], logged: bool | None = None) -> dict[str, Tensor]:
        """Logits per task; with the position term when ``logged`` (default: while training)."""
        emb = self.embeddings
        target = emb.target_key(batch)
        items, cates = emb.behaviours(batch)
        history, mask = torch.cat([items, cates], -1), batch["hist_mask"]
        interest = self.attention(target, history, mask)
        parts = [
            emb.item_fields(batch).flatten(-2),
            interest,
            masked_mean(history, mask, dim=-2),
            interest * target,
            emb.segment_of(batch),
        ]
        if self.upstream is not None:
            parts.append(self.upstream(batch))
        x0 = torch.cat(parts, -1)
        shared = torch.cat([self.cross(x0), self.deep(x0)], -1)
        logits = {task: head(shared).squeeze(-1) for task, head in self.heads.items()}
        if self.training if logged is None else logged:
            logits = self._as_logged(batch, logits)
        return logits

    def _as_logged(self, batch: dict[str, Tensor], logits: dict[str, Tensor]) -> dict[str, Tensor]:
        """The item's own logits plus what its slot added in the logged list (position, slot context)."""
        terms = []
        if self.position is not None:
            terms.append(self.position(batch["position"].long().clamp(0, self.max_position - 1)))
        if self.context is not None:
            terms.append(self.context(batch["prev_cate"], batch["cate"], batch["repeats"]))
        if not terms:
            return logits
        bias = sum(terms)
        return {task: logit + bias[:, i] for i, (task, logit) in enumerate(logits.items())}

    def context_terms(self) -> ContextTerms | None:
        """The slot terms a list search adds back (None without a learned slot context)."""
        if self.context is None:
            return None
        position = None if self.position is None else self.position.weight
        return self.context.terms(tuple(self.heads), position)
