"""The evaluator under torchrun: two gloo ranks streaming their own shards train like one process.

The DDP side runs the real entry point, ``train_evaluator``, interrupted after one epoch and
resumed for the second; the reference is one uninterrupted process whose every batch is the two
ranks' batches side by side (the same global batch).  Two settings make the runs comparable:
no dropout (each rank seeds its own generator), and the same exposure depth for every list,
because DDP averages the ranks' per-rank mean losses, which equals the mean over the global
batch only when each rank's batch holds as many labelled positions.

This file is also the script torchrun launches (``__main__`` at the bottom).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

import relist.train.evaluator as evaluator_training
from relist.data.features import FeatureStore
from relist.data.logs import upstream_score_sample
from relist.io.train_config import TrainConfig
from relist.io.weights import load_weights, save_weights
from relist.models.evaluator import DCWNConfig, Evaluator, load_evaluator
from relist.models.vocab import Vocab
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world
from relist.train.distributed import shutdown
from relist.train.evaluator import (
    LABELS,
    EvaluatorTrainConfig,
    exposure_metrics,
    labelled_batch,
    read_raw,
    train_batches,
    train_evaluator,
)
from relist.train.trainer import fit

CFG = EvaluatorTrainConfig(  # two members: each rank must draw the same bootstrap resample of every list
    # buy_weight 0: purchases are learned on clicked positions, whose number differs between the ranks
    model=DCWNConfig(dim=8, hidden=8, heads=2, dropout=0.0, members=2, prior=False, buy_weight=0.0),
    train=TrainConfig(
        epochs=2, batch_size=32, lr=0.01, patience=None, monitor="click_logloss", device="cpu", num_threads=1
    ),
    score_dropout=0.0,
    valid_lists=100,
)
LISTS_PER_SHARD = 320  # 10 batches of 32 per rank and epoch
EXPOSED = 6  # of the 10 shown positions


def write_logs(out: Path) -> None:
    """Tiny simulated logs whose train split is two equal shards, every list exposed to the same depth."""
    world = build_world(load_sim_config())
    simulate_logs(world, out, 800, 0.1, 0.1, shard_size=LISTS_PER_SHARD, progress=False)
    shards = sorted((out / "lists" / "train").glob("*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in shards] == [LISTS_PER_SHARD] * 2
    for shard in shards:
        table = pq.read_table(shard)
        column = table.schema.get_field_index("exposed_len")
        depth = pa.array([EXPOSED] * table.num_rows, table.schema.field(column).type)
        pq.write_table(table.set_column(column, "exposed_len", depth), shard)


def losses(result) -> str:
    return json.dumps([row["train_loss"] for row in result.history])


def keep_replica(path: Path):
    """The evaluator's ``fit``, also saving the weights this rank ends with (only rank 0 writes out_dir)."""

    def fit_and_save(model, *args, **kwargs):
        result = fit(model, *args, **kwargs)
        save_weights(model, path, {"losses": losses(result)})
        return result

    return fit_and_save


def worker(data: Path, out: Path) -> None:
    evaluator_training.fit = keep_replica(out / f"replica-{os.environ['RANK']}.safetensors")
    interrupted = CFG.model_copy(update={"train": CFG.train.model_copy(update={"epochs": 1})})
    train_evaluator(interrupted, data, out / "ddp")
    train_evaluator(CFG, data, out / "ddp", resume=True)
    shutdown()


def single_process_reference(data: Path, out: Path) -> tuple[Evaluator, str, dict]:
    """Two epochs in this process on the concatenation of what ranks 0 and 1 of 2 read."""
    store = FeatureStore.from_dir(data)
    per_rank = train_batches(data, store, CFG, None)

    def global_batches(epoch: int, rank: int, world_size: int):
        for parts in zip(per_rank(epoch, 0, 2), per_rank(epoch, 1, 2), strict=False):  # as lockstep stops
            first = len(parts[0]["user_row"])  # rank 1's lists index rank 1's requests, now after rank 0's
            parts[1]["user_row"] = parts[1]["user_row"] + first
            yield {name: torch.cat([part[name] for part in parts], -1 if name == "weight" else 0)
                   if name != "has_buy" else parts[0][name] for name in parts[0]}

    torch.manual_seed(CFG.train.seed)
    model = Evaluator(Vocab.of(store, upstream_score_sample(data)), CFG.model)
    raw = read_raw(data, "valid", list(LABELS), CFG.valid_lists)
    valid = labelled_batch(store, raw, CFG.model.members)
    result = fit(model, model.loss, global_batches, lambda m: exposure_metrics(m, valid), CFG.train, out)
    return model, losses(result), valid


def test_evaluator_on_two_gloo_ranks_trains_like_one_process_on_the_global_batch(tmp_path):
    data = tmp_path / "logs"
    write_logs(data)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launch, data, tmp_path], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    single, single_losses, valid = single_process_reference(data, tmp_path / "single")
    replicas = [Evaluator(single.vocab, CFG.model).eval() for _ in range(2)]
    meta = [load_weights(m, tmp_path / f"replica-{rank}.safetensors") for rank, m in enumerate(replicas)]
    for a, b in zip(*(m.state_dict().values() for m in replicas), strict=True):
        assert torch.equal(a, b)
    assert meta[0] == meta[1]
    ddp_losses = torch.tensor(json.loads(meta[0]["losses"]))
    assert len(ddp_losses) == 2  # epoch 1 before the interruption, epoch 2 after the resume
    torch.testing.assert_close(ddp_losses, torch.tensor(json.loads(single_losses)), rtol=0, atol=1e-6)
    # The same function, compared by its outputs: attention's key bias has a true gradient of 0 (softmax
    # ignores a shift), so Adam turns float noise into lr-sized steps there that differ between runs.
    with torch.no_grad():
        ddp_out, single_out = replicas[0](valid), single.eval()(valid)
    for name in ("click", "next"):
        torch.testing.assert_close(ddp_out[name], single_out[name], rtol=0, atol=1e-5)

    # Rank 0 wrote a complete run directory: the evaluator loads from it, with the last epoch's weights.
    _, spec = load_evaluator(tmp_path / "ddp")
    assert spec.model == CFG.model
    last = Evaluator(single.vocab, CFG.model)
    load_weights(last, tmp_path / "ddp" / "checkpoints" / "last.safetensors")
    for a, b in zip(last.state_dict().values(), replicas[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
