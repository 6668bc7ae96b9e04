"""Ranking models: each DSSM switch does what it claims, distillation and sync variants, serving forms."""

import numpy as np
import pytest
import torch

from relist.data.logs import logged_requests
from relist.data.requests import Requests
from relist.models.ranking import (
    DSSM,
    CoarseScorer,
    FineRankTeacher,
    StudentConfig,
    SyncDistill,
    TeacherConfig,
)
from relist.models.ranking.layers import Bilinear, NovaAttention, SENet, TargetAttention, masked_softmax_pool
from relist.models.ranking.losses import distill_loss, hard_loss, sync_distill_loss
from relist.models.ranking.samples import iterate_batches, load_ranking_data
from relist.models.ranking.scoring import point_scores, predict_logits, request_inputs
from relist.sim.config import load_sim_config
from relist.sim.logs import simulate_logs
from relist.sim.world import build_world

DIM = 4
TINY = StudentConfig(vector_dim=8, tower_hidden=(8,), head_hidden=(8,))


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate_logs(build_world(load_sim_config(None)), out, 600)
    return out


@pytest.fixture(scope="module")
def data(sim_dir):
    return load_ranking_data(sim_dir)


@pytest.fixture
def batch(data):
    torch.manual_seed(0)
    return {k: torch.as_tensor(v) for k, v in next(iterate_batches(data.splits["train"], 32)).items()}


def _student(data, **switches):
    torch.manual_seed(0)
    return DSSM(data.vocab, DIM, TINY.model_copy(update=switches))


def test_samples_are_the_exposed_positions_of_logged_lists(sim_dir, data):
    from relist.data.logs import read_lists

    table = read_lists(sim_dir, "valid")
    exposed = table.column("exposed_len").to_numpy()
    samples = data.splits["valid"]
    assert len(samples["item"]) == exposed.sum()
    assert (samples["position"] < np.repeat(exposed, exposed)).all()
    assert samples["click"].sum() == sum(
        sum(c[:e]) for c, e in zip(table.column("click").to_pylist(), exposed, strict=True)
    )


def test_dot_head_is_an_inner_product_and_mlp_head_is_not(data, batch):
    for head, exact in (("dot", True), ("mlp", False)):
        model = _student(data, head=head)
        users, items = model.user_vectors(batch), model.item_vectors(batch)
        dot = (users * items).sum(-1) + (model.head.bias if head == "dot" else 0)
        assert torch.allclose(model(batch)["ctr"], dot, atol=1e-6) == exact


def test_fm_cross_adds_the_mean_behaviour_target_product(data, batch):
    plain, fm = _student(data), _student(data, fm_cross=True)
    fm.load_state_dict(plain.state_dict())  # same towers, same tables: only the FM term differs
    emb = fm.embeddings
    history = torch.cat(emb.behaviours(batch), -1)
    mask = batch["hist_mask"].unsqueeze(-1)
    fm_term = ((history * mask).sum(1) / mask.sum(1).clamp_min(1) * emb.target_key(batch)).sum(-1)
    assert fm.item_vectors(batch).shape[-1] == plain.item_vectors(batch).shape[-1] + 2 * DIM
    assert torch.allclose(fm(batch)["ctr"], plain(batch)["ctr"] + fm_term, atol=1e-5)


def test_nova_side_information_steers_attention_but_never_enters_the_values():
    torch.manual_seed(0)
    nova = NovaAttention(DIM)
    mask = torch.ones(2, 5, dtype=torch.bool)
    same_item = torch.randn(1, 1, DIM).expand(2, 5, DIM)
    side = torch.randn(2, 5, DIM)
    pooled = nova(same_item, side, mask)
    assert torch.allclose(pooled[0], pooled[1], atol=1e-6)  # sides differ, the values do not
    items = torch.randn(1, 5, DIM).expand(2, 5, DIM)
    pooled = nova(items, side, mask)
    assert not torch.allclose(pooled[0], pooled[1], atol=1e-4)  # ... but they move the weights


def test_target_attention_is_the_din_unit_over_query_history_difference_and_product():
    torch.manual_seed(0)
    unit = TargetAttention(DIM, 8)
    target, history = torch.randn(3, DIM), torch.randn(3, 5, DIM)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 4 + [False]])
    query = target.unsqueeze(-2).expand_as(history)
    scores = unit.score(torch.cat([query, history, query - history, query * history], -1)).squeeze(-1)
    assert torch.allclose(unit(target, history, mask), masked_softmax_pool(scores, history, mask), atol=1e-6)


def test_nova_ignores_padded_behaviours():
    torch.manual_seed(0)
    nova = NovaAttention(DIM)
    items, side = torch.randn(1, 6, DIM), torch.randn(1, 6, DIM)
    mask = torch.tensor([[True, True, True, False, False, False]])
    junk = items.clone()
    junk[:, 3:] = 100.0
    assert torch.allclose(nova(items, side, mask), nova(junk, side, mask), atol=1e-6)


def test_senet_bilinear_item_tower_crosses_fields(data, batch):
    torch.manual_seed(0)
    fields = torch.randn(3, 4, DIM)
    bilinear = Bilinear(4, DIM)
    pairs = bilinear(fields)
    assert pairs.shape == (3, 6, DIM)
    assert torch.allclose(pairs[:, 0], bilinear.weight(fields[:, 0]) * fields[:, 1])
    senet = SENet(4, 2)
    weights = senet(fields) / fields
    assert torch.allclose(weights, weights[..., :1].expand_as(weights), atol=1e-5)  # one weight per field
    model = _student(data, item_interaction="senet_bilinear")
    assert hasattr(model.item_tower, "senet") and not hasattr(_student(data).item_tower, "senet")


def test_distillation_stage_one_uses_no_hard_labels(batch):
    logits = {"ctr": torch.randn(32, requires_grad=True)}
    soft = batch | {"teacher_ctr": torch.randn(32)}
    flipped = soft | {"click": 1 - soft["click"]}
    stage1, stage2 = distill_loss(1), distill_loss(2, soft_weight=0.5)
    assert torch.equal(stage1(logits, soft)["loss"], stage1(logits, flipped)["loss"])
    assert not torch.equal(stage2(logits, soft)["loss"], stage2(logits, flipped)["loss"])
    assert set(stage1(logits, soft)) == {"loss", "soft"}
    assert {"soft", "hard"} <= set(stage2(logits, soft))


def test_soft_loss_is_smallest_at_the_teacher(batch):
    teacher = torch.randn(32)
    at_teacher = distill_loss(1)({"ctr": teacher}, batch | {"teacher_ctr": teacher})["loss"]
    elsewhere = distill_loss(1)({"ctr": teacher + 0.5}, batch | {"teacher_ctr": teacher})["loss"]
    assert at_teacher < elsewhere


def test_sync_student_never_updates_the_shared_embeddings(data, batch):
    torch.manual_seed(0)
    model = SyncDistill(data.vocab, DIM, TeacherConfig(hidden=(8,), attention_hidden=4), TINY)
    assert model.student.embeddings is model.teacher.embeddings
    outputs = model(batch)
    terms = sync_distill_loss(("ctr", "next"))(outputs, batch)
    (terms["soft"] + terms["hard"]).backward()  # the student's terms only
    assert all(p.grad is None for p in model.teacher.embeddings.parameters())
    assert model.student.item_tower.mlp[0].weight.grad.abs().sum() > 0
    assert all(
        p.grad is None for name, p in model.teacher.named_parameters() if not name.startswith("embeddings")
    )
    before = model.student.item_vectors(batch).detach()
    optimizer = torch.optim.SGD(model.teacher.embeddings.parameters(), lr=1.0)
    optimizer.step()  # no gradient reached the tables: the frozen-for-the-student item side cannot move
    assert torch.equal(model.student.item_vectors(batch), before)
    model.zero_grad()
    terms["teacher"].backward()
    assert model.teacher.embeddings.item.weight.grad.abs().sum() > 0


def test_teacher_has_one_head_per_task_and_losses_skip_missing_labels(data, batch):
    torch.manual_seed(0)
    teacher = FineRankTeacher(data.vocab, DIM, TeacherConfig(tasks=("ctr", "next", "buy"), hidden=(8,)))
    outputs = teacher(batch)
    assert set(outputs) == {"ctr", "next", "buy"} and outputs["ctr"].shape == (32,)
    assert set(hard_loss(("ctr", "next", "buy"))(outputs, batch)) == {"loss", "ctr", "next", "buy"}
    no_buy = {k: v for k, v in batch.items() if k != "buy"}
    assert set(hard_loss(("ctr", "next", "buy"))(outputs, no_buy)) == {"loss", "ctr", "next"}


def test_point_scores_are_probabilities_of_each_candidate(sim_dir, data):
    torch.manual_seed(0)
    teacher = FineRankTeacher(data.vocab, DIM, TeacherConfig(hidden=(8,)))
    requests, _ = logged_requests(sim_dir, "test", 5)
    requests.mask[:, -3:] = False
    scores = point_scores(teacher, data.store, requests)
    chunked = point_scores(teacher, data.store, requests, max_pairs=60)  # 1 request per chunk
    assert all(np.allclose(scores[k], chunked[k], atol=1e-6) for k in scores)
    assert set(scores) == {"ctr", "next"} and scores["ctr"].shape == requests.candidates.shape
    assert ((scores["ctr"] > 0) & (scores["ctr"] < 1))[requests.mask].all()
    assert (scores["next"][~requests.mask] == 0).all()
    pairs = request_inputs(data.store, requests[:1])  # one row per candidate, ranked among its request's
    expected = torch.sigmoid(teacher(pairs)["ctr"]).detach().numpy()[:4]
    assert np.allclose(scores["ctr"][0, :4], expected, atol=1e-6)
    with pytest.raises(ValueError, match="next"):
        point_scores(_student(data), data.store, requests)


def test_coarse_scorer_matches_the_model_on_the_same_pairs(sim_dir, data):
    model = _student(
        data, head="mlp", fm_cross=True, user_attention="nova", item_interaction="senet_bilinear"
    )
    scorer = CoarseScorer(model, data.store)
    assert scorer.item_matrix.shape == (data.store.n_items + 1, 8 + 2 * DIM)
    candidates = np.arange(1, data.store.n_items + 1)
    user = int(data.splits["test"]["user"][0])
    fast = scorer.score(user, candidates)
    pairs = request_inputs(data.store, Requests.from_arrays([0], [user], candidates[None, :],
                                                            np.full((1, len(candidates)), np.nan)))
    with torch.no_grad():
        assert np.allclose(fast, model(pairs)["ctr"].numpy(), atol=1e-5)


def test_amazon_ctr_split_becomes_ranking_samples(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(tmp_path / "item_meta.csv.gz", "wt") as f:
        f.write("item_id\ti_category\tr_complement\tr_substitute\n")
        f.writelines(f"{i}\t{i % 3}\t[]\t[]\n" for i in range(1, 9))
    (tmp_path / "ctr_split").mkdir()
    table = pa.table(
        {
            "user_id": pa.array([1, 1, 2], pa.int32()),
            "item_id": pa.array([5, 6, 7], pa.int32()),
            "cate_id": pa.array([2, 0, 1], pa.int32()),
            "label": pa.array([1, 0, 1], pa.int8()),
            "hist_item_id": pa.array([[3], [3], [4, 5]], pa.list_(pa.int32())),
            "hist_cate_id": pa.array([[0], [0], [1, 2]], pa.list_(pa.int32())),
            "hist_len": pa.array([1, 1, 2], pa.int16()),
            "time": pa.array([1, 1, 2], pa.int64()),
        }
    )
    for split in ("train", "valid", "test"):
        pq.write_table(table, tmp_path / "ctr_split" / f"{split}.parquet")
    data = load_ranking_data(tmp_path)
    samples = data.splits["train"]
    assert data.vocab.n_items == 9 and data.vocab.n_cates == 4 and data.store is None
    assert samples["hist"].shape[1] == 20 and samples["hist"][2, :3].tolist() == [
        5,
        4,
        0,
    ]  # most recent first
    assert samples["cate"].tolist() == [3, 1, 2] and samples["click"].tolist() == [1, 0, 1]
    torch.manual_seed(0)
    logits = predict_logits(DSSM(data.vocab, DIM, TINY), samples)["ctr"]
    assert logits.shape == (3,) and np.isfinite(logits).all()


def test_predict_logits_is_batch_size_independent(data):
    model = _student(data, user_attention="nova")
    a = predict_logits(model, data.splits["valid"], batch_size=7)["ctr"]
    b = predict_logits(model, data.splits["valid"], batch_size=4096)["ctr"]
    assert np.allclose(a, b, atol=1e-5)
