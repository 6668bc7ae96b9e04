"""Yandex WSCD click-log sample (``sessions_long.tsv.gz``) as §4 tables.

Mapping chosen:

* items: one per distinct ``doc_id``, ``item_id`` = 1, 2, ... in increasing
  doc id order; ``cate_id``, ``shop_id``, ``price`` = 0 (web documents have
  none); extra column ``doc_id`` keeps the original id.
* lists: one row per session.  ``request_id`` = ``session``; ``user_id`` =
  query index (1, 2, ... in sorted query-id order: sessions are anonymous, the
  query is the only context); ``candidates`` = ``shown`` = the 10 documents in
  rank order (the log has no other candidates); ``cand_scores`` = 0;
  ``click`` = clicked at least once; no ``buy``.
* ``exposed_len``: with ``exposure="last_click"`` (default) the cascade
  reading: the user examined down to the last clicked position, and a session
  without any click in the list examined all 10 before leaving.  With
  ``exposure="all"`` it is 10 for every session.  ``next[j]`` = 1 where the
  user went on past position j, i.e. j + 1 < ``exposed_len`` (1-based j).
* extra columns: ``split`` (train/test), ``query`` (original id),
  ``n_clicks`` and ``first_click_order`` (list<int16>, aligned with
  ``shown``) and ``clicks_outside`` (clicks on documents not in the list, so
  none of the logged clicks is lost).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from relist.data.loaders._text import Tables, check_rows, list_column, neutral_items, read_delimited

LIST_LEN = 10

_COLUMNS = {
    "split": pa.string(),
    "session": pa.int64(),
    "query": pa.string(),
    "position": pa.int16(),
    "doc_id": pa.int64(),
    "clicked": pa.int8(),
    "n_clicks": pa.int16(),
    "first_click_order": pa.int16(),
    "session_n_clicks": pa.int32(),
    "session_n_clicks_outside_list": pa.int32(),
}


def load_yandex(path: str | Path, exposure: Literal["last_click", "all"] = "last_click") -> Tables:
    """Items and one list per session from the long (session, position) file."""
    if exposure not in ("last_click", "all"):
        raise ValueError(f"exposure must be 'last_click' or 'all', got {exposure!r}")
    raw = read_delimited(path, _COLUMNS)
    col = {name: raw[name].to_numpy(zero_copy_only=False) for name in _COLUMNS}
    n = raw.num_rows
    starts = np.flatnonzero(np.diff(col["session"], prepend=col["session"][:1] - 1) != 0)
    session_length = np.diff(np.append(starts, n))
    start_of_row = np.repeat(starts, session_length)

    def check(bad: np.ndarray, name: str, problem: str) -> None:
        check_rows(bad, path, name, problem)

    check(col["position"] != np.arange(n) - start_of_row + 1, "position",
          f"positions of a session must run 1..{LIST_LEN} in order")
    check(_at(starts, session_length != LIST_LEN, n), "session", f"a session must have {LIST_LEN} rows")
    check(_at(starts[1:], np.diff(col["session"][starts]) < 0, n), "session",
          "session ids must increase: a session's rows must be contiguous")
    for name in ("split", "query", "session_n_clicks", "session_n_clicks_outside_list"):
        check(col[name] != col[name][start_of_row], name, "differs between rows of one session")
    check((col["clicked"] != (col["n_clicks"] > 0)) | (col["n_clicks"] < 0), "clicked",
          "clicked must be 1 exactly when n_clicks > 0")
    check((col["first_click_order"] < 0) | ((col["first_click_order"] > 0) != (col["n_clicks"] > 0)),
          "first_click_order", "must be > 0 exactly for clicked documents")
    outside = col["session_n_clicks_outside_list"][starts]
    total = np.add.reduceat(col["n_clicks"].astype(np.int64), starts) + outside
    check(_at(starts, (outside < 0) | (total != col["session_n_clicks"][starts]), n), "session_n_clicks",
          "differs from the clicks on the list plus the clicks outside it")

    doc_ids, item_index = np.unique(col["doc_id"], return_inverse=True)
    _, query_index = np.unique(col["query"][starts], return_inverse=True)
    clicked = col["clicked"].reshape(-1, LIST_LEN)
    exposed = np.full(len(starts), LIST_LEN, np.int16)
    if exposure == "last_click":
        any_click = clicked.any(axis=1)
        exposed[any_click] = LIST_LEN - np.argmax(clicked[any_click, ::-1], axis=1)
    went_on = np.arange(1, LIST_LEN + 1) < exposed[:, None]
    offsets = np.arange(0, n + 1, LIST_LEN)
    shown = list_column(item_index + 1, offsets, pa.int64())
    lists = pa.table({
        "request_id": col["session"][starts],
        "user_id": query_index.astype(np.int64) + 1,
        "candidates": shown,
        "cand_scores": list_column(np.zeros(n, np.float32), offsets, pa.float32()),
        "shown": shown,
        "click": list_column(col["clicked"], offsets, pa.int8()),
        "next": list_column(went_on.astype(np.int8).ravel(), offsets, pa.int8()),
        "exposed_len": exposed,
        "split": raw["split"].take(starts),
        "query": raw["query"].take(starts),
        "n_clicks": list_column(col["n_clicks"], offsets, pa.int16()),
        "first_click_order": list_column(col["first_click_order"], offsets, pa.int16()),
        "clicks_outside": outside.astype(np.int16),
    })
    items = neutral_items(np.arange(1, len(doc_ids) + 1), doc_id=pa.array(doc_ids, pa.int64()))
    return Tables(items=items, lists=lists)


def _at(rows: np.ndarray, bad: np.ndarray, n: int) -> np.ndarray:
    """Row-level flags from flags on selected ``rows`` (to report a session-level problem at its line)."""
    flags = np.zeros(n, bool)
    flags[rows[bad]] = True
    return flags
