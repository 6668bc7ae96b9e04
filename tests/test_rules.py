"""Business rules: per-slot masks, whole-list checks, and relaxation only when nothing else is possible."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relist.rerank.rules import BusinessRules


def decode(rules: BusinessRules, scores, ids, cates, shops, n):
    """Greedy slot-by-slot decoding with feasible_mask: what any generator does with the rules."""
    B, m = ids.shape
    chosen = torch.zeros(B, m, dtype=torch.bool)
    cols = torch.zeros(B, 0, dtype=torch.long)
    flagged = torch.zeros(B, dtype=torch.bool)
    for slot in range(n):
        allowed, relaxed = rules.feasible_mask(cates.gather(1, cols), shops.gather(1, cols), cates, shops,
                                               chosen, slot, cand_ids=ids)
        pick = scores.masked_fill(~allowed, -torch.inf).argmax(1)
        chosen[torch.arange(B), pick] = True
        cols = torch.cat([cols, pick[:, None]], 1)
        flagged |= relaxed
    return cols, flagged


@st.composite
def requests(draw):
    m = draw(st.integers(4, 14))
    n = draw(st.integers(1, m))
    n_cates = draw(st.integers(1, 6))
    cates = torch.tensor(draw(st.lists(st.integers(1, n_cates), min_size=m, max_size=m)))[None]
    shops = torch.tensor(draw(st.lists(st.integers(1, 4), min_size=m, max_size=m)))[None]
    ids = torch.arange(1, m + 1)[None]
    scores = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=m, max_size=m)))[None]
    pinned = draw(st.dictionaries(st.integers(0, n), st.integers(1, m + 3), max_size=2))
    if len(set(pinned.values())) < len(pinned):
        pinned = {}
    rules = BusinessRules(draw(st.integers(0, 3)), draw(st.one_of(st.none(), st.integers(1, 3))), pinned)
    return rules, scores, ids, cates, shops, n


@settings(max_examples=150, deadline=None)
@given(requests())
def test_decoded_lists_keep_the_rules_unless_flagged(case):
    rules, scores, ids, cates, shops, n = case
    cols, flagged = decode(rules, scores, ids, cates, shops, n)
    assert len(set(cols[0].tolist())) == n  # no duplicates
    ok = rules.check(cates.gather(1, cols), shops.gather(1, cols), ids.gather(1, cols), ids)
    assert bool(ok[0]) or bool(flagged[0])
    if not flagged[0]:
        assert bool(ok[0])


@settings(max_examples=150, deadline=None)
@given(requests(), st.randoms(use_true_random=False))
def test_the_check_says_the_same_on_arrays_as_on_tensors(case, rng):
    """Beam search and list ranking check lists as numpy arrays, the neural generators as tensors."""
    rules, _, ids, cates, shops, n = case
    lists = torch.stack([torch.tensor(rng.sample(range(ids.shape[1]), n)) for _ in range(6)])
    as_tensors = rules.check(cates[0][lists], shops[0][lists], ids[0][lists], ids.expand(6, -1))
    as_arrays = rules.check(*(x.numpy() for x in (cates[0][lists], shops[0][lists], ids[0][lists],
                                                    ids.expand(6, -1))))
    assert isinstance(as_arrays, np.ndarray) and as_arrays.tolist() == as_tensors.tolist()


def test_scatter_rule_blocks_the_previous_two_categories():
    rules = BusinessRules(cate_window=2)
    cates = torch.tensor([[1, 2, 3, 1, 2, 4]])
    shops = torch.zeros_like(cates)
    chosen = torch.tensor([[True, True, False, False, False, False]])
    allowed = rules.allowed_mask(cates[:, :2], shops[:, :2], cates, shops, chosen, 2)
    assert allowed.tolist() == [[False, False, True, False, False, True]]
    assert rules.check(torch.tensor([[1, 2, 3, 1]]), torch.zeros(1, 4)).item()
    assert not rules.check(torch.tensor([[1, 2, 1, 3]]), torch.zeros(1, 4)).item()
    assert BusinessRules(cate_window=1).check(torch.tensor([[1, 2, 1, 3]]), torch.zeros(1, 4)).item()


def test_unknown_category_and_shop_never_clash():
    rules = BusinessRules(cate_window=2, max_per_shop=1)
    assert rules.check(torch.tensor([[0, 0, 0]]), torch.tensor([[0, 0, 0]])).item()
    assert not rules.check(torch.tensor([[1, 2, 3]]), torch.tensor([[5, 6, 5]])).item()


def test_pinned_item_takes_its_slot_and_no_other():
    rules = BusinessRules(cate_window=2, pinned={2: 7})
    ids = torch.tensor([[5, 6, 7, 8]])
    cates = torch.tensor([[1, 2, 1, 3]])
    scores = torch.tensor([[0.5, 0.2, 0.9, 0.3]])
    cols, flagged = decode(rules, scores, ids, cates, torch.zeros_like(cates), 3)
    # 7 waits for slot 2, where it clashes with slot 0: the pinned item wins
    assert ids.gather(1, cols)[0].tolist() == [5, 8, 7]
    assert not flagged.item()
    assert rules.check(cates.gather(1, cols), torch.zeros(1, 3), ids.gather(1, cols), ids).item()
    assert not rules.check(cates[:, [2, 0, 3]], torch.zeros(1, 3), ids[:, [2, 0, 3]], ids).item()


def test_relaxation_flags_only_rows_without_a_valid_choice():
    rules = BusinessRules(cate_window=2, max_per_shop=1)
    cates = torch.tensor([[1, 1, 1, 1], [1, 2, 3, 4]])
    shops = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    chosen = torch.tensor([[True, False, False, False]] * 2)
    mask, relaxed = rules.feasible_mask(cates[:, :1], shops[:, :1], cates, shops, chosen, 1)
    assert relaxed.tolist() == [True, False]
    assert mask.tolist() == [[False, True, True, True], [False, True, True, True]]
    np.testing.assert_array_equal(
        rules.allowed_mask(cates[:, :1], shops[:, :1], cates, shops, chosen, 1).numpy(),
        [[False, False, False, False], [False, True, True, True]])
