"""What several studies need: paths from the repository, and data and models built once under ``--work``.

Everything cached here lives in a directory named after a digest of what made it (settings, and the
data it was made from), with a marker written last: other settings or other data never reuse it, an
interrupted build is redone, and a rerun with the same settings only evaluates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from benchmarks.harness import ROOT

DONE = ".done.json"  # written last into a cached directory: what made it, and when
WORLD_ROLES = ("ranker", "evaluator", "generator", "prm", "dlcm", "seq2slate")
OPTIONAL_ROLES = ("generator_cmr",)  # trained only where ``roles`` names them (the GRN conditioned on the objective)
READS = {"evaluator": ("ranker",), "generator": ("ranker", "evaluator"),
         "generator_cmr": ("ranker", "evaluator")}  # trained on top of these


def repo_path(path: str | Path) -> Path:
    """A config's path: absolute as given, relative to the repository checkout otherwise."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def relist_config(name: str) -> Path:
    """A config file shipped with relist (``relist/configs/NAME``)."""
    from relist.sim.config import DEFAULT_CONFIG

    return DEFAULT_CONFIG.parent / name


def selected(names: list[str] | None, known, setting: str) -> list[str]:
    """The entries of ``known`` that ``names`` picks (None: all of them); an unknown name is an error naming
    the setting."""
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"{setting}: unknown {unknown} (known: {', '.join(known)})")
    return list(names) if names is not None else list(known)


def digest(settings: object) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_key(data: Path) -> str:
    """What identifies a data directory: the digest it was cached under, else its files' names, sizes and times."""
    marker = Path(data) / DONE
    if marker.is_file():
        return json.loads(marker.read_text())["digest"]
    files = sorted(p for p in Path(data).rglob("*") if p.is_file())
    return digest([[str(p.relative_to(data)), p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def cached(path: Path, settings: dict, build: Callable[[Path], object]) -> dict:
    """``path`` built by ``build(path)`` unless a finished build with the same ``settings`` is there.

    Returns its marker: the digest, the settings, the seconds the build took when it ran, what
    ``build`` returned (when a dict) and whether it was built now.
    """
    key = digest(settings)
    marker = path / DONE
    if marker.is_file() and (done := json.loads(marker.read_text())).get("digest") == key:
        return done | {"built": False}
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    start = time.perf_counter()
    record = build(path)
    done = {"digest": key, "settings": settings, "seconds": time.perf_counter() - start,
            "record": record if isinstance(record, dict) else None}
    marker.write_text(json.dumps(done, indent=2, default=str))
    return done | {"built": True}


class SimulatedLogs(BaseModel):
    """A simulated world's logs: which world, how many requests, how they split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    world: str | None = Field(None, description="simulator config file (relist/configs/...); null: the default")
    requests: int = Field(20_000, ge=10)
    valid_frac: float = Field(0.1, gt=0, lt=1)
    test_frac: float = Field(0.1, gt=0, lt=1)
    shard_size: int = Field(200_000, ge=1)
    changes: dict = Field({}, description="sections of the world's config to change, e.g. {catalogue: {n_items: 1e4}}")


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def world_config(spec: SimulatedLogs):
    """The simulator config the logs are made from (the world file with ``changes`` merged in)."""
    from relist.sim.config import SimConfig, load_sim_config

    data = load_sim_config(repo_path(spec.world) if spec.world else None).model_dump(mode="json")
    return SimConfig.model_validate(merged(data, spec.changes))


def simulated_logs(spec: SimulatedLogs, work: Path) -> Path:
    """The logs of ``spec`` under ``work/logs-<digest>``, simulated once."""
    from relist.sim.logs import simulate_logs
    from relist.sim.world import build_world

    sim = world_config(spec)
    settings = {"sim": sim.model_dump(mode="json"), **spec.model_dump(exclude={"world", "changes"})}

    def build(out: Path) -> dict:
        return simulate_logs(build_world(sim), out, spec.requests, spec.valid_frac, spec.test_frac,
                             shard_size=spec.shard_size, progress=False)

    path = work / f"logs-{digest(settings)}"
    cached(path, settings, build)
    return path


class WorldModels(BaseModel):
    """The role models of a world trained from its logs, with the budgets cut to fit a 2-core machine.

    Every model starts from its shipped config (relist/configs/); ``None`` keeps the config's value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0)
    roles: list[str] = Field(list(WORLD_ROLES), description="which roles to train (relist.rerank.registry names; "
                                                            "generator_cmr only when named)")
    ranker_epochs: int | None = Field(None, ge=1)
    evaluator_epochs: int | None = Field(None, ge=1)
    generator_epochs: int | None = Field(2, ge=1)
    generator_steps: int | None = Field(40, ge=1, description="policy-gradient steps per generator epoch")
    generator_valid_requests: int | None = Field(500, ge=1)
    baseline_epochs: int | None = Field(2, ge=1)
    baseline_valid_lists: int | None = Field(1000, ge=1)


def _shipped(cls, file: str, seed: int, epochs: int | None, **train):
    from relist.io.config import load_config

    cfg = load_config(relist_config(file), cls)
    train = {"seed": seed, **({"epochs": epochs} if epochs else {}), **{k: v for k, v in train.items() if v}}
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def role_configs(spec: WorldModels) -> dict[str, BaseModel]:
    """Each role's training config: the shipped one with ``spec``'s seed and budgets."""
    from relist.models.ranking.config import RankingConfig
    from relist.train.baselines import BaselineTrainConfig
    from relist.train.evaluator import EvaluatorTrainConfig
    from relist.train.generator import GeneratorTrainConfig

    configs = {
        "ranker": _shipped(RankingConfig, "ranking_teacher.yaml", spec.seed, spec.ranker_epochs, num_threads=1),
        "evaluator": _shipped(EvaluatorTrainConfig, "evaluator.yaml", spec.seed, spec.evaluator_epochs),
    }
    for role in ("generator", "generator_cmr"):
        generator = _shipped(GeneratorTrainConfig, f"{role}.yaml", spec.seed, spec.generator_epochs,
                             max_steps_per_epoch=spec.generator_steps)
        if spec.generator_valid_requests:
            generator = generator.model_copy(update={"valid_requests": spec.generator_valid_requests})
        configs[role] = generator
    base = _shipped(BaselineTrainConfig, "baselines.yaml", spec.seed, spec.baseline_epochs)
    for kind in ("prm", "dlcm", "seq2slate"):
        cfg = base.model_copy(update={"model": base.model.model_copy(update={"kind": kind})})
        configs[kind] = cfg.model_copy(update={"valid_lists": spec.baseline_valid_lists}) \
            if spec.baseline_valid_lists else cfg
    return {role: configs[role] for role in spec.roles}


def train_world_models(data: Path, spec: WorldModels, work: Path) -> tuple[Path, dict[str, float]]:
    """The models of ``spec`` trained on ``data`` (one folder per role, relist.rerank.registry's names) under
    ``work/models-<digest of data and spec>``; each role is trained once. Returns the folder and the
    seconds each role's training took (when it ran)."""
    from relist.train.api import train_model

    unknown = sorted(set(spec.roles) - set(WORLD_ROLES) - set(OPTIONAL_ROLES))
    if unknown:
        raise ValueError(f"unknown roles {unknown} (known: {', '.join(WORLD_ROLES + OPTIONAL_ROLES)})")
    configs = role_configs(spec)
    models = work / f"models-{digest({'data': data_key(data), 'spec': spec.model_dump()})}"
    seconds = {}
    for role, cfg in configs.items():
        def train(out: Path, cfg=cfg) -> None:  # what a role reads comes from its sibling folders
            train_model(cfg, data, out, ranker=models / "ranker", evaluator=models / "evaluator")

        upstream = {r: digest((models / r / DONE).read_text()) for r in READS.get(role, ()) if r in configs}
        settings = {"data": data_key(data), "config": cfg.model_dump(mode="json"), "upstream": upstream}
        done = cached(models / role, settings, train)
        seconds[role] = done["seconds"]
        if done["built"]:
            print(f"trained {role} (seed {spec.seed}) in {seconds[role]:.0f} s", flush=True)
    return models, seconds
