"""A user's own logs on day one: ids from 0 (and negative), one lists.parquet, no split.

The logs are the simulator's, rewritten the way another system would write them, so that what
relist does with them can be checked against what it knows: the split it makes must be the
simulator's own time split, every id must map back to the same item, and a model version trained
on them must answer in the user's ids.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import train_roles
from fastapi.testclient import TestClient

from relist.cli import main
from relist.data.features import FeatureStore
from relist.data.ids import IdMap, RequestItems
from relist.data.logs import SPLITS, not_ready_reason, read_lists
from relist.data.split import find_sources, ready_logs_in, split_logs
from relist.demo.pipeline import DemoSizes, run_demo
from relist.serve.app import create_app
from relist.serve.registry import export_version
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world

TINY = DemoSizes(requests=2500, eval_requests=20, epochs=1, generator_steps=4, latency_requests=3)


def raw_item(internal):  # the user's item ids: from 0, as the logs had them
    return np.asarray(internal, np.int64) - 1


def raw_user(internal):  # and user ids that are negative and far apart (in the same order, so the
    return 7 * np.asarray(internal, np.int64) - 5000  # internal ids must come out as the simulator's)


def _ids(column: pa.ChunkedArray, to_raw) -> pa.Array:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = to_raw(array.flatten().to_numpy())
    return pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), pa.array(values, pa.int64()))


def rewrite_as_own_logs(sim, out):
    """The simulator's logs in the user's ids, with all lists in one file (in time order, unsplit)."""
    out.mkdir()
    items = pq.read_table(sim / "items.parquet")
    items = items.set_column(0, "item_id", pa.array(raw_item(items["item_id"].to_numpy())))
    pq.write_table(items.take(np.argsort(-items["item_id"].to_numpy())), out / "items.parquet")  # any order
    users = pq.read_table(sim / "users.parquet")
    users = users.set_column(0, "user_id", pa.array(raw_user(users["user_id"].to_numpy())))
    users = users.set_column(users.column_names.index("hist_items"), "hist_items", _ids(users["hist_items"], raw_item))
    pq.write_table(users, out / "users.parquet")
    lists = pa.concat_tables([ds.dataset(sim / "lists" / split).to_table() for split in SPLITS])
    for name in ("candidates", "shown"):
        lists = lists.set_column(lists.column_names.index(name), name, _ids(lists[name], raw_item))
    lists = lists.set_column(1, "user_id", pa.array(raw_user(lists["user_id"].to_numpy())))
    pq.write_table(lists, out / "lists.parquet")
    return out


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate_logs(build_world(load_sim_config()), out, 2500, 0.1, 0.1, progress=False)
    return out


@pytest.fixture(scope="module")
def own(sim, tmp_path_factory):
    return rewrite_as_own_logs(sim, tmp_path_factory.mktemp("own_logs") / "logs")


def test_split_is_the_simulators_time_split_and_ids_map_back(sim, own, tmp_path):
    assert not_ready_reason(own) == "no train/valid/test split under lists/"
    record = split_logs(find_sources(own), tmp_path / "ready")
    assert record["ids"] == "mapped" and record["by"] == "time" and record["users_only_in_lists"] == 0
    assert not_ready_reason(tmp_path / "ready") is None
    for split in SPLITS:  # same lists, same order, and internal ids equal the simulator's ids
        mine, theirs = read_lists(tmp_path / "ready", split), read_lists(sim, split)
        assert mine.num_rows == theirs.num_rows == record["lists"][split]
        for name in ("request_id", "user_id", "candidates", "shown", "click"):
            assert mine[name].to_pylist() == theirs[name].to_pylist(), (split, name)
    store, truth = FeatureStore.from_dir(tmp_path / "ready"), FeatureStore.from_dir(sim)
    assert np.array_equal(store.item_cate, truth.item_cate) and np.array_equal(store.user_hist, truth.user_hist)
    assert store.ids.items.raw[0] == 0 and not store.ids.is_identity and truth.ids.is_identity
    assert store.ids.items.to_internal(np.array([0, 5, -1])).tolist() == [1, 6, 0]  # -1 is no item
    assert list(store.ids.users.to_raw(np.array([1, 2]))) == list(raw_user([1, 2]))


def test_split_by_request_id_is_deterministic_and_complete(own, tmp_path):
    a = split_logs(find_sources(own), tmp_path / "a", by="request_id", valid=0.2, test=0.1)
    alone = tmp_path / "alone" / "lists.parquet"  # a lists file with no users table anywhere beside it
    alone.parent.mkdir()
    alone.write_bytes((own / "lists.parquet").read_bytes())
    b = split_logs(find_sources(alone, items=own / "items.parquet"), tmp_path / "b", by="request_id",
                   valid=0.2, test=0.1)
    assert a["lists"] == b["lists"] == {"train": 1750, "valid": 500, "test": 250}
    ids = {split: set(read_lists(tmp_path / "a", split)["request_id"].to_pylist()) for split in SPLITS}
    assert ids == {split: set(read_lists(tmp_path / "b", split)["request_id"].to_pylist()) for split in SPLITS}
    assert set.union(*ids.values()) == set(range(2500)) and len(ids["test"] & ids["train"]) == 0
    assert max(ids["test"]) > 2400 and min(ids["test"]) < 100  # not a time split
    assert b["users"] == b["users_only_in_lists"] == len(np.unique(pq.read_table(alone)["user_id"].to_numpy()))
    assert FeatureStore.from_dir(tmp_path / "b").user_hist_mask.sum() == 0  # users without a history


def test_validate_summarises_and_names_every_refused_row(own, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", str(own), "--out", str(tmp_path / "summary.json")])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "no problems found" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lists"] == 2500 and summary["items"] == pq.read_metadata(own / "items.parquet").num_rows
    assert summary["candidates_per_list"]["min"] > 10 and summary["ready_to_train"].startswith("no train")
    rates = summary["click_rate_by_position"]
    assert len(rates) == 10 and rates[0] > rates[-1] > 0  # position decay, measured on the logs

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("items.parquet", "users.parquet"):
        (bad / name).write_bytes((own / name).read_bytes())
    lists = pq.read_table(own / "lists.parquet")
    cands = lists["candidates"].to_pylist()
    cands[5][3] = 10**12  # no such item
    scores = lists["cand_scores"].to_pylist()
    scores[7][0], scores[9][1] = float("nan"), float("inf")
    lists = lists.set_column(2, "candidates", pa.array(cands, pa.list_(pa.int64())))
    lists = lists.set_column(3, "cand_scores", pa.array(scores, pa.list_(pa.float32())))
    pq.write_table(lists, bad / "lists.parquet", row_group_size=1000)
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", str(bad)])
    out = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 1 and "3 list(s) would be refused" in out
    assert "2 × field 'cand_scores': score is NaN or infinite" in out
    assert f"{bad / 'lists.parquet'}, row 5, field 'candidates': item id not in the items table" in out
    with pytest.raises(SystemExit) as info:  # training refuses the same row, naming it
        main(["data", "split", "--src", str(bad), "--out", str(tmp_path / "split")])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and "Traceback" not in err
    assert f"{bad / 'lists.parquet'}, row 7, field 'cand_scores': score is NaN or infinite" in err  # the first
    pq.write_table(lists.set_column(3, "cand_scores", pq.read_table(own / "lists.parquet")["cand_scores"]),
                   bad / "lists.parquet")
    with pytest.raises(SystemExit) as info:
        main(["data", "split", "--src", str(bad), "--out", str(tmp_path / "split")])
    err = " ".join(capsys.readouterr().err.split())
    assert "row 5, field 'candidates': item id 1000000000000 is not in the items table" in err
    assert not (tmp_path / "split").exists()  # nothing half-written


def test_demo_on_own_logs_splits_them_and_reports(own, tmp_path):
    out = tmp_path / "demo"
    records = run_demo(out, data=own, sizes=TINY)
    split = records["logs"]["split"]
    assert split["ids"] == "mapped" and split["lists"]["test"] == 250
    assert (out / "logs" / "vocabulary.parquet").is_file()
    assert "offline scores" in (out / "report" / "report.html").read_text()
    assert not {"models/dssm", "models/dssm_plain"} & set(records)  # coarse students only --with-coarse
    version = out / "model_dir" / "versions" / (out / "model_dir" / "CURRENT").read_text().strip()
    assert (version / "vocabulary.parquet").is_file()


def test_a_version_trained_on_own_logs_answers_in_the_users_ids(own, tmp_path):
    ready = ready_logs_in(own, tmp_path)
    assert ready == tmp_path / "logs.split" and ready_logs_in(own, tmp_path) == ready  # made once, reused
    models = train_roles(ready, tmp_path / "models", ("ranker", "evaluator", "generator"))
    export_version(tmp_path / "model_dir", "v1", ready, {role: models / role for role in
                                                         ("ranker", "evaluator", "generator")}, activate=True)
    assert (tmp_path / "model_dir" / "versions" / "v1" / "vocabulary.parquet").is_file()
    client = TestClient(create_app(tmp_path / "model_dir"))
    test = pq.read_table(own / "lists.parquet").slice(2400, 1).to_pylist()[0]  # a test list, user's ids
    candidates = [*test["candidates"][:29], 10**12]  # and one item the catalogue does not know
    assert 0 in pq.read_table(own / "items.parquet")["item_id"].to_pylist()  # item 0 is a real item here
    body = {"user": {"id": test["user_id"]}, "candidates": [{"id": i} for i in candidates], "n": 10}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    served = r.json()
    assert set(served["items"]) <= set(candidates) and len(served["items"]) == 10 and not served["fallback"]
    assert served["unknown_items"] == (10**12 in served["items"])
    upstream = client.post("/v1/rerank", json=body | {"strategy": "upstream"}).json()
    assert upstream["items"] == candidates[:10]  # the upstream order, back in the user's ids
    r = client.post("/v1/recommend", json={"user": {"id": test["user_id"]}, "n": 10})
    assert r.status_code == 200, r.text
    catalogue = set(pq.read_table(own / "items.parquet")["item_id"].to_pylist())
    assert set(r.json()["items"]) <= catalogue and len(r.json()["items"]) == 10
    r = client.post("/v1/rerank", json={"user": {"id": 10**15}, "candidates": [{"id": 0}, {"id": -1}]})
    assert r.status_code == 200 and sorted(r.json()["items"]) == [-1, 0], r.text  # 0: item, -1: unknown
    metrics = client.get("/metrics").text
    assert 'relist_unknown_ids_total{kind="item"} 3.0' in metrics  # one per request that named one
    assert 'relist_unknown_ids_total{kind="user"} 1.0' in metrics


def test_request_ids_round_trip_and_unknown_ones_stay_distinct():
    items = IdMap.of(np.array([40, -5, 0, 7]))
    request = RequestItems.of(items, np.array([7, 99, -5, -99]))
    assert request.internal.tolist() == [3, 5, 1, 6] and request.unknown == 2  # unknown: past the catalogue
    assert request.to_raw(items, np.array([6, 1, 3, 5])).tolist() == [-99, -5, 7, 99]
    with pytest.raises(Exception, match="repeated"):
        IdMap.of(np.array([3, 1, 3]))
    assert IdMap.of(np.array([3, 1, 2])).is_identity and not IdMap.of(np.array([0, 1])).is_identity
    assert pc.max(pa.array(items.raw)).as_py() == 40
