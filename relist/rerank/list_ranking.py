"""List ranking: the second step of list retrieval, and the only place that chooses among lists.

Generators (relist.rerank.generators) propose lists for a batch of requests, each only if the
budget affords it; one that scores lists to choose its own (LAST) hands over the lists it would have
scored last (``unscored``), since they are scored here anyway. Duplicates are dropped, every remaining
list is valued by the evaluator ensemble in one call (any objective, relist.objective), and per request
one list is served:

* with a **safe incumbent** (a named generator, e.g. the policy that is best on validation), a
  challenger is served only when the members agree it beats the incumbent's list: its pessimistic
  gain — mean minus ``beta`` standard deviations of the members' paired differences — must exceed
  ``margin``; otherwise the incumbent's list is served. A list the incumbent dominates (every
  member rates it no higher) is therefore never served instead of it;
* without one (or when the incumbent did not run), the list of highest pessimistic value wins.

The incumbent runs first, so when the budget has no time left to score the lists, the incumbent's
list is served (the first proposal that keeps the rules), and only with no time for any model the
upstream order. Under a time budget, a single proposal per request is served unscored, and so is the
incumbent's first list when it is the only generator besides the upstream floor that ran and
``choose_within_incumbent`` is off (the floor is what a failed or late model leaves, not a challenger).

The chosen list is then refined by evaluator-guided local search under the same criterion
(relist.rerank.local_search). Lists that break a business rule are served only when no proposal
keeps them all (and are then flagged). The evaluation, the server (the requests that arrived together,
under their time budget) and every benchmark run this one class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from relist.data.requests import Requests
from relist.rerank import shared
from relist.rerank.generators import Context, Generator
from relist.rerank.list_scorer import pessimistic
from relist.rerank.local_search import LocalSearch, LocalSearchConfig

AUTO = "auto"
FLOOR = "upstream"  # the registry's name for the upstream order (relist.rerank.policy.Upstream)


class ListRankingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    generators: list[str] = Field(
        ["greedy_upstream_score", "greedy_ctr", "beam", "prm", "dlcm", "seq2slate", "grn", "grn_samples"],
        description="generators whose lists compete, in the order they run (the incumbent first); those whose "
                    "models are missing are left out")
    incumbent: str | None = Field(AUTO, description="the generator whose list is served unless another beats it "
                                                    "pessimistically; 'auto': the best on validation requests; "
                                                    "null: no incumbent")
    incumbent_choices: list[str] = Field(
        ["greedy_upstream_score", "greedy_ctr", "beam", "prm", "dlcm", "seq2slate"],
        description="what 'auto' chooses among (generators that do not climb the evaluator)")
    beta: float = Field(1.0, ge=0, description="pessimism: a value counts as mean - beta x members' std")
    margin: float = Field(0.0, ge=0, description="a challenger must beat the incumbent by more than this "
                                                 "(pessimistically, in the objective's units)")
    min_share: float = Field(0.0, ge=0, lt=1, description="with validation requests: generators whose list is "
                                                         "served on fewer than this share of them are left out "
                                                         "(they cost time and rarely win); 0: keep all")
    choose_within_incumbent: bool = Field(
        True, description="when the incumbent is the only generator besides the upstream floor that ran, the "
                          "evaluator still chooses among its own lists (beam's k) and the floor's; false: under a "
                          "time budget its first list is served unscored, which halves a beam-only version's cost "
                          "(benchmarks/results/served_choice.json)")
    refine: LocalSearchConfig = LocalSearchConfig()


@dataclass
class RankedLists:
    lists: np.ndarray  # [B, n] served item ids
    reward: np.ndarray  # [B] the members' mean value of the served list (NaN where nothing was scored)
    source: np.ndarray  # [B] name of the generator that proposed the served list first (+ "+local_search")
    breaks_rules: np.ndarray  # [B] bool: no proposal kept every rule
    proposals: int  # distinct lists scored in the batch
    moves: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [B] local-search moves
    scored: bool = True  # False: served unscored (no time to score, or one proposal under a budget); reward NaN


class ListRanking:
    """Serve one list per request out of every generator's proposals (see the module docstring)."""

    def __init__(self, generators: Mapping[str, Generator], scorer, cfg: ListRankingConfig = ListRankingConfig(),
                 incumbent: str | None = None):
        """``scorer``: anything with ``values(requests, lists, objective) -> [E, B, K]`` (a ListScorer);
        ``incumbent``: the resolved incumbent (``cfg.incumbent`` unless that is 'auto')."""
        if not generators:
            raise ValueError("list ranking needs at least one generator")
        self.generators, self.scorer, self.cfg = dict(generators), scorer, cfg
        self.incumbent = incumbent if incumbent is not None else (None if cfg.incumbent == AUTO else cfg.incumbent)
        self.search = LocalSearch(cfg.refine)

    def propose(self, requests: Requests, n: int, ctx: Context) -> np.ndarray:
        """List ranking as a generator: the served list [B, 1, n]."""
        return self.rank(requests, n, ctx).lists[:, None]

    @property
    def run_order(self) -> list[str]:
        """The incumbent first, then the others in their configured order: what a tight budget affords is
        the incumbent's list, not just the upstream floor."""
        first = [self.incumbent] if self.incumbent in self.generators else []
        return first + [name for name in self.generators if name not in first]

    def proposals(self, requests: Requests, n: int, ctx: Context) -> tuple[np.ndarray, list[str]]:
        """Every generator's lists side by side [B, K, n] (in :attr:`run_order`) and the generator of each of
        the K columns."""
        size = len(requests) * requests.candidates.shape[1] * n
        parts, source = [], []
        for name in self.run_order:
            generator = self.generators[name]
            # the first lists can be served unscored; a challenger's are wasted unless the choice runs after it
            choice = ("list_ranking.score", len(requests) * (len(source) + 1) * n) if parts else None
            if not ctx.budget.affords(name, size, choice):
                continue
            with ctx.budget.stage(name, size):  # a generator that scores its own lists may leave that to us
                lists = getattr(generator, "unscored", generator.propose)(requests, n, ctx)
            parts.append(lists)
            source += [name] * lists.shape[1]
        if not parts:
            return requests.candidates[:, None, :n], [FLOOR]
        return np.concatenate(parts, 1), source

    def rank(self, requests: Requests, n: int, ctx: Context) -> RankedLists:
        with shared.scope():  # what several generators read is computed once (relist.rerank.shared)
            return self._rank(requests, n, ctx)

    def _rank(self, requests: Requests, n: int, ctx: Context) -> RankedLists:
        proposals, source = self.proposals(requests, n, ctx)
        scorer = self.scorer.on_store(ctx.store)
        b, k, _ = proposals.shape
        fresh = ~duplicates(proposals)
        keeps = ctx.keeps_rules(requests, proposals) & fresh
        any_keeps = keeps.any(1)
        eligible = np.where(any_keeps[:, None], keeps, fresh)
        at = np.arange(b)
        alone = set(source) - {FLOOR} == {self.incumbent} and not self.cfg.choose_within_incumbent
        nothing_to_choose = (k == 1 or alone) and not ctx.budget.unlimited  # e.g. only the floor ran
        if nothing_to_choose or not ctx.budget.affords("list_ranking.score", b * k * n):
            pick = eligible.argmax(1)  # the first eligible proposal in run order: the incumbent's when it ran
            return RankedLists(proposals[at, pick], np.full(b, np.nan), np.asarray(source)[pick], ~any_keeps, 0,
                               np.zeros(b, np.int64), scored=False)
        with ctx.budget.stage("list_ranking.score", b * k * n):
            values = np.asarray(scorer.values(requests, proposals, ctx.objective), dtype=np.float64)
        incumbent = source.index(self.incumbent) if self.incumbent in source else None
        criterion = self._criterion(values, incumbent)
        choice = np.where(eligible, criterion, -np.inf)
        pick = choice.argmax(1)
        if incumbent is not None:
            stay = eligible[:, incumbent] & ~(choice[at, pick] > self.cfg.margin)
            pick = np.where(stay, incumbent, pick)
        served, value = proposals[at, pick], criterion[at, pick]
        names = np.asarray(source, dtype=object)[pick]
        moves = np.zeros(b, np.int64)
        if self.cfg.refine.rounds:
            reference = None if incumbent is None else proposals[:, incumbent]
            criterion = self._search_criterion(scorer, requests, ctx, reference)
            served, value, moves = self.search.improve(requests, served, ctx, criterion, value)
            names = np.where(moves > 0, names + "+local_search", names)
        reward = np.asarray(scorer.values(requests, served, ctx.objective)).mean(0) if moves.any() \
            else values.mean(0)[at, pick]
        return RankedLists(served, reward, names, ~any_keeps, int(fresh.sum()), moves)

    def _criterion(self, values: np.ndarray, incumbent: int | None) -> np.ndarray:
        """[E, B, K] member values -> what is maximised [B, K]: pessimistic gain over the incumbent, or value."""
        if incumbent is None:
            return pessimistic(values, self.cfg.beta)
        gain = pessimistic(values - values[:, :, incumbent:incumbent + 1], self.cfg.beta)
        gain[:, incumbent] = 0.0
        return gain

    def _search_criterion(self, scorer, requests: Requests, ctx: Context, reference: np.ndarray | None):
        """Local search's criterion: the same pessimistic gain over the incumbent's list (or value)."""

        def criterion(rows: np.ndarray, lists: np.ndarray) -> np.ndarray:
            objective = ctx.rows(rows).objective
            if reference is None:
                return pessimistic(np.asarray(scorer.values(requests[rows], lists, objective)), self.cfg.beta)
            both = np.concatenate([reference[rows][:, None], lists], 1)
            values = np.asarray(scorer.values(requests[rows], both, objective), dtype=np.float64)
            return pessimistic(values[:, :, 1:] - values[:, :, :1], self.cfg.beta)

        return criterion


def duplicates(lists: np.ndarray) -> np.ndarray:
    """[B, K] True where a list equals an earlier list of the same request (the first one is kept)."""
    same = (lists[:, :, None, :] == lists[:, None, :, :]).all(-1)  # [B, K, K]
    earlier = np.tri(lists.shape[1], k=-1, dtype=bool)  # j < i
    return (same & earlier).any(2)
