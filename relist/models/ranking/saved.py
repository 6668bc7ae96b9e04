"""A trained ranking run read back: its config and vocab rebuild the model, its best weights fill it.

Separate from training (relist.train.ranking) so that evaluation, re-ranking and serving load
rankers without importing the trainer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from relist.io.config import load_config
from relist.io.weights import BEST, load_weights
from relist.models.ranking.config import RankingConfig
from relist.models.ranking.distill import SyncDistill
from relist.models.ranking.dssm import DSSM
from relist.models.ranking.teacher import FineRankTeacher
from relist.models.vocab import Vocab

RUN_CONFIG = "ranking_config.yaml"
VOCAB = "vocab.yaml"


def build_model(cfg: RankingConfig, vocab: Vocab) -> nn.Module:
    if cfg.model == "teacher":
        return FineRankTeacher(vocab, cfg.dim, cfg.teacher)
    if cfg.distill.mode == "sync":
        return SyncDistill(vocab, cfg.dim, cfg.teacher, cfg.student)
    return DSSM(vocab, cfg.dim, cfg.student)


def load_ranking_model(run_dir: str | Path) -> nn.Module:
    """The trained model of a run, ready to score: the teacher, or the student (also out of a sync run)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / RUN_CONFIG, RankingConfig)
    model = build_model(cfg, load_config(run_dir / VOCAB, Vocab))
    load_weights(model, run_dir / BEST)
    return (model.student if isinstance(model, SyncDistill) else model).eval()


def weights_digest(run_dir: str | Path) -> str:
    """sha256 of a run's best weights: what a model trained on top of it records, to be served with it."""
    return hashlib.sha256((Path(run_dir) / BEST).read_bytes()).hexdigest()
