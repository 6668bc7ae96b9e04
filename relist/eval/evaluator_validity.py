"""Is the evaluator a good judge of the lists it has to choose among? Checked against the simulator's truth.

List ranking, GRN training and LAST all trust the evaluator on lists the generators propose, which
may look nothing like the logged lists it learned from. So the lists scored here are exactly what
each generator proposes on held-out requests (plus the logged ones). Per generator:

* **bias**: mean predicted value minus mean true value (over-estimation grows with the distance
  from the logs);
* **Pearson / Kendall's tau across requests** of the predicted and true value of its lists;
and over all proposals of a request together:
* **Kendall's tau within a request** (can it order one request's lists?);
* **winner's curse**: the true value of the list the evaluator would pick (by its mean, and by its
  pessimistic value) against the truly best proposal in the same set — the headroom list ranking
  leaves. Truth is used here only to judge, never to train or select; per-position calibration by
  decile is reported as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.eval.metrics import mean_ci, pearson
from relist.eval.rerank import LoggedTest, RerankEvalConfig
from relist.objective import Objective
from relist.rerank.generators import Context
from relist.rerank.list_ranking import ListRanking
from relist.rerank.list_scorer import ListScorer, pessimistic
from relist.rerank.registry import Models, build_generators
from relist.sim.user_model import outcomes
from relist.sim.world import World, is_simulated, world_of_logs


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


def _tau(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(kendalltau(x, y)[0])


def evaluator_validity(world: World, scorer: ListScorer, requests: Requests, proposals: dict[str, np.ndarray],
                       objective: Objective = Objective(), beta: float = 1.0) -> dict:
    """The table of the module docstring for ``proposals`` (generator -> lists [B, K, n]) on ``requests``."""
    names = list(proposals)
    sizes = [proposals[name].shape[1] for name in names]
    stacked = np.concatenate([proposals[name] for name in names], 1)  # [B, K, n]
    b, k, n = stacked.shape
    members = np.asarray(scorer.values(requests, stacked, objective), dtype=np.float64)  # [E, B, K]
    predicted = members.mean(0)
    pess = pessimistic(members, beta)
    users = np.repeat(requests.user_id, k)
    truth = outcomes(world, users, stacked.reshape(b * k, n))
    true_value = truth.metric(objective if len(objective.weights) > 1 else objective.label).reshape(b, k)
    spread = members.std(0, ddof=1) if len(members) > 1 else np.zeros_like(predicted)

    rows, start = {}, 0
    for name, size in zip(names, sizes, strict=True):
        first = start  # each generator's preferred list
        pred, real = predicted[:, first], true_value[:, first]
        bias, bias_ci = mean_ci(pred - real)
        rows[name] = {
            "lists_per_request": size, "predicted": float(pred.mean()), "true": float(real.mean()),
            "bias": bias, "bias_ci95": bias_ci, "spread": float(spread[:, first].mean()),
            "pearson_across_requests": pearson(pred, real), "kendall_across_requests": _tau(pred, real),
        }
        start += size
    within = np.array([_tau(predicted[r], true_value[r]) for r in range(b)])
    at = np.arange(b)
    best_true = true_value.max(1)
    picks = {"mean": predicted.argmax(1), "pessimistic": pess.argmax(1)}
    curse = {rule: {"true_of_pick": float(true_value[at, pick].mean()), "true_best": float(best_true.mean()),
                    "regret": float((best_true - true_value[at, pick]).mean()),
                    "predicted_of_pick": float(predicted[at, pick].mean())}
             for rule, pick in picks.items()}
    p_click = scorer.terms(requests[np.repeat(at, k)], stacked.reshape(b * k, n))  # [E, B*K, n, 4]
    exposure = p_click[..., 0].mean(0)
    click = np.where(exposure > 0, p_click[..., 1].mean(0) / np.maximum(exposure, 1e-12), 0.0)
    return {
        "requests": b, "lists": b * k, "generators": rows,
        "kendall_within_request": float(np.nanmean(within)),
        "pearson_all_lists": pearson(predicted.ravel(), true_value.ravel()),
        "winners_curse": curse,
        "calibration": calibration(click, truth.p_click, truth.exposure),
        "scatter": {"predicted": predicted[:, :].ravel()[:3000].tolist(),
                    "true": true_value.ravel()[:3000].tolist()},
    }


def generator_validity(world: World, scorer: ListScorer, policies: dict, requests: Requests, shown: np.ndarray,
                       n: int, ctx: Context, beta: float = 1.0) -> dict:
    """The instrument on the logged lists ``shown`` [B, n'] and on what each generator of ``policies``
    proposes for ``requests`` (list rankings are left out: they choose among these, they do not propose)."""
    proposals = {"logged": shown[:, None]}
    proposals |= {name: policy.propose(requests, n, ctx) for name, policy in policies.items()
                  if not isinstance(policy, ListRanking)}
    return evaluator_validity(world, scorer, requests, proposals, ctx.objective, beta)


def evaluate_evaluator(cfg: RerankEvalConfig, data_dir: str | Path, models_dir: str | Path,
                       requests: int = 300) -> dict:
    """The instrument for a models folder on the first ``requests`` test requests of simulated logs:
    every policy of ``cfg`` its models allow proposes."""
    if not is_simulated(data_dir):
        raise FileNotFoundError(f"{data_dir}: no simulated logs here (no sim_config.yaml); evaluator validity "
                                "needs the simulator's truth")
    store = FeatureStore.from_dir(data_dir)
    models, _ = Models.load(models_dir, store)
    if models.evaluator is None:
        raise FileNotFoundError(f"{Path(models_dir) / 'evaluator'}: no trained evaluator to judge")
    generators, _ = build_generators(cfg.policies, models, cfg.rerank)
    logged = LoggedTest.read(data_dir, requests)
    ctx = Context(store, cfg.rerank.rules.build(), cfg.rerank.objective)
    return generator_validity(world_of_logs(data_dir), models.evaluator, generators, logged.requests,
                              logged.shown, cfg.n, ctx, cfg.rerank.ranking.beta) | {
        "data": str(data_dir), "models": str(models_dir), "config": cfg.model_dump(mode="json")}
