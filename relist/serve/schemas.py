"""The HTTP contract of the service: pydantic request and response bodies.

Validation happens here, once, so every 422 names the field that is wrong
(pydantic's ``loc``) and the pipeline only ever sees well-formed requests.
Models are strict (``"5"`` is not a number) and reject unknown fields, so a
typo in a client is an error instead of a silently ignored option.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INT32_MAX = 2**31 - 1
MAX_HISTORY = 200
# A hard ceiling in the schema; the served limit (ServeConfig.max_candidates) is at most this.
SCHEMA_MAX_CANDIDATES = 10_000
MAX_BUDGET_MS = 60_000.0

ItemId = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX, description="item id: the catalogue's own (any int64)")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class User(_Body):
    """The user of a request; any part may be missing (unknown users get neutral defaults)."""

    id: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX,
                           description="user id: the catalogue's own (any int64); unknown ids get neutral features")
    segment: int | None = Field(None, ge=0, le=INT32_MAX, description="profile segment (overrides stored)")
    history: list[ItemId] | None = Field(
        None, max_length=MAX_HISTORY, description="recently clicked item ids, most recent first "
                                                  "(replaces the stored history)")


class Candidate(_Body):
    id: ItemId
    category: int | None = Field(None, ge=0, le=INT32_MAX,
                                 description="category id, overrides the catalogue's (business rules)")
    shop: int | None = Field(None, ge=0, le=INT32_MAX, description="shop id, overrides the catalogue's")
    price: FiniteFloat | None = Field(None, ge=0, description="price (validated; no model reads it yet)")
    score: FiniteFloat | None = Field(None, description="upstream point-wise score, e.g. a CTR in [0, 1]")


class _ServeOptions(_Body):
    n: int = Field(10, ge=1, le=1000, description="list length; a shorter list is served when fewer "
                                                   "candidates exist")
    strategy: str | None = Field(None, max_length=64,
                                 description="force one generator (see GET /v1/strategies); default: every "
                                             "generator runs and the best list wins")
    budget_ms: FiniteFloat | None = Field(None, gt=0, le=MAX_BUDGET_MS,
                                          description="time budget of the request (default: server config)")


class RerankRequest(_ServeOptions):
    request_id: int | None = Field(None, ge=0, le=INT64_MAX)
    user: User = Field(default_factory=User)
    candidates: list[Candidate] = Field(min_length=1, max_length=SCHEMA_MAX_CANDIDATES,
                                        description="candidates in upstream order")

    @field_validator("candidates")
    @classmethod
    def _unique_and_consistent(cls, candidates: list[Candidate]) -> list[Candidate]:
        seen: dict[int, int] = {}
        for index, candidate in enumerate(candidates):
            if candidate.id in seen:
                raise ValueError(f"duplicate candidate id {candidate.id} at candidates[{index}] "
                                 f"(first at candidates[{seen[candidate.id]}])")
            seen[candidate.id] = index
        scored = [c.score is not None for c in candidates]
        if any(scored) and not all(scored):
            index = scored.index(False)
            raise ValueError(f"candidates[{index}].score is missing: give a score for every candidate or "
                             "for none")
        return candidates


class RecommendRequest(_ServeOptions):
    request_id: int | None = Field(None, ge=0, le=INT64_MAX)
    user: User


class RerankResponse(BaseModel):
    request_id: int | None
    items: list[int] = Field(description="the served list, best first")
    list_reward: float | None = Field(description="the scorer's list reward of the served list "
                                                  "(None when the budget left no time to score it)")
    scorer: str = Field(description="what computed list_reward: 'evaluator' or 'upstream_scores'")
    generator: str = Field(description="the stage whose list was served")
    model_version: str
    fallback: bool = Field(description="a model failed and the upstream order was served")
    breaks_rules: bool = Field(description="the served list breaks a business rule (no list that ran keeps "
                                           "them all)")
    budget_exceeded: bool = Field(description="a stage was skipped or ran past the time budget")
    skipped_stages: list[str]
    timings_ms: dict[str, float] = Field(description="per stage, plus 'total'")
    unknown_items: int = Field(description="served items the catalogue does not know (neutral features)")


class RecommendResponse(RerankResponse):
    candidates_considered: int = Field(description="candidates handed from ranking to re-ranking")


class Strategies(BaseModel):
    model_version: str
    strategies: list[str]
    scorer: str


class ReloadRequest(_Body):
    version: str | None = Field(None, max_length=200,
                                description="activate this version (default: re-read CURRENT)")


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    changed: bool
