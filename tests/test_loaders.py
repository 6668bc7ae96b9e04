import gzip
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from relist.cli import main
from relist.cli.commands_data import register
from relist.data.loaders import (
    load_amazon,
    load_amazon_ctr,
    load_letor,
    load_letor_folds,
    load_obd,
    load_yandex,
)
from relist.data.padding import pad_lists
from relist.data.schema import SchemaError, read_table
from relist.eval.metrics import ndcg_at_k


@pytest.fixture(scope="module")
def real_data() -> Path:
    """The folder of the public data sets: $RELIST_DATA (relative paths from the repository root)."""
    value = os.environ["RELIST_DATA"]  # tests using this are deselected when it is unset (conftest.py)
    path = Path(value) if Path(value).is_absolute() else Path(__file__).resolve().parents[1] / value
    assert path.is_dir(), f"RELIST_DATA={value}: no such folder ({path})"
    return path


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Tokens that are not finite numbers: no digits, or spelled infinities and NaN.
GARBAGE = st.one_of(st.sampled_from(["nan", "inf", "1e999", "1.2.3", "--1", "1,5"]),
                    st.text(alphabet="abcxyz%-.", min_size=1, max_size=5))


def column(table: pa.Table, name: str) -> list:
    return table[name].to_pylist()


# --- real files (run when RELIST_DATA is set, as .ci/run does) --------------------------------------

@pytest.mark.real_data
def test_letor_s1_matches_readme(real_data):
    data = load_letor(real_data / "letor_mq2008" / "S1.txt.gz")
    assert data.lists.num_rows == 157 and data.items.num_rows == 2933
    labels = np.concatenate(column(data.lists, "labels"))
    assert np.bincount(labels).tolist() == [2316, 427, 190]
    first = data.items.slice(0, 1).to_pylist()[0]
    assert first["item_id"] == 1
    assert first["f1"] == pytest.approx(0.007477) and first["f46"] == pytest.approx(0.007042)
    assert not {"inc", "prob", "docid"} & set(data.items.column_names)  # judging artefacts: never features
    assert column(data.lists, "click")[0] == [int(x > 0) for x in column(data.lists, "labels")[0]]


@pytest.mark.real_data
def test_letor_folds_reproduce_readme_file_order_ndcg(real_data):
    folds = load_letor_folds(real_data / "letor_mq2008")
    assert folds[0].items.num_rows == 15_211
    assert [f.vali["subset"][0].as_py() for f in folds] == ["S4", "S5", "S1", "S2", "S3"]
    assert column(folds[3].train, "subset")[0] == "S4"  # train subsets joined in LETOR's order
    assert sum(f.test.num_rows for f in folds) == 784
    # README: file order NDCG@1/3/5/10 = .194±.043, .280±.040, .357±.042, .466±.037 (empty queries excluded).
    for k, mean, std in [(1, 0.194, 0.043), (3, 0.280, 0.040), (5, 0.357, 0.042), (10, 0.466, 0.037)]:
        per_fold = []
        for fold in folds:
            labels, mask = pad_lists(column(fold.test, "labels"))
            per_fold.append(ndcg_at_k(labels, np.zeros(labels.shape), mask, k=k))
        assert np.mean(per_fold) == pytest.approx(mean, abs=6e-4)
        assert np.std(per_fold, ddof=1) == pytest.approx(std, abs=6e-4)


@pytest.mark.real_data
def test_amazon_ctr_valid_split(real_data):
    amazon = real_data / "amazon_grocery_5core"
    ctr = load_amazon_ctr(amazon, splits=("valid",))
    valid = ctr.splits["valid"]
    assert len(valid["label"]) == 29_362 and len(np.unique(valid["user_id"])) == 14_681
    assert valid["label"].sum() == 29_362 // 2
    assert valid["hist_items"].shape == (29_362, 20)
    mask = valid["hist_mask"]
    assert (valid["hist_items"][~mask] == 0).all() and (valid["hist_items"][mask] >= 1).all()
    assert (valid["hist_cates"][mask] >= 1).all() and (valid["cate_id"] >= 1).all()
    raw = pq.read_table(amazon / "ctr_split" / "valid.parquet").slice(0, 50).to_pylist()
    for row, record in enumerate(raw):  # most recent first: the stored (oldest first) history reversed
        assert valid["hist_items"][row][mask[row]].tolist() == record["hist_item_id"][::-1]
    assert ctr.items.num_rows == 8_713


@pytest.mark.real_data
def test_amazon_items_and_users(real_data):
    data = load_amazon(real_data / "amazon_grocery_5core")
    assert data.items.num_rows == 8_713 and data.users.num_rows == 14_681
    lengths = pc.list_value_length(data.users["hist_items"]).to_numpy()
    assert lengths.sum() == 121_892 and lengths.min() == 3 and lengths.max() == 202
    assert (pc.equal(data.items["cate_id"], 1).to_numpy().sum()) == 8_349  # i_category 0 = missing -> 1
    assert column(data.users, "hist_items")[0][0] == 6046  # user 1's latest interaction
    also_bought = pc.sum(pc.list_value_length(data.items["also_bought"])).as_py()
    assert also_bought == pytest.approx(28.5 * 8_713, rel=0.01)


@pytest.mark.real_data
def test_yandex_sessions_match_readme(real_data):
    lists = load_yandex(real_data / "yandex_wscd_click_sample" / "sessions_long.tsv.gz").lists
    assert lists.num_rows == 56_477
    train = lists.filter(pc.equal(lists["split"], "train"))
    assert train.num_rows == 35_064
    n_clicks = np.array(column(train, "n_clicks"))
    assert n_clicks.sum(axis=0).tolist() == [9742, 10251, 7417, 6989, 4298, 2980, 2643, 1819, 2039, 1726]
    assert n_clicks.sum() + pc.sum(train["clicks_outside"]).as_py() == 50_321
    assert len(np.unique(np.concatenate(column(train, "shown")))) == 995
    assert len(set(column(train, "query"))) == 20
    first = lists.slice(0, 1).to_pylist()[0]  # clicks at positions 1, 2, 4
    assert first["exposed_len"] == 4 and first["next"] == [1, 1, 1] + [0] * 7


@pytest.mark.real_data
def test_obd_random_all(real_data):
    data = load_obd(real_data / "obd_zozotown_sample" / "random" / "all.csv.gz")
    impressions = data.extra["impressions"]
    assert impressions.num_rows == 10_000 and pc.sum(impressions["click"]).as_py() == 38
    assert data.items.num_rows == 80 and set(column(impressions, "position")) == {1, 2, 3}
    assert np.allclose(impressions["propensity"].to_numpy(), 1 / 80)
    assert 1 <= pc.min(impressions["item_id"]).as_py() and pc.max(impressions["item_id"]).as_py() <= 80
    assert len(column(impressions, "affinity")[0]) == 80


@pytest.mark.real_data
def test_every_real_data_set_converts_from_the_command_line(real_data, tmp_path, capsys):
    sources = {"letor": real_data / "letor_mq2008" / "S1.txt.gz", "amazon": real_data / "amazon_grocery_5core",
               "yandex": real_data / "yandex_wscd_click_sample" / "sessions_long.tsv.gz",
               "obd": real_data / "obd_zozotown_sample" / "random" / "all.csv.gz"}
    for name, src in sources.items():
        with pytest.raises(SystemExit) as info:
            main(["convert", name, "--src", str(src), "--out", str(tmp_path / name)])
        assert info.value.code == 0, capsys.readouterr()
    assert read_table(tmp_path / "letor" / "lists.parquet", "lists").num_rows == 157
    assert read_table(tmp_path / "yandex" / "lists.parquet", "lists").num_rows == 56_477
    assert read_table(tmp_path / "amazon" / "users.parquet", "users").num_rows == 14_681


# --- error paths on small files -----------------------------------------------------------------

def letor_lines(n_queries=3, docs=4, n_features=5):
    return [f"{(q + d) % 3} qid:{100 + q} " + " ".join(f"{k}:0.{q}{d}{k}" for k in range(1, n_features + 1))
            + f" #docid = GX{q}-{d} inc = 1 prob = 0.5" for q in range(n_queries) for d in range(docs)]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def expect_error(row, field, fn, *args, **kwargs) -> SchemaError:
    """``fn(*args, **kwargs)`` must raise a SchemaError located at this row and field."""
    with pytest.raises(SchemaError) as info:
        fn(*args, **kwargs)
    assert (info.value.row, info.value.field) == (row, field), str(info.value)
    return info.value


@FUZZ
@given(line=st.integers(0, 11), slot=st.integers(0, 6), garbage=GARBAGE)
def test_letor_garbage_token_names_line_and_field(tmp_path, line, slot, garbage):
    lines = letor_lines()
    tokens = lines[line].split(" ")
    field = {0: "label", 1: "qid"}.get(slot, f"f{slot - 1}")
    tokens[slot] = {0: garbage, 1: f"qid:{garbage}"}.get(slot, f"{slot - 1}:{garbage}")
    lines[line] = " ".join(tokens)
    error = expect_error(line + 1, field, load_letor, write(tmp_path / "S1.txt", lines), n_features=5)
    assert str(tmp_path / "S1.txt") in str(error)


def test_letor_structural_errors(tmp_path):
    lines = letor_lines()

    def load(new_lines):
        return load_letor(write(tmp_path / "S1.txt", new_lines), n_features=5)

    expect_error(3, "qid", load, lines[:2] + ["1 1:0.5 2:0.1"] + lines[3:])
    expect_error(2, "f7", load, lines[:1] + [lines[1].replace(" #", " 7:0.1 #")] + lines[2:])
    expect_error(2, "features", load, lines[:1] + [lines[1].replace(" #", " 1:0.1 #")] + lines[2:])  # twice
    expect_error(11, "qid", load, lines[:6] + lines[8:] + lines[6:8])  # a query split in two blocks
    expect_error(2, "label", load, lines[:1] + [""] + lines[1:])
    expect_error(None, None, load_letor, tmp_path / "missing.txt")


def test_letor_feature_count_comes_from_the_file_or_from_features(tmp_path):
    path = write(tmp_path / "S1.txt", letor_lines(n_features=7))
    features = [name for name in load_letor(path).items.column_names if name.startswith("f")]
    assert features == [f"f{k}" for k in range(1, 8)]
    wider = load_letor(path, n_features=9).items
    assert wider.column_names[-1] == "f9" and set(column(wider, "f9")) == {0.0}
    expect_error(1, "f7", load_letor, path, n_features=6)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app, typer.Typer(), typer.Typer())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", "letor", "--src", str(path), "--out", str(out), "--features", "9"])
    assert result.exit_code == 0, result.output
    assert pq.read_schema(out / "items.parquet").names[-1] == "f9"
    result = CliRunner().invoke(app, ["convert", "yandex", "--src", str(path), "--out", str(out), "--features", "9"])
    assert result.exit_code == 2 and "only for letor" in result.output


def test_letor_fold_folders_layout(tmp_path):
    lines = letor_lines(n_queries=6)
    for fold in ("Fold1", "Fold2"):
        (tmp_path / fold).mkdir()
        for name, part in (("train", lines[:8]), ("vali", lines[8:16]), ("test", lines[16:])):
            write(tmp_path / fold / f"{name}.txt", part)
    folds = load_letor_folds(tmp_path)
    assert [f.name for f in folds] == ["Fold1", "Fold2"]
    assert all([f.train.num_rows, f.vali.num_rows, f.test.num_rows] == [2, 2, 2] for f in folds)
    expect_error(None, None, load_letor_folds, tmp_path / "Fold1")


def test_letor_queries_must_not_repeat_across_files(tmp_path):
    a = write(tmp_path / "S1.txt", letor_lines())
    b = write(tmp_path / "S2.txt", letor_lines()[8:])
    assert expect_error(1, "qid", load_letor, [a, b], n_features=5).path == str(b)


def test_truncated_gzip_names_the_line(tmp_path):
    packed = gzip.compress(("\n".join(letor_lines(n_queries=40)) + "\n").encode())
    path = tmp_path / "S1.txt.gz"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    with pytest.raises(SchemaError, match="truncated") as info:
        load_letor(path, n_features=5)
    assert info.value.path == str(path)
    assert 1 < info.value.row < 160  # the line the data breaks off in, of 160
    path.write_bytes(b"this is not gzip")
    expect_error(1, None, load_letor, path, n_features=5)


def yandex_lines(n_sessions=2):
    header = ("split\tsession\tquery\tposition\tdoc_id\tclicked\tn_clicks\tfirst_click_order\t"
              "session_n_clicks\tsession_n_clicks_outside_list")
    rows = [f"train\t{s}\tq{s % 2}\t{p}\t{100 + p + s}\t{int(p == 2)}\t{int(p == 2)}\t{int(p == 2)}\t2\t1"
            for s in range(n_sessions) for p in range(1, 11)]
    return [header, *rows]


YANDEX_NUMERIC = ["session", "position", "doc_id", "clicked", "n_clicks", "first_click_order",
                  "session_n_clicks", "session_n_clicks_outside_list"]


@FUZZ
@given(row=st.integers(1, 20), name=st.sampled_from(YANDEX_NUMERIC), garbage=GARBAGE)
def test_yandex_garbage_value_names_line_and_field(tmp_path, row, name, garbage):
    lines = yandex_lines()
    fields = lines[row].split("\t")
    fields[lines[0].split("\t").index(name)] = garbage
    lines[row] = "\t".join(fields)
    expect_error(row + 1, name, load_yandex, write(tmp_path / "s.tsv", lines))


def test_yandex_small_file_and_structural_errors(tmp_path):
    lines = yandex_lines()

    def load(new_lines):
        return load_yandex(write(tmp_path / "s.tsv", new_lines))

    lists = load(lines).lists
    assert column(lists, "exposed_len") == [2, 2] and column(lists, "clicks_outside") == [1, 1]
    expect_error(1, "doc_id", load, [lines[0].replace("doc_id", "doc")] + lines[1:])
    expect_error(5, None, load, lines[:4] + ["train\t0\tq0\t4"] + lines[5:])  # too few fields
    expect_error(6, "position", load, lines[:5] + lines[6:])  # a position missing
    expect_error(12, "session", load, lines[:-1])  # session 1 has 9 rows
    expect_error(12, "session", load, lines[:1] + lines[11:] + lines[1:11])  # ids go back
    expect_error(4, "session_n_clicks", load, lines[:3] + [lines[3].replace("\t2\t1", "\t3\t1")] + lines[4:])
    expect_error(3, "clicked", load, lines[:2] + [lines[2].replace("\t1\t1\t1\t", "\t0\t1\t1\t")] + lines[3:])


def ctr_table(n=6):
    return pa.table({
        "user_id": pa.array(np.arange(1, n + 1), pa.int32()),
        "item_id": pa.array(np.full(n, 5), pa.int32()),
        "cate_id": pa.array(np.zeros(n), pa.int32()),
        "label": pa.array(np.arange(n) % 2, pa.int8()),
        "hist_item_id": pa.array([[1, 2, 3][: i % 3 + 1] for i in range(n)], pa.list_(pa.int32())),
        "hist_cate_id": pa.array([[0, 0, 0][: i % 3 + 1] for i in range(n)], pa.list_(pa.int32())),
        "hist_len": pa.array([i % 3 + 1 for i in range(n)], pa.int16()),
        "time": pa.array(np.arange(n), pa.int64()),
    })


def amazon_root(tmp_path: Path, table: pa.Table) -> Path:
    (tmp_path / "ctr_split").mkdir(exist_ok=True)
    meta = ["item_id\ti_category\tr_complement\tr_substitute"]
    meta += [f"{i}\t{i % 2}\t[]\t[1]" for i in range(1, 9)]
    with gzip.open(tmp_path / "item_meta.csv.gz", "wt") as f:
        f.write("\n".join(meta) + "\n")
    pq.write_table(table, tmp_path / "ctr_split" / "valid.parquet")
    return tmp_path


def test_amazon_small_split(tmp_path):
    valid = load_amazon_ctr(amazon_root(tmp_path, ctr_table()), splits=("valid",)).splits["valid"]
    assert valid["hist_items"][2, :4].tolist() == [3, 2, 1, 0]
    assert valid["hist_mask"][2, :4].tolist() == [True, True, True, False]


@FUZZ
@given(
    row=st.integers(0, 5),
    case=st.sampled_from(["item_id", "user_id", "hist_item_id", "hist_len", "label"]),
)
def test_amazon_bad_value_names_row_and_field(tmp_path, row, case):
    table = ctr_table()
    values = table[case].to_pylist()
    values[row] = {"item_id": 99, "user_id": 0, "hist_item_id": [1, 0], "hist_len": 7, "label": 3}[case]
    index = table.column_names.index(case)
    table = table.set_column(index, case, pa.array(values, table.schema.field(case).type))
    field = "hist_item_id" if case == "hist_len" else case
    expect_error(row, field, load_amazon_ctr, amazon_root(tmp_path, table), splits=("valid",))


def test_amazon_corrupt_and_incomplete_files(tmp_path):
    root = amazon_root(tmp_path, ctr_table().drop_columns(["hist_len"]))
    expect_error(None, "hist_len", load_amazon_ctr, root, splits=("valid",))
    (root / "ctr_split" / "valid.parquet").write_bytes(b"PAR1 this is not parquet")
    assert "Parquet" in expect_error(None, None, load_amazon_ctr, root, splits=("valid",)).problem
    with gzip.open(root / "item_meta.csv.gz", "wt") as f:
        f.write("item_id\ti_category\tr_complement\tr_substitute\n1\t0\t[2, x]\t[]\n")
    expect_error(2, "r_complement", load_amazon_ctr, root, splits=("valid",))


def test_obd_bad_values(tmp_path):
    context = [",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3",
               "0,0,0.5,a,b,c", "1,1,-0.5,a,b,d"]
    header = (",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
              "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1")
    rows = [f"{i},2019-11-24 00:00:0{i}.5+00:00,{i % 2},{i % 3 + 1},0,0.5,u,v,w,x,0.0,1.0" for i in range(4)]
    with gzip.open(tmp_path / "all_item_context.csv.gz", "wt") as f:
        f.write("\n".join(context) + "\n")
    path = tmp_path / "all.csv.gz"

    def load(lines):
        with gzip.open(path, "wt") as f:
            f.write("\n".join(lines) + "\n")
        return load_obd(path)

    assert column(load([header, *rows]).extra["impressions"], "item_id") == [1, 2, 1, 2]
    expect_error(3, "item_id", load, [header, rows[0], rows[1].replace(",1,2,0,", ",2,2,0,"), *rows[2:]])
    expect_error(4, "propensity_score", load, [header, *rows[:2], rows[2].replace(",0.5,", ",0.0,"), rows[3]])
    expect_error(5, "timestamp", load, [header, *rows[:3], rows[3].replace("2019-11-24", "yesterday")])
    expect_error(1, "user-item_affinity_1", load, [header.replace(",user-item_affinity_1", ""),
                                             *[r.rsplit(",", 1)[0] for r in rows]])


# --- loader logic on small files (what the real-data checks above also cover, on the real sets) --------

def test_letor_folds_join_subsets_in_letor_order(tmp_path):
    for k in range(1, 6):  # five subsets of two queries each, qids distinct across files
        lines = [line.replace(f"qid:{100 + q} ", f"qid:{10 * k + q} ") for q in range(2)
                 for line in letor_lines(n_queries=2)[4 * q:4 * q + 4]]
        write(tmp_path / f"S{k}.txt", lines)
    folds = load_letor_folds(tmp_path)
    assert [f.name for f in folds] == ["Fold1", "Fold2", "Fold3", "Fold4", "Fold5"]
    assert [f.vali["subset"][0].as_py() for f in folds] == ["S4", "S5", "S1", "S2", "S3"]
    assert [f.test["subset"][0].as_py() for f in folds] == ["S5", "S1", "S2", "S3", "S4"]
    assert column(folds[3].train, "subset") == ["S4", "S4", "S5", "S5", "S1", "S1"]  # LETOR's join order
    assert folds[0].items.num_rows == 40 and sum(f.test.num_rows for f in folds) == 10
    assert column(folds[0].train, "qid")[:2] == [10, 11]


def test_letor_score_feature_fills_cand_scores(tmp_path):
    data = load_letor(write(tmp_path / "S1.txt", letor_lines()), n_features=5, score_feature=5)
    assert column(data.lists, "cand_scores")[0][:2] == pytest.approx([0.005, 0.015])
    assert column(data.lists, "click")[0] == [0, 1, 1, 0]  # labels (q + d) % 3 of query 0
    with pytest.raises(ValueError, match="score_feature"):
        load_letor(tmp_path / "S1.txt", n_features=5, score_feature=6)


def test_amazon_items_and_users_from_small_files(tmp_path):
    root = amazon_root(tmp_path, ctr_table())
    with gzip.open(root / "train.csv.gz", "wt") as f:
        f.write("user_id\titem_id\ttime\n1\t3\t10\n1\t5\t30\n2\t8\t5\n1\t2\t30\n")
    data = load_amazon(root)
    assert data.items.num_rows == 8 and column(data.items, "cate_id")[:2] == [2, 1]  # i_category + 1
    assert column(data.items, "also_viewed")[0] == [1]
    assert column(data.users, "user_id") == [1, 2]
    assert column(data.users, "hist_items")[0] == [2, 5, 3]  # most recent first; same time: later row first
    assert column(data.users, "hist_cates")[0] == [1, 2, 2]


def test_yandex_exposure_all_on_a_small_file(tmp_path):
    lists = load_yandex(write(tmp_path / "s.tsv", yandex_lines()), exposure="all").lists
    assert set(column(lists, "exposed_len")) == {10}
    assert column(lists, "next")[0] == [1] * 9 + [0]


def test_cli_convert_writes_valid_tables_and_refuses_bad_input_in_two_lines(tmp_path, capsys):
    src = write(tmp_path / "S1.txt", letor_lines())
    with pytest.raises(SystemExit) as info:
        main(["convert", "letor", "--src", str(src), "--out", str(tmp_path / "out")])
    assert info.value.code == 0
    assert read_table(tmp_path / "out" / "lists.parquet", "lists").num_rows == 3
    assert read_table(tmp_path / "out" / "items.parquet", "items").num_rows == 12
    users = read_table(tmp_path / "out" / "users.parquet", "users")  # one user per query, no history
    assert users.num_rows == 3 and column(users, "hist_items") == [[]] * 3
    assert "f5" in pq.read_schema(tmp_path / "out" / "items.parquet").names
    capsys.readouterr()
    bad = write(tmp_path / "S9.txt", ["1 2:0.5"])
    with pytest.raises(SystemExit) as info:
        main(["convert", "letor", "--src", str(bad), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert f"file {bad}, row 1, field 'qid'" in err
