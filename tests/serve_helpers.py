"""Shared by the serving tests: a tiny world (logs + one tiny trained model per role), a live server on
127.0.0.1 run with the same uvicorn settings as `relist serve`, waiting on conditions with deadlines, and
a pipeline whose scorer rates every list NaN."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable

import numpy as np
import torch

from relist.io.train_config import TrainConfig
from relist.models.evaluator import DCWNConfig
from relist.models.generator import GRNConfig
from relist.models.ranking.config import RankingConfig, StudentConfig, TeacherConfig
from relist.serve.config import PipelineConfig, ServeConfig
from relist.serve.http_server import BackgroundServer, limits_of
from relist.serve.registry import export_version
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world
from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
from relist.train.generator import GeneratorTrainConfig, train_generator
from relist.train.ranking import train_ranking

STAGES = ["greedy_upstream_score", "beam_upstream", "beam", "grn", "last"]
DEADLINE_S = 60.0  # how long a test waits for a condition before it fails (never how long it expects)


def tiny_logs(out) -> None:
    simulate_logs(build_world(load_sim_config()), out, 2000, 0.1, 0.1)


def tiny_train(monitor: str, mode: str = "max") -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=256, max_steps_per_epoch=5, monitor=monitor, monitor_mode=mode,
                       num_threads=1, device="cpu")


def tiny_models(data, root) -> dict:
    """One tiny trained model per role a version can carry (a few seconds in all)."""
    torch.set_num_threads(1)
    train_ranking(RankingConfig(model="teacher", dim=4, train=tiny_train("gauc"),
                                teacher=TeacherConfig(attention_hidden=4, hidden=(8,), cross_layers=1)),
                  data, root / "ranker")
    train_evaluator(EvaluatorTrainConfig(model=DCWNConfig(dim=4, hidden=4, heads=1, max_len=10, members=2),
                                         train=tiny_train("click_logloss", "min")), data, root / "evaluator",
                    ranker_dir=root / "ranker")
    train_generator(GeneratorTrainConfig(model=GRNConfig(dim=4, hidden=4, heads=1), train=tiny_train("value"),
                                         samples=2, valid_requests=50),
                    data, root / "evaluator", root / "generator", ranker_dir=root / "ranker")
    train_ranking(RankingConfig(model="student", dim=4, train=tiny_train("gauc"),
                                student=StudentConfig(vector_dim=4, tower_hidden=(8,), head_hidden=(8,))),
                  data, root / "coarse")
    return {role: root / role for role in ("evaluator", "generator", "ranker", "coarse")}


def tiny_world(root):
    """``root``/logs, one tiny model per role, and ``root``/models with version v1 (every stage) as CURRENT."""
    tiny_logs(root / "logs")
    models = tiny_models(root / "logs", root)
    export_version(root / "models", "v1", root / "logs", models, PipelineConfig.of(STAGES), activate=True)
    return root


def metric_value(client, key: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S, poll_s: float = 0.02):
    """Poll ``condition`` until it is truthy (returned) or fail after ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not reached within {timeout:g} s: {what}"
        time.sleep(poll_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer(BackgroundServer):
    """The app on 127.0.0.1 with the connection limits of ``config`` (the guarded protocol `relist serve`
    runs), in a thread of this process."""

    def __init__(self, app, config: ServeConfig = ServeConfig()):
        super().__init__(app, limits_of(config), start_timeout_s=DEADLINE_S)


class NaNScorer:
    """A list scorer whose every value is NaN: finite weights can still overflow."""

    name = "evaluator"

    def on_store(self, store):
        return self

    def values(self, requests, lists, objective=None):
        return np.full((1, *lists.shape[:-1]), np.nan)


def scored_nan(pipeline):
    """The same pipeline with its list ranking scored by :class:`NaNScorer`."""
    from relist.rerank.list_ranking import ListRanking

    ranking = pipeline.ranking
    return dataclasses.replace(pipeline, ranking=ListRanking(ranking.generators, NaNScorer(), ranking.cfg,
                                                             ranking.incumbent))
