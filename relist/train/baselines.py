"""Training the re-ranking baselines (PRM, DLCM, Seq2Slate) on logged lists, with the generic trainer.

Each baseline re-ranks an *initial list*: the request's candidates sorted by
the upstream score (the same input it gets at serving time). Labels exist only
for candidates the logging policy showed within the real exposure length; they
carry the click (0/1), every other candidate is unlabelled and takes no part in
the loss. Each model brings its loss (``model.loss``: PRM's list-wise softmax
loss for PRM and DLCM, ``pointer_loss`` for Seq2Slate); this module makes what
they read, the labels' gains and the ideal order ``target`` (clicked items
first, then the rest in initial order; ``with_targets``). LETOR lists plug into
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
from torch import Tensor

from relist.data.features import FeatureStore
from relist.data.logs import split_path
from relist.data.padding import NEG_INF, length_mask, pad_lists
from relist.data.stream import ParquetStream
from relist.eval.metrics import ndcg_at_k
from relist.io.train_config import TrainConfig
from relist.models.baselines.inputs import BaselineConfig, initial_list_inputs, initial_order
from relist.models.baselines.spec import SPEC_FILE, BaselineSpec, build_baseline, load_baseline
from relist.models.contract import ListGenerator
from relist.models.vocab import Vocab
from relist.train.distributed import save_on_rank0
from relist.train.model_folder import builds_model_folder
from relist.train.trainer import FitResult, fit, to_device

CONFIG_FILE = "baseline_train.yaml"
COLUMNS = ("user_id", "candidates", "cand_scores", "shown", "click", "exposed_len")


class StepSchedule(BaseModel):
    """Training counted in optimizer steps, validated every ``eval_every`` steps, stopped early on it.

    Small learning-to-rank sets give a few steps per epoch, so "20 epochs" can mean forty updates; a budget
    in steps means the same amount of training whatever the data size. The generic trainer's "epoch" is
    then one round of ``eval_every`` steps (:func:`step_rounds` draws them from endless reshuffled passes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(16, ge=1, description="lists per step")
    max_steps: int = Field(3000, ge=1)
    eval_every: int = Field(50, ge=1, description="steps between validations (one trainer round)")
    patience: int = Field(12, ge=1, description="validations without progress before stopping")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)

    def train_config(self, seed: int, monitor: str = "ndcg10") -> TrainConfig:
        return TrainConfig(epochs=-(-self.max_steps // self.eval_every), max_steps_per_epoch=self.eval_every,
                           batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip, seed=seed, patience=self.patience, monitor=monitor,
                           monitor_mode="max", num_threads=1)


def step_rounds(n_rows: int, schedule: StepSchedule, make_batch: Callable[[np.ndarray], dict], seed: int):
    """A trainer BatchFn whose round r is global steps r*eval_every .. (r+1)*eval_every of endless passes
    over ``n_rows`` rows, each pass a fresh permutation seeded by (seed, pass): a function of its
    arguments only, so resume replays it exactly."""
    size = schedule.batch_size

    def batches(round_: int, rank: int, world_size: int):
        first = round_ * schedule.eval_every
        for step in range(first, first + schedule.eval_every):
            start = step * size * world_size + rank * size
            rows = [_row_at(position, n_rows, seed) for position in range(start, start + size)]
            yield make_batch(np.asarray(rows))

    return batches


def _row_at(position: int, n_rows: int, seed: int) -> int:
    """Row at ``position`` of the endless sequence: pass ``position // n_rows`` permuted by (seed, pass)."""
    return int(_permutation(n_rows, seed, position // n_rows)[position % n_rows])


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n_rows: int, seed: int, pass_: int) -> np.ndarray:
    key = (n_rows, seed, pass_)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 64:
            _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, pass_]).permutation(n_rows)
    return _PERMUTATIONS[key]


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

    ``target`` [B, T] lists the columns of the labelled items by label, ties
    (and so every unlabelled-gain item after the positives) in initial order;
    T = the most labelled items of any row, ``target_mask`` marks the steps a
    row really has and ``positives`` counts its items with a gain.
    """
    gain = torch.where(label_mask, torch.exp2(labels) - 1.0, torch.full_like(labels, -1.0))
    steps = max(int(label_mask.sum(1).max()), 1)
    target = torch.sort(-gain, dim=1, stable=True).indices[:, :steps]
    target_mask = torch.arange(steps)[None, :] < label_mask.sum(1)[:, None]
    return batch | {"labels": labels, "label_mask": label_mask, "gain": gain.clamp_min(0.0),
                    "target": target, "target_mask": target_mask, "positives": (gain > 0).sum(1)}


@torch.no_grad()
def ranking_scores(model: ListGenerator, batch: dict[str, Tensor]) -> Tensor:
    """A score per item [B, L] whose descending order is the model's list: its greedy decoding of all items."""
    mask = batch["mask"]
    columns = model.decode(batch, mask.shape[1])
    placed = columns >= 0
    rows = torch.arange(len(mask), device=mask.device)[:, None].expand_as(columns)
    rank_score = torch.arange(mask.shape[1], 0, -1, dtype=torch.float32, device=mask.device).expand_as(columns)
    scores = torch.full(mask.shape, NEG_INF, device=mask.device)
    scores[rows[placed], columns[placed]] = rank_score[placed]
    return scores


def ranking_metrics(model: ListGenerator, batch: dict[str, Tensor], k: int = 10) -> dict[str, float]:
    """Validation: NDCG@k of the model's order against the labels (unlabelled = 0), and the loss."""
    batch = to_device(batch, next(model.parameters()).device)
    scores = ranking_scores(model, batch).cpu()
    ndcg = ndcg_at_k(batch["labels"].cpu().numpy(), scores.numpy(), batch["mask"].cpu().numpy(), k=k)
    return {f"ndcg{k}": ndcg, "loss": float(model.loss(model(batch), batch)["loss"])}


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
) -> tuple[ListGenerator, FitResult]:
    """Train one baseline with the generic trainer; writes weights, curves, configs and ``baseline.yaml``."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.train.seed)
    spec = BaselineSpec(vocab=vocab, model=cfg.model)
    model = build_baseline(spec)
    result = fit(model, model.loss, train_batches, lambda m: ranking_metrics(m, valid), cfg.train, out_dir, resume)
    save_on_rank0(out_dir, {CONFIG_FILE: cfg, SPEC_FILE: spec}, cfg.train.device)
    return load_baseline(out_dir)[0], result


@builds_model_folder
def train_baseline(cfg: BaselineTrainConfig, data_dir: str | Path, out_dir: str | Path,
                   resume: bool = False) -> tuple[ListGenerator, FitResult]:
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
    """Model inputs and targets of dense lists ``rows`` with initial ``scores`` (columns in ``order``),
    as wide as the longest of these lists (so a batch of short lists does not pay for the longest one)."""
    part = {name: value[rows] for name, value in lists.items()} | {"score": scores[rows]}
    if order is not None:
        part = reorder(part, order)
    width = int(part["mask"].sum(1).max(initial=1))  # cut the padding beyond this batch's longest list
    part = {name: value[:, :width] for name, value in part.items()}
    batch = initial_list_inputs(None, None, part["candidates"], part["score"], part["dense"])
    return with_targets(batch, torch.as_tensor(part["labels"]), torch.as_tensor(part["mask"]))
