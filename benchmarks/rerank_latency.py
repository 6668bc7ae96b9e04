"""Latency of list retrieval for one request (m=50 candidates, n=10 slots, 2 threads).

Times, in the same process and on the same requests: a greedy sort by upstream score (the baseline every
ratio is against), beam search alone (given p_ctr/p_next) and with the teacher's scoring, GRN greedy
decoding, the evaluator scoring 32 lists, and full list retrieval (teacher + beam k lists + GRN greedy +
GRN samples + upstream, deduplicated and scored by the evaluator in one batch). All include business
rules (category scatter over 2 slots). Models come from a directory written like `relist eval rerank`'s.

    python benchmarks/rerank_latency.py --data /tmp/sim --models /tmp/models
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import numpy as np
import torch
from _common import write_result

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests
from relist.eval.latency import one_by_one, request_timings_ms
from relist.eval.rerank import grn_samples
from relist.models.ranking.scoring import point_scores
from relist.rerank.beam import BeamPolicy, ListValue, beam_search
from relist.rerank.grn_policy import GRNPolicy
from relist.rerank.list_ranking import ListRanking
from relist.rerank.list_scorer import ListScorer
from relist.rerank.policy import greedy_by_score, upstream_order
from relist.rerank.rules import BusinessRules, item_attributes
from relist.train.ranking import load_ranking_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="simulated logs the models were trained on")
    parser.add_argument("--models", type=Path, required=True, help="has teacher/ evaluator/ generator/")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam-k", type=int, default=8)
    parser.add_argument("--grn-samples", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, rules = 10, BusinessRules(cate_window=2)
    store = FeatureStore.from_dir(args.data)
    batch, _ = logged_requests(args.data, "test", 200)
    singles = one_by_one(batch)
    m = batch.candidates.shape[1]

    teacher = load_ranking_model(args.models / "teacher")
    scores = functools.partial(point_scores, teacher, store)
    scorer = ListScorer.load(args.models / "evaluator", store)
    grn = GRNPolicy.load(args.models / "generator", store, rules=rules)
    sampler = GRNPolicy.load(args.models / "generator", store, rules=rules, mode="sample",
                             samples=args.grn_samples, scorer=scorer)
    beam = BeamPolicy(scores, store, args.beam_k, ListValue(0.2, 1.0), rules)
    retrieval = ListRanking({"upstream": upstream_order, "beam": beam.propose, "grn": grn,
                             "grn_samples": grn_samples(sampler)}, scorer, store, rules)
    precomputed = {id(r): (scores(r), *item_attributes(store, r.candidates)) for r in singles}

    def beam_only(r):
        p, cates, shops = precomputed[id(r)]
        return beam_search(p["ctr"], p["next"], r.candidates, cates, shops, r.mask, n, args.beam_k,
                           ListValue(0.2, 1.0), rules)

    lists32 = {id(r): np.stack([np.random.default_rng(i).permutation(r.candidates[0])[:n] for i in range(32)])
               for r in singles}
    calls = {
        "greedy_sort_upstream": lambda r: greedy_by_score(r, n),
        "beam_search": beam_only,
        "teacher_scores_plus_beam": lambda r: beam(r, n),
        "grn_greedy": lambda r: grn(r, n),
        "evaluator_32_lists": lambda r: scorer.list_reward(np.repeat(r.user_id, 32), lists32[id(r)]),
        "full_list_retrieval": lambda r: retrieval(r, n),
    }
    with torch.no_grad():
        latency = {name: request_timings_ms(call, singles, args.repeats, warmup=20) for name, call in calls.items()}
    base = float(np.median(latency["greedy_sort_upstream"]))
    rows = {name: {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
                   "median_over_greedy_sort": float(np.median(t)) / base} for name, t in latency.items()}
    print(f"one request, m={m}, n={n}, beam k={args.beam_k}, GRN samples={args.grn_samples}, "
          f"{args.threads} threads, {args.repeats} calls")
    print(f"{'stage':26s} {'median ms':>10s} {'p99 ms':>8s} {'x greedy sort':>14s}")
    for name, row in rows.items():
        ratio = row["median_over_greedy_sort"]
        print(f"{name:26s} {row['median_ms']:10.3f} {row['p99_ms']:8.3f} {ratio:14.1f}")
    path = write_result("rerank_latency", {
        "candidates": m, "list_len": n, "beam_k": args.beam_k, "grn_samples": args.grn_samples,
        "threads": args.threads, "repeats": args.repeats, "rules": "cate_window=2",
        "load_average_1_5_15min_after": os.getloadavg(),
        "data": str(args.data), "models": str(args.models), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
