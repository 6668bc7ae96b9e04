"""What the server runs for one request: named stages under a time budget, the best list wins.

A *stage* proposes candidate lists for a request (a policy, beam search, a
generator, LAST, ...); the *scorer* gives each list its list reward (the
evaluator's LR when the model version has one, else the upstream scores
discounted by an assumed scroll probability) and the best list so far is kept.
The upstream order is the floor: it is always there, it wins ties, and it is
what a request gets when a model fails. A new generator plugs in as one more
entry of ``STAGE_BUILDERS``.

A :class:`Pipeline` is immutable once built (its cost estimates aside), so a
hot reload swaps one reference and a request in flight finishes on the
version it started with.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from relist.data.features import FeatureStore
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.eval.metrics import list_reward
from relist.rerank.beam import ListValue, beam_search
from relist.rerank.policy import greedy_by_score, upstream_order
from relist.rerank.rules import BusinessRules
from relist.serve.budget import Budget, StageCosts

log = logging.getLogger(__name__)

UPSTREAM = "upstream"


class PipelineConfig(BaseModel):
    """How a model version re-ranks; stored in its manifest, so a reload can change it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[str] = Field(["greedy_upstream_score", "beam_upstream"],
                              description="generators after the upstream floor, in the order they run")
    p_next: float = Field(0.85, gt=0, le=1, description="assumed chance to keep scrolling, where no model says")
    beam_width: int = Field(8, ge=1)
    list_value: dict[str, float] = Field({"pv": 0.0, "ipv": 1.0, "gmv": 0.0},
                                         description="beam list value weights r = pv·PV + ipv·IPV + gmv·GMV")
    cate_window: int = Field(2, ge=0, description="business rule: no category repeat within this many slots")
    max_per_shop: int | None = Field(None, ge=1)
    recall_size: int = Field(1000, ge=1, description="/v1/recommend: items recalled from the catalogue")
    coarse_keep: int = Field(200, ge=1, description="/v1/recommend: items the coarse ranker passes on")
    rerank_candidates: int = Field(50, ge=1,
                                   description="/v1/recommend: items the fine ranker hands to re-ranking")


@dataclass(frozen=True)
class RerankInput:
    """One request as stages see it: a single-row :class:`Requests` plus its item attributes."""

    requests: Requests  # one row; scores are the upstream scores (or a stand-in from the order)
    n: int  # list length actually served: min(requested n, candidates)
    cates: np.ndarray  # [1, m] store convention (0 = unknown), request overrides applied
    shops: np.ndarray  # [1, m]
    prices: np.ndarray  # [1, m] raw prices (0 = unknown)
    store: FeatureStore  # the version's store, or a view of it carrying this request's user overrides

    @property
    def m(self) -> int:
        return self.requests.candidates.shape[1]


Stage = Callable[[RerankInput], np.ndarray]  # -> candidate lists [K, n] of item ids


class Scorer:
    """List reward without a learned evaluator: upstream scores weighted by ``p_next ** position``."""

    name = "upstream_scores"

    def __init__(self, p_next: float):
        self.p_next = p_next

    def __call__(self, inp: RerankInput, lists: np.ndarray) -> np.ndarray:
        ids, scores = inp.requests.candidates[0], np.clip(inp.requests.cand_scores[0], 0.0, 1.0)
        order = np.argsort(ids)
        column = order[np.searchsorted(ids[order], lists).clip(0, len(ids) - 1)]
        real = lists != PAD_ID
        exposure = self.p_next ** np.arange(lists.shape[1])[None, :]
        return list_reward(np.where(real, scores[column], 0.0), real, exposure)


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
    """``model`` (anything holding a ``store``) reading features from ``store``: a shallow copy if it differs."""
    if model.store is store:
        return model
    view = copy.copy(model)
    view.store = store
    return view


@dataclass
class RerankResult:
    items: np.ndarray  # [n] item ids
    list_reward: float | None
    generator: str
    fallback: bool = False
    budget_exceeded: bool = False
    skipped: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # what failed, when fallback
    failed_stage: str | None = None


class UnknownStrategy(ValueError):
    def __init__(self, name: str, available: list[str]):
        self.name, self.available = name, available
        super().__init__(f"unknown strategy '{name}' for this model version; available: {', '.join(available)}")


@dataclass(frozen=True)
class Pipeline:
    """One model version, ready to serve: its catalogue, stages and scorer."""

    version: str
    store: FeatureStore
    stages: dict[str, Stage]  # UPSTREAM first
    scorer: Scorer | EvaluatorScorer
    config: PipelineConfig
    popularity: np.ndarray  # [n_items + 1] clicks in the users' histories, for /v1/recommend's recall
    costs: StageCosts = field(default_factory=StageCosts)

    @property
    def strategies(self) -> list[str]:
        return list(self.stages)

    def rerank(self, inp: RerankInput, strategy: str | None = None, budget_ms: float = float("inf"),
               record_costs: bool = True) -> RerankResult:
        """The best list the budget allows; the upstream order when a stage fails."""
        if strategy is not None and strategy not in self.stages:
            raise UnknownStrategy(strategy, self.strategies)
        budget = Budget(budget_ms)
        names = self.strategies if strategy is None else list(dict.fromkeys([UPSTREAM, strategy]))
        upstream = inp.requests.candidates[0, :inp.n]
        result = RerankResult(upstream, None, UPSTREAM)
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
                return RerankResult(upstream, None, UPSTREAM, fallback=True, skipped=result.skipped,
                                    timings_ms=result.timings_ms, error=f"{type(err).__name__}: {err}",
                                    failed_stage=name)
            ms = (perf_counter() - start) * 1e3
            result.timings_ms[name] = ms
            if record_costs:
                self.costs.record(name, inp.m, inp.n, ms)
            best = int(np.argmax(rewards))
            forced = name == strategy
            if forced or result.list_reward is None or rewards[best] > result.list_reward:
                result.items, result.list_reward, result.generator = lists[best], float(rewards[best]), name
        result.budget_exceeded = bool(result.skipped) or budget.remaining_ms() < 0
        result.timings_ms["total"] = budget.elapsed_ms()
        return result

    def warm_up(self, rounds: int = 3) -> None:
        """Run every stage on a synthetic request: fails loudly on a broken model, fills the cost estimates."""
        ids = np.argsort(-self.popularity[1:], kind="stable")[:50] + 1
        inp = self.request_input(None, ids, None, 10)
        for round_ in range(rounds + 1):
            result = self.rerank(inp, record_costs=round_ > 0)  # the first round pays lazy initialisation
            if result.fallback:
                raise RuntimeError(f"model version {self.version}: stage {result.failed_stage} fails on a "
                                   f"warm-up request: {result.error}")

    def request_input(self, user, ids: np.ndarray, scores: np.ndarray | None, n: int,
                      cates: list[int | None] | None = None, shops: list[int | None] | None = None,
                      prices: list[float | None] | None = None, request_id: int | None = None) -> RerankInput:
        """Build a request's input; missing scores stand in as a decreasing function of the upstream order."""
        ids = np.asarray(ids, dtype=np.int64)
        m = len(ids)
        if scores is None:
            scores = (m - np.arange(m)) / m
        store = self.store if user is None else _user_view(self.store, user)
        user_id = 0 if user is None or user.id is None else user.id
        if store is not self.store:
            user_id = 1
        features = self.store.item_features(ids)
        cate = _override(features["cate"].numpy(), cates, shift=1)
        shop = _override(features["shop"].numpy(), shops, shift=1)
        price = np.array([p or 0.0 for p in prices], np.float32) if prices is not None else np.zeros(m, np.float32)
        requests = Requests.from_arrays([request_id or 0], [user_id], ids[None, :],
                                        np.asarray(scores, np.float32)[None, :])
        return RerankInput(requests, min(n, m), cate[None, :], shop[None, :], price[None, :], store)

    def recall(self, user, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue items for a user: popular items of the categories in their history, then popular ones.

        Returns ids and a score in [0, 1] (popularity relative to the most popular), history items excluded.
        """
        feats = self.store.user_features(np.array([user.id or 0]))
        hist = feats["hist"][0][feats["hist_mask"][0]].numpy()
        if user.history is not None:
            hist = np.asarray(user.history, np.int64)
        hist_cates = self.store.item_cate[self.store.item_index(hist).numpy()]
        items = np.arange(1, self.store.n_items + 1)
        in_cates = np.isin(self.store.item_cate[1:], hist_cates[hist_cates > 0])
        key = self.popularity[1:] + in_cates * (self.popularity.max() + 1)  # interest first, popularity within
        key = np.where(np.isin(items, hist), -1, key)
        top = np.argsort(-key, kind="stable")[:size]
        return items[top], self.popularity[1:][top] / max(float(self.popularity.max()), 1.0)


def _override(stored: np.ndarray, given: list[int | None] | None, shift: int) -> np.ndarray:
    """Request-given attributes (raw ids) over the store's (shifted by +1, 0 = unknown)."""
    if given is None:
        return stored
    return np.array([s if g is None else g + shift for s, g in zip(stored, given, strict=True)], np.int64)


def _user_view(store: FeatureStore, user) -> FeatureStore:
    """A store whose only user (id 1) is this request's user, with its overrides; items are shared."""
    if user.segment is None and user.history is None:
        return store
    row = store.user_features(np.array([user.id or 0]))
    segment = row["segment"].numpy().copy()
    hist, hist_mask = row["hist"].numpy().copy(), row["hist_mask"].numpy().copy()
    if user.segment is not None:
        segment[0] = user.segment + 1
    if user.history is not None:
        length = hist.shape[1]
        given = np.asarray(user.history[:length], np.int64)
        given = np.where(store.known_items(given), given, PAD_ID)
        hist[:] = PAD_ID
        hist[0, :len(given)] = given
        hist_mask = hist != PAD_ID
    pad_row = (np.zeros(1, np.int64), np.full((1, hist.shape[1]), PAD_ID, np.int64), np.zeros((1, hist.shape[1]), bool))
    return dataclasses.replace(store, user_segment=np.concatenate([pad_row[0], segment]),
                               user_hist=np.concatenate([pad_row[1], hist]),
                               user_hist_mask=np.concatenate([pad_row[2], hist_mask]))


# --- stages ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    """Trained models a version carries, by role; a stage needing a missing role is not built."""

    scorer: object | None = None  # relist.rerank.list_scorer.ListScorer (role "evaluator")
    generator: object | None = None  # relist.models.generator.GRN (role "generator")
    ranker: object | None = None  # fine-ranking teacher with ctr and next heads (role "ranker")
    coarse: object | None = None  # relist.models.ranking.scoring.CoarseScorer (role "coarse")


PointScores = Callable[[RerankInput], tuple[np.ndarray, np.ndarray]]  # -> p_ctr, p_next [1, m]


def _rules(config: PipelineConfig) -> BusinessRules:
    return BusinessRules(cate_window=config.cate_window, max_per_shop=config.max_per_shop)


def _beam(config: PipelineConfig, point_scores: PointScores) -> Stage:
    """Beam search over point-wise click and scroll probabilities, under the rules (request overrides apply)."""
    weights, rules = ListValue(**config.list_value), _rules(config)

    def stage(inp: RerankInput) -> np.ndarray:
        p_ctr, p_next = point_scores(inp)
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
    from relist.models.ranking.scoring import point_scores

    def scores(inp: RerankInput) -> tuple[np.ndarray, np.ndarray]:
        p = point_scores(ranker, inp.store, inp.requests)
        return p["ctr"], p["next"]

    return scores


def _grn(config: PipelineConfig, generator) -> Stage:
    """The GRN's most likely list under the rules (a policy object per request: it is cheap and holds the
    request's store view)."""
    from relist.rerank.grn_policy import GRNPolicy

    rules = _rules(config)
    return lambda inp: GRNPolicy(generator, inp.store, rules=rules)(inp.requests, inp.n)


StageBuilder = Callable[[PipelineConfig, Models], Stage | None]

STAGE_BUILDERS: dict[str, StageBuilder] = {
    "greedy_upstream_score": lambda cfg, models: _policy_stage(greedy_by_score),
    "beam_upstream": lambda cfg, models: _beam(cfg, _upstream_point_scores(cfg)),
    "beam": lambda cfg, models: _beam(cfg, _ranker_point_scores(models.ranker)) if models.ranker else None,
    "grn": lambda cfg, models: _grn(cfg, models.generator) if models.generator else None,
}


def _policy_stage(policy) -> Stage:
    return lambda inp: policy(inp.requests, inp.n)


def build_pipeline(version: str, store: FeatureStore, config: PipelineConfig, models: Models) -> Pipeline:
    """Assemble and warm up a pipeline; raises on a stage name no builder knows or a model that fails."""
    stages: dict[str, Stage] = {UPSTREAM: _policy_stage(upstream_order)}
    for name in config.stages:
        if name not in STAGE_BUILDERS:
            raise ValueError(f"pipeline stage '{name}' is unknown (known: {', '.join(STAGE_BUILDERS)})")
        stage = STAGE_BUILDERS[name](config, models)
        if stage is None:
            log.warning("model version %s: stage %s needs a model the version does not carry; not served",
                        version, name)
            continue
        stages[name] = stage
    scorer = EvaluatorScorer(models.scorer) if models.scorer is not None else Scorer(config.p_next)
    popularity = np.bincount(store.user_hist[store.user_hist_mask].ravel(), minlength=store.n_items + 1)
    pipeline = Pipeline(version, store, stages, scorer, config, popularity[: store.n_items + 1].astype(np.float64))
    pipeline.warm_up()
    return pipeline
