"""Settings of the training loop (relist.train.trainer.fit), one validated object.

It lives below relist.train because saved runs carry it: a ranking run's spec
(``ranking_config.yaml``, :class:`relist.models.ranking.config.RankingConfig`) embeds it, and reading
that spec back to load the model must not import the trainer. Every setting of ``fit`` is here
(nothing hides in its keyword defaults), so a run's saved config says how it was trained.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Settings of :func:`relist.train.trainer.fit` (``batch_size`` is read by the data function)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; None: no clipping")
    seed: int = Field(0, ge=0)
    patience: int | None = Field(3, ge=1, description="epochs without progress before stopping; None: never")
    monitor: str = Field("loss", description="name of the validation metric that picks the best epoch, or a sum "
                                             "of several: 'ctr_loss+next_loss'")
    monitor_mode: Literal["max", "min"] = "min"
    max_steps_per_epoch: int | None = Field(None, ge=1)
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None: torch's default")
    keep_epochs: bool = Field(False, description="also keep every epoch's weights (epochs/<k>.safetensors), to "
                                                 "study which epoch a monitor should have picked")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
