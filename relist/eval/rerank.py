"""`relist eval rerank`: every re-ranking policy on the same held-out requests, judged three ways.

1. True expected PV, IPV, purchases and GMV from the simulator (relist.eval.simulated.policy_table),
   relative to the logging policy and as % of the oracle — the only figures that say which list is better.
2. Evaluator score: the mean list reward LR that the trained evaluator gives the served lists.
3. NDCG@10 on logged clicks: the served order against the clicks the logging policy observed. An item
   the logging policy did not show (or the user did not reach) counts as not clicked, and requests
   without any logged click are left out — an offline metric that favours lists close to the logged ones.

Policies are built from the trained model files under one directory, one sub-directory per model
(``teacher``, ``evaluator``, ``generator``, ``prm``, ``dlcm``, ``seq2slate``); a policy whose models
are missing is skipped and the report says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from relist.data.features import FeatureStore
from relist.data.logs import read_lists
from relist.data.padding import length_mask
from relist.data.requests import Requests
from relist.data.stream import padded_column
from relist.eval.metrics import mean_ci, ndcg_per_query
from relist.eval.simulated import LOGGING, oracle_lists, policy_table, print_policy_table
from relist.rerank.beam import BeamPolicy, ListValue
from relist.rerank.last import LAST, LASTConfig, LASTPolicy
from relist.rerank.list_ranking import ListRanking, Proposer
from relist.rerank.list_scorer import ListScorer
from relist.rerank.policy import Policy, greedy_by_score, upstream_order
from relist.rerank.rules import RulesConfig

MODEL_DIRS = ("teacher", "evaluator", "generator", "prm", "dlcm", "seq2slate")
LIST_RETRIEVAL = "list_retrieval"


class BeamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(8, ge=1, description="beam width (and lists proposed to list ranking)")
    pv: float = Field(0.2, ge=0, description="weight a of expected PV in r = a·PV + b·IPV + c·GMV")
    ipv: float = Field(1.0, ge=0, description="weight b of expected IPV")
    gmv: float = Field(0.0, ge=0, description="weight c of expected GMV (needs a purchase head)")

    def weights(self) -> ListValue:
        return ListValue(self.pv, self.ipv, self.gmv)


class RerankEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(10, ge=1, description="list length served")
    requests: int = Field(1000, ge=1, description="test requests evaluated (the first of the test split)")
    objective: str = Field("ipv", description="what the oracle maximises: pv, ipv, buys or gmv")
    rules: RulesConfig = RulesConfig()
    beam: BeamConfig = BeamConfig()
    grn_samples: int = Field(8, ge=1, description="GRN lists sampled per request for list ranking")
    last: LASTConfig = Field(LASTConfig(budget_ms=None), description="LAST offline: no deadline (latency is "
                             "measured separately), the same rules as every generator")
    grn_temperature: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0, description="seed of GRN sampling")
    ndcg_k: int = Field(10, ge=1)


@dataclass
class Served:
    """What each policy served on a batch of requests, with the offline scores of those lists."""

    lists: dict[str, np.ndarray] = field(default_factory=dict)  # [B, n]
    evaluator_lr: dict[str, np.ndarray] = field(default_factory=dict)  # [B]
    ndcg: dict[str, np.ndarray] = field(default_factory=dict)  # [B], NaN where no logged click
    seconds: dict[str, float] = field(default_factory=dict)  # wall time to serve all requests
    list_sources: dict[str, float] = field(default_factory=dict)  # share of served lists per generator


@dataclass
class LoggedTest:
    requests: Requests
    shown: np.ndarray  # [B, n]
    clicks: np.ndarray  # [B, n] 0/1, 0 beyond the real exposure

    @classmethod
    def read(cls, data_dir: str | Path, limit: int | None) -> LoggedTest:
        table = read_lists(data_dir, "test", limit)
        shown, _ = padded_column(table.column("shown").combine_chunks())  # lists may differ in length
        clicks, _ = padded_column(table.column("click").combine_chunks())
        seen = length_mask(table.column("exposed_len").to_numpy().astype(np.int64), shown.shape[1]).numpy()
        return cls(Requests.from_table(table), shown, clicks * seen)


def build_policies(
    cfg: RerankEvalConfig, data_dir: str | Path, models_dir: str | Path, store: FeatureStore | None = None
) -> tuple[dict[str, Policy], ListScorer | None, list[str]]:
    """Every policy the models in ``models_dir`` allow, the evaluator's scorer, and what was skipped."""
    from relist.models.generator import load_generator
    from relist.models.ranking.scoring import point_scores
    from relist.models.saved import incomplete_reason, is_complete_model
    from relist.rerank.baselines import BaselinePolicy, greedy_by_ctr
    from relist.rerank.grn_policy import GRNPolicy
    from relist.train.ranking import load_ranking_model

    models_dir = Path(models_dir)
    store = FeatureStore.from_dir(data_dir) if store is None else store
    have = {name: is_complete_model(models_dir / name) for name in MODEL_DIRS}
    skipped = [f"{name}: {incomplete_reason(models_dir / name)}" for name, ok in have.items() if not ok]
    rules = cfg.rules.build()
    policies: dict[str, Policy] = {"upstream": upstream_order, "greedy_upstream_score": greedy_by_score}
    proposers: dict[str, Proposer] = {"upstream": upstream_order}
    if have["teacher"]:
        scores = functools.partial(point_scores, load_ranking_model(models_dir / "teacher"), store)
        beam = BeamPolicy(scores, store, cfg.beam.k, cfg.beam.weights(), rules)
        policies["greedy_ctr"] = greedy_by_ctr(scores, store, rules)
        policies["beam"] = beam
        proposers["beam"] = beam.propose
    for name in ("prm", "dlcm", "seq2slate"):
        if have[name]:
            policies[name] = BaselinePolicy.load(models_dir / name, store, rules)
    scorer = ListScorer.load(models_dir / "evaluator", store) if have["evaluator"] else None
    if have["generator"]:
        policies["grn"] = GRNPolicy.load(models_dir / "generator", store, rules=rules)
        proposers["grn"] = policies["grn"]
        if scorer is not None:
            sampler = GRNPolicy.load(models_dir / "generator", store, rules=rules, mode="sample",
                                     samples=cfg.grn_samples, temperature=cfg.grn_temperature, scorer=scorer,
                                     seed=cfg.seed)
            proposers["grn_samples"] = grn_samples(sampler)
    if scorer is not None and len(proposers) > 1:
        policies[LIST_RETRIEVAL] = ListRanking(proposers, scorer, store, rules)
    if scorer is not None and have["generator"]:
        last = LAST(load_generator(models_dir / "generator")[0], scorer, store, cfg.last.model_copy(
            update={"rules": cfg.rules}))
        policies["last"] = LASTPolicy(last)
        policies[f"{LIST_RETRIEVAL}_last"] = ListRanking({**proposers, "last": policies["last"]}, scorer, store,
                                                         rules)
    elif scorer is None:
        skipped.append(f"{LIST_RETRIEVAL}: needs the evaluator")
    return policies, scorer, skipped


def grn_samples(policy) -> Proposer:
    """All lists a sampling GRNPolicy draws per request ([B, K, n]), before it would pick one."""
    from relist.models.generator import candidate_features, chosen_items
    from relist.rerank.grn_policy import rules_hook

    @torch.no_grad()
    def propose(requests: Requests, n: int) -> np.ndarray:
        batch = candidate_features(policy.store, requests.user_id, requests.candidates, requests.cand_scores)
        hook = rules_hook(policy.rules, batch) if policy.rules is not None else None
        out = policy.model(batch, n, samples=policy.samples, temperature=policy.temperature,
                           generator=policy.generator, allowed_fn=hook)
        return chosen_items(batch["candidates"], out["choice"]).numpy()

    return propose


def serve(policies: dict[str, Policy], logged: LoggedTest, scorer: ListScorer | None, n: int,
          ndcg_k: int = 10) -> Served:
    """Run every policy on the logged requests; score the lists (and the logged ones) offline."""
    served = Served()
    served.lists[LOGGING] = logged.shown
    for name, policy in tqdm(policies.items(), desc="policies", unit="policy"):
        start = perf_counter()
        if isinstance(policy, ListRanking):
            ranked = policy.rank(logged.requests, n)
            lists = ranked.lists
            names, counts = np.unique(ranked.source_names(), return_counts=True)
            served.list_sources = {str(k): float(c) / len(lists) for k, c in zip(names, counts, strict=True)}
        else:
            lists = policy(logged.requests, n)
        served.seconds[name] = perf_counter() - start
        served.lists[name] = np.asarray(lists)
    for name, lists in served.lists.items():
        served.ndcg[name] = logged_click_ndcg(logged, lists, ndcg_k)
        if scorer is not None:
            served.evaluator_lr[name] = np.asarray(scorer.list_reward(logged.requests.user_id, lists))
    return served


def logged_click_ndcg(logged: LoggedTest, lists: np.ndarray, k: int) -> np.ndarray:
    """Per request NDCG@k of ``lists`` [B, n] against the logged clicks (NaN for requests without one)."""
    candidates = logged.requests.candidates
    labels = ((candidates[:, :, None] == logged.shown[:, None, :]) * logged.clicks[:, None, :]).sum(2)
    position = (candidates[:, :, None] == lists[:, None, :]).argmax(2)
    listed = (candidates[:, :, None] == lists[:, None, :]).any(2) & logged.requests.mask
    scores = np.where(listed, lists.shape[1] - position, -1.0)  # served order first, the rest after
    return ndcg_per_query(labels, scores, logged.requests.mask, k=k)


def rerank_report(world, logged: LoggedTest, served: Served, n: int, objective: str,
                  oracle: np.ndarray | None = None) -> dict:
    """policy_table's true rewards (when ``world`` is known) plus the evaluator score and logged-click NDCG."""
    if world is None:  # real logs: offline scores only
        report = {"requests": len(logged.requests), "list_len": n, "policies": {name: {} for name in served.lists}}
    else:
        policies = {name: lists for name, lists in served.lists.items() if name != LOGGING}
        report = policy_table(world, logged.requests, served.lists[LOGGING], policies, n, objective, oracle)
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
    report["list_retrieval_sources"] = served.list_sources
    return report


def evaluate_rerank(cfg: RerankEvalConfig, data_dir: str | Path, models_dir: str | Path) -> dict:
    """The full comparison on the first ``cfg.requests`` test requests of ``data_dir``.

    Simulated logs are judged by the simulator's true reward too; other logs by offline scores only.
    """
    from relist.sim.world import is_simulated, world_of_logs

    world = world_of_logs(data_dir) if is_simulated(data_dir) else None
    logged = LoggedTest.read(data_dir, cfg.requests)
    policies, scorer, skipped = build_policies(cfg, data_dir, models_dir)
    served = serve(policies, logged, scorer, cfg.n, cfg.ndcg_k)
    oracle = oracle_lists(world, logged.requests, cfg.n, cfg.objective) if world is not None else None
    report = rerank_report(world, logged, served, cfg.n, cfg.objective, oracle)
    report |= {"data": str(data_dir), "models": str(models_dir), "skipped": skipped,
               "config": cfg.model_dump(mode="json"),
               "sim_config": world.config.model_dump(mode="json") if world is not None else None}
    return report


def print_rerank_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    if report.get("truth", True):
        print_policy_table(report, console=console)
    table = Table(title="Offline scores of the served lists",
                  caption="evaluator LR: mean list reward; NDCG@10 vs logged clicks (unshown = 0)")
    for column in ("policy", "evaluator LR", "NDCG@10 logged", "ms / request"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in report["policies"].items():
        lr, ndcg = row.get("evaluator_lr"), row.get("ndcg_logged_clicks")
        table.add_row(name, f"{lr['mean']:.3f} ±{lr['ci95']:.3f}" if lr else "-",
                      f"{ndcg['mean']:.3f} ±{ndcg['ci95']:.3f}" if ndcg else "-",
                      f"{row['ms_per_request']:.2f}" if "ms_per_request" in row else "-")
    console.print(table)
    if report.get("list_retrieval_sources"):
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in report["list_retrieval_sources"].items())
        console.print(f"list retrieval served lists from: {shares}")
    for line in report.get("skipped", []):
        console.print(f"[yellow]skipped[/yellow] {line}")
