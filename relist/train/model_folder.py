"""Trainers write their model folder completely or not at all (the read side is relist.io.model_folder)."""

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

from relist.io.model_folder import is_complete_model, partial_dir
from relist.train.trainer import FitResult

P = ParamSpec("P")
R = TypeVar("R")


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
