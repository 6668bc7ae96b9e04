"""The stages of re-ranking: generators that propose lists, scorers that rate them, rankers for recommend.

A stage maps one request (:class:`RerankInput`) to candidate lists [K, n]; it is
built from the pipeline config and the trained models a version carries, and is
not built when a model it needs is missing. Every stage reads features through
``inp.store``, which carries the request's user overrides. A new generator is one
more entry of ``STAGE_BUILDERS``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from relist.data.features import FeatureStore
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.eval.metrics import list_reward
from relist.models.ranking.scoring import point_scores
from relist.rerank.beam import ListValue, beam_search
from relist.rerank.grn_policy import GRNPolicy
from relist.rerank.last import LAST
from relist.rerank.policy import greedy_by_score, upstream_order
from relist.rerank.rules import BusinessRules, RulesConfig
from relist.serve.budget import Budget
from relist.serve.config import PipelineConfig

UPSTREAM = "upstream"


@dataclass(frozen=True)
class RerankInput:
    """One request as stages see it: a single-row :class:`Requests` plus its item attributes."""

    requests: Requests  # one row; scores are the upstream scores (or a stand-in from the order)
    n: int  # list length actually served: min(requested n, candidates)
    cates: np.ndarray  # [1, m] store convention (0 = unknown), request overrides applied
    shops: np.ndarray  # [1, m]
    store: FeatureStore  # the version's store, or a view of it carrying this request's user overrides
    budget: Budget = field(default_factory=lambda: Budget(math.inf))  # the request's (set by the pipeline)

    @property
    def m(self) -> int:
        return self.requests.candidates.shape[1]

    def columns(self, lists: np.ndarray) -> np.ndarray:
        """Candidate column of each item of lists [K, n]; ``m`` for padding (and for ids not offered)."""
        ids = self.requests.candidates[0]
        order = np.argsort(ids)
        at = np.searchsorted(ids[order], lists).clip(0, len(ids) - 1)
        return np.where(ids[order][at] == lists, order[at], self.m)

    def keeps_rules(self, lists: np.ndarray, rules: BusinessRules) -> np.ndarray:
        """Per list [K]: True when it keeps the business rules (request category/shop overrides apply)."""
        cols = self.columns(lists)
        cates, shops = (np.append(x[0], 0)[cols] for x in (self.cates, self.shops))
        return rules.check(torch.as_tensor(cates), torch.as_tensor(shops)).numpy()


Stage = Callable[[RerankInput], np.ndarray]  # -> candidate lists [K, n] of item ids
Ranker = Callable[[FeatureStore, int, np.ndarray], np.ndarray]  # (store, user, ids) -> click probabilities


class UpstreamScorer:
    """List reward without a learned evaluator: upstream scores weighted by ``p_next ** position``."""

    name = "upstream_scores"

    def __init__(self, p_next: float):
        self.p_next = p_next

    def __call__(self, inp: RerankInput, lists: np.ndarray) -> np.ndarray:
        scores = np.append(np.clip(inp.requests.cand_scores[0], 0.0, 1.0), 0.0)  # column m: padding
        exposure = self.p_next ** np.arange(lists.shape[1])[None, :]
        return list_reward(scores[inp.columns(lists)], lists != PAD_ID, exposure)


class EvaluatorScorer:
    """The evaluator's LR (relist.rerank.list_scorer), with the request's user overrides."""

    name = "evaluator"

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self, inp: RerankInput, lists: np.ndarray) -> np.ndarray:
        scorer = _on_store(self.scorer, inp.store)
        users = np.repeat(inp.requests.user_id, len(lists))
        return np.asarray(scorer.list_reward(users, lists), dtype=np.float64)


def _on_store(model, store: FeatureStore):
    """``model`` (anything holding a ``store``) reading features from ``store``: a shallow copy if needed."""
    if model.store is store:
        return model
    view = copy.copy(model)
    view.store = store
    return view


@dataclass(frozen=True)
class Models:
    """Trained models a version carries, by role; a stage needing a missing role is not built."""

    evaluator: object | None = None  # relist.rerank.list_scorer.ListScorer
    generator: object | None = None  # relist.models.generator.GRN
    ranker: object | None = None  # fine-ranking teacher with ctr and next heads (relist.models.ranking)
    coarse: object | None = None  # relist.models.ranking.scoring.CoarseScorer over the DSSM student


PointScores = Callable[[RerankInput], tuple[np.ndarray, np.ndarray]]  # -> p_ctr, p_next [1, m]


def _rules(config: PipelineConfig) -> BusinessRules:
    return BusinessRules(cate_window=config.cate_window, max_per_shop=config.max_per_shop)


def _beam(config: PipelineConfig, probabilities: PointScores) -> Stage:
    """Beam search over point-wise click and scroll probabilities, under the rules (overrides apply)."""
    weights, rules = ListValue(**config.list_value), _rules(config)

    def stage(inp: RerankInput) -> np.ndarray:
        p_ctr, p_next = probabilities(inp)
        req = inp.requests
        lists = beam_search(p_ctr, p_next, req.candidates, inp.cates, inp.shops, req.mask, inp.n,
                            config.beam_width, weights, rules)
        return lists.items[0][lists.valid[0]]

    return stage


def _upstream_point_scores(config: PipelineConfig) -> PointScores:
    """The upstream scores as click probabilities and a constant scroll probability."""

    def scores(inp: RerankInput) -> tuple[np.ndarray, np.ndarray]:
        p_ctr = np.clip(inp.requests.cand_scores, 0.0, 1.0)
        return p_ctr, np.full_like(p_ctr, config.p_next)

    return scores


def _ranker_point_scores(ranker) -> PointScores:
    def scores(inp: RerankInput) -> tuple[np.ndarray, np.ndarray]:
        p = point_scores(ranker, inp.store, inp.requests)
        return p["ctr"], p["next"]

    return scores


def _grn(config: PipelineConfig, generator) -> Stage:
    """The GRN's most likely list under the rules (a policy object per request: it is cheap and holds the
    request's store view)."""
    rules = _rules(config)
    return lambda inp: GRNPolicy(generator, inp.store, rules=rules)(inp.requests, inp.n)


def _last(config: PipelineConfig, generator, evaluator) -> Stage:
    """LAST over the GRN and the evaluator: a per-request shift, searched within what is left of the
    request's budget (capped by ``config.last.budget_ms``); it returns the best list it found."""
    rules = RulesConfig(cate_window=config.cate_window, max_per_shop=config.max_per_shop)
    last = LAST(generator, evaluator, evaluator.store, config.last.model_copy(update={"rules": rules}))
    cap = math.inf if config.last.budget_ms is None else config.last.budget_ms

    def stage(inp: RerankInput) -> np.ndarray:
        view = copy.copy(last)  # shares the model, weights and phase-cost estimates
        budget_ms = min(cap, inp.budget.remaining_ms())
        view.cfg = last.cfg.model_copy(update={"budget_ms": budget_ms if math.isfinite(budget_ms) else None})
        view.store, view.scorer = inp.store, _on_store(evaluator, inp.store)
        return view.rerank(inp.requests, inp.n).lists

    return stage


StageBuilder = Callable[[PipelineConfig, Models], Stage | None]

STAGE_BUILDERS: dict[str, StageBuilder] = {
    "greedy_upstream_score": lambda cfg, models: _policy_stage(greedy_by_score),
    "beam_upstream": lambda cfg, models: _beam(cfg, _upstream_point_scores(cfg)),
    "beam": lambda cfg, models: _beam(cfg, _ranker_point_scores(models.ranker)) if models.ranker else None,
    "grn": lambda cfg, models: _grn(cfg, models.generator) if models.generator else None,
    "last": lambda cfg, models: (_last(cfg, models.generator, models.evaluator)
                                 if models.generator and models.evaluator else None),
}


def _coarse_ranker(coarse) -> Ranker:
    """The DSSM's serving form: one user-tower pass against the precomputed item matrix."""
    return lambda store, user_id, ids: _sigmoid(_on_store(coarse, store).score(user_id, ids))


def _fine_ranker(ranker) -> Ranker:
    """The fine-ranking teacher's click probability of each item."""

    def rank(store: FeatureStore, user_id: int, ids: np.ndarray) -> np.ndarray:
        requests = Requests.from_arrays([0], [user_id], ids[None, :], np.zeros((1, len(ids)), np.float32))
        return point_scores(ranker, store, requests)["ctr"][0]

    return rank


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def _policy_stage(policy) -> Stage:
    return lambda inp: policy(inp.requests, inp.n)


def build_stages(config: PipelineConfig, models: Models) -> tuple[dict[str, Stage], list[str]]:
    """The upstream floor plus the configured stages in order, and the names left out for a missing model."""
    stages: dict[str, Stage] = {UPSTREAM: _policy_stage(upstream_order)}
    left_out = []
    for name in config.stages:
        if name not in STAGE_BUILDERS:
            raise ValueError(f"pipeline stage '{name}' is unknown (known: {', '.join(STAGE_BUILDERS)})")
        stage = STAGE_BUILDERS[name](config, models)
        if stage is None:
            left_out.append(name)
        else:
            stages[name] = stage
    return stages, left_out


def build_scorer(config: PipelineConfig, models: Models) -> UpstreamScorer | EvaluatorScorer:
    if models.evaluator is None:
        return UpstreamScorer(config.p_next)
    return EvaluatorScorer(models.evaluator)


def build_rankers(models: Models) -> dict[str, Ranker]:
    """/v1/recommend's ranking stages, in order: "coarse" (DSSM) then "fine" (teacher), where present."""
    built = (("coarse", _coarse_ranker, models.coarse), ("fine", _fine_ranker, models.ranker))
    return {name: build(model) for name, build, model in built if model is not None}
