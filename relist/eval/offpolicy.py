"""Off-policy estimates of a list policy's value from logs that carry the logging policy's propensities.

A new re-ranking policy serves, for each logged request, a deterministic list L (its lists [B, n]).
Its value — the expected sum of a per-slot reward (clicks for IPV, seen slots for PV) — is estimated
from what the logging policy showed (s), the per-slot rewards observed, and the logging policy's
probabilities. The estimators differ in what they assume about the reward, and so in bias and variance:

* ``ips`` / ``snips``: the whole list must match, weight 1/μ(s). Unbiased for any reward; almost no
  logged list equals a new policy's list, so the variance is huge (SNIPS divides by the mean weight).
* ``iips`` / ``sniips`` (independent): slot k counts when s_k = L_k, weight 1/μ(s_k at k). Unbiased when
  a slot's reward depends only on its item and position (Li et al., 2018).
* ``rips`` / ``snrips`` (cascade / reward interaction): slot k counts when the prefix s_1..k = L_1..k,
  weight 1/μ(s_1..k). Unbiased when a slot's reward depends only on the items up to it
  (McInerney et al., 2020).
* ``pi`` (pseudo-inverse): only the list's total reward is used, unbiased when it is additive over
  (slot, item); needs the logging policy's pairwise slot probabilities Γ (Swaminathan et al., 2017).
* ``dm`` (direct method): a reward model's prediction for L; no weights, the model's bias.
* ``dr`` / ``dr_cascade`` (doubly robust): the reward model for L plus the importance-weighted residual
  r - r̂ of the logged list, with the independent or the cascade weights (Kiyohara et al., 2022).

Every estimate comes with a 95% percentile-bootstrap CI over logged requests (one resampling shared by
all estimators and policies, so differences are paired), the bootstrap standard error and the Kish
effective sample size of its weights. Nothing here knows how the target lists were produced: a policy
is its lists, a reward model a callable ``click_model(user_ids, cand_ids, cand_scores, lists) -> [B, n]``
of per-position expected rewards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
import pyarrow as pa

from relist.data.padding import PAD_ID
from relist.sim.propensity import candidate_index

RewardModel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
REWARDS = ("ipv", "pv", "buys")


@dataclass
class SlateLogs:
    """Logged requests with the logging policy's probabilities: what every estimator reads."""

    user_id: np.ndarray  # [B]
    candidates: np.ndarray  # [B, m] item ids, PAD_ID as padding
    cand_scores: np.ndarray  # [B, m]
    shown: np.ndarray  # [B, n]
    rewards: np.ndarray  # [B, n] per-slot reward, 0 beyond the real exposure
    propensity: np.ndarray  # [B, n] P(s_k at slot k | s_1..k-1)
    marginal: np.ndarray | None = None  # [B, n] P(s_k at slot k)

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def mask(self) -> np.ndarray:
        return self.candidates != PAD_ID

    @cached_property
    def prefix_propensity(self) -> np.ndarray:
        """P(s_1..k) [B, n]; the last column is the list's probability."""
        return np.cumprod(self.propensity, axis=1)

    @property
    def list_reward(self) -> np.ndarray:
        return self.rewards.sum(1)

    @classmethod
    def from_table(cls, table: pa.Table, reward: str = "ipv") -> SlateLogs:
        """From a validated ``lists`` table with the propensity family (relist.data.schema)."""
        from relist.data.requests import Requests

        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose from {REWARDS}")
        requests = Requests.from_table(table)

        def grid(name: str, dtype) -> np.ndarray:
            column = table.column(name).combine_chunks()
            return column.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(column), -1)

        shown = grid("shown", np.int64)
        seen = np.arange(shown.shape[1])[None, :] < table.column("exposed_len").to_numpy()[:, None]
        if reward == "pv":
            rewards = seen.astype(np.float64)
        else:
            rewards = grid("click" if reward == "ipv" else "buy", np.float64) * seen
        marginal = grid("propensity_marginal", np.float64) if "propensity_marginal" in table.column_names else None
        return cls(requests.user_id, requests.candidates, requests.cand_scores, shown, rewards,
                   grid("propensity", np.float64), marginal)


class PseudoInverse(Protocol):
    """What the pseudo-inverse estimator needs from the logging policy beyond the logged propensities."""

    def weights(self, logs: SlateLogs, target: np.ndarray) -> np.ndarray:
        """Per row the weight θ_L·Γ⁺·1_s [B] of the logged list s for the target list L."""
        ...


@dataclass
class RankGram:
    """Γ of a logging policy whose probabilities depend on a request only through its candidates' ranks.

    ``gram(m, n)`` gives P(rank a at slot j, rank b at slot k) [n, m, n, m]; ``ranks(logs)`` each
    candidate's rank [B, m]. The pseudo-inverse is taken once per candidate count m.
    """

    gram: Callable[[int, int], np.ndarray]
    ranks: Callable[[SlateLogs], np.ndarray]
    rcond: float = 1e-10

    def __post_init__(self) -> None:
        self._pinv: dict[tuple[int, int], np.ndarray] = {}

    def pinv(self, m: int, n: int) -> np.ndarray:
        if (m, n) not in self._pinv:
            self._pinv[m, n] = np.linalg.pinv(self.gram(m, n).reshape(n * m, n * m), rcond=self.rcond,
                                              hermitian=True)
        return self._pinv[m, n]

    def weights(self, logs: SlateLogs, target: np.ndarray) -> np.ndarray:
        ranks = self.ranks(logs)
        n = logs.shown.shape[1]
        slot = np.arange(n)[None, :]
        real = logs.mask.sum(1)
        out = np.zeros(len(logs))
        for m in np.unique(real):
            rows = np.flatnonzero(real == m)
            logged = slot * m + np.take_along_axis(ranks[rows], candidate_index(logs.candidates[rows],
                                                                                logs.shown[rows]), 1)
            wanted = slot * m + np.take_along_axis(ranks[rows], candidate_index(logs.candidates[rows],
                                                                                target[rows]), 1)
            out[rows] = self.pinv(int(m), n)[wanted[:, :, None], logged[:, None, :]].sum((1, 2))
        return out


@dataclass
class Terms:
    """An estimate as means over rows: Σ_k mean(numer[:, k]) / mean(denom[:, k]) (denom 1 if None)."""

    numer: np.ndarray  # [B, K]
    denom: np.ndarray | None = None  # [B, K]: self-normalised
    weights: np.ndarray | None = None  # [B, K] importance weights, for the effective sample size


class Inputs:
    """One (logs, target) pair, with what the estimators share computed once."""

    def __init__(self, logs: SlateLogs, target: np.ndarray, evaluator: OffPolicyEvaluator):
        if target.shape != logs.shown.shape:
            raise ValueError(f"target lists have shape {target.shape}; the logged lists {logs.shown.shape}")
        candidate_index(logs.candidates, target)  # every listed item must be a candidate of its request
        self.logs, self.target, self._evaluator = logs, np.asarray(target), evaluator

    @cached_property
    def slot_match(self) -> np.ndarray:
        return self.logs.shown == self.target

    @cached_property
    def prefix_match(self) -> np.ndarray:
        return np.cumprod(self.slot_match, axis=1).astype(bool)

    @cached_property
    def list_weight(self) -> np.ndarray:
        return self.prefix_match[:, -1] / self.logs.prefix_propensity[:, -1]

    @cached_property
    def independent_weights(self) -> np.ndarray:
        return self.slot_match / self.logs.marginal

    @cached_property
    def cascade_weights(self) -> np.ndarray:
        return self.prefix_match / self.logs.prefix_propensity

    @cached_property
    def predicted_target(self) -> np.ndarray:
        return self._evaluator.predict(self.target)

    @property
    def predicted_logged(self) -> np.ndarray:
        return self._evaluator.predicted_logged

    @cached_property
    def pi_weights(self) -> np.ndarray:
        return self._evaluator.gram.weights(self.logs, self.target)


class Estimator(ABC):
    name: str
    summary: str
    needs: tuple[str, ...] = ()  # of "marginal", "gram", "click_model"

    @abstractmethod
    def terms(self, x: Inputs) -> Terms: ...


class SelfNormalised:
    """Mixed in before an importance-weighted estimator: each slot's sum divided by its mean weight."""

    def terms(self, x: Inputs) -> Terms:
        t = super().terms(x)
        return Terms(t.numer, denom=t.weights, weights=t.weights)


class ListIPS(Estimator):
    name, summary = "ips", "whole-list importance weighting; unbiased for any reward"

    def terms(self, x: Inputs) -> Terms:
        w = x.list_weight[:, None]
        return Terms(w * x.logs.list_reward[:, None], weights=w)


class ListSNIPS(SelfNormalised, ListIPS):
    name, summary = "snips", "whole-list weighting divided by the mean weight"


class IndependentIPS(Estimator):
    name, summary = "iips", "per slot, item at its slot; unbiased if a slot's reward ignores the others"
    needs = ("marginal",)

    def terms(self, x: Inputs) -> Terms:
        w = x.independent_weights
        return Terms(w * x.logs.rewards, weights=w)


class IndependentSNIPS(SelfNormalised, IndependentIPS):
    name, summary = "sniips", "independent IPS, each slot divided by its mean weight"


class CascadeIPS(Estimator):
    name, summary = "rips", "per slot, prefix up to it; unbiased if a slot's reward ignores what follows"

    def terms(self, x: Inputs) -> Terms:
        w = x.cascade_weights
        return Terms(w * x.logs.rewards, weights=w)


class CascadeSNIPS(SelfNormalised, CascadeIPS):
    name, summary = "snrips", "cascade IPS, each slot divided by its mean weight"


class PseudoInverseEstimator(Estimator):
    name, summary = "pi", "list total only; unbiased if it is additive over (slot, item)"
    needs = ("gram",)

    def terms(self, x: Inputs) -> Terms:
        q = x.pi_weights[:, None]
        return Terms(q * x.logs.list_reward[:, None], weights=q)


class DirectMethod(Estimator):
    name, summary = "dm", "the reward model's prediction for the target list; no weights"
    needs = ("click_model",)

    def terms(self, x: Inputs) -> Terms:
        return Terms(x.predicted_target.sum(1, keepdims=True))


class DoublyRobust(Estimator):
    name, summary = "dr", "reward model + independent-weighted residuals of the logged list"
    needs = ("marginal", "click_model")

    def weights(self, x: Inputs) -> np.ndarray:
        return x.independent_weights

    def terms(self, x: Inputs) -> Terms:
        w = self.weights(x)
        return Terms(x.predicted_target + w * (x.logs.rewards - x.predicted_logged), weights=w)


class CascadeDoublyRobust(DoublyRobust):
    name, summary = "dr_cascade", "reward model + cascade-weighted residuals of the logged list"
    needs = ("click_model",)

    def weights(self, x: Inputs) -> np.ndarray:
        return x.cascade_weights


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    ListIPS(), ListSNIPS(), IndependentIPS(), IndependentSNIPS(), CascadeIPS(), CascadeSNIPS(),
    PseudoInverseEstimator(), DirectMethod(), DoublyRobust(), CascadeDoublyRobust())}


@dataclass
class Estimate:
    estimator: str
    value: float
    ci95: tuple[float, float]
    std_err: float  # standard deviation over bootstrap resamples
    ess: float  # Kish effective sample size of the weights (mean over the slots weighed)
    matched: float  # share of rows with a nonzero weight (mean over slots)
    rows: int
    vs_logging: float  # relative change vs the logging policy's own (on-policy) value
    vs_logging_ci95: tuple[float, float]

    def as_dict(self) -> dict:
        return asdict(self)


class OffPolicyEvaluator:
    """Runs the estimators on one log for any number of target policies, sharing one bootstrap."""

    def __init__(self, logs: SlateLogs, click_model: RewardModel | None = None,
                 gram: PseudoInverse | None = None, resamples: int = 500, seed: int = 0):
        self.logs, self.click_model, self.gram = logs, click_model, gram
        rng = np.random.default_rng(seed)
        b = len(logs)
        self.counts = np.stack([np.bincount(rng.integers(0, b, b), minlength=b)
                                for _ in range(resamples)]).astype(np.float64)  # [R, B]

    def missing(self, estimator: str | Estimator) -> str | None:
        """Why an estimator cannot run on these logs (None when it can)."""
        est = ESTIMATORS[estimator] if isinstance(estimator, str) else estimator
        reasons = {"marginal": self.logs.marginal is None and "the logs have no propensity_marginal column",
                   "click_model": self.click_model is None and "no reward model (evaluator) was given",
                   "gram": self.gram is None and "the logging policy's pairwise slot probabilities are unknown"}
        found = [reasons[need] for need in est.needs if reasons[need]]
        return "; ".join(found) if found else None

    def available(self, estimators: list[str] | None = None) -> list[str]:
        return [name for name in (estimators or list(ESTIMATORS)) if self.missing(name) is None]

    def predict(self, lists: np.ndarray) -> np.ndarray:
        """The reward model's per-position expected reward [B, n] of ``lists`` for the logged requests."""
        logs = self.logs
        out = np.asarray(self.click_model(logs.user_id, logs.candidates, logs.cand_scores, lists), dtype=np.float64)
        if out.shape != lists.shape:
            raise ValueError(f"click_model returned shape {out.shape} for lists of shape {lists.shape}")
        return out

    @cached_property
    def predicted_logged(self) -> np.ndarray:
        return self.predict(self.logs.shown)

    @cached_property
    def logging_replicates(self) -> np.ndarray:
        return self.counts @ self.logs.list_reward / len(self.logs)

    def estimate(self, target: np.ndarray, estimators: list[str] | None = None) -> dict[str, Estimate]:
        """Every available estimator's estimate of the value of the policy that serves ``target`` [B, n]."""
        x = Inputs(self.logs, target, self)
        return {name: self._summarise(name, ESTIMATORS[name].terms(x)) for name in self.available(estimators)}

    def _summarise(self, name: str, terms: Terms) -> Estimate:
        b = len(self.logs)
        value = _ratio_sum(terms.numer.sum(0) / b, None if terms.denom is None else terms.denom.sum(0) / b)
        reps = _ratio_sum(self.counts @ terms.numer / b, None if terms.denom is None else self.counts @ terms.denom / b)
        logging = float(self.logs.list_reward.mean())
        rel = (reps - self.logging_replicates) / np.where(self.logging_replicates > 0, self.logging_replicates, np.nan)
        ess, matched = (float(b), 1.0) if terms.weights is None else effective_sample_size(terms.weights)
        return Estimate(
            estimator=name, value=float(value), ci95=_percentiles(reps), std_err=float(reps.std(ddof=1)),
            ess=ess, matched=matched, rows=b,
            vs_logging=float(value / logging - 1.0) if logging > 0 else float("nan"),
            vs_logging_ci95=_percentiles(rel))


def _ratio_sum(numer: np.ndarray, denom: np.ndarray | None) -> np.ndarray:
    """Σ over the last axis of numer / denom (0 where a slot has no weight at all)."""
    if denom is None:
        return numer.sum(-1)
    return np.divide(numer, denom, out=np.zeros_like(numer), where=denom != 0).sum(-1)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return (float("nan"), float("nan"))
    low, high = np.percentile(finite, [2.5, 97.5])
    return (float(low), float(high))


def effective_sample_size(weights: np.ndarray) -> tuple[float, float]:
    """Kish ESS (Σw)²/Σw² per column, averaged over columns, and the share of nonzero weights."""
    total, squares = weights.sum(0), (weights ** 2).sum(0)
    ess = np.divide(total ** 2, squares, out=np.zeros_like(total), where=squares > 0)
    return float(ess.mean()), float((weights != 0).mean())
