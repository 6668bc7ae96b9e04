"""What a model version must pass before it is published or served: finite weights, and one smoke request
per model that runs without a fallback and yields finite scores.

Checksums prove a file is the one exported, not that it is any good: a run that diverged
writes NaN weights with a valid checksum, and such an evaluator rates every list NaN, which
JSON turns into ``list_reward: null`` on a response that claims no fallback. These checks
turn that into a refused version at ``relist export`` and at server start or reload.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from relist.serve.pipeline import Pipeline

SMOKE_CANDIDATES = 30
SMOKE_LIST = 10


class ModelCheckError(ValueError):
    """A model that loads but must not be served; the message names the file or the model."""


def check_finite_weights(path: Path, shown_as: str | Path | None = None) -> None:
    """Raise :class:`ModelCheckError` naming ``shown_as`` (default: ``path``) and the first tensors that hold
    NaN or infinite values."""
    bad = []
    with safe_open(path, "pt") as f:
        for name in f.keys():
            tensor = f.get_tensor(name)
            if tensor.is_floating_point() or tensor.is_complex():
                count = int((~torch.isfinite(tensor)).sum())
                if count:
                    bad.append(f"'{name}' ({count} of {tensor.numel()} values)")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelCheckError(f"{shown_as or path}: non-finite weights (NaN or inf) in tensor "
                              f"{', '.join(bad[:3])}{more}; the training run diverged or the file is damaged")


def smoke_test(pipeline: Pipeline) -> None:
    """One request through every ranker and every generator of ``pipeline`` (each forced on its own, so a
    broken one cannot hide behind a better list); raise :class:`ModelCheckError` on a failure, a fallback,
    or a score or list reward that is not finite."""
    n_items = pipeline.store.n_items
    ids = pipeline.popular[:min(SMOKE_CANDIDATES, n_items)]
    for name, rank in pipeline.rankers.items():
        try:
            scores = np.asarray(rank(pipeline.store, 0, ids), dtype=np.float64)
        except Exception as err:
            raise ModelCheckError(f"ranker '{name}' fails on a smoke request: {type(err).__name__}: {err}") from err
        if scores.shape != ids.shape or not np.isfinite(scores).all():
            raise ModelCheckError(f"ranker '{name}' gives non-finite or misshapen scores on a smoke request "
                                  f"(shape {scores.shape}, {int((~np.isfinite(scores)).sum())} non-finite)")
    for strategy in pipeline.strategies:
        result = pipeline.rerank(pipeline.request_input(None, ids, None, SMOKE_LIST), strategy)
        if result.fallback:
            raise ModelCheckError(f"generator '{strategy}' fails on a smoke request: {result.error}")
        if result.list_reward is None or not math.isfinite(result.list_reward):
            raise ModelCheckError(f"generator '{strategy}': the {pipeline.scorer.name} scorer rates its smoke "
                                  f"list {result.list_reward} (not a finite list reward)")
