"""One entry for every model trained by the training loop: the config's type says what is trained.

``train_model(config, data_dir, out_dir)`` trains a ranking model, the evaluator, the GRN generator
or a re-ranking baseline into a complete model folder (relist.train.model_folder), the same way from
the command line, the demo and the benchmarks. Models that read other trained models name them by
role: the evaluator starts from the ``ranker``, the generator learns against the ``evaluator``.

The initial ranker of LETOR lists (relist.train.initial) is not here: it is LightGBM (or several MLP
fits) chosen on a grid, writes a log directory rather than a model folder, and has no resume.
"""

from __future__ import annotations

from pathlib import Path

from relist.io.config import ConfigError
from relist.models.ranking.config import RankingConfig
from relist.train.baselines import BaselineTrainConfig, train_baseline
from relist.train.evaluator import EvaluatorTrainConfig, train_evaluator
from relist.train.generator import GeneratorTrainConfig, train_generator
from relist.train.ranking import train_ranking
from relist.train.trainer import FitResult

TrainSpec = RankingConfig | EvaluatorTrainConfig | GeneratorTrainConfig | BaselineTrainConfig


def train_model(config: TrainSpec, data_dir: str | Path, out_dir: str | Path, resume: bool = False, *,
                ranker: str | Path | None = None, evaluator: str | Path | None = None) -> FitResult:
    """Train what ``config`` describes on ``data_dir``'s logs into ``out_dir`` (``resume``: after a crash).

    ``ranker``: the fine-ranking teacher the evaluator starts from (and the generator's evaluator was
    trained on); ``evaluator``: the trained evaluator the generator learns against.
    """
    match config:
        case RankingConfig():
            return train_ranking(config, data_dir, out_dir, resume)
        case EvaluatorTrainConfig():
            return train_evaluator(config, data_dir, out_dir, resume, ranker)[0]
        case GeneratorTrainConfig():
            if evaluator is None:
                raise ConfigError("the generator learns against a trained evaluator: pass its folder (--evaluator)")
            return train_generator(config, data_dir, evaluator, out_dir, resume, ranker)
        case BaselineTrainConfig():
            return train_baseline(config, data_dir, out_dir, resume)[1]
    raise TypeError(f"no trainer for a {type(config).__name__}; one of {TrainSpec}")


def summary(result: FitResult, monitor: str) -> str:
    """One line on a finished run: its best epoch and validation figure, and where the model is."""
    stopped = " (stopped early)" if result.stopped_early else ""
    return (f"best epoch {result.best_epoch + 1}: valid {monitor} {result.best_metric:.4f}{stopped}; "
            f"wrote {result.best_path.parent}")
