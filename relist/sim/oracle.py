"""The upper bound every policy is reported against: the best list under the true model.

Exhaustive when the number of ordered lists A(m, n) is at most
``exhaustive_limit``; otherwise a strong search on the true model — beam search
over prefixes, then best-improvement local search (swap, move, replace) from
several starts, keeping the best list seen. The search only ever moves to a
better list and starts from greedy-by-true-CTR, so it is never worse than it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from relist.sim.user_model import expected, standalone_logit
from relist.sim.world import World


def n_arrangements(m: int, n: int) -> int:
    return math.perm(m, n)


def exhaustive(world: World, user: int, candidates: np.ndarray, n: int, objective: str = "ipv",
               chunk: int = 20_000) -> tuple[np.ndarray, float]:
    """Best ordered list of n out of the candidates, by brute force."""
    best, best_value = None, -np.inf
    perms = itertools.permutations(range(len(candidates)), n)
    while block := list(itertools.islice(perms, chunk)):
        lists = candidates[np.asarray(block)]
        values = expected(world, np.full(len(lists), user), lists, objective)
        k = int(values.argmax())
        if values[k] > best_value:
            best, best_value = lists[k], float(values[k])
    return best, best_value


def true_ctr_greedy(world: World, user: int, candidates: np.ndarray, n: int) -> np.ndarray:
    """Sort by the true standalone click probability: the best a context-blind ranker can do."""
    appeal = standalone_logit(world, np.full(len(candidates), user), candidates)
    return candidates[np.argsort(-appeal, kind="stable")[:n]]


def _beam(world: World, user: int, candidates: np.ndarray, n: int, objective: str, width: int) -> np.ndarray:
    prefixes = np.zeros((1, 0), dtype=np.int64)
    for _ in range(n):
        used = (prefixes[:, :, None] == candidates[None, None, :]).any(1)
        rows, cols = np.nonzero(~used)
        grown = np.concatenate([prefixes[rows], candidates[cols][:, None]], axis=1)
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


def local_search(world: World, user: int, start: np.ndarray, candidates: np.ndarray, objective: str,
                 max_steps: int = 50) -> tuple[np.ndarray, float]:
    current = start.copy()
    value = float(expected(world, np.array([user]), current[None, :], objective)[0])
    for _ in range(max_steps):
        moves = _neighbours(current, candidates)
        values = expected(world, np.full(len(moves), user), moves, objective)
        k = int(values.argmax())
        if values[k] <= value + 1e-12:
            break
        current, value = moves[k], float(values[k])
    return current, value


def search(world: World, user: int, candidates: np.ndarray, n: int, objective: str = "ipv",
           beam_width: int = 8, restarts: int = 3, seed: int = 0) -> tuple[np.ndarray, float]:
    """Strong search on the true model for cases too large to enumerate."""
    rng = np.random.default_rng(seed)
    starts = [true_ctr_greedy(world, user, candidates, n)]
    starts += list(_beam(world, user, candidates, n, objective, beam_width)[:restarts])
    starts += [rng.permutation(candidates)[:n] for _ in range(max(0, restarts - 2))]
    best, best_value = None, -np.inf
    for start in starts:
        found, value = local_search(world, user, start, candidates, objective)
        if value > best_value:
            best, best_value = found, value
    return best, best_value


def oracle_list(world: World, user: int, candidates: np.ndarray, n: int, objective: str = "ipv",
                exhaustive_limit: int = 100_000) -> tuple[np.ndarray, float]:
    candidates = np.asarray(candidates)
    if n_arrangements(len(candidates), n) <= exhaustive_limit:
        return exhaustive(world, user, candidates, n, objective)
    return search(world, user, candidates, n, objective)
