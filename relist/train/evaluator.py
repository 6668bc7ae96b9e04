"""Training the DCWN evaluator ensemble on logged lists with the real-exposure mask (its loss:
relist.models.evaluator).

Only positions the user actually saw (``j < exposed_len``) carry click and scroll labels. Each
member learns from its own bootstrap resample: a list enters member e's loss with a Poisson(1)
weight drawn from its request id, so the resample is the same in every epoch, on every rank and
after a resume. A share of the
lists is shown without upstream scores, so the evaluator still works for requests that send none.
Checkpoints are picked on the valid split's click log-loss of the members' mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from relist.data.features import FeatureStore
from relist.data.logs import read_lists, split_path, upstream_score_sample
from relist.data.padding import length_mask
from relist.data.requests import Requests
from relist.data.stream import ParquetStream, table_arrays
from relist.eval.metrics import auc, pearson
from relist.io.config import ConfigError
from relist.io.train_config import TrainConfig
from relist.models.evaluator import SPEC_FILE, DCWNConfig, Evaluator, EvaluatorSpec, exposure
from relist.models.inputs import list_inputs
from relist.models.vocab import Vocab
from relist.rerank.list_scorer import PriorFn, list_priors, teacher_prior
from relist.train.distributed import save_on_rank0
from relist.train.model_folder import builds_model_folder
from relist.train.trainer import FitResult, fit, to_device

CONFIG_FILE = "evaluator_train.yaml"
LABELS = ("request_id", "user_id", "candidates", "cand_scores", "shown", "click", "next", "buy", "exposed_len")


class EvaluatorTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: DCWNConfig = DCWNConfig()
    train: TrainConfig = TrainConfig(monitor="click_logloss", monitor_mode="min")
    score_dropout: float = Field(0.1, ge=0, le=1, description="share of train lists seen without upstream "
                                                              "scores, for requests that send none")
    valid_lists: int | None = Field(None, ge=1, description="valid lists used per validation (None: all)")


def bootstrap_weights(request_ids: np.ndarray, members: int, seed: int) -> np.ndarray:
    """[E, B] Poisson(1) counts of each list in each member's resample, a function of (id, member, seed).

    One member trains on every list once (no resampling).
    """
    if members == 1:
        return np.ones((1, len(request_ids)))
    x = (np.asarray(request_ids, dtype=np.uint64)[None, :] * np.uint64(members)
         + np.arange(members, dtype=np.uint64)[:, None] + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):  # splitmix64: wrapping arithmetic is the point
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    uniform = (x >> np.uint64(11)).astype(np.float64) / 2.0**53
    cdf = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1)) for k in range(12)])
    return np.searchsorted(cdf, uniform).astype(np.float64)


def labelled_batch(store: FeatureStore, raw: dict[str, np.ndarray], members: int = 1, seed: int = 0,
                   score_dropout: float = 0.0, prior: PriorFn | None = None) -> dict[str, Tensor]:
    """Features of logged lists plus click/next/buy labels, the exposure mask and bootstrap weights
    (and the teacher's logits of the shown items, when the evaluator starts from them)."""
    requests = Requests.from_stream(raw)
    shown = np.where(raw["shown_mask"], raw["shown"], 0) if "shown_mask" in raw else raw["shown"]
    if score_dropout > 0:
        dropped = torch.rand(len(requests)).numpy() < score_dropout
        requests.cand_scores = np.where(dropped[:, None], np.nan, requests.cand_scores).astype(np.float32)
    batch = list_inputs(store, requests, shown)
    if prior is not None:
        batch |= list_priors(prior, store, requests, shown, np.arange(len(requests)))
    batch["exposed"] = length_mask(torch.as_tensor(raw["exposed_len"]).long(), shown.shape[1]) & batch["mask"]
    for label in ("click", "next", "buy"):
        values = raw.get(label, np.zeros_like(raw["click"]))
        batch[label] = torch.as_tensor(values).float()
    batch["has_buy"] = torch.tensor("buy" in raw)
    batch["weight"] = torch.as_tensor(bootstrap_weights(raw["request_id"], members, seed), dtype=torch.float32)
    return batch


def train_batches(data_dir: Path, store: FeatureStore, cfg: EvaluatorTrainConfig, prior: PriorFn | None):
    columns = _columns(data_dir)

    def batches(epoch: int, rank: int, world_size: int):
        stream = ParquetStream(split_path(data_dir, "train"), columns, cfg.train.batch_size, rank, world_size,
                               seed=epoch)
        return (labelled_batch(store, raw, cfg.model.members, cfg.train.seed, cfg.score_dropout, prior)
                for raw in stream)

    return batches


def _columns(data_dir: Path) -> list[str]:
    """The label columns the logs have (``buy`` is optional in the schema)."""
    import pyarrow.dataset as ds

    logged = ds.dataset(split_path(data_dir, "train"), format="parquet").schema.names
    return [name for name in LABELS if name != "buy" or name in logged]


def read_raw(data_dir: Path, split: str, columns: list[str], limit: int | None) -> dict[str, np.ndarray]:
    """The first ``limit`` lists of a split (validated) as the padded arrays a stream batch holds."""
    return table_arrays(read_lists(data_dir, split, limit).select(columns))


def exposure_metrics(model: Evaluator, batch: dict[str, Tensor]) -> dict[str, float]:
    """Click/scroll quality of the members' mean on exposed positions, and how well LR predicts clicks."""
    batch = to_device(batch, next(model.parameters()).device)
    logits = {name: value.cpu() for name, value in model(batch).items()}
    batch = {name: value.cpu() for name, value in batch.items()}
    seen = batch["exposed"]
    p_click = torch.sigmoid(logits["click"]).mean(0) * batch["mask"]
    p_next = torch.sigmoid(logits["next"]).mean(0)
    clicks = (batch["click"] * seen).sum(1).numpy()
    lr = (torch.sigmoid(logits["click"]) * exposure(logits["next"])).mean(0).mul(batch["mask"]).sum(1).numpy()
    return {
        "click_logloss": F.binary_cross_entropy(p_click[seen].clamp(1e-6, 1 - 1e-6), batch["click"][seen]).item(),
        "click_auc": auc(batch["click"][seen].numpy(), p_click[seen].numpy()),
        "next_auc": (auc(batch["next"][seen].numpy(), p_next[seen].numpy())
                     if batch["next"][seen].unique().numel() > 1 else float("nan")),  # LETOR: always 1
        "lr_pearson": pearson(lr, clicks),
        "member_spread": float(torch.sigmoid(logits["click"]).std(0)[seen].mean()) if len(logits["click"]) > 1
        else 0.0,
    }


@builds_model_folder
def train_evaluator(
    cfg: EvaluatorTrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
    ranker_dir: str | Path | None = None,
) -> tuple[FitResult, EvaluatorSpec]:
    """Fit a DCWN ensemble on ``data_dir``'s train split; weights, curves and ``evaluator.yaml`` go to ``out_dir``.

    With ``cfg.model.prior`` the heads start from the fine-ranking teacher in ``ranker_dir``.
    """
    from relist.models.ranking.saved import load_ranking_model, weights_digest

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    store = FeatureStore.from_dir(data_dir)
    columns = _columns(data_dir)
    vocab = Vocab.of(store, upstream_score_sample(data_dir))
    prior, digest = None, None
    if cfg.model.prior:
        if ranker_dir is None:
            raise ConfigError("model.prior: true needs the trained fine-ranking teacher (--ranker DIR); "
                              "or set model.prior: false")
        prior = teacher_prior(load_ranking_model(ranker_dir), cfg.model.prior_in_slot)
        digest = weights_digest(ranker_dir)

    torch.manual_seed(cfg.train.seed)
    model = Evaluator(vocab, cfg.model)
    valid = labelled_batch(store, read_raw(data_dir, "valid", columns, cfg.valid_lists), cfg.model.members,
                           prior=prior)
    result = fit(model, model.loss, train_batches(data_dir, store, cfg, prior),
                 lambda m: exposure_metrics(m, valid), cfg.train, out_dir, resume)
    spec = EvaluatorSpec(vocab=vocab, model=cfg.model, prior_weights=digest)
    save_on_rank0(out_dir, {CONFIG_FILE: cfg, SPEC_FILE: spec}, cfg.train.device)
    return result, spec
