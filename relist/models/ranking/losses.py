"""Losses of the ranking models: hard labels, two-stage distillation, synchronous distillation.

Each factory returns ``loss_fn(outputs, batch)`` for relist.train.trainer.fit.
Hard labels live in the batch under LABELS[task]; the teacher's click logit
(soft label, computed offline) under ``teacher_ctr``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LABELS = {"ctr": "click", "next": "next", "buy": "buy"}
LossFn = Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor]]


def _bce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def _soft(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """BCE against the teacher's (tempered) click probability; no hard label involved."""
    return _bce(student / temperature, torch.sigmoid(teacher.detach() / temperature))


def hard_loss(tasks: tuple[str, ...] = ("ctr",)) -> LossFn:
    """Sum of per-task BCE over the tasks whose labels the batch carries.

    The purchase head learns on clicked samples only: it is the chance of a purchase given a click,
    as every list objective (relist.objective) reads it.
    """

    def term(task: str, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        if task != "buy":
            return _bce(outputs[task], batch[LABELS[task]])
        clicked = batch["click"] > 0
        return _bce(outputs[task][clicked], batch["buy"][clicked]) if clicked.any() else outputs[task].sum() * 0

    def loss_fn(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = {task: term(task, outputs, batch) for task in tasks if LABELS[task] in batch}
        return {"loss": sum(terms.values())} | terms

    return loss_fn


def distill_loss(stage: int, soft_weight: float = 0.5, temperature: float = 1.0) -> LossFn:
    """Stage 1: soft labels only. Stage 2: ``soft_weight * soft + (1 - soft_weight) * hard`` (multi-task)."""
    if stage not in (1, 2):
        raise ValueError(f"distillation stage must be 1 or 2, got {stage}")

    def loss_fn(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        soft = _soft(outputs["ctr"], batch["teacher_ctr"], temperature)
        if stage == 1:
            return {"loss": soft, "soft": soft}
        hard = _bce(outputs["ctr"], batch["click"])
        return {"loss": soft_weight * soft + (1 - soft_weight) * hard, "soft": soft, "hard": hard}

    return loss_fn


def sync_distill_loss(tasks: tuple[str, ...], soft_weight: float = 0.5, temperature: float = 1.0) -> LossFn:
    """Teacher on hard labels + student on the teacher's live (detached) logit and the hard click label."""
    teacher_loss = hard_loss(tasks)

    def loss_fn(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        teacher = teacher_loss(outputs, batch)
        soft = _soft(outputs["student_ctr"], outputs["ctr"], temperature)
        hard = _bce(outputs["student_ctr"], batch["click"])
        student = soft_weight * soft + (1 - soft_weight) * hard
        return {"loss": teacher["loss"] + student, "teacher": teacher["loss"], "soft": soft, "hard": hard}

    return loss_fn
