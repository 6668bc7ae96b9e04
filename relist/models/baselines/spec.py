"""Saving and rebuilding a trained baseline: its architecture and tables travel in ``baseline.yaml``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from relist.io import model_folder
from relist.models.baselines.inputs import BaselineConfig
from relist.models.contract import ListGenerator
from relist.models.registry import LIST_MODELS
from relist.models.vocab import Vocab

SPEC_FILE = "baseline.yaml"


class BaselineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: Vocab | None  # None for dense-feature models
    model: BaselineConfig


def build_baseline(spec: BaselineSpec) -> ListGenerator:
    return LIST_MODELS[spec.model.kind](spec.vocab, spec.model)


def load_baseline(model_dir: str | Path) -> tuple[ListGenerator, BaselineSpec]:
    """A trained baseline (eval mode) from a directory written by relist.train.baselines."""
    return model_folder.load_saved(model_dir, SPEC_FILE, BaselineSpec, build_baseline)
