"""LETOR 4.0 / SVMlight files with ``qid`` (e.g. MQ2008) as §4 tables.

Mapping chosen:

* items: one item per line (query-document pair), ``item_id`` = 1, 2, ... in
  file order across all files read.  The features are query-dependent, so the
  same document under two queries is two items.  ``cate_id``, ``shop_id`` and
  ``price`` are 0 (unknown); the features are float32 columns ``f1`` ..
  ``fN``, a feature missing from a line is 0 (SVMlight's sparse convention).
  N is the highest feature index in the files read (MQ2008: 46), or the
  ``n_features`` asked for, in which case a higher index is an error.
* users: one per query, ``user_id`` = the query index, ``segment`` 0, no
  history (a query has no behaviour sequence): what the id-based models need
  to run on these lists.
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
    src: str | Path | Sequence[str | Path], n_features: int | None = None, score_feature: int | None = None
) -> Tables:
    """Items, users and lists of one or more LETOR files (a directory: all its ``S*.txt[.gz]``, by name).

    ``n_features`` None: as many feature columns as the highest index in the files.
    """
    if n_features is not None and n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    parsed = [_parse(path, n_features) for path in _paths(src)]
    width = max(p.features.shape[1] for p in parsed) if n_features is None else n_features
    parsed = [_Parsed(p.path, p.labels, p.qids, _widen(p.features, width)) for p in parsed]
    if score_feature is not None and not 1 <= score_feature <= width:
        raise ValueError(f"score_feature must be in 1..{width}, got {score_feature}")
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
    items = neutral_items(item_ids, **{f"f{k + 1}": features[:, k] for k in range(width)})
    users = pa.table({
        "user_id": query_ids,
        "segment": pa.array(np.zeros(n_queries, np.int32)),
        "hist_items": pa.array([[]] * n_queries, pa.list_(pa.int64())),
        "hist_cates": pa.array([[]] * n_queries, pa.list_(pa.int32())),
    })
    return Tables(items=items, users=users, lists=lists)


def _widen(features: np.ndarray, width: int) -> np.ndarray:
    """Zero columns for the features a file never mentions (sparse SVMlight lines)."""
    return np.pad(features, ((0, 0), (0, width - features.shape[1])))


def load_letor_folds(root: str | Path, score_feature: int | None = None,
                     n_features: int | None = None) -> list[LetorFold]:
    """The folds of a LETOR-format data set in ``root``, in either of the two published layouts:

    * ``S1`` .. ``S5`` (LETOR 4.0, e.g. MQ2008): the five standard folds of :data:`FOLDS`, train
      subsets joined in LETOR's order;
    * ``Fold*/{train,vali,test}.txt[.gz]`` (e.g. MSLR-WEB, or LETOR's own fold folders): each fold as given.
    """
    root = Path(root)
    subsets = sorted({name for train, vali, test in FOLDS.values() for name in (*train, vali, test)})
    if all(_subset_path(root, name).is_file() for name in subsets):
        data = load_letor([_subset_path(root, name) for name in subsets], n_features, score_feature)
        return [LetorFold(name, data.items, *_parts(data.lists, train, [vali], [test]))
                for name, (train, vali, test) in FOLDS.items()]
    fold_dirs = sorted((d for d in root.glob("Fold*") if d.is_dir()), key=lambda d: (len(d.name), d.name))
    if not fold_dirs:
        raise SchemaError(root, None, None, "neither S1..S5 files nor Fold*/ folders with train/vali/test files")
    folds = []
    for fold_dir in fold_dirs:
        data = load_letor([_subset_path(fold_dir, name) for name in ("train", "vali", "test")],
                          n_features, score_feature)
        folds.append(LetorFold(fold_dir.name, data.items, *_parts(data.lists, ["train"], ["vali"], ["test"])))
    return folds


def _parts(lists: pa.Table, *groups: Sequence[str]) -> list[pa.Table]:
    """The lists of each group of subsets (file stems), subsets joined in the order given."""
    return [pa.concat_tables([lists.filter(pc.equal(lists["subset"], name)) for name in names])
            for names in groups]


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


def _parse(path: Path, n_features: int | None) -> _Parsed:
    """One pass over the lines; any bad token stops with its line number and field.

    ``n_features`` None: the width is the highest index seen (every index >= 1)."""
    data = read_bytes(path)
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError as err:
        raise SchemaError(path, data[: err.start].count(b"\n") + 1, None, "not ASCII text") from err
    if not lines:
        raise SchemaError(path, None, None, "no data lines")
    labels = np.empty(len(lines), np.int8)
    qids = np.empty(len(lines), np.int64)
    width = n_features if n_features is not None else 64  # grows when a higher index shows up
    features = np.zeros((len(lines), width), np.float32)
    highest = 0
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
            if k < 1 or (n_features is not None and k > n_features):
                upper = "" if n_features is None else f"..{n_features}"
                raise SchemaError(path, number, f"f{k}", f"feature index outside 1{upper}")
            if k > features.shape[1]:
                features = np.pad(features, ((0, 0), (0, max(k, 2 * features.shape[1]) - features.shape[1])))
            features[row, k - 1] = _number(float, value, path, number, f"f{k}")
            highest = max(highest, k)
    return _Parsed(path, labels, qids, features if n_features is not None else features[:, :highest])


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
