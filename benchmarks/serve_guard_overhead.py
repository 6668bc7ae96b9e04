"""What the header/body deadlines and the connection cap cost per request: the guarded protocol
(relist.serve.http_server) against uvicorn's stock httptools protocol, same app, same run.

Both servers run in threads of this process, side by side, and serve the relist app's ``POST /v1/noop``
(reads the body, does nothing: the HTTP floor) to one keep-alive client each in the main thread, taking
turns batch by batch so that machine load hits both alike. The ratio is what counts; the absolute
latencies are those of a shared 2-core machine.

    python benchmarks/serve_guard_overhead.py [--batches 100 --batch 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()

    from _common import write_result
    from rich.console import Console
    from rich.table import Table

    from relist.serve.app import create_app
    from relist.serve.config import PipelineConfig, ServeConfig
    from relist.serve.http_server import BackgroundServer, limits_of
    from relist.serve.registry import export_version
    from relist.sim.config import load_sim_config
    from relist.sim.logs import simulate_logs
    from relist.sim.world import build_world

    body = b'{"candidates": [' + b", ".join(b'{"id": %d, "score": 0.5}' % i for i in range(1, 51)) + b"]}"
    with tempfile.TemporaryDirectory() as work:
        data, model_dir = Path(work) / "logs", Path(work) / "models"
        simulate_logs(build_world(load_sim_config()), data, 500, 0.1, 0.1, progress=False)
        export_version(model_dir, "v1", data, pipeline=PipelineConfig.of(["greedy_upstream_score"]),
                       activate=True)
        config = ServeConfig(watch_pointer=False)
        app = create_app(model_dir, config)
        with BackgroundServer(app, None) as stock, BackgroundServer(app, limits_of(config)) as guarded:
            latencies = paired({"stock uvicorn": stock, "guarded (relist)": guarded}, args.batches, args.batch,
                               body)
    rows = [{"protocol": name, "requests": len(ms), "mean_ms": statistics.fmean(ms),
             "p50_ms": statistics.median(ms), "p99_ms": statistics.quantiles(ms, n=100)[98]}
            for name, ms in latencies.items()]
    ratio = rows[1]["mean_ms"] / rows[0]["mean_ms"]
    view = Table(title=f"POST /v1/noop, one keep-alive client per server, {args.batches} alternating batches "
                       f"x {args.batch}")
    for column in ("protocol", "requests", "mean ms", "p50 ms", "p99 ms"):
        view.add_column(column)
    for row in rows:
        view.add_row(row["protocol"], str(row["requests"]), *(f"{row[k]:.3f}" for k in ("mean_ms", "p50_ms",
                                                                                          "p99_ms")))
    Console().print(view)
    print(f"guarded / stock mean latency: {ratio:.3f}")
    path = write_result("serve_guard_overhead", {"rows": rows, "guarded_over_stock_mean_latency": ratio,
                                                 "batches": args.batches, "batch": args.batch})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
