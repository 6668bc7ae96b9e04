"""`relist eval offpolicy`: policies' values estimated from logs with the logging policy's propensities."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from relist.eval.provenance import write_stamped

console = Console()


def eval_offpolicy(
    data: Path = typer.Option(..., help="Log directory whose lists carry the propensity columns."),
    models: Path = typer.Option(..., help="Has teacher/ evaluator/ generator/ prm/ dlcm/ seq2slate/ (any)."),
    split: str = typer.Option("test", help="Split of the logs to evaluate on."),
    requests: int = typer.Option(20_000, help="The first requests of the split."),
    reward: str = typer.Option("ipv", help="Per-slot reward whose sum is estimated: ipv, pv or buys."),
    estimators: str = typer.Option(None, help="Comma-separated estimators (default: every one possible)."),
    resamples: int = typer.Option(500, help="Bootstrap resamples for the 95% CIs."),
    rerank_config: Path = typer.Option(None, help="Re-ranking config for building the policies "
                                                  "(default relist/configs/rerank_eval.yaml)."),
    out: Path = typer.Option(None, help="Write the report as JSON here (default: MODELS/offpolicy_eval.json)."),
) -> None:
    """Each policy's value from logs alone (IPS, SNIPS, independent, cascade, pseudo-inverse, DM, DR), with CIs."""
    from pydantic import ValidationError

    from relist.eval.offpolicy_report import OffPolicyConfig, evaluate_offpolicy, print_offpolicy_report

    settings = {"split": split, "requests": requests, "reward": reward, "resamples": resamples}
    if estimators:
        settings["estimators"] = tuple(name.strip() for name in estimators.split(",") if name.strip())
    try:
        cfg = OffPolicyConfig.model_validate(settings)
    except ValidationError as err:
        raise typer.BadParameter(" ".join(str(err).split())) from None
    report = evaluate_offpolicy(cfg, data, models, rerank_config)  # bad logs: relist.cli.main says where
    print_offpolicy_report(report, console)
    path = write_stamped(report, out if out is not None else models / "offpolicy_eval.json")
    console.print(f"wrote {path}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    eval_app.command("offpolicy")(eval_offpolicy)
