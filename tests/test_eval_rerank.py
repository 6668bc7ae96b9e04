"""`relist eval rerank` end to end on tiny trained models, and the logged-click NDCG it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from relist.cli import commands_rerank_eval
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.eval.rerank import LIST_RETRIEVAL, LoggedTest, logged_click_ndcg
from relist.models.evaluator import DCWNConfig
from relist.models.ranking.config import TeacherConfig
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world
from relist.train.config import TrainConfig
from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
from relist.train.ranking import RankingConfig, train_ranking

QUICK = {"epochs": 1, "batch_size": 256, "lr": 0.01, "num_threads": 1, "max_steps_per_epoch": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tiny logs, a tiny teacher and evaluator, then the CLI on 10 test requests."""
    root = tmp_path_factory.mktemp("rerank")
    data, models = root / "sim", root / "models"
    simulate_logs(build_world(load_sim_config()), data, 1500, 0.1, 0.1, progress=False)
    torch.set_num_threads(1)
    teacher = RankingConfig(model="teacher", dim=8, teacher=TeacherConfig(hidden=(16, 8), attention_hidden=8),
                            train=TrainConfig(monitor="gauc", monitor_mode="max", **QUICK))
    train_ranking(teacher, data, models / "teacher")
    evaluator = EvaluatorTrainConfig(model=DCWNConfig(dim=8, hidden=8, dropout=0.0),
                                     train=TrainConfig(monitor="click_logloss", **QUICK))
    train_evaluator(evaluator, data, models / "evaluator")
    config = root / "eval.yaml"
    config.write_text(yaml.safe_dump({"requests": 10, "beam": {"k": 4, "pv": 0.2, "ipv": 1.0}}))
    app, train_app, eval_app = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    commands_rerank_eval.register(app, train_app, eval_app)
    out = root / "report.json"
    result = CliRunner().invoke(app, ["eval", "rerank", "--data", str(data), "--models", str(models),
                                      "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_report_has_every_policy_its_models_allow(run):
    report, output = run
    policies = report["policies"]
    assert {"logging", "upstream", "greedy_ctr", "beam", LIST_RETRIEVAL, "oracle"} <= set(policies)
    assert any("generator" in line for line in report["skipped"])  # no GRN trained here: said, not hidden
    for name in ("beam", "greedy_ctr", LIST_RETRIEVAL):
        row = policies[name]
        assert {"mean", "ci95", "vs_logging", "pct_oracle"} <= set(row["ipv"])
        assert 0 < row["ipv"]["pct_oracle"] <= 100.0 + 1e-6
        assert "evaluator_lr" in row and "ndcg_logged_clicks" in row
    assert "Offline scores" in output and report["config"]["requests"] == 10


def test_list_retrieval_scores_at_least_as_well_as_its_generators_by_the_evaluator(run):
    report, _ = run
    policies = report["policies"]
    best_generator = max(policies[name]["evaluator_lr"]["mean"] for name in ("upstream", "beam"))
    assert policies[LIST_RETRIEVAL]["evaluator_lr"]["mean"] >= best_generator - 1e-6
    assert abs(sum(report["list_retrieval_sources"].values()) - 1.0) < 1e-9


def test_logged_click_ndcg_counts_unshown_items_as_unclicked():
    candidates = np.array([[1, 2, 3, 4, 5]])
    requests = Requests.from_arrays([0], [1], candidates, np.zeros((1, 5)))
    logged = LoggedTest(requests, shown=np.array([[1, 2, 3]]), clicks=np.array([[0, 1, 0]]))
    assert logged_click_ndcg(logged, np.array([[2, 4, 5]]), 3)[0] == pytest.approx(1.0)
    assert logged_click_ndcg(logged, np.array([[4, 2, 5]]), 3)[0] == pytest.approx(1 / np.log2(3))
    assert logged_click_ndcg(logged, np.array([[4, 5, 1]]), 3)[0] == 0.0
    nothing = LoggedTest(requests, shown=np.array([[1, 2, PAD_ID]]), clicks=np.zeros((1, 3), np.int8))
    assert np.isnan(logged_click_ndcg(nothing, np.array([[1, 2, 3]]), 3)[0])
