"""Model registry and hot reload: checksummed versions, refusals, and a reload under live traffic."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from test_serve_api import metric_value, tiny_logs

from relist.serve.app import create_app
from relist.serve.config import PipelineConfig, ServeConfig
from relist.serve.registry import (
    CURRENT,
    MANIFEST,
    VERSIONS,
    Registry,
    VersionError,
    current_name,
    export_version,
    set_current,
    verify,
)

TOKEN = "reload-token"
# Versions differ in their stages, so a response shows which version really produced it.
STAGES = {"v1": ["greedy_upstream_score"], "v2": ["greedy_upstream_score", "beam_upstream"],
          "v4": ["beam_upstream"]}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    path = tmp_path_factory.mktemp("reload") / "logs"
    tiny_logs(path)
    return path


@pytest.fixture
def model_dir(tmp_path, logs):
    export_version(tmp_path / "models", "v1", logs, pipeline=PipelineConfig(stages=STAGES["v1"]),
                   activate=True)
    return tmp_path / "models"


def corrupt_copy(model_dir, logs, name: str, how: str) -> None:
    """A version that was good when exported and is then damaged on disk."""
    version = export_version(model_dir, name, logs, pipeline=PipelineConfig(stages=STAGES["v2"]))
    if how == "flip_byte":
        data = bytearray((version / "items.parquet").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (version / "items.parquet").write_bytes(bytes(data))
    elif how == "truncate":
        (version / "users.parquet").write_bytes((version / "users.parquet").read_bytes()[:100])
    elif how == "missing_file":
        (version / "users.parquet").unlink()
    elif how == "no_manifest":
        (version / MANIFEST).unlink()
    elif how == "unlisted_file":
        (version / "evil.pt").write_bytes(b"not in the manifest")
    elif how == "bad_manifest":
        (version / MANIFEST).write_text("{not json")
    elif how == "renamed":  # another version's files under this name
        shutil.rmtree(version)
        shutil.copytree(model_dir / VERSIONS / "v1", version)


def test_export_is_verified_and_current_is_atomic(model_dir, logs):
    manifest = verify(model_dir / VERSIONS / "v1")
    assert manifest.version == "v1" and set(manifest.files) == {"items.parquet", "users.parquet"}
    assert all(len(entry.sha256) == 64 for entry in manifest.files.values())
    assert current_name(model_dir) == "v1"
    with pytest.raises(VersionError, match="already exists"):
        export_version(model_dir, "v1", logs)
    with pytest.raises(VersionError, match="not allowed"):
        export_version(model_dir, "../escape", logs)
    with pytest.raises(VersionError, match="no such version"):
        set_current(model_dir, "v9")
    assert current_name(model_dir) == "v1"
    assert not [p for p in (model_dir / VERSIONS).iterdir() if p.name.startswith(".")]  # no temp left over


@pytest.mark.parametrize("how, message", [
    ("flip_byte", "sha256"), ("truncate", "bytes"), ("missing_file", "missing"),
    ("no_manifest", "manifest"), ("unlisted_file", "not in the manifest"),
    ("bad_manifest", "invalid manifest"), ("renamed", "is of version 'v1'"),
])
def test_a_damaged_version_is_refused_and_the_old_one_keeps_serving(model_dir, logs, how, message):
    corrupt_copy(model_dir, logs, "v3", how)
    registry = Registry(model_dir)
    with pytest.raises(VersionError, match=message):
        registry.reload("v3")
    assert registry.pipeline.version == "v1" and current_name(model_dir) == "v1"


def test_a_version_whose_pipeline_cannot_be_built_is_refused(model_dir, logs):
    with pytest.raises(VersionError, match="no_such_stage"):
        export_version(model_dir, "v5", logs, pipeline=PipelineConfig(stages=["no_such_stage"]))
    assert not (model_dir / VERSIONS / "v5").exists()


class LiveServer:
    """uvicorn on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_hot_reload_under_load(model_dir, logs):
    """Clients keep sending while versions change: no failed request, each response from one version."""
    app = create_app(model_dir, ServeConfig(watch_interval_s=0.1), admin_token=TOKEN)
    body = {"user": {"id": 5}, "candidates": [{"id": i, "score": 1.0 / i} for i in range(1, 41)],
            "n": 10, "budget_ms": 10_000.0}
    responses: list[list[tuple[int, dict | str]]] = [[], []]
    stop = threading.Event()

    def send(log: list, base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/rerank", json=body)
                    log.append((r.status_code, r.json() if r.status_code == 200 else r.text))
                except httpx.HTTPError as err:
                    log.append((0, repr(err)))

    with LiveServer(app) as base:
        clients = [threading.Thread(target=send, args=(log, base)) for log in responses]
        for t in clients:
            t.start()
        admin = httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        time.sleep(0.5)
        export_version(model_dir, "v2", logs, pipeline=PipelineConfig(stages=STAGES["v2"]))
        r = admin.post("/admin/reload", json={"version": "v2"})
        assert r.status_code == 200 and r.json()["model_version"] == "v2", r.text
        assert current_name(model_dir) == "v2"
        time.sleep(0.5)

        corrupt_copy(model_dir, logs, "v3", "flip_byte")  # refused by the endpoint ...
        r = admin.post("/admin/reload", json={"version": "v3"})
        assert r.status_code == 409 and "sha256" in r.text and "still serving v2" in r.text
        (model_dir / CURRENT).write_text("v3\n")  # ... and by the pointer watcher
        _wait_for(lambda: metric_value(admin, 'relist_reloads_total{outcome="refused"}') >= 2)
        time.sleep(0.3)

        export_version(model_dir, "v4", logs, pipeline=PipelineConfig(stages=STAGES["v4"]))
        set_current(model_dir, "v4")  # the pointer is how every worker/replica reloads
        _wait_for(lambda: admin.get("/readyz").json()["model_version"] == "v4")
        time.sleep(0.3)
        stop.set()
        for t in clients:
            t.join(30)
        metrics = admin.get("/metrics").text
        admin.close()

    assert 'relist_model_version{version="v4"} 1.0' in metrics
    assert 'relist_model_version{version="v2"} 0.0' in metrics and 'version="v3"' not in metrics
    for log in responses:
        assert len(log) > 20
        assert [r for r in log if r[0] != 200] == []  # zero failed requests
        versions = [out["model_version"] for _, out in log]
        for out in (out for _, out in log):
            stages = set(out["timings_ms"]) - {"queue", "total"}
            assert stages == {"upstream", *STAGES[out["model_version"]]}, out  # one version per response
        order = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
        assert order == ["v1", "v2", "v4"], order  # versions only move forward; v3 never served


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_startup_fails_when_current_names_no_loadable_version(model_dir):
    assert json.loads((model_dir / VERSIONS / "v1" / MANIFEST).read_text())["version"] == "v1"
    shutil.rmtree(model_dir / VERSIONS / "v1")
    with pytest.raises(VersionError):
        Registry(model_dir)


def test_cli_export_packs_a_version_and_activates_it(tmp_path, logs):
    import typer
    from typer.testing import CliRunner

    from relist.cli.commands_serve import register

    app = typer.Typer()
    register(app, typer.Typer(), typer.Typer())
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--model-dir", str(tmp_path / "m"), "--name", "cli1",
                                 "--data", str(logs), "--activate"])
    assert result.exit_code == 0, result.output
    assert current_name(tmp_path / "m") == "cli1" and verify(tmp_path / "m" / VERSIONS / "cli1")
    again = runner.invoke(app, ["export", "--model-dir", str(tmp_path / "m"), "--name", "cli1",
                                "--data", str(logs)])
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    for command in ("serve", "export"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0


def test_app_from_env_is_what_uvicorn_workers_build(monkeypatch, model_dir):
    from fastapi.testclient import TestClient

    from relist.serve.app import ENV_CONFIG, ENV_MODEL_DIR, app_from_env
    from relist.serve.config import DEFAULT_CONFIG, load_serve_config

    assert load_serve_config() == ServeConfig()  # the packaged serve.yaml states the defaults
    monkeypatch.setenv(ENV_MODEL_DIR, str(model_dir))
    monkeypatch.setenv(ENV_CONFIG, str(DEFAULT_CONFIG))
    with TestClient(app_from_env()) as client:
        assert client.get("/readyz").json()["model_version"] == "v1"
