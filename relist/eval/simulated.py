"""The simulated A/B test: every policy judged by the true expected reward of its lists.

Each policy serves the same held-out requests; the true user model gives the
exact expected PV, IPV, purchases and GMV of each served list. Figures are
means over requests with 95% confidence intervals, relative to the logging
policy (paired per request) and as a share of the oracle.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from relist.data.requests import Requests
from relist.eval.metrics import mean_ci, paired_relative
from relist.rerank.policy import Policy
from relist.sim.oracle import oracle_list, true_ctr_greedy
from relist.sim.user_model import OBJECTIVES, outcomes
from relist.sim.world import World

LOGGING = "logging"
ORACLE = "oracle"


def true_rewards(world: World, users: np.ndarray, lists: np.ndarray) -> dict[str, np.ndarray]:
    out = outcomes(world, users, lists)
    return {name: out.metric(name) for name in OBJECTIVES}


def oracle_lists(world: World, requests: Requests, n: int, objective: str = "ipv",
                 progress: bool = True) -> np.ndarray:
    rows = tqdm(range(len(requests)), desc="oracle", disable=not progress, leave=False)
    return np.stack([oracle_list(world, int(requests.user_id[r]), requests.candidates[r][requests.mask[r]], n,
                                 objective)[0] for r in rows])


def reference_true_ctr(world: World) -> Policy:
    """Greedy by the *true* standalone CTR — uses simulator truth, so it is a reference, not a policy to ship."""

    def policy(requests: Requests, n: int) -> np.ndarray:
        return np.stack([true_ctr_greedy(world, int(u), c[m], n)
                         for u, c, m in zip(requests.user_id, requests.candidates, requests.mask, strict=True)])

    return policy


def policy_table(
    world: World,
    requests: Requests,
    logged_shown: np.ndarray,
    policies: dict[str, Policy | np.ndarray],
    n: int,
    objective: str = "ipv",
    oracle: np.ndarray | None = None,
) -> dict:
    """JSON-ready table: per policy and metric the mean, CI, change vs logging and % of oracle.

    ``policies`` maps a name to a policy or to lists it already served ([B, n]).
    ``oracle`` lists are computed when not given.
    """
    served = {LOGGING: logged_shown}
    for name, policy in policies.items():
        served[name] = policy if isinstance(policy, np.ndarray) else policy(requests, n)
    served[ORACLE] = oracle if oracle is not None else oracle_lists(world, requests, n, objective)
    rewards = {name: true_rewards(world, requests.user_id, lists) for name, lists in served.items()}
    rows = {}
    for name, reward in rewards.items():
        rows[name] = {}
        for metric in OBJECTIVES:
            mean, ci = mean_ci(reward[metric])
            rel, rel_ci = paired_relative(reward[metric], rewards[LOGGING][metric])
            rows[name][metric] = {
                "mean": mean, "ci95": ci, "vs_logging": rel, "vs_logging_ci95": rel_ci,
                "pct_oracle": 100.0 * mean / float(np.mean(rewards[ORACLE][metric])),
            }
    return {"requests": len(requests), "list_len": n, "objective": objective, "policies": rows}


def print_policy_table(report: dict, title: str = "True expected reward per request (simulator)",
                       console: Console | None = None) -> None:
    """Each cell: mean ±95% CI, then change vs the logging policy and % of the oracle."""
    table = Table(title=title, caption="cell: mean ±95% CI / change vs logging, % of oracle")
    table.add_column("policy")
    for metric in OBJECTIVES:
        table.add_column(metric.upper(), justify="right")
    for name, row in report["policies"].items():
        cells = [f"{r['mean']:.3f} ±{r['ci95']:.3f}\n{100 * r['vs_logging']:+.1f}%, {r['pct_oracle']:.0f}%"
                 for r in (row[metric] for metric in OBJECTIVES)]
        table.add_row(name, *cells)
    (console or Console()).print(table)
