"""Scale-out: the DCWN evaluator trained from millions of simulated lists streamed from Parquet shards.

Two questions: does memory stay bounded by the batch, not the data (peak RSS of every process
against the size of the logs), and what do 2 DDP processes give over 1 on this machine (global
samples/s over a fixed number of steps, every run a fresh process tree so its peak RSS is its
own).  The training runs are ``train_evaluator`` itself, under plain ``python`` for 1 process
and ``torch.distributed.run`` for more; a last run streams the whole train split through
``ParquetStream`` in one process without a model, to show the reader alone stays flat over all of it.

Make the logs once, outside the repository (5,000,000 train lists in 20 shards, ~2 GB):
    relist simulate --out /tmp/scale_sim --requests 5102040 --valid-frac 0.01 --test-frac 0.01 \
        --shard-size 250000
Then:
    python benchmarks/scale_train.py --data /tmp/scale_sim [--procs 1 2] [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "relist" / "configs" / "evaluator.yaml"


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def train_worker(args: argparse.Namespace) -> dict:
    """One rank of a fixed-length evaluator training run (this process's own figures)."""
    import torch

    from relist.train.config import load_config
    from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator

    cfg = load_config(args.config, EvaluatorTrainConfig)
    train = {"epochs": 1, "max_steps_per_epoch": args.steps, "patience": None, "device": args.device}
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    train_cfg = cfg.train.model_copy(update=train)
    cfg = cfg.model_copy(update={"train": train_cfg, "valid_lists": args.valid_lists})
    rss_before = memory_mb("VmRSS")
    result, _ = train_evaluator(cfg, args.data, Path(args.worker) / "run")
    epoch = result.history[0]
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"rank": int(os.environ.get("RANK", 0)), "world_size": int(os.environ.get("WORLD_SIZE", 1)),
            "steps": int(epoch["step"]), "batch_size": train_cfg.batch_size,
            "train_seconds": epoch["seconds"], "samples_per_s": epoch["samples_per_s"],
            "train_loss": epoch["train_loss"], "rss_before_training_mb": rss_before,
            "peak_rss_mb": memory_mb("VmHWM"), "gpu_peak_mb": gpu_peak}


def stream_worker(args: argparse.Namespace) -> dict:
    """Read every list of the train split (the evaluator's columns) in one process, no model."""
    from relist.data.logs import split_path
    from relist.data.stream import ParquetStream
    from relist.train.evaluator import LABELS

    stream = ParquetStream(split_path(args.data, "train"), LABELS, args.batch_size or 128, seed=0)
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


def launch(procs: int, mode: str, args: argparse.Namespace, report: Path) -> tuple[list[dict], float]:
    """Run this script as ``mode`` in ``procs`` processes; returns each rank's figures and the wall time."""
    script = [__file__, f"--{mode}", str(report), "--data", str(args.data), "--config", str(args.config),
              "--steps", str(args.steps), "--valid-lists", str(args.valid_lists), "--device", args.device]
    if args.batch_size is not None:
        script += ["--batch-size", str(args.batch_size)]
    if procs == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                   *script]
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(report.glob("rank-*.json"))]
    return sorted(ranks, key=lambda r: r.get("rank", 0)), wall


def run_worker(args: argparse.Namespace) -> None:
    report = Path(args.worker or args.stream)
    figures = train_worker(args) if args.worker else stream_worker(args)
    (report / f"rank-{os.environ.get('RANK', 0)}.json").write_text(json.dumps(figures))


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--data", type=Path, default=Path("/tmp/scale_sim"), help="log directory")
    parser.add_argument("--config", type=Path, default=CONFIG, help="evaluator training config")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per process and run")
    parser.add_argument("--batch-size", type=int, help="lists per step and process (default: the config's)")
    parser.add_argument("--valid-lists", type=int, default=1000, help="valid lists for the one validation")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--name", default="scale_train_cpu", help="results file benchmarks/results/NAME.json")
    parser.add_argument("--no-stream-pass", action="store_true", help="skip the whole-split streaming run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.stream:
        run_worker(args)
        return
    if not (args.data / "lists" / "train").is_dir():
        sys.exit(f"{args.data}: no logs; make them first (see this script's docstring)")
    size = data_size(args.data)
    runs = []
    for procs in args.procs:
        load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        with tempfile.TemporaryDirectory(prefix="relist_scale_") as report:
            ranks, wall = launch(procs, "worker", args, Path(report))
        runs.append({"processes": procs, "load_average_1m_before": load, "wall_seconds_with_launch": wall,
                     "ranks": ranks,
                     "lists_seen": sum(r["steps"] * r["batch_size"] for r in ranks),
                     "samples_per_s": ranks[0]["samples_per_s"],
                     "train_seconds": max(r["train_seconds"] for r in ranks),
                     "peak_rss_mb_max": max(r["peak_rss_mb"] for r in ranks)})
    base = runs[0]["samples_per_s"]
    for run in runs:
        run["speedup_vs_first"] = run["samples_per_s"] / base
    stream = None
    if not args.no_stream_pass:
        with tempfile.TemporaryDirectory(prefix="relist_scale_") as report:
            stream = launch(1, "stream", args, Path(report))[0][0]
    show(runs, stream, size)
    print(write_result(args.name, {"data": size, "device": args.device, "config": str(args.config),
                                   "load_average_1m_at_end": os.getloadavg()[0], "runs": runs,
                                   "stream_whole_split": stream}))


def show(runs: list[dict], stream: dict | None, size: dict) -> None:
    table = Table(title=f"Evaluator training streamed from {size['train_lists']:,} lists "
                        f"({size['parquet_mb']:,.0f} MB Parquet, ~{size['arrow_mb_all_columns']:,.0f} MB "
                        f"as Arrow, ~{size['evaluator_tensors_mb']:,.0f} MB as model inputs)")
    for col in ("procs", "steps", "batch", "lists seen", "train s", "samples/s", "speedup", "peak RSS MB"):
        table.add_column(col, justify="right")
    for run in runs:
        first = run["ranks"][0]
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in run["ranks"])
        table.add_row(str(run["processes"]), str(first["steps"]), str(first["batch_size"]),
                      f"{run['lists_seen']:,}", f"{run['train_seconds']:.1f}", f"{run['samples_per_s']:,.0f}",
                      f"{run['speedup_vs_first']:.2f}x", peaks)
    Console().print(table)
    if stream is not None:
        Console().print(f"whole train split streamed in one process, no model: {stream['lists']:,} lists in "
                        f"{stream['seconds']:.0f} s, peak RSS {stream['peak_rss_mb']:.0f} MB "
                        f"({stream['peak_rss_mb_after_100_batches']:.0f} MB after the first 100 batches)")


if __name__ == "__main__":
    main()
