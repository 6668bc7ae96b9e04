"""A trained model directory: weights (safetensors) next to a spec (YAML) that rebuilds the architecture.

Every trained model in relist is stored this way, so loading one never runs code from a file.

A model folder is complete or absent: trainers decorated with :func:`builds_model_folder` work in
a hidden sibling (``.<name>.partial``) and rename it into place once spec and weights are written,
so a crash or a reader at the wrong moment never sees half a model. :func:`is_complete_model` is
what readers (policy building, the demo's export) check before they load a folder.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch.distributed as dist
from pydantic import BaseModel
from torch import nn

from relist.train.config import load_config, save_config
from relist.train.trainer import BEST, FitResult, load_weights

S = TypeVar("S", bound=BaseModel)
M = TypeVar("M", bound=nn.Module)
P = ParamSpec("P")
R = TypeVar("R")

# The spec file each kind of model folder has (evaluator, generator, baseline, ranking run).
SPEC_FILES = ("evaluator.yaml", "generator.yaml", "baseline.yaml", "ranking_config.yaml")
PARTIAL = ".partial"


def save_spec(spec: BaseModel, model_dir: str | Path, spec_file: str) -> None:
    save_config(spec, Path(model_dir) / spec_file)


def load_saved(model_dir: str | Path, spec_file: str, spec_cls: type[S], build: Callable[[S], M]) -> tuple[M, S]:
    """The model (eval mode, best weights) and its spec from ``model_dir``."""
    spec = load_config(Path(model_dir) / spec_file, spec_cls)
    model = build(spec)
    load_weights(model, Path(model_dir) / BEST)
    return model.eval(), spec


def is_complete_model(path: str | Path) -> bool:
    """Whether ``path`` holds a finished model: weights and a spec (a folder still training has neither
    at its final name; one left from an older, interrupted run may lack the spec)."""
    path = Path(path)
    return (path.is_dir() and not path.name.endswith(PARTIAL) and (path / BEST).is_file()
            and any((path / name).is_file() for name in SPEC_FILES))


def incomplete_reason(path: str | Path) -> str:
    path = Path(path)
    if not path.is_dir():
        return f"no {path}"
    if not (path / BEST).is_file():
        return f"{path} is not a complete model (no {BEST}: training did not finish)"
    return f"{path} is not a complete model (no spec file {' / '.join(SPEC_FILES)})"


def partial_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}{PARTIAL}"


def builds_model_folder(train: Callable[P, R]) -> Callable[P, R]:
    """Make a trainer ``train(..., out_dir, resume=False, ...)`` write its folder completely or not at all.

    The trainer runs on ``.<out_dir>.partial`` (where ``resume`` finds an interrupted run), and rank 0
    renames that to ``out_dir`` when it returns; paths in a returned :class:`FitResult` are moved with it.
    Resuming a finished folder continues in place (it stays complete throughout).
    """
    signature = inspect.signature(train)

    @functools.wraps(train)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        final = Path(bound.arguments["out_dir"])
        work = partial_dir(final)
        main = os.environ.get("RANK", "0") == "0"  # the process group may not exist yet
        if bound.arguments.get("resume") and not work.exists() and is_complete_model(final):
            return train(*bound.args, **bound.kwargs)
        if main and not bound.arguments.get("resume"):
            shutil.rmtree(work, ignore_errors=True)
        elif main and not work.exists() and final.is_dir() and any(final.iterdir()):
            os.replace(final, work)  # an interrupted run from before folders were staged: resume it there
        if dist.is_initialized():
            dist.barrier()  # every rank sees the same folder before it reads checkpoints
        bound.arguments["out_dir"] = work
        result = train(*bound.args, **bound.kwargs)
        if main:
            _publish(work, final)
        if dist.is_initialized():
            dist.barrier()
        return _moved(result, work, final)

    return wrapper


def _publish(work: Path, final: Path) -> None:
    """Rename ``work`` to ``final``; an earlier folder there is moved aside first and then deleted."""
    old = None
    if final.exists():
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        else:
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _moved(result, work: Path, final: Path):
    if isinstance(result, FitResult) and result.best_path.is_relative_to(work):
        return dataclasses.replace(result, best_path=final / result.best_path.relative_to(work))
    if isinstance(result, tuple):
        return tuple(_moved(part, work, final) for part in result)
    return result
