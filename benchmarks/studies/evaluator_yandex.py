"""The list evaluator on real logged lists: Yandex WSCD search sessions (top-10 lists, per-position clicks).

The real-data version of the seed's Figure 14. On held-out sessions (the sample's test file), three click
models of the shown list are compared:

* DCWN, trained through relist.train.evaluator (neighbourhood features, Bi-LSTM + self-attention over the
  list, position; an ensemble of MEMBERS bootstrap members, scored by their mean). The log has no upstream
  scores and no teacher, so ``upstream`` and ``prior`` are off;
* the same network with ``context=False`` (no list context, no position: a point-wise click model);
* a position-only prior: the train split's click rate at each rank.

Metrics on every shown position of the held-out sessions: click log-loss (overall and per position), click
AUC, and per list the Pearson correlation between the list reward LR (the sum of predicted click
probabilities; exposure-weighted when the trained evaluator chose that on validation) and the clicks the
user really made. The position prior gives every list the same LR, so its Pearson is undefined.

Data: ``relist convert yandex`` (relist.data.loaders.yandex) with ``exposure="all"`` (all 10 results count as
seen: a click model has to predict the unclicked positions too); the sessions of the train file, time
ordered by session id, are split 90/10 (``valid_share``) into train/valid (the valid part picks checkpoints and the LR
weighting), the test file's sessions are the held-out set. Users are queries (the log is anonymous): one
user per query id, its index as the profile segment, no history. DCWN and its point-wise twin run with 3 seeds.

    python -m benchmarks evaluator_yandex
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.common import cached, data_key, repo_path
from relist.data.features import FeatureStore
from relist.data.loaders.yandex import load_yandex
from relist.eval.metrics import auc, pearson
from relist.io.train_config import TrainConfig
from relist.models.evaluator import DCWNConfig, exposure, load_evaluator
from relist.train.evaluator import EvaluatorTrainConfig, labelled_batch, read_raw, train_evaluator

COLUMNS = ["request_id", "user_id", "candidates", "cand_scores", "shown", "click", "next", "exposed_len"]
EPS = 1e-6


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    src: str = Field("../shared/data/yandex_wscd_click_sample/sessions_long.tsv.gz", description="the sessions")
    valid_share: float = Field(0.1, gt=0, lt=1, description="last share of the train file's sessions: valid")
    seeds: int = Field(3, ge=1)
    epochs: int = Field(8, ge=1, description="upper bound; early stopping on valid click log-loss")
    members: int = Field(2, ge=1, description="bootstrap members of each DCWN ensemble")


def write_log_dir(src: Path, out: Path, valid_share: float) -> dict[str, int]:
    """The converted sessions as a log directory: items, one user per query, lists/{train,valid,test}."""
    tables = load_yandex(src, exposure="all")
    lists = tables.lists
    n_users = int(pc.max(lists["user_id"]).as_py())
    users = pa.table({
        "user_id": pa.array(np.arange(1, n_users + 1), pa.int64()),
        "segment": pa.array(np.arange(n_users), pa.int32()),  # the query: the only context the log has
        "hist_items": pa.array([[]] * n_users, pa.list_(pa.int64())),
        "hist_cates": pa.array([[]] * n_users, pa.list_(pa.int32())),
    })
    train = lists.filter(pc.equal(lists["split"], "train")).sort_by("request_id")
    n_valid = int(round(train.num_rows * valid_share))
    splits = {"train": train.slice(0, train.num_rows - n_valid), "valid": train.slice(train.num_rows - n_valid),
              "test": lists.filter(pc.equal(lists["split"], "test"))}
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(tables.items, out / "items.parquet")
    pq.write_table(users, out / "users.parquet")
    for name, table in splits.items():
        (out / "lists" / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "lists" / name / "part-0.parquet")
    return {name: table.num_rows for name, table in splits.items()}


def split_arrays(data_dir: Path, split: str) -> dict[str, np.ndarray]:
    return read_raw(data_dir, split, COLUMNS, None)


def evaluator_config(context: bool, seed: int, epochs: int, members: int) -> EvaluatorTrainConfig:
    return EvaluatorTrainConfig(
        model=DCWNConfig(dim=16, hidden=32, heads=2, max_len=10, context=context, dropout=0.1, members=members,
                         upstream=False, prior=False),
        train=TrainConfig(epochs=epochs, batch_size=256, lr=3e-3, grad_clip=5.0, seed=seed, patience=2,
                          monitor="click_logloss", monitor_mode="min", num_threads=1))


def scores_of(model_dir: Path, store: FeatureStore, test: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-position click probabilities [S, 10] (the members' mean) and each list's LR as the trained
    evaluator defines it."""
    model, spec = load_evaluator(model_dir)
    parts_p, parts_lr = [], []
    for start in range(0, len(test["shown"]), 4096):
        raw = {name: value[start:start + 4096] for name, value in test.items()}
        with torch.no_grad():
            out = model(labelled_batch(store, raw, spec.model.members))
        p_click = torch.sigmoid(out["click"])  # [E, B, n]
        weight = exposure(out["next"]) if spec.exposure_weighted else torch.ones_like(p_click)
        parts_p.append(p_click.mean(0).numpy())
        parts_lr.append((p_click * weight).mean(0).sum(1).numpy())
    return np.concatenate(parts_p), np.concatenate(parts_lr)


def metrics(p_click: np.ndarray, lr: np.ndarray | None, clicks: np.ndarray) -> dict:
    p = np.clip(p_click, EPS, 1 - EPS)
    loss = -(clicks * np.log(p) + (1 - clicks) * np.log(1 - p))
    lr_ok = lr is not None and np.ptp(lr) > 0
    return {"click_logloss": float(loss.mean()), "click_auc": auc(clicks.ravel(), p_click.ravel()),
            "logloss_per_position": loss.mean(0).tolist(),
            "lr_clicks_pearson": pearson(lr, clicks.sum(1)) if lr_ok else None}


def summarise(runs: list[dict]) -> dict:
    row = {}
    for name in ("click_logloss", "click_auc", "lr_clicks_pearson"):
        values = [r[name] for r in runs if r[name] is not None]
        row[name] = {"mean": float(np.mean(values)) if values else None,
                     "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    row["logloss_per_position"] = np.mean([r["logloss_per_position"] for r in runs], 0).tolist()
    row["per_seed"] = runs
    return row


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    src = repo_path(cfg.src)
    data_dir = work / "logs"
    made = cached(data_dir, {"src": data_key(src.parent), "file": src.name, "valid_share": cfg.valid_share},
                  lambda out: write_log_dir(src, out, cfg.valid_share))
    sizes = made["record"]
    store = FeatureStore.from_dir(data_dir)
    train, test = split_arrays(data_dir, "train"), split_arrays(data_dir, "test")
    clicks = test["click"].astype(np.float64)
    prior = train["click"].mean(0)  # click rate per rank on the train sessions
    rows = {"position prior": summarise([metrics(np.broadcast_to(prior, clicks.shape), None, clicks)])}
    for name, context in (("DCWN (context)", True), ("same network, context=False", False)):
        runs = []
        for seed in range(cfg.seeds):
            train_cfg = evaluator_config(context, seed, cfg.epochs, cfg.members)
            out = work / f"{'dcwn' if context else 'pointwise'}_seed{seed}"
            done = cached(out, {"data": made["digest"], "config": train_cfg.model_dump(mode="json")},
                          lambda out, train_cfg=train_cfg: {
                              "best_epoch": train_evaluator(train_cfg, data_dir, out)[0].best_epoch + 1})
            p_click, lr = scores_of(out, store, test)
            runs.append(metrics(p_click, lr, clicks) | {"best_epoch": done["record"]["best_epoch"]})
            print(f"{name} seed {seed}: log-loss {runs[-1]['click_logloss']:.4f} AUC {runs[-1]['click_auc']:.4f} "
                  f"Pearson {runs[-1]['lr_clicks_pearson']:.4f}", flush=True)
        rows[name] = summarise(runs)
    print_table(rows, sizes, cfg.seeds)
    return {"data": str(src), "sessions": sizes, "exposure": "all 10 positions count as seen",
            "users": "one per query id (segment = query), no history", "seeds": cfg.seeds,
            "training": evaluator_config(True, 0, cfg.epochs, cfg.members).model_dump(mode="json"), "rows": rows,
            "dcwn_minus_prior_logloss": rows["DCWN (context)"]["click_logloss"]["mean"]
            - rows["position prior"]["click_logloss"]["mean"],
            "dcwn_minus_pointwise_logloss": rows["DCWN (context)"]["click_logloss"]["mean"]
            - rows["same network, context=False"]["click_logloss"]["mean"]}


def print_table(rows: dict, sizes: dict, seeds: int) -> None:
    print(f"\nYandex WSCD sample, {sizes['test']:,} held-out sessions × 10 positions; mean ± std over {seeds} seeds")
    print(f"{'model':30s} {'click log-loss':>18s} {'click AUC':>18s} {'Pearson(LR, clicks)':>22s}")

    def cell(stat: dict) -> str:
        return "n/a (constant LR)" if stat["mean"] is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"

    for name, row in rows.items():
        print(f"{name:30s} {cell(row['click_logloss']):>18s} {cell(row['click_auc']):>18s} "
              f"{cell(row['lr_clicks_pearson']):>22s}")
    print("log-loss per position 1..10:")
    for name, row in rows.items():
        print(f"  {name:28s} " + " ".join(f"{v:.3f}" for v in row["logloss_per_position"]))
