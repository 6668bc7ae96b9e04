"""Settings of the ranking models: each coarse-ranker improvement is one switch, so it can be ablated."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
