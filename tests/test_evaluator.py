"""DCWN evaluator ensemble, its training on the real-exposure mask, and the ListScorer built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer
import yaml
from conftest import TINY_EVALUATOR
from typer.testing import CliRunner

from relist.cli import commands_rerank_train
from relist.data.logs import logged_requests
from relist.data.stream import ParquetStream
from relist.models.evaluator import Evaluator, exposure, load_evaluator
from relist.models.inputs import list_inputs
from relist.models.vocab import Vocab
from relist.objective import Objective
from relist.rerank.list_scorer import ListScorer, distinct_lists, pessimistic
from relist.train.evaluator import LABELS, bootstrap_weights, labelled_batch

FREE = TINY_EVALUATOR.model_copy(update={"prior": False})


def rerank_train_cli() -> typer.Typer:
    """The commands of relist.cli.commands_rerank_train on their own app (as relist.cli registers them)."""
    app, train_app, eval_app = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    commands_rerank_train.register(app, train_app, eval_app)
    return app


@pytest.fixture(scope="module")
def trained_free(logs, tmp_path_factory):
    """A tiny evaluator without the teacher's prior, trained through the CLI command (2 epochs)."""
    out = tmp_path_factory.mktemp("dcwn")
    config = out / "cfg.yaml"
    config.write_text(yaml.safe_dump({"model": FREE.model_dump(), "train": {
        "epochs": 2, "batch_size": 64, "lr": 0.01, "monitor": "click_logloss", "monitor_mode": "min",
        "num_threads": 1}}))
    result = CliRunner().invoke(
        rerank_train_cli(),
        ["train", "evaluator", "--data", str(logs), "--out", str(out / "run"), "--config", str(config)],
    )
    assert result.exit_code == 0, result.output
    return out / "run"


def some_lists(logs, k=32):
    requests, shown = logged_requests(logs, "test", k)
    return requests, shown.copy()


def test_context_changes_other_positions_only_with_context(store, logs):
    torch.manual_seed(0)
    requests, shown = some_lists(logs, 8)
    swapped = shown.copy()
    swapped[:, 5] = shown[:, 9]  # position 5 gets another item; positions 0..4 keep theirs
    for context in (True, False):
        model = Evaluator(Vocab.of(store), FREE.model_copy(update={"context": context})).eval()
        with torch.no_grad():
            before = model(list_inputs(store, requests, shown))["click"]
            after = model(list_inputs(store, requests, swapped))["click"]
        moved = (before[:, :, :5] - after[:, :, :5]).abs().max().item()
        assert (moved > 1e-4) if context else (moved < 1e-6)


def test_outputs_are_member_logits_and_padding_is_finite(store, logs):
    requests, shown = some_lists(logs, 4)
    shown[0, 6:] = 0
    shown[1, :] = 0  # a list with no real item at all
    model = Evaluator(Vocab.of(store), FREE)
    out = model(list_inputs(store, requests, shown))
    assert set(out) == {"click", "next", "buy"}
    assert out["click"].shape == (FREE.members, *shown.shape)
    assert all(torch.isfinite(value).all() for value in out.values())


def raw_train_lists(logs, k=64):
    return next(iter(ParquetStream(logs / "lists" / "train", LABELS, k)))


def test_loss_sees_only_exposed_positions(store, logs):
    model = Evaluator(Vocab.of(store), FREE).eval()
    loss_fn = model.loss
    base = labelled_batch(store, raw_train_lists(logs), FREE.members)
    outputs = model(base)
    unseen = ~base["exposed"]
    assert unseen.any() and base["exposed"].any()
    flipped_unseen = dict(base, click=torch.where(unseen, 1 - base["click"], base["click"]))
    flipped_seen = dict(base, click=torch.where(~unseen, 1 - base["click"], base["click"]))
    loss = loss_fn(outputs, base)["loss"]
    assert loss_fn(outputs, flipped_unseen)["loss"] == loss
    assert loss_fn(outputs, flipped_seen)["loss"] != loss


def test_bootstrap_weights_are_a_stable_poisson_resample_per_member():
    ids = np.arange(20_000)
    weights = bootstrap_weights(ids, 3, seed=1)
    assert weights.shape == (3, len(ids))
    np.testing.assert_array_equal(weights, bootstrap_weights(ids, 3, seed=1))  # every epoch and rank agree
    assert abs(weights.mean() - 1.0) < 0.03 and abs(weights.var() - 1.0) < 0.05  # Poisson(1)
    assert abs((weights == 0).mean() - np.exp(-1)) < 0.02
    assert not np.array_equal(weights[0], weights[1])  # members see different resamples
    np.testing.assert_array_equal(bootstrap_weights(ids, 1, seed=1), np.ones((1, len(ids))))


def test_training_learns_clicks_and_writes_a_loadable_run(trained_free):
    _, spec = load_evaluator(trained_free)
    log = (trained_free / "train_log.csv").read_text().splitlines()
    header, last = log[0].split(","), log[-1].split(",")
    assert float(last[header.index("val_click_auc")]) > 0.6
    assert (trained_free / "evaluator.yaml").is_file() and (trained_free / "evaluator_train.yaml").is_file()
    assert spec.model == FREE


def test_an_evaluator_with_a_prior_needs_its_own_ranker(models_dir, store, tmp_path):
    with pytest.raises(ValueError, match="needs the ranker"):
        ListScorer.load(models_dir / "evaluator", store)
    other = tmp_path / "ranker"
    other.mkdir()
    for file in (models_dir / "ranker").iterdir():
        if file.is_file():
            other.joinpath(file.name).write_bytes(file.read_bytes())
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # other weights, same format
    with pytest.raises(ValueError, match="another ranker"):
        ListScorer.load(models_dir / "evaluator", store, other)


def test_values_sum_positions_as_the_objective_says(models, logs):
    scorer = models.evaluator
    requests, shown = some_lists(logs)
    shown[0, 7:] = 0
    terms = scorer.terms(requests, shown)  # [E, B, n, 4]: exposure, clicks, buys, spend
    assert terms.shape == (scorer.members, len(shown), 10, 4)
    assert (terms[:, 0, 7:] == 0).all()
    exposure_ = terms[..., 0]
    assert np.allclose(exposure_[:, :, 0], 1.0) and (np.diff(exposure_[:, 1], axis=-1) <= 1e-6).all()
    np.testing.assert_allclose(scorer.values(requests, shown), terms[..., 1].sum(-1), rtol=1e-5)
    mix = Objective.of({"ipv": 1.0, "gmv": 0.5})
    np.testing.assert_allclose(scorer.values(requests, shown, mix), terms[..., 1].sum(-1) + 0.5 * terms[..., 3].sum(-1),
                               rtol=1e-5)
    weights = np.tile(mix.vector(), (len(shown), 1))
    weights[1] = Objective.of("pv").vector()
    per_request = scorer.values(requests, shown, weights)
    np.testing.assert_allclose(per_request[:, 1], exposure_[:, 1].sum(-1), rtol=1e-5)


def test_exposure_is_the_product_of_earlier_scroll_probabilities():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    p = torch.sigmoid(logits)
    np.testing.assert_allclose(exposure(logits)[0, 0].numpy(), [1.0, p[0, 0, 0], p[0, 0, 0] * p[0, 0, 1]], rtol=1e-6)


def test_scorer_is_type_preserving_and_batch_invariant(models, logs):
    requests, shown = some_lists(logs)
    scorer = models.evaluator
    whole = scorer.list_reward(requests, shown)
    chunked = ListScorer(scorer.model, scorer.store, True, batch_size=5, prior=scorer.prior).list_reward(
        requests, torch.tensor(shown))
    assert isinstance(whole, np.ndarray) and isinstance(chunked, torch.Tensor)
    np.testing.assert_allclose(whole, chunked.numpy(), rtol=1e-5)
    proposals = np.stack([shown, shown[:, ::-1]], 1)  # K lists per request score like one list each
    np.testing.assert_allclose(scorer.list_reward(requests, proposals)[:, 1],
                               scorer.list_reward(requests, shown[:, ::-1]), rtol=1e-5)


def test_a_list_proposed_twice_is_scored_once_and_valued_as_alone(models, logs):
    requests, shown = some_lists(logs)
    scorer = models.evaluator
    other = shown[:, ::-1]
    proposals = np.stack([shown, other, shown, other, shown], 1)  # each list thrice or twice per request
    proposals[1, 2] = shown[0]  # a list of another request is not this request's copy of it
    first, copies = distinct_lists(proposals.reshape(-1, 10), np.repeat(np.arange(len(shown)), 5))
    assert len(first) == 2 * len(shown) + int((shown[0] != shown[1]).any())
    np.testing.assert_array_equal(proposals.reshape(-1, 10)[first][copies], proposals.reshape(-1, 10))
    values = scorer.values(requests, proposals)
    for k, lists in enumerate(proposals.transpose(1, 0, 2)):
        np.testing.assert_allclose(values[:, :, k], scorer.values(requests, lists), rtol=1e-5)
    tensor = scorer.values(requests, torch.tensor(proposals))
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), values, rtol=1e-5)


def test_spread_is_zero_for_equal_members_and_pessimism_lowers_only_where_members_disagree(models, logs, store):
    """Whether the spread grows away from the logs is a property of a trained ensemble, measured by the
    evaluator-validity instrument in the rerank study; here: the mechanism."""
    requests, shown = some_lists(logs, 64)
    scorer = models.evaluator
    same = Evaluator(scorer.model.vocab, scorer.model.cfg)
    state = scorer.model.members[0].state_dict()
    for member in same.members:
        member.load_state_dict(state)
    twins = ListScorer(same, store, prior=scorer.prior)
    values = twins.values(requests, shown)
    assert np.allclose(values.std(0), 0.0)
    np.testing.assert_allclose(pessimistic(values, 2.0), values.mean(0), atol=1e-6)
    rng = np.random.default_rng(0)
    far = np.stack([rng.permutation(c[m])[:10] for c, m in zip(requests.candidates, requests.mask, strict=True)])
    values = scorer.values(requests, np.stack([shown, far], 1))  # bootstrap members: trained apart
    spread = values.std(0, ddof=1)
    assert (spread > 1e-4).mean() > 0.9
    np.testing.assert_allclose(values.mean(0) - pessimistic(values, 1.0), spread, rtol=1e-4, atol=1e-6)
