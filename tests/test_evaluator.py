"""DCWN evaluator, its training on the real-exposure mask, and the ListScorer built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from relist.cli import commands_rerank_train
from relist.data.logs import logged_requests, read_lists
from relist.eval.metrics import list_reward as metrics_list_reward
from relist.models.evaluator import DCWN, DCWNConfig, exposure, list_features, load_evaluator
from relist.models.vocab import Vocab
from relist.rerank.list_scorer import ListScorer
from relist.train.evaluator import evaluator_loss, labelled_batch

TINY = DCWNConfig(dim=8, hidden=8, heads=2, dropout=0.0)


@pytest.fixture(scope="module")
def trained(logs, tmp_path_factory):
    """One tiny evaluator trained through the CLI command (2 epochs on ~1.6k lists)."""
    out = tmp_path_factory.mktemp("dcwn")
    config = out / "cfg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": TINY.model_dump(),
                "train": {
                    "epochs": 2,
                    "batch_size": 64,
                    "lr": 0.01,
                    "monitor": "click_logloss",
                    "monitor_mode": "min",
                    "num_threads": 1,
                },
            }
        )
    )
    result = CliRunner().invoke(
        rerank_train_cli(),
        ["train", "evaluator", "--data", str(logs), "--out", str(out / "run"), "--config", str(config)],
    )
    assert result.exit_code == 0, result.output
    return out / "run"


def rerank_train_cli() -> typer.Typer:
    """The commands of relist.cli.commands_rerank_train on their own app (as relist.cli registers them)."""
    app, train_app, eval_app = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    commands_rerank_train.register(app, train_app, eval_app)
    return app


def some_lists(logs, k=32):
    requests, shown = logged_requests(logs, "test", k)
    return requests.user_id, shown.copy()


def test_context_changes_other_positions_only_with_context(store, logs):
    torch.manual_seed(0)
    users, shown = some_lists(logs, 8)
    swapped = shown.copy()
    swapped[:, 5] = shown[:, 9]  # position 5 gets another item; positions 0..4 keep theirs
    for context in (True, False):
        model = DCWN(Vocab.of(store), TINY.model_copy(update={"context": context})).eval()
        with torch.no_grad():
            before = model(list_features(store, users, shown))["click"]
            after = model(list_features(store, users, swapped))["click"]
        moved = (before[:, :5] - after[:, :5]).abs().max().item()
        assert (moved > 1e-4) if context else (moved < 1e-6)


def test_outputs_are_logits_and_padding_is_finite(store, logs):
    users, shown = some_lists(logs, 4)
    shown[0, 6:] = 0
    shown[1, :] = 0  # a list with no real item at all
    model = DCWN(Vocab.of(store), TINY)
    out = model(list_features(store, users, shown))
    assert set(out) == {"click", "next"} and out["click"].shape == shown.shape
    assert torch.isfinite(out["click"]).all() and torch.isfinite(out["next"]).all()


def test_loss_sees_only_exposed_positions(store, logs):
    table = read_lists(logs, "train", 64)
    raw = {
        name: np.asarray(table.column(name).to_pylist())
        for name in ("user_id", "shown", "click", "next", "exposed_len")
    }
    model = DCWN(Vocab.of(store), TINY).eval()
    loss_fn = evaluator_loss(0.5)
    base = labelled_batch(store, raw)
    outputs = model(base)
    unseen = ~base["exposed"]
    assert unseen.any() and base["exposed"].any()
    flipped_unseen = dict(base, click=torch.where(unseen, 1 - base["click"], base["click"]))
    flipped_seen = dict(base, click=torch.where(~unseen, 1 - base["click"], base["click"]))
    loss = loss_fn(outputs, base)["loss"]
    assert loss_fn(outputs, flipped_unseen)["loss"] == loss
    assert loss_fn(outputs, flipped_seen)["loss"] != loss


def test_training_learns_clicks_and_writes_a_loadable_run(trained):
    model, spec = load_evaluator(trained)
    log = (trained / "train_log.csv").read_text().splitlines()
    header, last = log[0].split(","), log[-1].split(",")
    assert float(last[header.index("val_click_auc")]) > 0.6
    assert (trained / "evaluator.yaml").is_file() and (trained / "evaluator_train.yaml").is_file()
    assert spec.model == TINY


def test_list_reward_matches_the_shared_metric(trained, store, logs):
    users, shown = some_lists(logs)
    shown[0, 7:] = 0
    for weighted in (False, True):
        scorer = ListScorer.load(trained, store, exposure_weighted=weighted)
        p = scorer.per_position(users, shown)
        with torch.no_grad():
            next_logits = scorer.model(list_features(store, users, shown))["next"]
        expected = metrics_list_reward(p, shown != 0, exposure(next_logits).numpy() if weighted else None)
        np.testing.assert_allclose(scorer.list_reward(users, shown), expected, rtol=1e-5)
        assert (p[0, 7:] == 0).all() and ((p > 0) & (p < 1))[:, :7].all()


def test_scorer_is_type_preserving_and_batch_invariant(trained, store, logs):
    users, shown = some_lists(logs)
    whole = ListScorer.load(trained, store, exposure_weighted=True).list_reward(users, shown)
    chunked = ListScorer(load_evaluator(trained)[0], store, True, batch_size=5).list_reward(
        torch.tensor(users), torch.tensor(shown)
    )
    assert isinstance(whole, np.ndarray) and isinstance(chunked, torch.Tensor)
    np.testing.assert_allclose(whole, chunked.numpy(), rtol=1e-5)


def test_best_of_picks_the_highest_lr(trained, store, logs):
    scorer = ListScorer.load(trained, store)
    requests, shown = logged_requests(logs, "test", 16)
    rng = np.random.default_rng(0)
    proposals = np.stack(
        [shown, shown[:, ::-1], np.take_along_axis(shown, rng.random(shown.shape).argsort(1), 1)], 1
    )
    best, reward = scorer.best_of(requests.user_id, proposals)
    assert reward.shape == (16, 3)
    np.testing.assert_allclose(scorer.list_reward(requests.user_id, best), reward.max(1), rtol=1e-5)
    assert np.all([(b == p).all(1).any() for b, p in zip(best, proposals, strict=True)])
