"""Training the DCWN evaluator on logged lists with the real-exposure mask.

Only positions the user actually saw (``j < exposed_len``) carry labels: an unseen
item was not rejected, it was never judged. Checkpoints are picked on the valid
split's click log-loss, and the list-reward weighting (plain sum vs predicted
exposure) on how well each predicts the clicks of the valid split's logged lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from relist.data.features import FeatureStore
from relist.data.logs import read_lists, split_path
from relist.data.padding import length_mask
from relist.data.stream import ParquetStream, decode
from relist.eval.metrics import auc, pearson
from relist.models.evaluator import (
    DCWN,
    DCWNConfig,
    EvaluatorSpec,
    Vocab,
    exposure,
    list_features,
    load_evaluator,
    save_spec,
)
from relist.models.saved import builds_model_folder
from relist.train.config import TrainConfig, save_config
from relist.train.distributed import init_from_env
from relist.train.trainer import FitResult, fit, to_device

CONFIG_FILE = "evaluator_train.yaml"
LABELS = ("user_id", "shown", "click", "next", "exposed_len")


class EvaluatorTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: DCWNConfig = DCWNConfig()
    train: TrainConfig = TrainConfig(monitor="click_logloss", monitor_mode="min")
    next_weight: float = Field(0.5, ge=0, description="weight of the scroll (next) head's loss")
    valid_lists: int | None = Field(None, ge=1, description="valid lists used per validation (None: all)")


def labelled_batch(store: FeatureStore, raw: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Features of logged lists plus click/next labels and the exposure mask."""
    shown = torch.as_tensor(raw["shown"])
    batch = list_features(store, raw["user_id"], shown)
    batch["exposed"] = length_mask(torch.as_tensor(raw["exposed_len"]).long(), shown.shape[1]) & batch["mask"]
    batch["click"] = torch.as_tensor(raw["click"]).float()
    batch["next"] = torch.as_tensor(raw["next"]).float()
    return batch


def evaluator_loss(next_weight: float):
    """Binary cross-entropy of clicks (and scrolls) on exposed positions only."""

    def loss_fn(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        seen = batch["exposed"]
        click = F.binary_cross_entropy_with_logits(outputs["click"][seen], batch["click"][seen])
        scroll = F.binary_cross_entropy_with_logits(outputs["next"][seen], batch["next"][seen])
        return {"loss": click + next_weight * scroll, "click": click, "next": scroll}

    return loss_fn


def train_batches(data_dir: Path, store: FeatureStore, batch_size: int):
    def batches(epoch: int, rank: int, world_size: int):
        stream = ParquetStream(
            split_path(data_dir, "train"), LABELS, batch_size, rank, world_size, seed=epoch
        )
        return (labelled_batch(store, raw) for raw in stream)

    return batches


def valid_batch(data_dir: Path, store: FeatureStore, limit: int | None) -> dict[str, Tensor]:
    table = read_lists(data_dir, "valid", limit).select(list(LABELS))
    raw = decode(table)  # list columns padded: logged lists may differ in length
    return labelled_batch(store, raw)


def exposure_metrics(model: DCWN, batch: dict[str, Tensor]) -> dict[str, float]:
    """Click/scroll quality on exposed positions, and how well each LR predicts a logged list's clicks."""
    batch = to_device(batch, next(model.parameters()).device)
    logits = {name: value.cpu() for name, value in model(batch).items()}
    batch = {name: value.cpu() for name, value in batch.items()}
    seen = batch["exposed"]
    p_click = torch.sigmoid(logits["click"]) * batch["mask"]
    clicks = (batch["click"] * seen).sum(1).numpy()
    lr_sum = p_click.sum(1).numpy()
    lr_exposure = (p_click * exposure(logits["next"])).sum(1).numpy()
    return {
        "click_logloss": F.binary_cross_entropy_with_logits(
            logits["click"][seen], batch["click"][seen]
        ).item(),
        "click_auc": auc(batch["click"][seen].numpy(), logits["click"][seen].numpy()),
        "next_auc": (auc(batch["next"][seen].numpy(), logits["next"][seen].numpy())
                     if batch["next"][seen].unique().numel() > 1 else float("nan")),  # LETOR: always 1
        "lr_sum_pearson": pearson(lr_sum, clicks),
        "lr_exposure_pearson": pearson(lr_exposure, clicks),
    }


@builds_model_folder
def train_evaluator(
    cfg: EvaluatorTrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False
) -> tuple[FitResult, EvaluatorSpec]:
    """Fit a DCWN on ``data_dir``'s train split; weights, curves and ``evaluator.yaml`` go to ``out_dir``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    store = FeatureStore.from_dir(data_dir)
    vocab = Vocab.of(store)
    torch.manual_seed(cfg.train.seed)
    model = DCWN(vocab, cfg.model)
    valid = valid_batch(data_dir, store, cfg.valid_lists)
    result = fit(
        model,
        evaluator_loss(cfg.next_weight),
        train_batches(data_dir, store, cfg.train.batch_size),
        lambda m: exposure_metrics(m, valid),
        cfg.train,
        out_dir,
        resume,
    )
    env = init_from_env(cfg.train.device)
    spec = None
    if env.rank == 0:  # one writer; the others wait for its choice of LR weighting
        save_config(cfg, out_dir / CONFIG_FILE)
        save_spec(EvaluatorSpec(vocab=vocab, model=cfg.model), out_dir)
        best, _ = load_evaluator(out_dir)
        with torch.no_grad():
            scores = exposure_metrics(best, valid)
        spec = EvaluatorSpec(
            vocab=vocab,
            model=cfg.model,
            exposure_weighted=scores["lr_exposure_pearson"] > scores["lr_sum_pearson"],
        )
        save_spec(spec, out_dir)
    return result, env.broadcast(spec)
