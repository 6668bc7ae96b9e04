"""Coarse and fine ranking: the distilled two-tower DSSM student and its point-wise teacher."""

from relist.models.ranking.config import StudentConfig, TeacherConfig
from relist.models.ranking.distill import SyncDistill
from relist.models.ranking.dssm import DSSM
from relist.models.ranking.scoring import CoarseScorer, point_scores, predict_logits
from relist.models.ranking.teacher import FineRankTeacher

__all__ = [
    "DSSM",
    "CoarseScorer",
    "FineRankTeacher",
    "StudentConfig",
    "SyncDistill",
    "TeacherConfig",
    "point_scores",
    "predict_logits",
]
