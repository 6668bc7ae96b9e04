"""Offline metrics shared by every table relist prints: numpy in, float out.

Each metric has one implementation, so two tables can never disagree on a
definition: ``auc`` is ``gauc`` with a single group, ``ndcg_at_k`` is the mean
of ``ndcg_per_query``, which ranks by score and hands the order to
``ndcg_of_order``.  Padded 2-D inputs follow :mod:`relist.data.padding`
(``mask`` True = real entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

Empty = Literal["exclude", "zero", "one"]


@dataclass(frozen=True)
class GroupAUC:
    """GAUC with the bookkeeping a report must state: how many groups counted and how many were skipped."""

    value: float
    n_groups: int
    n_skipped: int


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    return group_auc(np.zeros(np.shape(labels), np.int64), labels, scores).value


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-group (user) AUC weighted by the group's sample count; single-class groups are skipped."""
    return group_auc(groups, labels, scores).value


def group_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> GroupAUC:
    """GAUC and its counts, from average ranks within each group (vectorised, no loop over groups)."""
    groups, labels, scores = (np.asarray(x).ravel() for x in (groups, labels, scores))
    if not len(groups) == len(labels) == len(scores):
        raise ValueError(f"lengths differ: groups {len(groups)}, labels {len(labels)}, scores {len(scores)}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    positive = labels > 0
    _, group = np.unique(groups, return_inverse=True)
    order = np.lexsort((scores, group))
    group, scores, positive = group[order], scores[order], positive[order]
    size = np.bincount(group)
    group_start = np.cumsum(size) - size
    # Runs of equal (group, score) share the average of their 1-based ranks within the group.
    run_start = np.flatnonzero(np.r_[True, (group[1:] != group[:-1]) | (scores[1:] != scores[:-1])])
    run_end = np.r_[run_start[1:], len(scores)]
    run_rank = (run_start + run_end + 1) / 2 - group_start[group[run_start]]
    rank = np.repeat(run_rank, run_end - run_start)
    n_pos = np.bincount(group, weights=positive, minlength=len(size))
    n_neg = size - n_pos
    counted = (n_pos > 0) & (n_neg > 0)
    if not counted.any():
        raise ValueError("AUC is undefined: only one class (no group has both a positive and a negative)")
    rank_sum = np.bincount(group, weights=rank * positive, minlength=len(size))[counted]
    n_pos, n_neg = n_pos[counted], n_neg[counted]
    per_group = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    value = float(np.average(per_group, weights=size[counted]))
    return GroupAUC(value, int(counted.sum()), int((~counted).sum()))


def ndcg_of_order(
    labels: np.ndarray, order: np.ndarray, mask: np.ndarray | None = None, k: int | None = None,
    empty: Empty = "exclude",
) -> np.ndarray:
    """Per-query NDCG@k of a given ranking: ``order[q, i]`` is the column of ``labels`` placed at rank i.

    For re-rankers that output permutations.  Gain 2^rel - 1, discount
    1/log2(rank + 1).  Padded columns (``mask`` False) have no gain wherever
    they are placed.  Queries without a relevant real document get NaN
    (``empty="exclude"``), 0 or 1.
    """
    labels, mask = _labels_and_mask(labels, mask)
    order = np.atleast_2d(np.asarray(order))
    if order.shape[0] != labels.shape[0]:
        raise ValueError(f"order has {order.shape[0]} rows, labels {labels.shape[0]}")
    if (np.diff(np.sort(order, axis=1), axis=1) == 0).any():
        raise ValueError("order repeats a column: it must be a permutation (or a prefix of one)")
    if empty not in ("exclude", "zero", "one"):
        raise ValueError(f"empty must be 'exclude', 'zero' or 'one', got {empty!r}")
    k = labels.shape[1] if k is None else k
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gain = np.where(mask, np.exp2(labels) - 1.0, 0.0)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ranked = np.take_along_axis(gain, order[:, :k], axis=1)
    dcg = ranked @ discount[: ranked.shape[1]]
    ideal = -np.sort(-gain, axis=1)[:, :k]
    idcg = ideal @ discount[: ideal.shape[1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = dcg / idcg
    return np.where(idcg > 0, ndcg, {"exclude": np.nan, "zero": 0.0, "one": 1.0}[empty])


def ndcg_per_query(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None, k: int | None = None,
    empty: Empty = "exclude",
) -> np.ndarray:
    """Per-query NDCG@k of ranking by ``scores`` (descending; ties keep the original order)."""
    labels, mask = _labels_and_mask(labels, mask)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape != labels.shape:
        raise ValueError(f"scores shape {scores.shape} differs from labels shape {labels.shape}")
    if np.isnan(scores[mask]).any():
        raise ValueError("scores contain NaN at real positions")
    order = np.argsort(np.where(mask, -scores, np.inf), axis=1, kind="stable")
    return ndcg_of_order(labels, order, mask, k, empty)


def ndcg_at_k(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None, k: int | None = None,
    empty: Empty = "exclude",
) -> float:
    """Mean NDCG@k over the counted queries (``empty="exclude"`` leaves out queries without relevant docs)."""
    per_query = ndcg_per_query(labels, scores, mask, k, empty)
    if np.isnan(per_query).all():
        raise ValueError("NDCG is undefined: no query has a relevant document")
    return float(np.nanmean(per_query))


def _labels_and_mask(labels: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    mask = np.ones(labels.shape, bool) if mask is None else np.atleast_2d(np.asarray(mask, dtype=bool))
    if mask.shape != labels.shape:
        raise ValueError(f"mask shape {mask.shape} differs from labels shape {labels.shape}")
    if (labels[mask] < 0).any():
        raise ValueError("relevance labels must be >= 0")
    return labels, mask


def list_reward(p_click: np.ndarray, mask: np.ndarray, exposure: np.ndarray | None = None) -> np.ndarray:
    """DCWN list reward: expected clicks of each list, i.e. per-position click probabilities summed
    over real positions, each weighted by the probability the position is seen when given; [B, n] -> [B]."""
    p_click = np.asarray(p_click, dtype=np.float64)
    weight = np.asarray(mask, dtype=np.float64)
    if exposure is not None:
        weight = weight * np.asarray(exposure, dtype=np.float64)
    return (p_click * weight).sum(axis=-1)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, e.g. of evaluator scores with true list rewards."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two equal-length samples of size >= 2, got {len(x)} and {len(y)}")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0:
        raise ValueError("Pearson correlation is undefined for a constant sample")
    return float(dx @ dy) / denom


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval (values = one number per request)."""
    values = np.asarray(values, np.float64).ravel()
    if len(values) < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {len(values)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    sem = values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), t_quantile((1 + level) / 2, len(values) - 1) * float(sem)


def paired_relative(values: np.ndarray, baseline: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Relative change of the mean against a baseline on the same requests, and its CI half-width.

    Pairing removes the request-to-request variance both policies share, so
    the interval comes from the per-request differences, divided by the
    baseline mean (treated as fixed).
    """
    values, baseline = np.asarray(values, np.float64).ravel(), np.asarray(baseline, np.float64).ravel()
    if values.shape != baseline.shape:
        raise ValueError(f"values and baseline are not paired: {values.shape} vs {baseline.shape}")
    base = float(baseline.mean())
    if base == 0:
        raise ValueError("relative change is undefined: the baseline mean is 0")
    diff, half = mean_ci(values - baseline, level)
    return diff / base, half / abs(base)


def t_quantile(p: float, dof: int) -> float:
    """Student-t quantile without scipy: exact for 1 and 2 degrees of freedom, else the
    Cornish-Fisher expansion around the normal quantile (Abramowitz & Stegun 26.7.5; for dof >= 3 and
    levels up to 99% it is within 1% of the exact value)."""
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / dof ** (i + 1) for i, term in enumerate(terms))
