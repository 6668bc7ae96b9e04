"""Model folders are complete or absent: training works in a hidden sibling that is renamed into place,
a crash leaves nothing at the model's name, resume continues there, and readers skip (and report)
any folder that is not a whole model."""

from __future__ import annotations

import pytest

from relist.data.features import FeatureStore
from relist.io.model_folder import is_complete_model, partial_dir
from relist.io.train_config import TrainConfig
from relist.rerank.registry import Models
from relist.train import baselines as baseline_training
from relist.train.baselines import BaselineTrainConfig, train_baseline

CFG = BaselineTrainConfig.model_validate({
    "model": {"kind": "prm", "dim": 8, "hidden": 8, "dropout": 0.0}, "valid_lists": 50,
    "train": TrainConfig(epochs=2, batch_size=64, lr=0.01, max_steps_per_epoch=3, monitor="ndcg10",
                         monitor_mode="max").model_dump(),
})


class Crash(RuntimeError):
    pass


def test_the_folder_appears_only_when_complete_and_a_crash_leaves_none(logs, tmp_path, monkeypatch):
    out = tmp_path / "models" / "prm"
    seen = []
    real_fit = baseline_training.fit

    def watching_fit(model, loss, batches, validate, cfg, out_dir, resume=False):
        seen.append((out_dir, out.exists()))
        return real_fit(model, loss, batches, validate, cfg, out_dir, resume)

    monkeypatch.setattr(baseline_training, "fit", watching_fit)
    _, result = train_baseline(CFG, logs, out)
    assert seen == [(partial_dir(out), False)]  # it trained elsewhere; the model's name did not exist
    assert is_complete_model(out) and not partial_dir(out).exists()
    assert result.best_path == out / "model.safetensors"

    def crashing_fit(model, loss, batches, validate, cfg, out_dir, resume=False):
        real_fit(model, loss, batches, validate, cfg.model_copy(update={"epochs": 1}), out_dir, resume)
        raise Crash("killed after epoch 1")

    monkeypatch.setattr(baseline_training, "fit", crashing_fit)
    again = tmp_path / "models" / "dlcm"
    with pytest.raises(Crash):
        train_baseline(CFG, logs, again)
    assert not again.exists() and (partial_dir(again) / "checkpoints").is_dir()
    monkeypatch.setattr(baseline_training, "fit", real_fit)
    _, resumed = train_baseline(CFG, logs, again, resume=True)  # continues the interrupted run
    assert [row["epoch"] for row in resumed.history] == [0, 1] and is_complete_model(again)


def test_readers_skip_and_report_folders_that_are_not_complete_models(logs, tmp_path):
    models = tmp_path / "models"
    train_baseline(CFG, logs, models / "prm")
    (models / "dlcm").mkdir()  # weights without a spec: the half-trained baseline folder
    (models / "dlcm" / "model.safetensors").write_bytes((models / "prm" / "model.safetensors").read_bytes())
    loaded, missing = Models.load(models, FeatureStore.from_dir(logs), roles=("prm", "dlcm", "seq2slate"))
    assert loaded.prm is not None and loaded.dlcm is None and loaded.seq2slate is None
    assert missing == [f"dlcm: {models / 'dlcm'} is not a complete model (no spec file "
                       "evaluator.yaml / generator.yaml / baseline.yaml / ranking_config.yaml)",
                       f"seq2slate: no {models / 'seq2slate'}"]
