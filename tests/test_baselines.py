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
from relist.eval.metrics import ndcg_of_order
from relist.models.baselines.dlcm import _reversal
from relist.models.baselines.inputs import BaselineConfig, initial_order, position_features
from relist.models.baselines.scorer import listwise_loss
from relist.models.baselines.seq2slate import pointer_loss
from relist.models.baselines.spec import BaselineSpec, build_baseline, load_baseline
from relist.rerank.baselines import Baseline
from relist.rerank.beam import greedy_under_rules
from relist.rerank.generators import Context
from relist.rerank.rules import BusinessRules, item_attributes
from relist.train.baselines import (
    COLUMNS,
    BaselineTrainConfig,
    StepSchedule,
    dense_batch,
    fit_baseline,
    logged_initial_lists,
    ranking_scores,
    step_rounds,
    with_targets,
)

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
        "model": {"kind": "prm", "dim": 8, "hidden": 8, "dropout": 0.0},
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
    labels = batch["labels"].numpy()
    for row, target in enumerate(batch["target"].numpy()):  # positives first, then the rest in initial order
        k, labelled = int(batch["positives"][row]), int(batch["label_mask"][row].sum())
        assert (labels[row, target[:k]] > 0).all() and (labels[row, target[k:labelled]] == 0).all()
        assert (np.diff(target[k:labelled]) > 0).all()


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
    assert batch["target"][0].tolist() == [1, 2, 0, 3] and batch["target_mask"].all()
    # Step 1 targets the gains 3:1 of the two relevant items; step 2 the one left; steps 3-4 (no positive
    # left) the initial order of the rest.
    follow = torch.tensor([[[-20.0, np.log(3.0), 0.0, -20.0], [-20.0, -1e9, 9.0, -20.0],
                            [9.0, -1e9, -1e9, -20.0], [-1e9, -1e9, -1e9, 9.0]]])
    against = torch.tensor([[[9.0, 0.0, 0.0, 0.0], [9.0, -1e9, 0.0, 0.0], [-20.0, -1e9, -1e9, 9.0],
                             [-1e9, -1e9, -1e9, 9.0]]])
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert abs(pointer_loss({"pointer": follow}, batch)["loss"].item() - entropy / 4) < 0.01
    assert pointer_loss({"pointer": against}, batch)["loss"] > 5


def test_pointer_loss_tail_steps_teach_the_initial_order_after_the_positives():
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    everything = torch.ones(1, 4, dtype=torch.bool)
    batch = with_targets({"mask": everything}, labels, everything)
    placed_positive = torch.tensor([[[-9.0, 9.0, -9.0, -9.0]]]).expand(1, 4, 4).clone()
    in_order, reversed_ = placed_positive.clone(), placed_positive.clone()
    for t, (good, bad) in enumerate([(0, 3), (2, 3), (3, 0)], start=1):
        in_order[0, t, good], reversed_[0, t, bad] = 9.0, 9.0
    assert pointer_loss({"pointer": in_order}, batch)["loss"] < pointer_loss({"pointer": reversed_}, batch)["loss"]


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


@pytest.mark.parametrize("kind", ["prm", "dlcm"])
def test_item_scorers_fill_in_numpy_the_lists_their_slot_loop_decodes(kind, trained, logs, store):
    requests, _ = logged_requests(logs, "test", 40)
    rng = np.random.default_rng(0)  # request-given categories and shops, few of them: the rules bite and relax
    ctx = Context(store, RULES, cates=rng.integers(1, 4, requests.candidates.shape),
                  shops=rng.integers(1, 6, requests.candidates.shape))
    model = load_baseline(trained / kind)[0]
    assert model.prefix_free
    fast = Baseline(model).propose(requests, 10, ctx)
    model.prefix_free = False  # this instance decodes through the contract's slot loop under the rules hook
    assert np.array_equal(fast, Baseline(model).propose(requests, 10, ctx))


def test_greedy_under_rules_is_a_sort_when_rules_allow_it(logs, store):
    requests, _ = logged_requests(logs, "test", 20)
    scores = requests.cand_scores.astype(np.float64)
    free = greedy_under_rules(scores, requests, 10, Context(store, BusinessRules(cate_window=0)))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(free, np.take_along_axis(requests.candidates, order, 1))


# --- dense lists (LETOR-style): learning, positions of any length, step schedule --------------------------

def learnable_lists(n: int, seed: int, length: int = 16) -> dict[str, np.ndarray]:
    """Lists whose graded relevance is a step function of feature 0; the initial order knows nothing."""
    rng = np.random.default_rng(seed)
    mask = np.arange(length)[None] < rng.integers(5, length + 1, n)[:, None]
    dense = rng.random((n, length, 4)).astype(np.float32) * mask[..., None]
    labels = (np.where(dense[..., 0] > 0.85, 2.0, 0.0) + (dense[..., 0] > 0.6)).astype(np.float32) * mask
    candidates = np.where(mask, np.arange(1, n * length + 1).reshape(n, length), 0)
    return {"candidates": candidates, "dense": dense, "labels": labels, "mask": mask}


def mean_ndcg(lists, order):
    return float(np.nanmean(ndcg_of_order(lists["labels"], order, lists["mask"], 10)))


@pytest.mark.parametrize("kind", KINDS)
def test_dense_rerankers_beat_a_random_order_on_a_learnable_case(kind, tmp_path):
    train, valid = learnable_lists(300, 0), learnable_lists(120, 1)
    zeros = {name: np.zeros(lists["mask"].shape, np.float32) for name, lists in (("t", train), ("v", valid))}
    valid_batch = dense_batch(valid, zeros["v"])
    schedule = StepSchedule(batch_size=16, max_steps=200, eval_every=50, patience=4, lr=3e-3)
    cfg = BaselineTrainConfig(model=BaselineConfig(kind=kind, n_dense=4, dim=8, hidden=16, dropout=0.0),
                              train=schedule.train_config(0))
    batches = step_rounds(300, schedule, lambda rows: dense_batch(train, zeros["t"], rows), 0)
    model, result = fit_baseline(cfg, None, batches, valid_batch, tmp_path / kind)
    learned = mean_ndcg(valid, initial_order(ranking_scores(model, valid_batch).numpy(), valid["mask"]))
    rng = np.random.default_rng(2)
    random = np.mean([mean_ndcg(valid, initial_order(rng.random(valid["mask"].shape), valid["mask"]))
                      for _ in range(5)])
    assert learned > random + 0.25, (kind, learned, random)
    assert result.epochs <= 4  # four rounds of 50 steps, whatever the data size


@pytest.mark.parametrize("kind", KINDS)
def test_residual_rerankers_start_from_the_initial_order_and_take_lists_of_any_length(kind):
    torch.manual_seed(0)
    cfg = BaselineConfig(kind=kind, n_dense=4, dim=8, hidden=8, residual=True)
    model = build_baseline(BaselineSpec(vocab=None, model=cfg)).eval()
    lists = learnable_lists(3, 3, length=500)  # far longer than any list these models were built for
    scores = np.where(lists["mask"], -np.arange(500, dtype=np.float32)[None], 0.0).astype(np.float32)
    batch = dense_batch(lists, scores)
    width = batch["mask"].shape[1]  # the batch stops at its longest list
    assert width > 128
    order = initial_order(ranking_scores(model, batch).numpy(), lists["mask"][:, :width])
    np.testing.assert_array_equal(order, initial_order(scores[:, :width], lists["mask"][:, :width]))
    assert torch.isfinite(position_features(10_000)).all()


def test_step_rounds_continue_across_rounds_and_cover_every_row_per_pass():
    schedule = StepSchedule(batch_size=4, eval_every=3, max_steps=30)
    batches = step_rounds(10, schedule, lambda rows: {"rows": rows}, seed=5)
    drawn = np.concatenate([b["rows"] for r in range(3) for b in batches(r, 0, 1)])  # 36 rows: 3.6 passes
    assert [sorted(drawn[i:i + 10].tolist()) for i in (0, 10, 20)] == [list(range(10))] * 3
    again = np.concatenate([b["rows"] for b in batches(1, 0, 1)])
    np.testing.assert_array_equal(again, drawn[12:24])  # a round is a function of its number (exact resume)
    cfg = schedule.train_config(seed=0)
    assert (cfg.epochs, cfg.max_steps_per_epoch, cfg.monitor) == (10, 3, "ndcg10")
