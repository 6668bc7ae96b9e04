"""`relist demo`: the whole pipeline end to end on the simulator, with an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo_out"), help="Output directory; steps whose inputs did not change are skipped."),
    config: Path = typer.Option(None, help="Simulator YAML config (default: the embedded default world)."),
    quick: bool = typer.Option(False, help="Small sizes for a first look in about two minutes."),
    force: bool = typer.Option(False, help="Rerun every step even if its inputs did not change."),
    data: Path = typer.Option(None, help="Train on this log directory (DESIGN §4 schema) instead of simulating; "
                              "without a simulator behind it, policies are compared by offline scores only."),
    with_coarse: bool = typer.Option(False, help="Also train the coarse-ranking DSSM students (after the "
                                     "re-ranking models; no re-ranking policy uses them)."),
) -> None:
    """Simulate logs (or read yours), train every model, evaluate all policies and write report.html."""
    from relist.demo.pipeline import run_demo

    if data is not None and config is not None:
        raise typer.BadParameter("give --config (a simulator world) or --data (your logs), not both")
    run_demo(out, config, quick, force, data, with_coarse=with_coarse)


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("demo")(demo)
