"""Config files: read into a validated pydantic model, written next to the results they produced.

A run is reproducible only if its settings travel with it, so unknown keys are rejected (a typo must
not silently fall back to a default), and ``load_config``/``save_config`` work for any pydantic model.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# The shipped config files (installed as package data), each documenting every field it sets.
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


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
