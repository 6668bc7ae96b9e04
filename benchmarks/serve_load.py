"""HTTP load on the re-ranking service: list retrieval with and without LAST, against a no-op endpoint.

A uvicorn server (1 or 2 worker processes) serves a model version; this process is the
client: an asyncio httpx load with a fixed number of connections, each sending the next
logged test request as soon as its last one is answered (closed loop), for a fixed time
after a warm-up. Per endpoint: throughput, p50/p99 latency, errors (any non-200 or
transport error) and the ratio to ``POST /v1/noop`` measured against the same server in
the same run (it reads the same body and does nothing: the HTTP floor). Rerank rows also
count responses that skipped a stage for the time budget or fell back to upstream.

    python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch
from _common import write_result
from rich.console import Console
from rich.table import Table

from relist.data.logs import logged_requests
from relist.models.evaluator import DCWNConfig
from relist.rerank.last import LASTConfig
from relist.serve.app import ENV_CONFIG, ENV_MODEL_DIR
from relist.serve.config import PipelineConfig, ServeConfig
from relist.serve.metrics import MULTIPROC_ENV
from relist.serve.registry import VERSIONS, export_version, set_current
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world
from relist.train.config import TrainConfig, save_config
from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
from relist.train.generator import GeneratorTrainConfig, train_generator

RETRIEVAL = ["greedy_upstream_score", "beam_upstream", "grn"]
VERSIONS_SERVED = {"retrieval": RETRIEVAL, "retrieval_last": [*RETRIEVAL, "last"]}


def ensure_models(work: Path, n_requests: int, steps: int) -> tuple[Path, dict[str, Path]]:
    """Simulated logs plus an evaluator and a GRN trained on them (skipped when already there)."""
    data = work / "logs"
    if not (data / "items.parquet").exists():
        simulate_logs(build_world(load_sim_config()), data, n_requests, 0.1, 0.1)
    train = TrainConfig(epochs=1, max_steps_per_epoch=steps, num_threads=1, device="cpu")
    evaluator, generator = work / "evaluator", work / "generator"
    if not (evaluator / "model.safetensors").exists():
        train_evaluator(EvaluatorTrainConfig(model=DCWNConfig(), valid_lists=500,
                                             train=train.model_copy(update={"monitor": "click_logloss"})),
                        data, evaluator)
    if not (generator / "model.safetensors").exists():
        train_generator(GeneratorTrainConfig(valid_requests=200, train=train.model_copy(
            update={"batch_size": 64, "monitor": "lr", "monitor_mode": "max"})), data, evaluator, generator)
    return data, {"evaluator": evaluator, "generator": generator}


def ensure_versions(model_dir: Path, data: Path, models: dict[str, Path]) -> None:
    for name, stages in VERSIONS_SERVED.items():
        if not (model_dir / VERSIONS / name).exists():
            # LAST searches within the request's budget, not its own 10 ms default cap: its full cost
            export_version(model_dir, name, data, models,
                           PipelineConfig.of(stages, last=LASTConfig(rules=None, budget_ms=None)))


def request_bodies(data: Path, count: int, n: int, budget_ms: float) -> tuple[list[bytes], float]:
    """JSON bodies of logged test requests, and their mean number of candidates."""
    requests, _ = logged_requests(data, "test", count)
    bodies = []
    for row in range(len(requests)):
        real = requests.mask[row]
        ids, scores = requests.candidates[row][real], requests.cand_scores[row][real]
        cands = [{"id": int(c), "score": float(s)} for c, s in zip(ids, scores, strict=True)]
        body = {"request_id": int(requests.request_id[row]), "user": {"id": int(requests.user_id[row])},
                "candidates": cands, "n": n, "budget_ms": budget_ms}
        bodies.append(httpx.Request("POST", "/", json=body).content)
    return bodies, float(requests.mask.sum(1).mean())


@contextlib.contextmanager
def server(model_dir: Path, config: Path, workers: int):
    """uvicorn serving ``model_dir`` on 127.0.0.1 and a free port; yields the base URL once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, ENV_MODEL_DIR: str(model_dir), ENV_CONFIG: str(config), "OMP_NUM_THREADS": "1"}
    env.pop(MULTIPROC_ENV, None)
    if workers > 1:  # workers pool their metrics here, so one scrape counts every worker's requests
        env[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="relist-metrics-")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "relist.serve.app:app_from_env", "--factory",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "server not ready in 180 s"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


async def load(base: str, path: str, bodies: list[bytes], concurrency: int, warmup_s: float,
               duration_s: float) -> dict:
    """Closed loop: ``concurrency`` connections for ``warmup_s + duration_s``; the warm-up is not counted."""
    latencies, errors, flags, generators = [], Counter(), Counter(), Counter()
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    counter = iter(range(10**12))

    async def connection(client: httpx.AsyncClient) -> None:
        while (now := time.perf_counter()) < stop_at:
            body = bodies[next(counter) % len(bodies)]
            try:
                response = await client.post(path, content=body, headers=headers)
                ok = response.status_code == 200
                kind = None if ok else f"http_{response.status_code}"
            except httpx.HTTPError as err:
                ok, kind = False, type(err).__name__
            if now < measure_from:
                continue
            if not ok:
                errors[kind] += 1
                continue
            latencies.append(time.perf_counter() - now)
            if path == "/v1/rerank":
                out = response.json()
                generators[out["generator"]] += 1
                flags["budget_exceeded"] += out["budget_exceeded"]
                flags["fallback"] += out["fallback"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        await asyncio.gather(*(connection(client) for _ in range(concurrency)))
    ms = np.array(latencies) * 1e3
    return {"requests": len(ms), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "throughput_rps": len(ms) / duration_s,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            **({"budget_exceeded": flags["budget_exceeded"], "fallback": flags["fallback"],
                "served_by": dict(generators)} if path == "/v1/rerank" else {})}


def scraped(base: str, key: str) -> float:
    """A counter from /metrics (all workers pooled): checks that the service counted what it served."""
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def with_ratios(row: dict, noop: dict) -> dict:
    return {**row, "throughput_vs_noop": row["throughput_rps"] / noop["throughput_rps"],
            "p50_vs_noop": row["p50_ms"] / noop["p50_ms"], "p99_vs_noop": row["p99_ms"] / noop["p99_ms"]}


def print_table(rows: dict, console: Console) -> None:
    table = Table(title="relist serve: closed-loop HTTP load on 127.0.0.1")
    for column in ("workers", "endpoint", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs noop",
                   "p50 vs noop", "budget skips", "fallbacks"):
        table.add_column(column, justify="right")
    for key, row in rows.items():
        workers, endpoint = key.split("/", 1)
        table.add_row(workers, endpoint, f"{row['throughput_rps']:.1f}", f"{row['p50_ms']:.2f}",
                      f"{row['p99_ms']:.2f}", str(row["errors"]), f"{row.get('throughput_vs_noop', 1.0):.3f}",
                      f"{row.get('p50_vs_noop', 1.0):.2f}", str(row.get("budget_exceeded", "")),
                      str(row.get("fallback", "")))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/relist_serve_load"))
    parser.add_argument("--sim-requests", type=int, default=20_000)
    parser.add_argument("--train-steps", type=int, default=60, help="steps per model (latency, not quality)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load not counted")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load counted")
    parser.add_argument("--n", type=int, default=10, help="list length")
    parser.add_argument("--budget-ms", type=float, default=1000.0,
                        help="per-request budget (large: every stage runs; the 20 ms default would skip)")
    parser.add_argument("--bodies", type=int, default=500, help="distinct logged test requests sent in turn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(width=170)

    data, models = ensure_models(args.work, args.sim_requests, args.train_steps)
    model_dir = args.work / "models"
    ensure_versions(model_dir, data, models)
    config = args.work / "serve.yaml"
    save_config(ServeConfig(watch_pointer=False, max_candidates=1000), config)
    bodies, candidates = request_bodies(data, args.bodies, args.n, args.budget_ms)

    rows = {}
    for workers in args.workers:
        for version in VERSIONS_SERVED:
            set_current(model_dir, version)
            with server(model_dir, config, workers) as base:
                console.print(f"workers={workers} version={version}: load ...")
                noop = asyncio.run(load(base, "/v1/noop", bodies, args.concurrency, args.warmup,
                                        args.duration))
                rerank = asyncio.run(load(base, "/v1/rerank", bodies, args.concurrency, args.warmup,
                                          args.duration))
                rerank["served_200_by_metrics"] = scraped(base, 'relist_requests_total{endpoint="rerank",'
                                                                'status="200"}')
            rows[f"{workers}/noop (with {version} loaded)"] = noop
            rows[f"{workers}/rerank {version}"] = with_ratios(rerank, noop)
    print_table(rows, console)
    path = write_result("serve_load", {
        "client": "asyncio httpx, closed loop, one process", "concurrency": args.concurrency,
        "warmup_s": args.warmup, "duration_s": args.duration, "list_len": args.n, "budget_ms": args.budget_ms,
        "bodies": len(bodies), "body_bytes_mean": float(np.mean([len(b) for b in bodies])),
        "candidates_mean": candidates,
        "versions": VERSIONS_SERVED, "load_average_1_5_15": os.getloadavg(), "rows": rows,
    })
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
