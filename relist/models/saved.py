"""A trained model directory: weights (safetensors) next to a spec (YAML) that rebuilds the architecture.

Every trained model in relist is stored this way, so loading one never runs code from a file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel
from torch import nn

from relist.train.config import load_config, save_config
from relist.train.trainer import BEST, load_weights

S = TypeVar("S", bound=BaseModel)
M = TypeVar("M", bound=nn.Module)


def save_spec(spec: BaseModel, model_dir: str | Path, spec_file: str) -> None:
    save_config(spec, Path(model_dir) / spec_file)


def load_saved(model_dir: str | Path, spec_file: str, spec_cls: type[S], build: Callable[[S], M]) -> tuple[M, S]:
    """The model (eval mode, best weights) and its spec from ``model_dir``."""
    spec = load_config(Path(model_dir) / spec_file, spec_cls)
    model = build(spec)
    load_weights(model, Path(model_dir) / BEST)
    return model.eval(), spec
