"""Model registry and hot reload: checksummed versions, refusals, restart after a refusal, and a reload
under live traffic (waits are on conditions with deadlines, never on sleeps)."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_helpers import LiveServer, metric_value, tiny_logs, wait_for

from relist.serve.app import create_app
from relist.serve.config import PipelineConfig, ServeConfig
from relist.serve.registry import (
    CURRENT,
    LAST_GOOD,
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
    export_version(tmp_path / "models", "v1", logs, pipeline=PipelineConfig.of(STAGES["v1"]),
                   activate=True)
    return tmp_path / "models"


def corrupt_copy(model_dir, logs, name: str, how: str) -> None:
    """A version that was good when exported and is then damaged on disk."""
    version = export_version(model_dir, name, logs, pipeline=PipelineConfig.of(STAGES["v2"]))
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
        export_version(model_dir, "v5", logs, pipeline=PipelineConfig.of(["no_such_stage"]))
    assert not (model_dir / VERSIONS / "v5").exists()


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

    def served_by_every_client(version: str, count: int = 5) -> bool:
        """Each client has had ``count`` responses from ``version`` (traffic really ran on it)."""
        return all(sum(1 for status, out in log[:] if status == 200 and out["model_version"] == version) >= count
                   for log in responses)

    with LiveServer(app) as base:
        clients = [threading.Thread(target=send, args=(log, base)) for log in responses]
        for t in clients:
            t.start()
        admin = httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        wait_for(lambda: served_by_every_client("v1"), "traffic on v1")
        export_version(model_dir, "v2", logs, pipeline=PipelineConfig.of(STAGES["v2"]))
        r = admin.post("/admin/reload", json={"version": "v2"})
        assert r.status_code == 200 and r.json()["model_version"] == "v2", r.text
        assert current_name(model_dir) == "v2"
        wait_for(lambda: served_by_every_client("v2"), "traffic on v2")

        corrupt_copy(model_dir, logs, "v3", "flip_byte")  # refused by the endpoint ...
        r = admin.post("/admin/reload", json={"version": "v3"})
        assert r.status_code == 409 and "sha256" in r.text and "still serving v2" in r.text
        assert str(model_dir) not in r.text  # no server paths in answers
        (model_dir / CURRENT).write_text("v3\n")  # ... and by the pointer watcher
        wait_for(lambda: metric_value(admin, 'relist_reloads_total{outcome="refused"}') >= 2, "v3 refused twice")
        assert admin.get("/readyz").json() == {"status": "ready", "model_version": "v2", "refused_version": "v3"}
        assert metric_value(admin, "relist_current_refused") == 1
        served = sum(len(log) for log in responses)
        wait_for(lambda: sum(len(log) for log in responses) >= served + 10, "traffic after the refusal")

        export_version(model_dir, "v4", logs, pipeline=PipelineConfig.of(STAGES["v4"]))
        set_current(model_dir, "v4")  # the pointer is how every worker/replica reloads
        wait_for(lambda: admin.get("/readyz").json()["model_version"] == "v4", "the watcher follows CURRENT")
        wait_for(lambda: served_by_every_client("v4"), "traffic on v4")
        assert admin.get("/readyz").json()["refused_version"] is None
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
            generators = {step for step in out["timings_ms"] if "." not in step} - {"queue", "total"}
            assert generators == {"upstream", *STAGES[out["model_version"]]}, out  # one version per response
        order = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
        assert order == ["v1", "v2", "v4"], order  # versions only move forward; v3 never served


def test_startup_fails_in_one_line_when_current_names_no_loadable_version(model_dir):
    assert json.loads((model_dir / VERSIONS / "v1" / MANIFEST).read_text())["version"] == "v1"
    shutil.rmtree(model_dir / VERSIONS / "v1")
    with pytest.raises(VersionError, match="cannot start: .*v1.*no version in .* passes its checksums") as err:
        Registry(model_dir)
    assert "\n" not in str(err.value)


def test_restart_after_a_refused_version_serves_the_last_good_one_loudly(model_dir, logs, caplog):
    """Issue 15.1: a server survived CURRENT -> corrupt v3 by keeping v1; its restart must not crash-loop."""
    Registry(model_dir)  # a server ran v1: it is the last good version
    assert (model_dir / LAST_GOOD).read_text().strip() == "v1"
    corrupt_copy(model_dir, logs, "v3", "flip_byte")
    (model_dir / CURRENT).write_text("v3\n")
    with caplog.at_level(logging.ERROR, logger="relist.serve.registry"):
        app = create_app(model_dir, ServeConfig(watch_interval_s=0.05), admin_token=TOKEN)
    assert any("SERVING THE LAST GOOD VERSION 'v1'" in r.getMessage() and "sha256" in r.getMessage()
               for r in caplog.records)
    with TestClient(app) as client:
        assert client.get("/readyz").json() == {"status": "ready", "model_version": "v1", "refused_version": "v3"}
        assert metric_value(client, "relist_current_refused") == 1
        r = client.post("/v1/rerank", json={"candidates": [{"id": 3}, {"id": 4}], "n": 2})
        assert r.status_code == 200 and r.json()["model_version"] == "v1"
        export_version(model_dir, "v4", logs, pipeline=PipelineConfig.of(STAGES["v4"]))
        set_current(model_dir, "v4")  # fixing the pointer clears the state
        wait_for(lambda: client.get("/readyz").json()["model_version"] == "v4", "the watcher follows CURRENT")
        assert client.get("/readyz").json()["refused_version"] is None
        assert metric_value(client, "relist_current_refused") == 0
    assert (model_dir / LAST_GOOD).read_text().strip() == "v4"


def test_restart_without_a_last_good_version_refuses_naming_the_good_ones(model_dir, logs):
    corrupt_copy(model_dir, logs, "v3", "flip_byte")
    (model_dir / CURRENT).write_text("v3\n")  # no server ever ran: no LAST_GOOD
    with pytest.raises(VersionError) as err:
        Registry(model_dir)
    message = str(err.value)
    assert "\n" not in message and "sha256" in message and "v3" in message
    assert "versions that pass their checksums: v1 " in message and f"echo v1 > {model_dir / CURRENT}" in message


def test_admin_reload_to_the_served_version_clears_a_refusal(model_dir, logs):
    Registry(model_dir)
    corrupt_copy(model_dir, logs, "v3", "flip_byte")
    (model_dir / CURRENT).write_text("v3\n")
    registry = Registry(model_dir)
    assert (registry.pipeline.version, registry.refused_version) == ("v1", "v3")
    old, new = registry.reload("v1")
    assert old is new and registry.refused_version is None and current_name(model_dir) == "v1"


def test_serve_cli_reports_a_refused_start_in_two_lines(model_dir, logs, capsys):
    from relist.cli import main

    corrupt_copy(model_dir, logs, "v3", "flip_byte")
    (model_dir / CURRENT).write_text("v3\n")
    with pytest.raises(SystemExit) as info:
        main(["serve", "--model-dir", str(model_dir)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 2 and "Traceback" not in err, err
    assert "cannot start:" in lines[0] and "versions that pass their checksums: v1" in lines[0]
    assert "relist export" in lines[1]


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
    assert isinstance(again.exception, VersionError) and "already exists" in str(again.exception)
    for command in ("serve", "export"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0


def test_app_from_env_is_what_uvicorn_workers_build(monkeypatch, model_dir):
    from relist.serve.app import ENV_CONFIG, ENV_MODEL_DIR, app_from_env
    from relist.serve.config import DEFAULT_CONFIG, load_serve_config

    assert load_serve_config() == ServeConfig()  # the packaged serve.yaml states the defaults
    monkeypatch.setenv(ENV_MODEL_DIR, str(model_dir))
    monkeypatch.setenv(ENV_CONFIG, str(DEFAULT_CONFIG))
    with TestClient(app_from_env()) as client:
        assert client.get("/readyz").json()["model_version"] == "v1"


def test_an_empty_pointer_is_a_write_in_progress_not_a_refused_version(model_dir):
    registry = Registry(model_dir)
    (model_dir / CURRENT).write_text("")  # `echo v2 > CURRENT` between its truncate and its write
    assert not registry.pointer_changed() and registry.follow_pointer() is None
    assert registry.refused_version is None and registry.pipeline.version == "v1"
