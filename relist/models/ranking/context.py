"""Slot context of a point-wise score: what stood above an item in the list changes its click and scroll.

A user who has just seen a category reacts to the next item differently (a complementary category
draws clicks, a near-duplicate does not), and every earlier item of the same category tires them.
The teacher learns both as additive logit terms per task, PAL-style like its position term: fitted
on logged impressions, where the list above each one is known, and left out of the item's own score.
Beam search builds lists slot by slot, so it knows the list above every candidate and adds them back
(relist.rerank.beam), which no point-wise sort can.

Two tables per task: ``pair[task, category above, category]`` and ``repeats[task, r]`` for r earlier
items of the category (r >= ``max_repeats`` share the last entry; r = 0 is the reference, 0).
Category 0 means unknown, and above the first slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


class SlotContext(nn.Module):
    def __init__(self, n_cates: int, tasks: int, max_repeats: int = 4):
        super().__init__()
        self.pair = nn.Parameter(torch.zeros(tasks, n_cates, n_cates))
        self.repeats = nn.Parameter(torch.zeros(tasks, max_repeats))
        self.max_repeats = max_repeats

    def forward(self, prev_cate: Tensor, cate: Tensor, repeats: Tensor) -> Tensor:
        """Logit terms [N, tasks] of N slots."""
        n = self.pair.shape[1]
        pair = self.pair[:, prev_cate.long().clamp(0, n - 1), cate.long().clamp(0, n - 1)]
        return (pair + self.repeated()[:, repeats.long().clamp(0, self.max_repeats)]).T

    def repeated(self) -> Tensor:
        """[tasks, max_repeats + 1]: the term of r earlier items of the category (0 for none)."""
        return torch.cat([torch.zeros_like(self.repeats[:, :1]), self.repeats], 1)

    def terms(self, tasks: tuple[str, ...], position: Tensor | None) -> ContextTerms:
        """The tables as arrays, by task, for a search that adds them slot by slot (with the teacher's
        position term [P, tasks], if it has one)."""
        pair, repeated = self.pair.detach().cpu().numpy(), self.repeated().detach().cpu().numpy()
        slots = None if position is None else position.detach().cpu().numpy()
        return ContextTerms({task: pair[i] for i, task in enumerate(tasks)},
                            {task: repeated[i] for i, task in enumerate(tasks)},
                            {task: np.zeros(1) if slots is None else slots[:, i] for i, task in enumerate(tasks)})


@dataclass(frozen=True)
class ContextTerms:
    """A teacher's slot terms by task ("ctr", "next", ...): ``pair`` [C, C], ``repeats`` [R + 1], ``position``
    [P] (the last entry stands for later slots)."""

    pair: dict[str, np.ndarray]
    repeats: dict[str, np.ndarray]
    position: dict[str, np.ndarray]

    def logit(self, task: str, slot: int | np.ndarray, prev_cate: np.ndarray, cate: np.ndarray,
              repeats: np.ndarray) -> np.ndarray:
        """The term of ``task`` in ``slot`` for items of ``cate`` with ``prev_cate`` above and ``repeats``
        earlier items of their category (shapes broadcast, ``slot`` too)."""
        table, counts, position = self.pair[task], self.repeats[task], self.position[task]
        n = len(table)
        pair = table[np.clip(prev_cate, 0, n - 1), np.clip(cate, 0, n - 1)]
        return position[np.minimum(slot, len(position) - 1)] + pair + counts[np.clip(repeats, 0, len(counts) - 1)]

    def save(self, path: str | Path) -> None:
        """The tables as one ``.npz`` file (``pair.ctr``, ``repeats.ctr``, ``position.ctr``, ...): what an edge
        export ships beside the teacher's graph, which does not hold them."""
        np.savez(path, **{f"{kind}.{task}": table for kind in ("pair", "repeats", "position")
                          for task, table in getattr(self, kind).items()})

    @classmethod
    def load(cls, path: str | Path) -> ContextTerms:
        with np.load(path) as tables:
            by_kind = {kind: {key.split(".", 1)[1]: tables[key] for key in tables.files
                              if key.split(".", 1)[0] == kind} for kind in ("pair", "repeats", "position")}
        return cls(**by_kind)
