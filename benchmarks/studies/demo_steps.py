"""Per-step wall time of `relist demo` (or `--quick`), from a fresh output directory.

Runs the demo as `relist demo` would and reports each step's seconds and share of the run. On a
shared machine the absolute times inflate; the shares say which step dominates.

    python -m benchmarks demo_steps [--set quick=false] [--set data=LOGS_DIR]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from benchmarks.common import repo_path


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quick: bool = Field(True, description="`relist demo --quick`")
    data: str | None = Field(None, description="your logs instead of a simulation (`demo --data`)")
    with_coarse: bool = Field(False, description="also train the coarse-ranking students")


def run(cfg: Config, work: Path) -> dict:
    from relist.demo.pipeline import run_demo

    out = work / "demo"
    start = time.perf_counter()
    run_demo(out, quick=cfg.quick, data=repo_path(cfg.data) if cfg.data else None,
             with_coarse=cfg.with_coarse, force=True)
    wall = time.perf_counter() - start
    steps = {k: v["seconds"] for k, v in json.loads((out / "timings.json").read_text())["steps"].items()}
    total = sum(steps.values())
    table = Table(title=f"relist demo{' --quick' if cfg.quick else ''}: seconds per step")
    for col in ("step", "seconds", "share"):
        table.add_column(col, justify="right")
    for name, seconds in steps.items():
        table.add_row(name, f"{seconds:.1f}", f"{seconds / total:.1%}")
    table.add_row("total", f"{total:.1f}", f"(wall {wall:.1f} s)")
    Console().print(table)
    return {"wall_seconds": wall, "steps_seconds": {k: round(v, 1) for k, v in steps.items()},
            "steps_share": {k: round(v / total, 3) for k, v in steps.items()}}
