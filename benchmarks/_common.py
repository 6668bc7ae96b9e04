"""What every benchmark records next to its figures: the machine and the command (relist.eval.provenance)."""

from __future__ import annotations

import json
from pathlib import Path

from relist.eval.provenance import machine, stamp

RESULTS = Path(__file__).resolve().parent / "results"
__all__ = ["RESULTS", "machine", "write_result"]


def write_result(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/<name>.json`` stamped with the command, machine and time of the run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(stamp(payload), indent=2, default=float))
    return path
