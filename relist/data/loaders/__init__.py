"""Readers of the real data sets in ``../shared/data`` into the DESIGN §4 tables, one module per set.

Each module's docstring states its mapping; every loader validates what it
returns and raises :class:`relist.data.schema.SchemaError` on bad input.
"""

from collections.abc import Callable
from pathlib import Path

from relist.data.loaders._text import Tables
from relist.data.loaders.amazon import AmazonCtr, load_amazon, load_amazon_ctr
from relist.data.loaders.letor import LetorFold, load_letor, load_letor_folds
from relist.data.loaders.obd import load_obd
from relist.data.loaders.yandex import load_yandex

# What `relist convert DATASET --src PATH` reads PATH with.
LOADERS: dict[str, Callable[[Path], Tables]] = {
    "letor": load_letor,
    "amazon": load_amazon,
    "yandex": load_yandex,
    "obd": load_obd,
}

__all__ = [
    "LOADERS",
    "AmazonCtr",
    "LetorFold",
    "Tables",
    "load_amazon",
    "load_amazon_ctr",
    "load_letor",
    "load_letor_folds",
    "load_obd",
    "load_yandex",
]
