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
from relist.data.schema import LISTS
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


def lists_table(requests: Requests, shown: np.ndarray, feedback: dict) -> pa.Table:
    """Assemble a ``lists`` table (DESIGN §4) from fixed-size arrays without per-row Python."""

    def nested(values: np.ndarray, dtype) -> pa.ListArray:
        b, k = values.shape
        offsets = pa.array(np.arange(0, b * k + 1, k, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(values.ravel().astype(dtype)))

    return pa.Table.from_arrays(
        [
            pa.array(requests.request_id), pa.array(requests.user_id),
            nested(requests.candidates, np.int64), nested(requests.cand_scores, np.float32),
            nested(shown, np.int64), nested(feedback["click"], np.int8), nested(feedback["next"], np.int8),
            nested(feedback["buy"], np.int8), pa.array(feedback["exposed_len"]),
        ],
        schema=LISTS,
    )


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
    (out / "sim_config.yaml").write_text(yaml.safe_dump(world.config.model_dump(), sort_keys=False))

    rng = np.random.default_rng(world.config.seed + 1)
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
            table = simulate_batch(world, b, rng, next_id)
            if writer is None:
                writer = pq.ParquetWriter(split_dir / f"part-{shard:05d}.parquet", LISTS)
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


def simulate_batch(world: World, b: int, rng: np.random.Generator, first_id: int) -> pa.Table:
    """One batch of logged requests: draw users, recall, log a list, sample feedback."""
    users = rng.integers(1, world.n_users + 1, size=b)
    requests = draw_requests(world, users, rng, first_id)
    cfg = world.config
    shown = logging_policy(requests, cfg.requests.list_len, cfg.logging.exploration, rng)
    return lists_table(requests, shown, sample_feedback(world, users, shown, rng))
