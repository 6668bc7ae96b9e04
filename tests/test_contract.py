"""Every registered list model keeps the one model contract (relist.models.contract): predict, loss, decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_GENERATOR

from relist.data.logs import logged_requests, split_path
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.data.stream import ParquetStream
from relist.models.baselines.inputs import BaselineConfig
from relist.models.contract import ListGenerator
from relist.models.evaluator import DCWNConfig
from relist.models.registry import LIST_MODELS
from relist.models.vocab import Vocab
from relist.rerank.list_scorer import ListScorer
from relist.train import baselines, evaluator
from relist.train.generator import GeneratorTrainConfig, SampledGRN, request_inputs


def padded(raw: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``raw`` lists with their candidates cut to random lengths (the rest padding)."""
    rows, width = raw["candidates"].shape
    keep = np.arange(width)[None] < rng.integers(3, width, rows)[:, None]
    return raw | {"candidates": np.where(keep, raw["candidates"], PAD_ID), "candidates_mask": keep}


def example(name: str, logs, store, request) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A small untrained model of every registered name and a labelled batch of what it reads."""
    torch.manual_seed(0)
    vocab = Vocab.of(store)
    if name == "generator":  # the GRN as it is trained: sampled lists, each pick paid by a (tiny) evaluator
        trained = request.getfixturevalue("models_dir")
        scorer = ListScorer.load(trained / "evaluator", store, trained / "ranker")
        cfg = GeneratorTrainConfig(model=TINY_GENERATOR, samples=4)
        requests, _ = logged_requests(logs, "valid", 8)
        keep = padded({"candidates": requests.candidates}, np.random.default_rng(1))["candidates_mask"]
        requests = Requests(requests.request_id, requests.user_id, np.where(keep, requests.candidates, PAD_ID),
                            requests.cand_scores, keep)
        return SampledGRN(vocab, cfg, scorer), request_inputs(store, requests, cfg.rules.build(), 10, None)
    if name == "evaluator":
        raw = next(iter(ParquetStream(split_path(logs, "train"), evaluator.LABELS, 8)))
        cfg = DCWNConfig(dim=8, hidden=8, members=2, prior=False, dropout=0.0)
        return LIST_MODELS[name](vocab, cfg), evaluator.labelled_batch(store, raw, cfg.members)
    if name in ("prm", "dlcm", "seq2slate"):
        raw = next(iter(ParquetStream(split_path(logs, "valid"), baselines.COLUMNS, 8)))
        batch = baselines.logged_initial_lists(store, padded(raw, np.random.default_rng(1)))
        return LIST_MODELS[name](vocab, BaselineConfig(kind=name, dim=8, hidden=8, dropout=0.0)), batch
    raise AssertionError(f"list model {name!r} is registered but has no example here: add one")


@pytest.mark.parametrize("name", sorted(LIST_MODELS))
def test_predict_gives_named_logits_and_loss_a_scalar_total_that_backpropagates(name, logs, store, request):
    model, batch = example(name, logs, store, request)
    out = model.predict(batch)
    assert isinstance(out, dict) and out and all(isinstance(value, torch.Tensor) for value in out.values())
    terms = model.loss(out, batch)
    assert isinstance(terms, dict) and "loss" in terms
    assert all(value.dim() == 0 and torch.isfinite(value) for value in terms.values()), terms
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(name for name, cls in LIST_MODELS.items() if issubclass(cls, ListGenerator)))
def test_decode_picks_only_real_unchosen_candidates_the_hook_allows(name, logs, store, request):
    model, batch = example(name, logs, store, request)
    model.eval()
    mask = batch["mask"]
    assert (~mask).any()  # some padding to avoid
    rng = torch.Generator().manual_seed(2)
    allowed_at: list[torch.Tensor] = []

    def allowed_fn(rows, prefix, chosen, slot):
        assert prefix.shape == (len(rows), slot) and chosen.shape == mask.shape
        allowed = torch.rand(mask.shape, generator=rng) < 0.5
        allowed[0] = slot % 3 != 2  # row 0: every third slot nothing is allowed
        allowed_at.append(allowed)
        return allowed

    n = mask.shape[1]
    with torch.no_grad():
        columns = model.decode(batch, n, allowed_fn)
    assert columns.shape == (len(mask), n) and columns.dtype == torch.long
    chosen = torch.zeros_like(mask)
    for slot in range(n):
        col = columns[:, slot]
        free = mask & ~chosen & allowed_at[slot]
        live = col >= 0
        assert torch.equal(live, free.any(1)), slot  # -1 exactly where nothing is allowed
        rows = torch.nonzero(live).squeeze(1)
        assert free[rows, col[rows]].all(), slot  # never padding, a repeat or a candidate the hook forbids
        chosen[rows, col[rows]] = True
    assert (columns[0, 2::3] == -1).all()
