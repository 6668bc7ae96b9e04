"""A batch of re-ranking requests: what every policy sees, and nothing more.

A request is a user and ``m`` candidates in upstream order with their upstream
scores. Candidate lists shorter than the longest are padded (relist.data.padding).
"""

from __future__ import annotations

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

    def trimmed(self, at_least: int = 0) -> Requests:
        """Without the padding columns no request of the batch uses (a request alone has its own length),
        keeping ``at_least`` columns (e.g. the list length policies fill)."""
        m = min(max(int(self.mask.sum(1).max(initial=0)), at_least), self.candidates.shape[1])
        return Requests(self.request_id, self.user_id, self.candidates[:, :m], self.cand_scores[:, :m],
                        self.mask[:, :m])

    @classmethod
    def from_arrays(cls, request_id, user_id, candidates, cand_scores) -> Requests:
        candidates = np.asarray(candidates, dtype=np.int64)
        return cls(np.asarray(request_id, dtype=np.int64), np.asarray(user_id, dtype=np.int64), candidates,
                   np.asarray(cand_scores, dtype=np.float32), candidates != PAD_ID)

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
