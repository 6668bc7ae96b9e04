"""PRM, DLCM and Seq2Slate: losses, training on logged lists, and their policies under the rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from relist.cli import commands_rerank_eval
from relist.data.logs import logged_requests, split_path
from relist.data.stream import ParquetStream
from relist.models.baselines.dlcm import _reversal
from relist.models.baselines.spec import load_baseline
from relist.rerank.baselines import Baseline
from relist.rerank.beam import greedy_under_rules
from relist.rerank.generators import Context
from relist.rerank.rules import BusinessRules, item_attributes
from relist.train.baselines import COLUMNS, listwise_loss, logged_initial_lists, pointer_loss, with_targets

KINDS = ("prm", "dlcm", "seq2slate")
RULES = BusinessRules(cate_window=2, max_per_shop=2)


def cli() -> typer.Typer:
    app, train_app, eval_app = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    commands_rerank_eval.register(app, train_app, eval_app)
    return app


@pytest.fixture(scope="module")
def trained(logs, tmp_path_factory):
    """Each baseline trained for one epoch through `relist train baseline` (tiny dims)."""
    out = tmp_path_factory.mktemp("baselines")
    config = out / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"kind": "prm", "dim": 8, "hidden": 8, "max_len": 64, "dropout": 0.0},
        "valid_lists": 100,
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.01, "max_steps_per_epoch": 12, "monitor": "ndcg10",
                  "monitor_mode": "max", "num_threads": 1},
    }))
    for kind in KINDS:
        args = ["train", "baseline", "--data", str(logs), "--out", str(out / kind), "--kind", kind]
        result = CliRunner().invoke(cli(), [*args, "--config", str(config)])
        assert result.exit_code == 0, result.output
    return out


def raw_batch(logs, split="valid", rows=64):
    return next(iter(ParquetStream(split_path(logs, split), COLUMNS, rows)))


def test_labels_are_the_clicks_of_shown_exposed_candidates_in_initial_order(logs, store):
    raw = raw_batch(logs)
    batch = logged_initial_lists(store, raw)
    scores = batch["score"].numpy()
    assert (np.diff(scores, axis=1) <= 0).all()  # upstream-score order
    assert batch["label_mask"].sum(1).tolist() == raw["exposed_len"].tolist()
    assert batch["labels"].sum().item() == sum(
        raw["click"][b, :raw["exposed_len"][b]].sum() for b in range(len(raw["click"])))
    assert set(batch["target"][batch["target_mask"]].tolist()) <= set(np.nonzero(batch["labels"].numpy())[1])


def test_listwise_loss_ignores_unlabelled_items_and_rewards_ranking_positives_first():
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    label_mask = torch.tensor([[True, True, True, False]])
    batch = with_targets({"mask": torch.ones(1, 4, dtype=torch.bool)}, labels, label_mask)
    good = listwise_loss({"score": torch.tensor([[5.0, 0.0, 0.0, 0.0]])}, batch)["loss"]
    same = listwise_loss({"score": torch.tensor([[5.0, 0.0, 0.0, 99.0]])}, batch)["loss"]
    bad = listwise_loss({"score": torch.tensor([[0.0, 5.0, 5.0, 0.0]])}, batch)["loss"]
    assert torch.isclose(good, same) and good < 0.02 and bad > 4


def test_pointer_loss_is_low_only_when_the_pointer_follows_the_ideal_order():
    labels = torch.tensor([[0.0, 2.0, 1.0, 0.0]])
    everything = torch.ones(1, 4, dtype=torch.bool)
    batch = with_targets({"mask": everything}, labels, everything)
    assert batch["target"][0].tolist() == [1, 2] and batch["target_mask"].all()
    # Step 1 targets the gains 3:1 of the two relevant items; step 2 the one left.
    follow = torch.tensor([[[-20.0, np.log(3.0), 0.0, -20.0], [-20.0, -1e9, 9.0, -20.0]]])
    against = torch.tensor([[[9.0, 0.0, 0.0, 0.0], [9.0, -1e9, 0.0, 0.0]]])
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert abs(pointer_loss({"pointer": follow}, batch)["loss"].item() - entropy / 2) < 0.01
    assert pointer_loss({"pointer": against}, batch)["loss"] > 5


def test_dlcm_reversal_reverses_real_entries_and_keeps_padding():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    order = _reversal(mask)
    assert order.tolist() == [[2, 1, 0, 3], [0, 1, 2, 3]]
    assert torch.equal(order.gather(1, order), torch.arange(4).expand(2, 4))


def test_training_beats_random_order_on_valid_clicks(trained):
    for kind in KINDS:
        log = (trained / kind / "train_log.csv").read_text().splitlines()
        header, last = log[0].split(","), log[-1].split(",")
        ndcg = float(last[header.index("val_ndcg10")])
        assert ndcg > 0.45, (kind, ndcg)  # a random order of the 50 candidates scores ~0.1 on these logs


def test_policies_serve_distinct_candidates_that_keep_the_rules(trained, logs, store):
    requests, _ = logged_requests(logs, "test", 40)
    for kind in KINDS:
        lists = Baseline(load_baseline(trained / kind)[0]).propose(requests, 10, Context(store, RULES))[:, 0]
        assert lists.shape == (40, 10)
        for row, cands in zip(lists, requests.candidates, strict=True):
            assert len(set(row.tolist())) == 10 and set(row.tolist()) <= set(cands.tolist())
        cates, shops = item_attributes(store, lists)
        assert RULES.check(cates, shops).all(), kind


def test_greedy_under_rules_is_a_sort_when_rules_allow_it(logs, store):
    requests, _ = logged_requests(logs, "test", 20)
    scores = requests.cand_scores.astype(np.float64)
    free = greedy_under_rules(scores, requests, 10, Context(store, BusinessRules(cate_window=0)))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(free, np.take_along_axis(requests.candidates, order, 1))
