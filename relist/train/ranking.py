"""Training of the ranking models: teacher, plain/improved DSSM student, and both distillation schemes.

One YAML file (:class:`relist.models.ranking.config.RankingConfig`, also
the run's saved spec) says which model, which switches and how to distill;
the loop itself is relist.train.trainer.fit. Two-stage distillation is two
fits: ``out/stage1`` on soft labels only, then ``out`` warm-started from it
on soft + hard labels. The teacher's soft labels are
its logits on each training mini-batch, computed as the batch is made.

Training on relist logs streams: each rank reads its own shards of the train
split and expands each read into samples, so memory does not grow with the
data. The Amazon CTR split (not a log directory) is trained in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from relist.data.features import FeatureStore
from relist.eval.metrics import auc, gauc
from relist.io.config import ConfigError, load_config
from relist.io.train_config import TrainConfig
from relist.io.weights import BEST, load_weights
from relist.models.ranking.config import RankingConfig
from relist.models.ranking.losses import LossFn, distill_loss, hard_loss, sync_distill_loss
from relist.models.ranking.samples import (
    LABELS,
    RankingData,
    Samples,
    first_rows,
    first_samples,
    is_log_dir,
    iterate_batches,
    load_ranking_data,
    rebatch,
    samples_from_lists,
    stream_lists,
)
from relist.models.ranking.saved import RUN_CONFIG, VOCAB, build_model, load_ranking_model
from relist.models.ranking.scoring import predict_logits
from relist.models.vocab import Vocab
from relist.train.distributed import init_from_env, save_on_rank0
from relist.train.model_folder import builds_model_folder
from relist.train.trainer import BatchFn, FitResult, fit

STAGE1 = "stage1"


@builds_model_folder
def train_ranking(
    cfg: RankingConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    data: RankingData | None = None,
) -> FitResult:
    """Train as ``cfg`` says; writes weights, checkpoints, curves and the run's config into ``out_dir``.

    ``data`` (from load_ranking_data) saves re-reading the vocab and the validation split; the train
    split of a log directory is streamed from ``data_dir`` whatever ``data`` holds.
    """
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if data is None:
        data = load_ranking_data(data_dir, ("valid",) if is_log_dir(data_dir) else ("train", "valid"))
    valid = data.splits["valid"]
    env = init_from_env(cfg.train.device)
    save_on_rank0(out_dir, {RUN_CONFIG: cfg, VOCAB: data.vocab}, cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run: same seed, same run
    model = build_model(cfg, data.vocab)
    if data.store is None:
        batches = _memory_batches(first_rows(data.splits["train"], cfg.max_train_samples), cfg.train)
    else:
        batches = _streamed_batches(data_dir, data.store, cfg.train, cfg.max_train_samples)
    if cfg.model == "student" and cfg.distill.mode == "two_stage":
        teacher = _teacher(cfg.distill.teacher_run, data.vocab).to(env.device)
        return _two_stage(model, cfg, _with_soft_labels(batches, teacher), valid, out_dir, resume)
    if cfg.model == "teacher":
        loss = hard_loss(cfg.teacher.tasks)
        validate = _validator(valid, loss=loss)
    elif cfg.distill.mode == "sync":
        loss = sync_distill_loss(cfg.teacher.tasks, cfg.distill.soft_weight, cfg.distill.temperature)
        validate = _validator(valid, "student_ctr")
    else:
        loss, validate = hard_loss(), _validator(valid)
    return fit(model, loss, batches, validate, cfg.train, out_dir, resume)


def _two_stage(
    model: nn.Module,
    cfg: RankingConfig,
    batches: BatchFn,
    valid: Samples,
    out_dir: Path,
    resume: bool,
) -> FitResult:
    validate = _validator(valid)
    stage1_cfg = cfg.train.model_copy(update={"epochs": cfg.distill.stage1_epochs})
    stage1_dir = out_dir / STAGE1
    resume_stage1 = resume and (stage1_dir / "checkpoints").is_dir()
    fit(
        model,
        distill_loss(1, temperature=cfg.distill.temperature),
        batches,
        validate,
        stage1_cfg,
        stage1_dir,
        resume_stage1,
    )
    resume_stage2 = resume and (out_dir / "checkpoints").is_dir()
    if not resume_stage2:
        load_weights(model, stage1_dir / BEST)
    stage2 = distill_loss(2, cfg.distill.soft_weight, cfg.distill.temperature)
    return fit(model, stage2, batches, validate, cfg.train, out_dir, resume_stage2)


def _teacher(teacher_run: str | None, vocab: Vocab) -> nn.Module:
    if teacher_run is None:
        raise ConfigError(
            "distill.mode two_stage needs distill.teacher_run (the trained teacher's run directory)"
        )
    teacher_vocab = load_config(Path(teacher_run) / VOCAB, Vocab)
    if teacher_vocab != vocab:
        raise ConfigError(
            f"teacher run {teacher_run} was trained on other data (vocab {teacher_vocab} != {vocab})"
        )
    return load_ranking_model(teacher_run)


def _with_soft_labels(batches: BatchFn, teacher: nn.Module) -> BatchFn:
    """The frozen teacher's click logits added to each mini-batch, so no split-sized array is held."""

    def with_soft_labels(epoch: int, rank: int, world_size: int):
        for batch in batches(epoch, rank, world_size):
            yield batch | {"teacher_ctr": predict_logits(teacher, batch)["ctr"]}

    return with_soft_labels


def _streamed_batches(data_dir: Path, store: FeatureStore, cfg: TrainConfig, limit: int | None) -> BatchFn:
    """This rank's batches of the train split, a function of (seed, epoch, rank) only, as exact resume requires.

    Reads ``batch_size`` lists at a time (shuffled in blocks across the rank's shards), expands each
    read into samples, shuffles and regroups them, so memory is bounded by a read; ``limit`` is split
    evenly between the ranks.
    """

    def batches(epoch: int, rank: int, world_size: int):
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        lists = stream_lists(data_dir, "train", cfg.batch_size, rank, world_size, cfg.seed + epoch)
        parts = (_shuffled(samples_from_lists(batch, store), rng) for batch in lists)
        per_rank = None if limit is None else -(-limit // world_size)
        return rebatch(first_samples(parts, per_rank), cfg.batch_size)

    return batches


def _shuffled(samples: Samples, rng: np.random.Generator) -> Samples:
    """Spread a read's samples over batches instead of keeping each list's positions together."""
    order = rng.permutation(len(samples["item"]))
    return {name: column[order] for name, column in samples.items()}


def _memory_batches(samples: Samples, cfg: TrainConfig) -> BatchFn:
    """Rows ``rank::W`` of a permutation seeded by (seed, epoch), for data held in memory (Amazon)."""
    n = len(samples["item"])

    def batches(epoch: int, rank: int, world_size: int):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)[rank::world_size]
        return iterate_batches(samples, cfg.batch_size, order)

    return batches


def _validator(samples: Samples, output: str = "ctr", loss: LossFn | None = None):
    """Validation GAUC/AUC of the click logit ``output`` (and of the teacher's heads when it has them).

    With ``loss`` (the teacher's), also that loss on the logged validation impressions, scored as they were
    logged (position term kept), in total and per head: the training objective on held-out data, which the
    teacher's ``monitor: ctr_loss+next_loss`` stops on.
    """

    def validate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, samples)
        metrics = {
            "gauc": gauc(samples["user"], samples["click"], logits[output]),
            "auc": auc(samples["click"], logits[output]),
        }
        if output != "ctr":
            metrics["teacher_gauc"] = gauc(samples["user"], samples["click"], logits["ctr"])
        if "next" in logits and "next" in samples and np.ptp(samples["next"]) > 0:  # e.g. LETOR: always 1
            metrics["next_auc"] = auc(samples["next"], logits["next"])
        if loss is not None:
            logged = {name: torch.from_numpy(v) for name, v in predict_logits(model, samples, logged=True).items()}
            labels = {name: torch.from_numpy(samples[name]) for name in LABELS if name in samples}
            terms = loss(logged, labels)
            metrics |= {"loss": float(terms["loss"])} | {f"{task}_loss": float(v) for task, v in terms.items()
                                                         if task != "loss"}
        return metrics

    return validate
