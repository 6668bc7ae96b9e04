"""The simulated catalogue and user base: observable fields and hidden truth.

Arrays are indexed by id (row 0 is padding), so ``world.cate[items]`` works
for any array of item ids. Only ``items_table``/``users_table`` leave the
simulator; latent vectors, interests and effect strengths never do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from relist.data.schema import ITEMS, USERS
from relist.sim.config import ShiftConfig, SimConfig


@dataclass
class World:
    config: SimConfig
    # items (index = item_id; row 0 is padding)
    cate: np.ndarray
    shop: np.ndarray
    price: np.ndarray
    latent: np.ndarray  # unit vectors
    quality: np.ndarray
    # users (index = user_id; row 0 unused)
    segment: np.ndarray
    interest: np.ndarray  # [users, cates], rows sum to 1
    user_latent: np.ndarray
    patience: np.ndarray
    price_sensitivity: np.ndarray
    history: np.ndarray  # [users, history_len] item ids, most recent first
    complement: np.ndarray  # [cates, cates] 0/1: category b after a draws the eye

    @property
    def n_items(self) -> int:
        return len(self.cate) - 1

    @property
    def n_users(self) -> int:
        return len(self.segment) - 1

    def items_table(self) -> pa.Table:
        ids = np.arange(1, self.n_items + 1)
        return pa.Table.from_arrays(
            [pa.array(ids), pa.array(self.cate[1:]), pa.array(self.shop[1:]), pa.array(self.price[1:])],
            schema=ITEMS,
        )

    def users_table(self) -> pa.Table:
        hist = self.history[1:]
        n, k = hist.shape
        offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        return pa.Table.from_arrays(
            [
                pa.array(np.arange(1, n + 1)),
                pa.array(self.segment[1:]),
                pa.ListArray.from_arrays(offsets, pa.array(hist.ravel())),
                pa.ListArray.from_arrays(offsets, pa.array(self.cate[hist.ravel()])),
            ],
            schema=USERS,
        )

    def shifted(self, shift: ShiftConfig, seed: int) -> World:
        """The same world after a behaviour change: drifted interests, rescaled fatigue."""
        rng = np.random.default_rng(seed)
        fresh = rng.dirichlet(np.full(self.interest.shape[1], self.config.users.interest_concentration),
                              size=self.interest.shape[0])
        interest = (1 - shift.interest_drift) * self.interest + shift.interest_drift * fresh
        effects = self.config.effects.model_copy(update={
            "fatigue_click": self.config.effects.fatigue_click * shift.fatigue_scale,
            "fatigue_next": self.config.effects.fatigue_next * shift.fatigue_scale,
        })
        config = self.config.model_copy(update={"effects": effects})
        return World(**{**self.__dict__, "config": config, "interest": interest})


def build_world(config: SimConfig) -> World:
    """Draw a world from its config; the same seed always gives the same world."""
    rng = np.random.default_rng(config.seed)
    cat, us = config.catalogue, config.users
    n_items, n_cates, d = cat.n_items, cat.n_cates, cat.latent_dim

    cate_sizes = 1.0 / np.arange(1, n_cates + 1) ** cat.cate_zipf
    cate = np.concatenate([[0], rng.choice(n_cates, size=n_items, p=cate_sizes / cate_sizes.sum())])
    # shops specialise: each shop sells mostly one category
    shops_per_cate = max(1, cat.n_shops // n_cates)
    shop = cate * shops_per_cate + rng.integers(0, shops_per_cate, size=n_items + 1)
    shop = np.where(rng.random(n_items + 1) < 0.1, rng.integers(0, cat.n_shops, n_items + 1), shop)
    cate_price = rng.normal(cat.log_price_mean, cat.log_price_std, size=n_cates)
    price = np.exp(cate_price[cate] + rng.normal(0, cat.log_price_std / 2, size=n_items + 1))
    # item latents cluster around their category's direction
    cate_dir = _unit(rng.normal(size=(n_cates, d)))
    latent = _unit(cate_dir[cate] + 0.8 * rng.normal(size=(n_items + 1, d)) / np.sqrt(d))
    quality = rng.normal(0, config.effects.quality_std, size=n_items + 1)

    segment_pref = rng.dirichlet(np.full(n_cates, 0.5), size=us.n_segments)
    segment = rng.integers(0, us.n_segments, size=us.n_users + 1)
    interest = np.stack([rng.dirichlet(us.interest_concentration * n_cates * segment_pref[s] + 1e-3)
                         for s in segment])
    user_latent = _unit(interest @ cate_dir + 0.5 * rng.normal(size=(us.n_users + 1, d)) / np.sqrt(d))
    patience = rng.normal(us.patience_mean, us.patience_std, size=us.n_users + 1)
    price_sensitivity = np.clip(rng.normal(us.price_sensitivity_mean, us.price_sensitivity_std, us.n_users + 1), 0,
                                None)

    complement = (rng.random((n_cates, n_cates)) < config.effects.complement_density).astype(np.float64)
    np.fill_diagonal(complement, 0.0)

    world = World(config, cate.astype(np.int32), shop.astype(np.int32), price.astype(np.float32), latent, quality,
                  segment.astype(np.int32), interest, user_latent, patience, price_sensitivity,
                  np.zeros((us.n_users + 1, us.history_len), dtype=np.int64), complement)
    world.history = _draw_histories(world, rng)
    return world


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _draw_histories(world: World, rng: np.random.Generator) -> np.ndarray:
    """Past clicks: items drawn without replacement by the user's true standalone appeal."""
    from relist.sim.user_model import standalone_logit  # local: user_model builds on World

    users = np.arange(world.n_users + 1)
    k = world.config.users.history_len
    history = np.zeros((len(users), k), dtype=np.int64)
    items = np.arange(1, world.n_items + 1)
    for start in range(0, len(users), 256):
        block = users[start:start + 256]
        logits = standalone_logit(world, block[:, None], items[None, :])
        keys = logits + rng.gumbel(size=logits.shape)
        history[start:start + 256] = items[np.argsort(-keys, axis=1)[:, :k]]
    history[0] = 0
    return history


def is_simulated(data_dir: str | Path) -> bool:
    """Whether a log directory was written by the simulator (so true rewards exist for it)."""
    return (Path(data_dir) / "sim_config.yaml").exists()


def world_of_logs(data_dir: str | Path) -> World:
    """Rebuild the world that wrote a simulated log directory (worlds are deterministic in their config)."""
    from relist.sim.config import load_sim_config

    path = Path(data_dir) / "sim_config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a simulator log directory (no sim_config.yaml); "
                                "true rewards exist only for simulated logs")
    return build_world(load_sim_config(path))
