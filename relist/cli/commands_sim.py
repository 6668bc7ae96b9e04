"""`relist simulate` and `relist eval policies`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from relist.eval.provenance import write_stamped

console = Console()


def simulate(
    out: Path = typer.Option(..., help="Directory for items.parquet, users.parquet, lists/{train,valid,test}/."),
    config: Path = typer.Option(None, help="Simulator YAML config (default: the embedded default world)."),
    requests: int = typer.Option(50_000, help="Number of logged requests (lists) over all splits."),
    valid_frac: float = typer.Option(0.1, help="Share of requests, after train in time, for validation."),
    test_frac: float = typer.Option(0.1, help="Share of the last requests held out for testing."),
    shard_size: int = typer.Option(200_000, help="Lists per Parquet shard."),
) -> None:
    """Simulate a feed and write its logs in the relist schema (streams to shards, bounded memory)."""
    from relist.sim.config import load_sim_config
    from relist.sim.logs import simulate_logs
    from relist.sim.world import build_world

    world = build_world(load_sim_config(config))
    summary = simulate_logs(world, out, requests, valid_frac, test_frac, shard_size=shard_size)
    console.print(f"wrote {out}: {summary}")


def eval_policies(
    data: Path = typer.Option(..., help="Simulated log directory (from `relist simulate`)."),
    requests: int = typer.Option(1000, help="Test requests to evaluate (the first ones of the test split)."),
    objective: str = typer.Option("ipv", help="What the oracle maximises: pv, ipv, buys or gmv."),
    cate_window: int = typer.Option(2, help="Business rule every policy and the oracle keep: no category "
                                            "repeated within this many slots (0: no rule)."),
    out: Path = typer.Option(None, help="Write the table as JSON here."),
) -> None:
    """Simple policies vs the logging policy and the oracle, by true expected reward."""
    from relist.data.features import FeatureStore
    from relist.data.logs import logged_requests
    from relist.eval.simulated import oracle_lists, policy_table, print_policy_table, reference_true_ctr
    from relist.rerank.generators import Context
    from relist.rerank.policy import GreedyUpstreamScore, RandomOrder, Upstream
    from relist.rerank.rules import BusinessRules
    from relist.sim.world import world_of_logs

    world = world_of_logs(data)
    reqs, shown = logged_requests(data, "test", requests)
    n, rules = shown.shape[1], BusinessRules(cate_window=cate_window)
    ctx = Context(FeatureStore.from_dir(data), rules)
    simple = {"upstream": Upstream(), "greedy_upstream_score": GreedyUpstreamScore(), "random": RandomOrder()}
    policies = {name: generator.propose(reqs, n, ctx)[:, 0] for name, generator in simple.items()}
    policies["reference_true_ctr_greedy"] = reference_true_ctr(world, rules)(reqs, n)
    report = policy_table(world, reqs, shown, policies, n, objective, oracle_lists(world, reqs, n, objective, rules),
                          oracle_lists(world, reqs, n, objective))
    report["data"] = str(data)
    report["sim_config"] = world.config.model_dump()
    print_policy_table(report, console=console)
    if out is not None:
        console.print(f"wrote {write_stamped(report, out)}")


def register(app: typer.Typer, train_app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("simulate")(simulate)
    eval_app.command("policies")(eval_policies)
