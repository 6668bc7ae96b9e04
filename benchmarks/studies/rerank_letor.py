"""Re-rankers on top of LambdaMART on real learning-to-rank lists (LETOR format; default MQ2008, 5 folds).

Per fold (train / vali / test as the data set defines them; relist.data.loaders.letor.load_letor_folds):

* initial ranker: LightGBM LambdaMART (relist.train.initial), its settings chosen on vali NDCG@10; the
  train lists are scored out of fold (3 parts), so the re-rankers learn from scores like those they get
  at test time. Its order is every re-ranker's initial list and its score (standardised on train) an input.
* PRM, DLCM, Seq2Slate (relist.models.baselines, dense inputs, ``residual``: they start from the LambdaMART
  order and learn a correction), trained by steps on the train lists with early stopping on vali NDCG@10;
  the step is chosen on vali (the learning rate too when ``learning_rates`` lists several).
* evaluator-guided list retrieval: the lists of LambdaMART, PRM, DLCM and Seq2Slate are scored by an
  evaluator and the highest-scored is kept. DCWN reads item ids, which mean nothing here (every
  query-document pair is a new item), so the evaluator is a PRM-architecture model trained on the train
  lists shown in random orders (it judges a list's content, not LambdaMART's order); a list's value is its
  expected DCG@10 under the softmax of the evaluator's per-position scores.
* random order: the mean over 10 shuffles of each query (the floor no re-ranker may fall below).

NDCG: gain 2^rel - 1, discount 1/log2(rank + 1), queries without a relevant document excluded. Every policy
is compared with LambdaMART on the same test queries: mean per-query difference with its 95% t-interval,
pooled over the folds. Finished folds are cached under ``--work/<fingerprint>/`` where the fingerprint
hashes the data files' bytes and these settings, so other data or other settings never reuse them; each
fold's seed comes from its name, so a fold gives the same result run alone or with the others.

    python -m benchmarks rerank_letor                       # MQ2008 from ../shared/data
    python -m benchmarks rerank_letor --set data=DIR --out benchmarks/results/rerank_letor_other.json
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.common import repo_path
from relist.eval.metrics import mean_ci, ndcg_of_order
from relist.models.baselines.inputs import BaselineConfig, initial_order
from relist.train.baselines import (
    BaselineTrainConfig,
    StepSchedule,
    dense_batch,
    dense_lists,
    fit_baseline,
    ranking_scores,
    reorder,
    step_rounds,
)
from relist.train.initial import InitialConfig, initial_scores

KS = (1, 3, 5, 10)
CI_KS = (5, 10)
REFERENCE = {"LightGBM LambdaMART (data README)": 0.702, "random (data README)": 0.464}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field("../shared/data/letor_mq2008",
                      description="LETOR-format data: S1..S5 files, or Fold*/ folders with train/vali/test files")
    folds: list[str] | None = Field(None, description="fold names (null: every fold)")
    initial: InitialConfig = InitialConfig(kind="lambdamart", cross_fit=3)
    schedule: StepSchedule = StepSchedule(batch_size=16, max_steps=3000, eval_every=25, patience=6)
    learning_rates: list[float] = [3e-4]
    rerankers: list[str] = ["prm", "dlcm", "seq2slate"]
    shuffles: int = Field(10, ge=1, description="random orders per query (the floor)")


def settings(cfg: Config) -> dict:
    """What a finished fold depends on (with the version of this study's protocol)."""
    return cfg.model_dump(mode="json", exclude={"data", "folds"}) | {"version": 2}


def fingerprint(data: Path, cfg: Config) -> str:
    """Hash of every data file's bytes (path relative to ``data``) and of the study's settings."""
    digest = hashlib.sha256(json.dumps(settings(cfg), sort_keys=True).encode())
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(data)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def fold_seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 100_000


def ndcg(lists: dict, order: np.ndarray, k: int) -> np.ndarray:
    return ndcg_of_order(lists["labels"], order, lists["mask"], k)


def expected_dcg(evaluator, batch: dict, k: int = 10) -> np.ndarray:
    """The evaluator's expected DCG@k of each list in ``batch``: its softmax mass times the discount."""
    with torch.no_grad():
        logits = evaluator(batch)["score"].masked_fill(~batch["mask"], -1e9)
    share = torch.softmax(logits, 1).numpy()
    ranks = np.arange(share.shape[1])
    return share @ np.where(ranks < k, 1.0 / np.log2(ranks + 2), 0.0)


def train_reranker(cfg: Config, kind: str, ordered: dict, scores: dict, seed: int, work: Path,
                   shuffle: bool = False):
    """The re-ranker of ``kind`` with the learning rate of best vali NDCG@10; (model, lr, vali NDCG@10)."""
    n_features = ordered["train"]["dense"].shape[2]
    vali = dense_batch(ordered["vali"], scores["vali"])
    train = ordered["train"]

    def make_batch(rows: np.ndarray) -> dict:
        order = None
        if shuffle:  # each list shown in a random order, drawn from the rows themselves (replayable)
            rng = np.random.default_rng([seed, *rows[:4].tolist()])
            order = initial_order(rng.random(train["mask"][rows].shape), train["mask"][rows])
        return dense_batch(train, scores["train"], rows, order)

    best = None
    for lr in cfg.learning_rates:
        schedule = cfg.schedule.model_copy(update={"lr": lr})
        model_cfg = BaselineConfig(kind=kind, n_dense=n_features, residual=not shuffle)
        train_cfg = BaselineTrainConfig(model=model_cfg, train=schedule.train_config(seed))
        batches = step_rounds(len(train["mask"]), schedule, make_batch, seed)
        model, result = fit_baseline(train_cfg, None, batches, vali, work / f"{kind}_lr{lr:g}")
        if best is None or result.best_metric > best[2]:
            best = (model, lr, result.best_metric, (result.best_epoch + 1) * schedule.eval_every)
    return best


def run_fold(cfg: Config, fold, work: Path) -> dict:
    seed = fold_seed(fold.name)
    torch.manual_seed(seed)
    parts = {name: dense_lists(fold.items, getattr(fold, name)) for name in ("train", "vali", "test")}
    initial_cfg = cfg.initial.model_copy(update={"seed": seed})
    ranker, raw = initial_scores(initial_cfg, parts, work / "initial", valid="vali")
    real = raw["train"][parts["train"]["mask"]]
    mu, sd = real.mean(), real.std() + 1e-9
    ordered, scores = {}, {}
    for name, lists in parts.items():  # every re-ranker reads each query's documents in LambdaMART's order
        order = initial_order(raw[name], lists["mask"])
        ordered[name] = reorder(lists, order)
        standard = (np.take_along_axis(raw[name], order, 1) - mu) / sd
        scores[name] = np.where(ordered[name]["mask"], standard, 0.0).astype(np.float32)

    models, chosen = {}, {}
    for kind in (*cfg.rerankers, "evaluator"):
        is_evaluator = kind == "evaluator"
        model, lr, vali_ndcg, steps = train_reranker(cfg, "prm" if is_evaluator else kind, ordered, scores,
                                                     seed + (100 if is_evaluator else 0), work / kind,
                                                     shuffle=is_evaluator)
        models[kind] = model
        chosen[kind] = {"lr": lr, "vali_ndcg10": vali_ndcg, "best_step": steps}

    results = {}
    for split in ("vali", "test"):
        lists = ordered[split]
        batch = dense_batch(lists, scores[split])
        mask = lists["mask"]
        identity = np.broadcast_to(np.arange(mask.shape[1]), mask.shape).copy()
        orders = {"lambdamart": identity}
        for kind in cfg.rerankers:
            orders[kind] = initial_order(ranking_scores(models[kind], batch).numpy(), mask)
        proposals = list(orders.values())
        value = np.stack([expected_dcg(models["evaluator"], dense_batch(lists, scores[split], order=order))
                          for order in proposals], 1)
        picked = value.argmax(1)
        orders["list_retrieval"] = np.stack(proposals, 1)[np.arange(len(picked)), picked]
        per_query = {name: {k: ndcg(lists, order, k) for k in KS} for name, order in orders.items()}
        rng = np.random.default_rng(seed)
        shuffles = [initial_order(rng.random(mask.shape), mask) for _ in range(cfg.shuffles)]
        per_query["random"] = {k: np.mean([ndcg(lists, order, k) for order in shuffles], 0) for k in KS}
        counted = ~np.isnan(per_query["lambdamart"][10])
        results[split] = {
            "queries": int(len(mask)), "queries_counted": int(counted.sum()),
            "ndcg": {name: {f"ndcg{k}": float(np.nanmean(v[k])) for k in KS} for name, v in per_query.items()},
            "per_query": {name: {f"ndcg{k}": v[k][counted].tolist() for k in CI_KS} for name, v in per_query.items()},
            "retrieval_picked": {name: float(np.mean(picked == i)) for i, name in enumerate(list(orders)[:-1])},
        }
    return {"seed": seed, "lambdamart": ranker.spec.model_dump(mode="json"), "rerankers": chosen,
            "queries_train": int(len(parts["train"]["mask"])), **results}


def summarise(results: dict[str, dict], split: str) -> dict:
    folds = list(results)
    policies = list(results[folds[0]][split]["ndcg"])
    summary = {}
    for policy in policies:
        row = {}
        for k in KS:
            per_fold = [results[f][split]["ndcg"][policy][f"ndcg{k}"] for f in folds]
            row[f"ndcg{k}"] = float(np.mean(per_fold))
            row[f"ndcg{k}_std_over_folds"] = float(np.std(per_fold, ddof=1)) if len(folds) > 1 else 0.0
        for k in CI_KS:
            mine = np.concatenate([results[f][split]["per_query"][policy][f"ndcg{k}"] for f in folds])
            base = np.concatenate([results[f][split]["per_query"]["lambdamart"][f"ndcg{k}"] for f in folds])
            if policy != "lambdamart":
                diff, half = mean_ci(mine - base)
                row[f"ndcg{k}_diff_vs_lambdamart"] = diff
                row[f"ndcg{k}_diff_ci95"] = half
        summary[policy] = row
    return summary


def print_table(summary: dict, title: str) -> None:
    print(title)
    print(f"{'policy':16s}" + "".join(f"{f'NDCG@{k}':>9s}" for k in KS)
          + "".join(f"{f'Δ@{k} vs LambdaMART (95% CI)':>30s}" for k in CI_KS))
    for policy, row in summary.items():
        diffs = "".join(f"{row[f'ndcg{k}_diff_vs_lambdamart']:+20.4f} ± {row[f'ndcg{k}_diff_ci95']:.4f}"
                        if f"ndcg{k}_diff_vs_lambdamart" in row else f"{'':>30s}" for k in CI_KS)
        print(f"{policy:16s}" + "".join(f"{row[f'ndcg{k}']:9.4f}" for k in KS) + diffs)


def run(cfg: Config, work: Path) -> dict:
    from relist.data.loaders.letor import load_letor_folds

    torch.set_num_threads(1)
    data = repo_path(cfg.data)
    folds = {fold.name: fold for fold in load_letor_folds(data)}
    names = cfg.folds or list(folds)
    unknown = sorted(set(names) - set(folds))
    if unknown:
        raise ValueError(f"no fold {unknown} in {data} (it has {sorted(folds)})")
    work = work / fingerprint(data, cfg)
    results = {}
    for name in names:
        cached = work / name / "result.json"
        if cached.is_file():
            results[name] = json.loads(cached.read_text())
        else:
            results[name] = run_fold(cfg, folds[name], work / name)
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(results[name]))
        row = {policy: round(v["ndcg10"], 4) for policy, v in results[name]["test"]["ndcg"].items()}
        print(name, "test NDCG@10", row, flush=True)
    summary = {split: summarise(results, split) for split in ("vali", "test")}
    print_table(summary["vali"], f"\nvali ({len(results)} folds, mean over folds)")
    print_table(summary["test"], f"\ntest ({len(results)} folds, mean over folds; Δ pooled over "
                f"{sum(r['test']['queries_counted'] for r in results.values())} queries)")
    for result in results.values():
        for split in ("vali", "test"):
            result[split].pop("per_query")
    return {
        "data": str(data), "data_fingerprint": work.name, "folds": names,
        "ndcg": "gain 2^rel-1, discount 1/log2(rank+1), queries without a relevant document excluded",
        "comparison": "per-query NDCG difference vs LambdaMART on the same test queries, mean and 95% t-interval "
                      "half-width, pooled over folds",
        "reference_ndcg10": REFERENCE, "mean_over_folds": summary["test"], "vali_mean_over_folds": summary["vali"],
        "per_fold": results}
