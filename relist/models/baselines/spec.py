"""Saving and rebuilding a trained baseline: its architecture and tables travel in ``baseline.yaml``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict
from torch import nn

from relist.io import model_folder
from relist.models.baselines.dlcm import DLCM
from relist.models.baselines.inputs import BaselineConfig
from relist.models.baselines.prm import PRM
from relist.models.baselines.seq2slate import Seq2Slate
from relist.models.vocab import Vocab

MODELS = {"prm": PRM, "dlcm": DLCM, "seq2slate": Seq2Slate}
SPEC_FILE = "baseline.yaml"


class BaselineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: Vocab | None  # None for dense-feature models
    model: BaselineConfig


def build_baseline(spec: BaselineSpec) -> nn.Module:
    return MODELS[spec.model.kind](spec.vocab, spec.model)


def save_spec(spec: BaselineSpec, model_dir: str | Path) -> None:
    model_folder.save_spec(spec, model_dir, SPEC_FILE)


def load_baseline(model_dir: str | Path) -> tuple[nn.Module, BaselineSpec]:
    """A trained baseline (eval mode) from a directory written by relist.train.baselines."""
    return model_folder.load_saved(model_dir, SPEC_FILE, BaselineSpec, build_baseline)
