"""Every `relist` command answers --help, and the simulate → eval path runs from the command line."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from relist.cli import app

runner = CliRunner()


def _command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix + (c.name or c.callback.__name__,) for c in group.registered_commands]
    for sub in group.registered_groups:
        paths += [prefix + (sub.name,)] + _command_paths(sub.typer_instance, prefix + (sub.name,))
    return paths


def test_every_command_has_help():
    paths = _command_paths(app)
    assert {("simulate",), ("demo",), ("serve",), ("train", "evaluator"), ("eval", "rerank")} <= set(paths)
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_simulate_then_eval_policies(tmp_path):
    data, out = tmp_path / "sim", tmp_path / "table.json"
    result = runner.invoke(app, ["simulate", "--out", str(data), "--requests", "600"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "policies", "--data", str(data), "--requests", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["policies"]["oracle"]["ipv"]["pct_oracle"] == 100.0  # the oracle under the same rules
    assert all(row["ipv"]["pct_oracle"] <= 100.0 + 1e-9 for name, row in report["policies"].items()
               if name != "oracle_no_rules")
    assert report["policies"]["oracle_no_rules"]["ipv"]["pct_oracle"] >= 100.0 - 1e-9


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("requests:\n  list_len: zero\n")
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--config", str(bad)])
    assert result.exit_code != 0
    assert "requests.list_len" in str(result.exception) + result.output
