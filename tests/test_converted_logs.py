"""`relist convert` output goes straight into `relist demo --data`, for every converter.

LETOR and Yandex logs have lists and are re-ranked end to end (small files written here in each
format); Amazon and OBD have no logged lists, and the demo says so in two lines instead of a
traceback.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from relist.cli import main
from relist.demo.pipeline import DemoSizes, run_demo

TINY = DemoSizes(requests=0, eval_requests=20, epochs=1, generator_steps=4, latency_requests=3)


def letor_file(path, queries=60, n_features=46):
    """Queries of 5..15 documents, as ragged as LETOR's, and one longer than the evaluator's 50 positions."""
    rng = np.random.default_rng(0)
    lines = []
    for q in range(queries):
        for d in range(60 if q == 3 else int(rng.integers(5, 16))):
            features = " ".join(f"{k}:{rng.random():.4f}" for k in range(1, n_features + 1))
            lines.append(f"{int(rng.integers(0, 3))} qid:{1000 + q} {features} #docid = D{q}-{d}")
    path.write_text("\n".join(lines) + "\n")
    return path


def yandex_file(path, sessions=80):
    rng = np.random.default_rng(1)
    rows = ["split\tsession\tquery\tposition\tdoc_id\tclicked\tn_clicks\tfirst_click_order\tsession_n_clicks\t"
            "session_n_clicks_outside_list"]
    for s in range(sessions):
        query = s % 6
        docs = rng.choice(np.arange(100 * query, 100 * query + 30), 10, replace=False)
        clicks = rng.random(10) < 0.25
        order = np.cumsum(clicks) * clicks
        for p in range(10):
            rows.append(f"{'train' if s < 60 else 'test'}\t{s}\tq{query}\t{p + 1}\t{docs[p]}\t{int(clicks[p])}\t"
                        f"{int(clicks[p])}\t{int(order[p])}\t{int(clicks.sum())}\t0")
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    return path


def amazon_folder(root):
    root.mkdir()
    with gzip.open(root / "item_meta.csv.gz", "wt") as f:
        f.write("item_id\ti_category\tr_complement\tr_substitute\n" + "".join(f"{i}\t{i % 3}\t[]\t[]\n"
                                                                              for i in range(1, 21)))
    with gzip.open(root / "train.csv.gz", "wt") as f:
        f.write("user_id\titem_id\ttime\n" + "".join(f"{u}\t{(u * 7 + t) % 20 + 1}\t{t}\n"
                                                     for u in range(1, 11) for t in range(4)))
    return root


def obd_file(folder):
    folder.mkdir()
    with gzip.open(folder / "all_item_context.csv.gz", "wt") as f:
        f.write(",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n"
                "0,0,0.5,a,b,c\n1,1,-0.5,a,b,d\n")
    with gzip.open(folder / "all.csv.gz", "wt") as f:
        f.write(",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
                "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1\n"
                + "".join(f"{i},2019-11-24 00:00:0{i}.5+00:00,{i % 2},{i % 3 + 1},0,0.5,u,v,w,x,0.0,1.0\n"
                          for i in range(4)))
    return folder / "all.csv.gz"


def convert(name, src, out, capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert", name, "--src", str(src), "--out", str(out)])
    assert info.value.code == 0, capsys.readouterr()
    return capsys.readouterr().out


@pytest.mark.parametrize("name, write", [("letor", letor_file), ("yandex", yandex_file)])
def test_converted_lists_go_straight_into_the_demo(name, write, tmp_path, capsys):
    src = write(tmp_path / ("S1.txt" if name == "letor" else "sessions_long.tsv.gz"))
    said = convert(name, src, tmp_path / "converted", capsys)
    assert "relist demo --data" in " ".join(said.split())
    records = run_demo(tmp_path / "demo", data=tmp_path / "converted", sizes=TINY)
    split = records["logs"]["split"]
    assert split["by"] == "time"
    # LETOR's converter writes a users table (one user per query); Yandex's sessions name users only in lists
    assert (split["users_only_in_lists"] > 0) == (name == "yandex")
    table = json.loads((tmp_path / "demo" / "rerank" / "rerank.json").read_text())
    assert {"grn", "list_retrieval", "dlcm"} <= set(table["policies"]) and not table["truth"]
    assert "offline scores" in (tmp_path / "demo" / "report" / "report.html").read_text()


@pytest.mark.parametrize("name", ["amazon", "obd"])
def test_data_without_lists_gets_a_clear_two_line_answer(name, tmp_path, capsys):
    src = amazon_folder(tmp_path / "amazon") if name == "amazon" else obd_file(tmp_path / "obd")
    said = " ".join(convert(name, src, tmp_path / "converted", capsys).split())
    assert f"{name} has no logged lists" in said
    with pytest.raises(SystemExit) as info:
        main(["demo", "--data", str(tmp_path / "converted"), "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert "no lists found" in err and "nothing to re-rank" in err
