"""The HTTP contract of the service: pydantic request and response bodies.

Validation happens here, once, so every 422 names the field that is wrong
(pydantic's ``loc``) and the pipeline only ever sees well-formed requests.
Models are strict (``"5"`` is not a number) and reject unknown fields, so a
typo in a client is an error instead of a silently ignored option. What the
JSON Schema can state, it states (so a schema-driven client or fuzzer sees the
same contract as the server, and no request valid by the schema is refused for
a rule it does not state).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

INT64_END = 2**63  # ids are < this (an exclusive bound: exact as a JSON Schema number, unlike 2**63 - 1)
INT32_MAX = 2**31 - 1
MAX_HISTORY = 200
# A hard ceiling in the schema; the served limit (ServeConfig.max_candidates) is at most this.
SCHEMA_MAX_CANDIDATES = 10_000
MAX_BUDGET_MS = 60_000.0
VERSION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a model version's name (also a directory name)



def _integral(value: Any) -> Any:
    """JSON Schema's integers include 3.0: accept a float with no fractional part as the integer it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(**bounds: int) -> Any:
    """An integer field type: strict (no strings, no booleans) but for integral floats; ``bounds`` are
    Field's (ge, lt, ...), placed before the validator so the JSON Schema states them."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


Int64 = json_int(ge=0, lt=INT64_END)
Int32 = json_int(ge=0, le=INT32_MAX)
AnyInt64 = json_int(ge=-INT64_END, lt=INT64_END)  # the catalogue's own ids: any int64 (relist.data.ids)
ItemId = Annotated[AnyInt64, Field(description="item id: the catalogue's own, any int64")]
# Scores and prices become float32 (max ~3.4e38: larger ones would turn into inf); no real one is near this.
MAX_MAGNITUDE = 1e30
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
# Scores for every candidate or for none, said in JSON Schema (the validator below says it with an index).
_ALL_OR_NO_SCORES = {"anyOf": [{"items": {"required": ["score"], "properties": {"score": {"type": "number"}}}},
                               {"items": {"properties": {"score": {"type": "null"}}}}]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class User(_Body):
    """The user of a request; any part may be missing (unknown users get neutral defaults)."""

    id: AnyInt64 | None = Field(None, description="user id: the catalogue's own, any int64; unknown ids get "
                                                  "neutral features")
    segment: Int32 | None = Field(None, description="profile segment (overrides stored)")
    history: list[ItemId] | None = Field(
        None, max_length=MAX_HISTORY, description="recently clicked item ids, most recent first "
                                                  "(replaces the stored history)")


class Candidate(_Body):
    id: ItemId
    category: Int32 | None = Field(None, description="category id, overrides the catalogue's (business rules)")
    shop: Int32 | None = Field(None, description="shop id, overrides the catalogue's")
    price: FiniteFloat | None = Field(None, ge=0, description="price (validated; no model reads it yet)")
    score: FiniteFloat | None = Field(None, description="upstream point-wise score, e.g. a CTR in [0, 1]")


OBJECTIVES = ("pv", "ipv", "buys", "gmv")  # relist.objective.OBJECTIVES, spelled out: schemas stay torch-free


class ObjectiveWeights(_Body):
    """Non-negative weights of the list objectives (relist.objective); at least one must be positive."""

    # the published schema says so too, so that a client generated from it never sends all zeros
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": [name], "properties": {name: {"type": "number", "exclusiveMinimum": 0}}}
        for name in OBJECTIVES]})

    pv: FiniteFloat | None = Field(None, ge=0, le=1e6, description="expected page views")
    ipv: FiniteFloat | None = Field(None, ge=0, le=1e6, description="expected clicks")
    buys: FiniteFloat | None = Field(None, ge=0, le=1e6, description="expected purchases")
    gmv: FiniteFloat | None = Field(None, ge=0, le=1e6, description="expected spend")

    @model_validator(mode="after")
    def _some_weight(self) -> ObjectiveWeights:
        if not any(self.model_dump(exclude_none=True).values()):
            raise ValueError(f"give a positive weight to at least one of {', '.join(OBJECTIVES)}")
        return self


class _ServeOptions(_Body):
    n: json_int(ge=1, le=1000) = Field(10, description="list length; a shorter list is served when fewer "
                                                   "candidates exist")
    strategy: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="force one generator (see GET /v1/strategies; the served schema "
                                             "lists the served version's); default: every generator runs "
                                             "and the best list wins")
    budget_ms: FiniteFloat | None = Field(None, gt=0, le=MAX_BUDGET_MS,
                                          description="time budget of the request (default: server config)")
    objective: ObjectiveWeights | None = Field(
        None, description="what this request's list is worth, as weights of the list objectives (e.g. "
                          '{"ipv": 1, "gmv": 0.02}); beam search, list ranking and LAST honour it without '
                          "retraining (default: the model version's objective)")

    def objective_of(self):
        """The request's relist.objective.Objective, or None for the version's."""
        from relist.objective import Objective

        return None if self.objective is None else Objective(weights=self.objective.model_dump(exclude_none=True))


class RerankRequest(_ServeOptions):
    request_id: Int64 | None = None
    user: User = Field(default_factory=User)
    candidates: list[Candidate] = Field(min_length=1, max_length=SCHEMA_MAX_CANDIDATES,
                                        json_schema_extra=_ALL_OR_NO_SCORES,
                                        description="candidates in upstream order; either every candidate has "
                                                    "a score or none has. A repeated id counts once, at its "
                                                    "first occurrence (see duplicate_candidates)")

    def unique_candidates(self) -> tuple[list[Candidate], int]:
        """The candidates with each id at its first occurrence only, and how many repeats were left out."""
        first: dict[int, Candidate] = {}
        for candidate in self.candidates:
            first.setdefault(candidate.id, candidate)
        return list(first.values()), len(self.candidates) - len(first)

    @field_validator("candidates")
    @classmethod
    def _all_or_no_scores(cls, candidates: list[Candidate]) -> list[Candidate]:
        scored = [c.score is not None for c in candidates]
        if any(scored) and not all(scored):
            index = scored.index(False)
            raise ValueError(f"candidates[{index}].score is missing: give a score for every candidate or "
                             "for none")
        return candidates


class RecommendRequest(_ServeOptions):
    request_id: Int64 | None = None
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
    timings_ms: dict[str, float] = Field(description="per stage, plus 'queue' and 'total'")
    batch_size: int = Field(1, ge=1, description="requests re-ranked together with this one (dynamic batching; "
                                                 "stage timings are the batch's)")
    unknown_items: int = Field(description="served items the catalogue does not know (neutral features)")
    duplicate_candidates: int = Field(0, description="candidates left out because their id came earlier in "
                                                     "the request (each id counts once)")


class RecommendResponse(RerankResponse):
    candidates_considered: int = Field(description="candidates handed from ranking to re-ranking")


class Strategies(BaseModel):
    model_version: str
    strategies: list[str]
    scorer: str


class ReloadRequest(_Body):
    version: str | None = Field(None, pattern=VERSION_NAME,
                                description="activate this version (default: re-read CURRENT)")


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    changed: bool


class Readiness(BaseModel):
    status: str = Field(description="'ready' once a version is loaded and warmed up")
    model_version: str
    refused_version: str | None = Field(description="the version CURRENT names when it was refused (the one "
                                                    "served is then the last good one); null when they agree")


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: ['body', 'candidates', 3, 'id'], ['header', ...], ...")
    field: str = Field(description="the same as one dotted name: 'candidates.3.id', 'body', 'authorization'")
    msg: str = Field(description="what is wrong, in words")
    type: str = Field(description="a stable machine-readable kind, e.g. 'missing', 'too_large', 'timeout'")


class ErrorResponse(BaseModel):
    """Every error the service answers has this body: one item per problem found."""

    detail: list[ErrorItem]
