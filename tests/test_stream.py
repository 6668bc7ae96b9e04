import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relist.data.padding import PAD_ID
from relist.data.schema import SchemaError
from relist.data.stream import ParquetStream

COLUMNS = ["request_id", "shown", "hist", "dense"]


def _table(start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows)
    return pa.table(
        {
            "request_id": ids,
            "shown": pa.array([[i, i + 1, i + 2] for i in ids], pa.list_(pa.int64())),  # fixed length
            "hist": pa.array([list(range(1, i % 4 + 1)) for i in ids], pa.list_(pa.int32())),  # variable
            "dense": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 2).astype(np.float32)), 2),
        }
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, object]:
    """One directory of 3 files (rows 0..149) and one file of 5 row groups (rows 0..49)."""
    root = tmp_path_factory.mktemp("logs")
    (root / "dir").mkdir()
    for i, (start, rows) in enumerate([(0, 40), (40, 70), (110, 40)]):
        pq.write_table(_table(start, rows), root / "dir" / f"part-{i}.parquet", row_group_size=16)
    pq.write_table(_table(0, 50), root / "one.parquet", row_group_size=10)
    return {"dir": (root / "dir", 150), "file": (root / "one.parquet", 50)}


@pytest.mark.parametrize("source", ["dir", "file"])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [None, 7])
def test_ranks_cover_every_row_exactly_once(shards, source, world_size, seed):
    path, total = shards[source]
    ids = [
        batch["request_id"]
        for rank in range(world_size)
        for batch in ParquetStream(path, COLUMNS, batch_size=8, rank=rank, world_size=world_size, seed=seed)
    ]
    assert sorted(np.concatenate(ids).tolist()) == list(range(total))


def test_batches_are_bounded_and_seeded_shuffling_is_reproducible(shards):
    path, total = shards["dir"]
    sizes = [len(b["request_id"]) for b in ParquetStream(path, COLUMNS, batch_size=32)]
    assert sizes == [32, 32, 32, 32, 22]  # regrouped across row groups and files; only the last is short
    order = [ParquetStream(path, ["request_id"], batch_size=32, seed=s, buffer_batches=2) for s in (1, 1, 2)]
    first, again, other = ([b["request_id"].tolist() for b in stream] for stream in order)
    assert first == again != other
    assert max(len(b) for b in first) == 32


def test_list_columns_decode_to_padded_arrays_with_masks(shards):
    path, _ = shards["dir"]
    batch = next(iter(ParquetStream(path, COLUMNS, batch_size=8)))
    ids = batch["request_id"]
    assert batch["shown"].shape == (8, 3) and batch["shown_mask"].all()
    assert (batch["shown"] == ids[:, None] + np.arange(3)).all()
    assert batch["hist"].dtype == np.int32 and batch["hist"].shape == (8, 3)
    assert (batch["hist_mask"].sum(1) == ids % 4).all()
    for row, n in zip(batch["hist"], ids % 4, strict=True):
        assert row.tolist() == list(range(1, n + 1)) + [PAD_ID] * (3 - n)
    assert batch["dense"].shape == (8, 2) and "dense_mask" not in batch
    assert (batch["dense"] == ids[:, None]).all()


def test_bad_input_is_named(shards, tmp_path):
    path, _ = shards["dir"]
    with pytest.raises(SchemaError, match="field 'clicks': missing column"):
        ParquetStream(path, ["request_id", "clicks"], batch_size=8)
    with pytest.raises(SchemaError, match="no such file"):
        ParquetStream(tmp_path / "nowhere", COLUMNS, batch_size=8)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match="bad.parquet"):
        list(ParquetStream(tmp_path / "bad.parquet", COLUMNS, batch_size=8))


@pytest.mark.parametrize("seed", [None, 3])
def test_memory_is_bounded_by_the_batch_not_the_file(tmp_path, seed):
    rows = 40_000
    table = pa.table({"shown": pa.ListArray.from_arrays(np.arange(0, rows * 10 + 1, 10, dtype=np.int32),
                                                        pa.array(np.arange(rows * 10)))})
    size = table.nbytes
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=1_000)
    del table
    baseline = peak = pa.total_allocated_bytes()
    for _ in ParquetStream(tmp_path / "big.parquet", ["shown"], batch_size=64, seed=seed, buffer_batches=4):
        peak = max(peak, pa.total_allocated_bytes())
    assert peak - baseline < size / 8
