"""DDP on CPU: two gloo ranks under torchrun must train exactly like one process on the global batch.

This file is also the training script that torchrun launches (see ``__main__`` at the bottom), so
the launched code and the single-process reference share every definition.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from relist.io.train_config import TrainConfig
from relist.io.weights import load_weights, save_weights
from relist.train.distributed import shutdown
from relist.train.trainer import fit

CFG = TrainConfig(epochs=2, lr=0.01, patience=None, monitor="mse", device="cpu", num_threads=1)
X_VAL = torch.randn(32, 3, generator=torch.Generator().manual_seed(99))


class MLP(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, batch):
        return {"y": self.net(batch["x"]).squeeze(-1)}


def mse(outputs, batch):
    return {"loss": F.mse_loss(outputs["y"], batch["y"])}


def batches(epoch, rank, world_size, steps=3):
    """The same global batches of 8 for any world size; each rank takes its interleaved share."""
    g = torch.Generator().manual_seed(epoch)
    for _ in range(steps):
        x = torch.randn(8, 3, generator=g)
        yield {"x": x[rank::world_size], "y": torch.sin(x).sum(1)[rank::world_size]}


def uneven(epoch, rank, world_size):
    """Rank 1's shard is one batch short: DDP would hang unless all ranks stop together."""
    return batches(epoch, rank, world_size, steps=3 - rank)


def validate(model):
    return {"mse": mse(model({"x": X_VAL}), {"y": torch.sin(X_VAL).sum(1)})["loss"]}


def losses(result) -> str:
    return json.dumps([row["train_loss"] for row in result.history])


def worker(out: Path) -> None:
    rank = int(os.environ["RANK"])
    # An interrupted run (1 of 2 epochs) resumed from a different init: every rank must load the checkpoint.
    fit(MLP(), mse, batches, validate, CFG.model_copy(update={"epochs": 1}), out / "even")
    model = MLP(seed=1)
    result = fit(model, mse, batches, validate, CFG, out / "even", resume=True)
    save_weights(model, out / f"even-{rank}.safetensors", {"losses": losses(result)})
    model = MLP()
    result = fit(model, mse, uneven, validate, CFG, out / "uneven")
    save_weights(model, out / f"uneven-{rank}.safetensors", {"losses": losses(result)})
    shutdown()


def test_two_gloo_ranks_train_like_one_process_on_the_global_batch(tmp_path):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launch, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    for name, data in (("even", batches), ("uneven", lambda e, r, w: batches(e, r, w, steps=2))):
        single = MLP()
        reference = fit(single, mse, data, validate, CFG, tmp_path / f"single-{name}")
        replicas = [MLP(seed=7), MLP(seed=8)]
        meta = [load_weights(m, tmp_path / f"{name}-{rank}.safetensors") for rank, m in enumerate(replicas)]
        for a, b, s in zip(*(m.state_dict().values() for m in (*replicas, single)), strict=True):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, s, rtol=0, atol=1e-6)
        assert meta[0] == meta[1]
        ddp_losses = torch.tensor(json.loads(meta[0]["losses"]))
        torch.testing.assert_close(ddp_losses, torch.tensor(json.loads(losses(reference))), rtol=0, atol=1e-6)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
