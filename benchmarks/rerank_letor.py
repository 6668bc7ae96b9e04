"""Re-rankers on real lists: LETOR 4.0 MQ2008, the five standard folds, NDCG@1/3/5/10.

Per fold (train = three subsets, vali = one, test = one; relist.data.loaders.letor.FOLDS):

* initial ranker: a point-wise MLP (46 features -> 32 -> 1) trained on the fold's train split with
  PRM's list-wise softmax loss, epoch picked by vali NDCG@10. Its order of each query's documents is the
  initial list; its score is an input of every re-ranker.
* PRM, DLCM, Seq2Slate: relist.models.baselines with dense inputs, trained on the train split's initial
  lists with graded labels (checkpoint by vali NDCG@10), re-rank the whole initial list.
* evaluator-guided list retrieval: the lists proposed by the initial ranker, PRM, DLCM and Seq2Slate are
  scored by an evaluator and the highest-scored one is kept. DCWN reads item ids, which mean nothing here
  (every query-document pair is a new item), so the LETOR evaluator is a separate PRM-architecture model
  trained on the train split with each list in a random order (so it judges a list's content, not the
  initial ranker's order); a list's score is the evaluator's expected DCG@10: the softmax of its
  per-position scores, discounted by 1/log2(rank + 1).

NDCG: gain 2^rel - 1, discount 1/log2(rank + 1), queries without a relevant document excluded (the
README's recommended convention, under which LambdaMART scores .702 and random .464 NDCG@10).

    python benchmarks/rerank_letor.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_result

from relist.data.loaders.letor import load_letor_folds
from relist.eval.metrics import mean_ci, ndcg_of_order, ndcg_per_query
from relist.models.baselines.inputs import BaselineConfig, initial_order
from relist.models.baselines.pointwise import PointwiseMLP
from relist.train.baselines import (
    BaselineTrainConfig,
    dense_batch,
    dense_lists,
    fit_baseline,
    listwise_loss,
    ranking_scores,
    reorder,
)
from relist.train.config import TrainConfig
from relist.train.trainer import fit, load_weights

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 3, 5, 10)
REFERENCE = {"LambdaMART (README)": 0.702, "random (README)": 0.464}


def train_config(seed: int) -> TrainConfig:
    return TrainConfig(epochs=20, batch_size=32, lr=3e-3, grad_clip=5.0, seed=seed, patience=3,
                       monitor="ndcg10", monitor_mode="max", num_threads=1)


def query_batches(lists: dict[str, np.ndarray], scores: np.ndarray, batch_size: int,
                  shuffle_items: bool = False):
    """Shuffled batches of queries; ``shuffle_items`` also shows each list in a random order."""

    def batches(epoch: int, rank: int, world_size: int):
        rng = np.random.default_rng(epoch)
        rows = rng.permutation(len(scores))[rank::world_size]
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            order = None
            if shuffle_items:
                order = initial_order(rng.random(scores[part].shape), lists["mask"][part])
            yield dense_batch(lists, scores, part, order)

    return batches


def ndcg_table(labels: np.ndarray, mask: np.ndarray, order: np.ndarray) -> dict[str, float]:
    return {f"ndcg{k}": float(np.nanmean(ndcg_of_order(labels, order, mask, k))) for k in KS}


def expected_dcg(evaluator, lists, scores, order, k: int = 10) -> np.ndarray:
    """The evaluator's expected DCG@k of each query's list in ``order``: softmax mass times discount."""
    batch = dense_batch(lists, scores, slice(None), order)
    with torch.no_grad():
        logits = evaluator(batch)["score"].masked_fill(~batch["mask"], -1e9)
    share = torch.softmax(logits, 1).numpy()
    discount = np.where(np.arange(share.shape[1]) < k, 1.0 / np.log2(np.arange(share.shape[1]) + 2), 0.0)
    return share @ discount


def run_fold(fold, seed: int, work: Path) -> dict:
    torch.manual_seed(seed)
    parts = {"train": fold.train, "vali": fold.vali, "test": fold.test}
    lists = {name: dense_lists(fold.items, table) for name, table in parts.items()}
    n_features = lists["train"]["dense"].shape[2]
    zeros = {name: np.zeros(value["mask"].shape, np.float32) for name, value in lists.items()}

    # 1. The initial ranker, point-wise on the 46 features.
    mlp = PointwiseMLP(n_features)
    vali_plain = dense_batch(lists["vali"], zeros["vali"])

    def validate_mlp(model):
        scores = model(vali_plain)["score"].masked_fill(~vali_plain["mask"], -1e9)
        return {"ndcg10": float(np.nanmean(ndcg_per_query(vali_plain["labels"].numpy(), scores.numpy(),
                                                          vali_plain["mask"].numpy(), 10)))}

    batches = query_batches(lists["train"], zeros["train"], 32)
    fit(mlp, listwise_loss, batches, validate_mlp, train_config(seed), work / "initial")
    load_weights(mlp, work / "initial" / "model.safetensors")
    mlp.eval()
    initial = {}
    with torch.no_grad():
        for name, value in lists.items():
            initial[name] = mlp(dense_batch(value, zeros[name]))["score"].numpy()
    # Every re-ranker reads each query's documents in the initial ranker's order.
    ordered = {name: reorder(value | {"score": initial[name]}, initial_order(initial[name], value["mask"]))
               for name, value in lists.items()}
    scores = {name: value.pop("score") for name, value in ordered.items()}
    vali = dense_batch(ordered["vali"], scores["vali"])
    test = dense_batch(ordered["test"], scores["test"])

    # 2. The re-rankers, and 3. the evaluator (a PRM shown lists in random orders).
    models = {}
    for kind in ("prm", "dlcm", "seq2slate", "evaluator"):
        is_evaluator = kind == "evaluator"
        model_cfg = BaselineConfig(kind="prm" if is_evaluator else kind, n_dense=n_features, max_len=128)
        cfg = BaselineTrainConfig(model=model_cfg, train=train_config(seed + (100 if is_evaluator else 0)))
        batches = query_batches(ordered["train"], scores["train"], 32, shuffle_items=is_evaluator)
        models[kind], _ = fit_baseline(cfg, None, batches, vali, work / kind)

    # 4. Test: every policy as a permutation of the initial list.
    labels, mask = test["labels"].numpy(), test["mask"].numpy()
    identity = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)
    orders = {"initial_ranker": identity.copy()}
    for kind in ("prm", "dlcm", "seq2slate"):
        orders[kind] = initial_order(ranking_scores(models[kind], test).numpy(), mask)
    proposals = np.stack(list(orders.values()), 1)  # [Q, P, L]
    value = np.stack([expected_dcg(models["evaluator"], ordered["test"], scores["test"], proposals[:, p])
                      for p in range(proposals.shape[1])], 1)
    picked = value.argmax(1)
    orders["evaluator_list_retrieval"] = proposals[np.arange(len(picked)), picked]
    names = list(orders)[:4]
    table = {name: ndcg_table(labels, mask, order) for name, order in orders.items()}
    counted = ~np.isnan(ndcg_of_order(labels, orders["initial_ranker"], mask, 10))
    return {"table": table, "queries": int(len(mask)), "queries_counted": int(counted.sum()),
            "retrieval_picked": {name: float(np.mean(picked == i)) for i, name in enumerate(names)},
            "per_query_ndcg10": {name: ndcg_of_order(labels, order, mask, 10)[counted].tolist()
                                 for name, order in orders.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "letor_mq2008")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rerank_letor"))
    parser.add_argument("--folds", nargs="+", default=["Fold1", "Fold2", "Fold3", "Fold4", "Fold5"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    folds = {fold.name: fold for fold in load_letor_folds(args.data)}
    results = {}
    for seed, name in enumerate(args.folds):
        cached = args.work / name / "result.json"  # a fold already run is not trained again
        if cached.is_file():
            results[name] = json.loads(cached.read_text())
        else:
            results[name] = run_fold(folds[name], seed, args.work / name)
            cached.write_text(json.dumps(results[name]))
        ndcg10 = {policy: round(row["ndcg10"], 4) for policy, row in results[name]["table"].items()}
        print(name, ndcg10, flush=True)
    policies = list(next(iter(results.values()))["table"])
    summary = {}
    for policy in policies:
        summary[policy] = {}
        for k in KS:
            per_fold = [results[f]["table"][policy][f"ndcg{k}"] for f in results]
            summary[policy][f"ndcg{k}"] = float(np.mean(per_fold))
        pooled = np.concatenate([results[f]["per_query_ndcg10"][policy] for f in results])
        summary[policy]["ndcg10_ci95_over_queries"] = mean_ci(pooled)[1]
    print(f"MQ2008, {len(results)} folds, mean over folds; queries without relevant documents excluded")
    print(f"{'policy':28s}" + "".join(f"{f'NDCG@{k}':>9s}" for k in KS))
    for policy, row in summary.items():
        print(f"{policy:28s}" + "".join(f"{row[f'ndcg{k}']:9.4f}" for k in KS))
    for name, value in REFERENCE.items():
        print(f"{name:28s}{'':27s}{value:9.3f}")
    for result in results.values():
        result.pop("per_query_ndcg10")
    path = write_result("rerank_letor", {
        "data": str(args.data), "folds": args.folds, "ndcg": "gain 2^rel-1, discount 1/log2(rank+1), "
        "queries without a relevant document excluded", "reference_ndcg10": REFERENCE,
        "initial_ranker": "point-wise MLP 46-32-1, list-wise softmax loss on the fold's train split, "
                          "epoch by vali NDCG@10",
        "training": train_config(0).model_dump(), "seconds": time.perf_counter() - start,
        "mean_over_folds": summary, "per_fold": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
