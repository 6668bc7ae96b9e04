"""Initial rankers (LambdaMART through LightGBM, point-wise MLP) and `relist train initial` on LETOR files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from relist.cli import app
from relist.data.loaders.letor import load_letor_folds
from relist.data.schema import SchemaError
from relist.eval.metrics import ndcg_of_order
from relist.train.baselines import dense_lists
from relist.train.initial import InitialConfig, initial_scores, load_initial, reranked_lists

N_FEATURES = 5


def write_letor_subsets(root: Path, queries: int = 16, docs: int = 9, seed: int = 0) -> Path:
    """S1..S5 in LETOR format; relevance grows with f2 (f1 is noise), so a ranker can learn it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    qid = 0
    for subset in range(1, 6):
        lines = []
        for _ in range(queries):
            qid += 1
            features = rng.random((docs, N_FEATURES))
            labels = np.digitize(features[:, 1] + 0.1 * rng.standard_normal(docs), [0.6, 0.85])
            for d, (label, row) in enumerate(zip(labels, features, strict=True)):
                values = " ".join(f"{k + 1}:{v:.4f}" for k, v in enumerate(row))
                lines.append(f"{label} qid:{qid} {values} #docid = D{qid}-{d} inc = 1 prob = 0.5")
        (root / f"S{subset}.txt").write_text("\n".join(lines) + "\n")
    return root


def quick_config(kind: str) -> InitialConfig:
    return InitialConfig.model_validate({
        "kind": kind, "cross_fit": 2,
        "lambdamart": {"num_leaves": [3, 7], "learning_rate": [0.1], "min_data_in_leaf": [5], "max_rounds": 60},
        "mlp": {"learning_rates": [0.01], "schedule": {"max_steps": 120, "eval_every": 40, "patience": 2}}})


def mean_ndcg(lists, scores):
    order = np.argsort(np.where(lists["mask"], -scores, np.inf), 1, kind="stable")
    return float(np.nanmean(ndcg_of_order(lists["labels"], order, lists["mask"], 10)))


@pytest.mark.parametrize("kind", ["lambdamart", "mlp"])
def test_initial_ranker_learns_chooses_on_validation_and_scores_train_out_of_fold(kind, tmp_path):
    fold = load_letor_folds(write_letor_subsets(tmp_path / "letor"))[0]
    parts = {name: dense_lists(fold.items, getattr(fold, name)) for name in ("train", "vali", "test")}
    ranker, scores = initial_scores(quick_config(kind), parts, tmp_path / "work", valid="vali")
    random = mean_ndcg(parts["test"], np.random.default_rng(0).random(parts["test"]["mask"].shape))
    assert mean_ndcg(parts["test"], scores["test"]) > random + 0.2
    assert len(ranker.spec.grid) == (2 if kind == "lambdamart" else 1)
    assert ranker.spec.valid_ndcg10 == max(row["valid_ndcg10"] for row in ranker.spec.grid)
    # Out of fold: the train lists are not scored by the model that saw them.
    assert not np.allclose(scores["train"][parts["train"]["mask"]],
                           ranker.score(parts["train"])[parts["train"]["mask"]])
    ranker.save(tmp_path / "saved")
    np.testing.assert_allclose(load_initial(tmp_path / "saved").score(parts["test"]), scores["test"], rtol=1e-6)


def test_reranked_lists_move_candidates_scores_labels_and_shown_together(tmp_path):
    fold = load_letor_folds(write_letor_subsets(tmp_path / "letor", queries=3))[0]
    table = fold.test
    scores = np.random.default_rng(1).random((table.num_rows, 9))
    out = reranked_lists(table, scores)
    for before, after, row_scores in zip(table.to_pylist(), out.to_pylist(), scores, strict=True):
        assert np.all(np.diff(after["cand_scores"]) <= 0)
        assert after["shown"] == after["candidates"]  # LETOR: every candidate shown, in the new order
        pairs = dict(zip(before["candidates"], before["labels"], strict=True))
        assert [pairs[c] for c in after["candidates"]] == after["labels"]
        assert after["click"] == [int(label > 0) for label in after["labels"]]
        np.testing.assert_allclose(sorted(row_scores, reverse=True), after["cand_scores"], rtol=1e-6)


@pytest.mark.parametrize("kind", ["lambdamart", "mlp"])
def test_cli_train_initial_writes_a_log_directory_in_its_order(kind, tmp_path):
    src = write_letor_subsets(tmp_path / "letor")
    runner = CliRunner()
    result = runner.invoke(app, ["convert", "letor", "--src", str(src), "--out", str(tmp_path / "conv")])
    assert result.exit_code == 0, result.output
    config = tmp_path / "initial.yaml"
    config.write_text(yaml.safe_dump(quick_config(kind).model_dump(mode="json")))
    args = ["train", "initial", "--data", str(tmp_path / "conv"), "--fold", "Fold2", "--kind", kind,
            "--out", str(tmp_path / "run"), "--config", str(config)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model" / "initial.yaml").is_file()
    data = tmp_path / "run" / "data"
    assert {p.name for p in data.iterdir()} == {"items.parquet", "users.parquet", "lists"}
    test = pq.read_table(data / "lists" / "test")
    assert set(test["subset"].to_pylist()) == {"S1"}  # Fold2 tests on S1
    for row in test.to_pylist():
        assert np.all(np.diff(row["cand_scores"]) <= 0)
    result = runner.invoke(app, args[:-2] + ["--fold", "Fold9"])  # relist.cli.main prints it in two lines
    assert isinstance(result.exception, SchemaError) and "Fold1" in str(result.exception)
