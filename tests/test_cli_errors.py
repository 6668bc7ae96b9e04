"""Errors for people: every command, given bad input, says what is wrong and what to do in two lines,
exits 2 and shows no traceback; --debug (or RELIST_DEBUG=1) brings the traceback back."""

from __future__ import annotations

import pytest

from relist.cli import app, main
from relist.sim.config import DEFAULT_CONFIG

CONFIGS = DEFAULT_CONFIG.parent


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code, capsys.readouterr().err


def cases(tmp, logs):
    missing = tmp / "missing"
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("requests:\n  list_len: zero\n")
    bad_letor = tmp / "S1.txt"
    bad_letor.write_text("1 2:0.5\n")
    return {  # command -> (arguments, what the message must name)
        "simulate": (["simulate", "--out", tmp / "s", "--config", bad_yaml], "requests.list_len"),
        "convert": (["convert", "letor", "--src", bad_letor, "--out", tmp / "c"], "field 'qid'"),
        "data validate": (["data", "validate", missing], str(missing)),
        "data split": (["data", "split", "--src", missing, "--out", tmp / "split"], str(missing)),
        "train ranking": (["train", "ranking", "--config", CONFIGS / "ranking_dssm.yaml", "--data", missing,
                           "--out", tmp / "r"], str(missing)),
        "train evaluator": (["train", "evaluator", "--data", logs, "--out", tmp / "e"], "--ranker"),  # ConfigError
        "train generator": (["train", "generator", "--data", logs, "--evaluator", missing, "--out", tmp / "g"],
                            str(missing)),
        "train baseline": (["train", "baseline", "--data", logs, "--out", tmp / "b", "--resume"],
                           "no training state"),  # a CheckpointError
        "train initial": (["train", "initial", "--data", missing, "--out", tmp / "i"], str(missing)),
        "eval policies": (["eval", "policies", "--data", missing], "sim_config.yaml"),
        "eval offpolicy": (["eval", "offpolicy", "--data", missing, "--models", tmp], str(missing)),
        "eval ranking": (["eval", "ranking", "--model", missing, "--data", logs], str(missing)),
        "eval rerank": (["eval", "rerank", "--data", missing, "--models", tmp], str(missing)),
        "eval evaluator": (["eval", "evaluator", "--data", missing, "--models", tmp], str(missing)),
        "export": (["export", "--model-dir", tmp / "md", "--name", "v1", "--data", missing], str(missing)),
        "serve": (["serve", "--model-dir", missing], "CURRENT"),  # a VersionError
        "demo": (["demo", "--data", missing, "--out", tmp / "d"], str(missing)),
        "bench": (["bench", "no_such_study"], "no study 'no_such_study'"),
    }


def commands(group, prefix=()) -> set[str]:
    names = {" ".join((*prefix, c.name or c.callback.__name__)) for c in group.registered_commands}
    for sub in group.registered_groups:
        names |= commands(sub.typer_instance, (*prefix, sub.name))
    return names


def test_every_command_answers_bad_input_in_two_lines(tmp_path, logs, capsys):
    table = cases(tmp_path, logs)
    assert set(table) == commands(app)  # a new command must be added here
    for name, (args, named) in table.items():
        code, err = run(args, capsys)
        assert code == 2, (name, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 2, (name, err)
        assert named in " ".join(err.split()), (name, err)
        assert "what to do:" in err, (name, err)


def test_bad_arguments_are_two_lines_naming_the_option(capsys):
    code, err = run(["demo", "--requests", "5"], capsys)
    assert code == 2 and "No such option: --requests" in err and "relist demo --help" in err
    code, err = run(["train", "evaluator", "--out", "x"], capsys)
    assert code == 2 and "Missing option '--data'" in err and len(err.strip().splitlines()) == 2
    code, err = run(["data", "split", "--src", "x", "--out", "y", "--valid", "0.5", "--test", "0.6"], capsys)
    assert code == 2 and "--valid + --test must be below 1" in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from relist.data.schema import SchemaError

    with pytest.raises(SchemaError):
        main(["data", "validate", str(tmp_path / "missing"), "--debug"])
    monkeypatch.setenv("RELIST_DEBUG", "1")
    with pytest.raises(SchemaError):
        main(["data", "validate", str(tmp_path / "missing")])
