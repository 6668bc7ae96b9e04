"""Settings of the HTTP service (relist/configs/serve.yaml); how lists are made lives in the model version."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from relist.serve.pipeline import PipelineConfig
from relist.serve.schemas import MAX_BUDGET_MS, SCHEMA_MAX_CANDIDATES


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="bind address; anything else must be asked for")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    torch_threads: int = Field(1, ge=1, description="torch threads per worker (workers x threads <= cores)")
    default_budget_ms: float = Field(20.0, gt=0, le=MAX_BUDGET_MS, description="time budget of a request "
                                                                               "that names none")
    max_candidates: int = Field(500, ge=1, le=SCHEMA_MAX_CANDIDATES, description="most candidates per request")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    admin_token_env: str = Field("RELIST_ADMIN_TOKEN", description="environment variable holding the admin "
                                                                   "token; admin endpoints are off without it")
    watch_pointer: bool = Field(True, description="reload when model_dir/CURRENT names another version")
    watch_interval_s: float = Field(1.0, gt=0)
    pipeline: PipelineConfig = Field(PipelineConfig(), description="pipeline written into versions by "
                                                                    "`relist export`")


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "serve.yaml"


def load_serve_config(path: str | Path | None = None) -> ServeConfig:
    """A service config file (default: the packaged relist/configs/serve.yaml)."""
    from relist.train.config import load_config

    return load_config(path or DEFAULT_CONFIG, ServeConfig)
