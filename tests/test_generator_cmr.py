"""The GRN conditioned on the objective weights (CMR): its input, its training with weights drawn per batch, and
the registered generator ``grn_cmr`` that reads each request's weights."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from relist.data.logs import logged_requests
from relist.io.config import ConfigError
from relist.io.train_config import TrainConfig
from relist.models.generator import GRN, GRNConfig, load_generator
from relist.models.inputs import list_inputs
from relist.models.vocab import Vocab
from relist.objective import Objective
from relist.rerank.generators import Context
from relist.rerank.grn import request_batch, rules_hook
from relist.rerank.list_scorer import ListScorer
from relist.rerank.registry import GENERATORS, RerankConfig, load_role
from relist.rerank.rules import BusinessRules, RulesConfig
from relist.train.generator import (
    GeneratorTrainConfig,
    ObjectiveDraws,
    reference_generator,
    request_batches,
    requests_of,
    train_generator,
)

PLAIN = GRNConfig(dim=8, hidden=16, heads=2)
CMR = GRNConfig(dim=8, hidden=16, heads=2, conditioned=True, objective_scale=(5.0, 0.5, 0.05, 2.5))
IPV, GMV = np.array([0.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.02])


def batch_of(logs, store, weights=None, k=8):
    requests, _ = logged_requests(logs, "test", k)
    batch = list_inputs(store, requests)
    if weights is not None:
        batch["objective"] = torch.tensor(np.tile(weights, (k, 1)), dtype=torch.float32)
    return batch


def test_conditioned_grn_reads_the_weights_as_shares_of_a_typical_lists_value(logs, store):
    torch.manual_seed(0)
    model = GRN(Vocab.of(store), CMR).eval()
    with torch.no_grad():
        ipv, gmv = (model.encode(batch_of(logs, store, w)) for w in (IPV, GMV))
        scaled = model.encode(batch_of(logs, store, 7.0 * GMV))
        shares = model.objective.shares(batch_of(logs, store, np.array([0.0, 1.0, 0.0, 0.2])))
    assert not torch.allclose(ipv.state, gmv.state) and not torch.allclose(ipv.candidates, gmv.candidates)
    torch.testing.assert_close(scaled.state, gmv.state)  # a constant factor changes no list's rank, nor the input
    torch.testing.assert_close(shares[0], torch.tensor([0.0, 0.5, 0.0, 0.5]))  # 1 x 0.5 ipv vs 0.2 x 2.5 gmv


def test_unconditioned_grn_is_unchanged_and_ignores_weights(logs, store):
    torch.manual_seed(0)
    plain = GRN(Vocab.of(store), PLAIN).eval()
    torch.manual_seed(0)
    conditioned = GRN(Vocab.of(store), CMR)
    own = plain.state_dict()
    assert not any(name.startswith("objective") for name in own)
    for name, tensor in conditioned.state_dict().items():  # the objective input is created last: same draws
        if not name.startswith("objective"):
            torch.testing.assert_close(tensor, own[name], rtol=0, atol=0)
    batch = batch_of(logs, store)
    with torch.no_grad():
        out = plain(batch, greedy=True)
        weighted = plain(batch | {"objective": torch.tensor(np.tile(GMV, (8, 1)))}, greedy=True)
    assert torch.equal(out["choice"], weighted["choice"]) and torch.equal(out["logp"], weighted["logp"])


@pytest.mark.parametrize("weights, message", [
    (None, "needs 'objective'"),
    (np.zeros((8, 3)), r"must be \[8, 4\]"),
    (np.array([[0.0, 1.0, 0.0, 0.0]] * 7 + [[0.0] * 4]), r"rows \[7\] are all zero"),
    (np.array([[np.nan, 1.0, 0.0, 0.0]] * 8), "not finite"),
])
def test_bad_weights_are_refused_naming_what_is_wrong(logs, store, weights, message):
    model = GRN(Vocab.of(store), CMR)
    batch = batch_of(logs, store)
    if weights is not None:
        batch["objective"] = torch.tensor(weights)
    with pytest.raises(ValueError, match=message):
        model.encode(batch)


def test_draws_are_a_pure_function_of_seed_epoch_and_step():
    line = ObjectiveDraws(price_scaled=True)
    first = line.draw(0, 2, 5, price=50.0)
    np.testing.assert_array_equal(first, line.draw(0, 2, 5, price=50.0))
    others = [line.draw(*key, price=50.0) for key in ((1, 2, 5), (0, 3, 5), (0, 2, 6), (0, 2, 5, 1))]
    assert all(not np.array_equal(first, other) for other in others)
    t = 1 - first[1]  # on the line from {ipv: 1} to {gmv: 1 / price}
    assert 0 <= t <= 1 and first[3] == pytest.approx(t / 50.0) and first[0] == first[2] == 0
    np.testing.assert_allclose(line.valid_weights(50.0), [[0, 1, 0, 0], [0, 0.5, 0, 0.01], [0, 0, 0, 0.02]])
    mix = ObjectiveDraws(kind="dirichlet", over=["pv", "ipv", "buys"], price_scaled=False)
    drawn = mix.draw(3, 0, 0)
    assert drawn.sum() == pytest.approx(1.0) and drawn[3] == 0 and (drawn[:3] > 0).all()
    assert len(mix.valid_weights()) == 4  # each objective alone and the centre


def test_training_batches_carry_the_drawn_weights_reproducibly(logs, store):
    cfg = GeneratorTrainConfig(model=CMR, imitation=0.0, train=TrainConfig(batch_size=32, seed=4))
    batches = request_batches(logs, store, cfg, None)
    first = [b["objective"] for _, b in zip(range(3), batches(1, 0, 1), strict=False)]
    again = [b["objective"] for _, b in zip(range(3), batches(1, 0, 1), strict=False)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert (a == a[0]).all()  # one draw per batch
    assert not torch.equal(first[0], first[1])
    price = float(np.mean(store.item_raw_price[1:]))
    np.testing.assert_allclose(first[2][0].numpy(), cfg.draws.draw(4, 1, 2, 0, price), rtol=1e-6)
    plain = request_batches(logs, store, cfg.model_copy(update={"model": PLAIN}), None)
    assert "objective" not in next(iter(plain(1, 0, 1)))


def test_a_beam_reference_is_searched_under_each_batchs_drawn_weights(logs, store, models_dir):
    cfg = GeneratorTrainConfig(model=CMR, imitation=0.1, imitate="beam", train=TrainConfig(batch_size=32, seed=4))
    scorer = ListScorer.load(models_dir / "evaluator", store, models_dir / "ranker")
    beam = reference_generator(cfg, scorer)
    batches = list(zip(range(12), request_batches(logs, store, cfg, beam)(0, 0, 1), strict=False))
    spend_shares = []
    for _, batch in batches:
        requests = requests_of(batch)
        weights = batch["objective"].numpy().astype(np.float64)
        expected = beam.propose(requests, CMR.list_len, Context(store, cfg.rules.build(), weights))
        assert torch.equal(batch["reference"], torch.as_tensor(requests.columns_of(expected)))
        clicks_only = beam.propose(requests, CMR.list_len, Context(store, cfg.rules.build()))
        spend_shares.append((weights[0, 3] > 0, (expected[:, 0] != clicks_only[:, 0]).any(1).mean()))
    # where a draw weighs spend, the reference differs from the clicks-only one for some requests
    assert any(share > 0 for weighs_spend, share in spend_shares if weighs_spend)


def test_logs_without_prices_refuse_a_conditioned_grn_naming_the_plain_config(logs, models_dir, tmp_path):
    unpriced = tmp_path / "logs"
    shutil.copytree(logs, unpriced)
    items = pq.read_table(unpriced / "items.parquet")
    pq.write_table(items.set_column(items.schema.get_field_index("price"), "price",
                                    pa.array(np.zeros(len(items), np.float32))), unpriced / "items.parquet")
    cfg = GeneratorTrainConfig(model=CMR, imitation=0.0, valid_requests=20, train=TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match="no item prices.*generator.yaml"):
        train_generator(cfg, unpriced, models_dir / "evaluator", tmp_path / "out", ranker_dir=models_dir / "ranker")


def test_conditioned_training_records_the_scale_and_resumes_exactly(logs, models_dir, tmp_path):
    cfg = GeneratorTrainConfig(
        model=GRNConfig(dim=8, hidden=8, heads=2, conditioned=True), samples=4, valid_requests=30, imitation=0.01,
        rules=RulesConfig(cate_window=1),
        train=TrainConfig(epochs=2, batch_size=16, lr=0.01, max_steps_per_epoch=3, monitor="value",
                          monitor_mode="max", patience=None, num_threads=1))
    evaluator, ranker = models_dir / "evaluator", models_dir / "ranker"
    result = train_generator(cfg, logs, evaluator, tmp_path / "full", ranker_dir=ranker)
    model, spec = load_generator(tmp_path / "full")
    assert model.cfg.conditioned and spec.model.objective_scale is not None
    assert all(x > 0 for x in spec.model.objective_scale)
    assert {"val_value_p0", "val_value_p1", "val_value_p2"} <= set(result.history[-1])
    half = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
    train_generator(half, logs, evaluator, tmp_path / "resumed", ranker_dir=ranker)
    resumed = train_generator(cfg, logs, evaluator, tmp_path / "resumed", resume=True, ranker_dir=ranker)
    assert resumed.history[-1]["val_value"] == result.history[-1]["val_value"]
    last = [load_file(tmp_path / run / "checkpoints" / "last.safetensors") for run in ("full", "resumed")]
    assert last[0].keys() == last[1].keys()
    for name, tensor in last[0].items():
        torch.testing.assert_close(last[1][name], tensor, rtol=0, atol=0)


def test_grn_cmr_decodes_each_request_under_its_own_weights(models, logs, store):
    grn_cmr = GENERATORS["grn_cmr"](models, RerankConfig())
    requests, _ = logged_requests(logs, "test", 32)
    rules = BusinessRules(cate_window=1)
    weights = np.where(np.arange(32)[:, None] % 2, GMV, IPV)  # every other request asks for spend
    lists = grn_cmr.propose(requests, 10, Context(store, rules, weights))[:, 0]
    expected = []
    for w in (IPV, GMV):  # the model decoded by hand, every request under one of the two weight vectors
        batch = request_batch(requests, Context(store, rules)) | {
            "objective": torch.tensor(np.tile(w, (32, 1)), dtype=torch.float32)}
        with torch.no_grad():
            choice = models.generator_cmr(batch, greedy=True, allowed_fn=rules_hook(rules, batch))["choice"][:, 0]
        expected.append(np.take_along_axis(requests.candidates, choice.clamp_min(0).numpy(), 1))
    np.testing.assert_array_equal(lists, np.where(np.arange(32)[:, None] % 2, expected[1], expected[0]))
    assert (expected[0] != expected[1]).any()  # the weights change the lists
    one = grn_cmr.propose(requests, 10, Context(store, rules, Objective.of({"gmv": 0.02})))[:, 0]
    np.testing.assert_array_equal(one, expected[1])  # one objective for all = the same weights per request
    with pytest.raises(ValueError, match=r"must be \[32, 4\]"):
        grn_cmr.propose(requests, 10, Context(store, rules, np.ones((32, 2))))


def test_roles_refuse_a_generator_of_the_other_kind(models_dir, store):
    with pytest.raises(ValueError, match="role 'generator_cmr' needs a GRN conditioned"):
        load_role("generator_cmr", models_dir / "generator", store)
    with pytest.raises(ValueError, match="role 'generator' needs a GRN not conditioned"):
        load_role("generator", models_dir / "generator_cmr", store)


def test_a_served_pipeline_offers_grn_cmr_with_per_request_weights(models):
    from relist.serve.config import PipelineConfig
    from relist.serve.pipeline import build_pipeline

    assert "grn_cmr" in build_pipeline("d", models.store, PipelineConfig(), models).strategies  # served by default
    pipeline = build_pipeline("c", models.store, PipelineConfig.of(["upstream", "grn_cmr"]), models)
    served = {}
    for name, weights in (("ipv", {"ipv": 1.0}), ("gmv", {"gmv": 0.02})):
        inp = pipeline.request_input(None, np.arange(1, 41), np.linspace(0.9, 0.1, 40), 10,
                                     objective=Objective.of(weights))
        result = pipeline.rerank(inp, strategy="grn_cmr")
        assert result.generator == "grn_cmr" and not result.fallback
        served[name] = list(result.items)
    assert len(set(served["ipv"])) == 10


def test_the_shipped_config_trains_a_generator_cmr_from_the_command_line(logs, models_dir, store, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from relist.cli import app
    from relist.io.config import CONFIGS

    shipped = yaml.safe_load((CONFIGS / "generator_cmr.yaml").read_text())
    shipped["model"] |= {"dim": 8, "hidden": 8}
    shipped["train"] |= {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16}
    config = tmp_path / "generator_cmr.yaml"
    config.write_text(yaml.safe_dump(shipped | {"valid_requests": 20, "samples": 2}))
    out = tmp_path / "models" / "generator_cmr"
    result = CliRunner().invoke(app, ["train", "generator", "--config", str(config), "--data", str(logs),
                                      "--evaluator", str(models_dir / "evaluator"), "--ranker",
                                      str(models_dir / "ranker"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_role("generator_cmr", out, store)
    assert model.cfg.conditioned and model.cfg.objective_scale is not None


def test_benchmark_world_models_train_generator_cmr_only_when_named():
    from benchmarks.common import WorldModels, role_configs

    assert "generator_cmr" not in role_configs(WorldModels())
    configs = role_configs(WorldModels(roles=["ranker", "evaluator", "generator_cmr"]))
    assert configs["generator_cmr"].model.conditioned and not configs.get("generator")
