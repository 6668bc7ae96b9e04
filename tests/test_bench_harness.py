"""The benchmark harness (issue 13 item 7): a study's expected figures pass or fail it, --set overrides are
applied and recorded, and every shipped study's config file is valid for its study."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

from benchmarks import harness
from relist.cli import app, commands_bench

ROOT = Path(__file__).resolve().parent.parent


class TinyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = 3
    scale: float = 1.0
    nested: dict = {}


def tiny_run(cfg: TinyConfig, work: Path) -> dict:
    """A study whose figures are known: ``speed`` grows with ``scale``; a key with a dot; a list."""
    (work / "ran").write_text("yes")
    return {"rows": {"fast": {"speed": 10.0 * cfg.scale}, "noisy_0.5": {"size": cfg.size}},
            "sizes": [cfg.size, 2 * cfg.size], "nested": cfg.nested}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """The study ``benchmarks.studies.tiny`` (defined here) and a config file for it; returns a runner of
    the harness's command line that writes into tmp_path."""
    module = types.ModuleType("benchmarks.studies.tiny")
    module.Config, module.run = TinyConfig, tiny_run
    monkeypatch.setitem(sys.modules, "benchmarks.studies.tiny", module)

    def run(expected: dict, *overrides: str, settings: dict | None = None) -> tuple[int, dict, Path]:
        config = tmp_path / "tiny.yaml"
        config.write_text(json.dumps({**(settings or {"size": 3}), "expected": expected}))  # JSON is YAML
        out = tmp_path / "tiny.json"
        args = ["tiny", "--config", str(config), "--out", str(out), "--work", str(tmp_path / "work")]
        code = harness.main([*args, *[part for item in overrides for part in ("--set", item)]])
        return code, json.loads(out.read_text()) if out.is_file() else {}, tmp_path / "work"

    return run


def test_a_study_whose_figures_meet_their_bounds_passes_and_writes_its_stamped_json(tiny, capsys):
    code, record, work = tiny({"rows.fast.speed": {">=": 9.5, "<": 10.5}, "rows.noisy_0.5.size": {"==": 3},
                               "sizes.1": {">": 5}, "sizes.-1": {"<=": 6}})
    assert code == 0
    assert (work / "ran").read_text() == "yes"
    assert record["passed"] is True and record["study"] == "tiny"
    assert {"command", "machine", "finished"} <= set(record) and "load_average_1m" in record["machine"]
    assert record["config"] == {"size": 3, "scale": 1.0, "nested": {}} and record["overrides"] == {}
    assert record["results"]["rows"]["fast"]["speed"] == 10.0
    assert [row["passed"] for row in record["expectations"]] == [True] * 5
    table = capsys.readouterr().out
    assert "rows.fast.speed" in table and ">= 9.5" in table and "pass" in table


def test_a_figure_that_misses_its_bound_exits_1_and_is_named(tiny, capsys):
    code, record, _ = tiny({"rows.fast.speed": {">=": 11.0}, "sizes.0": {"==": 3}})
    assert code == 1
    assert record["passed"] is False
    assert [(row["figure"], row["passed"]) for row in record["expectations"]] == [("rows.fast.speed", False),
                                                                                   ("sizes.0", True)]
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert "rows.fast.speed" in captured.err and "sizes.0" not in captured.err


def test_a_missing_figure_fails(tiny, capsys):
    code, record, _ = tiny({"rows.slow.speed": {">=": 0}})
    assert code == 1
    assert record["expectations"][0]["value"] == "missing"
    assert "rows.slow.speed" in capsys.readouterr().err


def test_set_overrides_reach_the_study_and_are_recorded(tiny):
    code, record, _ = tiny({"rows.fast.speed": {">=": 15.0}}, "scale=2", "nested.deep.k=[1, 2]", "size=7")
    assert code == 0  # 10 x 2 meets a bound that the config file's own scale misses
    assert record["overrides"] == {"scale": 2, "nested.deep.k": [1, 2], "size": 7}
    assert record["config"]["scale"] == 2.0 and record["results"]["nested"] == {"deep": {"k": [1, 2]}}
    assert record["results"]["sizes"] == [7, 14]


def test_a_typo_in_the_config_or_an_override_is_an_error_naming_it(tiny, capsys):
    code, _, _ = tiny({}, "sise=4")
    err = capsys.readouterr().err
    assert code == 2 and "tiny.yaml" in err and "field 'sise'" in err
    code, _, _ = tiny({}, settings={"size": "three"})
    assert code == 2 and "field 'size'" in capsys.readouterr().err
    code, _, _ = tiny({"rows.fast.speed": {"~": 1}})
    assert code == 2 and "bounds must be a mapping" in capsys.readouterr().err
    code, _, _ = tiny({}, "no-equals-sign")
    assert code == 2 and "key.path=value" in capsys.readouterr().err


def test_lookup_follows_keys_with_dots_and_list_indices():
    results = {"a": {"b.c": [{"d": 1}, {"d": 2}], "b": {"c": 9}}}
    assert harness.lookup(results, "a.b.c.1.d") == 2  # the longest key that matches wins
    assert harness.lookup(results, "a.b.c.-2.d") == 1
    assert harness.lookup(results, "a.b.c.2.d") is harness.MISSING
    assert harness.lookup(results, "a.x") is harness.MISSING


def test_every_shipped_study_config_is_valid_for_its_study():
    names = harness.known_studies()
    assert {"sim_generation", "ranking_latency", "offpolicy_obd", "serve_bad_input", "scale_train"} <= set(names)
    for name in names:
        module = harness.load_study(name)
        path = harness.CONFIGS / f"{name}.yaml"
        settings, expected = harness.read_config(path)
        harness.validated(module.Config, settings, path)
        assert expected, f"{path}: a study without expected figures cannot fail"


def test_python_m_benchmarks_names_the_known_studies_for_an_unknown_one():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "no_such_study"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "no study 'no_such_study'" in done.stderr and "sim_generation" in done.stderr


def test_relist_bench_runs_the_checkout_harness_and_says_when_there_is_none(monkeypatch):
    result = CliRunner().invoke(app, ["bench", "no_such_study"])
    assert isinstance(result.exception, commands_bench.UnknownStudy)  # relist.cli.main turns it into two lines
    assert "sim_generation" in str(result.exception)
    monkeypatch.setattr(commands_bench, "checkout_root", lambda: None)
    result = CliRunner().invoke(app, ["bench", "sim_generation"])
    assert result.exit_code == 2 and "python -m benchmarks" in result.output


def test_serve_load_splits_a_process_trees_cpu_into_main_and_other_threads():
    """What serve_load reports per request: a child's busy thread counts as 'other', its main thread as 'main'."""
    import os

    from benchmarks.studies.serve_load import _cpu

    burn = ("import sys, threading, time\n"  # the thread stays alive: an ended thread's CPU leaves /proc's tasks
            "def spin(s):\n    end = time.thread_time() + s\n    while time.thread_time() < end: pass\n"
            "spun = threading.Event()\n"
            "threading.Thread(target=lambda: (spin(0.6), spun.set(), time.sleep(30)), daemon=True).start()\n"
            "spun.wait(); spin(0.3); sys.stdout.write('done\\n'); sys.stdout.flush(); time.sleep(30)\n")
    before = _cpu(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "done\n"
        spent = _cpu(os.getpid()) - before
    finally:
        child.kill()
        child.wait()
    assert spent["other_threads"] >= 0.4 and spent["main_thread"] >= 0.2, spent
