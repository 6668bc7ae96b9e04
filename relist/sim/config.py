"""Simulator configuration: every parameter and the seed live in one YAML file.

The defaults are the embedded default world (`configs/sim_default.yaml`
repeats them with comments). Effect strengths are deliberately configuration,
so a run on a world nobody tuned to is one flag away.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relist.io.config import CONFIGS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CatalogueConfig(_Strict):
    n_items: int = Field(2000, ge=10)
    n_cates: int = Field(20, ge=2)
    n_shops: int = Field(200, ge=1)
    latent_dim: int = Field(8, ge=1)
    cate_zipf: float = Field(0.8, ge=0.0, description="skew of category sizes")
    log_price_mean: float = 3.0
    log_price_std: float = Field(0.6, ge=0.0)


class UsersConfig(_Strict):
    n_users: int = Field(2000, ge=1)
    n_segments: int = Field(8, ge=1, description="observable profile segment; interests cluster by segment")
    interest_concentration: float = Field(0.3, gt=0.0, description="Dirichlet alpha: lower = narrower interests")
    history_len: int = Field(20, ge=1)
    patience_mean: float = Field(1.6, description="logit of the base will to keep scrolling")
    patience_std: float = Field(0.6, ge=0.0)
    price_sensitivity_mean: float = 0.6
    price_sensitivity_std: float = Field(0.3, ge=0.0)


class EffectsConfig(_Strict):
    """Strengths of the ground-truth user model (see relist.sim.user_model)."""

    base_logit: float = -3.8
    interest: float = Field(1.0, description="weight of log category interest")
    latent: float = Field(1.0, description="weight of user-item latent affinity")
    quality_std: float = Field(0.5, ge=0.0)
    position_decay: float = Field(0.15, description="click logit lost per log2 of the position")
    fatigue_click: float = Field(0.4, description="click logit lost per earlier item of the same category")
    fatigue_next: float = Field(0.35, description="scroll logit lost per earlier item of the same category")
    contrast: float = Field(0.5, description="click gain of an item unlike its neighbours (latent cosine)")
    complementarity: float = Field(0.7, description="click gain when the item before is of a complementary category")
    complement_density: float = Field(0.1, ge=0.0, le=1.0, description="share of category pairs that complement")
    next_influence: float = Field(-0.8, description="click change from the next item's appeal (two columns)")
    engagement: float = Field(1.0, description="scroll logit gained per unit of the item's click probability")
    buy_logit: float = -2.2
    buy_price: float = Field(1.0, description="how much price sensitivity lowers purchases")


class RequestsConfig(_Strict):
    n_candidates: int = Field(50, ge=2, description="m")
    list_len: int = Field(10, ge=1, description="n")
    interest_share: float = Field(0.7, ge=0.0, le=1.0, description="share of recall that follows interests")


class RandomBucketConfig(_Strict):
    """A share of requests served uniformly random lists that keep the category rule (exploration traffic)."""

    share: float = Field(0.0, ge=0.0, le=1.0, description="share of requests in the randomised bucket")
    cate_window: int = Field(2, ge=0, description="no item of a category among the previous w items")
    marginal_draws: int = Field(64, ge=1, description="drawn prefixes per request that estimate the "
                                "bucket's per-slot marginal probabilities (propensity_marginal)")


class LoggingConfig(_Strict):
    score_noise: float = Field(0.6, ge=0.0, description="std of the upstream CTR model's logit error")
    exploration: float = Field(0.15, ge=0.0, le=1.0, description="chance a slot takes a random candidate")
    propensities: bool = Field(False, description="write the logging policy's probabilities (propensity, "
                               "propensity_marginal, list_propensity) with every logged list")
    random_bucket: RandomBucketConfig = RandomBucketConfig()


class ShiftConfig(_Strict):
    """Behaviour change after training (LAST's scenario): applied only when asked for."""

    interest_drift: float = Field(0.0, ge=0.0, le=1.0, description="mix of fresh random interests")
    fatigue_scale: float = Field(1.0, ge=0.0, description="multiplies both fatigue effects")


class SimConfig(_Strict):
    seed: int = 0
    catalogue: CatalogueConfig = CatalogueConfig()
    users: UsersConfig = UsersConfig()
    effects: EffectsConfig = EffectsConfig()
    requests: RequestsConfig = RequestsConfig()
    logging: LoggingConfig = LoggingConfig()
    shift: ShiftConfig = ShiftConfig()

    def dump(self) -> dict:
        """The config as written beside the logs.

        Logging options that are off are left out, so logs written with them off are byte-identical
        to logs written before the options existed.
        """
        raw = self.model_dump()
        if not self.logging.propensities:
            del raw["logging"]["propensities"]
        if self.logging.random_bucket == RandomBucketConfig():
            del raw["logging"]["random_bucket"]
        return raw


DEFAULT_CONFIG = CONFIGS / "sim_default.yaml"


class SimConfigError(ValueError):
    """A simulator config that cannot be used; the message names the file and the field."""


def load_sim_config(path: str | Path | None = None) -> SimConfig:
    """Read a YAML simulator config; errors name the file and the field."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SimConfigError(f"simulator config {path}: cannot read YAML ({err})") from err
    try:
        return SimConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise SimConfigError(f"simulator config {path}: {problems}") from None
