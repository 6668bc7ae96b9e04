"""The main job: simulate → train → evaluate → benchmark → report → export, each step rerunnable.

`relist demo` is a thin CLI over :func:`run_demo`. Models train from the
simulated logs only; the simulator's truth is used by the evaluation steps
alone. The quick mode shrinks every size for a first look in about two
minutes; the default fits in about fifteen on a quiet 2-core machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel

from relist.demo.steps import Step, console, run_steps
from relist.io.config import CONFIGS, load_config

BASELINES = ("prm", "dlcm", "seq2slate")


@dataclass(frozen=True)
class DemoSizes:
    requests: int = 60_000  # logged lists (train + valid + test)
    eval_requests: int = 1000  # test requests in the simulated A/B table
    epochs: int = 4  # for every supervised model
    generator_steps: int = 120  # policy-gradient steps per generator epoch
    latency_requests: int = 100  # single requests timed per policy
    sweep_requests: int = 100  # test requests of the objective sweep (clicks -> spend, same models)
    sweep_points: int = 5  # weights on that line, ends included


QUICK = DemoSizes(requests=8_000, eval_requests=150, epochs=1, generator_steps=25, latency_requests=20,
                  sweep_requests=30, sweep_points=3)


def _config(cls: type[BaseModel], file: str, sizes: DemoSizes, **updates) -> BaseModel:
    """A shipped config with the demo's sizes: fewer epochs, fewer steps; nothing else changes."""
    cfg = load_config(CONFIGS / file, cls)
    train = {"epochs": sizes.epochs}
    if cfg.train.max_steps_per_epoch is not None:
        train["max_steps_per_epoch"] = sizes.generator_steps
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train), **updates})


def _inputs(*files: str) -> dict:
    """A step's settings: the shipped config files it reads (editing one reruns the step and what follows)."""
    return {name: (CONFIGS / name).read_text() for name in files}


def _step_simulate(config: Path | None, sizes: DemoSizes) -> Callable[[Path], dict]:
    def run(out: Path) -> dict:
        from relist.sim.config import load_sim_config
        from relist.sim.logs import simulate_logs
        from relist.sim.world import build_world

        return {"summary": simulate_logs(build_world(load_sim_config(config)), out, sizes.requests)}

    return run


def _step_ranking(data: Path, file: str, sizes: DemoSizes, teacher: Path | None = None):
    def run(out: Path) -> dict:
        from relist.eval.ranking import evaluate_ranking
        from relist.models.ranking.config import RankingConfig
        from relist.train.api import train_model

        updates = {}
        if teacher is not None:
            distill = _config(RankingConfig, file, sizes).distill
            updates["distill"] = distill.model_copy(update={
                "teacher_run": str(teacher), "stage1_epochs": min(distill.stage1_epochs, max(1, sizes.epochs // 2))})
        result = train_model(_config(RankingConfig, file, sizes, **updates), data, out)
        return {"best_epoch": result.best_epoch, "test": evaluate_ranking(out, data, "test")}

    return run


def _step_evaluator(data: Path, ranker: Path, sizes: DemoSizes):
    def run(out: Path) -> dict:
        from relist.train.api import train_model
        from relist.train.evaluator import EvaluatorTrainConfig

        result = train_model(_config(EvaluatorTrainConfig, "evaluator.yaml", sizes), data, out, ranker=ranker)
        return {"best_epoch": result.best_epoch, "best_metric": result.best_metric}

    return run


def _step_generator(data: Path, models: Path, sizes: DemoSizes, file: str = "generator.yaml"):
    def run(out: Path) -> dict:
        from relist.data.features import FeatureStore, catalogue_price
        from relist.train.api import train_model
        from relist.train.generator import GeneratorTrainConfig

        cfg = _config(GeneratorTrainConfig, file, sizes)
        if cfg.model.conditioned and catalogue_price(FeatureStore.from_dir(data)) <= 0:
            return {"trained": False, "why": "no item prices in these logs: no spend to trade clicks for"}
        result = train_model(cfg, data, out, ranker=models / "ranker", evaluator=models / "evaluator")
        return {"best_epoch": result.best_epoch, "best_metric": result.best_metric}

    return run


def _step_baseline(data: Path, kind: str, sizes: DemoSizes):
    def run(out: Path) -> dict:
        from relist.train.api import train_model
        from relist.train.baselines import BaselineTrainConfig

        cfg = _config(BaselineTrainConfig, "baselines.yaml", sizes)
        result = train_model(cfg.model_copy(update={"model": cfg.model.model_copy(update={"kind": kind})}), data, out)
        return {"best_epoch": result.best_epoch, "best_metric": result.best_metric}

    return run


def _step_rerank(data: Path, models: Path, sizes: DemoSizes):
    def run(out: Path) -> dict:
        from relist.eval.rerank import RerankEvalConfig, evaluate_rerank, print_rerank_report

        cfg = load_config(CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
        report = evaluate_rerank(cfg.model_copy(update={"requests": sizes.eval_requests}), data, models)
        print_rerank_report(report, console=console)
        (out / "rerank.json").write_text(json.dumps(report, indent=2, default=float))
        return {"table": str(out / "rerank.json"), "skipped": report.get("skipped", [])}

    return run


def _step_export(data: Path, models: Path, model_dir: Path, name: str):
    def run(out: Path) -> dict:
        from relist.io.model_folder import is_complete_model
        from relist.serve.registry import export_version, set_current

        if (model_dir / "versions" / name).is_dir():  # same models as an earlier run: serve that version
            set_current(model_dir, name)
            return {"version": str(model_dir / "versions" / name)}
        from relist.rerank.registry import ROLES

        roles = {role: models / role for role in ROLES if is_complete_model(models / role)}
        version = export_version(model_dir, name, data, roles, activate=True)
        return {"version": str(version)}

    return run


def _step_logs(src: Path, data: Path) -> Callable[[Path], dict]:
    """Given logs instead of a simulation: validated as they are, or split into ``data`` (relist.data.split)."""

    def run(out: Path) -> dict:
        from relist.data.logs import read_items, read_lists, read_users
        from relist.data.split import SPLIT_RECORD, ready_logs

        if data != src:
            ready_logs(src, data, console.print)
            return {"data": str(src), "split": json.loads((data / SPLIT_RECORD).read_text())}
        read_items(data), read_users(data), read_lists(data, "test", 1)  # fail early, naming the file
        files = sorted(p for p in data.rglob("*.parquet"))
        return {"data": str(data), "files": {str(p.relative_to(data)): [p.stat().st_size, p.stat().st_mtime]
                                             for p in files}}

    return run


def run_demo(out: Path, config: Path | None = None, quick: bool = False, force: bool = False,
             data: Path | None = None, sizes: DemoSizes | None = None, with_coarse: bool = False) -> dict[str, dict]:
    """Run (or resume) the whole job under ``out``; returns every step's record.

    With ``data`` (logs in the DESIGN §4 schema: any ids, split or not) the job trains on those logs
    instead of simulating; without a simulator behind them, policies are compared by offline scores
    only. The coarse-ranking students (no re-ranking policy uses them) train only ``with_coarse``,
    after the re-ranking models.
    """
    from relist.demo.report import build_report
    from relist.eval.provenance import stamp

    sizes = sizes or (QUICK if quick else DemoSizes())
    out = out.resolve()
    models = out / "models"
    if data is None:
        data, source = out / "simulate", "simulate"
        settings = {"config": yaml.safe_load(Path(config).read_text()) if config else "default", **asdict(sizes)}
        first = Step(source, _step_simulate(config, sizes), settings)
    else:
        from relist.data.split import logs_fingerprint, ready_dir

        src, source = Path(data).resolve(), "logs"
        data = ready_dir(src, out / source)
        first = Step(source, _step_logs(src, data), {"data": str(src), "files": logs_fingerprint(src),
                                                     **asdict(sizes)})
    steps = [
        first,
        Step("models/ranker", _step_ranking(data, "ranking_teacher.yaml", sizes), _inputs("ranking_teacher.yaml"),
             (source,)),
        Step("models/evaluator", _step_evaluator(data, models / "ranker", sizes), _inputs("evaluator.yaml"),
             ("models/ranker",)),
        Step("models/generator", _step_generator(data, models, sizes), _inputs("generator.yaml"),
             ("models/evaluator",)),
        Step("models/generator_cmr", _step_generator(data, models, sizes, "generator_cmr.yaml"),
             _inputs("generator_cmr.yaml"), ("models/evaluator",)),
        *[Step(f"models/{kind}", _step_baseline(data, kind, sizes), _inputs("baselines.yaml"), (source,))
          for kind in BASELINES],
        Step("rerank", _step_rerank(data, models, sizes), _inputs("rerank_eval.yaml", "last.yaml"),
             ("models/ranker", "models/evaluator", "models/generator", *[f"models/{k}" for k in BASELINES])),
    ]
    coarse = [
        Step("models/coarse_plain", _step_ranking(data, "ranking_dssm.yaml", sizes), _inputs("ranking_dssm.yaml"),
             (source,)),
        Step("models/coarse", _step_ranking(data, "ranking_dssm_full.yaml", sizes, models / "ranker"),
             _inputs("ranking_dssm_full.yaml"), ("models/ranker",)),
    ] if with_coarse else []
    steps += coarse
    records = run_steps(steps, out, force)
    version = f"demo-{records['rerank']['digest']}"
    tail = [
        Step("report", build_report(out, data, records, sizes), {},
             ("rerank", "models/generator_cmr", *[step.name for step in coarse])),
        Step("export", _step_export(data, models, out / "model_dir", version), {}, ("rerank",)),
    ]
    records |= run_steps(tail, out, force, done=records)
    timings = {name: {"seconds": r["seconds"], "skipped": r.get("skipped", False)} for name, r in records.items()}
    (out / "timings.json").write_text(json.dumps(stamp({"quick": quick, "sizes": asdict(sizes), "steps": timings}),
                                                 indent=2))
    console.print(f"\n[bold green]report:[/bold green] {records['report']['report']}")
    console.print(f"[bold green]serve the trained models:[/bold green] relist serve --model-dir {out / 'model_dir'}"
                  " --port 8000   (then open http://127.0.0.1:8000/docs)")
    return records
