"""Versioned model directories and the atomic switch between them.

Layout::

    model_dir/
      CURRENT                      # the served version's name (replaced atomically)
      versions/<name>/
        manifest.json              # version, created, pipeline config, every file's sha256 and size
        items.parquet users.parquet  # the catalogue the FeatureStore is built from
        models/<role>/             # model.safetensors + its YAML spec, per role (e.g. evaluator)

A version is written to a hidden temporary directory and renamed into place, so
a reader never sees half of one. Loading verifies every checksum before it
reads a byte of a model, and weights go through safetensors only (no pickle).
A version that fails to verify, load or warm up raises :class:`VersionError`
and the :class:`Registry` keeps serving the one it had.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relist.data.features import FeatureStore
from relist.data.ids import VOCABULARY
from relist.serve.config import PipelineConfig
from relist.serve.pipeline import Pipeline, build_pipeline
from relist.serve.stages import Models

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
CATALOGUE = ("items.parquet", "users.parquet")
MODEL_SUFFIXES = (".safetensors", ".yaml", ".yml", ".json")  # never pickles: .pt/.pth/.pkl are not packed
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class VersionError(RuntimeError):
    """A model version that cannot be served; the message names the version and what is wrong."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = Field(1, ge=1, le=1)
    version: str
    created: str
    pipeline: PipelineConfig
    models: dict[str, str] = Field(description="role -> directory inside the version")
    files: dict[str, FileEntry] = Field(description="relative path -> checksum; every file of the version")


def _evaluator(path: Path, store: FeatureStore):
    from relist.rerank.list_scorer import ListScorer

    return ListScorer.load(path, store)


def _generator(path: Path, store: FeatureStore):
    from relist.models.generator import load_generator

    return load_generator(path)[0]


def _ranker(path: Path, store: FeatureStore):
    from relist.train.ranking import load_ranking_model

    return load_ranking_model(path)


def _coarse(path: Path, store: FeatureStore):
    from relist.models.ranking.scoring import CoarseScorer

    return CoarseScorer(_ranker(path, store), store)


# Role (a field of relist.serve.stages.Models) -> how its directory becomes a loaded model.
# Every loader reads weights through safetensors and specs through yaml.safe_load.
ROLE_LOADERS: dict[str, Callable[[Path, FeatureStore], object]] = {
    "evaluator": _evaluator, "generator": _generator, "ranker": _ranker, "coarse": _coarse,
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise VersionError(f"version name '{name}' is not allowed (letters, digits, '.', '_', '-'; max 128)")
    return name


def export_version(model_dir: str | Path, name: str, data_dir: str | Path,
                   models: Mapping[str, str | Path] | None = None,
                   pipeline: PipelineConfig | None = None, activate: bool = False) -> Path:
    """Pack a catalogue (``data_dir``'s items/users) and trained model directories into a new version.

    ``models`` maps a role (see ``ROLE_LOADERS``) to a training output directory; its top-level
    weights and configs are copied. The version appears atomically; with ``activate`` it becomes
    CURRENT. The packed version is loaded once before it is published, so a broken one never is.
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    check_name(name)
    models = dict(models or {})
    unknown = set(models) - set(ROLE_LOADERS)
    if unknown:
        raise VersionError(f"unknown model roles {sorted(unknown)} (known: {sorted(ROLE_LOADERS)})")
    final = model_dir / VERSIONS / name
    if final.exists():
        raise VersionError(f"{final}: version '{name}' already exists (versions are immutable)")
    tmp = model_dir / VERSIONS / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for file in CATALOGUE:
            shutil.copy2(data_dir / file, tmp / file)
        if (data_dir / VOCABULARY).is_file():  # the user's ids of the catalogue (relist.data.ids)
            shutil.copy2(data_dir / VOCABULARY, tmp / VOCABULARY)
        for role, src in models.items():
            files = [p for p in sorted(Path(src).iterdir()) if p.is_file() and p.suffix in MODEL_SUFFIXES]
            if not any(p.suffix == ".safetensors" for p in files):
                raise VersionError(f"{src}: no .safetensors weights for role '{role}'")
            (tmp / "models" / role).mkdir(parents=True)
            for p in files:
                shutil.copy2(p, tmp / "models" / role / p.name)
        manifest = Manifest(
            version=name, created=datetime.now(UTC).isoformat(timespec="seconds"),
            pipeline=pipeline or PipelineConfig(), models={role: f"models/{role}" for role in models},
            files={str(p.relative_to(tmp)): FileEntry(sha256=sha256_of(p), bytes=p.stat().st_size)
                   for p in sorted(tmp.rglob("*")) if p.is_file()},
        )
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        load_version(tmp, name)  # refuse to publish what would not serve
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if activate:
        set_current(model_dir, name)
    return final


def set_current(model_dir: str | Path, name: str) -> None:
    """Point CURRENT at a version: written beside it and renamed over it (atomic on POSIX)."""
    model_dir = Path(model_dir)
    check_name(name)
    if not (model_dir / VERSIONS / name / MANIFEST).is_file():
        raise VersionError(f"{model_dir / VERSIONS / name}: no such version")
    tmp = model_dir / f".{CURRENT}.{os.getpid()}.{threading.get_ident()}.tmp"
    with tmp.open("w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, model_dir / CURRENT)


def current_name(model_dir: str | Path) -> str:
    path = Path(model_dir) / CURRENT
    try:
        return check_name(path.read_text().strip())
    except OSError as err:
        raise VersionError(f"{path}: cannot read the pointer to the served version ({err.strerror})") from err


def verify(version_dir: Path, name: str | None = None) -> Manifest:
    """The version's manifest, once it names version ``name`` (default: the directory's name) and every
    listed file exists with its size and sha256 and none is unlisted."""
    path = version_dir / MANIFEST
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except OSError as err:
        raise VersionError(f"{path}: missing or unreadable manifest ({err.strerror}); incomplete?") from err
    except ValidationError as err:
        raise VersionError(f"{path}: invalid manifest: {err}") from err
    if manifest.version != (name or version_dir.name):
        raise VersionError(f"{path}: the manifest is of version '{manifest.version}', "
                           f"not '{name or version_dir.name}'")
    for rel, entry in manifest.files.items():
        file = (version_dir / rel).resolve()
        if not file.is_relative_to(version_dir.resolve()):
            raise VersionError(f"{path}: file '{rel}' points outside the version")
        if not file.is_file():
            raise VersionError(f"{version_dir}: file '{rel}' is missing (incomplete version)")
        if file.stat().st_size != entry.bytes:
            raise VersionError(f"{version_dir}: file '{rel}' has {file.stat().st_size} bytes, "
                               f"manifest says {entry.bytes} (truncated or corrupt)")
        if sha256_of(file) != entry.sha256:
            raise VersionError(f"{version_dir}: file '{rel}' fails its sha256 checksum (corrupt)")
    listed = set(manifest.files) | {MANIFEST}
    extra = [str(p.relative_to(version_dir)) for p in version_dir.rglob("*")
             if p.is_file() and str(p.relative_to(version_dir)) not in listed]
    if extra:
        raise VersionError(f"{version_dir}: files not in the manifest: {sorted(extra)}")
    for file in CATALOGUE:
        if file not in manifest.files:
            raise VersionError(f"{version_dir}: the manifest lists no '{file}'")
    return manifest


def load_version(version_dir: str | Path, name: str | None = None) -> Pipeline:
    """Verify, load and warm up a version; any failure is a :class:`VersionError` naming the version."""
    version_dir = Path(version_dir)
    manifest = verify(version_dir, name)
    try:
        store = FeatureStore.from_dir(version_dir)  # with its vocabulary.parquet, if any
        loaded = {}
        for role, rel in manifest.models.items():
            if role not in ROLE_LOADERS:
                raise VersionError(f"unknown model role '{role}'")
            loaded[role] = ROLE_LOADERS[role](version_dir / rel, store)
        return build_pipeline(manifest.version, store, manifest.pipeline, Models(**loaded))
    except VersionError as err:
        raise VersionError(f"{version_dir}: {err}") from err
    except Exception as err:  # a model file that verifies but does not load or run
        raise VersionError(f"{version_dir}: cannot be served: {type(err).__name__}: {err}") from err


class Registry:
    """The served pipeline of a model directory, swapped as one reference on reload."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self._lock = threading.Lock()
        self._refused: tuple[str, float] | None = None  # pointer value + mtime that failed, not retried
        self.pipeline: Pipeline = load_version(self.model_dir / VERSIONS / current_name(self.model_dir))

    def reload(self, name: str | None = None) -> tuple[Pipeline, Pipeline]:
        """Load ``name`` (default: what CURRENT says) and serve it; returns (old, new) pipelines.

        With a name, CURRENT is moved to it after it loaded, so every replica watching the
        pointer follows. Raises :class:`VersionError` and changes nothing when it does not load.
        """
        with self._lock:
            target = check_name(name) if name is not None else current_name(self.model_dir)
            old = self.pipeline
            if target == old.version and name is None:
                return old, old
            new = load_version(self.model_dir / VERSIONS / target)
            if name is not None:
                set_current(self.model_dir, target)
            self.pipeline = new
            log.info("model version %s -> %s", old.version, new.version)
            return old, new

    def pointer_changed(self) -> bool:
        """Whether CURRENT names another version than the served one (and not one already refused)."""
        pointer = self.model_dir / CURRENT
        try:
            name, mtime = pointer.read_text().strip(), pointer.stat().st_mtime
        except OSError:
            return False
        return name != self.pipeline.version and (name, mtime) != self._refused

    def follow_pointer(self) -> tuple[Pipeline, Pipeline] | None:
        """Reload when CURRENT changed; a refused pointer value is not retried until it changes again."""
        if not self.pointer_changed():
            return None
        pointer = self.model_dir / CURRENT
        try:
            return self.reload()
        except VersionError:
            self._refused = (pointer.read_text().strip(), pointer.stat().st_mtime)
            raise

