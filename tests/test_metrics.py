import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from sklearn.metrics import ndcg_score, roc_auc_score

from relist.data.padding import pad_lists
from relist.eval.metrics import (
    auc,
    gauc,
    group_auc,
    list_reward,
    mean_ci,
    ndcg_at_k,
    ndcg_of_order,
    ndcg_per_query,
    paired_relative,
    pearson,
    t_quantile,
)

SETTINGS = settings(max_examples=60, deadline=None)


def binary_case(min_size=2, max_size=30):
    """Labels with both classes and integer-valued scores (so ties happen)."""
    return st.integers(min_size, max_size).flatmap(
        lambda n: st.tuples(
            arrays(np.int8, n, elements=st.integers(0, 1)).filter(lambda y: 0 < y.sum() < len(y)),
            arrays(np.float64, n, elements=st.integers(-5, 5).map(float)),
        )
    )


# --- AUC / GAUC ---------------------------------------------------------------------------------

def test_auc_hand_computed_with_tie():
    # pairs (pos, neg): (0.8, 0.1) win, (0.8, 0.4) win, (0.4, 0.1) win, (0.4, 0.4) tie -> 3.5 / 4
    assert auc([1, 0, 1, 0], [0.8, 0.1, 0.4, 0.4]) == pytest.approx(0.875)


def test_auc_one_class_raises():
    with pytest.raises(ValueError, match="only one class"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])


def test_auc_nan_score_raises():
    with pytest.raises(ValueError, match="NaN"):
        auc([1, 0], [np.nan, 0.2])


@SETTINGS
@given(binary_case())
def test_auc_matches_sklearn_and_is_a_probability(case):
    labels, scores = case
    value = auc(labels, scores)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(roc_auc_score(labels, scores))


@SETTINGS
@given(binary_case())
def test_auc_of_negated_scores_is_complement(case):
    labels, scores = case
    scores = scores + np.arange(len(scores)) * 1e-3  # no ties
    assert auc(labels, -scores) == pytest.approx(1.0 - auc(labels, scores))


def test_gauc_weights_groups_by_size_and_skips_single_class():
    groups = np.array([7, 7, 7, 7, 3, 3, 9, 9])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 1])  # group 9 has one class only
    scores = np.array([0.8, 0.1, 0.4, 0.4, 0.2, 0.9, 0.5, 0.6])
    result = group_auc(groups, labels, scores)
    assert result.value == pytest.approx((4 * 0.875 + 2 * 0.0) / 6)
    assert (result.n_groups, result.n_skipped) == (2, 1)
    assert gauc(groups, labels, scores) == result.value


@SETTINGS
@given(binary_case(max_size=40), st.integers(1, 5), st.randoms(use_true_random=False))
def test_gauc_equals_weighted_mean_of_per_group_sklearn_auc(case, n_groups, rnd):
    labels, scores = case
    groups = np.array([rnd.randrange(n_groups) for _ in labels])
    expected, weights = [], []
    for g in np.unique(groups):
        y = labels[groups == g]
        if 0 < y.sum() < len(y):
            expected.append(roc_auc_score(y, scores[groups == g]))
            weights.append(len(y))
    if not expected:
        with pytest.raises(ValueError):
            gauc(groups, labels, scores)
    else:
        assert gauc(groups, labels, scores) == pytest.approx(np.average(expected, weights=weights))


def test_gauc_one_pos_one_neg_per_user_is_share_of_users_ranked_right():
    # The Amazon README's reading of GAUC on its test split.
    groups = np.repeat(np.arange(4), 2)
    labels = np.tile([1, 0], 4)
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.6, 0.5, 0.4, 0.4])
    assert gauc(groups, labels, scores) == pytest.approx((1 + 0 + 1 + 0.5) / 4)


# --- NDCG ---------------------------------------------------------------------------------------

def test_ndcg_hand_computed():
    labels = np.array([[0, 2, 1]])
    scores = np.array([[3.0, 2.0, 1.0]])
    dcg = 0 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(labels, scores) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(labels, scores, k=1) == 0.0
    assert ndcg_at_k(labels, scores, k=2) == pytest.approx((3 / math.log2(3)) / idcg)


def test_ndcg_ties_keep_original_order():
    labels = np.array([[0, 1]])
    assert ndcg_at_k(labels, np.zeros((1, 2)), k=1) == 0.0
    assert ndcg_at_k(labels[:, ::-1], np.zeros((1, 2)), k=1) == 1.0


def test_ndcg_empty_query_conventions():
    labels = np.array([[0, 0, 0], [1, 0, 0]])
    scores = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    per_query = ndcg_per_query(labels, scores)
    assert np.isnan(per_query[0]) and per_query[1] == pytest.approx(0.5)
    assert ndcg_at_k(labels, scores) == pytest.approx(0.5)
    assert ndcg_at_k(labels, scores, empty="zero") == pytest.approx(0.25)
    assert ndcg_at_k(labels, scores, empty="one") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no query"):
        ndcg_at_k(labels[:1], scores[:1])
    with pytest.raises(ValueError, match="empty"):
        ndcg_at_k(labels, scores, empty="skip")


def test_ndcg_of_order_agrees_with_scores():
    labels = np.array([[2, 0, 1, 1]])
    order = np.array([[2, 0, 3, 1]])
    scores = np.array([[3.0, 1.0, 4.0, 2.0]])  # ranks the columns in that order
    assert ndcg_of_order(labels, order, k=3) == pytest.approx(ndcg_per_query(labels, scores, k=3))
    with pytest.raises(ValueError, match="permutation"):
        ndcg_of_order(labels, np.array([[0, 0, 1, 2]]))


def padded_case():
    """Ragged queries of graded labels with distinct scores, padded with garbage behind the mask."""
    query = st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
            st.permutations(list(range(n))),
        )
    )
    return st.lists(query, min_size=1, max_size=6)


def _pad(queries, rng):
    labels, mask = pad_lists([q[0] for q in queries])
    scores, _ = pad_lists([q[1] for q in queries], dtype=np.float64)
    labels = np.where(mask, labels, rng.integers(0, 4, labels.shape))
    scores = np.where(mask, scores, rng.normal(size=scores.shape) * 100)
    return labels, scores, mask


@SETTINGS
@given(padded_case(), st.integers(1, 12))
def test_ndcg_matches_sklearn_and_ignores_padding(queries, k):
    labels, scores, mask = _pad(queries, np.random.default_rng(0))
    per_query = ndcg_per_query(labels, scores, mask, k=k, empty="zero")
    assert ((0 <= per_query) & (per_query <= 1 + 1e-12)).all()
    for row, (rel, score) in enumerate(queries):
        if len(rel) > 1 and sum(rel) > 0:  # sklearn needs two docs; distinct scores, so no ties
            expected = ndcg_score([np.exp2(rel) - 1], [score], k=k)
            assert per_query[row] == pytest.approx(expected)
        alone = ndcg_per_query([rel], [score], k=k, empty="zero")[0]
        assert per_query[row] == pytest.approx(alone)


@SETTINGS
@given(padded_case(), st.integers(1, 12))
def test_ndcg_of_ideal_order_is_one(queries, k):
    labels, _, mask = _pad(queries, np.random.default_rng(1))
    per_query = ndcg_per_query(labels, np.where(mask, labels, 0.0), mask, k=k)
    assert np.allclose(per_query[~np.isnan(per_query)], 1.0)


# --- list reward, correlation, intervals --------------------------------------------------------

def test_list_reward_sums_real_positions_with_exposure():
    p = np.array([[0.5, 0.2, 0.9], [0.1, 0.1, 0.1]])
    mask = np.array([[True, True, False], [True, True, True]])
    assert np.allclose(list_reward(p, mask), [0.7, 0.3])
    exposure = np.array([[1.0, 0.5, 1.0], [1.0, 1.0, 0.0]])
    assert np.allclose(list_reward(p, mask, exposure), [0.6, 0.2])


def test_pearson():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    y = np.array([1.0, 3.0, 2.0, 5.0])
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)
    with pytest.raises(ValueError, match="constant"):
        pearson(x, np.ones(4))


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 20, 1000])
@pytest.mark.parametrize("p", [0.9, 0.975, 0.995])
def test_t_quantile_close_to_scipy(p, dof):
    assert t_quantile(p, dof) == pytest.approx(stats.t.ppf(p, dof), rel=1e-2)


def test_mean_ci_matches_t_interval():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=50)
    mean, half = mean_ci(values, level=0.9)
    low, high = stats.t.interval(0.9, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx((high - low) / 2, rel=1e-3)


def test_paired_relative_uses_paired_differences():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(1.0, 10.0, size=200)  # large spread shared by both policies
    values = baseline * 1.05 + rng.normal(0, 0.01, size=200)
    rel, half = paired_relative(values, baseline)
    assert rel == pytest.approx(0.05, abs=2e-3)
    assert half < 0.01  # unpaired, the spread of the baseline alone would give about +-0.1
    with pytest.raises(ValueError, match="paired"):
        paired_relative(values, baseline[:-1])
