"""CTR distillation in the RecBole plugin: real RecBole context-aware models, datasets with user
and item features (a slice of RecBole's shipped ml-100k), RecBole's trainer and evaluator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.recsys.recbole.conftest import ML100K, write_slice

pytest.importorskip("recbole")

LOAD_COL = {"inter": ["user_id", "item_id", "rating"],
            "user": ["user_id", "age", "gender", "occupation", "zip_code"],
            "item": ["item_id", "release_year", "class"]}


@pytest.fixture(scope="module")
def ctr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ctrtiny``: users 1-80 of ml-100k with the full .user / .item feature files."""
    root = tmp_path_factory.mktemp("ctr_data")
    write_slice(root, "ctrtiny", {str(u) for u in range(1, 81)})
    for suffix in ("user", "item"):
        src = ML100K.with_suffix(f".{suffix}")
        (root / "ctrtiny" / f"ctrtiny.{suffix}").write_bytes(src.read_bytes())
    return root


@pytest.fixture(scope="module")
def ctr_base(ctr_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ctr_out")
    return {"data_path": str(ctr_root), "load_col": LOAD_COL, "epochs": 1,
            "train_batch_size": 512, "eval_batch_size": 4096, "seed": 0,
            "checkpoint_dir": str(out / "checkpoints"), "learning_rate": 0.01,
            "state": "WARNING"}


def _setup(method: str, base: dict, **extra):
    """(config, data, model class) of a CTR method on ``ctrtiny``."""
    from recsys.recbole.ctr import ctr_method_class
    from recsys.recbole.ctr_runner import ctr_config
    from recsys.recbole.runner import build_config, prepare_data

    cls = ctr_method_class(method)
    files, cdict = ctr_config("ctrtiny", None, {**base, "distill_method": method, **extra})
    cfg = build_config(cls, "ctrtiny", config_file_list=files, config_dict=cdict)
    return cfg, prepare_data(cfg), cls


@pytest.fixture(scope="module")
def batch(ctr_base: dict):
    cfg, data, _ = _setup("none", ctr_base, student="FM")
    return next(iter(data[0]))


# ----------------------------------------------------------------------------- config / data
def test_ctr_config_is_recboles_context_setting(ctr_base: dict):
    cfg, data, _ = _setup("none", ctr_base, student="FM")
    assert cfg["metrics"] == ["AUC", "LogLoss"] and cfg["valid_metric"] == "AUC"
    assert cfg["eval_args"]["mode"] == {"valid": "labeled", "test": "labeled"}
    assert cfg["eval_args"]["order"] == "RO" and cfg["threshold"] == {"rating": 4}
    assert cfg["train_neg_sample_args"]["distribution"] == "none"  # labels, no sampling
    ds = data[0].dataset
    assert {"age", "gender", "occupation", "zip_code", "release_year", "class"} <= set(ds.fields())
    assert "rating" not in ds.fields()  # turned into the label by threshold {rating: 4}
    labels = ds.inter_feat[cfg["LABEL_FIELD"]]
    assert set(labels.unique().tolist()) == {0.0, 1.0}


def test_loss_and_logits_match_the_model(ctr_base: dict, batch):
    from recsys.recbole.ctr import loss_and_logits
    from recsys.recbole.zoo import build_recbole_model

    cfg, data, _ = _setup("none", ctr_base, student="DCN")
    model = build_recbole_model("DCN", cfg, data[0].dataset).eval()
    loss, logits = loss_and_logits(model, batch)
    assert torch.allclose(loss, model.calculate_loss(batch))  # incl. DCN's L2 term
    assert torch.allclose(logits, model(batch))
    assert "forward" not in vars(model)  # the wrapper is gone


# ----------------------------------------------------------------------------- rocket launching
def test_rocket_shares_embeddings_and_blocks_the_hint_gradient(ctr_base: dict, batch):
    from recsys.losses.ctr import logit_hint
    from recsys.recbole.ctr import restrict

    cfg, data, cls = _setup("rocket", ctr_base, student="FM", teacher="DeepFM")
    model = cls(cfg, data[0].dataset)
    assert model.student.token_embedding_table is model.booster.token_embedding_table
    assert "token_embedding_table" in model.shared
    light = model.student_logits(batch)
    boost = model.booster(restrict(batch, model.booster_fields)).reshape(-1)
    hint = logit_hint(light, boost)
    shared = {id(p) for part in model.shared
              for p in getattr(model.booster, part).parameters()}
    assert "token_seq_embedding_table" in model.shared  # the genres ("class")
    own_booster = [p for p in model.booster.parameters() if id(p) not in shared]
    assert own_booster  # DeepFM's MLP, FM part, first-order weights
    grads = torch.autograd.grad(hint, own_booster, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)  # gradient block
    emb = torch.autograd.grad(hint, list(model.booster.token_embedding_table.parameters()))
    assert any(g.abs().sum() > 0 for g in emb)  # the shared layer learns from the light side
    # the total loss: L_light + L_booster + w * hint
    terms = model.calculate_loss(batch)
    assert len(terms) == 3 and all(t.dim() == 0 for t in terms)


def test_rocket_refuses_unshareable_pairs_in_one_line(ctr_base: dict):
    cfg, data, cls = _setup("rocket", ctr_base, student="FM", teacher="DeepFM",
                            student_config={"embedding_size": 8})
    with pytest.raises(ValueError, match="cannot share their embedding layers") as exc:
        cls(cfg, data[0].dataset)
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- PFD
def test_pfd_student_never_receives_privileged_fields(ctr_base: dict, batch):
    from recsys.recbole.zoo import build_recbole_model

    priv = ["user_id", "zip_code"]
    cfg, data, cls = _setup("pfd", ctr_base, student="FM",
                            distill_params={"privileged_fields": priv})
    teacher = build_recbole_model("DeepFM", cfg, data[0].dataset)
    model = cls(cfg, data[0].dataset, teachers=[teacher])
    assert not set(priv) & set(model.student.token_field_names)  # no embedding for them
    assert set(priv) <= set(teacher.token_field_names)
    seen: list[set[str]] = []
    forward = model.student.forward
    model.student.forward = lambda inter: (seen.append(set(inter.columns)), forward(inter))[1]
    model.calculate_loss(batch)
    model.predict(batch)
    assert len(seen) == 2 and all(not set(priv) & s for s in seen)
    assert all({"age", "item_id", "class"} <= s for s in seen)


def test_pfd_unknown_privileged_field_is_one_line(ctr_base: dict):
    from recsys.recbole.zoo import build_recbole_model

    cfg, data, cls = _setup("pfd", ctr_base, student="FM",
                            distill_params={"privileged_fields": ["user_id", "salary"]})
    teacher = build_recbole_model("FM", cfg, data[0].dataset)
    with pytest.raises(ValueError, match=r"field\(s\) \['salary'\] are not fields") as exc:
        cls(cfg, data[0].dataset, teachers=[teacher])
    assert "\n" not in str(exc.value)


def test_pfd_loss_equals_formula(ctr_base: dict, batch):
    import torch.nn.functional as F

    from recsys.recbole.ctr import restrict
    from recsys.recbole.zoo import build_recbole_model

    w, temp = 0.3, 2.0
    cfg, data, cls = _setup("pfd", ctr_base, student="FM",
                            distill_params={"soft_weight": w, "temperature": temp})
    teacher = build_recbole_model("FM", cfg, data[0].dataset)
    model = cls(cfg, data[0].dataset, teachers=[teacher]).eval()
    own, soft = model.calculate_loss(batch)
    y = batch[cfg["LABEL_FIELD"]].float()
    s = model.student(restrict(batch, model.student_fields))
    t = teacher(batch)
    p = torch.sigmoid(t / temp)
    ref_soft = (-(p * torch.log(torch.sigmoid(s / temp))
                  + (1 - p) * torch.log(1 - torch.sigmoid(s / temp)))).mean() * temp ** 2
    assert torch.allclose(own, (1 - w) * F.binary_cross_entropy(torch.sigmoid(s), y), atol=1e-6)
    assert torch.allclose(soft, w * ref_soft, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in model.state_dict())  # frozen, not saved


def test_pfd_sync_soft_labels_are_detached(ctr_base: dict, batch):
    cfg, data, cls = _setup("pfd_sync", ctr_base, student="FM", teacher="FM")
    model = cls(cfg, data[0].dataset).eval()
    t_loss, own, soft = model.calculate_loss(batch)
    t_params = list(model.teacher.parameters())
    grads = torch.autograd.grad(soft + own, t_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)  # the student terms do not train the teacher
    assert any(g is not None for g in torch.autograd.grad(t_loss, t_params, allow_unused=True))
    assert "user_id" in model.teacher.token_field_names
    assert "user_id" not in model.student.token_field_names


# ----------------------------------------------------------------------------- ensemble
def test_ensemble_gate_weights_and_losses(ctr_base: dict, batch):
    from recsys.recbole.zoo import build_recbole_model

    cfg, data, cls = _setup("ensemble_kd", ctr_base, student="FM")
    ds = data[0].dataset
    teachers = [build_recbole_model(n, cfg, ds) for n in ("FM", "DeepFM", "DCN")]
    model = cls(cfg, ds, teachers=teachers).eval()
    with torch.no_grad():  # a non-uniform gate
        model.gate.linear.weight.normal_(0, 0.1)
    z, a, logits, _ = model.ensemble(batch)
    assert a.shape == (batch.length, 3)
    assert torch.allclose(a.sum(1), torch.ones(batch.length), atol=1e-6)
    assert (a > 0).all() and a.std(0).max() > 0  # per-sample weights
    assert torch.allclose(z, (a * logits).sum(1))
    assert torch.allclose(logits[:, 1], teachers[1](batch))
    gate_loss, own, soft, hint = model.calculate_loss(batch)
    student = list(model.student.parameters())
    assert all(g is None for g in torch.autograd.grad(gate_loss, student, allow_unused=True,
                                                      retain_graph=True))
    assert all(g is None for g in torch.autograd.grad(
        own + soft + hint, list(model.gate.parameters()), allow_unused=True, retain_graph=True))
    assert hint > 0 and torch.isfinite(soft)
    uni = cls(cfg, ds, teachers=teachers)
    uni.mode = "uniform"
    _, a_u, _, _ = uni.ensemble(batch)
    assert torch.allclose(a_u, torch.full_like(a_u, 1 / 3))


# ----------------------------------------------------------------------------- runner / CLI
def test_run_distillation_rocket_end_to_end(ctr_base: dict, tmp_path: Path):
    from recsys.recbole import run_distillation

    res = run_distillation(teacher="DeepFM", student="FM", method="rocket", dataset="ctrtiny",
                           config_dict=ctr_base, run_dir=tmp_path)
    assert res["method"] == "rocket" and set(res["test_result"]) == {"auc", "logloss"}
    assert 0.0 <= res["test_result"]["auc"] <= 1.0
    assert set(res["served"]) == {"booster"} and "auc" in res["served"]["booster"]
    ck = torch.load(res["checkpoint"], weights_only=True)
    assert ck["distill_method"] == "rocket"


def _auc(model, cfg, data) -> float:
    from sklearn.metrics import roc_auc_score

    scores, labels = [], []
    model.eval()
    with torch.no_grad():
        for inter in data:
            inter = inter[0] if isinstance(inter, tuple) else inter
            scores.append(model.predict(inter))
            labels.append(inter[cfg["LABEL_FIELD"]])
    return float(roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy()))


def test_pfd_student_checkpoint_reloads_without_privileged_fields(ctr_base: dict,
                                                                   tmp_path: Path):
    from recsys.recbole import run_distillation
    from recsys.recbole.ctr_runner import ctr_config, load_ctr_student
    from recsys.recbole.runner import build_config, prepare_data

    res = run_distillation(teacher="FM", student="FM", method="pfd", dataset="ctrtiny",
                           config_dict=ctr_base, run_dir=tmp_path)
    assert set(res["served"]) == {"teacher"}
    files, cdict = ctr_config("ctrtiny", None, ctr_base)
    cfg = build_config("FM", "ctrtiny", config_file_list=files, config_dict=cdict)
    train, _, test = prepare_data(cfg)
    student = load_ctr_student(res["checkpoint"], cfg, train.dataset)
    assert "user_id" not in student.token_field_names
    assert _auc(student, cfg, test) == pytest.approx(res["test_result"]["auc"], abs=1e-4)
    with pytest.raises(ValueError, match="is not a"):  # a teacher state file
        load_ctr_student(res["teacher"]["checkpoint"], cfg, train.dataset)


def test_run_distillation_ensemble_trains_teachers_and_auc_is_recboles(ctr_base: dict,
                                                                      tmp_path: Path):
    from recsys.recbole import run_distillation

    res = run_distillation(teacher="FM,WideDeep", student="FM", method="ensemble_kd",
                           dataset="ctrtiny", config_dict=ctr_base, run_dir=tmp_path)
    members = res["teacher"]["members"]
    assert res["teacher"]["model"] == "FM,WideDeep"
    assert [t["model"] for t in members] == ["FM", "WideDeep"]
    assert all(Path(t["checkpoint"]).is_file() for t in members)
    assert {"ensemble", "teacher0", "teacher1"} == set(res["served"])
    # RecBole's AUC equals an independent one (sklearn) on the teacher's own predictions
    from recsys.recbole.ctr_runner import ctr_config
    from recsys.recbole.runner import build_config, prepare_data
    from recsys.recbole.zoo import load_model

    files, cdict = ctr_config("ctrtiny", None, ctr_base)
    cfg = build_config("FM", "ctrtiny", config_file_list=files, config_dict=cdict)
    train, _, test = prepare_data(cfg)
    teacher, _ = load_model(members[0]["checkpoint"], cfg, train.dataset)
    assert res["served"]["teacher0"]["auc"] == pytest.approx(_auc(teacher, cfg, test), abs=1e-4)


@pytest.mark.parametrize(("student", "method", "teacher", "match"), [
    ("FM", "rrd", None, "does not apply to the context-aware model FM"),
    ("BPR", "rocket", None, "is a CTR method"),
    ("FM", "rocket", "BPR", "teacher BPR is not a context-aware model"),
    ("FM", "rockit", None, "does not apply"),
])
def test_model_method_mismatch_is_one_line(student, method, teacher, match, tmp_path: Path):
    from recsys.recbole import run_distillation

    with pytest.raises(ValueError, match=match) as exc:
        run_distillation(teacher=teacher, student=student, method=method, dataset="ml-100k",
                         run_dir=tmp_path)
    assert "\n" not in str(exc.value)


def test_cli_mismatch_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]):
    from recsys.cli import main

    assert main(["run", "--student", "DeepFM", "--method", "rrd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsys-distill: error: ") and "\n" not in err
    assert "CTR methods are" in err


def test_cli_lists_ctr_methods(capsys: pytest.CaptureFixture[str]):
    from recsys.cli import main

    assert main(["methods", "--kind", "ctr"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.strip().splitlines()]
    assert names == ["ensemble_kd", "none", "pfd", "pfd_sync", "rocket"]


def test_benchmark_summary_pairs_seeds_and_skips_other_protocols(tmp_path: Path):
    """benchmarks/recbole_ctr.py: paired per-seed differences from the run files; a run file
    of another protocol (fingerprint) is ignored."""
    import argparse
    import json

    from benchmarks import recbole_ctr as bench

    args = argparse.Namespace(results_dir=str(tmp_path), run_dir=str(tmp_path / "runs"))
    runs = bench.runs_dir(args)
    runs.mkdir(parents=True)

    def write(run_id: str, seed: int, auc: float, fp: str | None = None) -> None:
        entry = {"kind": "run", "id": run_id, "seed": seed,
                 "fingerprint": fp or bench.fingerprint(run_id), "served": {},
                 "test_result": {"auc": auc, "logloss": 1 - auc}, "epoch_seconds_mean": 1.0}
        (runs / f"{run_id}-s{seed}-x.json").write_text(json.dumps(entry))

    for seed, (alone, pfd) in enumerate([(0.70, 0.72), (0.74, 0.73)]):
        write("pfd-student_alone", seed, alone)
        write("pfd-offline", seed, pfd)
    write("pfd-offline", 2, 0.99, fp="another-protocol")
    rows = {r["label"]: r for r in bench.summarize(args)["rows"]}
    row = rows["student, PFD offline"]
    assert row["auc"] == [0.72, 0.73]
    assert row["auc_diff"] == pytest.approx([0.02, -0.01])
    assert row["auc_better"] == 1 and row["logloss_better"] == 1
    assert "PFD offline (+0.0050 ± 0.0212 AUC)" in bench.verdict(bench.summarize(args))


def test_benchmark_weight_grid_picks_validation_best_and_checks_defaults(tmp_path: Path):
    """benchmarks/recbole_ctr.py: a method's row uses the grid point with the best seed-0
    validation AUC (not the best test AUC) on every seed; the RecBole-defaults baseline check
    is paired with its row and kept out of the distillation verdict."""
    import argparse
    import json

    from benchmarks import recbole_ctr as bench

    args = argparse.Namespace(results_dir=str(tmp_path), run_dir=str(tmp_path / "runs"))
    runs = bench.runs_dir(args)
    runs.mkdir(parents=True)

    def write(run_id: str, seed: int, auc: float, valid: float = 0.5) -> None:
        entry = {"kind": "run", "id": run_id, "seed": seed,
                 "fingerprint": bench.fingerprint(run_id), "served": {},
                 "best_valid_score": valid, "stopped_at_cap": False,
                 "test_result": {"auc": auc, "logloss": 1 - auc}, "epoch_seconds_mean": 1.0}
        (runs / f"{run_id}-s{seed}-x.json").write_text(json.dumps(entry))

    base = "pfd-offline"
    param, default, values = bench.GRID[base]
    assert bench.grid_id(base, default) == base
    ids = [bench.grid_id(base, v) for v in values]
    assert len(set(ids)) == len(values) >= 3 and all(
        bench.RUNS[i]["params"][param] == v for i, v in zip(ids, values) if i != base)
    # the best validation point has the worst test AUC: the choice must follow validation
    best = len(values) - 2
    for n, i in enumerate(ids):
        write(i, 0, 0.71 if n == best else 0.90, 0.80 if n == best else 0.60 + 0.01 * n)
    assert bench.choices(bench.load(args)[0])[base] == ids[best]
    write(ids[best], 1, 0.75)
    write(base if ids[best] != base else ids[0], 1, 0.99)  # not chosen: ignored
    for seed, auc in enumerate([0.70, 0.74]):
        write("pfd-student_alone", seed, auc)
        write("pfd-student_alone_defaults", seed, auc - 0.01)
    summary = bench.summarize(args)
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["student, PFD offline"]["auc"] == [0.71, 0.75]
    assert rows["student, PFD offline"]["auc_diff"] == pytest.approx([0.01, 0.01])
    grid = {g["run"]: g for g in summary["grid"]}
    assert grid[base]["chosen"] == values[best] and grid["pfd-sync"]["chosen"] is None
    check = rows["student DeepFM without privileged fields, alone at RecBole's defaults"]
    assert check["auc_diff"] == pytest.approx([-0.01, -0.01]) and check["auc_better"] == 0
    assert "RecBole's defaults" not in bench.verdict(summary)
    assert "(0/2 seeds higher)" in bench.check_sentence(summary)


def test_benchmark_trains_only_the_teachers_its_runs_read():
    from benchmarks import recbole_ctr as bench

    assert bench.needed_teachers(["rocket-rocket", "pfd-offline_w0.25"]) == {"DeepFM"}
    assert bench.needed_teachers(["ensemble-best_single"]) == set(bench.ENSEMBLE)
    assert bench.needed_teachers(list(bench.RUNS)) == set(bench.TEACHERS)
