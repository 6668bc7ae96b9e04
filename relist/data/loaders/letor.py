"""LETOR 4.0 / SVMlight files with ``qid`` (e.g. MQ2008) as §4 tables.

Mapping chosen:

* items: one item per line (query-document pair), ``item_id`` = 1, 2, ... in
  file order across all files read.  The features are query-dependent, so the
  same document under two queries is two items.  ``cate_id``, ``shop_id`` and
  ``price`` are 0 (unknown); the features are float32 columns ``f1`` ..
  ``f46``, a feature missing from a line is 0 (SVMlight's sparse convention).
* lists: one row per query.  ``request_id`` = ``user_id`` = query index (1, 2,
  ... in file order); ``candidates`` = ``shown`` = its documents in file order;
  ``cand_scores`` = 0, or the feature ``score_feature`` when one is asked for;
  ``click`` = label > 0; ``next`` = 1; ``exposed_len`` = list length; no
  ``buy`` (none in the data).  Extra columns: ``labels`` list<int8> (graded
  relevance aligned with ``candidates``), ``qid`` (LETOR's query id) and
  ``subset`` (file stem, e.g. ``S1``), from which the folds are rebuilt.
* the trailing ``#docid = ... inc = ... prob = ...`` comment is ignored: those
  are judging artefacts and must never become features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from relist.data.loaders._text import Tables, list_column, neutral_items, read_bytes
from relist.data.schema import SchemaError

N_FEATURES = 46

# LETOR's standard folds: name -> (train subsets in join order, validation subset, test subset).
FOLDS = {
    "Fold1": (("S1", "S2", "S3"), "S4", "S5"),
    "Fold2": (("S2", "S3", "S4"), "S5", "S1"),
    "Fold3": (("S3", "S4", "S5"), "S1", "S2"),
    "Fold4": (("S4", "S5", "S1"), "S2", "S3"),
    "Fold5": (("S5", "S1", "S2"), "S3", "S4"),
}


@dataclass
class LetorFold:
    """One standard fold: the shared items table and the lists of its three parts."""

    name: str
    items: pa.Table
    train: pa.Table
    vali: pa.Table
    test: pa.Table


@dataclass
class _Parsed:
    path: Path
    labels: np.ndarray  # [lines] int8
    qids: np.ndarray  # [lines] int64
    features: np.ndarray  # [lines, n_features] float32


def load_letor(
    src: str | Path | Sequence[str | Path], n_features: int = N_FEATURES, score_feature: int | None = None
) -> Tables:
    """Items and lists of one or more LETOR files (a directory means all its ``S*.txt[.gz]``, by name)."""
    if score_feature is not None and not 1 <= score_feature <= n_features:
        raise ValueError(f"score_feature must be in 1..{n_features}, got {score_feature}")
    parsed = [_parse(path, n_features) for path in _paths(src)]
    starts = _query_starts(parsed)
    labels = np.concatenate([p.labels for p in parsed])
    features = np.concatenate([p.features for p in parsed])
    n_docs, n_queries = len(labels), len(starts)
    offsets = np.append(starts, n_docs)
    item_ids = np.arange(1, n_docs + 1, dtype=np.int64)
    scores = np.zeros(n_docs, np.float32) if score_feature is None else features[:, score_feature - 1]
    candidates = list_column(item_ids, offsets, pa.int64())
    stems = np.repeat([p.path.name.split(".")[0] for p in parsed], [len(p.labels) for p in parsed])
    query_ids = np.arange(1, n_queries + 1, dtype=np.int64)
    lists = pa.table({
        "request_id": query_ids,
        "user_id": query_ids,
        "candidates": candidates,
        "cand_scores": list_column(scores, offsets, pa.float32()),
        "shown": candidates,
        "click": list_column((labels > 0).astype(np.int8), offsets, pa.int8()),
        "next": list_column(np.ones(n_docs, np.int8), offsets, pa.int8()),
        "exposed_len": np.diff(offsets).astype(np.int16),
        "labels": list_column(labels, offsets, pa.int8()),
        "qid": np.concatenate([p.qids for p in parsed])[starts],
        "subset": pa.array(stems[starts]),
    })
    items = neutral_items(item_ids, **{f"f{k + 1}": features[:, k] for k in range(n_features)})
    return Tables(items=items, lists=lists)


def load_letor_folds(root: str | Path, score_feature: int | None = None) -> list[LetorFold]:
    """The five standard folds from ``S1`` .. ``S5`` in ``root`` (train subsets joined in LETOR's order)."""
    subsets = sorted({name for train, vali, test in FOLDS.values() for name in (*train, vali, test)})
    data = load_letor([_subset_path(Path(root), name) for name in subsets], score_feature=score_feature)
    lists = data.lists

    def part(names: Sequence[str]) -> pa.Table:
        return pa.concat_tables([lists.filter(pc.equal(lists["subset"], name)) for name in names])

    return [LetorFold(name, data.items, part(train), part([vali]), part([test]))
            for name, (train, vali, test) in FOLDS.items()]


def _paths(src: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(src, str | Path):
        src = Path(src)
        if not src.is_dir():
            return [src]
        paths = sorted([*src.glob("S*.txt"), *src.glob("S*.txt.gz")])
        if not paths:
            raise SchemaError(src, None, None, "no S*.txt or S*.txt.gz files in this directory")
        return paths
    return [Path(p) for p in src]


def _subset_path(root: Path, name: str) -> Path:
    plain = root / f"{name}.txt"
    return plain if plain.is_file() else root / f"{name}.txt.gz"


def _parse(path: Path, n_features: int) -> _Parsed:
    """One pass over the lines; any bad token stops with its line number and field."""
    data = read_bytes(path)
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError as err:
        raise SchemaError(path, data[: err.start].count(b"\n") + 1, None, "not ASCII text") from err
    if not lines:
        raise SchemaError(path, None, None, "no data lines")
    labels = np.empty(len(lines), np.int8)
    qids = np.empty(len(lines), np.int64)
    features = np.zeros((len(lines), n_features), np.float32)
    for row, line in enumerate(lines):
        number = row + 1
        tokens = line.partition("#")[0].split()
        label = _number(int, tokens[0] if tokens else "", path, number, "label")
        if not 0 <= label <= 127:
            raise SchemaError(path, number, "label", f"relevance label {label} outside 0..127")
        labels[row] = label
        if len(tokens) < 2 or not tokens[1].startswith("qid:"):
            raise SchemaError(path, number, "qid", "missing 'qid:<id>' after the label")
        qids[row] = _number(int, tokens[1][4:], path, number, "qid")
        pairs = dict(token.partition(":")[::2] for token in tokens[2:])
        if len(pairs) != len(tokens) - 2:
            raise SchemaError(path, number, "features", "a feature index appears twice")
        for index, value in pairs.items():
            k = _number(int, index, path, number, f"feature index '{index}'")
            if not 1 <= k <= n_features:
                raise SchemaError(path, number, f"f{k}", f"feature index outside 1..{n_features}")
            features[row, k - 1] = _number(float, value, path, number, f"f{k}")
    return _Parsed(path, labels, qids, features)


def _number(kind: Callable[[str], float], text: str, path: Path, line: int, field: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise SchemaError(path, line, field, f"not a valid {kind.__name__}: {text!r}") from None
    if not math.isfinite(value):
        raise SchemaError(path, line, field, f"not a finite number: {text!r}")
    return value


def _query_starts(parsed: list[_Parsed]) -> np.ndarray:
    """Row where each query starts (over all files); a query must be one contiguous block in one file."""
    starts, seen, offset = [], {}, 0
    for p in parsed:
        local = np.flatnonzero(np.diff(p.qids, prepend=p.qids[:1] - 1) != 0)
        for start in local:
            qid = int(p.qids[start])
            if qid in seen:
                raise SchemaError(p.path, int(start) + 1, "qid", f"query {qid} already appeared "
                                  f"({seen[qid]}); the lines of a query must be contiguous")
            seen[qid] = f"{p.path.name} line {start + 1}"
        starts.append(local + offset)
        offset += len(p.qids)
    return np.concatenate(starts)
