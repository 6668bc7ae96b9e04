"""Single-request latency of every re-ranking policy, as a server pays it (one request per call).

The models are the rerank study's default-world models (trained under ``--work`` if missing, so a
shared ``--work`` reuses them); the requests are logged test requests, each served alone with its own
candidates (m up to 50) for n=10 slots, under the business rules (``grn_cmr``, the GRN conditioned on the
objective, is trained here with the shipped config where the models lack it). Every policy runs twice: eagerly and
on the compiled path a served version runs (relist.rerank.compiled: the GRN, evaluator and teacher as
ONNX graphs in ONNX Runtime, written as ``relist export`` writes them, the GRN's slot loop in its numba
kernel); the GRN's policies run a third time with the slot loop in the exported decoder graph instead, as an
edge device runs it (``compiled_graph_decoder``). Medians and p99 per policy and
path, and the ratio to a greedy sort by the upstream score measured in the same run (the floor any
re-ranker pays). The row ``served`` is list ranking as ``relist export`` configures a version by default:
the generators served on at least 2% of validation requests, the incumbent first, no local search; the row
``served_last`` is the same with LAST (K=8) competing too, whatever its share — list retrieval + LAST as a
version serves it. Both are timed without a budget (every stage runs, and the evaluator chooses among the
lists) and again under ``budget_ms`` as the server would (``..._budget``: the incumbent first, a stage that
would overrun skipped, no evaluator choice when the incumbent alone ran). ``list_retrieval`` and
``list_retrieval_last`` are the evaluation's: every generator, then three rounds of local search.

    python -m benchmarks rerank_latency --work WORK
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table

from benchmarks.studies.rerank import ROOT, DefaultWorldStudy, conditioned_generator, default_world_models

FLOOR = "greedy_upstream_score"
SERVED = "served"  # list ranking as an exported version serves it (serve.yaml's defaults resolved on validation)
SERVED_LAST = "served_last"  # the same, with LAST among its generators
GRAPH_DECODER = "compiled_graph_decoder"  # the compiled path with the GRN's slot loop in its ONNX graph (the edge's)


class Config(DefaultWorldStudy):
    requests: int = Field(200, ge=10, description="logged test requests, each served alone")
    threads: int = Field(2, ge=1, description="torch threads")
    onnx_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads per graph (the server's)")
    budget_ms: float = Field(20.0, gt=0, description="the served rows' budget per request (serve.yaml's default)")
    policies: list[str] = [FLOOR, "greedy_ctr", "beam", "prm", "dlcm", "seq2slate", "grn", "grn_samples", "grn_cmr",
                           "last", "list_retrieval", "list_retrieval_last"]
    graph_decoder_policies: list[str] = Field(["grn", "grn_samples", "last"],
                                              description="timed again with the GRN's slot loop in its ONNX graph")


def run(cfg: Config, work: Path) -> dict:
    from relist.data.features import FeatureStore
    from relist.data.logs import logged_requests
    from relist.eval.latency import one_by_one, request_timings_ms, summary_ms
    from relist.eval.rerank import RerankEvalConfig, build_policies
    from relist.io.config import CONFIGS, load_config
    from relist.rerank.budget import Budget, StageCosts
    from relist.rerank.compiled import compiled_models, export_onnx
    from relist.rerank.generators import Context
    from relist.rerank.list_ranking import ListRanking
    from relist.rerank.registry import Models, build_generators, build_ranking
    from relist.serve.config import PipelineConfig
    from relist.serve.pipeline import UPSTREAM, VALID_REQUESTS
    from relist.sim.config import load_sim_config

    data, models_dir = default_world_models(work, load_sim_config(ROOT / cfg.world), cfg.lists, cfg.seed)
    if "grn_cmr" in cfg.policies:  # the GRN conditioned on the objective, trained here where missing
        conditioned_generator(data, models_dir, cfg.seed)
    torch.set_num_threads(cfg.threads)
    store = FeatureStore.from_dir(data)
    eager, _ = Models.load(models_dir, store)
    eval_cfg = load_config(CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
    eval_cfg = eval_cfg.model_copy(update={"policies": [p for p in cfg.policies if p not in eval_cfg.retrieval]})
    rules = eval_cfg.rerank.rules.build()
    onnx_dir = work / "onnx" / f"seed{cfg.seed}"
    export_onnx(eager, rules, onnx_dir)
    paths = {"eager": eager, "compiled": compiled_models(eager, onnx_dir, cfg.onnx_threads)}
    ctx = Context(store, rules, eval_cfg.rerank.objective)
    requests, _ = logged_requests(data, "test", cfg.requests)
    singles = one_by_one(requests, eval_cfg.n)
    out, skipped = {}, []
    valid, _ = logged_requests(data, "valid", VALID_REQUESTS)
    served_cfg = PipelineConfig().rerank  # what `relist export` resolves on validation requests and serves
    served_names = list(dict.fromkeys([UPSTREAM, *served_cfg.ranking.generators]))

    def timed(policies: dict, names: list[str]) -> dict:
        return {name: summary_ms(request_timings_ms(lambda r, p=policies[name]: p.propose(r, eval_cfg.n, ctx),
                                                    singles))
                for name in names if name in policies}

    for path, models in paths.items():
        policies, skipped, _ = build_policies(eval_cfg, data, models)
        policies[SERVED], _, choice = build_ranking(models, served_cfg, served_names, (valid, eval_cfg.n))
        served = policies[SERVED]
        last, _ = build_generators(["last"], models, served_cfg)
        policies[SERVED_LAST] = ListRanking(served.generators | last, served.scorer, served.cfg, served.incumbent)
        out[path] = timed(policies, [*cfg.policies, SERVED, SERVED_LAST])
        for name in (SERVED, SERVED_LAST):
            def budgeted(r, p=policies[name], costs=StageCosts()):  # costs: the server's running estimates
                return p.propose(r, eval_cfg.n, replace(ctx, budget=Budget(cfg.budget_ms, costs)))

            out[path][f"{name}_budget"] = summary_ms(request_timings_ms(budgeted, singles))
    graph_cfg = eval_cfg.model_copy(update={"policies": cfg.graph_decoder_policies})
    graph_models = compiled_models(eager, onnx_dir, cfg.onnx_threads, decoder_graph=True)
    out[GRAPH_DECODER] = timed(build_policies(graph_cfg, data, graph_models)[0], cfg.graph_decoder_policies)
    floor = out["eager"][FLOOR]["median_ms"]
    for rows in out.values():
        for row in rows.values():
            row["median_over_floor"] = row["median_ms"] / floor
            row["p99_over_floor"] = row["p99_ms"] / floor
    table = Table(title=f"single-request latency, m<=50, n={eval_cfg.n}, {cfg.threads} torch threads, "
                        f"{cfg.onnx_threads} ONNX Runtime thread(s)")
    for col in ("policy", "eager median ms", "eager p99 ms", "compiled median ms", "compiled p99 ms",
                f"compiled median / {FLOOR}", "decoder graph median ms", "decoder graph p99 ms"):
        table.add_column(col, justify="right")
    for name, row in out["eager"].items():
        fast, graph = out["compiled"][name], out[GRAPH_DECODER].get(name)
        table.add_row(name, f"{row['median_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{fast['median_ms']:.2f}",
                      f"{fast['p99_ms']:.2f}", f"{fast['median_over_floor']:.1f}x",
                      *(f"{graph[k]:.2f}" for k in ("median_ms", "p99_ms")) if graph else ("", ""))
    Console().print(table)
    return {**out, "served_generators": list(policies[SERVED].generators), "served_choice": choice,
            "skipped": skipped, "requests": len(singles), "threads": cfg.threads,
            "onnx_threads": cfg.onnx_threads}
