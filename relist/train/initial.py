"""Initial rankers for learning-to-rank lists: LambdaMART (LightGBM) or a point-wise MLP.

List-wise re-rankers (PRM, DLCM, Seq2Slate, list retrieval) are reported in the
literature on top of a LambdaMART ranking, so relist trains one here and hands
it on the way every re-ranker reads an upstream stage: its scores become
``cand_scores`` and its order the order of ``candidates``.

* Hyper-parameters are chosen on the validation split only (a small grid for
  LambdaMART with early stopping on its rounds; the learning rate for the MLP).
* ``cross_fit = k`` scores the *train* lists out of fold: k models, each
  trained on the other k-1 parts with the chosen settings. A re-ranker trained
  on in-sample scores learns to trust a ranker that looks far better on its
  own training lists than it will on new ones; out-of-fold scores look like
  the scores it gets at test time (stacking).
* LightGBM runs with one thread and ``deterministic=True``: same data and
  seed, same model.

Lists are the dense arrays of :func:`relist.train.baselines.dense_lists`
(``dense`` [Q, L, F], ``labels`` [Q, L], ``mask`` [Q, L]).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field

from relist.data.padding import NEG_INF
from relist.eval.metrics import ndcg_per_query
from relist.io.config import save_config
from relist.io.weights import BEST, load_weights, save_weights
from relist.models.baselines.pointwise import PointwiseMLP
from relist.train.baselines import StepSchedule, dense_batch, step_rounds
from relist.train.trainer import fit

Lists = dict[str, np.ndarray]
SPEC_FILE = "initial.yaml"
LAMBDAMART_FILE = "lambdamart.txt"


class LambdaMARTGrid(BaseModel):
    """Settings tried (every combination) for LightGBM's lambdarank objective; the rest are fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_leaves: tuple[int, ...] = (7, 15, 31)
    learning_rate: tuple[float, ...] = (0.05, 0.1)
    min_data_in_leaf: tuple[int, ...] = (20, 50)
    max_rounds: int = Field(500, ge=1)
    early_stopping_rounds: int = Field(50, ge=1, description="rounds without validation NDCG@10 progress")
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)


class MLPSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(32, ge=1)
    learning_rates: tuple[float, ...] = (1e-3, 3e-3)
    schedule: StepSchedule = StepSchedule(max_steps=2000, patience=8)


class InitialConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["lambdamart", "mlp"] = "lambdamart"
    seed: int = Field(0, ge=0)
    cross_fit: int = Field(3, ge=0, description="k >= 2: train lists scored out of fold by k models; 0: in-sample")
    lambdamart: LambdaMARTGrid = LambdaMARTGrid()
    mlp: MLPSettings = MLPSettings()


class InitialSpec(BaseModel):
    """What a trained initial ranker was: written next to its model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["lambdamart", "mlp"]
    n_features: int
    params: dict[str, float | int | str]
    valid_ndcg10: float
    grid: list[dict[str, float | int | str]] = []


@dataclass
class InitialRanker:
    """A fitted initial ranker: ``score(lists)`` -> [Q, L] (NEG_INF at padding)."""

    spec: InitialSpec
    model: object  # lightgbm.Booster or PointwiseMLP

    def score(self, lists: Lists) -> np.ndarray:
        mask = lists["mask"]
        out = np.full(mask.shape, NEG_INF, np.float64)
        if self.spec.kind == "lambdamart":
            out[mask] = self.model.predict(lists["dense"][mask], num_iteration=self.model.best_iteration)
        else:
            with torch.no_grad():
                batch = dense_batch(lists, np.zeros(mask.shape, np.float32))
                width = batch["mask"].shape[1]  # the batch stops at the longest list
                out[:, :width][mask[:, :width]] = self.model.eval()(batch)["score"].numpy()[mask[:, :width]]
        return out

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.spec.kind == "lambdamart":
            self.model.save_model(str(out_dir / LAMBDAMART_FILE), num_iteration=self.model.best_iteration)
        else:
            save_weights(self.model, out_dir / BEST)
        save_config(self.spec, out_dir / SPEC_FILE)


def load_initial(model_dir: str | Path) -> InitialRanker:
    """A saved initial ranker (LightGBM's text model format or safetensors: neither runs code on load)."""
    import lightgbm

    from relist.io.config import load_config

    model_dir = Path(model_dir)
    spec = load_config(model_dir / SPEC_FILE, InitialSpec)
    if spec.kind == "lambdamart":
        return InitialRanker(spec, lightgbm.Booster(model_file=str(model_dir / LAMBDAMART_FILE)))
    model = PointwiseMLP(spec.n_features, int(spec.params["hidden"]))
    load_weights(model, model_dir / BEST)
    return InitialRanker(spec, model.eval())


def valid_ndcg(lists: Lists, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k, queries without a relevant document excluded."""
    return float(np.nanmean(ndcg_per_query(lists["labels"], scores, lists["mask"], k)))


def fit_initial(cfg: InitialConfig, train: Lists, valid: Lists, work: str | Path) -> InitialRanker:
    """The initial ranker of ``cfg.kind`` with its settings chosen on ``valid``'s NDCG@10."""
    if cfg.kind == "lambdamart":
        return _fit_lambdamart(cfg, train, valid)
    return _fit_mlp(cfg, train, valid, Path(work))


def initial_scores(cfg: InitialConfig, parts: dict[str, Lists], work: str | Path,
                   train: str = "train", valid: str = "valid") -> tuple[InitialRanker, dict[str, np.ndarray]]:
    """Fit on ``parts[train]`` (chosen on ``parts[valid]``) and score every part; ``train`` out of fold."""
    work = Path(work)
    ranker = fit_initial(cfg, parts[train], parts[valid], work)
    scores = {name: ranker.score(lists) for name, lists in parts.items()}
    if cfg.cross_fit >= 2:
        scores[train] = _out_of_fold(cfg, ranker, parts[train], parts[valid], work)
    return ranker, scores


def _out_of_fold(cfg: InitialConfig, ranker: InitialRanker, train: Lists, valid: Lists, work: Path) -> np.ndarray:
    n = len(train["mask"])
    part_of = np.random.default_rng([cfg.seed, 7]).permutation(n) % cfg.cross_fit
    out = np.full(train["mask"].shape, NEG_INF, np.float64)
    for part in range(cfg.cross_fit):
        rest = {name: value[part_of != part] for name, value in train.items()}
        held = {name: value[part_of == part] for name, value in train.items()}
        if ranker.spec.kind == "lambdamart":
            model = _lambdamart(dict(ranker.spec.params), rest, valid, cfg)
        else:
            lr = float(ranker.spec.params["lr"])
            model = _mlp(cfg, rest, valid, lr, work / f"cross_fit{part}")
        out[part_of == part] = InitialRanker(ranker.spec, model).score(held)
    return out


def _flat(lists: Lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = lists["mask"]
    return lists["dense"][mask], lists["labels"][mask], mask.sum(1)


def _lambdamart(params: dict, train: Lists, valid: Lists, cfg: InitialConfig):
    import lightgbm

    grid = cfg.lambdamart
    fixed = {"objective": "lambdarank", "eval_at": [10], "num_threads": 1, "deterministic": True,
             "force_row_wise": True, "verbose": -1, "seed": cfg.seed, "feature_fraction": grid.feature_fraction,
             "bagging_fraction": grid.bagging_fraction, "bagging_freq": 1}
    x, y, group = _flat(train)
    xv, yv, group_v = _flat(valid)
    # LightGBM's NDCG counts queries without a relevant document as 1: a constant offset over a fixed
    # validation set, so the round it stops at is the round that is best under the excluded convention.
    return lightgbm.train(fixed | params, lightgbm.Dataset(x, y, group=group), grid.max_rounds,
                          valid_sets=[lightgbm.Dataset(xv, yv, group=group_v)],
                          callbacks=[lightgbm.early_stopping(grid.early_stopping_rounds, verbose=False)])


def _fit_lambdamart(cfg: InitialConfig, train: Lists, valid: Lists) -> InitialRanker:
    grid = cfg.lambdamart
    n_features = train["dense"].shape[2]
    tried, best = [], None
    for leaves, lr, min_leaf in itertools.product(grid.num_leaves, grid.learning_rate, grid.min_data_in_leaf):
        params = {"num_leaves": leaves, "learning_rate": lr, "min_data_in_leaf": min_leaf}
        model = _lambdamart(params, train, valid, cfg)
        spec = InitialSpec(kind="lambdamart", n_features=n_features, params=params, valid_ndcg10=0.0)
        value = valid_ndcg(valid, InitialRanker(spec, model).score(valid))
        tried.append(params | {"rounds": model.best_iteration, "valid_ndcg10": value})
        if best is None or value > best[0]:
            best = (value, params, model)
    value, params, model = best
    spec = InitialSpec(kind="lambdamart", n_features=n_features, params=params, valid_ndcg10=value, grid=tried)
    return InitialRanker(spec, model)


def _mlp(cfg: InitialConfig, train: Lists, valid: Lists, lr: float, work: Path) -> PointwiseMLP:
    torch.manual_seed(cfg.seed)
    model = PointwiseMLP(train["dense"].shape[2], cfg.mlp.hidden)
    zeros = {name: np.zeros(lists["mask"].shape, np.float32) for name, lists in (("t", train), ("v", valid))}
    valid_batch = dense_batch(valid, zeros["v"])

    def validate(m: PointwiseMLP) -> dict[str, float]:
        scores = m(valid_batch)["score"].masked_fill(~valid_batch["mask"], NEG_INF).numpy()
        return {"ndcg10": valid_ndcg(valid, scores)}

    schedule = cfg.mlp.schedule.model_copy(update={"lr": lr})
    batches = step_rounds(len(train["mask"]), schedule, lambda rows: dense_batch(train, zeros["t"], rows), cfg.seed)
    fit(model, model.loss, batches, validate, schedule.train_config(cfg.seed), work)
    load_weights(model, work / BEST)
    return model.eval()


def _fit_mlp(cfg: InitialConfig, train: Lists, valid: Lists, work: Path) -> InitialRanker:
    n_features = train["dense"].shape[2]
    tried, best = [], None
    for lr in cfg.mlp.learning_rates:
        model = _mlp(cfg, train, valid, lr, work / f"mlp_lr{lr:g}")
        params = {"hidden": cfg.mlp.hidden, "lr": lr}
        spec = InitialSpec(kind="mlp", n_features=n_features, params=params, valid_ndcg10=0.0)
        value = valid_ndcg(valid, InitialRanker(spec, model).score(valid))
        tried.append(params | {"valid_ndcg10": value})
        if best is None or value > best[0]:
            best = (value, params, model)
    value, params, model = best
    spec = InitialSpec(kind="mlp", n_features=n_features, params=params, valid_ndcg10=value, grid=tried)
    return InitialRanker(spec, model)


CANDIDATE_COLUMNS = ("candidates", "cand_scores", "labels")
SHOWN_COLUMNS = ("shown", "click", "next", "buy")


def reranked_lists(table: pa.Table, scores: np.ndarray) -> pa.Table:
    """``table`` with each list's candidates in descending ``scores`` [Q, L] order and those scores as
    ``cand_scores`` (``labels`` follows). Where every list showed all its candidates in candidate order
    (LETOR), ``shown`` and its click/next/buy follow too, so the new order is also the displayed one."""
    candidates = table["candidates"].combine_chunks()
    lengths = pc.list_value_length(candidates).to_numpy()
    mask = np.arange(scores.shape[1])[None, :] < lengths[:, None]
    order = np.argsort(np.where(mask, -scores, np.inf), axis=1, kind="stable")
    take = pa.array((order + (np.cumsum(lengths) - lengths)[:, None])[mask])
    offsets = pa.array(np.append(0, np.cumsum(lengths)).astype(np.int32))
    moved = set(CANDIDATE_COLUMNS)
    if table["shown"].combine_chunks().equals(candidates):
        moved |= set(SHOWN_COLUMNS)
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if name == "cand_scores":
            flat = pa.array(np.take_along_axis(scores, order, 1)[mask].astype(np.float32))
            columns[name] = pa.ListArray.from_arrays(offsets, flat)
        elif name in moved:
            columns[name] = pa.ListArray.from_arrays(offsets, column.flatten().take(take))
        else:
            columns[name] = column
    return pa.table(columns)


SPLITS = ("train", "valid", "test")


def read_labelled_splits(data_dir: str | Path, fold: str | None = None) -> tuple[pa.Table, pa.Table | None,
                                                                                dict[str, pa.Table]]:
    """Items, users (None when absent) and the train/valid/test lists of ``data_dir``.

    Either a log directory (``lists/{train,valid,test}/``) or the output of ``relist convert letor``
    (one ``lists.parquet`` with a ``subset`` column) split by a standard LETOR ``fold`` (Fold1..Fold5).
    """
    from relist.data.loaders.letor import FOLDS
    from relist.data.logs import read_lists
    from relist.data.schema import SchemaError, read_table

    data_dir = Path(data_dir)
    items = read_table(data_dir / "items.parquet", "items")
    users = read_table(data_dir / "users.parquet", "users") if (data_dir / "users.parquet").is_file() else None
    if (data_dir / "lists").is_dir():
        if fold is not None:
            raise SchemaError(data_dir, None, None, "--fold is for a converted LETOR folder, not a split log dir")
        splits = {name: read_lists(data_dir, name) for name in SPLITS}
    else:
        if fold not in FOLDS:
            raise SchemaError(data_dir / "lists.parquet", None, "subset",
                              f"an unsplit lists.parquet needs --fold, one of {sorted(FOLDS)} (got {fold})")
        lists = read_table(data_dir / "lists.parquet", "lists")
        if "subset" not in lists.column_names:
            raise SchemaError(data_dir / "lists.parquet", None, "subset", "missing column (from relist convert letor)")
        train, vali, test = FOLDS[fold]
        pick = {"train": train, "valid": (vali,), "test": (test,)}
        splits = {name: pa.concat_tables([lists.filter(pc.equal(lists["subset"], s)) for s in subsets])
                  for name, subsets in pick.items()}
    for name, table in splits.items():
        if "labels" not in table.column_names:
            raise SchemaError(data_dir, None, "labels", f"the {name} lists have no graded labels: an initial "
                              "ranker learns from a 'labels' column aligned with candidates (LETOR)")
        if table.num_rows == 0:
            raise SchemaError(data_dir, None, None, f"the {name} split is empty")
    return items, users, splits


def train_initial(cfg: InitialConfig, data_dir: str | Path, out_dir: str | Path,
                  fold: str | None = None) -> tuple[InitialRanker, dict[str, float]]:
    """Fit the initial ranker and write ``out_dir/model`` and ``out_dir/data``: a log directory whose lists
    carry its scores as ``cand_scores`` and its order as the candidates' order (train scored out of fold).

    Returns the ranker and the NDCG@10 of its order on each split.
    """
    import pyarrow.parquet as pq

    from relist.train.baselines import dense_lists

    out_dir = Path(out_dir)
    items, users, splits = read_labelled_splits(data_dir, fold)
    parts = {name: dense_lists(items, table) for name, table in splits.items()}
    ranker, scores = initial_scores(cfg, parts, out_dir / "work")
    ranker.save(out_dir / "model")
    data = out_dir / "data"
    pq.write_table(items, _fresh(data / "items.parquet"))
    pq.write_table(users if users is not None else _query_users(splits), _fresh(data / "users.parquet"))
    for name, table in splits.items():
        pq.write_table(reranked_lists(table, scores[name]), _fresh(data / "lists" / name / "part-0.parquet"))
    save_config(cfg, out_dir / "initial_config.yaml")
    return ranker, {name: valid_ndcg(parts[name], scores[name]) for name in parts}


def _fresh(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _query_users(splits: dict[str, pa.Table]) -> pa.Table:
    """One user without history per user id of the lists (LETOR converted before users.parquet existed)."""
    ids = np.unique(np.concatenate([table["user_id"].to_numpy() for table in splits.values()]))
    return pa.table({"user_id": ids, "segment": pa.array(np.zeros(len(ids), np.int32)),
                     "hist_items": pa.array([[]] * len(ids), pa.list_(pa.int64())),
                     "hist_cates": pa.array([[]] * len(ids), pa.list_(pa.int32()))})
