"""A batch of re-ranking requests: what every policy sees, and nothing more.

A request is a user and ``m`` candidates in upstream order with their upstream
scores (NaN where the upstream stage sent none). Candidate lists shorter than the
longest are padded (relist.data.padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from relist.data.padding import PAD_ID


@dataclass
class Requests:
    request_id: np.ndarray  # [B]
    user_id: np.ndarray  # [B]
    candidates: np.ndarray  # [B, m] item ids, PAD_ID where mask is False
    cand_scores: np.ndarray  # [B, m] float32
    mask: np.ndarray  # [B, m] bool

    def __len__(self) -> int:
        return len(self.request_id)

    def __getitem__(self, rows) -> Requests:
        return Requests(self.request_id[rows], self.user_id[rows], self.candidates[rows],
                        self.cand_scores[rows], self.mask[rows])

    def reorder(self, order: np.ndarray) -> Requests:
        """The same requests with each one's candidates in ``order`` [B, m] (column indices)."""
        return Requests(self.request_id, self.user_id, *(np.take_along_axis(x, order, 1)
                                                         for x in (self.candidates, self.cand_scores, self.mask)))

    @classmethod
    def stack(cls, parts: Sequence[Requests]) -> Requests:
        """Several batches as one, every candidate list padded to the longest (e.g. requests served together)."""
        if len(parts) == 1:
            return parts[0]
        m = max(part.candidates.shape[1] for part in parts)

        def padded(name: str, value) -> np.ndarray:
            columns = [getattr(part, name) for part in parts]
            out = np.full((sum(len(x) for x in columns), m), value, dtype=columns[0].dtype)
            row = 0
            for x in columns:
                out[row:row + len(x), :x.shape[1]] = x
                row += len(x)
            return out

        return cls(np.concatenate([part.request_id for part in parts]),
                   np.concatenate([part.user_id for part in parts]), padded("candidates", PAD_ID),
                   padded("cand_scores", 0.0), padded("mask", False))

    def trimmed(self, at_least: int = 0) -> Requests:
        """Without the padding columns no request of the batch uses (a request alone has its own length),
        keeping ``at_least`` columns (e.g. the list length policies fill)."""
        m = min(max(int(self.mask.sum(1).max(initial=0)), at_least), self.candidates.shape[1])
        return Requests(self.request_id, self.user_id, self.candidates[:, :m], self.cand_scores[:, :m],
                        self.mask[:, :m])

    def columns_of(self, lists: np.ndarray) -> np.ndarray:
        """Candidate column of every id of lists [B, n] or [B, K, n]; -1 for padding and ids not offered."""
        lists = np.asarray(lists)
        wide = lists.reshape(len(lists), -1)
        match = (wide[:, :, None] == self.candidates[:, None, :]) & self.mask[:, None, :]
        columns = np.where(match.any(-1) & (wide != PAD_ID), match.argmax(-1), -1)
        return columns.reshape(lists.shape)

    def upstream_of(self, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Upstream score and rank (0 = the request's best candidate, 1 = its worst) of each listed id.

        Lists are [B, n] or [B, K, n]; padding, ids not offered and unscored candidates get NaN scores.
        """
        scores = np.where(self.mask, self.cand_scores, np.nan).astype(np.float64)
        order = np.argsort(np.where(np.isnan(scores), np.inf, -scores), axis=1, kind="stable")
        place = np.empty_like(order)
        np.put_along_axis(place, order, np.arange(order.shape[1])[None, :], 1)
        scored = (~np.isnan(scores)).sum(1, keepdims=True)
        rank = place / np.maximum(scored - 1, 1)
        columns = self.columns_of(lists)
        wide = columns.reshape(len(columns), -1)
        at = np.maximum(wide, 0)
        score = np.where(wide >= 0, np.take_along_axis(scores, at, 1), np.nan)
        rank = np.where(wide >= 0, np.take_along_axis(rank, at, 1), 1.0)
        return score.reshape(columns.shape), rank.reshape(columns.shape)

    @classmethod
    def from_arrays(cls, request_id, user_id, candidates, cand_scores) -> Requests:
        candidates = np.asarray(candidates, dtype=np.int64)
        return cls(np.asarray(request_id, dtype=np.int64), np.asarray(user_id, dtype=np.int64), candidates,
                   np.asarray(cand_scores, dtype=np.float32), candidates != PAD_ID)

    @classmethod
    def from_stream(cls, raw: dict[str, np.ndarray]) -> Requests:
        """Requests of a batch read by relist.data.stream.ParquetStream (padded columns plus masks)."""
        mask = raw["candidates_mask"]
        return cls(raw["request_id"], raw["user_id"], np.where(mask, raw["candidates"], PAD_ID),
                   np.where(mask, raw["cand_scores"], 0).astype(np.float32), mask)

    @classmethod
    def from_table(cls, table: pa.Table) -> Requests:
        """Requests of a ``lists`` table (DESIGN §4), padding ragged candidate lists."""
        cands = table.column("candidates").combine_chunks()
        scores = table.column("cand_scores").combine_chunks()
        lengths = np.diff(cands.offsets.to_numpy())
        m = int(lengths.max()) if len(lengths) else 0
        mask = np.arange(m)[None, :] < lengths[:, None]
        candidates = np.full(mask.shape, PAD_ID, dtype=np.int64)
        cand_scores = np.zeros(mask.shape, dtype=np.float32)
        candidates[mask] = cands.flatten().to_numpy(zero_copy_only=False)
        cand_scores[mask] = scores.flatten().to_numpy(zero_copy_only=False)
        return cls(table.column("request_id").to_numpy(), table.column("user_id").to_numpy(),
                   candidates, cand_scores, mask)
