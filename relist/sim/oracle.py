"""The upper bound every policy is reported against: the best list under the true model.

Exhaustive when the number of ordered lists A(m, n) is at most ``exhaustive_limit``; otherwise a
strong search on the true model — beam search over prefixes, then best-improvement local search
(swap, move, replace) from several starts, keeping the best list seen. The search only ever moves
to a better list and starts from greedy-by-true-CTR, so it is never worse than it.

Policies obey business rules; the oracle they are measured against obeys the same ones when a
``feasible`` predicate is given (lists [K, t] -> keeps every rule [K]; rules are checked on
prefixes too, which is sound because a list that breaks a rule has a prefix that breaks it). The
simulator knows no rules itself: the caller says what is feasible. Where no list keeps the rules
(e.g. every candidate is of one category), the unconstrained best is returned.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from relist.objective import Objective
from relist.sim.user_model import expected, standalone_logit
from relist.sim.world import World

Feasible = Callable[[np.ndarray], np.ndarray]
Goal = str | Objective


def n_arrangements(m: int, n: int) -> int:
    return math.perm(m, n)


def _keep(lists: np.ndarray, feasible: Feasible | None) -> np.ndarray:
    return lists if feasible is None or len(lists) == 0 else lists[feasible(lists)]


def exhaustive(world: World, user: int, candidates: np.ndarray, n: int, objective: Goal = "ipv",
               chunk: int = 20_000, feasible: Feasible | None = None) -> tuple[np.ndarray | None, float]:
    """Best ordered (feasible) list of n out of the candidates, by brute force; (None, -inf) if none is."""
    best, best_value = None, -np.inf
    perms = itertools.permutations(range(len(candidates)), n)
    while block := list(itertools.islice(perms, chunk)):
        lists = _keep(candidates[np.asarray(block)], feasible)
        if len(lists) == 0:
            continue
        values = expected(world, np.full(len(lists), user), lists, objective)
        k = int(values.argmax())
        if values[k] > best_value:
            best, best_value = lists[k], float(values[k])
    return best, best_value


def fill(order: np.ndarray, n: int, feasible: Feasible | None = None) -> np.ndarray | None:
    """Slot by slot the first item of ``order`` that keeps the rules; None when the rules leave no way."""
    if feasible is None:
        return order[:n]
    chosen: list[int] = []
    for _ in range(n):
        rest = order[~np.isin(order, chosen)]
        grown = np.concatenate([np.repeat([chosen], len(rest), 0).reshape(len(rest), -1), rest[:, None]], 1)
        ok = feasible(grown.astype(np.int64))
        if not ok.any():
            return None
        chosen.append(int(rest[ok.argmax()]))
    return np.asarray(chosen, dtype=np.int64)


def true_ctr_greedy(world: World, user: int, candidates: np.ndarray, n: int,
                    feasible: Feasible | None = None) -> np.ndarray | None:
    """Sort by the true standalone click probability (under the rules): the best a context-blind ranker
    can do."""
    appeal = standalone_logit(world, np.full(len(candidates), user), candidates)
    return fill(candidates[np.argsort(-appeal, kind="stable")], n, feasible)


def _beam(world: World, user: int, candidates: np.ndarray, n: int, objective: Goal, width: int,
          feasible: Feasible | None) -> np.ndarray:
    prefixes = np.zeros((1, 0), dtype=np.int64)
    for _ in range(n):
        used = (prefixes[:, :, None] == candidates[None, None, :]).any(1)
        rows, cols = np.nonzero(~used)
        grown = _keep(np.concatenate([prefixes[rows], candidates[cols][:, None]], axis=1), feasible)
        if len(grown) == 0:
            return np.zeros((0, n), dtype=np.int64)
        values = expected(world, np.full(len(grown), user), grown, objective)
        keep = np.argsort(-values, kind="stable")[:width]
        prefixes = grown[keep]
    return prefixes


def _neighbours(current: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """All lists one swap, one move (remove and reinsert) or one replacement away."""
    n = len(current)
    out = []
    for i, j in itertools.combinations(range(n), 2):
        swapped = current.copy()
        swapped[[i, j]] = swapped[[j, i]]
        out.append(swapped)
    for i, j in itertools.permutations(range(n), 2):
        rest = np.delete(current, i)
        out.append(np.insert(rest, j, current[i]))
    unused = candidates[~np.isin(candidates, current)]
    if len(unused):
        replaced = np.repeat(current[None, :], n * len(unused), axis=0)
        replaced[np.arange(n * len(unused)), np.repeat(np.arange(n), len(unused))] = np.tile(unused, n)
        out.extend(replaced)
    return np.asarray(out)


def local_search(world: World, user: int, start: np.ndarray, candidates: np.ndarray, objective: Goal,
                 max_steps: int = 50, feasible: Feasible | None = None) -> tuple[np.ndarray, float]:
    current = start.copy()
    value = float(expected(world, np.array([user]), current[None, :], objective)[0])
    for _ in range(max_steps):
        moves = _keep(_neighbours(current, candidates), feasible)
        if len(moves) == 0:
            break
        values = expected(world, np.full(len(moves), user), moves, objective)
        k = int(values.argmax())
        if values[k] <= value + 1e-12:
            break
        current, value = moves[k], float(values[k])
    return current, value


def search(world: World, user: int, candidates: np.ndarray, n: int, objective: Goal = "ipv",
           beam_width: int = 8, restarts: int = 3, seed: int = 0,
           feasible: Feasible | None = None) -> tuple[np.ndarray | None, float]:
    """Strong search on the true model for cases too large to enumerate; (None, -inf) if nothing is feasible."""
    rng = np.random.default_rng(seed)
    greedy = true_ctr_greedy(world, user, candidates, n, feasible)
    starts = [] if greedy is None else [greedy]
    starts += list(_beam(world, user, candidates, n, objective, beam_width, feasible)[:restarts])
    randoms = (fill(rng.permutation(candidates), n, feasible) for _ in range(max(0, restarts - 2)))
    starts += [start for start in randoms if start is not None]
    best, best_value = None, -np.inf
    for start in starts:
        found, value = local_search(world, user, start, candidates, objective, feasible=feasible)
        if value > best_value:
            best, best_value = found, value
    return best, best_value


def oracle_list(world: World, user: int, candidates: np.ndarray, n: int, objective: Goal = "ipv",
                exhaustive_limit: int = 100_000, feasible: Feasible | None = None) -> tuple[np.ndarray, float]:
    """The best list of ``n`` of the candidates (keeping the rules when ``feasible`` is given)."""
    candidates = np.asarray(candidates)
    n = min(n, len(candidates))
    find = exhaustive if n_arrangements(len(candidates), n) <= exhaustive_limit else search
    best, value = find(world, user, candidates, n, objective, feasible=feasible)
    if best is None:  # nothing keeps the rules: the unconstrained best
        best, value = find(world, user, candidates, n, objective)
    return best, value
