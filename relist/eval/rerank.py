"""`relist eval rerank`: every re-ranking policy on the same held-out requests, judged three ways.

1. True expected PV, IPV, purchases and GMV from the simulator (relist.eval.simulated.policy_table):
   relative to the logging policy, to the best baseline, and as the share of the logging→oracle gap
   closed (the oracle obeys the same business rules) — the only figures that say which list is better.
2. Evaluator score: the members' mean list reward LR that the trained evaluator gives the served lists.
3. NDCG@10 on logged clicks: the served order against the clicks the logging policy observed. An item
   the logging policy did not show (or the user did not reach) counts as not clicked, and requests
   without any logged click are left out — an offline metric that favours lists close to the logged ones.

Policies are the registered generators (relist.rerank.registry) served alone, plus list retrieval:
list ranking over several of them (with a safe incumbent chosen on validation requests and local
search). Models are read from one directory with a sub-directory per role; a policy whose models are
missing is skipped and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests, read_lists
from relist.data.padding import length_mask
from relist.data.requests import Requests
from relist.data.stream import padded_column
from relist.eval.metrics import mean_ci, ndcg_per_query
from relist.eval.simulated import LOGGING, oracle_lists, policy_table, print_policy_table
from relist.rerank.generators import Context
from relist.rerank.list_ranking import ListRanking
from relist.rerank.registry import Models, RerankConfig, build_generators, build_ranking

BASELINES = ("greedy_ctr", "dlcm", "prm", "seq2slate")


class RerankEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(10, ge=1, description="list length served")
    requests: int = Field(1000, ge=1, description="test requests evaluated (the first of the test split)")
    valid_requests: int = Field(500, ge=1, description="validation requests the incumbent is chosen on")
    rerank: RerankConfig = RerankConfig()
    policies: list[str] = Field(
        ["upstream", "greedy_upstream_score", "greedy_ctr", "beam", "prm", "dlcm", "seq2slate", "grn", "last"],
        description="generators served alone (their preferred list)")
    retrieval: dict[str, list[str] | None] = Field(
        {"list_retrieval": None, "list_retrieval_last": ["+last"]},
        description="list retrieval policies: name -> generators (null: rerank.ranking.generators; a list "
                    "starting with '+' adds to them)")
    baselines: list[str] = Field(list(BASELINES), description="what every list-wise policy must beat")
    ndcg_k: int = Field(10, ge=1)


@dataclass
class Served:
    """What each policy served on a batch of requests, with the offline scores of those lists."""

    lists: dict[str, np.ndarray] = field(default_factory=dict)  # [B, n]
    evaluator_lr: dict[str, np.ndarray] = field(default_factory=dict)  # [B]
    ndcg: dict[str, np.ndarray] = field(default_factory=dict)  # [B], NaN where no logged click
    seconds: dict[str, float] = field(default_factory=dict)  # wall time to serve all requests
    sources: dict[str, dict[str, float]] = field(default_factory=dict)  # retrieval -> share per generator
    incumbents: dict[str, dict] = field(default_factory=dict)  # retrieval -> how its incumbent was chosen


@dataclass
class LoggedTest:
    requests: Requests
    shown: np.ndarray  # [B, n]
    clicks: np.ndarray  # [B, n] 0/1, 0 beyond the real exposure

    @classmethod
    def read(cls, data_dir: str | Path, limit: int | None, split: str = "test") -> LoggedTest:
        table = read_lists(data_dir, split, limit)
        shown, _ = padded_column(table.column("shown").combine_chunks())  # lists may differ in length
        clicks, _ = padded_column(table.column("click").combine_chunks())
        seen = length_mask(table.column("exposed_len").to_numpy().astype(np.int64), shown.shape[1]).numpy()
        return cls(Requests.from_table(table), shown, clicks * seen)


def retrieval_generators(cfg: RerankEvalConfig, spec: list[str] | None) -> list[str]:
    base = list(cfg.rerank.ranking.generators)
    if spec is None:
        return base
    if spec and all(name.startswith("+") for name in spec):
        return base + [name[1:] for name in spec]
    return list(spec)


def build_policies(cfg: RerankEvalConfig, data_dir: str | Path, models: Models
                   ) -> tuple[dict[str, object], list[str], dict[str, dict]]:
    """Every policy the models allow (generators and list rankings), what was skipped, incumbent choices."""
    generators, skipped = build_generators(cfg.policies, models, cfg.rerank)
    policies: dict[str, object] = dict(generators)
    incumbents = {}
    if models.evaluator is None:
        skipped.append("list retrieval: needs the evaluator")
        return policies, skipped, incumbents
    valid, _ = logged_requests(data_dir, "valid", cfg.valid_requests)
    for name, spec in cfg.retrieval.items():
        ranking, missing, choice = build_ranking(models, cfg.rerank, retrieval_generators(cfg, spec), (valid, cfg.n))
        policies[name] = ranking
        incumbents[name] = choice | {"incumbent": ranking.incumbent, "left_out": missing}
    return policies, skipped, incumbents


def serve(policies: dict[str, object], logged: LoggedTest, models: Models, cfg: RerankEvalConfig) -> Served:
    """Run every policy on the logged requests; score the lists (and the logged ones) offline."""
    served = Served()
    served.lists[LOGGING] = logged.shown
    ctx = Context(models.store, cfg.rerank.rules.build(), cfg.rerank.objective)
    for name, policy in tqdm(policies.items(), desc="policies", unit="policy"):
        start = perf_counter()
        if isinstance(policy, ListRanking):
            ranked = policy.rank(logged.requests, cfg.n, ctx)
            lists = ranked.lists
            names, counts = np.unique(ranked.source.astype(str), return_counts=True)
            served.sources[name] = {str(k): float(c) / len(lists) for k, c in zip(names, counts, strict=True)}
        else:
            lists = policy.propose(logged.requests, cfg.n, ctx)[:, 0]
        served.seconds[name] = perf_counter() - start
        served.lists[name] = np.asarray(lists)
    for name, lists in served.lists.items():
        served.ndcg[name] = logged_click_ndcg(logged, lists, cfg.ndcg_k)
        if models.evaluator is not None:
            served.evaluator_lr[name] = np.asarray(models.evaluator.list_reward(logged.requests, lists,
                                                                                 cfg.rerank.objective))
    return served


def logged_click_ndcg(logged: LoggedTest, lists: np.ndarray, k: int) -> np.ndarray:
    """Per request NDCG@k of ``lists`` [B, n] against the logged clicks (NaN for requests without one)."""
    candidates = logged.requests.candidates
    labels = ((candidates[:, :, None] == logged.shown[:, None, :]) * logged.clicks[:, None, :]).sum(2)
    position = (candidates[:, :, None] == lists[:, None, :]).argmax(2)
    listed = (candidates[:, :, None] == lists[:, None, :]).any(2) & logged.requests.mask
    scores = np.where(listed, lists.shape[1] - position, -1.0)  # served order first, the rest after
    return ndcg_per_query(labels, scores, logged.requests.mask, k=k)


def rerank_report(world, logged: LoggedTest, served: Served, cfg: RerankEvalConfig,
                  oracle: np.ndarray | None = None, oracle_free: np.ndarray | None = None) -> dict:
    """policy_table's true rewards (when ``world`` is known) plus the evaluator score and logged-click NDCG."""
    objective = cfg.rerank.objective
    goal = objective.label if objective.label in ("pv", "ipv", "buys", "gmv") else objective
    if world is None:  # real logs: offline scores only
        report = {"requests": len(logged.requests), "list_len": cfg.n,
                  "policies": {name: {} for name in served.lists}}
    else:
        policies = {name: lists for name, lists in served.lists.items() if name != LOGGING}
        report = policy_table(world, logged.requests, served.lists[LOGGING], policies, cfg.n, goal, oracle,
                              oracle_free, tuple(cfg.baselines))
    report["truth"] = world is not None
    for name, row in report["policies"].items():
        if name in served.evaluator_lr:
            mean, ci = mean_ci(served.evaluator_lr[name])
            row["evaluator_lr"] = {"mean": mean, "ci95": ci}
        if name in served.ndcg:
            values = served.ndcg[name][~np.isnan(served.ndcg[name])]
            mean, ci = mean_ci(values)
            row["ndcg_logged_clicks"] = {"mean": mean, "ci95": ci, "requests": int(len(values))}
        if name in served.seconds:
            row["ms_per_request"] = 1000 * served.seconds[name] / len(logged.requests)
    report["list_retrieval_sources"] = served.sources
    report["incumbents"] = served.incumbents
    return report


def evaluate_rerank(cfg: RerankEvalConfig, data_dir: str | Path, models_dir: str | Path,
                    oracles: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The full comparison on the first ``cfg.requests`` test requests of ``data_dir``.

    Simulated logs are judged by the simulator's true reward too; other logs by offline scores only.
    ``oracles`` (under the rules, without) may be passed in when already computed for these requests.
    """
    from relist.sim.world import is_simulated, world_of_logs

    world = world_of_logs(data_dir) if is_simulated(data_dir) else None
    logged = LoggedTest.read(data_dir, cfg.requests)
    store = FeatureStore.from_dir(data_dir)
    models, missing = Models.load(models_dir, store)
    policies, skipped, incumbents = build_policies(cfg, data_dir, models)
    served = serve(policies, logged, models, cfg)
    served.incumbents = incumbents
    if world is not None and oracles is None:
        oracles = compute_oracles(world, logged.requests, cfg)
    report = rerank_report(world, logged, served, cfg, *(oracles or (None, None)))
    report |= {"data": str(data_dir), "models": str(models_dir), "skipped": missing + skipped,
               "config": cfg.model_dump(mode="json"),
               "sim_config": world.config.model_dump(mode="json") if world is not None else None}
    return report


def compute_oracles(world, requests: Requests, cfg: RerankEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """The oracle lists under the evaluation's business rules, and without any rule."""
    objective = cfg.rerank.objective
    goal = objective.label if objective.label in ("pv", "ipv", "buys", "gmv") else objective
    return (oracle_lists(world, requests, cfg.n, goal, cfg.rerank.rules.build()),
            oracle_lists(world, requests, cfg.n, goal))


def print_rerank_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    if report.get("truth", True):
        print_policy_table(report, console=console)
    table = Table(title="Offline scores of the served lists",
                  caption="evaluator LR: members' mean list reward; NDCG@10 vs logged clicks (unshown = 0)")
    for column in ("policy", "evaluator LR", "NDCG@10 logged", "ms / request"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in report["policies"].items():
        lr, ndcg = row.get("evaluator_lr"), row.get("ndcg_logged_clicks")
        table.add_row(name, f"{lr['mean']:.3f} ±{lr['ci95']:.3f}" if lr else "-",
                      f"{ndcg['mean']:.3f} ±{ndcg['ci95']:.3f}" if ndcg else "-",
                      f"{row['ms_per_request']:.2f}" if "ms_per_request" in row else "-")
    console.print(table)
    for name, shares in report.get("list_retrieval_sources", {}).items():
        text = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        choice = report.get("incumbents", {}).get(name)  # absent from a report pooled over seeds
        said = f" (incumbent {choice['incumbent']})" if choice is not None else ""
        console.print(f"{name}{said} served lists from: {text}")
    for line in report.get("skipped", []):
        console.print(f"[yellow]skipped[/yellow] {line}")
