"""A trained model directory: weights (safetensors) next to a spec (YAML) that rebuilds the architecture.

Every trained model in relist is stored this way, so loading one never runs code from a file. This is
the read side, below every layer that loads models; the write side that stages a folder while it
trains is relist.train.model_folder.

A model folder is complete or absent: trainers work in a hidden sibling (:func:`partial_dir`,
``.<name>.partial``) and rename it into place once spec and weights are written, so a crash or a
reader at the wrong moment never sees half a model. :func:`is_complete_model` is what readers
(policy building, the demo's export) check before they load a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel
from torch import nn

from relist.io.config import load_config
from relist.io.weights import BEST, load_weights

S = TypeVar("S", bound=BaseModel)
M = TypeVar("M", bound=nn.Module)

# The spec file each kind of model folder has (evaluator, generator, baseline, ranking run).
SPEC_FILES = ("evaluator.yaml", "generator.yaml", "baseline.yaml", "ranking_config.yaml")
PARTIAL = ".partial"


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
