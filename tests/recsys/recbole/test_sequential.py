"""Sequential distillation with real RecBole SASRec / GRU4Rec on the 40-user ml-100k slice."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from recsys.recbole import build_config, ensure_teacher, prepare_data, run_distillation
from recsys.recbole.sequential import (
    SEQUENTIAL_METHODS,
    SequentialDistillRecommender,
    sequential_config,
)

TEACHER_CFG = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2}
STUDENT_CFG = {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 2}


@pytest.fixture(scope="session")
def seq_config(base_config: dict) -> dict:
    """Sequential data settings: timestamps loaded (leave-one-out by time), short prefixes."""
    return {**base_config, "epochs": 1, "MAX_ITEM_LIST_LENGTH": 5,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}


@pytest.fixture(scope="session")
def seq_teachers(seq_config: dict, run_dir: Path) -> dict[str, Path]:
    """A CE-trained SASRec and GRU4Rec teacher (1 epoch on ``tiny``): RecBole's CE loss with
    the default negative sampling would be refused by RecBole's Config."""
    out = {}
    for name, cfg in (("SASRec", TEACHER_CFG), ("GRU4Rec", {"embedding_size": 16,
                                                            "hidden_size": 16})):
        path, res = ensure_teacher(name, "tiny", teacher_config=cfg, config_dict=seq_config,
                                   run_dir=run_dir)
        assert res is not None and res["epochs_run"] == 1
        assert set(res["test_result"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
        out[name] = path
    return out


def _setup(method: str, seq_config: dict, teacher: Path, student: str = "SASRec",
           student_config: dict | None = None, **extra):
    from recbole.utils import init_seed

    student_config = dict(STUDENT_CFG if student_config is None else student_config)
    cfg_dict = sequential_config(student, student_config, {
        **seq_config, "student": student, "student_config": student_config,
        "teacher_checkpoint": str(teacher), **extra})
    cfg = build_config(SequentialDistillRecommender, "tiny", method=method, config_dict=cfg_dict)
    data = prepare_data(cfg)
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = SequentialDistillRecommender(cfg, data[0].dataset)
    batch = next(iter(data[0]))
    return cfg, data, model, batch


def test_ce_sampling_follows_the_loss_type():
    from recsys.recbole.runner import build_config as bc

    ce = bc("SASRec", "ml-100k", config_dict={"state": "WARNING"})
    assert ce["loss_type"] == "CE" and ce["train_neg_sample_args"]["distribution"] == "none"
    bpr = bc("SASRec", "ml-100k", config_dict={"loss_type": "BPR", "state": "WARNING"})
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"
    general = bc("BPR", "ml-100k", config_dict={"state": "WARNING"})
    assert general["train_neg_sample_args"]["distribution"] == "uniform"


@pytest.mark.parametrize("teacher", ["SASRec", "GRU4Rec"])
def test_soft_labels_are_the_teachers_full_sort_topk(teacher, seq_config, seq_teachers):
    _, _, model, inter = _setup("kd", seq_config, seq_teachers[teacher],
                                distill_params={"k": 7}, softlabel_chunk_size=13)
    model.train()
    batch = model.ctx.batch(inter, model.distill.topk)
    assert model.ctx.teacher_scorer.exact and model.ctx.student_scorer.exact
    with torch.no_grad():
        full = model.teacher.full_sort_predict(inter)
    full[:, 0] = -math.inf  # RecBole's padding item
    ref = full.topk(7, dim=1)
    assert batch.top.indices.shape == (len(inter), 7)
    assert torch.allclose(batch.top.scores, ref.values, atol=1e-5)
    # same items (ties aside: compare the scores of the chosen items too)
    assert torch.allclose(full.gather(1, batch.top.indices), ref.values, atol=1e-5)
    assert (batch.top.indices != 0).all()
    # student scores of listed items = its own full_sort_predict gathered (eval: no dropout)
    model.eval()
    with torch.no_grad():
        b2 = model.ctx.batch(inter, 7)
        mine = b2.student_scores(b2.top.indices)
        ref_s = model.student.full_sort_predict(inter).gather(1, b2.top.indices)
    assert torch.allclose(mine, ref_s, atol=1e-5)
    # the full_sort_predict path (models whose representation . item table is not their
    # score) gives the same soft labels and scores; hidden-state methods refuse it
    model.ctx.teacher_scorer.exact = model.ctx.student_scorer.exact = False
    with torch.no_grad():
        b3 = model.ctx.batch(inter, 7)
        assert b3.student_hidden is None and b3.teacher_hidden is None
        assert torch.allclose(b3.top.scores, b2.top.scores, atol=1e-5)
        assert torch.allclose(b3.student_scores(b2.top.indices), ref_s, atol=1e-5)
        assert torch.allclose(b3.teacher_scores(b2.top.indices), b2.top.scores, atol=1e-5)
    with pytest.raises(TypeError, match="SEQUENCE_ENCODERS"):
        b3.require_hidden("hidden")


def _eval_batch(model, inter, k):
    model.eval()
    return model.ctx.batch(inter, k)


def test_rd_kd_hidden_de_losses_match_formulas(seq_config, seq_teachers):
    teacher = seq_teachers["SASRec"]
    # RD (position weights before dynamic_start_epoch)
    _, _, model, inter = _setup("rd", seq_config, teacher, distill_params={"k": 5})
    with torch.no_grad():
        batch = _eval_batch(model, inter, 5)
        s = model.student.full_sort_predict(inter).gather(1, batch.top.indices)
        w = torch.softmax(-torch.arange(1, 6, dtype=torch.float32), 0)
        ref = (w * -torch.log(torch.sigmoid(s))).sum(1).mean()
        assert float(model.distill(batch)) == pytest.approx(float(ref), rel=1e-4)
    # KD on the top-K list only: tau^2 KL(softmax(t/tau) || softmax(s/tau)), mean over rows
    _, _, model, inter = _setup("kd", seq_config, teacher,
                                distill_params={"k": 6, "num_samples": 0, "tau": 2.0})
    with torch.no_grad():
        batch = _eval_batch(model, inter, 6)
        s = model.student.full_sort_predict(inter).gather(1, batch.top.indices) / 2.0
        t = model.teacher.full_sort_predict(inter).gather(1, batch.top.indices) / 2.0
        pt = torch.exp(t) / torch.exp(t).sum(1, keepdim=True)
        ps = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
        ref = 4.0 * (pt * (torch.log(pt) - torch.log(ps))).sum(1).mean()
        assert float(model.distill(batch)) == pytest.approx(float(ref), rel=1e-4)
    # hidden state: mean_b ||W h_s + c - h_t||^2 on the models' own forward()
    _, _, model, inter = _setup("hidden", seq_config, teacher)
    seq, length = inter["item_id_list"], inter["item_length"]
    with torch.no_grad():
        batch = _eval_batch(model, inter, 0)
        proj = model.distill.loss.projector
        h_s = model.student.forward(seq, length)
        h_t = model.teacher.forward(seq, length)
        ref = ((h_s @ proj.weight.T + proj.bias - h_t) ** 2).sum(1).mean()
        assert float(model.distill(batch)) == pytest.approx(float(ref), rel=1e-4)
    # DE with one expert: the selection is that expert whatever the noise
    _, _, model, inter = _setup("de", seq_config, teacher, distill_params={"num_experts": 1})
    with torch.no_grad():
        batch = _eval_batch(model, inter, 0)
        e = model.distill.loss
        h_s = model.student.forward(seq, length)
        h_t = model.teacher.forward(seq, length)
        pred = torch.relu(h_s @ e.w1[0] + e.b1[0]) @ e.w2[0] + e.b2[0]
        ref = ((pred - h_t) ** 2).sum(1).mean()
        assert float(model.distill(batch)) == pytest.approx(float(ref), rel=1e-4)


def test_rrd_matches_the_plackett_luce_formula(seq_config, seq_teachers):
    from recsys.samplers import rank_aware_sample, uniform_items

    _, _, model, inter = _setup("rrd", seq_config, seq_teachers["SASRec"],
                                distill_params={"k": 4, "l": 3, "m": 12})
    with torch.no_grad():
        batch = _eval_batch(model, inter, model.distill.topk)
        assert batch.top.k == 12
        state = model.distill.generator.get_state()
        got = float(model.distill(batch))
        g = torch.Generator().manual_seed(0)
        g.set_state(state)  # the same draws as the method
        pos = rank_aware_sample(len(inter), 12, 4, temperature=10.0, generator=g)
        inter_items = batch.top.indices.gather(1, pos)
        boring = uniform_items(torch.arange(len(inter)), model.n_items, 3,
                               exclude_topk=batch.top.indices, generator=g)
        assert not (boring.unsqueeze(2) == batch.top.indices.unsqueeze(1)).any()
        full = model.student.full_sort_predict(inter).double()
        total = 0.0
        for b in range(len(inter)):
            s = full[b, inter_items[b]].tolist()
            neg = sum(math.exp(x) for x in full[b, boring[b]].tolist())
            total += sum(math.log(sum(math.exp(x) for x in s[k:]) + neg) - s[k]
                         for k in range(4))
    assert got == pytest.approx(total / len(inter), rel=1e-4)


def test_run_distillation_sequential_end_to_end(seq_config, seq_teachers, run_dir):
    from recsys.recbole import load_student

    res = run_distillation("SASRec", "SASRec", "kd", "tiny", student_config=STUDENT_CFG,
                           teacher_checkpoint=seq_teachers["SASRec"],
                           config_dict={**seq_config, "epochs": 2,
                                        "distill_params": {"k": 5, "num_samples": 5}},
                           run_dir=run_dir)
    assert res["method"] == "kd" and res["epochs_run"] == 2
    assert [p["epoch"] for p in res["valid_curve"]] == [0, 1]
    assert res["best_valid_score"] == pytest.approx(
        max(p["score"] for p in res["valid_curve"]), abs=1e-4)
    assert res["softlabel_seconds"] > 0
    # the student of the checkpoint is a plain SASRec with the distilled weights
    cfg = build_config("SASRec", "tiny", config_dict={**seq_config, **STUDENT_CFG})
    train = prepare_data(cfg)[0]
    student = load_student(res["checkpoint"], cfg, train.dataset)
    assert type(student).__name__ == "SASRec" and student.hidden_size == 8


def test_student_alone_and_wrong_teacher_type(seq_config, seq_teachers, run_dir):
    res = run_distillation(None, "GRU4Rec", "none", "tiny", config_dict=seq_config,
                           student_config={"embedding_size": 8, "hidden_size": 8},
                           run_dir=run_dir)
    assert res["teacher"] is None and res["epochs_run"] == 1
    with pytest.raises(ValueError, match="teacher of type SEQUENTIAL"):
        run_distillation("BPR", "SASRec", "rd", "tiny", config_dict=seq_config,
                         run_dir=run_dir)
    with pytest.raises(ValueError, match="unknown sequential distillation method"):
        run_distillation("SASRec", "SASRec", "dcd", "tiny", config_dict=seq_config,
                         run_dir=run_dir)
    assert set(SEQUENTIAL_METHODS.names()) == {"none", "rd", "rrd", "kd", "hidden", "de"}


# ----------------------------------------------------------------------------- teacher cache
def _live_batch(model, inter, k):
    """The per-batch teacher path (no cache): the teacher's forward on the batch itself."""
    from recsys.recbole.sequential import sequence_output

    model.ctx.teacher_scorer.check(inter)
    with torch.no_grad():
        hidden = sequence_output(model.teacher, inter)
        return hidden, model.ctx.teacher_topk(inter, hidden, k)


def test_teacher_cache_equals_the_live_teacher(seq_config, seq_teachers):
    from recsys.recbole.sequential import ROW_ID_FIELD, sequence_output

    _, data, model, _ = _setup("kd", seq_config, seq_teachers["SASRec"],
                               distill_params={"k": 7}, softlabel_chunk_size=100)
    train = data[0].dataset
    n = len(train)
    ids = train.inter_feat[ROW_ID_FIELD]
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(n))
    model.prepare()
    cache = model.ctx.row_cache
    assert cache is not None and cache.hidden.shape == (n, 16)
    assert model.softlabel_seconds >= cache.seconds > 0
    # every row against one forward of the teacher over all rows (no row ids involved)
    with torch.no_grad():
        ref_all = sequence_output(model.teacher, train[0:n])
    assert torch.allclose(cache.hidden, ref_all, atol=1e-6, rtol=0)
    model.train()
    shuffled = False
    for i, inter in enumerate(data[0]):
        if i == 3:
            break
        bid = inter[ROW_ID_FIELD]
        shuffled |= not torch.equal(bid, bid.sort().values)
        before = cache.hits
        batch = model.ctx.batch(inter, 7)
        assert cache.hits == before + 1  # gathered from the cache, not recomputed
        hidden, top = _live_batch(model, inter, 7)
        assert torch.allclose(batch.teacher_hidden, hidden, atol=1e-6, rtol=0)
        assert torch.equal(batch.top.indices, top.indices)
        assert torch.allclose(batch.top.scores, top.scores, atol=1e-6, rtol=0)
        # the row ids matter: the cache gathered with other rows' ids is not the batch's
        wrong = cache.hidden[bid.roll(1)]
        assert not torch.allclose(wrong, hidden, atol=1e-3)
    assert shuffled and cache.misses == 0
    # rows whose ids do not match their prefixes are refused (and computed live)
    bad = inter[torch.arange(len(inter))]
    bad[ROW_ID_FIELD] = bad[ROW_ID_FIELD].roll(1)
    assert cache.gather(bad) is None and cache.misses == 1
    got = model.ctx.batch(bad, 7)
    hidden, top = _live_batch(model, bad, 7)
    assert torch.allclose(got.teacher_hidden, hidden, atol=1e-6, rtol=0)
    assert torch.equal(got.top.indices, top.indices)


def test_teacher_cache_fallbacks(seq_config, seq_teachers):
    # too large for the limit: one warning, the teacher runs per batch
    _, data, model, inter = _setup("kd", seq_config, seq_teachers["SASRec"],
                                   distill_params={"k": 5})
    model.ctx.cache_max_bytes = 1000
    with pytest.warns(UserWarning, match="teacher cache would take"):
        model.prepare()
    assert model.ctx.row_cache is None
    model.eval()
    batch = model.ctx.batch(inter, 5)
    hidden, top = _live_batch(model, inter, 5)
    assert torch.equal(batch.teacher_hidden, hidden) and torch.equal(batch.top.indices,
                                                                     top.indices)
    # no dot-product scorer: nothing cached
    _, _, model, _ = _setup("kd", seq_config, seq_teachers["GRU4Rec"], distill_params={"k": 5})
    model.ctx.teacher_scorer.exact = False
    model.prepare()
    assert model.ctx.row_cache is None


def test_row_ids_stay_out_of_the_models_and_evaluation(seq_config, seq_teachers):
    from recsys.recbole.sequential import ROW_ID_FIELD

    _, data, model, inter = _setup("rd", seq_config, seq_teachers["GRU4Rec"],
                                   student="GRU4Rec",
                                   student_config={"embedding_size": 8, "hidden_size": 8})
    train, valid, test = data
    assert ROW_ID_FIELD in inter and ROW_ID_FIELD not in train.dataset.field2type
    assert ROW_ID_FIELD not in train.dataset.fields()
    for loader in (valid, test):
        assert ROW_ID_FIELD not in loader.dataset.inter_feat
        assert ROW_ID_FIELD not in next(iter(loader))[0]
    # the student's loss is the same with and without the column
    model.eval()
    plain = inter[torch.arange(len(inter))]
    del plain[ROW_ID_FIELD]
    with torch.no_grad():
        assert float(model.student.calculate_loss(inter)) == float(
            model.student.calculate_loss(plain))
    # switched off: no column, no cache
    _, data, model, inter = _setup("rd", seq_config, seq_teachers["SASRec"],
                                   seq_teacher_cache=False)
    model.prepare()
    assert ROW_ID_FIELD not in inter and model.ctx.row_cache is None
    assert ROW_ID_FIELD not in data[0].dataset.inter_feat


def test_cached_and_live_teacher_train_the_same_student(seq_config, seq_teachers, run_dir):
    from recsys.recbole import DistillTrainer

    losses, results = {}, {}
    for flag in (True, False):
        cfg, data, model, _ = _setup("rd", seq_config, seq_teachers["SASRec"],
                                     distill_params={"k": 5}, seq_teacher_cache=flag,
                                     epochs=2)
        trainer = DistillTrainer(cfg, model)
        trainer.fit(data[0], data[1], saved=False, verbose=False)
        losses[flag] = [trainer.train_loss_dict[e] for e in range(2)]
        assert (model.ctx.row_cache is not None) == flag
        if flag:
            assert model.ctx.row_cache.hits == 2 * len(data[0])
        results[flag] = [p["score"] for p in trainer.valid_curve]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert results[True] == pytest.approx(results[False], abs=1e-5)
    # and through run_distillation (KD: top-K plus teacher scores of sampled items)
    res = {flag: run_distillation(
        "SASRec", "SASRec", "kd", "tiny", student_config=STUDENT_CFG,
        teacher_checkpoint=seq_teachers["SASRec"], saved=False, run_dir=run_dir,
        config_dict={**seq_config, "seq_teacher_cache": flag,
                     "distill_params": {"k": 5, "num_samples": 5}}) for flag in (True, False)}
    assert res[True]["best_valid_score"] == pytest.approx(res[False]["best_valid_score"],
                                                          abs=1e-5)
    assert res[True]["softlabel_seconds"] > 0 and res[False]["softlabel_seconds"] > 0
