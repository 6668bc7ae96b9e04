"""The user's ids and relist's: a vocabulary per kind (items, users) between the two.

Catalogues use any int64 ids (0 and negatives included); models want dense
rows. Inside relist every item and user has an internal id in 1..N, and 0 is
the padding / unknown row (relist.data.padding). A :class:`IdMap` holds the
raw id of each internal id; internal ids follow the raw ids' sorted order, so
logs whose ids already are 1..N (the simulator's) map by the identity and the
simulator's truth stays indexed by the same ids.

The mapping happens at the boundaries only: when logs are prepared
(relist.data.prepare), when a FeatureStore is built from raw tables, and when
the server reads a request and writes its answer (:class:`RequestItems`). A
prepared log directory and every model version carry the vocabulary as
``vocabulary.parquet``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from relist.data.padding import PAD_ID
from relist.data.schema import SchemaError

VOCABULARY = "vocabulary.parquet"
KINDS = ("item", "user")


@dataclass(frozen=True)
class IdMap:
    """Raw ids of one kind: ``raw[i - 1]`` is the raw id of internal id ``i`` (sorted, unique)."""

    raw: np.ndarray  # [N] int64, strictly increasing

    @classmethod
    def of(cls, raw_ids: np.ndarray, path: str | Path = "<memory>", field: str = "id") -> IdMap:
        """The map of a table's id column; a repeated id is an error naming its row."""
        raw_ids = np.asarray(raw_ids, dtype=np.int64)
        order = np.argsort(raw_ids, kind="stable")
        repeated = np.zeros(len(raw_ids), bool)
        repeated[order[1:]] = np.diff(raw_ids[order]) == 0
        if repeated.any():
            row = int(np.argmax(repeated))
            raise SchemaError(path, row, field, f"id {raw_ids[row]} repeated (each id must appear once)")
        return cls(raw_ids[order])

    @classmethod
    def union(cls, *raw_ids: np.ndarray) -> IdMap:
        """The map of every id that appears in any of the arrays (repeats allowed)."""
        return cls(np.unique(np.concatenate([np.asarray(a, np.int64).ravel() for a in raw_ids])))

    @classmethod
    def identity(cls, n: int) -> IdMap:
        return cls(np.arange(1, n + 1, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def is_identity(self) -> bool:
        n = len(self.raw)
        return n == 0 or (self.raw[0] == 1 and self.raw[-1] == n)  # sorted and unique: then it is 1..n

    def to_internal(self, raw_ids: np.ndarray) -> np.ndarray:
        """Internal ids (same shape); ids not in the map become 0, the unknown row."""
        raw_ids = np.asarray(raw_ids, dtype=np.int64)
        if self.is_identity:
            return np.where((raw_ids >= 1) & (raw_ids <= len(self.raw)), raw_ids, PAD_ID)
        index = np.searchsorted(self.raw, raw_ids)
        found = index < len(self.raw)
        found[found] = self.raw[index[found]] == raw_ids[found]
        return np.where(found, index + 1, PAD_ID).astype(np.int64)

    def known(self, raw_ids: np.ndarray) -> np.ndarray:
        return self.to_internal(raw_ids) != PAD_ID

    def to_raw(self, internal_ids: np.ndarray) -> np.ndarray:
        """Raw ids of internal ids in 1..N (anything else is a programming error)."""
        internal_ids = np.asarray(internal_ids, dtype=np.int64)
        if internal_ids.size and (internal_ids.min() < 1 or internal_ids.max() > len(self.raw)):
            raise ValueError(f"internal ids must be in 1..{len(self.raw)}")
        return self.raw[internal_ids - 1]

    def digest(self) -> str:
        return hashlib.sha256(self.raw.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class IdVocabulary:
    """The item and user maps of one catalogue."""

    items: IdMap
    users: IdMap

    @classmethod
    def identity(cls, n_items: int, n_users: int) -> IdVocabulary:
        return cls(IdMap.identity(n_items), IdMap.identity(n_users))

    @property
    def is_identity(self) -> bool:
        return self.items.is_identity and self.users.is_identity

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / VOCABULARY
        maps = {"item": self.items, "user": self.users}
        table = pa.table({
            "kind": pa.array(np.repeat(list(maps), [len(m) for m in maps.values()])),
            "internal_id": pa.array(np.concatenate([np.arange(1, len(m) + 1) for m in maps.values()]), pa.int64()),
            "raw_id": pa.array(np.concatenate([m.raw for m in maps.values()]), pa.int64()),
        })
        pq.write_table(table, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> IdVocabulary:
        """The saved vocabulary of a prepared log directory or model version."""
        path = Path(directory) / VOCABULARY
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise SchemaError(path, None, None, f"not a readable vocabulary ({err})") from err
        for name in ("kind", "internal_id", "raw_id"):
            if name not in table.column_names:
                raise SchemaError(path, None, name, f"missing column (has {table.column_names})")
        kind = np.asarray(table["kind"].to_pylist())
        internal, raw = table["internal_id"].to_numpy(), table["raw_id"].to_numpy()
        maps = {}
        for name in KINDS:
            rows = np.flatnonzero(kind == name)
            order = rows[np.argsort(internal[rows], kind="stable")]
            if (internal[order] != np.arange(1, len(order) + 1)).any():
                raise SchemaError(path, int(order[0]) if len(order) else None, "internal_id",
                                  f"internal {name} ids must be 1..{len(order)}")
            if (np.diff(raw[order]) <= 0).any():
                raise SchemaError(path, None, "raw_id", f"raw {name} ids must be unique and in increasing order")
            maps[name] = IdMap(raw[order].astype(np.int64))
        return cls(maps["item"], maps["user"])


@dataclass(frozen=True)
class RequestItems:
    """One request's candidates in internal ids, and the way back to the raw ids for the answer.

    Unknown candidates stay distinct: the k-th one gets internal id N + 1 + k, outside the catalogue, so
    every model reads the shared unknown row 0 for it (as for any id the store does not know) and the
    served list can still name it.
    """

    internal: np.ndarray  # [m]
    unknown_raw: np.ndarray  # raw ids of the unknown candidates, in request order
    n_items: int

    @classmethod
    def of(cls, items: IdMap, raw_ids: np.ndarray) -> RequestItems:
        raw_ids = np.asarray(raw_ids, dtype=np.int64)
        internal = items.to_internal(raw_ids)
        unknown = internal == PAD_ID
        internal[unknown] = len(items) + 1 + np.arange(int(unknown.sum()))
        return cls(internal, raw_ids[unknown], len(items))

    @property
    def unknown(self) -> int:
        return len(self.unknown_raw)

    def to_raw(self, items: IdMap, internal_ids: np.ndarray) -> np.ndarray:
        """Raw ids of a served list (catalogue items and this request's unknown candidates)."""
        internal_ids = np.asarray(internal_ids, dtype=np.int64)
        known = internal_ids <= self.n_items
        out = np.empty(len(internal_ids), np.int64)
        out[known] = items.to_raw(internal_ids[known])
        out[~known] = self.unknown_raw[internal_ids[~known] - self.n_items - 1]
        return out


@dataclass(frozen=True)
class RequestUser:
    """The user part of a request in internal ids (relist.serve.pipeline.UserLike)."""

    id: int | None
    segment: int | None
    history: list[int] | None
    known: bool

    @classmethod
    def of(cls, vocabulary: IdVocabulary, user) -> RequestUser:
        """``user`` has raw ``id`` and ``history`` (any may be None); unknown history items are dropped."""
        if user is None:
            return cls(None, None, None, False)
        user_id = None if user.id is None else int(vocabulary.users.to_internal(np.array([user.id]))[0])
        history = None
        if user.history is not None:
            internal = vocabulary.items.to_internal(np.asarray(user.history, np.int64))
            history = internal[internal != PAD_ID].tolist()
        return cls(user_id, user.segment, history, bool(user_id))
