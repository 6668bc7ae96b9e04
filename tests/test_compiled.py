"""The compiled path (ONNX graphs in ONNX Runtime, the GRN's slot loop in its kernel) returns exactly the eager
path's lists on fixed seeds: GRN greedy, sampled and LAST-shifted decoding under the rules, the evaluator's
values and the teacher's logits, and therefore list ranking's served lists (so every true-reward table is
unchanged by compilation). So does the edge form, the slot loop in the exported decoder graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relist.data.logs import logged_requests
from relist.models.ranking.context import ContextTerms
from relist.objective import Objective
from relist.rerank.compiled import MANIFEST, CompiledGRN, KernelGRN, compiled_models, export_onnx
from relist.rerank.generators import Context
from relist.rerank.grn import GRNGreedy, GRNSamples
from relist.rerank.last import LAST, LASTConfig
from relist.rerank.registry import GENERATORS, RerankConfig, build_ranking
from relist.rerank.rules import BusinessRules

RULES = BusinessRules(cate_window=2)


@pytest.fixture(scope="module")
def onnx_dir(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(models, RULES, out)
    return out


@pytest.fixture(scope="module")
def fast(models, onnx_dir):
    return compiled_models(models, onnx_dir)


@pytest.fixture(scope="module")
def edge(models, onnx_dir):
    return compiled_models(models, onnx_dir, decoder_graph=True)


@pytest.fixture(scope="module", params=["kernel", "graph"])
def decoded(request, fast, edge):
    """The compiled models with the GRN's slot loop in the kernel (served) or in the decoder graph (edge)."""
    return fast if request.param == "kernel" else edge


@pytest.fixture(scope="module")
def requests(logs):
    return logged_requests(logs, "test", 200)[0]


def test_the_manifest_names_every_graph_and_what_it_reads(onnx_dir, fast, edge):
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    assert set(manifest["graphs"]) == {"generator_encoder", "generator_decoder", "evaluator", "ranker"}
    for graph in manifest["graphs"].values():
        assert (onnx_dir / graph["file"]).is_file() and graph["inputs"] and graph["outputs"]
    assert manifest["slots"] == 10 and manifest["rules"]["cate_window"] == 2 and manifest["members"] == 2
    assert isinstance(fast.generator, CompiledGRN) and fast.evaluator.compiled is not None
    assert fast.generator.decoder is None and edge.generator.decoder is not None


def test_the_teachers_slot_tables_ship_with_the_graphs(models, onnx_dir, fast):
    """The teacher's graph does not hold its slot tables: the export writes them beside it, and the compiled
    teacher reads them from there, not from the eager model."""
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    shipped = ContextTerms.load(onnx_dir / manifest["slot_terms"]["file"])
    eager = models.ranker.context_terms()
    assert manifest["slot_terms"]["tasks"] == sorted(eager.pair) and fast.ranker.context_terms() is not eager
    for kind in ("pair", "repeats", "position"):
        for task, table in getattr(eager, kind).items():
            np.testing.assert_array_equal(getattr(shipped, kind)[task], table)
            np.testing.assert_array_equal(getattr(fast.ranker.context_terms(), kind)[task], table)
    assert np.abs(shipped.pair["ctr"]).sum() > 0  # the tiny teacher learned some


@pytest.mark.parametrize("rows", [slice(0, 1), slice(3, 4), slice(0, 200)])
def test_greedy_and_sampled_lists_are_the_eager_ones(models, decoded, store, requests, rows):
    ctx = Context(store, RULES)
    batch = requests[rows]
    for n in (10, 6):
        assert (GRNGreedy(decoded.generator).propose(batch, n, ctx) == GRNGreedy(models.generator).propose(batch, n,
                                                                                                          ctx)).all()
        eager, compiled = (GRNSamples(m.generator, 8, 1.0, seed=3).propose(batch, n, ctx) for m in (models, decoded))
        assert (eager == compiled).all() and len({tuple(x) for x in eager[0]}) > 1  # real samples, the same ones


def test_other_rules_and_more_slots_than_exported_give_the_eager_lists(models, decoded, store, requests):
    """The kernel takes any rules and list length; the decoder graph hands such a call to the eager loop."""
    other = Context(store, BusinessRules(cate_window=3, max_per_shop=1))
    batch = requests[:20]
    assert (GRNGreedy(decoded.generator).propose(batch, 10, other) == GRNGreedy(models.generator).propose(
        batch, 10, other)).all()
    longer = Context(store, RULES)
    assert (GRNGreedy(decoded.generator).propose(batch, 12, longer) == GRNGreedy(models.generator).propose(
        batch, 12, longer)).all()


def test_a_grn_conditioned_on_the_objective_decodes_in_the_kernel_to_the_eager_lists(models, fast, store, requests):
    assert isinstance(fast.generator_cmr, KernelGRN) and not isinstance(fast.generator_cmr, CompiledGRN)
    weights = np.where(np.arange(64)[:, None] % 2, Objective.of({"gmv": 0.02}).vector(), Objective().vector())
    ctx = Context(store, RULES, weights)  # every other request asks for spend: the encoder reads it
    eager, kernel = (GENERATORS["grn_cmr"](m, RerankConfig()).propose(requests[:64], 10, ctx) for m in (models, fast))
    assert (eager == kernel).all() and (eager[0::2] != eager[1::2]).any()


def test_evaluator_and_teacher_agree_to_float_rounding(models, fast, store, requests):
    lists = GRNSamples(models.generator, 4).propose(requests, 10, Context(store, RULES))
    np.testing.assert_allclose(fast.evaluator.values(requests, lists), models.evaluator.values(requests, lists),
                               rtol=1e-4, atol=1e-5)
    eager, compiled = models.point_scores(requests, store), fast.point_scores(requests, store)
    for head in ("ctr", "next"):
        np.testing.assert_allclose(compiled[head], eager[head], rtol=1e-4, atol=1e-6)


def test_last_shifts_to_the_same_lists(models, decoded, store, requests):
    cfg = LASTConfig()  # K = 8: two directions x four step sizes
    eager = LAST(models.generator, models.evaluator, cfg).rerank(requests[:64], 10, Context(store, RULES))
    compiled = LAST(decoded.generator, decoded.evaluator, cfg).rerank(requests[:64], 10, Context(store, RULES))
    assert (eager.lists == compiled.lists).all() and (eager.source == compiled.source).all()
    np.testing.assert_allclose(eager.reward, compiled.reward, rtol=1e-4, atol=1e-5)


def test_list_ranking_serves_the_same_lists(models, fast, store, requests):
    cfg = RerankConfig()
    names = ["upstream", "greedy_upstream_score", "greedy_ctr", "beam", "grn", "grn_samples", "last"]
    served = []
    for m in (models, fast):
        ranking, _, _ = build_ranking(m, cfg, names)
        ranked = ranking.rank(requests[:40], 10, Context(store, RULES))
        served.append((ranked.lists, ranked.source))
    assert (served[0][0] == served[1][0]).all() and (served[0][1] == served[1][1]).all()


def test_weights_are_read_not_copied(models, fast):
    assert fast.generator.model is models.generator  # LAST's gradient runs on the deployed weights
    assert all(torch.equal(a, b) for a, b in zip(fast.evaluator.model.parameters(),
                                                 models.evaluator.model.parameters(), strict=True))


def test_an_exported_version_serves_on_its_graphs_the_lists_of_the_eager_version(models_dir, logs, tmp_path):
    from relist.rerank.registry import ROLES
    from relist.serve.config import PipelineConfig
    from relist.serve.registry import export_version, load_version

    roles = {role: models_dir / role for role in ROLES if (models_dir / role).is_dir()}
    config = PipelineConfig.of(["upstream", "greedy_ctr", "beam", "grn", "grn_samples", "last"])
    served = {}
    for onnx in (True, False):
        version = export_version(tmp_path / "models", f"onnx-{onnx}", logs, roles, config, onnx=onnx)
        assert (version / "onnx" / MANIFEST).is_file() == onnx
        pipeline = load_version(version)
        assert isinstance(pipeline.models.generator, CompiledGRN) == onnx
        requests = logged_requests(logs, "test", 25)[0]
        inputs = [pipeline.request_input(None, ids[real], scores[real], 10) for ids, scores, real in
                  zip(requests.candidates, requests.cand_scores, requests.mask, strict=True)]
        served[onnx] = [(list(r.items), r.generator) for r in map(pipeline.rerank, inputs)]
    assert served[True] == served[False]
