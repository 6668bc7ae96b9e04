"""`relist eval rerank` (all re-ranking policies), `relist eval evaluator` (is the evaluator a good judge of
them?) and `relist train baseline` (PRM, DLCM, Seq2Slate)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from relist.eval.provenance import write_stamped
from relist.io.config import CONFIGS, load_config

console = Console()


def train_baseline(
    data: Path = typer.Option(..., help="Log directory (items, users, lists/{train,valid}/)."),
    out: Path = typer.Option(..., help="Run directory: weights, baseline.yaml, checkpoints, curves."),
    kind: str = typer.Option(None, help="prm, dlcm or seq2slate (overrides model.kind of the config)."),
    config: Path = typer.Option(CONFIGS / "baselines.yaml", help="Baseline training config (YAML)."),
    seed: int = typer.Option(None, help="Override train.seed."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
) -> None:
    """Train a re-ranking baseline on logged lists (clicks of the exposed items of each list)."""
    from relist.data.split import ready_logs_in
    from relist.train.api import summary, train_model
    from relist.train.baselines import BaselineTrainConfig

    settings = load_config(config, BaselineTrainConfig).model_dump()
    if kind is not None:
        settings["model"]["kind"] = kind
    if seed is not None:
        settings["train"]["seed"] = seed
    cfg = BaselineTrainConfig.model_validate(settings)
    result = train_model(cfg, ready_logs_in(data, out.parent, console.print), out, resume)
    console.print(f"{cfg.model.kind}: {summary(result, cfg.train.monitor)}")


def eval_rerank(
    data: Path = typer.Option(..., help="Simulated log directory (from `relist simulate`)."),
    models: Path = typer.Option(..., help="One folder per trained model role: ranker/ evaluator/ generator/ "
                                          "prm/ dlcm/ seq2slate/."),
    config: Path = typer.Option(CONFIGS / "rerank_eval.yaml", help="Evaluation config (YAML)."),
    requests: int = typer.Option(None, help="Override the number of test requests."),
    out: Path = typer.Option(None, help="Write the report as JSON here (default: MODELS/rerank_eval.json)."),
) -> None:
    """Every re-ranking policy vs logging and oracle: true reward, evaluator score, NDCG on logged clicks."""
    from relist.eval.rerank import RerankEvalConfig, evaluate_rerank, print_rerank_report

    cfg = load_config(config, RerankEvalConfig)
    if requests is not None:
        cfg = cfg.model_copy(update={"requests": requests})
    from relist.data.split import ready_logs_in

    report = evaluate_rerank(cfg, ready_logs_in(data, models, console.print), models)
    print_rerank_report(report, console)
    path = write_stamped(report, out if out is not None else models / "rerank_eval.json")
    console.print(f"wrote {path}")


def eval_evaluator(
    data: Path = typer.Option(..., help="Simulated log directory (from `relist simulate`): the truth judges."),
    models: Path = typer.Option(..., help="One folder per trained model role (evaluator/ needed; the others "
                                          "propose lists where present)."),
    config: Path = typer.Option(CONFIGS / "rerank_eval.yaml", help="Evaluation config (YAML): its policies "
                                                                     "propose, its rerank section sets rules, "
                                                                     "objective and beta."),
    requests: int = typer.Option(300, min=1, help="First test requests judged."),
    out: Path = typer.Option(None, help="Write the JSON here, and an HTML report with plots beside it "
                                        "(default: MODELS/evaluator_validity.json)."),
) -> None:
    """Off-policy evaluator validity: on what each generator proposes, the evaluator's bias, correlations
    with the truth and winner's curse."""
    from relist.data.split import ready_logs_in
    from relist.eval.evaluator_validity import evaluate_evaluator
    from relist.eval.report import figure_html, validity_plots, validity_table_html, write_report
    from relist.eval.rerank import RerankEvalConfig

    cfg = load_config(config, RerankEvalConfig)
    report = evaluate_evaluator(cfg, ready_logs_in(data, models, console.print), models, requests)
    for name, row in report["generators"].items():
        console.print(f"{name:>22}: predicted {row['predicted']:.3f}  true {row['true']:.3f}  "
                      f"bias {row['bias']:+.3f}  Kendall {row['kendall_across_requests']:.3f}")
    curse = report["winners_curse"]["pessimistic"]
    console.print(f"Kendall's tau within a request {report['kendall_within_request']:.3f}; the pick is worth "
                  f"{curse['true_of_pick']:.3f} true, the best proposal {curse['true_best']:.3f}")
    path = out if out is not None else models / "evaluator_validity.json"
    html = write_report(path.with_suffix(".html"), "relist evaluator validity",
                        [("Evaluator validity on every generator's proposals",
                          figure_html(validity_plots(report)) + validity_table_html(report))])
    path = write_stamped({k: v for k, v in report.items() if k != "scatter"}, path)
    console.print(f"wrote {path} and {html}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    train_app.command("baseline")(train_baseline)
    eval_app.command("rerank")(eval_rerank)
    eval_app.command("evaluator")(eval_evaluator)
