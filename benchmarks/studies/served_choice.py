"""What the evaluator's choice is worth in a served version, on requests the export did not see.

A version exported with the shipped serving config keeps the generators served on at least 2% of
validation requests; on the default world that is beam alone, and list ranking then lets the
evaluator choose among beam's k lists — half of the served path's cost (``rerank_latency``). This
study measures, on validation requests after the ones the export chose on (the design bucket), the
true IPV of the served list against the incumbent's own first list, paired, and how often they differ,
so that whether scoring is worth its time under load is decided on data.

    python -m benchmarks served_choice --work WORK
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from benchmarks.studies.rerank import ROOT, DefaultWorldStudy, default_world_models


class Config(DefaultWorldStudy):
    requests: int = Field(1000, ge=10, description="validation requests after the export's own")
    n: int = 10


def run(cfg: Config, work: Path) -> dict:
    from relist.data.features import FeatureStore
    from relist.data.logs import logged_requests
    from relist.eval.metrics import paired_relative
    from relist.eval.simulated import true_rewards
    from relist.rerank import shared
    from relist.rerank.generators import Context
    from relist.rerank.registry import Models, build_ranking
    from relist.serve.config import PipelineConfig
    from relist.serve.pipeline import UPSTREAM, VALID_REQUESTS, with_incumbent
    from relist.sim.config import load_sim_config
    from relist.sim.world import world_of_logs

    data, models_dir = default_world_models(work, load_sim_config(ROOT / cfg.world), cfg.lists, cfg.seed)
    store = FeatureStore.from_dir(data)
    models, _ = Models.load(models_dir, store)
    rerank = with_incumbent(PipelineConfig(), data, models_dir).rerank  # resolved as export resolves it
    valid, _ = logged_requests(data, "valid", VALID_REQUESTS + cfg.requests)
    judged = valid[VALID_REQUESTS:]  # export chose on the first VALID_REQUESTS
    served, _, _ = build_ranking(models, rerank, list(dict.fromkeys([UPSTREAM, *rerank.ranking.generators])))
    ctx = Context(store, rerank.rules.build(), rerank.objective)
    lists = served.rank(judged, cfg.n, ctx).lists
    with shared.scope():
        first = served.generators[served.incumbent].propose(judged, cfg.n, ctx)[:, 0]
    world = world_of_logs(data)
    ipv_served = true_rewards(world, judged.user_id, lists)["ipv"]
    ipv_first = true_rewards(world, judged.user_id, first)["ipv"]
    change, ci = paired_relative(ipv_served, ipv_first)
    out = {"generators": list(served.generators), "incumbent": served.incumbent,
           "requests": len(judged), "split": "valid (after the export's own)",
           "served_ipv": float(ipv_served.mean()), "incumbent_first_ipv": float(ipv_first.mean()),
           "vs_incumbent_first": {"relative": change, "ci95": ci, "relative_hi": change + ci},
           "differs": float((lists != first).any(1).mean())}
    print(f"served {out['served_ipv']:.4f} vs the incumbent's first list {out['incumbent_first_ipv']:.4f}: "
          f"{100 * change:+.2f}% ± {100 * ci:.2f}%, different lists on {100 * out['differs']:.0f}% of requests")
    return out
