"""`relist eval rerank` end to end on tiny trained models, and the logged-click NDCG it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from relist.cli import app as relist_cli
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.eval.rerank import LoggedTest, logged_click_ndcg

RETRIEVAL = "list_retrieval"


def ranker_and_evaluator(models_dir, folder):
    """A models folder with the tiny ranker and evaluator only (the other roles left out)."""
    folder.mkdir()
    for role in ("ranker", "evaluator"):
        (folder / role).symlink_to(models_dir / role)
    return folder


@pytest.fixture(scope="module")
def run(logs, models_dir, tmp_path_factory):
    """The CLI on 10 test requests with the tiny ranker and evaluator only (the other roles left out)."""
    root = tmp_path_factory.mktemp("rerank")
    models = ranker_and_evaluator(models_dir, root / "models")
    config = root / "eval.yaml"
    config.write_text(yaml.safe_dump({"requests": 10, "valid_requests": 20,
                                      "rerank": {"beam": {"k": 4}, "ranking": {"refine": {"rounds": 1}}}}))
    out = root / "report.json"
    result = CliRunner().invoke(relist_cli, ["eval", "rerank", "--data", str(logs), "--models", str(models),
                                      "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_report_has_every_policy_its_models_allow(run):
    report, output = run
    policies = report["policies"]
    assert {"logging", "upstream", "greedy_ctr", "beam", RETRIEVAL, "oracle", "oracle_no_rules"} <= set(policies)
    assert any(line.startswith("generator") for line in report["skipped"])  # no GRN here: said, not hidden
    for name in ("beam", "greedy_ctr", RETRIEVAL):
        row = policies[name]
        assert {"mean", "ci95", "vs_logging", "pct_oracle", "gap_closed", "vs_best_baseline"} <= set(row["ipv"])
        assert 0 < row["ipv"]["pct_oracle"] <= 100.0 + 1e-6
        assert "evaluator_lr" in row and "ndcg_logged_clicks" in row
    assert policies["oracle"]["ipv"]["gap_closed"] == pytest.approx(100.0)
    assert policies["logging"]["ipv"]["gap_closed"] == pytest.approx(0.0)
    assert "Offline scores" in output and report["config"]["requests"] == 10


def test_list_retrieval_names_its_incumbent_and_sources(run):
    report, _ = run
    choice = report["incumbents"][RETRIEVAL]
    assert choice["incumbent"] in choice["gains_on_validation"] and choice["requests"] == 20
    assert abs(sum(report["list_retrieval_sources"][RETRIEVAL].values()) - 1.0) < 1e-9


def test_logged_click_ndcg_counts_unshown_items_as_unclicked():
    candidates = np.array([[1, 2, 3, 4, 5]])
    requests = Requests.from_arrays([0], [1], candidates, np.zeros((1, 5)))
    logged = LoggedTest(requests, shown=np.array([[1, 2, 3]]), clicks=np.array([[0, 1, 0]]))
    assert logged_click_ndcg(logged, np.array([[2, 4, 5]]), 3)[0] == pytest.approx(1.0)
    assert logged_click_ndcg(logged, np.array([[4, 2, 5]]), 3)[0] == pytest.approx(1 / np.log2(3))
    assert logged_click_ndcg(logged, np.array([[4, 5, 1]]), 3)[0] == 0.0
    nothing = LoggedTest(requests, shown=np.array([[1, 2, PAD_ID]]), clicks=np.zeros((1, 3), np.int8))
    assert np.isnan(logged_click_ndcg(nothing, np.array([[1, 2, 3]]), 3)[0])


def test_evaluator_validity_cli_judges_each_generators_lists_by_the_truth(logs, models_dir, tmp_path):
    """`relist eval evaluator`: per generator the evaluator's mean against the simulator's truth of the very
    lists it proposed (checked here for the logged lists, recomputed from the world), JSON and HTML."""
    from relist.data.logs import logged_requests
    from relist.eval.simulated import true_rewards
    from relist.sim.world import world_of_logs

    models = ranker_and_evaluator(models_dir, tmp_path / "models")
    out = tmp_path / "validity.json"
    result = CliRunner().invoke(relist_cli, ["eval", "evaluator", "--data", str(logs), "--models", str(models),
                                      "--requests", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"logged", "upstream", "greedy_ctr", "beam"} <= set(report["generators"])
    assert report["generators"]["beam"]["lists_per_request"] > 1 and report["requests"] == 12
    requests, shown = logged_requests(logs, "test", 12)
    truth = true_rewards(world_of_logs(logs), requests.user_id, shown)["ipv"].mean()
    logged = report["generators"]["logged"]
    assert logged["true"] == pytest.approx(truth)
    assert logged["bias"] == pytest.approx(logged["predicted"] - logged["true"])
    curse = report["winners_curse"]["mean"]
    assert curse["true_of_pick"] <= curse["true_best"] + 1e-9
    assert "<img" in out.with_suffix(".html").read_text()
