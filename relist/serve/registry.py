"""Versioned model directories and the atomic switch between them.

Layout::

    model_dir/
      CURRENT                      # the served version's name (replaced atomically)
      LAST_GOOD                    # the last version CURRENT named that a server loaded (written by servers)
      versions/<name>/
        manifest.json              # version, created, pipeline config, every file's sha256 and size
        items.parquet users.parquet  # the catalogue the FeatureStore is built from
        models/<role>/             # model.safetensors + its YAML spec, per role (e.g. evaluator)
        onnx/                      # the GRN, evaluator and teacher as ONNX graphs + onnx.json (relist.rerank.compiled)

A version exported with ONNX graphs (the default) is served on them: ONNX Runtime runs the GRN's slot
loop, the evaluator and the teacher, with the same lists as the eager modules (tests/test_compiled.py)
at a fraction of the per-request cost (benchmarks/results/rerank_latency.json).

A version is written to a hidden temporary directory and renamed into place, so
a reader never sees half of one. Loading verifies every checksum before it
reads a byte of a model, and weights go through safetensors only (no pickle).
A version that fails to verify, load, warm up or its smoke checks (relist.serve.smoke:
finite weights, one request per model) raises :class:`VersionError` and the
:class:`Registry` keeps serving the one it had. At start, when CURRENT names a
version that is refused, the registry serves LAST_GOOD instead and says so loudly
(a log line at ERROR, ``refused_version`` in /readyz, a gauge); with no good version
to fall back to, it refuses to start with one line naming the versions that verify.
A restarted server therefore never crash-loops on a bad pointer it had survived.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relist.data.features import FeatureStore
from relist.data.ids import VOCABULARY
from relist.rerank.registry import ROLES, Models, load_role
from relist.serve.config import PipelineConfig
from relist.serve.pipeline import Pipeline, build_pipeline, with_incumbent
from relist.serve.schemas import VERSION_NAME
from relist.serve.smoke import ModelCheckError, check_finite_weights, smoke_test

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
LAST_GOOD = "LAST_GOOD"
UNREADABLE_POINTER = "(CURRENT unreadable)"  # the refused "version" when CURRENT cannot be read
VERSIONS = "versions"
ONNX_DIR = "onnx"
CATALOGUE = ("items.parquet", "users.parquet")
MODEL_SUFFIXES = (".safetensors", ".yaml", ".yml", ".json")  # never pickles: .pt/.pth/.pkl are not packed
NAME = re.compile(VERSION_NAME)


class VersionError(RuntimeError):
    """A model version that cannot be served; the message names the version and what is wrong."""


class UnknownVersion(VersionError):
    """A version name with no version directory."""


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
    onnx: str | None = Field(None, description="directory of the ONNX graphs the version is served on "
                                               "(relist.rerank.compiled); none: eager torch")
    files: dict[str, FileEntry] = Field(description="relative path -> checksum; every file of the version")


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
                   pipeline: PipelineConfig | None = None, activate: bool = False, onnx: bool = True) -> Path:
    """Pack a catalogue (``data_dir``'s items/users) and trained model directories into a new version.

    ``models`` maps a role (relist.rerank.registry.ROLES) to a training output directory; its top-level
    weights and configs are copied. The version appears atomically; with ``activate`` it becomes
    CURRENT. With ``onnx`` the GRN, evaluator and teacher are also written as ONNX graphs under the
    version's business rules, and the version is served on them. The packed version is loaded once
    before it is published, so a broken one never is.
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    check_name(name)
    models = dict(models or {})
    unknown = set(models) - set(ROLES)
    if unknown:
        raise VersionError(f"unknown model roles {sorted(unknown)} (known: {sorted(ROLES)})")
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
            for p in files:
                if p.suffix == ".safetensors":
                    _check_weights(p)
            (tmp / "models" / role).mkdir(parents=True)
            for p in files:
                shutil.copy2(p, tmp / "models" / role / p.name)
        pipeline = with_incumbent(pipeline or PipelineConfig(), data_dir, tmp / "models")
        roles = {role: f"models/{role}" for role in models}
        if onnx and roles:
            from relist.rerank.compiled import export_onnx

            export_onnx(_load_models(tmp, roles, FeatureStore.from_dir(tmp)), pipeline.rerank.rules.build(),
                        tmp / ONNX_DIR)
        manifest = Manifest(
            version=name, created=datetime.now(UTC).isoformat(timespec="seconds"), pipeline=pipeline,
            models=roles, onnx=ONNX_DIR if onnx and roles else None,
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
        raise UnknownVersion(f"{model_dir / VERSIONS / name}: no such version")
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
    """Verify, load, warm up and smoke-test a version; any failure is a :class:`VersionError` naming it."""
    version_dir = Path(version_dir)
    manifest = verify(version_dir, name)
    try:
        for rel in manifest.files:
            if rel.endswith(".safetensors"):
                check_finite_weights(version_dir / rel, rel)
        store = FeatureStore.from_dir(version_dir)  # with its vocabulary.parquet, if any
        models = _load_models(version_dir, manifest.models, store)
        if manifest.onnx is not None:
            from relist.rerank.compiled import compiled_models

            models = compiled_models(models, version_dir / manifest.onnx)
        pipeline = build_pipeline(manifest.version, store, manifest.pipeline, models)
        smoke_test(pipeline)
        return pipeline
    except (VersionError, ModelCheckError) as err:
        raise VersionError(f"{version_dir}: {err}") from err
    except Exception as err:  # a model file that verifies but does not load or run
        raise VersionError(f"{version_dir}: cannot be served: {type(err).__name__}: {err}") from err


def _load_models(version_dir: Path, roles: Mapping[str, str], store: FeatureStore) -> Models:
    """The eager models of a version's roles (role -> directory inside the version)."""
    loaded = {}
    for role, rel in roles.items():
        if role not in ROLES:
            raise VersionError(f"unknown model role '{role}'")
        loaded[role] = load_role(role, version_dir / rel, store, version_dir / "models" / "ranker")
    return Models(store, **loaded)


def _check_weights(path: Path) -> None:
    try:
        check_finite_weights(path)
    except ModelCheckError as err:
        raise VersionError(str(err)) from None


def last_good_name(model_dir: str | Path) -> str | None:
    """The version LAST_GOOD names, or None (never written, unreadable, or not a valid name)."""
    try:
        return check_name((Path(model_dir) / LAST_GOOD).read_text().strip())
    except (OSError, VersionError):
        return None


def record_good(model_dir: str | Path, name: str) -> None:
    """Remember ``name`` as the last good version (atomic; best effort: a read-only model dir only warns)."""
    model_dir = Path(model_dir)
    if last_good_name(model_dir) == name:
        return
    tmp = model_dir / f".{LAST_GOOD}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        tmp.write_text(name + "\n")
        os.replace(tmp, model_dir / LAST_GOOD)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        log.warning("cannot record %s as the last good version in %s (%s): a restart after a refused "
                    "CURRENT will not be able to fall back to it", name, model_dir / LAST_GOOD, err.strerror)


def verified_versions(model_dir: str | Path) -> list[str]:
    """Names of the versions whose files pass their checksums (not loaded: that is what serving does)."""
    good = []
    for version_dir in sorted((Path(model_dir) / VERSIONS).glob("[!.]*")):
        try:
            verify(version_dir)
        except VersionError:
            continue
        good.append(version_dir.name)
    return good


class Registry:
    """The served pipeline of a model directory, swapped as one reference on reload.

    ``refused_version`` is the version CURRENT names while it is refused (at start, or by the pointer
    watcher) and the served one is older; None when the served version is what CURRENT names.
    """

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self._lock = threading.Lock()
        self._refused: tuple[str, float] | None = None  # pointer value + mtime that failed, not retried
        self.refused_version: str | None = None
        self.pipeline: Pipeline = self._open()
        _freeze_heap()

    def _open(self) -> Pipeline:
        """What CURRENT names; if that is refused, LAST_GOOD with a loud warning; else one clear error."""
        pointer = self._pointer_state()
        try:
            name = current_name(self.model_dir)
            pipeline = load_version(self.model_dir / VERSIONS / name)
        except VersionError as err:
            good = last_good_name(self.model_dir)
            if good is None or good == (pointer[0] if pointer else None):
                raise VersionError(f"cannot start: {err}; {self._good_versions_hint()}") from None
            try:
                pipeline = load_version(self.model_dir / VERSIONS / good)
            except VersionError as good_err:
                raise VersionError(f"cannot start: {err}; the last good version does not load either: "
                                   f"{good_err}; {self._good_versions_hint()}") from None
            self._refused = pointer
            self.refused_version = pointer[0] if pointer else UNREADABLE_POINTER
            log.error("CURRENT names a version that is refused (%s). SERVING THE LAST GOOD VERSION '%s' INSTEAD; "
                      "point CURRENT at a good version to clear this.", err, good)
            return pipeline
        record_good(self.model_dir, name)
        return pipeline

    def _good_versions_hint(self) -> str:
        good = verified_versions(self.model_dir)
        if not good:
            return f"no version in {self.model_dir / VERSIONS} passes its checksums (export one)"
        return (f"versions that pass their checksums: {', '.join(good)} (point CURRENT at one: "
                f"`echo {good[-1]} > {self.model_dir / CURRENT}`)")

    def _pointer_state(self) -> tuple[str, float] | None:
        pointer = self.model_dir / CURRENT
        try:
            return pointer.read_text().strip(), pointer.stat().st_mtime
        except OSError:
            return None

    def reload(self, name: str | None = None) -> tuple[Pipeline, Pipeline]:
        """Load ``name`` (default: what CURRENT says) and serve it; returns (old, new) pipelines.

        With a name, CURRENT is moved to it after it loaded, so every replica watching the
        pointer follows. Raises :class:`VersionError` (:class:`UnknownVersion` for a name with no
        version) and changes nothing when it does not load.
        """
        with self._lock:
            target = check_name(name) if name is not None else current_name(self.model_dir)
            old = self.pipeline
            if target == old.version:
                if name is not None:  # moves CURRENT back to the served version: clears a refusal
                    set_current(self.model_dir, target)
                    self._refused, self.refused_version = None, None
                return old, old
            if not (self.model_dir / VERSIONS / target).is_dir():
                raise UnknownVersion(f"no version '{target}' in {self.model_dir / VERSIONS}")
            new = load_version(self.model_dir / VERSIONS / target)
            if name is not None:
                set_current(self.model_dir, target)
            self.pipeline = new
            self._refused, self.refused_version = None, None
            record_good(self.model_dir, target)
            log.info("model version %s -> %s", old.version, new.version)
            _freeze_heap()
            return old, new

    def pointer_changed(self) -> bool:
        """Whether CURRENT names another version than the served one (and not one already refused).

        An empty CURRENT is a write in progress (``echo v2 > CURRENT`` truncates, then writes), not a
        change: the next look sees the name.
        """
        state = self._pointer_state()
        return state is not None and state[0] != "" and state[0] != self.pipeline.version and state != self._refused

    def follow_pointer(self) -> tuple[Pipeline, Pipeline] | None:
        """Reload when CURRENT changed; a refused pointer value is not retried until it changes again."""
        if not self.pointer_changed():
            return None
        state = self._pointer_state()
        try:
            return self.reload()
        except VersionError:
            self._refused = state
            self.refused_version = state[0] if state else UNREADABLE_POINTER
            raise


def _freeze_heap() -> None:
    """Keep the loaded version out of the cyclic garbage collector's full collections.

    A full collection walks every tracked object: ~300k for the default world's version, 180 ms on the
    2-core machine, which stopped every request in flight and set the p99 of /v1/rerank (~220 ms at 32
    connections). Frozen objects are still freed by reference counting; the unfreeze and collection
    before each freeze lets a reload's cyclic garbage go.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()

