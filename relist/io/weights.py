"""Weights files: safetensors with a checksum of their tensors, written atomically, checked when read.

Damaged bytes under an intact header would load without complaint and surface an epoch later as a NaN
loss blamed on the learning rate, so every file carries the sha256 of its tensors. Readers of trained
models and the trainer (for its checkpoints) share these functions, so they live below both.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

BEST = "model.safetensors"  # a model folder's (best) weights
DIGEST = "tensors_sha256"  # metadata key of a weights file / entry of a training state holding its checksum


class CheckpointError(RuntimeError):
    """A weights or training-state file that is missing, corrupt or does not fit; names the file."""


def digest(value: Any) -> str:
    """sha256 of a nest of dicts, lists and tensors (names, dtypes, shapes and bytes; other leaves by repr)."""
    hasher = hashlib.sha256()
    _feed(hasher, value)
    return hasher.hexdigest()


def _feed(hasher, value: Any) -> None:
    if isinstance(value, Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, Mapping):
        hasher.update(b"{")
        for key in sorted(value, key=str):
            hasher.update(repr(key).encode() + b":")
            _feed(hasher, value[key])
        hasher.update(b"}")
    elif isinstance(value, list | tuple):
        hasher.update(b"[")
        for item in value:
            _feed(hasher, item)
            hasher.update(b",")
        hasher.update(b"]")
    else:
        hasher.update(repr(value).encode())


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the model's state as safetensors with its checksum, atomically (a reader never sees half a
    file)."""
    metadata = {**(metadata or {}), DIGEST: digest(model.state_dict())}
    atomic_write(Path(path), lambda tmp: save_model(model, str(tmp), metadata=metadata))


def load_weights(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load safetensors weights into ``model`` (strict) and return the file's metadata (less the checksum,
    which the tensors must match; files written before checksums existed carry none)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        load_model(model, path, strict=True)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt safetensors file ({err})") from err
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model: {err}") from err
    stored = metadata.pop(DIGEST, None)
    if stored is not None and digest(model.state_dict()) != stored:
        raise CheckpointError(f"{path}: damaged weights: the tensor bytes fail the file's sha256 checksum "
                              "(the header is intact; the file changed after it was written)")
    return metadata


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary sibling, then rename it over ``path`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
