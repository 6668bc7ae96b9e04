"""Streaming log generation: lists per second and peak memory for 100k and 1M lists (m=50, n=10).

Each size runs in a fresh process (benchmarks.processes) so its peak RSS is its own; the point is
that memory does not grow with the number of lists, nor does the time per list. Throughput is also
given per CPU second, which a shared machine's load disturbs less than wall time.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from benchmarks.common import repo_path
from benchmarks.processes import in_fresh_processes


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sizes: list[int] = Field([100_000, 1_000_000], description="lists simulated, one fresh process each")
    world: str | None = Field(None, description="simulator config file; null: the default world")


def generate(n_requests: int, world: str | None, work: str) -> dict:
    """Simulate ``n_requests`` lists into a temporary directory under ``work``; this process's figures."""
    from relist.sim.config import load_sim_config
    from relist.sim.logs import simulate_logs
    from relist.sim.world import build_world

    out = Path(tempfile.mkdtemp(prefix="generated_", dir=work))
    try:
        built = build_world(load_sim_config(repo_path(world) if world else None))
        start, cpu = time.perf_counter(), time.process_time()
        summary = simulate_logs(built, out, n_requests, progress=False)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    finally:
        shutil.rmtree(out)
    return {"lists": n_requests, "seconds": seconds, "lists_per_s": n_requests / seconds,
            "cpu_seconds": cpu_seconds, "lists_per_cpu_s": n_requests / cpu_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "parquet_mb": size / 2**20, "shards": summary["shards"]}


def run(cfg: Config, work: Path) -> dict:
    rows = [in_fresh_processes(f"{__name__}:generate", {"n_requests": size, "world": cfg.world,
                                                        "work": str(work)})[0][0] for size in cfg.sizes]
    for row in rows:
        row.pop("rank")
    table = Table(title="Simulator log generation (m=50, n=10)")
    for col in ("lists", "seconds", "lists/s", "lists/CPU s", "peak RSS MB", "Parquet MB", "shards"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['lists']:,}", f"{r['seconds']:.1f}", f"{r['lists_per_s']:,.0f}",
                      f"{r['lists_per_cpu_s']:,.0f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['parquet_mb']:.0f}", str(r["shards"]))
    Console().print(table)
    return {"rows": rows, "peak_rss_growth": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"],
            "throughput_largest_over_smallest": rows[-1]["lists_per_cpu_s"] / rows[0]["lists_per_cpu_s"],
            "min_lists_per_cpu_s": min(r["lists_per_cpu_s"] for r in rows)}
