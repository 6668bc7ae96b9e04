"""`relist serve` and `relist export`: the HTTP service and the model versions it serves."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def serve(
    model_dir: Path = typer.Option(..., help="Model directory (versions/ and the CURRENT pointer)."),
    config: Path = typer.Option(None, help="Service YAML config (default: relist/configs/serve.yaml)."),
    host: str = typer.Option(None, help="Bind address (default from the config: 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default from the config)."),
    workers: int = typer.Option(None, help="Worker processes (default from the config)."),
) -> None:
    """Serve /v1/rerank and /v1/recommend over HTTP (OpenAPI at /docs and /openapi.json)."""
    import uvicorn

    from relist.serve.app import ENV_CONFIG, ENV_MODEL_DIR
    from relist.serve.config import load_serve_config
    from relist.serve.metrics import prepare_workers
    from relist.serve.registry import VERSIONS, current_name, load_version

    cfg = load_serve_config(config)
    load_version(Path(model_dir) / VERSIONS / current_name(model_dir))  # fail here, not in every worker
    os.environ[ENV_MODEL_DIR] = str(Path(model_dir).resolve())
    if config:
        os.environ[ENV_CONFIG] = str(Path(config).resolve())
    workers = workers or cfg.workers
    prepare_workers(workers)
    uvicorn.run("relist.serve.app:app_from_env", factory=True, host=host or cfg.host, port=port or cfg.port,
                workers=workers, log_level="info")


def export(
    model_dir: Path = typer.Option(..., help="Model directory to add the version to."),
    name: str = typer.Option(..., help="Version name (letters, digits, '.', '_', '-')."),
    data: Path = typer.Option(..., help="Log directory whose items.parquet/users.parquet are the catalogue."),
    evaluator: Path = typer.Option(None, help="`relist train evaluator` output: the list scorer."),
    generator: Path = typer.Option(None, help="`relist train generator` output: the GRN (stage 'grn')."),
    ranker: Path = typer.Option(None, help="Fine-ranking teacher run (ctr+next heads): stage 'beam' and "
                                           "/v1/recommend's fine ranking."),
    coarse: Path = typer.Option(None, help="DSSM student run: /v1/recommend's coarse ranking."),
    config: Path = typer.Option(None, help="Service YAML config whose `pipeline` section the version gets."),
    activate: bool = typer.Option(False, help="Point CURRENT at the new version (serving replicas follow)."),
) -> None:
    """Pack a catalogue and trained models into a checksummed model version."""
    from relist.serve.config import load_serve_config
    from relist.serve.registry import export_version

    cfg = load_serve_config(config)
    given = {"evaluator": evaluator, "generator": generator, "ranker": ranker, "coarse": coarse}
    models = {role: path for role, path in given.items() if path is not None}
    from relist.data.split import ready_logs_in

    data = ready_logs_in(data, model_dir, console.print)  # the catalogue in the ids the models were trained on
    path = export_version(model_dir, name, data, models, cfg.pipeline, activate)
    console.print(f"wrote {path}" + (" (now CURRENT)" if activate else ""))


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("export")(export)
