"""What the header/body deadlines and the connection cap cost per request: the guarded protocol
(relist.serve.http_server) against uvicorn's stock httptools protocol, same app, same run.

Both servers run in threads of this process, side by side, and serve the relist app's ``POST /v1/noop``
(reads the body, does nothing: the HTTP floor) to one keep-alive client each in the main thread, taking
turns batch by batch so that machine load hits both alike. The ratio is what counts; the absolute
latencies are those of a shared 2-core machine.

    python -m benchmarks serve_guard_overhead [--set batches=100 --set batch=50]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field


def paired(bases: dict[str, str], batches: int, batch: int, body: bytes) -> dict[str, list[float]]:
    """Per server, the latency (ms) of each of ``batches`` x ``batch`` POSTs, one keep-alive connection
    each, the servers taking turns batch by batch (so a change of machine load hits both alike)."""
    clients = {name: httpx.Client(base_url=base, headers={"content-type": "application/json"})
               for name, base in bases.items()}
    latencies: dict[str, list[float]] = {name: [] for name in bases}
    try:
        for client in clients.values():
            client.post("/v1/noop", content=body)  # connections set up outside the timing
        for _ in range(batches):
            for name, client in clients.items():
                for _ in range(batch):
                    sent = time.perf_counter()
                    assert client.post("/v1/noop", content=body).status_code == 200
                    latencies[name].append((time.perf_counter() - sent) * 1e3)
    finally:
        for client in clients.values():
            client.close()
    return latencies


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batches: int = Field(100, ge=1, description="alternating batches per server")
    batch: int = Field(50, ge=1, description="requests per batch")
    candidates: int = Field(50, ge=1, description="candidates in each request body")


def run(cfg: Config, work: Path) -> dict:
    from rich.console import Console
    from rich.table import Table

    from relist.serve.app import create_app
    from relist.serve.config import PipelineConfig, ServeConfig
    from relist.serve.http_server import BackgroundServer, limits_of
    from relist.serve.registry import export_version
    from relist.sim.config import load_sim_config
    from relist.sim.logs import simulate_logs
    from relist.sim.world import build_world

    body = b'{"candidates": [' + b", ".join(b'{"id": %d, "score": 0.5}' % i
                                            for i in range(1, cfg.candidates + 1)) + b"]}"
    with tempfile.TemporaryDirectory(dir=work) as fresh:
        data, model_dir = Path(fresh) / "logs", Path(fresh) / "models"
        simulate_logs(build_world(load_sim_config()), data, 500, 0.1, 0.1, progress=False)
        export_version(model_dir, "v1", data, pipeline=PipelineConfig.of(["greedy_upstream_score"]),
                       activate=True)
        config = ServeConfig(watch_pointer=False)
        app = create_app(model_dir, config)
        with BackgroundServer(app, None) as stock, BackgroundServer(app, limits_of(config)) as guarded:
            latencies = paired({"stock uvicorn": stock, "guarded (relist)": guarded}, cfg.batches, cfg.batch,
                               body)
    rows = {name: {"requests": len(ms), "mean_ms": statistics.fmean(ms), "p50_ms": statistics.median(ms),
                   "p99_ms": statistics.quantiles(ms, n=100)[98]} for name, ms in latencies.items()}
    ratio = rows["guarded (relist)"]["mean_ms"] / rows["stock uvicorn"]["mean_ms"]
    view = Table(title=f"POST /v1/noop, one keep-alive client per server, {cfg.batches} alternating batches "
                       f"x {cfg.batch}")
    for column in ("protocol", "requests", "mean ms", "p50 ms", "p99 ms"):
        view.add_column(column)
    for name, row in rows.items():
        view.add_row(name, str(row["requests"]), *(f"{row[k]:.3f}" for k in ("mean_ms", "p50_ms", "p99_ms")))
    Console().print(view)
    print(f"guarded / stock mean latency: {ratio:.3f}")
    return {"rows": rows, "guarded_over_stock_mean_latency": ratio,
            "guarded_over_stock_p50_latency": rows["guarded (relist)"]["p50_ms"] / rows["stock uvicorn"]["p50_ms"]}
