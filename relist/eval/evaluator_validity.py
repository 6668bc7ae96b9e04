"""Is the evaluator's list reward a good judge? Compared with the simulator's truth on the same lists.

The seed's Figure 14 comparison: Pearson correlation of LR with the true
expected IPV of a list, next to the same figure for the sum of point-wise CTRs,
and calibration of the per-position click probability by decile. Truth is used
here only to judge, never to train or select.
"""

from __future__ import annotations

import numpy as np

from relist.eval.metrics import pearson
from relist.rerank.list_scorer import ListScorer
from relist.sim.user_model import outcomes
from relist.sim.world import World


def calibration(p_pred: np.ndarray, p_true: np.ndarray, weight: np.ndarray, bins: int = 10) -> dict:
    """Deciles of the predicted click probability: exposure-weighted mean predicted vs true rate."""
    p_pred, p_true, weight = p_pred.ravel(), p_true.ravel(), weight.ravel()
    which = np.searchsorted(np.quantile(p_pred, np.linspace(0, 1, bins + 1)[1:-1]), p_pred)
    rows = []
    for b in range(bins):
        w = weight[which == b]
        if w.sum() > 0:
            rows.append({"decile": b + 1, "predicted": float(np.average(p_pred[which == b], weights=w)),
                         "true": float(np.average(p_true[which == b], weights=w)), "weight": float(w.sum())})
    total = sum(r["weight"] for r in rows)
    gap = sum(r["weight"] * abs(r["predicted"] - r["true"]) for r in rows) / total
    return {"deciles": rows, "weighted_abs_gap": gap}


def evaluator_validity(world: World, scorer: ListScorer, user_ids: np.ndarray,
                       lists_by_source: dict[str, np.ndarray], point_ctr: dict[str, np.ndarray] | None = None
                       ) -> dict:
    """LR vs true IPV over lists from several sources ([B, n] each), plus calibration and scatter points.

    ``point_ctr`` (same keys, [B, n]) holds a point-wise model's click probabilities of the
    listed items: their sum is the context-blind list score LR is compared with.
    """
    users = np.concatenate([user_ids] * len(lists_by_source))
    lists = np.concatenate(list(lists_by_source.values()))
    truth = outcomes(world, users, lists)
    lr = np.asarray(scorer.list_reward(users, lists), dtype=np.float64)
    p_click = np.asarray(scorer.per_position(users, lists), dtype=np.float64)
    report = {
        "lists": int(len(lists)),
        "sources": list(lists_by_source),
        "pearson_lr_true_ipv": pearson(lr, truth.ipv),
        "calibration": calibration(p_click, truth.p_click, truth.exposure),
        "scatter": {"lr": lr[:2000].tolist(), "true_ipv": truth.ipv[:2000].tolist()},
    }
    if point_ctr is not None:
        sum_ctr = np.concatenate([point_ctr[name] for name in lists_by_source]).sum(-1)
        report["pearson_sum_ctr_true_ipv"] = pearson(sum_ctr, truth.ipv)
    return report
