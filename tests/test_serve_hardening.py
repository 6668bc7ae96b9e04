"""The service probed from outside (issue 15): a schemathesis run with every check over every operation, the
bad-input table, slow connections, the connection cap, non-finite models, access logs, and the process
tree of `relist serve --workers 2`. Servers run on 127.0.0.1 and are stopped by the tests; every wait is
on a condition with a deadline."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from serve_helpers import DEADLINE_S, LiveServer, free_port, scored_nan, tiny_world, wait_for

from benchmarks.studies import serve_bad_input as bad_input  # its cases are the ones replayed here
from relist.io.weights import DIGEST, digest
from relist.serve.app import create_app
from relist.serve.config import ServeConfig
from relist.serve.registry import MANIFEST, VERSIONS, Manifest, Registry, VersionError, export_version, sha256_of
from relist.serve.smoke import ModelCheckError, smoke_test

TOKEN = bad_input.TOKEN  # the admin token its admin cases send


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tiny_world(tmp_path_factory.mktemp("hardening"))
    bad_input.add_broken_version(root / "models", root / "logs")
    return root


@pytest.fixture(scope="module")
def app(world):
    return create_app(world / "models", ServeConfig(watch_pointer=False), admin_token=TOKEN)


@pytest.fixture(scope="module")
def live(app):
    with LiveServer(app, ServeConfig(header_timeout_s=2.0, body_timeout_s=2.0)) as base:
        yield base


@pytest.mark.parametrize("with_token", [True, False], ids=["admin token", "no token"])
def test_schemathesis_with_every_check_over_every_operation_finds_nothing(live, tmp_path, with_token):
    """Issue 15: zero failures, not only zero 5xx; bounded examples, fixed seed."""
    auth = ["--header", f"Authorization: Bearer {TOKEN}"] if with_token else []
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{live}/openapi.json", "--checks", "all",
               "--max-examples", "25", "--seed", "1", "--workers", "1", "--no-color",
               "--generation-database", "none", "--request-timeout", str(DEADLINE_S), *auth]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0 and "FAILURES" not in run.stdout, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Selected: 8/8" in run.stdout and "Tested: 8" in run.stdout, run.stdout[-3000:]  # every operation


def test_every_bad_request_of_the_table_is_a_4xx_naming_its_field(live):
    """The cases of the serve_bad_input study (its JSON is the committed table) against every model."""
    rows = bad_input.replay(live, bad_input.build_cases(), deadline_s=DEADLINE_S)
    wrong = [row for row in rows if row["outcome"] != "4xx naming the field"]
    assert len(rows) > 100 and wrong == [], wrong
    assert {row["status"] for row in rows} >= {400, 401, 404, 405, 408, 409, 413, 415, 422}


def stall(port: int, prefix: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.sendall(prefix)
    return sock


def answer(sock: socket.socket) -> tuple[int, dict]:
    """Everything the server sends until it closes: (status, JSON body)."""
    raw = b""
    with sock:
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


HEADERS_HALF = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY_HALF = HEADERS_HALF + b"Content-Length: 500\r\n\r\n" + b'{"candidates": [{"id": 1}, '


def test_slow_connections_are_closed_after_the_timeout_while_the_server_keeps_answering(app):
    config = ServeConfig(header_timeout_s=2.0, body_timeout_s=2.0)
    server = LiveServer(app, config)
    with server as base:
        slow = {"silent": [stall(server.port, b"") for _ in range(10)],
                "headers": [stall(server.port, HEADERS_HALF) for _ in range(20)],
                "body": [stall(server.port, BODY_HALF) for _ in range(20)]}
        wait_for(lambda: server.connections >= 50, "the server holds the 50 stalled connections")
        r = httpx.post(f"{base}/v1/rerank", json={"candidates": [{"id": i} for i in range(1, 30)], "n": 10},
                       timeout=DEADLINE_S)
        assert r.status_code == 200 and not r.json()["fallback"], r.text  # answered while they are held
        for kind, socks in slow.items():
            field = "body" if kind == "body" else "headers"
            for sock in socks:
                status, body = answer(sock)
                assert status == 408 and [d["field"] for d in body["detail"]] == [field], body
                assert "within 2 s" in body["detail"][0]["msg"]
        wait_for(lambda: server.connections == 0, "every stalled connection closed")
        assert httpx.get(f"{base}/readyz", timeout=DEADLINE_S).status_code == 200


def test_the_connection_cap_answers_503_and_frees_up(app):
    server = LiveServer(app, ServeConfig(max_connections=4, header_timeout_s=30.0))
    with server as base:
        held = [stall(server.port, b"") for _ in range(4)]
        wait_for(lambda: server.connections == 4, "four connections held")
        r = httpx.get(f"{base}/healthz", timeout=DEADLINE_S)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert [d["field"] for d in r.json()["detail"]] == ["connection"] and "cap of 4" in r.text
        for sock in held:
            sock.close()
        wait_for(lambda: server.connections == 0, "held connections gone")
        assert httpx.get(f"{base}/healthz", timeout=DEADLINE_S).status_code == 200


def nan_weights(src: Path, dst: Path) -> Path:
    """A copy of a trained model directory whose first float tensor holds a NaN, with a valid checksum (what a
    diverged run writes)."""
    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    tensors = load_file(path)
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, path, metadata={DIGEST: digest(tensors)})
    return path


def test_export_refuses_non_finite_weights_naming_the_file(world, tmp_path, capsys):
    bad = nan_weights(world / "evaluator", tmp_path / "evaluator")
    with pytest.raises(VersionError, match=f"{bad}: non-finite weights .*1 of"):
        export_version(tmp_path / "models", "nan", world / "logs", {"evaluator": bad.parent})
    assert not (tmp_path / "models" / VERSIONS / "nan").exists()

    from relist.cli import main

    with pytest.raises(SystemExit) as info:
        main(["export", "--model-dir", str(tmp_path / "models"), "--name", "nan", "--data", str(world / "logs"),
              "--evaluator", str(bad.parent)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "non-finite weights" in err and "Traceback" not in err


def test_a_served_version_with_non_finite_weights_is_refused(world, tmp_path):
    """A version packed before export checked weights: refused at reload (and so at start)."""
    model_dir = tmp_path / "models"
    shutil.copytree(world / "models", model_dir)
    version = model_dir / VERSIONS / "v1"
    rel = "models/evaluator/model.safetensors"
    bad = nan_weights(world / "evaluator", tmp_path / "evaluator")
    shutil.copy(bad, version / rel)
    manifest = Manifest.model_validate_json((version / MANIFEST).read_text())
    manifest.files[rel] = manifest.files[rel].model_copy(update={"sha256": sha256_of(version / rel),
                                                                 "bytes": (version / rel).stat().st_size})
    (version / MANIFEST).write_text(manifest.model_dump_json())
    with pytest.raises(VersionError, match=f"{rel}: non-finite weights"):
        Registry(model_dir)


def test_smoke_requests_refuse_a_model_that_scores_nan(app):
    pipeline = app.state.registry.pipeline
    smoke_test(pipeline)  # the served version passes

    with pytest.raises(ModelCheckError, match="generator 'upstream': the evaluator scorer rates its smoke list nan"):
        smoke_test(scored_nan(pipeline))
    rankers = {**pipeline.rankers, "fine": lambda store, user, ids: np.full(len(ids), np.nan)}
    with pytest.raises(ModelCheckError, match="ranker 'fine' gives non-finite"):
        smoke_test(dataclasses.replace(pipeline, rankers=rankers))


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("sample", [0.0, 1.0])
def test_access_log_is_off_by_default_and_json_lines_when_sampled(world, sample):
    logger = logging.getLogger("relist.access")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        app = create_app(world / "models", ServeConfig(watch_pointer=False, access_log_sample=sample))
        with TestClient(app) as client:
            client.get("/healthz")
            client.post("/v1/rerank", json={"candidates": []})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(record.getMessage()) for record in handler.records]
    if sample == 0.0:
        assert lines == []
    else:
        assert [(line["method"], line["path"], line["status"]) for line in lines] == [
            ("GET", "/healthz", 200), ("POST", "/v1/rerank", 422)]
        assert all({"ts", "ms", "client"} <= set(line) for line in lines)


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_with_two_workers_only_the_workers_load_a_model(world):
    """Issue 15.5: the parent of `relist serve --workers 2` becomes a small supervisor (no torch, no model)."""
    port = free_port()
    relist = Path(sys.executable).parent / "relist"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([str(relist), "serve", "--model-dir", str(world / "models"), "--workers", "2",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "a worker serving", timeout=3 * DEADLINE_S, poll_s=0.2)
        wait_for(lambda: len([pid for pid in children(proc.pid) if "libtorch" in maps(pid)]) == 2,
                 "both workers loaded", timeout=3 * DEADLINE_S, poll_s=0.2)
        assert "libtorch" not in maps(proc.pid)  # the supervisor: no torch, so no model
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(DEADLINE_S)
