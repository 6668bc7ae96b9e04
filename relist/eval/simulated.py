"""The simulated A/B test: every policy judged by the true expected reward of its lists.

Each policy serves the same held-out requests; the true user model gives the exact expected PV,
IPV, purchases and GMV of each served list. Figures are means over requests with 95% confidence
intervals, relative to the logging policy (paired per request), as a share of the oracle, and —
the headline — as the **share of the logging→oracle gap a policy closes**, where the oracle obeys
the same business rules as every policy. The oracle that ignores the rules is reported beside it.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from relist.data.requests import Requests
from relist.eval.metrics import mean_ci, paired_relative
from relist.objective import OBJECTIVES, Objective
from relist.rerank.rules import BusinessRules
from relist.sim.oracle import Feasible, oracle_list, true_ctr_greedy
from relist.sim.user_model import outcomes
from relist.sim.world import World

LOGGING = "logging"
ORACLE = "oracle"  # under the business rules: the headline's upper bound
ORACLE_FREE = "oracle_no_rules"


def true_rewards(world: World, users: np.ndarray, lists: np.ndarray) -> dict[str, np.ndarray]:
    out = outcomes(world, users, lists)
    return {name: out.metric(name) for name in OBJECTIVES}


def rule_check(world: World, rules: BusinessRules) -> Feasible:
    """The business rules as the oracle's feasibility test, on the world's categories and shops."""
    import torch

    def feasible(lists: np.ndarray) -> np.ndarray:
        cates = torch.as_tensor(world.cate[lists].astype(np.int64) + 1)  # the store's convention: 0 = unknown
        shops = torch.as_tensor(world.shop[lists].astype(np.int64) + 1)
        return rules.check(cates, shops).numpy()

    return feasible


def oracle_lists(world: World, requests: Requests, n: int, objective: str | Objective = "ipv",
                 rules: BusinessRules | None = None, progress: bool = True) -> np.ndarray:
    """The oracle's list per request (under ``rules`` when given)."""
    feasible = None if rules is None else rule_check(world, rules)
    rows = tqdm(range(len(requests)), desc="oracle", disable=not progress, leave=False)
    return np.stack([oracle_list(world, int(requests.user_id[r]), requests.candidates[r][requests.mask[r]], n,
                                 objective, feasible=feasible)[0] for r in rows])


def reference_true_ctr(world: World, rules: BusinessRules | None = None):
    """Greedy by the *true* standalone CTR (under ``rules``) — uses simulator truth, so it is a reference, not a
    policy to ship."""
    feasible = None if rules is None else rule_check(world, rules)

    def policy(requests: Requests, n: int) -> np.ndarray:
        lists = [true_ctr_greedy(world, int(u), c[m], n, feasible)
                 for u, c, m in zip(requests.user_id, requests.candidates, requests.mask, strict=True)]
        return np.stack([true_ctr_greedy(world, int(u), c[m], n) if lst is None else lst
                         for lst, u, c, m in zip(lists, requests.user_id, requests.candidates, requests.mask,
                                                 strict=True)])

    return policy


def policy_table(
    world: World,
    requests: Requests,
    logged_shown: np.ndarray,
    policies: dict[str, np.ndarray],
    n: int,
    objective: str | Objective = "ipv",
    oracle: np.ndarray | None = None,
    oracle_free: np.ndarray | None = None,
    baselines: tuple[str, ...] = (),
) -> dict:
    """JSON-ready table: per policy and metric the mean, CI, change vs logging, % of oracle, % of gap closed.

    ``policies`` maps a name to the lists it served ([B, n]). ``oracle`` is the best list per request
    under the rules (computed without rules when not given); ``oracle_free`` the one without rules, if
    known. ``baselines`` name the policies every new one must beat: each row also carries its paired
    change vs the best of them (by the mean of each metric).
    """
    served = {LOGGING: logged_shown, **policies}
    served[ORACLE] = oracle if oracle is not None else oracle_lists(world, requests, n, objective)
    if oracle_free is not None:
        served[ORACLE_FREE] = oracle_free
    rewards = {name: true_rewards(world, requests.user_id, lists) for name, lists in served.items()}
    if not isinstance(objective, str):
        for name, lists in served.items():
            rewards[name]["objective"] = outcomes(world, requests.user_id, lists).metric(objective)
    metrics = list(rewards[LOGGING])
    present = [name for name in baselines if name in rewards]
    rows = {}
    for name, reward in rewards.items():
        rows[name] = {}
        for metric in metrics:
            mean, ci = mean_ci(reward[metric])
            rel, rel_ci = paired_relative(reward[metric], rewards[LOGGING][metric])
            logging_mean = float(np.mean(rewards[LOGGING][metric]))
            oracle_mean = float(np.mean(rewards[ORACLE][metric]))
            gap = oracle_mean - logging_mean
            cell = {
                "mean": mean, "ci95": ci, "vs_logging": rel, "vs_logging_ci95": rel_ci,
                "vs_logging_low95": rel - rel_ci,
                "pct_oracle": 100.0 * mean / oracle_mean,
                "gap_closed": 100.0 * (mean - logging_mean) / gap if gap > 0 else float("nan"),
            }
            if present:
                best = max(present, key=lambda b, metric=metric: float(np.mean(rewards[b][metric])))
                rel, rel_ci = paired_relative(reward[metric], rewards[best][metric])
                cell |= {"vs_best_baseline": rel, "vs_best_baseline_ci95": rel_ci,
                         "vs_best_baseline_low95": rel - rel_ci, "best_baseline": best}
            rows[name][metric] = cell
    return {"requests": len(requests), "list_len": n, "objective": objective if isinstance(objective, str)
            else objective.weights, "metrics": metrics, "baselines": present, "policies": rows}


def print_policy_table(report: dict, title: str = "True expected reward per request (simulator)",
                       console: Console | None = None) -> None:
    """Each cell: mean ±95% CI, then change vs the logging policy and % of the logging→oracle gap closed."""
    table = Table(title=title, caption="cell: mean ±95% CI / change vs logging, % of the logging→oracle gap "
                                       "closed (oracle under the business rules)")
    table.add_column("policy")
    metrics = report["metrics"]
    for metric in metrics:
        table.add_column(metric.upper(), justify="right")
    for name, row in report["policies"].items():
        cells = [f"{r['mean']:.3f} ±{r['ci95']:.3f}\n{100 * r['vs_logging']:+.1f}%, {r['gap_closed']:.0f}% gap"
                 for r in (row[metric] for metric in metrics)]
        table.add_row(name, *cells)
    (console or Console()).print(table)
