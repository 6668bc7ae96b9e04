"""What the server runs for one request: named stages under a time budget, the best list wins.

Stages (relist.serve.stages) propose lists; the scorer rates every list a stage
proposes (the evaluator's LR when the model version has one); the best list so far
is kept, a list that keeps the business rules always ranking above one that breaks
them. The upstream order is the floor: it is always there, it wins ties, and it is
what a request gets when a model fails. A stage that would overrun the request's
time budget is skipped before it starts (relist.serve.budget).

A :class:`Pipeline` is immutable once built (its cost estimates aside), so a hot
reload swaps one reference and a request in flight finishes on the version it
started with.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from time import perf_counter
from typing import Protocol

import numpy as np

from relist.data.features import FeatureStore
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.rerank.rules import BusinessRules
from relist.serve.budget import Budget, StageCosts
from relist.serve.config import PipelineConfig
from relist.serve.stages import (
    UPSTREAM,
    EvaluatorScorer,
    Models,
    Ranker,
    RerankInput,
    Stage,
    UpstreamScorer,
    build_rankers,
    build_scorer,
    build_stages,
)

log = logging.getLogger(__name__)


@dataclass
class RerankResult:
    items: np.ndarray  # [n] item ids
    list_reward: float | None
    generator: str
    fallback: bool = False
    breaks_rules: bool = False  # the served list breaks a business rule (no list that ran keeps them all)
    budget_exceeded: bool = False
    skipped: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # what failed, when fallback
    failed_stage: str | None = None


RULE_PENALTY = 1e9  # a list that breaks a rule ranks below every list that keeps them all


def _better(new: tuple[bool, float], old: tuple[bool, float | None]) -> bool:
    """(keeps the rules, LR) ordering; an unscored old list loses to anything; ties keep the old one."""
    if old[1] is None:
        return True
    return new[0] > old[0] or (new[0] == old[0] and new[1] > old[1])


class UnknownStrategy(ValueError):
    def __init__(self, name: str, available: list[str]):
        self.name, self.available = name, available
        super().__init__(f"unknown strategy '{name}' for this model version; "
                         f"available: {', '.join(available)}")


@dataclass(frozen=True)
class Pipeline:
    """One model version, ready to serve: its catalogue, stages and scorer."""

    version: str
    store: FeatureStore
    stages: dict[str, Stage]  # UPSTREAM first
    scorer: UpstreamScorer | EvaluatorScorer
    config: PipelineConfig
    rankers: dict[str, Ranker]  # "coarse" and/or "fine", for /v1/recommend
    rules: BusinessRules
    popularity: np.ndarray  # [n_items + 1] clicks in the users' histories, for /v1/recommend's recall
    costs: StageCosts = field(default_factory=StageCosts)

    @property
    def strategies(self) -> list[str]:
        return list(self.stages)

    def rerank(self, inp: RerankInput, strategy: str | None = None,
               budget_ms: float = float("inf")) -> RerankResult:
        """The best list the budget allows; the upstream order when a stage fails."""
        if strategy is not None and strategy not in self.stages:
            raise UnknownStrategy(strategy, self.strategies)
        budget = Budget(budget_ms)
        inp = dataclasses.replace(inp, budget=budget)
        names = self.strategies if strategy is None else list(dict.fromkeys([UPSTREAM, strategy]))
        upstream = inp.requests.candidates[0, :inp.n]
        upstream_breaks = not inp.keeps_rules(upstream[None, :], self.rules)[0]
        result = RerankResult(upstream, None, UPSTREAM, breaks_rules=upstream_breaks)
        for name in names:
            if not budget.affords(self.costs.expected_ms(name, inp.m, inp.n)):
                result.skipped.append(name)
                continue
            start = perf_counter()
            try:
                lists = self.stages[name](inp)
                rewards = self.scorer(inp, lists)
            except Exception as err:  # any model error: serve the floor, never fail the request
                log.exception("stage %s of model version %s failed", name, self.version)
                return RerankResult(upstream, None, UPSTREAM, fallback=True, breaks_rules=upstream_breaks,
                                    skipped=result.skipped, timings_ms=result.timings_ms,
                                    error=f"{type(err).__name__}: {err}", failed_stage=name)
            ms = (perf_counter() - start) * 1e3
            result.timings_ms[name] = ms
            self.costs.record(name, inp.m, inp.n, ms)
            keeps = inp.keeps_rules(lists, self.rules)
            best = int(np.argmax(np.where(keeps, rewards, rewards - RULE_PENALTY)))
            if name == strategy or _better((keeps[best], rewards[best]), (not result.breaks_rules,
                                                                           result.list_reward)):
                result.items, result.list_reward, result.generator = lists[best], float(rewards[best]), name
                result.breaks_rules = not keeps[best]
        result.budget_exceeded = bool(result.skipped) or budget.remaining_ms() < 0
        result.timings_ms["total"] = budget.elapsed_ms()
        return result

    def recommend(self, user: UserLike | None, n: int, strategy: str | None = None,
                  budget_ms: float = float("inf"), request_id: int | None = None) -> tuple[RerankResult, int]:
        """Recall from the catalogue, coarse and fine ranking (where the version has the models), re-ranking.

        Returns the result and how many candidates reached re-ranking. A ranker that fails or would
        overrun the budget is passed over (the order so far stands); a failure sets ``fallback``.
        """
        if strategy is not None and strategy not in self.stages:
            raise UnknownStrategy(strategy, self.strategies)
        budget = Budget(budget_ms)
        store, user_id = _user_view(self.store, user)
        timings, skipped, failure = {}, [], None
        start = perf_counter()
        ids, scores = self.recall(store, user_id, self.config.recall_size)
        timings["recall"] = (perf_counter() - start) * 1e3
        for name, keep in (("coarse", self.config.coarse_keep), ("fine", self.config.rerank_candidates)):
            rank = self.rankers.get(name)
            if rank is not None and failure is None:
                if budget.affords(self.costs.expected_ms(name, len(ids), 1)):
                    start = perf_counter()
                    try:
                        scores = rank(store, user_id, ids)
                    except Exception as err:  # keep the order so far, never fail the request
                        log.exception("ranker %s of model version %s failed", name, self.version)
                        failure = (name, f"{type(err).__name__}: {err}")
                    else:
                        order = np.argsort(-scores, kind="stable")
                        ids, scores = ids[order], scores[order]
                        timings[name] = (perf_counter() - start) * 1e3
                        self.costs.record(name, len(ids), 1, timings[name])
                else:
                    skipped.append(name)
            ids, scores = ids[:keep], scores[:keep]
        inp = self._input(store, user_id, ids, scores, n, None, None, request_id)
        result = self.rerank(inp, strategy, budget.remaining_ms())
        result.timings_ms = {**timings, **result.timings_ms, "total": budget.elapsed_ms()}
        result.skipped = skipped + result.skipped
        result.budget_exceeded = result.budget_exceeded or bool(skipped)
        if failure is not None and not result.fallback:
            result.fallback, (result.failed_stage, result.error) = True, failure
        return result, len(ids)

    def warm_up(self, rounds: int = 3) -> None:
        """Run every ranker and stage on a synthetic request: fails loudly on a broken model and fills
        the cost estimates (the first round pays lazy initialisation and is not recorded)."""
        for round_ in range(rounds + 1):
            costs = self.costs if round_ else StageCosts()
            result, _ = dataclasses.replace(self, costs=costs).recommend(None, 10)
            if result.fallback:
                raise RuntimeError(f"model version {self.version}: {result.failed_stage} fails on a "
                                   f"warm-up request: {result.error}")

    def request_input(self, user: UserLike | None, ids: np.ndarray, scores: np.ndarray | None, n: int,
                      cates: list[int | None] | None = None, shops: list[int | None] | None = None,
                      request_id: int | None = None) -> RerankInput:
        """A /v1/rerank request's input; missing scores stand in as a decreasing function of the order."""
        store, user_id = _user_view(self.store, user)
        return self._input(store, user_id, ids, scores, n, cates, shops, request_id)

    def _input(self, store: FeatureStore, user_id: int, ids: np.ndarray, scores: np.ndarray | None, n: int,
               cates: list[int | None] | None, shops: list[int | None] | None,
               request_id: int | None) -> RerankInput:
        ids = np.asarray(ids, dtype=np.int64)
        m = len(ids)
        if scores is None:
            scores = (m - np.arange(m)) / m
        features = self.store.item_features(ids)
        cate = _override(features["cate"].numpy(), cates)
        shop = _override(features["shop"].numpy(), shops)
        requests = Requests.from_arrays([request_id or 0], [user_id], ids[None, :],
                                        np.asarray(scores, np.float32)[None, :])
        return RerankInput(requests, min(n, m), cate[None, :], shop[None, :], store)

    def recall(self, store: FeatureStore, user_id: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue items for a user: popular items of the categories in their history, then popular ones.

        Returns ids and a score in [0, 1] (popularity relative to the most popular); history items are
        left out.
        """
        feats = store.user_features(np.array([user_id]))
        hist = feats["hist"][0][feats["hist_mask"][0]].numpy()
        hist_cates = store.item_cate[hist]
        items = np.arange(1, store.n_items + 1)
        popularity = self.popularity[1:]
        in_cates = np.isin(store.item_cate[1:], hist_cates)
        key = np.where(np.isin(items, hist), -1.0, popularity + in_cates * (popularity.max() + 1))
        top = np.argsort(-key, kind="stable")[:size]
        return items[top], popularity[top] / max(float(popularity.max()), 1.0)


class UserLike(Protocol):
    """The user part of a request (relist.serve.schemas.User): any field may be None."""

    id: int | None
    segment: int | None
    history: list[int] | None


def _override(stored: np.ndarray, given: list[int | None] | None) -> np.ndarray:
    """Request-given attributes (raw ids) over the store's (raw + 1; 0 = unknown)."""
    if given is None:
        return stored
    return np.array([s if g is None else g + 1 for s, g in zip(stored, given, strict=True)], np.int64)


def _user_view(store: FeatureStore, user: UserLike | None) -> tuple[FeatureStore, int]:
    """The store and user id models should read: with profile overrides, a store whose only user (id 1)
    is this request's user (item tables are shared, not copied)."""
    user_id = 0 if user is None or user.id is None else user.id
    if user is None or (user.segment is None and user.history is None):
        return store, user_id
    row = store.user_features(np.array([user_id]))
    segment = row["segment"].numpy()
    hist, hist_mask = row["hist"].numpy(), row["hist_mask"].numpy()
    if user.segment is not None:
        segment = np.array([user.segment + 1])
    if user.history is not None:
        given = np.asarray(user.history[:hist.shape[1]], np.int64)
        hist = np.full_like(hist, PAD_ID)
        hist[0, :len(given)] = np.where(store.known_items(given), given, PAD_ID)
        hist_mask = hist != PAD_ID
    view = dataclasses.replace(store, user_segment=np.concatenate([[0], segment]),
                               user_hist=np.concatenate([np.full_like(hist, PAD_ID), hist]),
                               user_hist_mask=np.concatenate([np.zeros_like(hist_mask), hist_mask]))
    return view, 1


def build_pipeline(version: str, store: FeatureStore, config: PipelineConfig, models: Models) -> Pipeline:
    """Assemble and warm up a pipeline; raises on a stage name no builder knows or a model that fails."""
    stages, left_out = build_stages(config, models)
    if left_out:
        log.warning("model version %s lacks the models of stages %s; they are not served", version, left_out)
    popularity = np.bincount(store.user_hist[store.user_hist_mask].ravel(), minlength=store.n_items + 1)
    pipeline = Pipeline(version, store, stages, build_scorer(config, models), config, build_rankers(models),
                        BusinessRules(cate_window=config.cate_window, max_per_shop=config.max_per_shop),
                        popularity[: store.n_items + 1].astype(np.float64))
    pipeline.warm_up()
    return pipeline
