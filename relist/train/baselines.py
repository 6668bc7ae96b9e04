"""Training the re-ranking baselines (PRM, DLCM, Seq2Slate) on logged lists, with the generic trainer.

Each baseline re-ranks an *initial list*: the request's candidates sorted by
the upstream score (the same input it gets at serving time). Labels exist only
for candidates the logging policy showed within the real exposure length; they
carry the click (0/1), every other candidate is unlabelled and takes no part in
the loss. PRM and DLCM learn with the list-wise softmax loss of PRM (the
labelled items' clicks as the target distribution); Seq2Slate with the same
loss at every decoding step, teacher-forced along the ideal order (clicked
items first), over the labelled items still available. LETOR lists plug into
the same batches with graded labels and dense features (``dense_lists``, ``dense_batch``).

Checkpoints are picked on the valid split's NDCG@10 of the model's order of
all candidates against the logged clicks (unshown candidates count as 0).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from relist.data.features import FeatureStore
from relist.data.logs import split_path
from relist.data.padding import NEG_INF, length_mask, pad_lists
from relist.data.stream import ParquetStream
from relist.eval.metrics import ndcg_at_k
from relist.models.baselines.inputs import BaselineConfig, initial_list_inputs, initial_order
from relist.models.baselines.seq2slate import Seq2Slate
from relist.models.baselines.spec import BaselineSpec, build_baseline, load_baseline, save_spec
from relist.models.saved import builds_model_folder
from relist.models.vocab import Vocab
from relist.train.config import TrainConfig, save_config
from relist.train.distributed import init_from_env
from relist.train.trainer import FitResult, fit, to_device

CONFIG_FILE = "baseline_train.yaml"
COLUMNS = ("user_id", "candidates", "cand_scores", "shown", "click", "exposed_len")


class BaselineTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: BaselineConfig
    train: TrainConfig = TrainConfig(monitor="ndcg10", monitor_mode="max")
    valid_lists: int | None = Field(None, ge=1, description="valid lists used per validation (None: all)")


def logged_initial_lists(store: FeatureStore, raw: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Candidates in upstream-score order plus the click labels of the shown, exposed ones."""
    order = initial_order(raw["cand_scores"], raw["candidates_mask"])
    items = np.take_along_axis(raw["candidates"], order, 1)
    scores = np.take_along_axis(raw["cand_scores"], order, 1)
    batch = initial_list_inputs(store, raw["user_id"], items, scores)
    shown = torch.as_tensor(raw["shown"])
    exposed = length_mask(torch.as_tensor(raw["exposed_len"]).long(), shown.shape[1])
    exposed &= torch.as_tensor(raw["shown_mask"])
    match = (batch["candidates"][:, :, None] == shown[:, None, :]) & exposed[:, None, :]
    match &= batch["mask"][..., None]
    clicks = torch.as_tensor(raw["click"]).float()
    return with_targets(batch, (match * clicks[:, None, :]).sum(2), match.any(2))


def with_targets(batch: dict[str, Tensor], labels: Tensor, label_mask: Tensor) -> dict[str, Tensor]:
    """Attach graded ``labels`` [B, L] (0 where unlabelled), ``label_mask`` and the ideal order ``target``.

    ``target`` [B, T] lists the columns of the positive items by label (ties in
    initial order), T = the most positives of any row; ``target_mask`` marks
    the steps a row really has.
    """
    gain = torch.where(label_mask, torch.exp2(labels) - 1.0, torch.full_like(labels, -1.0))
    positives = (gain > 0).sum(1)
    steps = max(int(positives.max()), 1)
    target = torch.sort(-gain, dim=1, stable=True).indices[:, :steps]
    target_mask = torch.arange(steps)[None, :] < positives[:, None]
    return batch | {"labels": labels, "label_mask": label_mask, "gain": gain.clamp_min(0.0),
                    "target": target, "target_mask": target_mask}


def listwise_loss(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """PRM's loss: cross-entropy between the gains and the softmax of scores over the labelled items."""
    loss = _softmax_ce(outputs["score"], batch["gain"], batch["label_mask"])
    return {"loss": loss}


def pointer_loss(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The list-wise loss at every teacher-forced step, over the labelled items not yet placed."""
    pointer, target = outputs["pointer"], batch["target"]
    available = batch["label_mask"].clone()
    losses = []
    for t in range(target.shape[1]):
        losses.append(_softmax_ce(pointer[:, t], batch["gain"], available, reduce=False))
        available = available.scatter(1, target[:, t:t + 1], False)
    per_step = torch.stack(losses, 1)
    steps = batch["target_mask"]
    return {"loss": (per_step * steps).sum() / steps.sum().clamp_min(1)}


def _softmax_ce(logits: Tensor, gain: Tensor, mask: Tensor, reduce: bool = True) -> Tensor:
    """-Σ q log softmax(logits) over ``mask``, q ∝ gain; rows without gain give 0 (and do not count)."""
    weight = gain * mask
    total = weight.sum(1)
    logp = torch.log_softmax(logits.masked_fill(~mask, NEG_INF), 1)
    per_row = -(weight * logp.masked_fill(~mask, 0.0)).sum(1) / total.clamp_min(1e-9)
    if not reduce:
        return per_row
    has = total > 0
    return per_row[has].mean() if has.any() else logits.sum() * 0.0


LOSSES: dict[str, Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor]]] = {
    "prm": listwise_loss, "dlcm": listwise_loss, "seq2slate": pointer_loss}


@torch.no_grad()
def ranking_scores(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """A score per item [B, L] whose descending order is the model's list (Seq2Slate: decoding order)."""
    if isinstance(model, Seq2Slate):
        mask = batch["mask"]
        columns = model.decode(batch, mask.shape[1])
        placed = columns >= 0
        rows = torch.arange(len(mask), device=mask.device)[:, None].expand_as(columns)
        rank_score = torch.arange(mask.shape[1], 0, -1, dtype=torch.float32, device=mask.device).expand_as(columns)
        scores = torch.full(mask.shape, NEG_INF, device=mask.device)
        scores[rows[placed], columns[placed]] = rank_score[placed]
        return scores
    return model(batch)["score"].masked_fill(~batch["mask"], NEG_INF)


def ranking_metrics(model: nn.Module, batch: dict[str, Tensor], k: int = 10) -> dict[str, float]:
    """Validation: NDCG@k of the model's order against the labels (unlabelled = 0), and the loss."""
    batch = to_device(batch, next(model.parameters()).device)
    scores = ranking_scores(model, batch).cpu()
    ndcg = ndcg_at_k(batch["labels"].cpu().numpy(), scores.numpy(), batch["mask"].cpu().numpy(), k=k)
    kind = "seq2slate" if isinstance(model, Seq2Slate) else "prm"
    return {f"ndcg{k}": ndcg, "loss": float(LOSSES[kind](model(batch), batch)["loss"])}


def logged_batches(data_dir: Path, store: FeatureStore, batch_size: int):
    def batches(epoch: int, rank: int, world_size: int):
        path = split_path(data_dir, "train")
        stream = ParquetStream(path, COLUMNS, batch_size, rank, world_size, seed=epoch)
        return (logged_initial_lists(store, raw) for raw in stream)

    return batches


def logged_valid_batch(data_dir: Path, store: FeatureStore, limit: int | None) -> dict[str, Tensor]:
    stream = ParquetStream(split_path(data_dir, "valid"), COLUMNS, limit or 10**9)
    return logged_initial_lists(store, next(iter(stream)))


def fit_baseline(
    cfg: BaselineTrainConfig,
    vocab: Vocab | None,
    train_batches,
    valid: dict[str, Tensor],
    out_dir: str | Path,
    resume: bool = False,
) -> tuple[nn.Module, FitResult]:
    """Train one baseline with the generic trainer; writes weights, curves, configs and ``baseline.yaml``."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.train.seed)
    spec = BaselineSpec(vocab=vocab, model=cfg.model)
    model = build_baseline(spec)
    result = fit(model, LOSSES[cfg.model.kind], train_batches, lambda m: ranking_metrics(m, valid), cfg.train,
                 out_dir, resume)
    env = init_from_env(cfg.train.device)
    if env.rank == 0:
        save_config(cfg, out_dir / CONFIG_FILE)
        save_spec(spec, out_dir)
    env.barrier()  # every rank reloads the best weights only once rank 0 has written the spec
    return load_baseline(out_dir)[0], result


@builds_model_folder
def train_baseline(cfg: BaselineTrainConfig, data_dir: str | Path, out_dir: str | Path,
                   resume: bool = False) -> tuple[nn.Module, FitResult]:
    """Fit a baseline on the train split of simulated (or any schema) logs in ``data_dir``."""
    data_dir = Path(data_dir)
    store = FeatureStore.from_dir(data_dir)
    valid = logged_valid_batch(data_dir, store, cfg.valid_lists)
    return fit_baseline(cfg, Vocab.of(store), logged_batches(data_dir, store, cfg.train.batch_size), valid,
                        out_dir, resume)


def dense_lists(items: pa.Table, lists: pa.Table) -> dict[str, np.ndarray]:
    """Lists of dense-feature items (LETOR) as padded arrays, in the lists' own order.

    Returns ``candidates`` [Q, L] item ids, ``dense`` [Q, L, F] (the items' ``f1..fF`` columns),
    ``labels`` [Q, L] graded relevance (the lists' ``labels`` column) and ``mask``.
    """
    columns = sorted((name for name in items.column_names if name[0] == "f" and name[1:].isdigit()),
                     key=lambda name: int(name[1:]))
    features = np.zeros((int(pc.max(items["item_id"]).as_py()) + 1, len(columns)), np.float32)
    features[items["item_id"].to_numpy()] = np.stack([items[name].to_numpy() for name in columns], 1)
    candidates, mask = pad_lists(lists.column("candidates").to_pylist())
    labels, _ = pad_lists(lists.column("labels").to_pylist(), candidates.shape[1], np.float32)
    return {"candidates": candidates, "dense": features[candidates], "labels": labels, "mask": mask}


def reorder(arrays: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """Every [Q, L, ...] array with its columns taken in ``order`` [Q, L]."""
    return {name: np.take_along_axis(value, order.reshape(*order.shape, *[1] * (value.ndim - 2)), 1)
            for name, value in arrays.items()}


def dense_batch(lists: dict[str, np.ndarray], scores: np.ndarray, rows: np.ndarray | slice = slice(None),
                order: np.ndarray | None = None) -> dict[str, Tensor]:
    """Model inputs and targets of dense lists ``rows`` with initial ``scores`` (columns in ``order``)."""
    part = {name: value[rows] for name, value in lists.items()} | {"score": scores[rows]}
    if order is not None:
        part = reorder(part, order)
    batch = initial_list_inputs(None, None, part["candidates"], part["score"], part["dense"])
    return with_targets(batch, torch.as_tensor(part["labels"]), torch.as_tensor(part["mask"]))
