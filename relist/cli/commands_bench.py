"""`relist bench STUDY`: the benchmark harness of a repository checkout (``python -m benchmarks STUDY``).

The studies live in the repository's ``benchmarks/`` package, not in the relist package: an
installed wheel has no benchmarks to run, and says so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer


class UnknownStudy(ValueError):
    """A study name with no benchmarks/studies/<name>.py in the checkout."""


def checkout_root() -> Path | None:
    """The repository checkout whose ``benchmarks/`` package goes with this relist, if there is one."""
    import relist

    for root in (Path(relist.__file__).resolve().parent.parent, Path.cwd()):
        if (root / "benchmarks" / "harness.py").is_file():
            return root
    return None


def bench(
    study: str = typer.Argument(..., help="Study name (benchmarks/studies/STUDY.py)."),
    config: Path = typer.Option(None, help="Config file (default benchmarks/configs/STUDY.yaml)."),
    out: Path = typer.Option(None, help="Result JSON (default benchmarks/results/STUDY.json)."),
    work: Path = typer.Option(None, help="Cache of data and models (default $TMPDIR/relist_bench/STUDY)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a config value: key.path=value (YAML)."),
) -> None:
    """Run one benchmark study, check its expected figures, write its stamped JSON; exit 1 when one misses."""
    root = checkout_root()
    if root is None:
        typer.echo("relist bench runs the benchmarks/ package of a relist repository checkout, and none was "
                   "found (this relist is installed without it; run from a clone: python -m benchmarks STUDY)",
                   err=True)
        raise typer.Exit(2)
    studies = sorted(p.stem for p in (root / "benchmarks" / "studies").glob("*.py") if not p.stem.startswith("_"))
    if study not in studies:
        raise UnknownStudy(f"no study '{study}' (known: {', '.join(studies)})")
    args = [study]
    for flag, value in (("--config", config), ("--out", out), ("--work", work)):
        if value is not None:
            args += [flag, str(value.resolve())]
    for item in overrides or []:
        args += ["--set", item]
    raise typer.Exit(subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=root).returncode)


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("bench")(bench)
