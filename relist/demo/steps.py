"""Rerunnable steps: a step whose inputs did not change is skipped.

Each step owns ``out/<name>/`` and writes ``step.json`` there with the hash
of its inputs and what it produced. Inputs are the step's own settings plus
the records of the steps it reads, so a change upstream reruns everything
downstream and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

console = Console()


@dataclass
class Step:
    name: str
    run: Callable[[Path], dict]  # gets its output directory, returns a JSON-able record
    settings: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()


def _digest(settings: dict, upstream: list[dict]) -> str:
    upstream = [{k: v for k, v in record.items() if k != "skipped"} for record in upstream]  # whether it ran now
    blob = json.dumps({"settings": settings, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_steps(steps: list[Step], out: Path, force: bool = False, done: dict[str, dict] | None = None
              ) -> dict[str, dict]:
    """Run the steps in order, skipping those already done with the same inputs; returns their records.

    ``done`` holds records of steps run earlier that these steps may come after.
    """
    records: dict[str, dict] = dict(done or {})
    for step in steps:
        step_dir = out / step.name
        digest = _digest(step.settings, [records[name] for name in step.after])
        marker = step_dir / "step.json"
        if not force and marker.exists():
            done = json.loads(marker.read_text())
            if done.get("digest") == digest:
                console.print(f"[dim]skip {step.name} (inputs unchanged)[/dim]")
                records[step.name] = {**done, "skipped": True}
                continue
        if step_dir.exists():
            shutil.rmtree(step_dir)
        step_dir.mkdir(parents=True)
        console.rule(f"[bold]{step.name}")
        start = time.perf_counter()
        record = step.run(step_dir)
        record = {"digest": digest, "seconds": time.perf_counter() - start, **record}
        marker.write_text(json.dumps(record, indent=2, default=str))
        records[step.name] = record
    return {step.name: records[step.name] for step in steps}
