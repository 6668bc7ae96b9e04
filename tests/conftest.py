"""Fixtures shared by the model tests: one small simulated log directory and its feature store per worker."""

from __future__ import annotations

import os

import pytest

from relist.data.features import FeatureStore
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
    """2,000 lists of the default world (1,600 train, 200 valid, 200 test)."""
    out = tmp_path_factory.mktemp("sim")
    simulate_logs(build_world(load_sim_config()), out, 2000, 0.1, 0.1, progress=False)
    return out


@pytest.fixture(scope="session")
def store(logs):
    return FeatureStore.from_dir(logs)


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
