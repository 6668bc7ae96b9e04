"""The one benchmark harness: a study, its config file, its expected figures, its stamped JSON.

A study is a module ``benchmarks/studies/<name>.py`` with a pydantic ``Config`` (``extra="forbid"``)
and ``run(cfg: Config, work: Path) -> dict`` (JSON-able results). Its settings live in one file,
``benchmarks/configs/<name>.yaml``; the key ``expected`` there is the harness's own: a mapping of dotted
result paths to bounds, e.g. ``{"rows.dssm.speedup": {">=": 50}}`` (operators ``>= <= > < ==``; several
in one mapping all have to hold). A missing figure fails. The harness runs the study, prints the
expectations as a table, writes the JSON stamped with the command and the machine (with the config,
the ``--set`` overrides and every expectation's outcome inside) and exits 1 when one misses — so a
benchmark that no longer reaches its figure fails, as allRank's ``expected_metrics`` do.

    python -m benchmarks STUDY [--config FILE] [--out FILE] [--work DIR] [--set key.path=value ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # the repository checkout
STUDIES = PACKAGE / "studies"
CONFIGS = PACKAGE / "configs"
RESULTS = PACKAGE / "results"
EXPECTED = "expected"
MISSING = object()
OPERATORS = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    ">": lambda value, bound: value > bound,
    "<": lambda value, bound: value < bound,
    "==": lambda value, bound: value == bound,
}


class StudyError(ValueError):
    """A study, config file or override the harness cannot use; the message says which and why."""


def known_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES.glob("*.py") if not p.stem.startswith("_"))


def load_study(name: str) -> ModuleType:
    """``benchmarks.studies.<name>``, checked to have ``Config`` and ``run``."""
    try:
        module = importlib.import_module(f"benchmarks.studies.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"benchmarks.studies.{name}":
            raise
        raise StudyError(f"no study '{name}' (known: {', '.join(known_studies())})") from None
    config = getattr(module, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)) or not callable(getattr(module, "run", None)):
        raise StudyError(f"study '{name}' ({module.__file__}) needs a pydantic Config and a run(cfg, work)")
    return module


def lookup(mapping: Any, path: str) -> Any:
    """The value at a dotted ``path`` (list items by index), or MISSING.

    Keys may hold dots themselves ("noisy_score_0.5"): at each level the longest run of segments
    that is a key wins.
    """
    parts, node = path.split("."), mapping
    while parts:
        if isinstance(node, Mapping):
            for size in range(len(parts), 0, -1):
                key = ".".join(parts[:size])
                if key in node:
                    node, parts = node[key], parts[size:]
                    break
            else:
                return MISSING
        elif isinstance(node, Sequence) and not isinstance(node, str) and parts[0].lstrip("-").isdigit():
            index = int(parts[0])
            if not -len(node) <= index < len(node):
                return MISSING
            node, parts = node[index], parts[1:]
        else:
            return MISSING
    return node


def apply_overrides(settings: dict, overrides: Sequence[str]) -> tuple[dict, dict[str, Any]]:
    """``settings`` with each ``key.path=value`` (value read as YAML) set; returns them and the overrides."""
    settings, applied = json.loads(json.dumps(settings)), {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise StudyError(f"--set {item!r}: expected key.path=value")
        if key == EXPECTED or key.startswith(f"{EXPECTED}."):
            raise StudyError(f"--set {item!r}: the expectations are not overridable; edit the config file")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise StudyError(f"--set {item!r}: the value is not valid YAML ({err})") from None
        node, parts = settings, key.split(".")
        while len(parts) > 1 and ".".join(parts) not in node:
            head = next((".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1) if ".".join(parts[:n]) in node),
                        parts[0])
            node = node.setdefault(head, {})
            if not isinstance(node, dict):
                raise StudyError(f"--set {item!r}: '{head}' is not a mapping of settings")
            parts = parts[len(head.split(".")):]
        node[".".join(parts)] = value
        applied[key] = value
    return settings, applied


def read_config(path: Path) -> tuple[dict, dict]:
    """A study's config file: (its settings, its expectations)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise StudyError(f"file {path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise StudyError(f"file {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise StudyError(f"file {path}: expected a mapping of settings, got {type(data).__name__}")
    expected = data.pop(EXPECTED, None) or {}
    if not isinstance(expected, dict):
        raise StudyError(f"file {path}: '{EXPECTED}' must map result paths to bounds")
    for figure, bounds in expected.items():
        if not isinstance(bounds, dict) or not bounds or set(bounds) - set(OPERATORS):
            raise StudyError(f"file {path}: {EXPECTED}.{figure}: bounds must be a mapping with "
                             f"{', '.join(OPERATORS)} (got {bounds!r})")
    return data, expected


def validated(config_cls: type[BaseModel], settings: dict, path: Path) -> BaseModel:
    try:
        return config_cls.model_validate(settings)
    except ValidationError as err:
        raise StudyError("\n".join(f"file {path}, field '{'.'.join(map(str, e['loc']))}': {e['msg']}"
                                   for e in err.errors())) from None


def check(expected: dict[str, dict], results: dict) -> list[dict]:
    """Every expectation against ``results``: figure, bound, value, passed."""
    rows = []
    for figure, bounds in expected.items():
        value = lookup(results, figure)
        for op, bound in bounds.items():
            ok = value is not MISSING and _holds(op, value, bound)
            rows.append({"figure": figure, "bound": f"{op} {bound}",
                         "value": "missing" if value is MISSING else value, "passed": ok})
    return rows


def _holds(op: str, value: Any, bound: Any) -> bool:
    if op == "==":
        return value == bound
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return False
    return OPERATORS[op](value, bound)


def print_expectations(name: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: expected figures")
    for column in ("figure", "bound", "value", "result"):
        table.add_column(column, justify="right" if column in ("bound", "value") else "left")
    for row in rows:
        value = row["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(row["figure"], row["bound"], shown, "pass" if row["passed"] else "[red]FAIL[/red]")
    Console(width=160).print(table)


def run_study(name: str, config: Path | None = None, out: Path | None = None, work: Path | None = None,
              overrides: Sequence[str] = ()) -> tuple[dict, Path]:
    """Run one study end to end; returns its stamped record and where it was written."""
    from relist.eval.provenance import stamp

    module = load_study(name)
    config = Path(config) if config is not None else CONFIGS / f"{name}.yaml"
    settings, expected = read_config(config)
    settings, applied = apply_overrides(settings, overrides)
    cfg = validated(module.Config, settings, config)
    work = Path(work) if work is not None else Path(tempfile.gettempdir()) / "relist_bench" / name
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = json.loads(json.dumps(module.run(cfg, work), default=_json_default))
    seconds = time.perf_counter() - start
    rows = check(expected, results)
    record = stamp({"study": name, "config_file": _shown(config), "config": cfg.model_dump(mode="json"),
                    "overrides": applied, "work": str(work), "seconds": seconds,
                    "load_average_1_5_15min_at_end": os.getloadavg(),
                    "passed": all(row["passed"] for row in rows), "expectations": rows, "results": results})
    out = Path(out) if out is not None else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=_json_default))
    return record, out


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Run one study, check its expected "
                                "figures, write its stamped JSON; exit 1 when a figure misses.")
    p.add_argument("study", help=f"one of: {', '.join(known_studies())}")
    p.add_argument("--config", type=Path, help="config file (default benchmarks/configs/STUDY.yaml)")
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/STUDY.json)")
    p.add_argument("--work", type=Path, help="cache of data and models (default $TMPDIR/relist_bench/STUDY)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.path=value",
                   help="override a config value (YAML), e.g. --set seeds=1; recorded in the JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        record, out = run_study(args.study, args.config, args.out, args.work, args.overrides)
    except StudyError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        print("  what to do: fix the study name, config file or --set named above "
              "(benchmarks/configs/STUDY.yaml documents a study's settings)", file=sys.stderr)
        return 2
    print_expectations(args.study, record["expectations"])
    failed = [row["figure"] for row in record["expectations"] if not row["passed"]]
    print(f"wrote {out}")
    if failed:
        print(f"{len(failed)} expectation(s) missed: {', '.join(dict.fromkeys(failed))}", file=sys.stderr)
        return 1
    return 0
