"""Per-step wall time of `relist demo` (or `--quick`), from a fresh output directory.

    python benchmarks/demo_steps.py [--quick] [--data LOGS] [--out DIR] [--name NAME]

Runs the demo as `relist demo` would, then prints each step's seconds and share of the run and writes
``benchmarks/results/<name>.json`` (default ``demo_quick_steps`` / ``demo_steps``). On a shared
machine the absolute times inflate; the shares are what say which step dominates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

from relist.demo.pipeline import run_demo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, help="your logs instead of a simulation (`demo --data`)")
    parser.add_argument("--with-coarse", action="store_true")
    parser.add_argument("--out", type=Path, help="output directory (default: a new temporary one, removed)")
    parser.add_argument("--name", help="result file name")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="relist-demo-"))
    start = perf_counter()
    run_demo(out, quick=args.quick, data=args.data, with_coarse=args.with_coarse, force=True)
    wall = perf_counter() - start
    steps = json.loads((out / "timings.json").read_text())["steps"]
    total = sum(s["seconds"] for s in steps.values())
    print(f"\n{'step':20s} {'seconds':>8s} {'share':>6s}")
    for name, step in steps.items():
        print(f"{name:20s} {step['seconds']:8.1f} {step['seconds'] / total:6.1%}")
    print(f"{'total':20s} {total:8.1f}   (wall {wall:.1f} s)")
    name = args.name or ("demo_quick_steps" if args.quick else "demo_steps")
    payload = {"quick": args.quick, "data": None if args.data is None else str(args.data),
               "with_coarse": args.with_coarse, "wall_seconds": wall,
               "steps_seconds": {k: round(v["seconds"], 1) for k, v in steps.items()},
               "steps_share": {k: round(v["seconds"] / total, 3) for k, v in steps.items()}}
    print(f"wrote {write_result(name, payload)}")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
