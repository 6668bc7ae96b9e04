"""The demo's report step: latency per policy, evaluator validity, then one HTML file.

Numbers come from the JSON the earlier steps wrote (the same JSON `relist eval
rerank` prints), plus three measurements made here on the trained models: single-
request latency, evaluator validity against the simulator's truth, and a sweep of
per-request objective weights from clicks to spend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from relist.eval.report import (
    example_lists_html,
    figure_html,
    image_html,
    objective_front,
    policy_table_html,
    reward_bars,
    reward_vs_latency,
    validity_plots,
    validity_table_html,
    write_report,
)

if TYPE_CHECKING:
    from relist.demo.pipeline import DemoSizes

SWEEP_POLICIES = ("beam", "list_retrieval", "grn")  # and grn_cmr, the GRN that reads the weights
LATENCY_POLICIES = ("greedy_upstream_score", "greedy_ctr", "beam", "grn", "prm", "dlcm", "seq2slate",
                    "list_retrieval", "last", "list_retrieval_last")


def _gauc_table(records: dict) -> tuple[str, dict]:
    names = {"models/coarse_plain": "DSSM (plain)", "models/coarse": "DSSM, all switches + 2-stage distillation",
             "models/ranker": "fine-ranking teacher (ceiling)"}
    rows, gauc = [], {}
    for step, label in names.items():
        if step not in records:  # the coarse-ranking students train only with --with-coarse
            continue
        ctr = records[step]["test"]["ctr"]
        gauc[label] = ctr["gauc"]
        rows.append(f"<tr><td>{label}</td><td>{ctr['auc']:.4f}</td><td>{ctr['gauc']:.4f}</td></tr>")
    plain = gauc.get("DSSM (plain)", math.nan)
    rows = [r.replace("</tr>", f"<td>{'–' if math.isnan(plain) else f'{1000 * (g - plain):+.1f}‰'}</td></tr>")
            for r, g in zip(rows, gauc.values(), strict=True)]
    return ("<table><tr><th>model</th><th>test AUC</th><th>test GAUC</th><th>vs plain DSSM</th></tr>"
            + "".join(rows) + "</table>"), gauc


def build_report(out: Path, data: Path, records: dict, sizes: DemoSizes) -> Callable[[Path], dict]:
    def run(step_out: Path) -> dict:
        from relist.data.features import FeatureStore
        from relist.data.logs import logged_requests
        from relist.eval.evaluator_validity import generator_validity
        from relist.eval.latency import one_by_one, request_timings_ms, summary_ms
        from relist.eval.objective_sweep import objective_sweep
        from relist.eval.rerank import RerankEvalConfig, build_policies
        from relist.io.config import CONFIGS, load_config
        from relist.rerank.generators import Context
        from relist.rerank.registry import Models, build_generators
        from relist.sim.world import is_simulated, world_of_logs

        torch.set_num_threads(2)
        models = out / "models"
        table = json.loads(Path(records["rerank"]["table"]).read_text())
        cfg = load_config(CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
        store = FeatureStore.from_dir(data)
        loaded, _ = Models.load(models, store)
        policies, _, _ = build_policies(cfg, data, loaded)
        ctx = Context(store, cfg.rerank.rules.build(), cfg.rerank.objective)
        latency_requests = sizes.latency_requests
        requests, shown = logged_requests(data, "test", max(latency_requests, sizes.sweep_requests, 300))
        n = min(cfg.n, shown.shape[1])  # logged lists may be longer than what is served (LETOR: all documents)
        singles = one_by_one(requests[:latency_requests], n)
        latency = {name: summary_ms(request_timings_ms(lambda r, p=policies[name]: p.propose(r, n, ctx), singles))
                   for name in LATENCY_POLICIES if name in policies}
        served = {"candidates (upstream order)": requests.candidates[0], "logged list": shown[0],
                  "upstream order": requests.candidates[0, :n],
                  "served (list retrieval)": policies["list_retrieval"].propose(requests[:1], n, ctx)[0, 0]}
        cate_of = {int(i): int(store.item_cate[i]) - 1 for lst in served.values() for i in lst}
        example = {"user_id": int(requests.user_id[0]), "lists": served,
                   "note": "first test request; colours are categories"}
        gauc_html, gauc = _gauc_table(records)
        skipped = f"<p class=muted>{table['requests']} test requests; skipped: " \
                  f"{', '.join(table.get('skipped', [])) or 'none'}</p>"
        measurements = {"latency": latency, "gauc": gauc}
        if is_simulated(data):
            world = world_of_logs(data)
            validity = generator_validity(world, loaded.evaluator, policies, requests[:300], shown[:300], n, ctx)
            measurements["evaluator_validity"] = {k: v for k, v in validity.items() if k != "scatter"}
            sweeping = {name: policies[name] for name in SWEEP_POLICIES if name in policies}
            sweeping |= build_generators(["grn_cmr"], loaded, cfg.rerank)[0]  # where it was trained
            sweep = objective_sweep(world, store, sweeping, requests[:sizes.sweep_requests], n, ctx.rules,
                                    sizes.sweep_points)
            measurements["objective_sweep"] = sweep
            sections = [
                ("Re-ranking policies: true expected reward on held-out requests (simulator)",
                 policy_table_html(table) + skipped),
                ("True IPV and GMV per policy (95% CI; oracle dashed)", figure_html(reward_bars(table))),
                ("Reward vs p99 latency per request", figure_html(reward_vs_latency(
                    table, {k: v["p99_ms"] for k, v in latency.items()})) + _latency_table(latency)),
                ("Evaluator validity on every generator's proposals: calibration, LR vs truth, bias",
                 figure_html(validity_plots(validity)) + validity_table_html(validity)),
                ("The same models, per-request objective weights from clicks to spend (true IPV vs GMV)",
                 figure_html(objective_front(sweep)) + _front_table(sweep)),
            ]
        else:
            sections = [
                ("Re-ranking policies: offline scores on held-out requests (no simulator behind these logs)",
                 _offline_table(table) + skipped),
                ("Latency per request", _latency_table(latency)),
            ]
        sections += [
            ("Coarse ranking: GAUC of the DSSM variants and the teacher", gauc_html),
            ("Example request: what re-ranking changed", example_lists_html(example, cate_of)),
            ("Training curves", "".join(image_html(p) for p in sorted(models.glob("*/training_curves.png")))),
        ]
        path = write_report(step_out / "report.html", "relist demo report", sections)
        (step_out / "measurements.json").write_text(json.dumps(measurements, indent=2))
        return {"report": str(path), **measurements}

    return run


def _front_table(sweep: dict) -> str:
    rows = "".join(f"<tr><td>{name}</td><td>{100 * (f['gmv_ratio'] - 1):+.1f}%</td>"
                   f"<td>{100 * (f['ipv_ratio'] - 1):+.1f}%</td></tr>" for name, f in sweep["front"].items())
    return (f"<p class=muted>{sweep['requests']} test requests; all spend (t = 1) against all clicks (t = 0), "
            f"nothing retrained</p><table><tr><th>generator</th><th>true GMV</th><th>true IPV</th></tr>{rows}"
            "</table>")


def _offline_table(report: dict) -> str:
    rows = "".join(
        f"<tr><td>{name}</td><td>{row['evaluator_lr']['mean']:.3f} ±{row['evaluator_lr']['ci95']:.3f}</td>"
        f"<td>{row['ndcg_logged_clicks']['mean']:.3f} ±{row['ndcg_logged_clicks']['ci95']:.3f}</td></tr>"
        for name, row in report["policies"].items() if "evaluator_lr" in row and "ndcg_logged_clicks" in row)
    return ("<table><tr><th>policy</th><th>evaluator LR (±95%)</th><th>NDCG@10 on logged clicks</th></tr>"
            f"{rows}</table>")


def _latency_table(latency: dict) -> str:
    rows = "".join(f"<tr><td>{name}</td><td>{v['median_ms']:.2f}</td><td>{v['p99_ms']:.2f}</td></tr>"
                   for name, v in latency.items())
    return f"<table><tr><th>policy</th><th>median ms</th><th>p99 ms</th></tr>{rows}</table>"
