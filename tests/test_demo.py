"""The main job end to end at tiny sizes: on the simulator, rerun from its outputs, and on plain logs."""

from __future__ import annotations

import json
import shutil

import pytest

from relist.demo.pipeline import DemoSizes, run_demo

TINY = DemoSizes(requests=2500, eval_requests=20, epochs=1, generator_steps=4, latency_requests=3, sweep_requests=5,
                 sweep_points=2)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, sizes=TINY)


def test_demo_trains_evaluates_reports_and_exports(simulated):
    out, records = simulated
    table = json.loads((out / "rerank" / "rerank.json").read_text())
    assert table["truth"] and {"beam", "grn", "list_retrieval", "last", "prm", "oracle"} <= set(table["policies"])
    html = (out / "report" / "report.html").read_text()
    assert "True IPV and GMV per policy" in html and "data:image/png;base64," in html
    assert f"{table['policies']['oracle']['ipv']['mean']:.3f}" in html  # the report shows the JSON's figures
    sweep = json.loads((out / "report" / "measurements.json").read_text())["objective_sweep"]
    assert [p["t"] for p in sweep["points"]] == [0.0, 1.0] and set(sweep["front"]) == {"beam", "list_retrieval",
                                                                                        "grn", "grn_cmr"}
    assert "per-request objective weights from clicks to spend" in html  # the conditioned GRN was trained too
    assert (out / "model_dir" / "CURRENT").read_text().strip() == f"demo-{records['rerank']['digest']}"
    assert json.loads((out / "timings.json").read_text())["steps"]["simulate"]["skipped"] is False


def test_rerun_skips_steps_whose_inputs_did_not_change(simulated):
    out, _ = simulated
    again = run_demo(out, sizes=TINY)
    assert all(record.get("skipped") for record in again.values())


def test_demo_on_logs_without_a_simulator(simulated, tmp_path):
    out, _ = simulated
    logs = tmp_path / "logs"
    shutil.copytree(out / "simulate", logs, ignore=shutil.ignore_patterns("step.json", "sim_config.yaml"))
    run_demo(tmp_path / "out", data=logs, sizes=TINY)
    table = json.loads((tmp_path / "out" / "rerank" / "rerank.json").read_text())
    assert not table["truth"] and "ipv" not in table["policies"]["grn"]
    assert "evaluator_lr" in table["policies"]["grn"]
    assert "offline scores" in (tmp_path / "out" / "report" / "report.html").read_text()
