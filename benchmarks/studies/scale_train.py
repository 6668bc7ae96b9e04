"""Scale-out: the DCWN evaluator trained from millions of simulated lists streamed from Parquet shards.

Two questions: does memory stay bounded by the batch, not the data (peak RSS of every process
against the size of the logs), and what do 2 DDP processes give over 1 on this machine (global
samples/s over a fixed number of steps, every run a fresh process tree so its peak RSS is its
own). The training runs are ``train_evaluator`` itself, in one plain process for 1 and under
``torch.distributed.run`` for more (benchmarks.processes); a last run streams the whole train split
through ``ParquetStream`` in one process without a model, to show the reader alone stays flat over all of it.

The logs (5,000,000 train lists in 20 shards, ~2 GB) are simulated once under --work, or read from
``data``. The evaluator is relist/configs/evaluator.yaml as shipped; its heads start from a fine-ranking
teacher, trained once on the first ``ranker_samples`` lists' samples (its cost is not measured).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from benchmarks.common import SimulatedLogs, cached, data_key, relist_config, repo_path, simulated_logs
from benchmarks.processes import in_fresh_processes


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(None, description="log directory; null: simulate `logs` under --work")
    logs: SimulatedLogs = SimulatedLogs(requests=5_102_040, valid_frac=0.01, test_frac=0.01, shard_size=250_000)
    config: str = Field("evaluator.yaml", description="evaluator training config (relist/configs file or path)")
    procs: list[int] = Field([1, 2], description="process counts to compare (the first is the reference)")
    steps: int = Field(2000, ge=1, description="training steps per process and run")
    batch_size: int | None = Field(None, ge=1, description="lists per step and process (null: the config's)")
    valid_lists: int = Field(1000, ge=1, description="valid lists for the one validation")
    device: str = Field("cpu", pattern="^(auto|cpu|cuda)$")
    ranker_samples: int = Field(200_000, ge=1, description="training samples of the teacher the prior reads")
    stream_pass: bool = Field(True, description="also stream the whole train split without a model")


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def train_worker(data: str, config: str, steps: int, valid_lists: int, device: str, batch_size: int | None,
                 ranker: str | None, out: str) -> dict:
    """One rank of a fixed-length evaluator training run (this process's own figures)."""
    import torch

    from relist.io.config import load_config
    from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator

    cfg = load_config(config, EvaluatorTrainConfig)
    train = {"epochs": 1, "max_steps_per_epoch": steps, "patience": None, "device": device}
    if batch_size is not None:
        train["batch_size"] = batch_size
    train_cfg = cfg.train.model_copy(update=train)
    cfg = cfg.model_copy(update={"train": train_cfg, "valid_lists": valid_lists})
    rss_before = memory_mb("VmRSS")
    result, _ = train_evaluator(cfg, data, out, ranker_dir=ranker)
    epoch = result.history[0]
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"world_size": int(os.environ.get("WORLD_SIZE", 1)), "steps": int(epoch["step"]),
            "batch_size": train_cfg.batch_size, "train_seconds": epoch["seconds"],
            "samples_per_s": epoch["samples_per_s"], "train_loss": epoch["train_loss"],
            "rss_before_training_mb": rss_before, "peak_rss_mb": memory_mb("VmHWM"), "gpu_peak_mb": gpu_peak}


def stream_worker(data: str, batch_size: int) -> dict:
    """Read every list of the train split (the evaluator's columns) in one process, no model."""
    from relist.data.logs import split_path
    from relist.data.stream import ParquetStream
    from relist.train.evaluator import LABELS

    stream = ParquetStream(split_path(data, "train"), LABELS, batch_size, seed=0)
    start, lists, early_peak = time.perf_counter(), 0, None
    for i, batch in enumerate(stream):
        lists += len(batch["user_id"])
        if i < 100:  # the first shuffle blocks: what a short read costs, to compare with the end
            early_peak = memory_mb("VmHWM")
    seconds = time.perf_counter() - start
    return {"lists": lists, "seconds": seconds, "lists_per_s": lists / seconds,
            "peak_rss_mb_after_100_batches": early_peak, "peak_rss_mb": memory_mb("VmHWM")}


def data_size(data: Path) -> dict:
    """Size of the train split: on disk, as Arrow, and as the tensors the evaluator trains on.

    The in-memory sizes are those of the first row group scaled to every list: what loading the
    split whole (all columns, or the evaluator's columns, or its model inputs) would hold.
    """
    from relist.data.features import FeatureStore
    from relist.data.stream import ParquetStream
    from relist.train.evaluator import LABELS, labelled_batch

    files = sorted((data / "lists" / "train").glob("*.parquet"))
    lists = sum(pq.read_metadata(f).num_rows for f in files)
    group = pq.ParquetFile(files[0]).read_row_group(0)
    first_lists = next(iter(ParquetStream(files[0], LABELS, group.num_rows)))
    tensors = labelled_batch(FeatureStore.from_dir(data), first_lists)
    per_list = {"arrow_mb_all_columns": group.nbytes, "arrow_mb_evaluator_columns": group.select(list(LABELS)).nbytes,
                "evaluator_tensors_mb": sum(t.element_size() * t.nelement() for t in tensors.values())}
    return {"train_lists": lists, "shards": len(files), "rows_per_row_group": group.num_rows,
            "parquet_mb": sum(f.stat().st_size for f in files) / 2**20,
            **{name: size / group.num_rows * lists / 2**20 for name, size in per_list.items()}}


def prior_ranker(data: Path, samples: int, work: Path) -> Path:
    """The fine-ranking teacher the evaluator's heads start from: ranking_teacher.yaml, one epoch on
    ``samples`` training samples (cached)."""
    from relist.io.config import load_config
    from relist.models.ranking.config import RankingConfig
    from relist.train.ranking import train_ranking

    cfg = load_config(relist_config("ranking_teacher.yaml"), RankingConfig)
    cfg = cfg.model_copy(update={"max_train_samples": samples,
                                 "train": cfg.train.model_copy(update={"epochs": 1, "num_threads": 1})})
    out = work / f"ranker-{data_key(data)}"
    cached(out, {"data": data_key(data), "config": cfg.model_dump(mode="json")},
           lambda run_dir: train_ranking(cfg, data, run_dir))
    return out


def run(cfg: Config, work: Path) -> dict:
    from relist.io.config import load_config
    from relist.train.evaluator import EvaluatorTrainConfig

    data = repo_path(cfg.data) if cfg.data else simulated_logs(cfg.logs, work)
    config = relist_config(cfg.config) if not Path(cfg.config).parent.parts else repo_path(cfg.config)
    evaluator = load_config(config, EvaluatorTrainConfig)
    ranker = str(prior_ranker(data, cfg.ranker_samples, work)) if evaluator.model.prior else None
    size = data_size(data)
    runs = []
    for procs in cfg.procs:
        load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        out = work / f"run-{procs}-processes"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run each time: nothing resumes
        ranks, wall = in_fresh_processes(f"{__name__}:train_worker", {
            "data": str(data), "config": str(config), "steps": cfg.steps, "valid_lists": cfg.valid_lists,
            "device": cfg.device, "batch_size": cfg.batch_size, "ranker": ranker, "out": str(out)}, procs)
        runs.append({"processes": procs, "load_average_1m_before": load, "wall_seconds_with_launch": wall,
                     "ranks": ranks, "lists_seen": sum(r["steps"] * r["batch_size"] for r in ranks),
                     "samples_per_s": ranks[0]["samples_per_s"],
                     "train_seconds": max(r["train_seconds"] for r in ranks),
                     "peak_rss_mb_max": max(r["peak_rss_mb"] for r in ranks)})
    for one in runs:
        one["speedup_vs_first"] = one["samples_per_s"] / runs[0]["samples_per_s"]
    stream = None
    if cfg.stream_pass:
        stream = in_fresh_processes(f"{__name__}:stream_worker", {
            "data": str(data), "batch_size": cfg.batch_size or evaluator.train.batch_size})[0][0]
    show(runs, stream, size)
    return {"data": size, "data_dir": str(data), "device": cfg.device, "config": str(config),
            "prior_from_ranker": ranker is not None, "load_average_1m_at_end": os.getloadavg()[0], "runs": runs,
            "peak_rss_mb_max": max(r["peak_rss_mb_max"] for r in runs),
            "peak_rss_over_evaluator_tensors": max(r["peak_rss_mb_max"] for r in runs) / size["evaluator_tensors_mb"],
            "stream_whole_split": stream}


def show(runs: list[dict], stream: dict | None, size: dict) -> None:
    table = Table(title=f"Evaluator training streamed from {size['train_lists']:,} lists "
                        f"({size['parquet_mb']:,.0f} MB Parquet, ~{size['arrow_mb_all_columns']:,.0f} MB "
                        f"as Arrow, ~{size['evaluator_tensors_mb']:,.0f} MB as model inputs)")
    for col in ("procs", "steps", "batch", "lists seen", "train s", "samples/s", "speedup", "peak RSS MB"):
        table.add_column(col, justify="right")
    for one in runs:
        first = one["ranks"][0]
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in one["ranks"])
        table.add_row(str(one["processes"]), str(first["steps"]), str(first["batch_size"]),
                      f"{one['lists_seen']:,}", f"{one['train_seconds']:.1f}", f"{one['samples_per_s']:,.0f}",
                      f"{one['speedup_vs_first']:.2f}x", peaks)
    Console().print(table)
    if stream is not None:
        Console().print(f"whole train split streamed in one process, no model: {stream['lists']:,} lists in "
                        f"{stream['seconds']:.0f} s, peak RSS {stream['peak_rss_mb']:.0f} MB "
                        f"({stream['peak_rss_mb_after_100_batches']:.0f} MB after the first 100 batches)")
