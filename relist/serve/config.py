"""Settings of serving: the HTTP service (relist/configs/serve.yaml) and the pipeline a model version runs."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from relist.io.config import CONFIGS, load_config
from relist.rerank.list_ranking import ListRankingConfig
from relist.rerank.local_search import LocalSearchConfig
from relist.rerank.registry import RerankConfig
from relist.serve.schemas import MAX_BUDGET_MS, SCHEMA_MAX_CANDIDATES

SERVED_GENERATORS = ["upstream", "greedy_upstream_score", "beam_upstream", "greedy_ctr", "beam", "prm", "dlcm",
                     "seq2slate", "grn", "grn_samples", "grn_cmr", "last"]
SERVED_MIN_SHARE = 0.02  # at export, generators served on fewer validation requests are left out (serve.yaml)


class PipelineConfig(BaseModel):
    """How a model version re-ranks; stored in its manifest, so a reload can change it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rerank: RerankConfig = Field(
        RerankConfig(ranking=ListRankingConfig(generators=SERVED_GENERATORS, min_share=SERVED_MIN_SHARE,
                                               choose_within_incumbent=False, refine=LocalSearchConfig(rounds=0))),
        description="generators, list ranking (incumbent, pessimism, local search), rules and the objective: the "
                    "same settings as `relist eval rerank`; generators whose models the version lacks are left out")
    forced_only: list[str] = Field([], description="generators that do not compete in list ranking but that a "
                                                  "request may force by name (export puts here those min_share "
                                                  "leaves out)")
    recall_size: int = Field(1000, ge=1, description="/v1/recommend: items recalled from the catalogue")
    coarse_keep: int = Field(200, ge=1, description="/v1/recommend: items the coarse ranker passes on")
    rerank_candidates: int = Field(50, ge=1,
                                   description="/v1/recommend: items the fine ranker hands to re-ranking")

    @classmethod
    def of(cls, generators: list[str], **ranking: object) -> PipelineConfig:
        """The default pipeline with exactly these generators (none left out at export unless ``min_share`` is
        given) and list-ranking settings, e.g. ``incumbent=None``."""
        default = cls().rerank
        updated = default.ranking.model_copy(update={"generators": list(generators), "min_share": 0.0, **ranking})
        return cls(rerank=default.model_copy(update={"ranking": ListRankingConfig.model_validate(
            updated.model_dump())}))


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="bind address; anything else must be asked for")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(2, ge=1, description="uvicorn worker processes: one per core (a Python process cannot "
                                              "use two; 2 on the 2-core reference machine)")
    torch_threads: int = Field(1, ge=1, description="torch threads per worker (workers x threads <= cores)")
    pipeline_threads: int = Field(1, ge=1, description="requests a worker re-ranks at once; the others wait, "
                                                       "and the wait counts against their budget")
    max_batch: int = Field(16, ge=1, description="/v1/rerank requests of one worker re-ranked together at most "
                                                 "(relist.serve.batching); 1: one at a time")
    batch_wait_ms: float = Field(1.0, ge=0, le=100, description="how long the first request of a batch waits for "
                                                                "others to join (it counts against its budget)")
    default_budget_ms: float = Field(20.0, gt=0, le=MAX_BUDGET_MS, description="time budget of a request "
                                                                               "that names none")
    max_candidates: int = Field(500, ge=1, le=SCHEMA_MAX_CANDIDATES, description="candidates per request")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    admin_token_env: str = Field("RELIST_ADMIN_TOKEN",
                                 description="environment variable holding the admin token; admin endpoints "
                                             "are off without it")
    watch_pointer: bool = Field(True, description="reload when model_dir/CURRENT names another version")
    watch_interval_s: float = Field(1.0, gt=0)
    # Slow or idle connections (relist.serve.http_server): each one holds a socket and a slot of the cap.
    header_timeout_s: float = Field(5.0, gt=0, description="a connection sends a request's headers within this "
                                                           "long of connecting (or of its first byte), else 408 "
                                                           "and closed")
    body_timeout_s: float = Field(10.0, gt=0, description="the whole request body arrives within this long of "
                                                          "its headers, else 408 and closed")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(256, ge=1, description="open connections per worker; beyond it a request gets "
                                                        "503 and a new connection is closed at once")
    access_log_sample: float = Field(0.0, ge=0, le=1, description="share of requests logged as one JSON line on "
                                                                  "logger relist.access (0: off, 1: all)")
    pipeline: PipelineConfig = Field(PipelineConfig(), description="pipeline written into versions by "
                                                                    "`relist export`")


DEFAULT_CONFIG = CONFIGS / "serve.yaml"


def load_serve_config(path: str | Path | None = None) -> ServeConfig:
    """A service config file (default: the packaged relist/configs/serve.yaml)."""
    return load_config(path or DEFAULT_CONFIG, ServeConfig)
