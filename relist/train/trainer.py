"""One training loop for every model in relist: supervised, distillation and policy gradient.

The loop knows nothing about models: a model maps a batch to named logits and a loss maps
``(outputs, batch)`` to named terms plus ``"loss"``.  What it owns is what is easy to get subtly
wrong around them: early stopping on a validation metric, files that are never half-written,
resume that reproduces the uninterrupted run bit for bit, and DDP.

Every weights file (relist.io.weights) and training state carries a checksum of its tensors (and,
for the state, of every value), checked whenever it is read: damaged bytes under an intact header
would load without complaint and surface an epoch later as a NaN loss blamed on the learning rate.

Exact resume without saving generator states: every epoch starts by seeding torch, numpy and
``random`` from ``(seed, epoch, rank)``, so a resumed epoch draws the same numbers as the original
on any number of ranks.  ``train_batches`` should likewise depend only on its arguments.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from relist.io.config import save_config
from relist.io.train_config import TrainConfig
from relist.io.weights import BEST, DIGEST, CheckpointError, atomic_write, digest, load_weights, save_weights
from relist.train.distributed import DistEnv, init_from_env

LossFn = Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor]]
BatchFn = Callable[[int, int, int], Iterable[Mapping[str, Any]]]
ValidateFn = Callable[[nn.Module], Mapping[str, float]]

LAST = Path("checkpoints") / "last.safetensors"
STATE = Path("checkpoints") / "last_state.pt"
LOG = "train_log.csv"
CURVES = "training_curves.png"
CONFIG = "train_config.yaml"
EPOCHS = "epochs"  # every epoch's weights, when TrainConfig.keep_epochs


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit`; epochs count from 0, ``epochs`` is how many have run."""

    best_path: Path
    best_epoch: int
    best_metric: float
    epochs: int
    stopped_early: bool
    history: list[dict[str, float]]


@dataclass
class _Progress:
    """Everything besides weights and optimizer that a resumed run needs (saved in last_state.pt)."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_batches: BatchFn,
    validate: ValidateFn,
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` with AdamW until ``cfg.epochs`` or early stopping on ``cfg.monitor``.

    ``train_batches(epoch, rank, world_size)`` yields this rank's batches (tensors or numpy arrays);
    ``validate(model)`` runs on rank 0 only, on the bare module (on ``cfg.device``: see
    :func:`to_device`), under ``torch.no_grad``, and returns metrics that are then shared with all
    ranks.  Only rank 0 writes into ``out_dir``; with ``resume`` every rank reads the last
    checkpoint from it (so under multi-node DDP it must be on shared storage).  The model ends
    with the last epoch's weights; the best are in ``result.best_path``.
    """
    out_dir = Path(out_dir)
    env = init_from_env(cfg.device)
    main = env.rank == 0
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    model.to(env.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    progress = _load_checkpoint(out_dir, model, optimizer) if resume else _Progress()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / CONFIG)
    net = env.wrap(model)
    while progress.epoch < cfg.epochs and not _should_stop(progress, cfg):
        epoch = progress.epoch
        _seed(cfg.seed, epoch, env.rank)
        start = perf_counter()
        batches = islice(train_batches(epoch, env.rank, env.world_size), cfg.max_steps_per_epoch)
        bar = tqdm(env.lockstep(batches), f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not main)
        losses, samples, steps = _train_epoch(net, loss_fn, optimizer, bar, params, cfg, env)
        seconds = perf_counter() - start
        if steps == 0:
            raise ValueError(f"train_batches gave no batches in epoch {epoch} (on at least one rank)")
        if not math.isfinite(losses["loss"]):
            raise FloatingPointError(f"training loss is {losses['loss']} in epoch {epoch}; lower lr or clip")
        metrics = env.broadcast(_validate(model, validate) if main else None)
        value = _monitored(metrics, cfg, epoch)
        bar.set_postfix(loss=f"{losses['loss']:.4g}", **{f"val_{cfg.monitor}": f"{value:.4g}"})
        bar.close()
        progress.epoch, progress.step = epoch + 1, progress.step + steps
        progress.history.append(
            {"epoch": epoch, "step": progress.step}
            | {f"train_{name}": v for name, v in losses.items()}
            | {f"val_{name}": v for name, v in metrics.items()}
            | {"seconds": seconds, "samples_per_s": samples / seconds}
        )
        if _improves(value, progress.best, cfg):
            progress.best, progress.best_epoch, progress.bad_epochs = value, epoch, 0
            if main:
                save_weights(model, out_dir / BEST, {"epoch": str(epoch), cfg.monitor: repr(value)})
        else:
            progress.bad_epochs += 1
        if main and cfg.keep_epochs:
            save_weights(model, out_dir / EPOCHS / f"{epoch}.safetensors", {"epoch": str(epoch)})
        if main:
            _write_log(out_dir / LOG, progress.history)
            _save_checkpoint(out_dir, model, optimizer, progress)
    if main:  # once, not per epoch: drawing costs ~0.3 s and the CSV already logs each epoch
        atomic_write(out_dir / CURVES, lambda tmp: _plot(progress, cfg.monitor).savefig(tmp, format="png"))
    env.barrier()  # fit returns on every rank only once out_dir is complete
    return FitResult(
        out_dir / BEST, progress.best_epoch, progress.best, progress.epoch, _should_stop(progress, cfg),
        progress.history,
    )


def _train_epoch(
    net: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Mapping[str, Any]],
    params: list[nn.Parameter],
    cfg: TrainConfig,
    env: DistEnv,
) -> tuple[dict[str, float], int, int]:
    """One pass; returns mean loss terms over all ranks' samples, the global sample count and steps."""
    net.train()
    sums: dict[str, Tensor] = {}
    samples = steps = 0
    for raw in batches:
        batch = to_device(raw, env.device)
        terms = _loss_terms(loss_fn, net(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        n = len(next(iter(batch.values())))
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.detach().double() * n
        samples, steps = samples + n, steps + 1
    names = sorted(sums)
    totals = env.sum(torch.tensor([samples] + [sums[k].item() for k in names], dtype=torch.float64))
    means = {name: (total / totals[0]).item() for name, total in zip(names, totals[1:], strict=True)}
    return means, int(totals[0]), steps


def _loss_terms(loss_fn: LossFn, outputs: Any, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Apply ``loss_fn`` and enforce the model/loss contract with messages that say what is wrong."""
    if not isinstance(outputs, Mapping):
        raise TypeError(f"model.forward must return a dict of named logits, got {type(outputs).__name__}")
    terms = loss_fn(outputs, batch)
    if not isinstance(terms, Mapping) or "loss" not in terms:
        got = sorted(terms) if isinstance(terms, Mapping) else type(terms).__name__
        raise ValueError(f"loss_fn must return a dict with a 'loss' entry (the total to minimise); got {got}")
    shapes = {name: tuple(value.shape) for name, value in terms.items() if value.dim() != 0}
    if shapes:
        raise ValueError(f"loss_fn's terms must be scalars, got shapes {shapes}")
    return terms


def _validate(model: nn.Module, validate: ValidateFn) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return {name: float(value) for name, value in validate(model).items()}


def _monitored(metrics: Mapping[str, float], cfg: TrainConfig, epoch: int) -> float:
    """The early-stopping value: one validation metric, or the sum of several named "a+b"; runs on every rank
    after the broadcast, so all raise together."""
    names = cfg.monitor.split("+")
    missing = [name for name in names if name not in metrics]
    if missing:
        raise ValueError(f"validate() returned {sorted(metrics)}, which lacks {missing} of monitor '{cfg.monitor}'")
    value = sum(metrics[name] for name in names)
    if not math.isfinite(value):
        raise ValueError(f"validation metric '{cfg.monitor}' is {value} in epoch {epoch}")
    return value


def _improves(value: float, best: float | None, cfg: TrainConfig) -> bool:
    return best is None or (value > best if cfg.monitor_mode == "max" else value < best)


def _should_stop(progress: _Progress, cfg: TrainConfig) -> bool:
    return cfg.patience is not None and progress.bad_epochs >= cfg.patience


def _seed(seed: int, epoch: int, rank: int) -> None:
    """Seed every generator from (seed, epoch, rank): resumed epochs replay exactly, ranks differ."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    """A batch of tensors or numpy arrays as tensors on ``device`` (numpy is shared, not copied)."""
    return {name: torch.as_tensor(value).to(device, non_blocking=True) for name, value in batch.items()}


def _save_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: _Progress):
    """Weights then state, each atomic; the epoch in both lets a resume detect a torn pair."""
    save_weights(model, out_dir / LAST, {"epoch": str(progress.epoch)})
    state = {"progress": asdict(progress), "optimizer": optimizer.state_dict()}
    state[DIGEST] = digest(state)
    atomic_write(out_dir / STATE, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> _Progress:
    path = out_dir / STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = state.pop(DIGEST, None)
    except Exception as err:  # torch.load raises many types for one cause
        raise CheckpointError(f"{path}: corrupt or incompatible training state ({err!r})") from err
    if stored is not None and digest(state) != stored:
        raise CheckpointError(f"{path}: damaged training state: its tensors or values fail the sha256 checksum "
                              "stored with them (the file changed after it was written)")
    try:
        progress = _Progress(**state["progress"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as err:  # load_state_dict raises many types for one cause
        raise CheckpointError(f"{path}: incompatible training state ({err!r})") from err
    weights_epoch = load_weights(model, out_dir / LAST).get("epoch")
    if weights_epoch != str(progress.epoch):
        raise CheckpointError(
            f"{out_dir / LAST}: weights are from epoch {weights_epoch} but {path} is from epoch "
            f"{progress.epoch} (interrupted while saving?)"
        )
    return progress


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    """Rewrite the whole CSV from the history, so after a resume it matches the checkpoint."""
    columns = list(dict.fromkeys(name for row in history for name in row))

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write_csv)


def _plot(progress: _Progress, monitor: str):
    from matplotlib.figure import Figure  # no pyplot: renders with Agg and touches no global state

    fig = Figure(figsize=(10, 4), layout="constrained")
    epochs = [row["epoch"] for row in progress.history]
    for ax, prefix in zip(fig.subplots(1, 2), ("train_", "val_"), strict=True):
        for name in progress.history[-1]:
            if name.startswith(prefix):
                ax.plot(epochs, [row.get(name, math.nan) for row in progress.history], marker=".", label=name)
        ax.axvline(progress.best_epoch, color="grey", linestyle=":", label=f"best {monitor}")
        ax.set_xlabel("epoch")
        ax.legend()
    return fig
