"""The main job: simulate → train → evaluate → benchmark → report, each step rerunnable.

`relist demo` is a thin CLI over :func:`run_demo`. The quick mode shrinks every
size so a first look takes about two minutes; the default fits in about fifteen
on a 2-core machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from relist.demo.steps import Step, console, run_steps


@dataclass(frozen=True)
class DemoSizes:
    requests: int = 60_000  # logged lists (train + valid + test)
    eval_requests: int = 1000  # test requests in the simulated A/B table
    epochs: int = 4


QUICK = DemoSizes(requests=8_000, eval_requests=200, epochs=1)


def _simulate(config: Path | None, sizes: DemoSizes):
    def run(out: Path) -> dict:
        from relist.sim.config import load_sim_config
        from relist.sim.logs import simulate_logs
        from relist.sim.world import build_world

        summary = simulate_logs(build_world(load_sim_config(config)), out, sizes.requests)
        return {"data": str(out), "summary": summary}

    return run


def _eval_simple(data: Path, sizes: DemoSizes):
    def run(out: Path) -> dict:
        from relist.data.logs import logged_requests
        from relist.eval.simulated import policy_table, print_policy_table, reference_true_ctr
        from relist.rerank.policy import SIMPLE_POLICIES
        from relist.sim.world import world_of_logs

        world = world_of_logs(data)
        requests, shown = logged_requests(data, "test", sizes.eval_requests)
        policies = {**SIMPLE_POLICIES, "reference_true_ctr_greedy": reference_true_ctr(world)}
        report = policy_table(world, requests, shown, policies, shown.shape[1])
        print_policy_table(report, console=console)
        (out / "policies.json").write_text(json.dumps(report, indent=2))
        return {"table": str(out / "policies.json")}

    return run


def _report(out_root: Path):
    def run(out: Path) -> dict:
        from relist.eval.report import figure_html, policy_table_html, reward_bars, write_report

        table = json.loads((out_root / "evaluate" / "policies.json").read_text())
        sections = [
            ("Re-ranking policies: true expected reward (simulator)", policy_table_html(table)),
            ("True IPV and GMV per policy (95% CI, oracle dashed)", figure_html(reward_bars(table))),
        ]
        path = write_report(out / "report.html", "relist demo report", sections)
        return {"report": str(path)}

    return run


def run_demo(out: Path, config: Path | None = None, quick: bool = False, force: bool = False) -> dict[str, dict]:
    sizes = QUICK if quick else DemoSizes()
    out = out.resolve()
    data = out / "simulate"
    settings = {"config": str(config) if config else "default", **asdict(sizes)}
    if config is not None:
        settings["config_text"] = Path(config).read_text()
    steps = [
        Step("simulate", _simulate(config, sizes), settings),
        Step("evaluate", _eval_simple(data, sizes), settings, after=("simulate",)),
        Step("report", _report(out), {}, after=("evaluate",)),
    ]
    records = run_steps(steps, out, force)
    console.print(f"\n[bold green]report:[/bold green] {records['report']['report']}")
    return records
