"""Ranking training end to end on tiny logs: CLI, distillation stages, resume, corrupt checkpoints."""

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
import typer
from typer.testing import CliRunner

import relist.models.ranking.samples as ranking_samples
from relist.cli import commands_ranking
from relist.data.stream import ParquetStream
from relist.io.config import ConfigError
from relist.io.weights import CheckpointError
from relist.models.ranking import DSSM, FineRankTeacher
from relist.models.ranking.config import RankingConfig
from relist.models.ranking.samples import load_ranking_data
from relist.models.ranking.saved import load_ranking_model
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world
from relist.train.ranking import train_ranking

TRAIN = {
    "epochs": 2,
    "batch_size": 256,
    "lr": 0.01,
    "monitor": "gauc",
    "monitor_mode": "max",
    "patience": None,
    "num_threads": 1,
}
SMALL = {
    "dim": 4,
    "teacher": {"hidden": [8], "attention_hidden": 4},
    "student": {"vector_dim": 8, "tower_hidden": [8], "head_hidden": [8]},
}


def _cfg(**overrides) -> RankingConfig:
    return RankingConfig.model_validate(SMALL | {"train": TRAIN} | overrides)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate_logs(build_world(load_sim_config(None)), out, 2000)
    return out


@pytest.fixture(scope="module")
def data(sim_dir):
    return load_ranking_data(sim_dir)


@pytest.fixture(scope="module")
def teacher_run(sim_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_ranking(_cfg(model="teacher"), sim_dir, out, data=data)
    return out


def test_teacher_learns_clicks_better_than_chance(teacher_run, sim_dir, data):
    from relist.eval.ranking import evaluate_ranking

    report = evaluate_ranking(teacher_run, sim_dir, data=data)
    assert isinstance(load_ranking_model(teacher_run), FineRankTeacher)
    assert report["ctr"]["gauc"] > 0.55 and report["next"]["auc"] > 0.5
    assert (teacher_run / "training_curves.png").is_file() and (teacher_run / "train_log.csv").is_file()


def test_two_stage_distillation_runs_soft_then_soft_plus_hard(teacher_run, sim_dir, data, tmp_path):
    cfg = _cfg(
        model="student", distill={"mode": "two_stage", "teacher_run": str(teacher_run), "stage1_epochs": 1}
    )
    result = train_ranking(cfg, sim_dir, tmp_path, data=data)
    stage1_log = (tmp_path / "stage1" / "train_log.csv").read_text().splitlines()[0]
    assert "train_soft" in stage1_log and "train_hard" not in stage1_log
    assert {"train_soft", "train_hard"} <= set(result.history[-1])
    assert isinstance(load_ranking_model(tmp_path), DSSM)


def test_two_stage_needs_a_teacher_trained_on_the_same_data(sim_dir, data, tmp_path):
    with pytest.raises(ConfigError, match="teacher_run"):
        train_ranking(_cfg(model="student", distill={"mode": "two_stage"}), sim_dir, tmp_path, data=data)


def test_sync_run_serves_the_student(sim_dir, data, tmp_path):
    result = train_ranking(
        _cfg(model="student", distill={"mode": "sync"}, train=TRAIN | {"epochs": 1}),
        sim_dir,
        tmp_path,
        data=data,
    )
    assert {"val_gauc", "val_teacher_gauc"} <= set(result.history[0])
    assert isinstance(load_ranking_model(tmp_path), DSSM)


def test_resumed_run_continues_from_its_checkpoint(sim_dir, data, tmp_path):
    whole = train_ranking(
        _cfg(model="student", train=TRAIN | {"epochs": 3}), sim_dir, tmp_path / "whole", data=data
    )
    train_ranking(_cfg(model="student", train=TRAIN | {"epochs": 2}), sim_dir, tmp_path / "cut", data=data)
    resumed = train_ranking(
        _cfg(model="student", train=TRAIN | {"epochs": 3}), sim_dir, tmp_path / "cut", resume=True, data=data
    )
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[2]["val_gauc"] == whole.history[2]["val_gauc"]
    a, b = load_ranking_model(tmp_path / "whole"), load_ranking_model(tmp_path / "cut")
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_training_streams_the_train_split_and_stops_at_max_train_samples(sim_dir, data, tmp_path, monkeypatch):
    reads = []

    class CountingStream(ParquetStream):
        def __iter__(self):
            for lists in super().__iter__():
                reads.append((self.path.name, self.batch_size, len(lists["user_id"])))
                yield lists

    monkeypatch.setattr(ranking_samples, "ParquetStream", CountingStream)
    cfg = _cfg(model="student", max_train_samples=300, train=TRAIN | {"epochs": 1})
    capped = train_ranking(cfg, sim_dir, tmp_path / "capped", data=data)
    assert reads and {(split, size) for split, size, _ in reads} == {("train", TRAIN["batch_size"])}
    assert sum(n for *_, n in reads) < ds.dataset(sim_dir / "lists" / "train").count_rows() / 2
    assert capped.history[0]["step"] == 2  # 300 samples: a batch of 256 and one of 44
    whole = train_ranking(cfg.model_copy(update={"max_train_samples": None}), sim_dir, tmp_path / "whole", data=data)
    assert whole.history[0]["step"] == -(-len(data.splits["train"]["item"]) // TRAIN["batch_size"])


def test_corrupt_checkpoint_gives_a_clear_error(sim_dir, data, tmp_path):
    train_ranking(_cfg(model="student", train=TRAIN | {"epochs": 1}), sim_dir, tmp_path, data=data)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        load_ranking_model(tmp_path)
    (tmp_path / "checkpoints" / "last_state.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="last_state.pt.*corrupt"):
        train_ranking(
            _cfg(model="student", train=TRAIN | {"epochs": 2}), sim_dir, tmp_path, resume=True, data=data
        )


def test_cli_trains_and_evaluates(sim_dir, tmp_path):
    app, train_app, eval_app = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    commands_ranking.register(app, train_app, eval_app)
    config = tmp_path / "cfg.yaml"
    config.write_text(
        json.dumps(SMALL | {"model": "student", "train": TRAIN | {"epochs": 1}})
    )  # JSON is YAML
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            "train",
            "ranking",
            "--config",
            str(config),
            "--data",
            str(sim_dir),
            "--out",
            str(tmp_path / "run"),
            "--seed",
            "3",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "seed: 3" in (tmp_path / "run" / "ranking_config.yaml").read_text()
    evaluated = runner.invoke(
        app, ["eval", "ranking", "--model", str(tmp_path / "run"), "--data", str(sim_dir)]
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "run" / "eval_test.json").read_text())
    assert 0.5 < report["ctr"]["gauc"] < 1 and np.isfinite(report["ctr"]["auc"])
    assert runner.invoke(app, ["train", "ranking", "--help"]).exit_code == 0


def test_teacher_stops_on_its_heads_losses_over_impressions_as_logged(sim_dir, data, tmp_path):
    """A summed monitor keeps the epoch of least click + scroll loss; the loss scores impressions as logged."""
    from relist.io.weights import load_weights
    from relist.models.ranking.losses import hard_loss
    from relist.models.ranking.samples import LABELS, iterate_batches

    cfg = _cfg(model="teacher", train=TRAIN | {"epochs": 3, "monitor": "ctr_loss+next_loss", "monitor_mode": "min",
                                               "keep_epochs": True})
    result = train_ranking(cfg, sim_dir, tmp_path, data=data)
    summed = [h["val_ctr_loss"] + h["val_next_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(summed))
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == [f"{k}.safetensors" for k in range(3)]
    model = load_ranking_model(tmp_path)
    load_weights(model, tmp_path / "epochs" / "1.safetensors")
    valid = data.splits["valid"]
    batch = next(iterate_batches(valid, len(valid["item"])))
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        logged, served = model(tensors, logged=True), model(tensors)
    labels = {name: tensors[name] for name in LABELS if name in tensors}
    terms = hard_loss(cfg.teacher.tasks)(logged, labels)
    assert float(terms["loss"]) == pytest.approx(result.history[1]["val_loss"], rel=1e-5)
    assert float(terms["ctr"]) == pytest.approx(result.history[1]["val_ctr_loss"], rel=1e-5)
    position = model.position(tensors["position"].long().clamp(0, model.max_position - 1))
    assert torch.allclose(logged["ctr"] - served["ctr"], position[:, 0])


def test_a_summed_monitor_names_the_metric_it_lacks(sim_dir, data, tmp_path):
    cfg = _cfg(model="teacher", train=TRAIN | {"epochs": 1, "monitor": "ctr_loss+nope", "monitor_mode": "min"})
    with pytest.raises(ValueError, match="nope"):
        train_ranking(cfg, sim_dir, tmp_path, data=data)
