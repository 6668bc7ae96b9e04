"""Ground-truth user model: exact expected feedback of any ordered list.

A user scrolls a two-column feed from the top. At position j (0-based) the
item is clicked with probability ``sigmoid(click_logit_j)`` where

    click_logit_j = standalone appeal (interest, latent affinity, quality)
                  - position_decay * log2(1 + j)
                  - fatigue_click * (#earlier items of the same category)
                  + contrast * (1 - mean cosine to its neighbours)
                  + complementarity * [category before complements this one]
                  + next_influence * (appeal of item j+1 - appeal of item j)

and, after seeing it, keeps scrolling with probability
``sigmoid(patience - fatigue_next * repeats_j + engagement * p_click_j)``.
Clicks and scrolling are independent given the list, so the exposure
probability of position j is the product of the scroll probabilities before
it and every expectation below is exact, not sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relist.objective import OBJECTIVES, Objective, terms, value
from relist.sim.world import World


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def standalone_logit(world: World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Click logit of an item shown alone at the top (broadcasts users against items)."""
    e = world.config.effects
    n_cates = world.interest.shape[1]
    interest = world.interest[users, world.cate[items]]
    affinity = np.einsum("...d,...d->...", world.user_latent[users], world.latent[items])
    return (e.base_logit + e.interest * np.log(np.maximum(n_cates * interest, 0.02))
            + e.latent * affinity + world.quality[items])


@dataclass
class Outcomes:
    """Per-position probabilities of a batch of lists [B, n] and their exact expectations."""

    p_click: np.ndarray
    p_next: np.ndarray
    p_buy: np.ndarray  # given a click
    exposure: np.ndarray  # chance that position j is seen
    price: np.ndarray

    @property
    def pv(self) -> np.ndarray:
        return self.exposure.sum(-1)

    @property
    def ipv(self) -> np.ndarray:
        return (self.exposure * self.p_click).sum(-1)

    @property
    def buys(self) -> np.ndarray:
        return (self.exposure * self.p_click * self.p_buy).sum(-1)

    @property
    def gmv(self) -> np.ndarray:
        return (self.exposure * self.p_click * self.p_buy * self.price).sum(-1)

    def metric(self, objective: str | Objective) -> np.ndarray:
        """One objective (pv, ipv, buys, gmv) or a weighted mix of them, per list."""
        if isinstance(objective, str) and objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
        if isinstance(objective, str):
            return getattr(self, objective)
        return value(terms(self.exposure, self.p_click, self.p_buy, self.price), objective.vector())


def outcomes(world: World, users: np.ndarray, lists: np.ndarray) -> Outcomes:
    """Exact per-position click, scroll and purchase probabilities of lists [B, n] for users [B]."""
    e = world.config.effects
    users = np.asarray(users)[:, None]
    lists = np.asarray(lists)
    n = lists.shape[1]
    appeal = standalone_logit(world, users, lists)

    cates = world.cate[lists]
    same = cates[:, :, None] == cates[:, None, :]
    repeats = np.tril(same, k=-1).sum(-1)

    latent = world.latent[lists]
    cos_prev = np.einsum("bjd,bjd->bj", latent[:, 1:], latent[:, :-1])  # cos(j, j-1) for j >= 1
    cos_sum = np.zeros(lists.shape)
    neighbours = np.zeros(lists.shape)
    cos_sum[:, 1:] += cos_prev
    cos_sum[:, :-1] += cos_prev
    neighbours[:, 1:] += 1
    neighbours[:, :-1] += 1
    contrast = 1.0 - cos_sum / np.maximum(neighbours, 1)

    complement = np.zeros(lists.shape)
    complement[:, 1:] = world.complement[cates[:, :-1], cates[:, 1:]]

    next_gap = np.zeros(lists.shape)
    next_gap[:, :-1] = sigmoid(appeal[:, 1:]) - sigmoid(appeal[:, :-1])

    click_logit = (appeal - e.position_decay * np.log2(1.0 + np.arange(n)) - e.fatigue_click * repeats
                   + e.contrast * contrast + e.complementarity * complement + e.next_influence * next_gap)
    p_click = sigmoid(click_logit)
    p_next = sigmoid(world.patience[users] - e.fatigue_next * repeats + e.engagement * p_click)
    exposure = np.concatenate([np.ones((len(lists), 1)), np.cumprod(p_next[:, :-1], axis=1)], axis=1)

    log_price = np.log(world.price[lists]) - world.config.catalogue.log_price_mean
    interest = world.interest[users, cates]
    p_buy = sigmoid(e.buy_logit + 0.5 * np.log(np.maximum(interest * world.interest.shape[1], 0.02))
                     - e.buy_price * world.price_sensitivity[users] * log_price)
    return Outcomes(p_click, p_next, p_buy, exposure, world.price[lists].astype(np.float64))


def expected(world: World, users: np.ndarray, lists: np.ndarray, objective: str | Objective = "ipv") -> np.ndarray:
    """Exact expected value of ``objective`` (pv, ipv, buys, gmv, or a mix) for each list."""
    return outcomes(world, users, lists).metric(objective)
