"""Fixtures shared by the model tests: one small simulated log directory and its feature store per worker."""

from __future__ import annotations

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
