"""Fixtures shared by the tests: one small simulated log directory, its feature store, and one tiny trained
model per role, made once per test worker (every test that needs a trained model takes it from here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relist.data.features import FeatureStore
from relist.io.train_config import TrainConfig
from relist.models.baselines.inputs import BaselineConfig
from relist.models.evaluator import DCWNConfig
from relist.models.generator import GRNConfig
from relist.models.ranking.config import TeacherConfig
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world

TINY_EVALUATOR = DCWNConfig(dim=8, hidden=8, heads=2, dropout=0.0, members=2)
TINY_GENERATOR = GRNConfig(dim=8, hidden=8, heads=2)
TINY_GENERATOR_CMR = GRNConfig(dim=8, hidden=8, heads=2, conditioned=True)


def tiny_train(**updates) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "lr": 0.01, "patience": None, "num_threads": 1} | updates)


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
    """2,000 lists of the default world (1,600 train, 200 valid, 200 test)."""
    out = tmp_path_factory.mktemp("sim")
    simulate_logs(build_world(load_sim_config()), out, 2000, 0.1, 0.1, progress=False)
    return out


@pytest.fixture(scope="session")
def store(logs):
    return FeatureStore.from_dir(logs)


def train_roles(logs: Path, out: Path, roles: tuple[str, ...]) -> Path:
    """Tiny models of ``roles`` trained on ``logs`` into ``out/<role>`` (the layout every consumer reads)."""
    from relist.models.ranking.config import RankingConfig
    from relist.train.baselines import BaselineTrainConfig, train_baseline
    from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
    from relist.train.generator import GeneratorTrainConfig, train_generator
    from relist.train.ranking import train_ranking

    if "ranker" in roles:
        teacher = RankingConfig(model="teacher", dim=8,
                                teacher=TeacherConfig(hidden=(16, 8), tasks=("ctr", "next", "buy"), slot_context=True),
                                train=tiny_train(batch_size=512, monitor="gauc", monitor_mode="max"))
        train_ranking(teacher, logs, out / "ranker")
    if "evaluator" in roles:
        evaluator = EvaluatorTrainConfig(model=TINY_EVALUATOR, train=tiny_train(epochs=2, monitor="click_logloss"))
        train_evaluator(evaluator, logs, out / "evaluator", ranker_dir=out / "ranker")
    if "generator" in roles:
        generator = GeneratorTrainConfig(model=TINY_GENERATOR, samples=4, valid_requests=50,
                                         train=tiny_train(max_steps_per_epoch=4, batch_size=16, monitor="value",
                                                          monitor_mode="max"))
        train_generator(generator, logs, out / "evaluator", out / "generator", ranker_dir=out / "ranker")
    if "generator_cmr" in roles:  # conditioned on the objective, drawn per batch (CMR)
        generator = GeneratorTrainConfig(model=TINY_GENERATOR_CMR, samples=4, valid_requests=50,
                                         train=tiny_train(max_steps_per_epoch=6, batch_size=16, monitor="value",
                                                          monitor_mode="max"))
        train_generator(generator, logs, out / "evaluator", out / "generator_cmr", ranker_dir=out / "ranker")
    for kind in ("prm", "dlcm", "seq2slate"):
        if kind in roles:
            cfg = BaselineTrainConfig(model=BaselineConfig(kind=kind, dim=8, hidden=8, heads=2, dropout=0.0),
                                      valid_lists=100, train=tiny_train(monitor="ndcg10", monitor_mode="max"))
            train_baseline(cfg, logs, out / kind)
    return out


@pytest.fixture(scope="session")
def models_dir(logs, tmp_path_factory):
    """Every re-ranking role, tiny, trained once: ranker, evaluator, generator, generator_cmr, prm, dlcm, seq2slate."""
    return train_roles(logs, tmp_path_factory.mktemp("models"),
                       ("ranker", "evaluator", "generator", "generator_cmr", "prm", "dlcm", "seq2slate"))


@pytest.fixture(scope="session")
def models(models_dir, store):
    from relist.rerank.registry import Models

    loaded, missing = Models.load(models_dir, store)
    assert missing == ["coarse: no " + str(models_dir / "coarse")]
    return loaded


# --- checks against the real data sets ------------------------------------------------------------
# Tests marked `real_data` read the public data sets in $RELIST_DATA (`.ci/run` sets
# RELIST_DATA=../shared/data). Without it they are deselected, not skipped, and the summary says so
# in one line: a bare clone has no data beside it, and `make test` must pass there.

REAL_DATA_ENV = "RELIST_DATA"


def pytest_configure(config):
    config.addinivalue_line("markers", f"real_data: reads the real data sets in ${REAL_DATA_ENV}")


def pytest_collection_modifyitems(config, items):
    if os.environ.get(REAL_DATA_ENV):
        return
    real = [item for item in items if item.get_closest_marker("real_data")]
    if real:
        items[:] = [item for item in items if not item.get_closest_marker("real_data")]
        config.hook.pytest_deselected(items=real)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not os.environ.get(REAL_DATA_ENV):
        terminalreporter.write_line(
            f"the checks against the real data sets (marker real_data) did not run: set {REAL_DATA_ENV} to the "
            "folder that holds them, e.g. RELIST_DATA=../shared/data (as .ci/run does)")
