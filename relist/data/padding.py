"""The one padding/mask convention for variable-length lists.

Every model, loss and metric in relist follows it:

* lists are right-padded to a common length with ``PAD_ID`` (0), which is
  never a real item id;
* ``mask`` is a boolean array of the same shape, ``True`` for real entries;
* scores at masked positions are pushed to ``NEG_INF`` (a large finite
  negative, so softmax over a fully masked row gives zeros, not NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PAD_ID = 0
NEG_INF = -1e9


def pad_lists(
    lists: Sequence[Sequence[int]], length: int | None = None, dtype=np.int64
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``lists`` to ``length`` (default: the longest); longer lists are cut."""
    length = max((len(x) for x in lists), default=0) if length is None else length
    out = np.full((len(lists), length), PAD_ID, dtype=dtype)
    mask = np.zeros((len(lists), length), dtype=bool)
    for row, values in enumerate(lists):
        k = min(len(values), length)
        out[row, :k] = np.asarray(values[:k], dtype=dtype)
        mask[row, :k] = True
    return out, mask


def length_mask(lengths: torch.Tensor | np.ndarray, length: int) -> torch.Tensor:
    """``mask[b, j] = j < lengths[b]`` (e.g. the real exposure length of a logged list)."""
    lengths = torch.as_tensor(lengths)
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def masked_fill_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with masked positions set to ``NEG_INF``."""
    return logits.masked_fill(~mask, NEG_INF)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean over the real entries along ``dim`` (0 where a row has none)."""
    mask = mask.to(values.dtype)
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    total = (values * mask).sum(dim)
    count = mask.sum(dim).clamp_min(1.0)
    return total / count
