"""Requests, the logging policy and sampled feedback, streamed to Parquet shards.

The logs carry only what a real platform has (ids, category, shop, price,
histories, upstream scores, feedback); the world's hidden truth stays here.
Generation is done in fixed-size batches, so memory does not grow with the
number of requests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from relist.data.requests import Requests
from relist.data.schema import LISTS, LISTS_WITH_PROPENSITY
from relist.sim.config import LoggingConfig
from relist.sim.propensity import (
    candidate_index,
    greedy_conditional,
    greedy_marginals,
    greedy_ranks,
    mixture_conditional,
    rule_keeping_conditional,
    rule_keeping_lists,
    rule_keeping_marginals,
)
from relist.sim.user_model import outcomes, sigmoid, standalone_logit
from relist.sim.world import World

SPLITS = ("train", "valid", "test")


def draw_requests(world: World, users: np.ndarray, rng: np.random.Generator, first_id: int = 0) -> Requests:
    """Recall m candidates per user (interest-led plus random) and score them with a noisy CTR model."""
    req = world.config.requests
    m = req.n_candidates
    items = np.arange(1, world.n_items + 1)
    cate_count = np.bincount(world.cate[1:], minlength=world.interest.shape[1])
    share = req.interest_share
    item_cate = world.cate[items]
    weight = share * world.interest[users][:, item_cate] / cate_count[item_cate] + (1 - share) / len(items)
    keys = np.log(weight) + rng.gumbel(size=weight.shape)
    top = np.argpartition(-keys, m - 1, axis=1)[:, :m]
    order = np.argsort(-np.take_along_axis(keys, top, 1), axis=1)
    candidates = items[np.take_along_axis(top, order, 1)]
    noisy = standalone_logit(world, users[:, None], candidates) + rng.normal(0, world.config.logging.score_noise,
                                                                           size=candidates.shape)
    return Requests.from_arrays(np.arange(first_id, first_id + len(users)), users, candidates, sigmoid(noisy))


def logging_policy(requests: Requests, n: int, exploration: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy by upstream score; each slot takes a random remaining candidate with chance ``exploration``."""
    b = len(requests)
    available = requests.mask.copy()
    shown = np.zeros((b, n), dtype=np.int64)
    rows = np.arange(b)
    for slot in range(n):
        greedy = np.where(available, requests.cand_scores, -np.inf).argmax(1)
        random = np.where(available, rng.gumbel(size=available.shape), -np.inf).argmax(1)
        pick = np.where(rng.random(b) < exploration, random, greedy)
        shown[:, slot] = requests.candidates[rows, pick]
        available[rows, pick] = False
    return shown


def logging_propensities(requests: Requests, shown: np.ndarray, cates: np.ndarray, logging: LoggingConfig,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The logging policy's probabilities of the lists it showed (relist.sim.propensity).

    ``propensity`` [B, n]: of each item at its slot given the items before it (exact);
    ``propensity_marginal`` [B, n]: of the item at its slot whatever came before (exact for the main
    policy, the bucket's part estimated from ``marginal_draws`` prefixes); ``list_propensity`` [B]:
    of the whole list. With a random bucket, the logging policy is the mixture of both.
    """
    shown_idx = candidate_index(requests.candidates, shown)
    b, n = shown.shape
    mask, eps = requests.mask, logging.exploration
    cond = greedy_conditional(requests.cand_scores, mask, shown_idx, eps)
    ranks = np.take_along_axis(greedy_ranks(requests.cand_scores, mask), shown_idx, 1)
    real = mask.sum(1)
    marginal = np.zeros((b, n))
    for m in np.unique(real):
        rows = real == m
        marginal[rows] = greedy_marginals(int(m), n, eps)[np.arange(n)[None, :], ranks[rows]]
    bucket = logging.random_bucket
    if bucket.share > 0:
        cand_cates = np.where(mask, cates, 0)
        in_bucket = rule_keeping_conditional(cand_cates, mask, shown_idx, bucket.cate_window)
        cond = mixture_conditional(cond, in_bucket, bucket.share)
        bucket_marginal = rule_keeping_marginals(cand_cates, mask, n, bucket.cate_window, rng,
                                                 bucket.marginal_draws)
        bucket_marginal = np.take_along_axis(bucket_marginal, shown_idx[:, :, None], 2)[:, :, 0]
        marginal = (1.0 - bucket.share) * marginal + bucket.share * bucket_marginal
    cond, marginal = np.minimum(cond, 1.0), np.minimum(marginal, 1.0)
    return {"propensity": cond, "propensity_marginal": marginal, "list_propensity": cond.prod(1)}


def random_bucket(requests: Requests, shown: np.ndarray, cates: np.ndarray, logging: LoggingConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """``shown`` with a share of the requests replaced by uniformly random lists that keep the category rule."""
    bucket = logging.random_bucket
    in_bucket = rng.random(len(shown)) < bucket.share
    cand_cates = np.where(requests.mask, cates, 0)
    picks = rule_keeping_lists(cand_cates, requests.mask, shown.shape[1], bucket.cate_window, rng)
    random_lists = np.take_along_axis(requests.candidates, picks, 1)
    return np.where(in_bucket[:, None], random_lists, shown)


def sample_feedback(world: World, users: np.ndarray, shown: np.ndarray, rng: np.random.Generator) -> dict:
    """Draw clicks, scrolls and purchases from the true model; unseen positions get zeros."""
    out = outcomes(world, users, shown)
    click = rng.random(shown.shape) < out.p_click
    scroll = rng.random(shown.shape) < out.p_next
    buy = click & (rng.random(shown.shape) < out.p_buy)
    seen = np.concatenate([np.ones((len(shown), 1), bool), np.cumprod(scroll[:, :-1], axis=1).astype(bool)], 1)
    return {
        "click": (click & seen).astype(np.int8),
        "next": (scroll & seen).astype(np.int8),
        "buy": (buy & seen).astype(np.int8),
        "exposed_len": seen.sum(1).astype(np.int16),
    }


def lists_table(requests: Requests, shown: np.ndarray, feedback: dict,
                propensities: dict[str, np.ndarray] | None = None) -> pa.Table:
    """Assemble a ``lists`` table (DESIGN §4) from fixed-size arrays without per-row Python.

    With ``propensities`` (from :func:`logging_propensities`) the table has the propensity family too.
    """

    def nested(values: np.ndarray, dtype) -> pa.ListArray:
        b, k = values.shape
        offsets = pa.array(np.arange(0, b * k + 1, k, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(values.ravel().astype(dtype)))

    columns = [
        pa.array(requests.request_id), pa.array(requests.user_id),
        nested(requests.candidates, np.int64), nested(requests.cand_scores, np.float32),
        nested(shown, np.int64), nested(feedback["click"], np.int8), nested(feedback["next"], np.int8),
        nested(feedback["buy"], np.int8), pa.array(feedback["exposed_len"]),
    ]
    if propensities is None:
        return pa.Table.from_arrays(columns, schema=LISTS)
    columns += [nested(propensities["propensity"], np.float64),
                nested(propensities["propensity_marginal"], np.float64),
                pa.array(propensities["list_propensity"].astype(np.float64))]
    return pa.Table.from_arrays(columns, schema=LISTS_WITH_PROPENSITY)


def split_sizes(n_requests: int, valid_frac: float, test_frac: float) -> dict[str, int]:
    n_valid, n_test = int(n_requests * valid_frac), int(n_requests * test_frac)
    return {"train": n_requests - n_valid - n_test, "valid": n_valid, "test": n_test}


def simulate_logs(
    world: World,
    out_dir: str | Path,
    n_requests: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    batch_size: int = 2000,
    shard_size: int = 200_000,
    progress: bool = True,
) -> dict:
    """Write items, users and time-split lists shards to ``out_dir``; returns a summary.

    Requests are in time order; the last ``test_frac`` go to test and the ones
    before them to valid, so evaluation never looks into the training period.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(world.items_table(), out / "items.parquet")
    pq.write_table(world.users_table(), out / "users.parquet")
    (out / "sim_config.yaml").write_text(yaml.safe_dump(world.config.dump(), sort_keys=False))

    rng = np.random.default_rng(world.config.seed + 1)
    # The options have streams of their own, so the main policy's draws (and, with options off, the
    # files) stay as they were: a bucket replaces some lists, it never shifts the other requests.
    bucket_rng = np.random.default_rng([world.config.seed, 2])
    propensity_rng = np.random.default_rng([world.config.seed, 3])
    schema = LISTS_WITH_PROPENSITY if world.config.logging.propensities else LISTS
    sizes = split_sizes(n_requests, valid_frac, test_frac)
    summary = {"requests": dict(sizes), "clicks": 0, "exposed": 0, "shards": 0}
    next_id = 0
    bar = tqdm(total=n_requests, desc="simulate", unit="lists", disable=not progress)
    for split in SPLITS:
        split_dir = out / "lists" / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for old in split_dir.glob("part-*.parquet"):
            old.unlink()
        writer, rows_in_shard, shard = None, 0, 0
        remaining = sizes[split]
        while remaining > 0:
            b = min(batch_size, remaining, shard_size - rows_in_shard)
            table = simulate_batch(world, b, rng, next_id, bucket_rng, propensity_rng)
            if writer is None:
                writer = pq.ParquetWriter(split_dir / f"part-{shard:05d}.parquet", schema)
            writer.write_table(table)
            summary["clicks"] += int(pc.sum(pc.list_flatten(table.column("click"))).as_py() or 0)
            summary["exposed"] += int(pc.sum(table.column("exposed_len")).as_py() or 0)
            next_id += b
            remaining -= b
            rows_in_shard += b
            bar.update(b)
            if rows_in_shard == shard_size:
                writer.close()
                writer, rows_in_shard, shard = None, 0, shard + 1
                summary["shards"] += 1
        if writer is not None:
            writer.close()
            summary["shards"] += 1
    bar.close()
    return summary


def simulate_batch(world: World, b: int, rng: np.random.Generator, first_id: int,
                   bucket_rng: np.random.Generator | None = None,
                   propensity_rng: np.random.Generator | None = None) -> pa.Table:
    """One batch of logged requests: draw users, recall, log a list, sample feedback.

    ``bucket_rng`` draws the randomised bucket and ``propensity_rng`` the bucket's marginal estimate;
    they are used only when those options are on.
    """
    users = rng.integers(1, world.n_users + 1, size=b)
    requests = draw_requests(world, users, rng, first_id)
    cfg = world.config.logging
    shown = logging_policy(requests, world.config.requests.list_len, cfg.exploration, rng)
    cates = world.cate[requests.candidates]
    if cfg.random_bucket.share > 0:
        shown = random_bucket(requests, shown, cates, cfg, bucket_rng or np.random.default_rng([first_id, 2]))
    feedback = sample_feedback(world, users, shown, rng)
    propensities = None
    if cfg.propensities:
        propensities = logging_propensities(requests, shown, cates, cfg,
                                            propensity_rng or np.random.default_rng([first_id, 3]))
    return lists_table(requests, shown, feedback, propensities)
