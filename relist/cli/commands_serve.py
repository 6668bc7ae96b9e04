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
    """Serve /v1/rerank and /v1/recommend over HTTP (OpenAPI at /docs and /openapi.json).

    The served version is loaded and checked here first; a start that cannot serve ends with one line
    naming what is wrong and the versions that verify. With --workers > 1 this process then becomes a
    small supervisor (no model, no torch) and each worker loads the version itself.
    """
    import torch

    from relist.serve.app import ENV_CONFIG, ENV_MODEL_DIR, configure_logging, create_app
    from relist.serve.config import load_serve_config
    from relist.serve.http_server import limits_of, run, server_config, supervise_workers
    from relist.serve.metrics import prepare_workers

    configure_logging()
    cfg = load_serve_config(config)  # a bad config or no servable version: relist.cli.main says what to do
    torch.set_num_threads(cfg.torch_threads)
    app = create_app(model_dir, cfg)
    registry = app.state.registry
    if registry.refused_version is not None:
        console.print(f"WARNING: CURRENT names '{registry.refused_version}', which is refused; serving the last "
                      f"good version '{registry.pipeline.version}' (see the log line above; /readyz shows it "
                      "until CURRENT names a good version)", style="bold red", markup=False, soft_wrap=True)
    settings = dict(host=host or cfg.host, port=port or cfg.port, workers=workers or cfg.workers, **limits_of(cfg))
    if settings["workers"] == 1:
        run(server_config(app, **settings))
        return
    del app, registry  # gone for good at the exec below
    os.environ[ENV_MODEL_DIR] = str(Path(model_dir).resolve())
    if config:
        os.environ[ENV_CONFIG] = str(Path(config).resolve())
    prepare_workers(settings["workers"])
    supervise_workers({"app": "relist.serve.app:app_from_env", "factory": True, **settings})


def export(
    model_dir: Path = typer.Option(..., help="Model directory to add the version to."),
    name: str = typer.Option(..., help="Version name (letters, digits, '.', '_', '-')."),
    data: Path = typer.Option(..., help="Log directory whose items.parquet/users.parquet are the catalogue (its "
                                        "valid split chooses an 'auto' incumbent)."),
    models: Path = typer.Option(None, help="A directory with one folder per model role (ranker/ evaluator/ "
                                           "generator/ prm/ dlcm/ seq2slate/ coarse/), as `relist demo` writes; "
                                           "the per-role options below override it."),
    evaluator: Path = typer.Option(None, help="`relist train evaluator` output: the list scorer."),
    generator: Path = typer.Option(None, help="`relist train generator` output: the GRN (stage 'grn')."),
    ranker: Path = typer.Option(None, help="Fine-ranking teacher run (ctr+next heads): stage 'beam' and "
                                           "/v1/recommend's fine ranking."),
    coarse: Path = typer.Option(None, help="DSSM student run: /v1/recommend's coarse ranking."),
    config: Path = typer.Option(None, help="Service YAML config whose `pipeline` section the version gets."),
    activate: bool = typer.Option(False, help="Point CURRENT at the new version (serving replicas follow)."),
    onnx: bool = typer.Option(True, help="Also write the GRN, evaluator and teacher as ONNX graphs (onnx/ with "
                                         "its manifest onnx.json) and serve the version on them; --no-onnx: "
                                         "eager torch."),
) -> None:
    """Pack a catalogue and trained models into a checksummed model version."""
    from relist.rerank.registry import ROLES
    from relist.serve.config import load_serve_config
    from relist.serve.registry import export_version

    found = {role: models / role for role in ROLES if models is not None and (models / role).is_dir()}
    given = {"evaluator": evaluator, "generator": generator, "ranker": ranker, "coarse": coarse}
    roles = found | {role: path for role, path in given.items() if path is not None}
    from relist.data.split import ready_logs_in

    data = ready_logs_in(data, model_dir, console.print)  # the catalogue in the ids the models were trained on
    cfg = load_serve_config(config)
    path = export_version(model_dir, name, data, roles, cfg.pipeline, activate, onnx)
    console.print(f"wrote {path}" + (" (now CURRENT)" if activate else ""))


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("export")(export)
