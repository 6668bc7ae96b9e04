"""Evaluator-guided local search: improve a list by small moves the evaluator ensemble agrees on.

From a start list (list ranking's choice), each round builds every list one move away — swap two
slots, move one item to another slot, or replace one item by one of the best unused candidates
(by upstream score) — drops those that break a business rule, scores all of them in one batch,
and moves to the best one if it beats the current list by more than ``min_gain`` under the
caller's criterion (the pessimistic value, usually relative to a safe incumbent). It stops when
no move helps, after ``rounds`` rounds, or when the budget has no time for another round; it
never returns a list that scores below its start. Small moves keep the search where the
evaluator has seen lists like the ones it scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.rerank.generators import Context

Criterion = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(rows of the batch [R], lists [R, K, n]) -> what to maximise [R, K] (e.g. a pessimistic value)."""


class LocalSearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(3, ge=0, description="moves at most (one per round); 0: off")
    replace_pool: int = Field(10, ge=0, description="unused candidates (best upstream score first) a slot may "
                                                     "take in a replace move")
    min_gain: float = Field(1e-3, ge=0, description="a move must raise the criterion by more than this")


def position_moves(n: int) -> np.ndarray:
    """Every swap of two slots and every move of one item to another slot, as position orders [M, n]."""
    orders = []
    for i, j in itertools.combinations(range(n), 2):
        order = list(range(n))
        order[i], order[j] = j, i
        orders.append(order)
    for i, j in itertools.permutations(range(n), 2):
        if abs(i - j) > 1:  # a move to the neighbouring slot is a swap, already there
            rest = [p for p in range(n) if p != i]
            orders.append(rest[:j] + [i] + rest[j:])
    return np.asarray(orders, dtype=np.int64).reshape(-1, n)


def neighbours(requests: Requests, lists: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists one move away from lists [B, n]: ([B, M, n] item ids, [B, M] True where a real new list)."""
    b, n = lists.shape
    real = lists != PAD_ID
    length = real.sum(1)
    orders = position_moves(n)
    moved = lists[:, orders]  # [B, S, n]
    slots = np.arange(n)
    inside = slots[None, None, :] < length[:, None, None]  # [B, 1, n]
    # real slots take real items; padding slots stay where they are
    moved_ok = np.where(inside, orders[None] < length[:, None, None], orders[None] == slots).all(-1)
    scores = np.where(np.isnan(requests.cand_scores), -np.arange(requests.candidates.shape[1])[None, :],
                      requests.cand_scores)
    used = (requests.candidates[:, :, None] == lists[:, None, :]).any(-1) | ~requests.mask
    best_unused = np.argsort(np.where(used, np.inf, -scores), axis=1, kind="stable")[:, :pool]
    pool_ids = np.take_along_axis(requests.candidates, best_unused, 1)  # [B, R]
    pool_ok = ~np.take_along_axis(used, best_unused, 1)
    r = pool_ids.shape[1]
    replaced = np.repeat(lists[:, None, :], n * r, 1)  # [B, n*R, n]
    slot = np.repeat(np.arange(n), r)
    replaced[:, np.arange(n * r), slot] = np.tile(pool_ids, (1, n))
    replaced_ok = np.tile(pool_ok, (1, n)) & (slot[None, :] < length[:, None])
    return np.concatenate([moved, replaced], 1), np.concatenate([moved_ok, replaced_ok], 1)


class LocalSearch:
    def __init__(self, cfg: LocalSearchConfig = LocalSearchConfig()):
        self.cfg = cfg

    def improve(self, requests: Requests, start: np.ndarray, ctx: Context, criterion: Criterion,
                start_value: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Better lists [B, n] under ``criterion``, their values [B] and how many moves each took [B]."""
        current = np.array(start, copy=True)
        everyone = np.arange(len(current))
        value = criterion(everyone, current[:, None])[:, 0] if start_value is None else np.array(start_value)
        moves = np.zeros(len(current), np.int64)
        start_keeps = ctx.keeps_rules(requests, current[:, None])[:, 0]
        active = np.ones(len(current), bool)
        for _ in range(self.cfg.rounds):
            rows = np.nonzero(active)[0]
            if len(rows) == 0:
                break
            sub = requests[rows]
            candidates, ok = neighbours(sub, current[rows], self.cfg.replace_pool)
            if not ctx.budget.affords("local_search.round", candidates.shape[0] * candidates.shape[1]):
                break
            with ctx.budget.stage("local_search.round", candidates.shape[0] * candidates.shape[1]):
                ok &= ctx.rows(rows).keeps_rules(sub, candidates) | ~start_keeps[rows, None]
                values = np.where(ok, criterion(rows, candidates), -np.inf)
                pick = values.argmax(1)
                gain = values[np.arange(len(rows)), pick] - value[rows]
                better = gain > self.cfg.min_gain
                moved = rows[better]
                current[moved] = candidates[better, pick[better]]
                value[moved] = values[better, pick[better]]
                moves[moved] += 1
                active[rows[~better]] = False
        return current, value, moves
