"""Streaming log generation: lists per second and peak memory for 100k and 1M lists (m=50, n=10).

Each size runs in a fresh process so its peak RSS is its own. Usage:
    python benchmarks/sim_generation.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402


def run_one(n_requests: int) -> dict:
    from relist.sim.config import load_sim_config
    from relist.sim.logs import simulate_logs
    from relist.sim.world import build_world

    out = Path(tempfile.mkdtemp(prefix="relist_gen_"))
    try:
        world = build_world(load_sim_config())
        start = time.perf_counter()
        summary = simulate_logs(world, out, n_requests, progress=False)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    finally:
        shutil.rmtree(out)
    return {"lists": n_requests, "seconds": seconds, "lists_per_s": n_requests / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "parquet_mb": size / 2**20, "shards": summary["shards"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    rows = []
    for size in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True,
                              check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = Table(title="Simulator log generation (m=50, n=10, default world)")
    for col in ("lists", "seconds", "lists/s", "peak RSS MB", "Parquet MB", "shards"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['lists']:,}", f"{r['seconds']:.1f}", f"{r['lists_per_s']:,.0f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['parquet_mb']:.0f}", str(r["shards"]))
    Console().print(table)
    print(write_result("sim_generation", {"rows": rows}))


if __name__ == "__main__":
    main()
