"""Training configuration: one validated object, read from a file and written next to its results.

A run is reproducible only if its settings travel with it, so every setting lives here (nothing
hides in keyword defaults of ``fit``), unknown keys are rejected (a typo must not silently fall back
to a default), and ``load_config``/``save_config`` work for any pydantic model, not just this one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


class TrainConfig(BaseModel):
    """Settings of :func:`relist.train.trainer.fit` (``batch_size`` is read by the data function)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; None: no clipping")
    seed: int = Field(0, ge=0)
    patience: int | None = Field(3, ge=1, description="epochs without progress before stopping; None: never")
    monitor: str = Field("loss", description="name of the validation metric that picks the best epoch")
    monitor_mode: Literal["max", "min"] = "min"
    max_steps_per_epoch: int | None = Field(None, ge=1)
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None: torch's default")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")


def load_config(path: str | Path, model_cls: type[M]) -> M:
    """Read a ``.yaml``/``.yml``/``.toml`` file into ``model_cls``, or raise :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"file {path}: cannot read ({err.strerror})") from err
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"file {path}: unknown format '{path.suffix}' (use .yaml, .yml or .toml)")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"file {path}: not valid {path.suffix[1:].upper()} ({err})") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"file {path}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        problems = [
            f"file {path}, field '{'.'.join(map(str, e['loc']))}': {e['msg']}"
            + ("" if e["type"] == "missing" else f" (got {e['input']!r})")
            for e in err.errors()
        ]
        raise ConfigError("\n".join(problems)) from None


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write ``cfg`` as YAML that :func:`load_config` reads back to an equal object."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
