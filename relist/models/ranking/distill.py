"""Synchronous distillation: teacher and student trained in one model on shared embedding tables.

The teacher learns the tables from hard labels; the student reads them
detached, so its (weaker) gradients never pull the teacher's features
toward what a two-tower model can express.
"""

from __future__ import annotations

from torch import Tensor, nn

from relist.models.ranking.config import StudentConfig, TeacherConfig
from relist.models.ranking.dssm import DSSM
from relist.models.ranking.teacher import FineRankTeacher
from relist.models.vocab import Vocab


class SyncDistill(nn.Module):
    def __init__(self, vocab: Vocab, dim: int, teacher: TeacherConfig, student: StudentConfig):
        super().__init__()
        self.teacher = FineRankTeacher(vocab, dim, teacher)
        self.student = DSSM(vocab, dim, student, embeddings=self.teacher.embeddings, detach_embeddings=True)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The teacher's logits by task, plus the student's click logit as ``student_ctr``."""
        return self.teacher(batch) | {"student_ctr": self.student(batch)["ctr"]}
