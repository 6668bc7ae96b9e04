"""HTTP load on `relist serve`, measured from outside by `wrk`, with a no-op endpoint in the same run.

A model version is exported from the rerank study's default-world models (trained under ``--work``
if missing) with the shipped serving config, and `relist serve` runs it as a user would (its own
process, 127.0.0.1, the config's workers and threads). `wrk` (Debian: ``apt-get install wrk``)
sends, over a fixed number of keep-alive connections for a fixed time, logged test requests in turn
to ``POST /v1/noop`` (reads the body, does nothing: the HTTP floor), ``/v1/rerank`` and
``/v1/recommend``. Per endpoint and load: requests per second, p50/p99 latency, non-2xx responses,
the server's CPU per request (its workers' event-loop threads and their other threads, from /proc),
and — from the server's own counters, read before and after — which generator served the lists: the
share served by a model stage, not the upstream (or popularity) floor, is what says whether the
service still re-ranks under load.

    python -m benchmarks serve_load --work WORK
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from benchmarks.studies.rerank import ROOT, _merged, default_world_models

FLOORS = ("upstream", "popular")  # what the service serves when it does not re-rank
ROLES = ("ranker", "evaluator", "generator", "prm", "dlcm", "seq2slate")
LUA = """
local bodies = {}
for line in io.lines(os.getenv("RELIST_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    world: str = "relist/configs/sim_default.yaml"
    lists: int = 20_000
    seed: int = 0
    serve_config: str = Field("relist/configs/serve.yaml", description="the server's config (workers, threads, "
                                                                      "budget, pipeline)")
    connections: list[int] = Field([8, 32], description="concurrent keep-alive connections, one wrk run each")
    duration_s: int = Field(10, ge=1, description="seconds per wrk run (after a 2 s warm-up run)")
    endpoints: list[str] = ["noop", "rerank", "recommend"]
    bodies: int = Field(200, ge=1, description="logged test requests sent in turn")
    serve: dict = Field({}, description="changes to the server's config outside its pipeline, e.g. "
                                        "{batch_wait_ms: 2.0} (written next to the version under --work)")
    pipeline: dict = Field({}, description="changes to the serving config's pipeline the version is exported "
                                           "with, e.g. {rerank: {ranking: {generators: [upstream, beam, last], "
                                           "min_share: 0}}} to serve LAST whatever its share on validation")


def run(cfg: Config, work: Path) -> dict:
    if shutil.which("wrk") is None:
        raise RuntimeError("serve_load needs the load generator wrk on the PATH (Debian: apt-get install wrk)")
    from relist.data.logs import logged_requests
    from relist.serve.config import load_serve_config
    from relist.serve.registry import VERSIONS, export_version
    from relist.sim.config import load_sim_config

    data, models = default_world_models(work, load_sim_config(ROOT / cfg.world), cfg.lists, cfg.seed)
    model_dir = work / "serve_load_versions"
    shutil.rmtree(model_dir, ignore_errors=True)  # exported anew: the version is what today's export writes
    serve = load_serve_config(ROOT / cfg.serve_config)
    serve = type(serve).model_validate(_merged(serve.model_dump(), cfg.serve))
    serve_config = work / "serve_load_config.yaml"  # JSON is YAML
    serve_config.write_text(serve.model_dump_json())
    pipeline = serve.pipeline
    pipeline = type(pipeline).model_validate(_merged(pipeline.model_dump(), cfg.pipeline))
    export_version(model_dir, "v1", data, {role: models / role for role in ROLES}, pipeline, activate=True)
    manifest = json.loads((model_dir / VERSIONS / "v1" / "manifest.json").read_text())
    requests, _ = logged_requests(data, "test", cfg.bodies)
    bodies = _bodies(requests, work)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", "from relist.cli import main; main()", "serve",
                               "--model-dir", str(model_dir), "--config", str(serve_config), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = {}
    try:
        _wait_ready(base, server)
        for connections in cfg.connections:
            for endpoint in cfg.endpoints:
                _wrk(base, endpoint, bodies[endpoint], connections, 2)  # warm-up, not counted
                before, cpu_before = _served(base), _cpu(server.pid)
                row = _wrk(base, endpoint, bodies[endpoint], connections, cfg.duration_s)
                served, cpu = _served(base) - before, _cpu(server.pid) - cpu_before
                if cpu and row["requests"]:
                    row["cpu_ms_per_request"] = {k: 1e3 * v / row["requests"] for k, v in cpu.items()}
                total = sum(served.values())
                if endpoint != "noop" and total:
                    row["served_by"] = {k: v / total for k, v in served.most_common()}
                    row["model_share"] = 1 - sum(served[f] for f in FLOORS) / total
                rows[f"{endpoint} c{connections}"] = row
            noop = rows[f"noop c{connections}"]
            for endpoint in cfg.endpoints:
                row = rows[f"{endpoint} c{connections}"]
                row["rps_over_noop"] = row["rps"] / noop["rps"]
    finally:
        server.terminate()
        server.wait(30)
    _print(rows)
    ranking = manifest["pipeline"]["rerank"]["ranking"]
    return {"rows": rows, "workers": serve.workers, "torch_threads": serve.torch_threads,
            "default_budget_ms": serve.default_budget_ms, "max_batch": serve.max_batch,
            "batch_wait_ms": serve.batch_wait_ms, "duration_s": cfg.duration_s, "onnx": manifest["onnx"],
            "served_generators": ranking["generators"], "incumbent": ranking["incumbent"]}


def _bodies(requests, work: Path) -> dict[str, Path]:
    """One JSON body per line and endpoint, from logged test requests (wrk sends them in turn)."""
    lines = {"noop": [], "rerank": [], "recommend": []}
    for r in range(len(requests)):
        mask = requests.mask[r]
        candidates = [{"id": int(i), "score": float(s)}
                      for i, s in zip(requests.candidates[r][mask], requests.cand_scores[r][mask], strict=True)]
        user = {"id": int(requests.user_id[r])}
        rerank = json.dumps({"request_id": int(requests.request_id[r]), "user": user, "candidates": candidates,
                             "n": 10})
        lines["noop"].append(rerank)
        lines["rerank"].append(rerank)
        lines["recommend"].append(json.dumps({"request_id": int(requests.request_id[r]), "user": user, "n": 10}))
    paths = {}
    for endpoint, bodies in lines.items():
        paths[endpoint] = work / f"bodies_{endpoint}.jsonl"
        paths[endpoint].write_text("\n".join(bodies) + "\n")
        paths[endpoint].with_suffix(".lua").write_text(LUA)  # wrk's script: send the bodies in turn
    return paths


def _wrk(base: str, endpoint: str, bodies: Path, connections: int, seconds: int) -> dict:
    script = bodies.with_suffix(".lua")  # written with the bodies
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                           "-s", str(script), f"{base}/v1/{endpoint}"], capture_output=True, text=True,
                          timeout=seconds + 60, env={**os.environ, "RELIST_BODIES": str(bodies)})
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": requests,
            "p50_ms": latency["50"], "p99_ms": latency["99"], "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0, "connections": connections}


def _served(base: str) -> Counter:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return Counter({m.group(1): float(m.group(2))
                    for m in re.finditer(r'^relist_served_lists_total\{generator="([^"]+)"\} ([\d.e+]+)$', text, re.M)})


def _cpu(root: int) -> Counter:
    """CPU seconds so far of the server's processes (``root`` and its descendants), split into their main
    threads (a worker's event loop: HTTP, parsing, validation, responses) and the other threads (the pipeline
    threads: the models); empty where there is no /proc. A thread that ended takes its CPU out of /proc's
    tasks, so this counts the living ones: the workers' threads live as long as the server."""
    proc = Path("/proc")
    if not (proc / str(root)).is_dir():
        return Counter()
    parents = {int(stat.parent.name): int(fields[1]) for stat in proc.glob("[0-9]*/stat")
               if (fields := _stat_fields(stat))}
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | more, bool(more)
    tick, out = os.sysconf("SC_CLK_TCK"), Counter()
    for pid in tree:
        for task in (proc / str(pid) / "task").glob("[0-9]*"):
            if fields := _stat_fields(task / "stat"):
                kind = "main_thread" if int(task.name) == pid else "other_threads"
                out[kind] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def _stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc stat file after the command name (state, ppid, ...); none once it has ended."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"relist serve exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling a process we started, with a deadline
    raise RuntimeError(f"relist serve not ready within {timeout_s} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _print(rows: dict) -> None:
    table = Table(title="HTTP load (wrk, 1 thread, keep-alive), server as configured")
    for col in ("endpoint", "req/s", "vs noop", "p50 ms", "p99 ms", "non-2xx", "CPU ms/req main+other",
                "model share", "served by"):
        table.add_column(col, justify="right")
    for name, row in rows.items():
        served = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(row.get("served_by", {}).items())[:3])
        share = f"{100 * row['model_share']:.1f}%" if "model_share" in row else ""
        cpu = row.get("cpu_ms_per_request", {})
        cpu = f"{cpu.get('main_thread', 0):.2f}+{cpu.get('other_threads', 0):.2f}" if cpu else ""
        table.add_row(name, f"{row['rps']:.0f}", f"{row['rps_over_noop']:.3f}", f"{row['p50_ms']:.1f}",
                      f"{row['p99_ms']:.1f}", str(row["non_2xx"]), cpu, share, served)
    Console(width=160).print(table)
