"""Exact probabilities of the simulator's logging policies: what off-policy estimators weigh by.

The main logging policy fills slot t greedily by upstream score, except that with chance ε it takes a
uniformly random remaining candidate. In the order of the upstream scores (ties: lower candidate index
first, as ``argmax`` breaks them) its choice at slot t is an index c_t into the remaining candidates,
and the c_t are independent: P(c_t = 0) = 1 - ε + ε/R_t, P(c_t = i) = ε/R_t for 0 < i < R_t, with
R_t = m - t candidates left. Everything here follows from that and is exact: the probability of a
slot given its prefix, and, in rank space (so they depend only on m, n and ε), the probability of a
rank at a slot and of two (slot, rank) pairs together — the Gram matrix of the pseudo-inverse
estimator.

The randomised bucket fills each slot uniformly among the candidates the category rule allows (no item
of a category among the previous ``window`` items; category 0 is unknown and never clashes; when no
candidate is allowed the window shrinks step by step). Its prefix probabilities are exact. Its per-slot
marginals depend on the request's categories and are estimated by Rao-Blackwellised draws: each drawn
prefix adds the exact distribution of the next slot (uniform over what it allows), not one sampled item.

Logs that mix both (a share s of requests in the bucket, assigned independently of the request) are a
single logging policy, the mixture; :func:`mixture_conditional` turns the two prefix probabilities into
its per-slot probabilities given the prefix.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def candidate_index(candidates: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Position [B, n] of each listed item among the request's candidates (an error names a row without)."""
    match = candidates[:, None, :] == lists[:, :, None]
    found = match.any(2).all(1)
    if not found.all():
        raise ValueError(f"row {int(np.argmax(~found))}: a list has an item that is not among the request's "
                         "candidates")
    return match.argmax(2)


def greedy_ranks(cand_scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rank [B, m] of each candidate in the greedy order (0 = picked first); padding ranks last."""
    keys = np.where(mask, -cand_scores.astype(np.float64), np.inf)
    order = np.argsort(keys, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
    return ranks


def choice_probabilities(m: int, n: int, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Per slot t < n: P(c_t = 0) (the best remaining) and P(c_t = i) for one given i > 0."""
    left = np.maximum(m - np.arange(n), 1).astype(np.float64)
    return 1.0 - epsilon + epsilon / left, epsilon / left


def greedy_conditional(cand_scores: np.ndarray, mask: np.ndarray, shown_idx: np.ndarray,
                       epsilon: float) -> np.ndarray:
    """P(shown slot t | shown slots < t) under greedy-with-exploration, for candidate indices [B, n]."""
    b, n = shown_idx.shape
    rows = np.arange(b)
    ranks = greedy_ranks(cand_scores, mask)
    available = mask.copy()
    real = mask.sum(1)
    out = np.zeros((b, n))
    for t in range(n):
        pick = shown_idx[:, t]
        ok = available[rows, pick]
        best = np.where(available, ranks, np.iinfo(ranks.dtype).max).min(1)
        is_best = ranks[rows, pick] == best
        left = np.maximum(real - t, 1)
        out[:, t] = np.where(ok, (1.0 - epsilon) * is_best + epsilon / left, 0.0)
        available[rows, pick] = False
    return out


@lru_cache(maxsize=32)
def greedy_marginals(m: int, n: int, epsilon: float) -> np.ndarray:
    """P(rank a at slot t) [n, m] of greedy-with-exploration (exact).

    State per rank a: L = earlier picks ranked better than a (a not yet picked); a's index among the
    remaining candidates is a - L, so slot t picks a with P(c_t = a - L), a better one with
    P(c_t < a - L) and a worse one otherwise.
    """
    first, other = choice_probabilities(m, n, epsilon)
    a = np.arange(m)[:, None]
    state = np.zeros((m, n + 1))
    state[:, 0] = 1.0
    out = np.zeros((n, m))
    for t in range(min(n, m)):
        index = a - np.arange(n + 1)[None, :]
        p_eq, p_lt = _point(index, first[t], other[t]), _below(index, first[t], other[t])
        out[t] = (state * p_eq).sum(1)
        stay = state * (1.0 - p_eq - p_lt)
        stay[:, 1:] += (state * p_lt)[:, :-1]
        state = stay
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def greedy_pairwise(m: int, n: int, epsilon: float) -> np.ndarray:
    """P(rank a at slot j and rank b at slot k) [n, m, n, m] of greedy-with-exploration (exact).

    The diagonal (j, a) = (k, b) holds the marginals. Pairs of ranks lo < hi are tracked together:
    before either is picked by x picks better than lo and y picks between them; after one is picked,
    by the picks better than the other. All pairs run as one batch.
    """
    first, other = choice_probabilities(m, n, epsilon)
    lo, hi = (v.astype(np.int64) for v in np.triu_indices(m, 1))
    p, s = len(lo), n + 1
    x, y = np.arange(s)[None, :, None], np.arange(s)[None, None, :]
    both = np.zeros((p, s, s))  # neither picked: [pair, x, y]
    both[:, 0, 0] = 1.0
    after_lo = np.zeros((p, n, s))  # lo picked at slot j: [pair, j, picks better than hi]
    after_hi = np.zeros((p, n, s))  # hi picked at slot j: [pair, j, picks better than lo]
    gram = np.zeros((n, m, n, m))
    zs = np.arange(s)[None, None, :]
    for t in range(min(n, m)):
        f, o = first[t], other[t]
        # lo picked earlier (slot j): hi's index is hi - z
        idx = hi[:, None, None] - zs
        eq, lt = _point(idx, f, o), _below(idx, f, o)
        hit = (after_lo * eq).sum(2)  # [pair, j]
        gram[:t, lo, t, hi] += hit[:, :t].T
        new_lo = after_lo * (1.0 - eq - lt)
        new_lo[:, :, 1:] += (after_lo * lt)[:, :, :-1]
        # hi picked earlier: lo's index is lo - x
        idx = lo[:, None, None] - zs
        eq, lt = _point(idx, f, o), _below(idx, f, o)
        hit = (after_hi * eq).sum(2)
        gram[:t, hi, t, lo] += hit[:, :t].T
        new_hi = after_hi * (1.0 - eq - lt)
        new_hi[:, :, 1:] += (after_hi * lt)[:, :, :-1]
        # neither picked yet
        v1 = lo[:, None, None] - x
        v2 = hi[:, None, None] - x - y
        eq1, lt1 = _point(v1, f, o), _below(v1, f, o)
        eq2, lt2 = _point(v2, f, o), _below(v2, f, o)
        between = lt2 - lt1 - eq1
        new_both = both * (1.0 - lt2 - eq2)
        new_both[:, 1:, :] += (both * lt1)[:, :-1, :]
        new_both[:, :, 1:] += (both * between)[:, :, :-1]
        picked_lo = both * eq1  # lo now; picks better than hi become x + y + 1
        total = x + y + 1
        for z in range(1, s):
            new_lo[:, t, z] += picked_lo[:, (total == z)[0]].sum(1)
        new_hi[:, t, :] += (both * eq2).sum(2)
        both, after_lo, after_hi = new_both, new_lo, new_hi
    gram += gram.transpose(2, 3, 0, 1)
    marg = greedy_marginals(m, n, epsilon)
    gram[np.arange(n)[:, None], np.arange(m)[None, :], np.arange(n)[:, None], np.arange(m)[None, :]] = marg
    gram.setflags(write=False)
    return gram


def uniform_pairwise(m: int, n: int) -> np.ndarray:
    """The same [n, m, n, m] for a uniformly random list of distinct candidates (no business rule)."""
    gram = np.full((n, m, n, m), 1.0 / (m * (m - 1)) if m > 1 else 0.0)
    slots, ranks = np.arange(n), np.arange(m)
    gram[slots, :, slots, :] = 0.0
    gram[:, ranks, :, ranks] = 0.0
    gram[slots[:, None], ranks[None, :], slots[:, None], ranks[None, :]] = 1.0 / m
    return gram


def _point(index: np.ndarray, first: float, other: float) -> np.ndarray:
    """P(c_t = index) (0 for negative indices)."""
    return np.where(index == 0, first, np.where(index > 0, other, 0.0))


def _below(index: np.ndarray, first: float, other: float) -> np.ndarray:
    """P(c_t < index)."""
    return np.where(index >= 1, first + (index - 1) * other, 0.0)


def rule_allowed(cates: np.ndarray, available: np.ndarray, recent: np.ndarray, window: int) -> np.ndarray:
    """Candidates [B, m] the category rule allows after the chosen categories ``recent`` [B, t].

    Rows where nothing is allowed get the smallest relaxation (a shorter window) that allows something.
    """
    known = cates != 0
    w = min(window, recent.shape[1])
    clash = [(cates == recent[:, -lag, None]) & known for lag in range(1, w + 1)]
    allowed = available & ~np.logical_or.reduce(clash) if clash else available.copy()
    empty = ~allowed.any(1)
    while empty.any() and w > 0:  # relax: forget the oldest category of the window
        w -= 1
        looser = available & ~np.logical_or.reduce(clash[:w]) if w else available
        allowed[empty] = looser[empty]
        empty &= ~looser.any(1)
    return allowed


def _uniform_pick(allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random allowed column per row (the first column where a row allows none)."""
    cum = allowed.cumsum(1)
    target = np.floor(rng.random(len(allowed)) * cum[:, -1]).astype(np.int64)
    return (cum > target[:, None]).argmax(1)


def rule_keeping_lists(cates: np.ndarray, mask: np.ndarray, n: int, window: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Candidate indices [B, n] of uniformly random lists that keep the category rule, slot by slot."""
    b = len(cates)
    rows = np.arange(b)
    available = mask.copy()
    chosen = np.zeros((b, n), dtype=np.int64)
    for t in range(n):
        allowed = rule_allowed(cates, available, cates[rows[:, None], chosen[:, :t]], window)
        pick = _uniform_pick(allowed, rng)
        chosen[:, t] = pick
        available[rows, pick] = False
    return chosen


def rule_keeping_conditional(cates: np.ndarray, mask: np.ndarray, shown_idx: np.ndarray,
                             window: int) -> np.ndarray:
    """P(shown slot t | shown slots < t) [B, n] under the random bucket (0 where the rule forbids it)."""
    b, n = shown_idx.shape
    rows = np.arange(b)
    available = mask.copy()
    out = np.zeros((b, n))
    for t in range(n):
        allowed = rule_allowed(cates, available, cates[rows[:, None], shown_idx[:, :t]], window)
        pick = shown_idx[:, t]
        out[:, t] = np.where(allowed[rows, pick], 1.0 / np.maximum(allowed.sum(1), 1), 0.0)
        available[rows, pick] = False
    return out


def rule_keeping_marginals(cates: np.ndarray, mask: np.ndarray, n: int, window: int,
                           rng: np.random.Generator, draws: int, chunk: int = 32) -> np.ndarray:
    """Estimated P(candidate at slot t) [B, n, m] under the random bucket, from ``draws`` prefixes each.

    The bucket treats the candidates of one category alike, so their marginals are equal: the estimate
    is averaged within each category (category 0 included: unknown ones never clash, so they are alike too).
    """
    b, m = cates.shape
    out = np.zeros((b, n, m))
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        c, available = np.repeat(cates, k, axis=0), np.repeat(mask, k, axis=0)
        rows = np.arange(len(c))
        chosen = np.zeros((len(c), n), dtype=np.int64)
        for t in range(n):
            allowed = rule_allowed(c, available, c[rows[:, None], chosen[:, :t]], window)
            out[:, t] += (allowed / np.maximum(allowed.sum(1, keepdims=True), 1)).reshape(b, k, m).sum(1)
            pick = _uniform_pick(allowed, rng)
            chosen[:, t] = pick
            available[rows, pick] = False
    out /= draws
    same = (cates[:, :, None] == cates[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    return np.einsum("btj,bij->bti", out, same) / np.maximum(same.sum(2), 1)[:, None, :]


def mixture_conditional(main: np.ndarray, bucket: np.ndarray, share: float) -> np.ndarray:
    """Per-slot probabilities given the prefix [B, n] of the mixture (1 - share)·main + share·bucket.

    Inputs are the two policies' per-slot probabilities given the prefix; the mixture's prefix
    probability is the mixture of their prefix probabilities, and its slot probability the ratio of
    consecutive prefix probabilities.
    """
    prefix = (1.0 - share) * np.cumprod(main, axis=1) + share * np.cumprod(bucket, axis=1)
    before = np.concatenate([np.ones((len(prefix), 1)), prefix[:, :-1]], axis=1)
    return np.divide(prefix, before, out=np.zeros_like(prefix), where=before > 0)
