"""List ranking: every distinct proposal scored in one batch, the highest LR served, rules first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests
from relist.models.evaluator import DCWN, DCWNConfig
from relist.models.vocab import Vocab
from relist.rerank.list_ranking import ListRanking, duplicates
from relist.rerank.list_scorer import ListScorer
from relist.rerank.policy import random_order, upstream_order
from relist.rerank.rules import BusinessRules, item_attributes
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate_logs(build_world(load_sim_config()), out, 300, 0.1, 0.2, progress=False)
    store = FeatureStore.from_dir(out)
    torch.manual_seed(0)
    scorer = ListScorer(DCWN(Vocab.of(store), DCWNConfig(dim=8, hidden=8, dropout=0.0)), store)
    requests, _ = logged_requests(out, "test", 30)
    return store, scorer, requests


class CountingScorer:
    """A ListScorer that records how many lists each call scores."""

    def __init__(self, scorer):
        self.scorer, self.calls = scorer, []

    def list_reward(self, users, lists):
        self.calls.append(len(lists))
        return self.scorer.list_reward(users, lists)


def test_serves_the_highest_reward_proposal_and_names_its_generator(setup):
    store, scorer, requests = setup
    generators = {"upstream": upstream_order, "random": random_order(1), "again": upstream_order,
                  "several": lambda r, n: np.stack([random_order(s)(r, n) for s in (2, 3, 4)], 1)}
    counting = CountingScorer(scorer)
    ranked = ListRanking(generators, counting, store).rank(requests, 10)
    all_lists = [upstream_order(requests, 10), random_order(1)(requests, 10)]
    all_lists += [random_order(s)(requests, 10) for s in (2, 3, 4)]
    rewards = np.stack([scorer.list_reward(requests.user_id, lists) for lists in all_lists], 1)
    np.testing.assert_allclose(ranked.reward, rewards.max(1), rtol=1e-5)
    best = rewards.argmax(1)
    np.testing.assert_array_equal(ranked.lists, np.stack(all_lists, 1)[np.arange(len(best)), best])
    expected = np.array(["upstream", "random", "several", "several", "several"])[best]
    np.testing.assert_array_equal(ranked.source_names(), expected)  # duplicates credit the first generator
    assert counting.calls == [5 * len(requests)]  # one batch, the duplicate "again" list not scored


def test_rule_breaking_lists_lose_to_any_list_that_keeps_the_rules(setup):
    store, scorer, requests = setup
    rules = BusinessRules(cate_window=2)
    cates, _ = item_attributes(store, requests.candidates)
    # A list that repeats one category back to back in every request (when the request has such a pair).
    breaking = []
    for row, c in zip(requests.candidates, cates.numpy(), strict=True):
        order = np.argsort(c, kind="stable")
        breaking.append(row[order][:10])
    breaking = np.stack(breaking)
    ranked = ListRanking({"breaking": lambda r, n: breaking, "upstream": upstream_order}, scorer, store,
                         rules).rank(requests, 10)
    list_cates, list_shops = item_attributes(store, ranked.lists)
    keeps = rules.check(list_cates, list_shops).numpy()
    upstream_keeps = rules.check(*item_attributes(store, upstream_order(requests, 10))).numpy()
    assert (keeps | ranked.breaks_rules).all()
    np.testing.assert_array_equal(ranked.breaks_rules, ~upstream_keeps & ~keeps)


def test_duplicates_keep_the_first_copy():
    lists = np.array([[[1, 2], [2, 1], [1, 2], [2, 1], [3, 4]]])
    assert duplicates(lists).tolist() == [[False, False, True, True, False]]
