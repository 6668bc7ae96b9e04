"""Open Bandit Dataset sample (ZOZOTOWN) as point-wise impressions.

Whole lists cannot be rebuilt from this sample: it was drawn row by row from
the full log, so the 3 items of one page view are not kept together (almost
every timestamp is unique).  The loader therefore gives no ``lists`` table,
only one row per (shown item, position).

Mapping chosen, for one log file ``<policy>/<campaign>.csv.gz`` and the
``<campaign>_item_context.csv.gz`` beside it:

* items: ``item_id`` = OBD item id + 1 (0 is padding); ``cate_id``,
  ``shop_id``, ``price`` = 0 (unknown: the item features are anonymous);
  extra columns ``item_feature_0`` (float32) and ``item_feature_1`` ..
  ``item_feature_3`` (the hashed categorical values, as strings).
* extra table ``impressions``: ``timestamp``, ``item_id`` (shifted likewise),
  ``position`` (1 = left .. 3 = right), ``click``, ``propensity`` (the logging
  policy's probability of this item at this position), ``user_feature_0`` ..
  ``user_feature_3`` (hashed strings: kept as they are so that files of both
  policies can be combined before encoding) and ``affinity`` (list<float32>,
  element j is the user's affinity to ``item_id`` j + 1).
* the unnamed first column (a pandas row index) is not read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from relist.data.loaders._text import Tables, check_rows, list_column, neutral_items, read_delimited

N_FEATURES = 4


def load_obd(path: str | Path) -> Tables:
    """Items and point-wise impressions of one OBD log file."""
    path, context_path = Path(path), _context_path(Path(path))
    context = read_delimited(context_path, {
        "item_id": pa.int64(), "item_feature_0": pa.float32(),
        **{f"item_feature_{k}": pa.string() for k in range(1, N_FEATURES)}}, delimiter=",")
    n_items = context.num_rows
    check_rows(context["item_id"].to_numpy() != np.arange(n_items), context_path, "item_id",
               "item ids must be 0, 1, ... in order (they index the affinity columns)")
    affinity_names = [f"user-item_affinity_{j}" for j in range(n_items)]
    raw = read_delimited(path, {
        "timestamp": pa.timestamp("us", tz="UTC"), "item_id": pa.int64(), "position": pa.int8(),
        "click": pa.int8(), "propensity_score": pa.float64(),
        **{f"user_feature_{k}": pa.string() for k in range(N_FEATURES)},
        **dict.fromkeys(affinity_names, pa.float32())}, delimiter=",")
    item, position, click, propensity = (raw[name].to_numpy()
                                         for name in ("item_id", "position", "click", "propensity_score"))
    check_rows((item < 0) | (item >= n_items), path, "item_id", f"item id outside 0..{n_items - 1}")
    check_rows(position < 1, path, "position", "positions start at 1")
    check_rows((click != 0) & (click != 1), path, "click", "click must be 0 or 1")
    check_rows((propensity <= 0) | (propensity > 1), path, "propensity_score", "propensity outside (0, 1]")
    affinity = np.column_stack([raw[name].to_numpy() for name in affinity_names]).ravel()
    impressions = pa.table({
        "timestamp": raw["timestamp"],
        "item_id": item + 1,
        "position": position,
        "click": click,
        "propensity": propensity,
        **{f"user_feature_{k}": raw[f"user_feature_{k}"] for k in range(N_FEATURES)},
        "affinity": list_column(affinity, np.arange(0, len(affinity) + 1, n_items), pa.float32()),
    })
    items = neutral_items(np.arange(1, n_items + 1),
                          **{name: context[name] for name in context.column_names if name != "item_id"})
    return Tables(items=items, extra={"impressions": impressions})


def _context_path(log: Path) -> Path:
    """``<policy>/<campaign>.csv.gz`` -> ``<policy>/<campaign>_item_context.csv.gz``."""
    campaign, _, suffix = log.name.partition(".")
    return log.with_name(f"{campaign}_item_context.{suffix}")
