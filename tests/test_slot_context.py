"""The slot context of a point-wise score: the same terms where the teacher learns them (logged impressions)
and where beam search adds them back (behind every prefix), and beam search exact under them."""

from itertools import permutations

import numpy as np
import torch

from relist.models.ranking.config import TeacherConfig
from relist.models.ranking.context import ContextTerms
from relist.models.ranking.samples import iterate_batches, load_ranking_data, slot_context
from relist.models.ranking.teacher import FineRankTeacher
from relist.rerank.beam import beam_search
from relist.rerank.rules import BusinessRules

IPV = np.array([0.0, 1.0, 0.0, 0.0])


def test_slot_context_is_the_category_above_and_the_earlier_items_of_the_same_category():
    cates = np.array([[3, 5, 3, 0, 3, 5], [1, 1, 1, 2, 0, 0]])
    prev, repeats = slot_context(cates)
    np.testing.assert_array_equal(prev, [[0, 3, 5, 3, 0, 3], [0, 1, 1, 1, 2, 0]])
    np.testing.assert_array_equal(repeats, [[0, 0, 1, 0, 2, 1], [0, 1, 2, 0, 0, 0]])  # unknown (0) never repeats


def test_logged_logits_add_the_position_and_slot_terms_a_search_reads(logs):
    data = load_ranking_data(logs, ("valid",))
    valid = data.splits["valid"]
    shown = valid["prev_cate"] > 0
    assert shown.any() and (valid["repeats"] > 0).any()  # the logs carry both
    torch.manual_seed(0)
    model = FineRankTeacher(data.vocab, 8, TeacherConfig(hidden=(16, 8), tasks=("ctr", "next"), slot_context=True))
    with torch.no_grad():
        for p in (model.context.pair, model.context.repeats, model.position.weight):
            p.normal_()
    model.eval()
    batch = {k: torch.from_numpy(v) for k, v in next(iterate_batches(valid, 500)).items()}
    with torch.no_grad():
        logged, served = model(batch, logged=True), model(batch)
    terms = model.context_terms()
    assert isinstance(terms, ContextTerms)
    for task in ("ctr", "next"):
        columns = (batch[name].numpy() for name in ("position", "prev_cate", "cate", "repeats"))
        expected = np.array([terms.logit(task, int(s), p, c, r) for s, p, c, r in zip(*columns, strict=True)])
        np.testing.assert_allclose((logged[task] - served[task]).numpy(), expected, rtol=1e-5, atol=1e-5)


def _terms(rng, n_cates, n):
    return ContextTerms({t: rng.normal(0, 1, (n_cates, n_cates)) for t in ("ctr", "next")},
                        {t: np.concatenate([[0.0], rng.normal(0, 1, 3)]) for t in ("ctr", "next")},
                        {t: rng.normal(0, 0.3, n) for t in ("ctr", "next")})


def _value(cols, ctr, nxt, cates, terms):
    """The IPV of a list when every slot's click and scroll logits carry the terms of its prefix."""
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    exposure, total = 1.0, 0.0
    for slot, c in enumerate(cols):
        above = [cates[j] for j in cols[:slot]]
        prev, repeats = (above[-1] if above else 0), sum(a == cates[c] for a in above)
        p_click = sigmoid(logit(ctr[c]) + terms.logit("ctr", slot, np.array(prev), np.array(cates[c]),
                                                      np.array(repeats)))
        p_next = sigmoid(logit(nxt[c]) + terms.logit("next", slot, np.array(prev), np.array(cates[c]),
                                                     np.array(repeats)))
        total += exposure * p_click
        exposure *= p_next
    return total


def _beam(ctr, nxt, cates, n, k, terms):
    m = len(ctr)
    return beam_search(ctr[None], nxt[None], np.arange(1, m + 1)[None], cates[None], np.zeros((1, m), int),
                       np.ones((1, m), bool), n, k, IPV, BusinessRules(0), context=terms)


def test_a_wide_beam_finds_the_best_list_under_slot_terms_and_values_it_exactly():
    rng = np.random.default_rng(5)
    m, n = 6, 3
    ctr, nxt = rng.uniform(0.05, 0.6, m), rng.uniform(0.5, 0.95, m)
    cates = np.array([1, 1, 2, 2, 3, 1])
    terms = _terms(rng, 4, n)
    values = {p: _value(list(p), ctr, nxt, cates, terms) for p in permutations(range(m), n)}
    out = _beam(ctr, nxt, cates, n, 120, terms)
    assert np.isclose(out.value[0, 0], max(values.values()))
    for cols, value in zip(out.index[0], out.value[0], strict=True):
        assert np.isclose(value, values[tuple(cols)])
    plain = _beam(ctr, nxt, cates, n, 120, None)  # without the terms the best list is another one here
    assert values[tuple(plain.index[0, 0])] < max(values.values())


def test_zero_slot_terms_leave_the_beam_as_it_was():
    rng = np.random.default_rng(2)
    m, n = 8, 4
    ctr, nxt = rng.uniform(0.05, 0.6, m), rng.uniform(0.5, 0.95, m)
    cates = rng.integers(1, 4, m)
    zero = ContextTerms({t: np.zeros((4, 4)) for t in ("ctr", "next")}, {t: np.zeros(3) for t in ("ctr", "next")},
                        {t: np.zeros(n) for t in ("ctr", "next")})
    with_terms, without = _beam(ctr, nxt, cates, n, 5, zero), _beam(ctr, nxt, cates, n, 5, None)
    np.testing.assert_array_equal(with_terms.index, without.index)
    np.testing.assert_allclose(with_terms.value, without.value)


def test_the_evaluators_prior_is_the_teachers_logit_of_each_item_in_its_slot_of_the_list(models, store, logs):
    from relist.data.logs import logged_requests
    from relist.models.ranking.scoring import point_logits
    from relist.rerank.list_scorer import list_priors, teacher_prior

    requests, shown = logged_requests(logs, "test", 30)
    prior = teacher_prior(models.ranker)
    assert prior.slots is not None  # the tests' teacher learns slot terms, like the shipped one
    rows = np.arange(len(requests))
    got = list_priors(prior, store, requests, shown, rows)["prior_click"].numpy()
    own = np.take_along_axis(point_logits(models.ranker, store, requests)["ctr"], requests.columns_of(shown), 1)
    cates = store.item_features(shown)["cate"].numpy()
    prev, repeats = slot_context(cates)
    slot_terms = np.stack([prior.slots.logit("ctr", s, prev[:, s], cates[:, s], repeats[:, s])
                           for s in range(shown.shape[1])], 1)
    np.testing.assert_allclose(got, own + slot_terms, rtol=1e-5, atol=1e-5)
    assert np.abs(slot_terms).max() > 0  # trained: the terms are not all zero
    prior.slots = None  # a teacher without slot terms: the item's own logit
    np.testing.assert_allclose(list_priors(prior, store, requests, shown, rows)["prior_click"].numpy(), own,
                               rtol=1e-5, atol=1e-6)
