"""Settings of the ranking models: each coarse-ranker improvement is one switch, so it can be ablated.

:class:`RankingConfig` is both what ``relist train ranking`` reads and the spec saved with a run
(relist.models.ranking.saved reads it back), so it lives here, below training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from relist.io.train_config import TrainConfig

TASKS = ("ctr", "next", "buy")


class TeacherConfig(BaseModel):
    """Fine-ranking teacher: DIN target attention + DCN cross layers + a deep MLP, one head per task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[Literal["ctr", "next", "buy"], ...] = ("ctr", "next")
    attention_hidden: int = Field(32, ge=1)
    cross_layers: int = Field(2, ge=0)
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = Field(0.0, ge=0, lt=1)
    upstream: bool = Field(True, description="read the item's upstream score and its rank in the request")
    position_bias: bool = Field(True, description="PAL-style: a position term learned in training, left out "
                                                  "at scoring, so clicks are not credited to the slot")
    max_position: int = Field(64, ge=1, description="positions with their own bias (later ones share the last)")
    slot_context: bool = Field(False, description="also learn, like the position term, what the list above an "
                                                  "item does to it (the category just above, repeats of its "
                                                  "category: relist.models.ranking.context); beam search adds it "
                                                  "back slot by slot")
    max_repeats: int = Field(4, ge=1, description="earlier items of a category with their own term (more share it)")


class StudentConfig(BaseModel):
    """Two-tower DSSM; each field below is one improvement of the seed, off = plain DSSM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vector_dim: int = Field(32, ge=1, description="size of the user and item tower outputs")
    tower_hidden: tuple[int, ...] = (64,)
    head: Literal["dot", "mlp"] = Field("dot", description="final dot product or an MLP over both vectors")
    head_hidden: tuple[int, ...] = (64,)
    fm_cross: bool = Field(
        False, description="low-cost FM crossing of the behaviour sequence with the target item"
    )
    user_attention: Literal["mean", "nova"] = Field("mean", description="mean pooling or NOVA self-attention")
    item_interaction: Literal["mlp", "senet_bilinear"] = Field(
        "mlp", description="item tower field interaction"
    )
    senet_reduction: int = Field(2, ge=1)


class DistillConfig(BaseModel):
    """How the student learns from the teacher (only read when ``model: student``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["none", "two_stage", "sync"] = Field(
        "none",
        description="none: hard labels; two_stage: soft, then soft + hard from a trained teacher; "
        "sync: teacher and student trained together, the student not updating the shared embeddings",
    )
    teacher_run: str | None = Field(None, description="run directory of the trained teacher (two_stage)")
    stage1_epochs: int = Field(2, ge=1, description="epochs on soft labels only before the multi-task stage")
    soft_weight: float = Field(0.5, ge=0, le=1, description="weight of the soft term in the multi-task loss")
    temperature: float = Field(1.0, gt=0)


class RankingConfig(BaseModel):
    """One ranking run: which model, its switches, how to distill, how to train; saved next to the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["teacher", "student"]
    dim: int = Field(16, ge=1, description="embedding size of every id field")
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig(
        monitor="gauc", monitor_mode="max", batch_size=1024, epochs=5, patience=2
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="cap on training samples per epoch, shared between the ranks (quick runs)"
    )
