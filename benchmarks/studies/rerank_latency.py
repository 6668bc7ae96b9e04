"""Single-request latency of every re-ranking policy, as a server pays it (one request per call).

The models are the rerank study's default-world models (trained under ``--work`` if missing, so a
shared ``--work`` reuses them); the requests are logged test requests, each served alone with its own
candidates (m up to 50) for n=10 slots, under the business rules. Medians and p99 per policy, and the
ratio to a greedy sort by the upstream score measured in the same run (the floor any re-ranker pays).

    python -m benchmarks rerank_latency --work WORK
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from benchmarks.studies.rerank import CONFIGS, ROOT, default_world_models

FLOOR = "greedy_upstream_score"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    world: str = "relist/configs/sim_default.yaml"
    lists: int = 20_000
    seed: int = 0
    requests: int = Field(200, ge=10, description="logged test requests, each served alone")
    threads: int = Field(2, ge=1, description="torch threads (the server's default)")
    policies: list[str] = [FLOOR, "greedy_ctr", "beam", "prm", "dlcm", "seq2slate", "grn", "grn_samples", "last",
                           "list_retrieval", "list_retrieval_last"]


def run(cfg: Config, work: Path) -> dict:
    from relist.data.features import FeatureStore
    from relist.data.logs import logged_requests
    from relist.eval.latency import one_by_one, request_timings_ms, summary_ms
    from relist.eval.rerank import RerankEvalConfig, build_policies
    from relist.rerank.generators import Context
    from relist.rerank.registry import Models
    from relist.sim.config import load_sim_config
    from relist.train.config import load_config

    data, models_dir = default_world_models(work, load_sim_config(ROOT / cfg.world), cfg.lists, cfg.seed)
    torch.set_num_threads(cfg.threads)
    store = FeatureStore.from_dir(data)
    models, _ = Models.load(models_dir, store)
    eval_cfg = load_config(CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
    eval_cfg = eval_cfg.model_copy(update={"policies": [p for p in cfg.policies if p not in eval_cfg.retrieval]})
    policies, skipped, _ = build_policies(eval_cfg, data, models)
    ctx = Context(store, eval_cfg.rerank.rules.build(), eval_cfg.rerank.objective)
    requests, _ = logged_requests(data, "test", cfg.requests)
    singles = one_by_one(requests, eval_cfg.n)
    rows = {}
    for name in cfg.policies:
        if name in policies:
            timings = request_timings_ms(lambda r, p=policies[name]: p.propose(r, eval_cfg.n, ctx), singles)
            rows[name] = summary_ms(timings)
    for row in rows.values():
        row["median_over_floor"] = row["median_ms"] / rows[FLOOR]["median_ms"]
        row["p99_over_floor"] = row["p99_ms"] / rows[FLOOR]["median_ms"]
    table = Table(title=f"single-request latency, m<=50, n={eval_cfg.n}, {cfg.threads} threads")
    for col in ("policy", "median ms", "p99 ms", f"median / {FLOOR}"):
        table.add_column(col, justify="right")
    for name, row in rows.items():
        table.add_row(name, f"{row['median_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['median_over_floor']:.0f}x")
    Console().print(table)
    return {"rows": rows, "skipped": skipped, "requests": len(singles), "threads": cfg.threads}
