"""Bounded-memory streaming of Parquet logs, sharded across DDP ranks.

Logs outgrow memory long before they outgrow a disk, so training never loads a table: it reads
record batches with ``ParquetFile.iter_batches`` and holds about one row group plus one batch (or
one shuffle buffer) at a time.  Each rank owns whole files, or whole row groups when there are
fewer files than ranks, so every row is read by exactly one rank and no coordination is needed.
Balanced shards (a number of equal files divisible by the world size) waste nothing: the trainer
stops all ranks when the first one runs out.

List columns come back in the one padding convention of :mod:`relist.data.padding`: a 2-D array
plus ``<name>_mask`` (True = real entry), built with whole-array operations, never per row.
Arrow ``fixed_size_list`` columns (dense feature vectors) are 2-D without a mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from relist.data.padding import PAD_ID, length_mask
from relist.data.schema import SchemaError

_Shard = tuple[str, list[int] | None]  # a file, and its row groups when files are split across ranks


class ParquetStream:
    """Iterate this rank's share of a Parquet file or directory of shards as dicts of numpy arrays.

    With ``seed`` set, the rank's shards are visited in a seeded order and rows are shuffled
    within blocks of ``buffer_batches * batch_size`` rows (memory stays bounded by that block);
    pass ``seed + epoch`` for a new order each epoch.  Without ``seed`` the order is the file order.
    """

    def __init__(
        self,
        path: str | Path,
        columns: Sequence[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
        buffer_batches: int = 8,
    ):
        if batch_size < 1 or buffer_batches < 1:
            raise ValueError(f"batch_size and buffer_batches must be >= 1: {batch_size}, {buffer_batches}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.path, self.columns, self.batch_size = Path(path), list(columns), batch_size
        self.rank, self.seed, self.buffer_batches = rank, seed, buffer_batches
        if not self.path.exists():
            raise SchemaError(self.path, None, None, "no such file or directory")
        try:
            dataset = ds.dataset(self.path, format="parquet")
            files = sorted(dataset.files)
            shards: list[_Shard] = [(file, None) for file in files]
            if len(files) < world_size:
                shards = [(file, [g]) for file in files for g in range(pq.read_metadata(file).num_row_groups)]
        except (pa.ArrowInvalid, OSError) as err:
            raise SchemaError(self.path, None, None, f"not a readable Parquet dataset ({err})") from err
        for name in self.columns:
            if name not in dataset.schema.names:
                raise SchemaError(self.path, None, name, f"missing column (has {dataset.schema.names})")
        self.shards = shards[rank::world_size]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = None if self.seed is None else np.random.default_rng([self.seed, self.rank])
        shards = self.shards if rng is None else [self.shards[i] for i in rng.permutation(len(self.shards))]
        batches = (batch for shard in shards for batch in self._read(*shard))
        block_rows = self.batch_size if rng is None else self.batch_size * self.buffer_batches
        for block in _exact(batches, block_rows):
            if rng is not None:
                block = block.take(rng.permutation(block.num_rows))
            for start in range(0, block.num_rows, self.batch_size):
                yield table_arrays(block.slice(start, self.batch_size))

    def _read(self, file: str, row_groups: list[int] | None) -> Iterator[pa.RecordBatch]:
        # iter_batches without pre-buffering holds about one row group; the dataset scanner's
        # readahead (or pre_buffer) lets memory grow with the file when the consumer is slower.
        try:
            with pq.ParquetFile(file, pre_buffer=False) as reader:
                yield from reader.iter_batches(self.batch_size, row_groups=row_groups, columns=self.columns)
        except (pa.ArrowInvalid, OSError) as err:
            raise SchemaError(file, None, None, f"unreadable Parquet data ({err})") from err


def _exact(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup record batches of any sizes into tables of exactly ``size`` rows (the last may be short)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def table_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """A table's columns as numpy arrays, list columns padded with a ``<name>_mask`` (as streams yield)."""
    out: dict[str, np.ndarray] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        array = column.combine_chunks()
        if pa.types.is_fixed_size_list(array.type):
            out[name] = _numpy(array.flatten()).reshape(len(array), array.type.list_size)
        elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            out[name], out[f"{name}_mask"] = padded_column(array)
        else:
            out[name] = _numpy(array)
    return out


def padded_column(array: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad with PAD_ID to the longest list in the batch; null lists read as empty."""
    lengths = _numpy(array.value_lengths().fill_null(0))
    values = _numpy(array.flatten())
    width = int(lengths.max(initial=0))
    if (lengths == width).all():
        return values.reshape(len(array), width), np.ones((len(array), width), dtype=bool)
    mask = length_mask(lengths, width).numpy()
    padded = np.full(mask.shape, PAD_ID, dtype=values.dtype)
    padded[mask] = values
    return padded, mask


def _numpy(array: pa.Array) -> np.ndarray:
    # A writable copy: zero-copy views are read-only, which torch.as_tensor warns about.
    return array.to_numpy(zero_copy_only=False, writable=True)
