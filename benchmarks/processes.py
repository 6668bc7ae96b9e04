"""A study's function run in fresh processes, so each run's peak memory and timings are its own.

``in_fresh_processes("benchmarks.studies.x:measure", {"size": 10})`` starts ``python -m
benchmarks.processes`` (or ``torch.distributed.run`` with ``procs > 1``) from the repository root;
every process calls the function with the keyword arguments and writes what it returns (a JSON-able
dict) to ``rank-<RANK>.json``; the caller gets them in rank order with the wall time of the launch.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import ROOT


def in_fresh_processes(target: str, kwargs: dict, procs: int = 1) -> tuple[list[dict], float]:
    """Run ``module:function(**kwargs)`` in ``procs`` new processes (DDP ranks when more than one)."""
    with tempfile.TemporaryDirectory(prefix="relist_bench_") as report:
        args = ["benchmarks.processes", target, json.dumps(kwargs), report]
        if procs == 1:
            command = [sys.executable, "-m", *args]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                       "-m", *args]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        ranks = [json.loads(p.read_text()) for p in Path(report).glob("rank-*.json")]
    return sorted(ranks, key=lambda r: r.get("rank", 0)), wall


def main(target: str, kwargs: str, report: str) -> None:
    module, _, function = target.partition(":")
    figures = getattr(importlib.import_module(module), function)(**json.loads(kwargs))
    rank = os.environ.get("RANK", "0")
    (Path(report) / f"rank-{rank}.json").write_text(json.dumps({"rank": int(rank), **figures}))


if __name__ == "__main__":
    main(*sys.argv[1:])
