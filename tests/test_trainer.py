import csv
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relist.io.config import ConfigError, load_config
from relist.io.train_config import TrainConfig
from relist.io.weights import CheckpointError, load_weights, save_weights
from relist.train.trainer import fit

CFG = TrainConfig(epochs=4, lr=0.05, patience=None, monitor="logloss", device="cpu")


class Tiny(nn.Module):
    """Dropout included so that exact resume also depends on the random generators."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))

    def forward(self, batch):
        return {"ctr": self.net(batch["x"]).squeeze(-1)}


def bce(outputs, batch):
    loss = F.binary_cross_entropy_with_logits(outputs["ctr"], batch["y"])
    return {"loss": loss, "bce": loss}


def batches(epoch, rank, world_size):
    g = torch.Generator().manual_seed(epoch)
    for _ in range(5):
        x = torch.randn(16, 4, generator=g)
        yield {"x": x, "y": (x.sum(1) > 0).float()}


X_VAL = torch.randn(64, 4, generator=torch.Generator().manual_seed(123))


def validate(model):
    return {"logloss": bce(model({"x": X_VAL}), {"y": (X_VAL.sum(1) > 0).float()})["loss"]}


def weights(path):
    model = Tiny()
    load_weights(model, path)
    return model.state_dict()


def log(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    straight = Tiny()
    fit(straight, bce, batches, validate, CFG, tmp_path / "straight")

    def power_cut_in_epoch_2(epoch, rank, world_size):
        if epoch == 2:
            raise KeyboardInterrupt
        return batches(epoch, rank, world_size)

    with pytest.raises(KeyboardInterrupt):
        fit(Tiny(), bce, power_cut_in_epoch_2, validate, CFG, tmp_path / "resumed")
    resumed = Tiny(seed=1)  # different initial weights: everything must come from the checkpoint
    result = fit(resumed, bce, batches, validate, CFG, tmp_path / "resumed", resume=True)

    assert result.epochs == 4 and [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert_same(resumed.state_dict(), straight.state_dict())
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        assert_same(weights(tmp_path / "resumed" / name), weights(tmp_path / "straight" / name))
    straight_log, resumed_log = (log(tmp_path / run / "train_log.csv") for run in ("straight", "resumed"))
    assert [r["train_loss"] for r in straight_log] == [r["train_loss"] for r in resumed_log]


@pytest.mark.parametrize(
    "mode, scores, best", [("max", [0.5, 0.7, 0.6, 0.65, 0.9], 1), ("min", [3, 2, 1, 4, 5], 2)]
)
def test_early_stopping_keeps_the_best_epoch_and_records_the_run(tmp_path, mode, scores, best):
    seen = []

    def scripted(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"score": scores[len(seen) - 1], "other": 0.0}

    cfg = CFG.model_copy(update={"epochs": 5, "patience": 2, "monitor": "score", "monitor_mode": mode})
    model = Tiny()
    result = fit(model, bce, batches, scripted, cfg, tmp_path)

    assert result.stopped_early and result.epochs == best + 3 == len(seen)
    assert (result.best_epoch, result.best_metric) == (best, scores[best])
    assert_same(weights(result.best_path), seen[best])
    assert_same(model.state_dict(), weights(tmp_path / "checkpoints" / "last.safetensors"))
    rows = log(tmp_path / "train_log.csv")
    assert [float(r["val_score"]) for r in rows] == scores[: best + 3]
    assert [int(r["step"]) for r in rows] == [5 * (i + 1) for i in range(len(rows))]
    assert {"epoch", "train_loss", "train_bce", "val_other", "seconds", "samples_per_s"} <= rows[0].keys()
    assert (tmp_path / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    assert load_config(tmp_path / "train_config.yaml", TrainConfig) == cfg
    again = fit(Tiny(), bce, batches, scripted, cfg, tmp_path, resume=True)  # a finished run stays finished
    assert again.epochs == result.epochs and len(seen) == result.epochs


@pytest.mark.parametrize("damage", ["missing", "checkpoints/last_state.pt", "checkpoints/last.safetensors"])
def test_corrupt_or_missing_checkpoint_names_the_file(tmp_path, damage):
    cfg = CFG.model_copy(update={"epochs": 1})
    if damage == "missing":
        path = tmp_path / "checkpoints" / "last_state.pt"
    else:
        fit(Tiny(), bce, batches, validate, cfg, tmp_path)
        path = tmp_path / damage
        path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        fit(Tiny(), bce, batches, validate, cfg.model_copy(update={"epochs": 2}), tmp_path, resume=True)


def flip_tensor_byte(path, tensor) -> None:
    """Damage one byte of ``tensor``'s data inside ``path`` (found by its bytes), leaving every header intact."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0, "the tensor's bytes must occur exactly once"
    data[at + len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", ["checkpoints/last.safetensors", "checkpoints/last_state.pt"])
def test_damaged_tensor_bytes_are_refused_on_resume_naming_the_file(tmp_path, damaged):
    """The header parses and the shapes fit: only the checksum can tell, and resume must not start."""
    cfg = CFG.model_copy(update={"epochs": 1})
    model = Tiny()
    fit(model, bce, batches, validate, cfg, tmp_path)
    path = tmp_path / damaged
    if damaged.endswith(".safetensors"):
        tensor = model.net[0].weight
    else:
        state = torch.load(path, weights_only=True)
        tensor = state["optimizer"]["state"][0]["exp_avg"]
    flip_tensor_byte(path, tensor)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: damaged .*sha256 checksum"):
        fit(Tiny(), bce, batches, validate, cfg.model_copy(update={"epochs": 2}), tmp_path, resume=True)


def test_damaged_best_weights_are_refused_wherever_they_are_loaded(tmp_path):
    model = Tiny()
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    flip_tensor_byte(path, model.net[3].weight)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: damaged weights"):
        load_weights(Tiny(), path)


def test_loss_and_model_contracts_fail_with_clear_errors(tmp_path):
    cfg = CFG.model_copy(update={"epochs": 1})
    with pytest.raises(ValueError, match=r"must return a dict with a 'loss' entry.*\['bce'\]"):
        fit(Tiny(), lambda out, batch: {"bce": bce(out, batch)["loss"]}, batches, validate, cfg, tmp_path)
    class Bare(Tiny):
        def forward(self, batch):
            return super().forward(batch)["ctr"]

    with pytest.raises(TypeError, match="dict of named logits, got Tensor"):
        fit(Bare(), bce, batches, validate, cfg, tmp_path)
    with pytest.raises(ValueError, match=r"lacks \['logloss'\] of monitor 'logloss'"):
        fit(Tiny(), bce, batches, lambda model: {"auc": 0.5}, cfg, tmp_path)


def test_weights_round_trip_and_mismatch_or_corruption_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    model = Tiny()
    save_weights(model, path, {"version": "7"})
    assert load_weights(Tiny(seed=1), path) == {"version": "7"}
    assert_same(weights(path), model.state_dict())
    wider = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Dropout(0.2), nn.Linear(9, 1))
    mismatch = f"(?s){re.escape(str(path))}: weights do not fit.*size mismatch for net.0.weight"
    with pytest.raises(CheckpointError, match=mismatch):
        load_weights(nn.ModuleDict({"net": wider}), path)
    path.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: corrupt"):
        load_weights(model, path)
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_weights(model, tmp_path / "nope.safetensors")


def test_config_files_load_and_bad_fields_are_named(tmp_path):
    (tmp_path / "a.toml").write_text('epochs = 3\nmonitor = "auc"\nmonitor_mode = "max"\n')
    expected = TrainConfig(epochs=3, monitor="auc", monitor_mode="max")
    assert load_config(tmp_path / "a.toml", TrainConfig) == expected
    (tmp_path / "b.yaml").write_text("lr: -1\nepoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "b.yaml", TrainConfig)
    where = f"file {tmp_path / 'b.yaml'}, field"
    assert f"{where} 'lr': Input should be greater than 0 (got -1)" in str(err.value)
    assert f"{where} 'epoch': Extra inputs are not permitted" in str(err.value)
    (tmp_path / "c.yaml").write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        load_config(tmp_path / "c.yaml", TrainConfig)
