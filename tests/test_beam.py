"""Beam search list recall: valid lists, exact values, greedy at k=1, exhaustive at large k.

Weights are the objective's (relist.objective): PV, IPV, purchases, GMV.
"""

from itertools import permutations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relist.data.requests import Requests
from relist.rerank.beam import beam_search, greedy_under_rules
from relist.rerank.generators import Context
from relist.rerank.rules import BusinessRules

IPV = np.array([0.0, 1.0, 0.0, 0.0])


def weights_of(pv=0.0, ipv=1.0, buys=0.0, gmv=0.0):
    return np.array([pv, ipv, buys, gmv])


def list_value(cols, ctr, nxt, weights, p_buy=None, price=None):
    exposure, totals = 1.0, np.zeros(4)
    for c in cols:
        buy = 0.0 if p_buy is None else ctr[c] * p_buy[c]
        totals += exposure * np.array([1.0, ctr[c], buy, buy * (0.0 if price is None else price[c])])
        exposure *= nxt[c]
    return float(totals @ weights)


def search(ctr, nxt, cates, shops, n, k, weights=IPV, rules=BusinessRules(), ids=None, **gmv):
    """beam_search on one request of real candidates."""
    m = len(ctr)
    ids = np.arange(1, m + 1) if ids is None else ids
    return beam_search(ctr[None], nxt[None], ids[None], cates[None], shops[None], np.ones((1, m), bool), n, k,
                       weights, rules, **gmv)


def greedy_on_value(ctr, nxt, cates, shops, n, weights, rules):
    """Reference: add the item with the largest gain in r, among those the rules allow."""
    ids = torch.arange(1, len(ctr) + 1)[None]
    cates, shops = torch.as_tensor(cates)[None], torch.as_tensor(shops)[None]
    cols: list[int] = []
    for slot in range(n):
        chosen = torch.zeros_like(ids, dtype=torch.bool)
        chosen[0, cols] = True
        prefix = torch.tensor([cols], dtype=torch.long)
        allowed, _ = rules.feasible_mask(cates.gather(1, prefix), shops.gather(1, prefix), cates, shops,
                                         chosen, slot, cand_ids=ids)
        gains = [list_value(cols + [j], ctr, nxt, weights) if allowed[0, j] else -np.inf
                 for j in range(len(ctr))]
        cols.append(int(np.argmax(gains)))
    return cols


@st.composite
def cases(draw):
    m = draw(st.integers(3, 12))
    n = draw(st.integers(1, min(m, 6)))
    probs = st.lists(st.floats(0.01, 0.99), min_size=m, max_size=m, unique=True)  # no ties: one greedy list
    ctr, nxt = np.array(draw(probs)), np.array(draw(probs))
    cates = np.array(draw(st.lists(st.integers(1, draw(st.integers(1, 5))), min_size=m, max_size=m)))
    shops = np.array(draw(st.lists(st.integers(1, 3), min_size=m, max_size=m)))
    rules = BusinessRules(draw(st.integers(0, 2)), draw(st.one_of(st.none(), st.integers(1, 3))))
    weights = weights_of(draw(st.floats(0, 1)), draw(st.floats(0.1, 2)))
    return ctr, nxt, cates, shops, n, rules, weights


@settings(max_examples=80, deadline=None)
@given(cases(), st.integers(1, 6))
def test_beam_lists_are_valid_distinct_subsets_with_exact_values(case, k):
    ctr, nxt, cates, shops, n, rules, weights = case
    m = len(ctr)
    ids = np.arange(101, 101 + m)
    out = search(ctr, nxt, cates, shops, n, k, weights, rules, ids)
    for b in range(k):
        if not out.valid[0, b]:
            continue
        cols = out.index[0, b]
        assert len(set(cols.tolist())) == n and cols.max() < m
        np.testing.assert_array_equal(out.items[0, b], ids[cols])
        assert np.isclose(out.value[0, b], list_value(cols, ctr, nxt, weights))
        keeps = rules.check(torch.as_tensor(cates[cols])[None], torch.as_tensor(shops[cols])[None]).item()
        assert keeps or out.relaxed[0, b]
        if not out.relaxed[0, b]:
            assert keeps
    assert out.valid[0, 0]
    if out.relaxed[0, 0]:  # a relaxed list never ranks above one that keeps the rules
        assert (out.relaxed[0] | ~out.valid[0]).all()


@settings(max_examples=60, deadline=None)
@given(cases())
def test_beam_of_width_one_is_greedy_on_the_list_value(case):
    ctr, nxt, cates, shops, n, rules, weights = case
    out = search(ctr, nxt, cates, shops, n, 1, weights, rules)
    reference = greedy_on_value(ctr, nxt, cates, shops, n, weights, rules)
    assert np.isclose(out.value[0, 0], list_value(reference, ctr, nxt, weights))


def test_wide_beam_finds_the_best_list_exhaustively():
    rng = np.random.default_rng(3)
    m, n = 6, 3
    ctr, nxt = rng.random(m), rng.random(m)
    p_buy, price = rng.random(m), rng.random(m) * 5
    weights = weights_of(0.3, 1.0, 0.5, 0.2)
    best = max(list_value(list(p), ctr, nxt, weights, p_buy, price) for p in permutations(range(m), n))
    none, money = np.zeros(m, int), {"p_buy": p_buy[None], "price": price[None]}
    out = search(ctr, nxt, none, none, n, 120, weights, BusinessRules(0), **money)
    assert np.isclose(out.value[0, 0], best)
    assert np.all(np.diff(out.value[0]) <= 1e-12)  # best first
    greedy = search(ctr, nxt, none, none, n, 1, weights, BusinessRules(0), **money)
    assert greedy.value[0, 0] <= best + 1e-12


def test_short_requests_are_padded_and_extra_beams_invalid():
    ctr = np.array([[0.5, 0.4, 0.3, 0.0], [0.1, 0.2, 0.3, 0.4]])
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    ids = np.array([[7, 8, 0, 0], [1, 2, 3, 4]])
    cates = np.array([[1, 2, 0, 0], [1, 2, 3, 4]])
    out = beam_search(ctr, np.full((2, 4), 0.9), ids, cates, np.zeros((2, 4), int), mask, n=3, k=4)
    assert out.items[0, 0].tolist() == [7, 8, 0] and out.valid[0, :2].all() and not out.valid[0, 2:].any()
    assert out.valid[1].all() and (out.items[1] > 0).all()


def test_rules_hold_when_possible_and_violations_are_flagged():
    m, n = 8, 6
    cates = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    ctr, shops = np.linspace(0.9, 0.2, m), np.arange(1, m + 1)
    out = search(ctr, np.full(m, 0.8), cates, shops, n, 4, rules=BusinessRules(cate_window=2))
    assert not out.relaxed[0, 0]
    assert BusinessRules(2).check(torch.as_tensor(cates[out.index[0, 0]])[None], torch.zeros(1, n)).item()
    impossible = search(ctr, np.full(m, 0.8), np.ones(m, int), shops, n, 4, rules=BusinessRules(2))
    assert impossible.relaxed[0].all() and len(set(impossible.index[0, 0].tolist())) == n


def test_per_request_weights_value_each_request_by_its_own_objective():
    rng = np.random.default_rng(5)
    ctr, nxt = rng.random((2, 5)), rng.random((2, 5))
    ids, none, mask = np.arange(1, 11).reshape(2, 5), np.zeros((2, 5), int), np.ones((2, 5), bool)
    weights = np.stack([weights_of(pv=1.0, ipv=0.0), weights_of()])
    both = beam_search(ctr, nxt, ids, none, none, mask, 3, 4, weights, BusinessRules(0))
    for row in range(2):
        alone = beam_search(ctr[row:row + 1], nxt[row:row + 1], ids[row:row + 1], none[:1], none[:1], mask[:1], 3, 4,
                            weights[row], BusinessRules(0))
        np.testing.assert_allclose(both.value[row], alone.value[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0, 1, 2, 3]), st.sampled_from([None, 1, 2]))
def test_greedy_under_rules_is_the_width_one_beam(seed, window, shop_cap):
    rng = np.random.default_rng(seed)
    b, m, n = 6, 9, 7
    ids = np.stack([rng.choice(np.arange(1, 60), m, replace=False) for _ in range(b)])
    mask = np.arange(m)[None] < rng.integers(3, m + 1, b)[:, None]  # some requests have fewer than n candidates
    ids = np.where(mask, ids, 0)
    scores = np.where(mask, rng.random((b, m)), np.nan).astype(np.float32)
    requests = Requests.from_arrays(np.arange(b), np.ones(b, np.int64), ids, scores)
    rules = BusinessRules(cate_window=window, max_per_shop=shop_cap)
    cates, shops = rng.integers(0, 3, (b, m)), rng.integers(0, 3, (b, m))
    ctx = Context(_AnyStore(), rules, cates=cates, shops=shops)
    key = np.nan_to_num(scores, nan=0.0).astype(np.float64)
    beam = beam_search(key, np.ones_like(key), ids, cates, shops, mask, n, 1, rules=rules).items[:, 0]
    np.testing.assert_array_equal(greedy_under_rules(key, requests, n, ctx), beam)


class _AnyStore:
    def item_features(self, ids):
        zeros = torch.zeros(np.asarray(ids).shape, dtype=torch.long)
        return {"cate": zeros, "shop": zeros}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-np.inf, 0.0, 0.5, 1.0, 2.0, 3.5]), min_size=1, max_size=40), st.integers(1, 8))
def test_the_compiled_top_k_is_a_stable_descending_sorts_first_k(values, k):
    from relist.rerank.beam import _top

    values = np.array(values)
    k = min(k, len(values))
    out = np.empty(k, np.int64)
    _top(values, out)
    assert out.tolist() == np.argsort(-values, kind="stable")[:k].tolist()  # ties (and -inf) to the earlier
