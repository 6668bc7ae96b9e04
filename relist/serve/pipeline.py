"""What the server runs for its requests: list ranking over the version's generators, under a budget.

A request becomes one row (:class:`RerankInput`): its candidates, upstream scores, the category and
shop overrides the business rules read, the store view carrying its user overrides, and its
objective; requests that arrive together are re-ranked as one batch (relist.serve.batching). The one
:class:`~relist.rerank.list_ranking.ListRanking` of relist chooses the lists — the same code the
offline evaluation runs — with the time budget: a generator that would overrun it is skipped before
it starts (the incumbent runs first), and the upstream order is the floor. When a model fails, the
upstream order is served and the response says so.

A :class:`Pipeline` is immutable once built (its cost estimates aside), so a hot reload swaps one
reference and a request in flight finishes on the version it started with.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from time import perf_counter
from typing import Protocol

import numpy as np

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.objective import Objective
from relist.rerank.budget import Budget, StageCosts
from relist.rerank.generators import Context, Generator
from relist.rerank.list_ranking import AUTO, FLOOR, ListRanking
from relist.rerank.registry import Models, build_generators, build_ranking
from relist.serve.config import PipelineConfig

log = logging.getLogger(__name__)
UPSTREAM = FLOOR
VALID_REQUESTS, N_VALID = 500, 10  # what an 'auto' incumbent is chosen on at export

Ranker = Callable[[FeatureStore, int, np.ndarray], np.ndarray]  # (store, user, ids) -> click probabilities


@dataclass(frozen=True)
class EarlierStages:
    """What ran before re-ranking (/v1/recommend's recall and rankers), for the request's result."""

    timings_ms: dict[str, float]
    skipped: list[str]
    failure: tuple[str, str] | None = None  # (ranker, error) of a ranker that failed: the order so far stood


@dataclass(frozen=True)
class RerankInput:
    """One request as the pipeline sees it: a single-row :class:`Requests` plus what it overrides."""

    requests: Requests  # one row; scores are the upstream scores (NaN where the request sent none)
    n: int  # list length actually served: min(requested n, candidates)
    cates: np.ndarray  # [1, m] store convention (0 = unknown), request overrides applied
    shops: np.ndarray  # [1, m]
    store: FeatureStore  # the version's store, or a view of it carrying this request's user overrides
    objective: Objective | None = None  # the request's objective weights (None: the version's)
    earlier: EarlierStages | None = None  # /v1/recommend: how its candidates were found

    @property
    def m(self) -> int:
        return self.requests.candidates.shape[1]

    def finished(self, result: RerankResult) -> RerankResult:
        """``result`` with the earlier stages' timings, skips and failure in it."""
        if self.earlier is None:
            return result
        result.timings_ms = {**self.earlier.timings_ms, **result.timings_ms}
        result.skipped = self.earlier.skipped + result.skipped
        result.budget_exceeded = result.budget_exceeded or bool(self.earlier.skipped)
        if self.earlier.failure is not None and not result.fallback:
            result.fallback, (result.failed_stage, result.error) = True, self.earlier.failure
        return result


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
    batch: int = 1  # requests re-ranked together with this one (relist.serve.batching)


class UnknownStrategy(ValueError):
    def __init__(self, name: str, available: list[str]):
        self.name, self.available = name, available
        super().__init__(f"unknown strategy '{name}' for this model version; "
                         f"available: {', '.join(available)}")


@dataclass(frozen=True)
class Pipeline:
    """One model version, ready to serve: its catalogue, models and list ranking."""

    version: str
    store: FeatureStore
    models: Models
    config: PipelineConfig
    ranking: ListRanking  # every generator of the version, upstream first
    rankers: dict[str, Ranker]  # "coarse" and/or "fine", for /v1/recommend
    popularity: np.ndarray  # [n_items + 1] clicks in the users' histories, for /v1/recommend's recall
    costs: StageCosts = field(default_factory=StageCosts)
    forced_only: dict[str, Generator] = field(default_factory=dict)  # servable by name, not in list ranking

    @cached_property
    def popular(self) -> np.ndarray:
        """Catalogue item ids, most popular first (ties by id): /v1/recommend's floor, sorted once per version."""
        return (np.argsort(-self.popularity[1:], kind="stable") + 1).astype(np.int64)

    @property
    def strategies(self) -> list[str]:
        return [*self.ranking.generators, *self.forced_only]

    @property
    def scorer(self):
        return self.ranking.scorer

    def _ranking_for(self, strategy: str | None) -> ListRanking:
        """All generators, or one forced generator (with the upstream floor, no refinement; the evaluator still
        chooses among its lists, so a forced response carries its list reward)."""
        if strategy is None:
            return self.ranking
        generators = self.ranking.generators | self.forced_only
        if strategy not in generators:
            raise UnknownStrategy(strategy, self.strategies)
        names = list(dict.fromkeys([UPSTREAM, strategy]))
        cfg = self.ranking.cfg.model_copy(update={"refine": self.ranking.cfg.refine.model_copy(update={"rounds": 0}),
                                                  "choose_within_incumbent": True})
        return ListRanking({name: generators[name] for name in names}, self.ranking.scorer, cfg, strategy)

    def rerank(self, inp: RerankInput, strategy: str | None = None,
               budget_ms: float = float("inf")) -> RerankResult:
        """The best list the budget allows; the upstream order when a model fails."""
        return self.rerank_batch([inp], strategy, budget_ms)[0]

    def rerank_batch(self, inputs: Sequence[RerankInput], strategy: str | None = None,
                     budget_ms: float | Sequence[float] = float("inf")) -> list[RerankResult]:
        """Each request's best list, requests served together (one batch per list length, store view and
        objective, split by :meth:`_afforded_together`) under the tightest budget among them (``budget_ms``:
        one for all, or each request's own); every request gets the upstream order where its batch's models
        fail."""
        ranking = self._ranking_for(strategy)
        results: list[RerankResult | None] = [None] * len(inputs)
        start = perf_counter()
        budgets = np.broadcast_to(np.asarray(budget_ms, dtype=np.float64), (len(inputs),))
        groups: dict[tuple, list[int]] = {}
        for i, inp in enumerate(inputs):
            objective = inp.objective or self.config.rerank.objective
            groups.setdefault((inp.n, id(inp.store), tuple(objective.vector())), []).append(i)
        for (n, _, _), same in groups.items():
            for rows in self._afforded_together(same, budgets - (perf_counter() - start) * 1e3, inputs, n,
                                                ranking.run_order[0]):
                left = float(budgets[rows].min()) - (perf_counter() - start) * 1e3
                for i, result in zip(rows, self._rerank_together([inputs[i] for i in rows], n, ranking,
                                                                 Budget(left, self.costs, len(rows))), strict=True):
                    results[i] = result
        return results

    def _afforded_together(self, rows: list[int], left_ms: np.ndarray, inputs: Sequence[RerankInput], n: int,
                           first: str) -> list[list[int]]:
        """The requests of one batch, split so that one short of time does not take its batch to the floor.

        A batch runs under its tightest budget, so one request that waited long would skip the first stage
        (the incumbent) for all. The first part is the most requests, those with the most time left, whose
        first stage is expected to fit the tightest of them; the rest follow on their own budgets.
        """
        order = sorted(rows, key=lambda i: -left_ms[i])
        m = max(inputs[i].m for i in rows)
        for size in range(len(order), 0, -1):
            if self.costs.expected_ms(first, size * m * n, size) <= left_ms[order[size - 1]]:
                return [part for part in (order[:size], order[size:]) if part]
        return [order]  # none affords it: one batch, on the floor

    def _rerank_together(self, inputs: list[RerankInput], n: int, ranking: ListRanking,
                         budget: Budget) -> list[RerankResult]:
        requests = Requests.stack([inp.requests for inp in inputs])
        m = requests.candidates.shape[1]
        cates, shops = (np.concatenate([x if x.shape[1] == m else np.pad(x, ((0, 0), (0, m - x.shape[1])))
                                        for x in parts])
                        for parts in ([inp.cates for inp in inputs], [inp.shops for inp in inputs]))
        objective = inputs[0].objective or self.config.rerank.objective
        ctx = Context(inputs[0].store, self.config.rerank.rules.build(), objective, budget, cates, shops)
        try:
            ranked = ranking.rank(requests, n, ctx)
        except Exception as err:  # any model error: serve the floor, never fail the request
            log.exception("re-ranking on model version %s failed", self.version)
            upstream = requests.candidates[:, None, :n]
            breaks = ~ctx.keeps_rules(requests, upstream)[:, 0]
            return [inp.finished(RerankResult(upstream[i, 0], None, UPSTREAM, fallback=True,
                                              breaks_rules=bool(breaks[i]), skipped=list(budget.skipped),
                                              timings_ms=dict(budget.timings_ms), error=f"{type(err).__name__}: {err}",
                                              failed_stage=_failed_stage(budget, ranking)))
                    for i, inp in enumerate(inputs)]
        scored = ranked.scored  # an unscored list has no reward (not a NaN one)
        timings = {**budget.timings_ms, "total": budget.elapsed_ms()}
        return [inp.finished(RerankResult(ranked.lists[i], float(ranked.reward[i]) if scored else None,
                                          str(ranked.source[i]), breaks_rules=bool(ranked.breaks_rules[i]),
                                          budget_exceeded=budget.exceeded, skipped=list(budget.skipped),
                                          timings_ms=dict(timings), batch=len(inputs)))
                for i, inp in enumerate(inputs)]

    def recommend(self, user: UserLike | None, n: int, strategy: str | None = None,
                  budget_ms: float = float("inf"), request_id: int | None = None,
                  objective: Objective | None = None) -> tuple[RerankResult, int]:
        """Recall from the catalogue, coarse and fine ranking (where the version has the models), re-ranking
        (:meth:`recommend_input`, then :meth:`rerank`). Returns the result and how many candidates reached
        re-ranking."""
        if strategy is not None and strategy not in self.strategies:
            raise UnknownStrategy(strategy, self.strategies)
        start = perf_counter()
        inp = self.recommend_input(user, n, budget_ms, request_id, objective)
        result = self.rerank(inp, strategy, budget_ms - (perf_counter() - start) * 1e3)
        result.timings_ms["total"] = (perf_counter() - start) * 1e3
        return result, inp.m

    def recommend_input(self, user: UserLike | None, n: int, budget_ms: float = float("inf"),
                        request_id: int | None = None, objective: Objective | None = None) -> RerankInput:
        """/v1/recommend's candidates as a re-ranking input: recalled from the catalogue, then ranked coarse and
        fine (where the version has the models). A ranker that fails or would overrun the budget is passed over
        (the order so far stands); what ran, was skipped or failed travels in ``earlier``."""
        budget = Budget(budget_ms, self.costs)
        store, user_id = _user_view(self.store, user)
        failure = None
        with budget.stage("recall"):
            ids, scores = self.recall(store, user_id, self.config.recall_size)
        for name, keep in (("coarse", self.config.coarse_keep), ("fine", self.config.rerank_candidates)):
            rank = self.rankers.get(name)
            if rank is not None and failure is None and budget.affords(name, len(ids)):
                try:
                    with budget.stage(name, len(ids)):
                        scores = rank(store, user_id, ids)
                except Exception as err:  # keep the order so far, never fail the request
                    log.exception("ranker %s of model version %s failed", name, self.version)
                    failure = (name, f"{type(err).__name__}: {err}")
                else:
                    order = np.argsort(-scores, kind="stable")
                    ids, scores = ids[order], scores[order]
            ids, scores = ids[:keep], scores[:keep]
        inp = self._input(store, user_id, ids, scores, n, None, None, request_id, objective)
        return dataclasses.replace(inp, earlier=EarlierStages(dict(budget.timings_ms), list(budget.skipped), failure))

    def warm_up(self, rounds: int = 3) -> None:
        """Run every ranker and generator on a synthetic request: fails loudly on a broken model and fills
        the cost estimates (the first round pays lazy initialisation and is not recorded)."""
        for round_ in range(rounds + 1):
            costs = self.costs if round_ else StageCosts()
            result, _ = dataclasses.replace(self, costs=costs).recommend(None, 10)
            if result.fallback:
                raise RuntimeError(f"model version {self.version}: {result.failed_stage} fails on a "
                                   f"warm-up request: {result.error}")
            if result.list_reward is not None and not math.isfinite(result.list_reward):
                raise RuntimeError(f"model version {self.version}: its list reward is not finite on a warm-up "
                                   "request")

    def request_input(self, user: UserLike | None, ids: np.ndarray, scores: np.ndarray | None, n: int,
                      cates: list[int | None] | None = None, shops: list[int | None] | None = None,
                      request_id: int | None = None, objective: Objective | None = None) -> RerankInput:
        """A /v1/rerank request's input; missing scores are NaN (models know a missing score)."""
        store, user_id = _user_view(self.store, user)
        return self._input(store, user_id, ids, scores, n, cates, shops, request_id, objective)

    def _input(self, store: FeatureStore, user_id: int, ids: np.ndarray, scores: np.ndarray | None, n: int,
               cates: list[int | None] | None, shops: list[int | None] | None,
               request_id: int | None, objective: Objective | None) -> RerankInput:
        ids = np.asarray(ids, dtype=np.int64)
        m = len(ids)
        if scores is None:
            scores = np.full(m, np.nan, np.float32)
        rows = self.store.item_index(ids).numpy()  # unknown items read the neutral row 0
        cate = _override(self.store.item_cate[rows], cates)
        shop = _override(self.store.item_shop[rows], shops)
        requests = Requests.from_arrays([request_id or 0], [user_id], ids[None, :],
                                        np.asarray(scores, np.float32)[None, :])
        return RerankInput(requests, min(n, m), cate[None, :], shop[None, :], store, objective)

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
        top = top_indices(key, size)
        return items[top], popularity[top] / max(float(popularity.max()), 1.0)


def top_indices(key: np.ndarray, size: int) -> np.ndarray:
    """``np.argsort(-key, kind="stable")[:size]`` (largest first, ties by index) without sorting all of
    ``key``: recall runs per request over the whole catalogue."""
    if size >= len(key):
        return np.argsort(-key, kind="stable")
    kth = np.partition(key, len(key) - size)[len(key) - size]  # the size-th largest value
    above = np.flatnonzero(key > kth)
    chosen = np.concatenate([above, np.flatnonzero(key == kth)[:size - len(above)]])
    chosen.sort()  # index order, so that the stable sort breaks ties by index
    return chosen[np.argsort(-key[chosen], kind="stable")]


def _failed_stage(budget: Budget, ranking: ListRanking) -> str:
    """The generator (or step) that was running when a failure happened: the first not yet timed."""
    steps = [*ranking.run_order, "list_ranking.score", "local_search.round"]
    done = set(budget.timings_ms) | set(budget.skipped)
    return next((step for step in steps if step not in done), "list_ranking")


class UserLike(Protocol):
    """The user part of a request (relist.serve.schemas.User): any field may be None."""

    id: int | None
    segment: int | None
    history: list[int] | None


def _override(stored: np.ndarray, given: list[int | None] | None) -> np.ndarray:
    """Request-given attributes (raw ids) over the store's (raw + 1; 0 = unknown)."""
    if given is None or all(g is None for g in given):
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


def _coarse_ranker(coarse) -> Ranker:
    """The DSSM's serving form: one user-tower pass against the precomputed item matrix."""

    def rank(store: FeatureStore, user_id: int, ids: np.ndarray) -> np.ndarray:
        view = coarse if coarse.store is store else copy.copy(coarse)
        view.store = store  # the item matrix is shared; only the user tower reads the request's overrides
        return 1.0 / (1.0 + np.exp(-np.asarray(view.score(user_id, ids), np.float64)))

    return rank


def _fine_ranker(models: Models) -> Ranker:
    """The fine-ranking teacher's click probability of each item (no upstream score: none exists here)."""

    def rank(store: FeatureStore, user_id: int, ids: np.ndarray) -> np.ndarray:
        requests = Requests.from_arrays([0], [user_id], ids[None, :], np.full((1, len(ids)), np.nan, np.float32))
        return models.point_scores(requests, store)["ctr"][0]

    return rank


def with_incumbent(config: PipelineConfig, data_dir: str | Path, models_dir: str | Path) -> PipelineConfig:
    """The config with an 'auto' incumbent and ``min_share`` resolved on ``data_dir``'s validation requests
    (what export stores): the incumbent named, the rarely served generators left out."""
    ranking = config.rerank.ranking
    if (ranking.incumbent != AUTO and not ranking.min_share) or not (Path(data_dir) / "lists" / "valid").is_dir():
        return config
    store = FeatureStore.from_dir(data_dir)
    models, _ = Models.load(models_dir, store)
    if models.evaluator is None:
        return config
    valid, _ = logged_requests(data_dir, "valid", VALID_REQUESTS)
    names = list(dict.fromkeys([UPSTREAM, *ranking.generators]))
    chosen, left_out, choice = build_ranking(models, config.rerank, names, (valid, N_VALID))
    if left_out:
        log.info("export: %s", "; ".join(left_out))
    kept = [name for name in names if name in chosen.generators]
    ranking = ranking.model_copy(update={"incumbent": chosen.incumbent, "min_share": 0.0,
                                         "generators": kept + [n for n in chosen.generators if n not in kept]})
    rare = [name for name in choice.get("served_share_on_validation", {}) if name not in chosen.generators]
    return config.model_copy(update={"rerank": config.rerank.model_copy(update={"ranking": ranking}),
                                     "forced_only": list(dict.fromkeys([*config.forced_only, *rare]))})


def build_pipeline(version: str, store: FeatureStore, config: PipelineConfig, models: Models) -> Pipeline:
    """Assemble and warm up a pipeline; raises on a generator name no builder knows or a model that fails."""
    names = list(dict.fromkeys([UPSTREAM, *config.rerank.ranking.generators]))
    ranking, left_out, _ = build_ranking(models, config.rerank, names)
    forced, absent = build_generators([name for name in config.forced_only if name not in names], models,
                                      config.rerank)
    if left_out or absent:
        log.warning("model version %s lacks the models of generators %s; they are not served", version,
                    left_out + absent)
    rankers = {}
    if models.coarse is not None:
        rankers["coarse"] = _coarse_ranker(models.coarse)
    if models.ranker is not None:
        rankers["fine"] = _fine_ranker(models)
    popularity = np.bincount(store.user_hist[store.user_hist_mask].ravel(), minlength=store.n_items + 1)
    pipeline = Pipeline(version, store, models, config, ranking, rankers,
                        popularity[: store.n_items + 1].astype(np.float64), forced_only=forced)
    pipeline.warm_up()
    return pipeline
