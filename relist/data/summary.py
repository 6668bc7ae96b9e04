"""What a log directory holds and what relist would refuse in it: ``relist data validate``.

The first command a user runs on their data. It reads the same sources as
relist.data.split (any layout, any ids), streams the lists once and, instead of
stopping at the first problem as training does, counts every row each check of
relist.data.schema would refuse, with the first rows by file, row and field.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from relist.data.ids import IdMap
from relist.data.logs import not_ready_reason
from relist.data.schema import SchemaError, list_problems, read_table
from relist.data.split import BATCH_ROWS, find_sources
from relist.data.stream import padded_column

MAX_POSITIONS = 20  # click rates reported for the first positions
REQUIRED = ["request_id", "user_id", "candidates", "cand_scores", "shown", "click", "next", "exposed_len"]


def summarize_logs(src: str | Path, items: str | Path | None = None, users: str | Path | None = None,
                   examples: int = 20) -> dict:
    """Rows, users, items, list lengths, exposure, click rate per position, and the refused rows."""
    sources = find_sources(src, items, users)
    problems: list[dict] = []
    counts: dict[tuple[str, str], int] = defaultdict(int)

    def refuse(err: SchemaError, rows: int = 1) -> None:
        counts[(err.field or "", err.problem)] += rows
        if len(problems) < examples:
            problems.append({"file": err.path, "row": err.row, "field": err.field, "problem": err.problem})

    item_map = None
    try:
        item_table = read_table(sources.items, "items")
        item_map = IdMap.of(item_table["item_id"].to_numpy(), sources.items, "item_id")
    except SchemaError as err:
        refuse(err)
    n_users_table = None
    if sources.users is not None:
        try:
            n_users_table = read_table(sources.users, "users").num_rows
        except SchemaError as err:
            refuse(err)
    stats = _ListStats()
    refused = 0
    for file in sources.lists:
        try:
            reader = pq.ParquetFile(file, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as err:
            refuse(SchemaError(file, None, None, f"not a readable Parquet file ({err})"))
            continue
        missing = [name for name in REQUIRED if name not in reader.schema_arrow.names]
        if missing:
            refuse(SchemaError(file, None, missing[0], f"missing column (has {reader.schema_arrow.names})"),
                   reader.metadata.num_rows)
            refused += reader.metadata.num_rows
            continue
        row0 = 0
        with reader:
            for batch in reader.iter_batches(BATCH_ROWS):
                table = pa.Table.from_batches([batch])
                bad_rows = np.zeros(table.num_rows, bool)
                for field, problem, bad in list_problems(table, None if item_map is None else item_map.known):
                    if bad.any():
                        refuse(SchemaError(file, row0 + int(np.argmax(bad)), field, problem), int(bad.sum()))
                        bad_rows |= bad
                refused += int(bad_rows.sum())
                stats.add(table.filter(pa.array(~bad_rows)))
                row0 += table.num_rows
    summary = {
        "source": {"lists": [str(p) for p in sources.lists], "items": str(sources.items),
                   "users": None if sources.users is None else str(sources.users),
                   "split": "given (train/valid/test)" if sources.given else "none (relist splits it)"},
        "lists": stats.rows + refused,
        "items": None if item_map is None else len(item_map),
        "users_in_users_table": n_users_table,
        "ids": None if item_map is None else ("1..N (used as they are)" if item_map.is_identity
                                              else "mapped to 1..N (vocabulary saved with the models)"),
        **stats.summary(),
        "refused_lists": refused,
        "problems": [{"field": f, "problem": p, "lists": n} for (f, p), n in counts.items()],
        "examples": problems,
    }
    if Path(src).is_dir():
        summary["ready_to_train"] = not_ready_reason(src) or "yes"
    return summary


class _ListStats:
    """Running totals over accepted lists."""

    def __init__(self) -> None:
        self.rows = 0
        self.users: list[np.ndarray] = []
        self.m: list[np.ndarray] = []
        self.n: list[np.ndarray] = []
        self.exposed: list[np.ndarray] = []
        self.clicks = np.zeros(MAX_POSITIONS)
        self.seen = np.zeros(MAX_POSITIONS)

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.rows += table.num_rows
        self.users.append(np.unique(table["user_id"].to_numpy()))
        self.m.append(np.diff(table["candidates"].combine_chunks().offsets.to_numpy()))
        n = np.diff(table["shown"].combine_chunks().offsets.to_numpy())
        self.n.append(n)
        exposed = table["exposed_len"].to_numpy().astype(np.int64)
        self.exposed.append(exposed)
        click, mask = padded_column(table["click"].combine_chunks())
        width = min(click.shape[1], MAX_POSITIONS)
        seen = (np.arange(width)[None, :] < exposed[:, None]) & mask[:, :width]
        self.clicks[:width] += (click[:, :width] * seen).sum(0)
        self.seen[:width] += seen.sum(0)

    def summary(self) -> dict:
        if not self.rows:
            return {"users": 0}
        m, n, exposed = (np.concatenate(x) for x in (self.m, self.n, self.exposed))
        positions = int((self.seen > 0).sum())
        return {
            "users": int(len(np.unique(np.concatenate(self.users)))),
            "candidates_per_list": _spread(m),
            "shown_per_list": _spread(n),
            "exposure": {"mean_exposed_len": float(exposed.mean()),
                         "share_fully_exposed": float((exposed == n).mean()),
                         "share_unexposed": float((exposed == 0).mean())},
            "click_rate_by_position": [round(float(c / s), 4) for c, s in
                                       zip(self.clicks[:positions], self.seen[:positions], strict=True)],
        }


def _spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
