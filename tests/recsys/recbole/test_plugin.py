"""The plugin inside RecBole's real pipeline (Config -> create_dataset -> data_preparation ->
our trainer -> RecBole's evaluate) on a 40-user slice of ml-100k."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import recbole
import torch
from recbole.data.interaction import Interaction

from recsys.recbole import (
    SafeTrainer,
    build_config,
    build_recbole_model,
    load_model,
    load_student,
    prepare_data,
    run_distillation,
    save_model_state,
    train_model,
)
from recsys.recbole.zoo import dataset_fingerprint

from .conftest import distill_setup

SMALL_RRD = {"k": 10, "l": 10, "m": 50}


def _scores(model, n_users):
    """Every user's scores of every item (full_sort_predict, or predict on all pairs)."""
    users = torch.arange(1, n_users, dtype=torch.long)
    with torch.no_grad():
        try:
            out = model.full_sort_predict(Interaction({"user_id": users}))
        except NotImplementedError:
            n_items = model.n_items
            out = model.predict(Interaction({
                "user_id": users.repeat_interleave(n_items),
                "item_id": torch.arange(n_items).repeat(len(users))}))
        return out.reshape(len(users), -1)


@pytest.fixture(scope="module")
def trained(base_config, teacher_file, run_dir):
    """An RRD run of 2 epochs, with the teacher's parameters before training."""
    cfg, data, model, trainer = distill_setup("rrd", base_config, teacher_file, run_dir,
                                              distill_params=SMALL_RRD)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    trainer.fit(data[0], data[1], saved=True, verbose=False)
    return cfg, data, model, trainer, teacher_before, student_before


def test_teacher_frozen_outside_state_and_optimizer(trained, teacher_file):
    cfg, data, model, trainer, teacher_before, student_before = trained
    after = model.teacher.state_dict()
    assert all(torch.equal(after[k], v) for k, v in teacher_before.items())
    saved = torch.load(teacher_file, weights_only=True)["state_dict"]
    assert all(torch.equal(after[k], v) for k, v in saved.items())
    # the student did learn
    assert any(not torch.equal(model.student.state_dict()[k], v)
               for k, v in student_before.items())
    # teacher: not in state_dict, not in parameters(), not in the optimizer, always eval
    assert all(k.startswith(("student.", "distill.")) for k in model.state_dict())
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert teacher_ids.isdisjoint(id(p) for p in model.parameters())
    opt_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert teacher_ids.isdisjoint(opt_ids)
    assert opt_ids == {id(p) for p in model.parameters()}
    model.train()
    assert model.training and model.student.training and not model.teacher.training
    assert all(not p.requires_grad for p in model.teacher.parameters())


def test_checkpoint_weights_only_and_identical_scores(trained):
    cfg, (train, valid, test), model, trainer, _, _ = trained
    assert len(trainer.epoch_seconds) == len(trainer.epoch_cpu_seconds) == cfg["epochs"]
    ck = torch.load(trainer.saved_model_file, weights_only=True)
    assert ck["student"] == "BPR" and ck["student_config"] == {"embedding_size": 8}
    assert not any("teacher" in k for k in ck["state_dict"])
    # RecBole's own evaluate(load_best_model=True) path
    result = trainer.evaluate(test, load_best_model=True)
    assert set(result) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    student = load_student(trainer.saved_model_file, cfg, train.dataset)
    torch.testing.assert_close(_scores(student, model.n_users), _scores(model, model.n_users),
                               rtol=0, atol=0)
    # a fresh plain RecBole trainer on the reloaded student reports the same metrics
    plain_cfg = build_config("BPR", "tiny", config_dict={
        **{k: cfg[k] for k in ("data_path", "seed", "checkpoint_dir", "topk", "metrics")},
        "embedding_size": 8})
    again = SafeTrainer(plain_cfg, student).evaluate(test, load_best_model=False)
    assert again == result


def test_resume_checkpoint_restores_state(trained, base_config, teacher_file, run_dir):
    cfg, data, model, trainer, _, _ = trained
    _, _, model2, trainer2 = distill_setup("rrd", base_config, teacher_file, run_dir,
                                           distill_params=SMALL_RRD)
    trainer2.resume_checkpoint(trainer.saved_model_file)
    ck = torch.load(trainer.saved_model_file, weights_only=True)
    assert trainer2.start_epoch == ck["epoch"] + 1
    for k, v in ck["state_dict"].items():
        assert torch.equal(model2.state_dict()[k], v)


def test_deprecated_aliases_warn_and_match(trained):
    import recsys.recbole as plugin
    from recsys.recbole import load_trainer_checkpoint

    cfg, (train, _, _), _, trainer, _, _ = trained
    ck = load_trainer_checkpoint(trainer.saved_model_file)
    with pytest.warns(DeprecationWarning, match="use load_trainer_checkpoint"):
        old = plugin.load_checkpoint(trainer.saved_model_file)
    assert old.keys() == ck.keys() and old["epoch"] == ck["epoch"]
    torch.manual_seed(0)
    new = build_recbole_model("BPR", cfg, train.dataset, {"embedding_size": 8})
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="use build_recbole_model"):
        again = plugin.build_model("BPR", cfg, train.dataset, {"embedding_size": 8})
    assert type(again) is type(new) and all(
        torch.equal(a, b) for a, b in zip(new.state_dict().values(), again.state_dict().values()))
    assert "load_checkpoint" not in plugin.__all__ and "build_model" not in plugin.__all__


def test_student_swapped_by_name(base_config, teacher_file, run_dir):
    from recbole.model.general_recommender import NeuMF

    cfg, (train, valid, _), model, trainer = distill_setup(
        "rrd", base_config, teacher_file, run_dir, student="NeuMF",
        student_config={"mf_embedding_size": 4, "mlp_embedding_size": 4,
                        "mlp_hidden_size": [8]}, epochs=1)
    assert isinstance(model.student, NeuMF)
    assert model.student.user_mf_embedding.embedding_dim == 4
    assert cfg["MODEL_INPUT_TYPE"] == NeuMF.input_type  # RecBole feeds it pointwise labels
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    trainer.fit(train, valid, saved=False, verbose=False)
    assert any(not torch.equal(model.student.state_dict()[k], v) for k, v in before.items())
    # the wrapper predicts exactly what the student predicts
    torch.testing.assert_close(_scores(model, model.n_users),
                               _scores(model.student, model.n_users), rtol=0, atol=0)


def test_lightgcn_teacher_trains_and_reloads(base_config, run_dir, tmp_path):
    res = train_model("LightGCN", "tiny", model_config={"embedding_size": 8, "n_layers": 2},
                      config_dict={**base_config, "epochs": 1}, saved=False)
    init = build_recbole_model("LightGCN", res.config, res.data[0].dataset,
                               {"embedding_size": 8, "n_layers": 2})
    assert not torch.equal(init.user_embedding.weight, res.model.user_embedding.weight) or \
        not torch.equal(init.item_embedding.weight, res.model.item_embedding.weight)
    assert res.result["test_result"]["ndcg@10"] >= 0.0
    path = save_model_state(res.model, tmp_path / "lgcn.pt", name="LightGCN", config=res.config,
                            dataset=res.data[0].dataset,
                            overrides={"embedding_size": 8, "n_layers": 2})
    loaded, name = load_model(path, res.config, res.data[0].dataset)
    assert name == "LightGCN"
    # its list scores by embedding products equal its own predict
    from recsys.recbole.context import list_scores, pair_scores

    users, items = torch.arange(1, 9), torch.randint(1, res.model.n_items, (8, 40))
    with torch.no_grad():
        torch.testing.assert_close(list_scores(res.model, "user_id", "item_id", users, items),
                                   pair_scores(res.model, "user_id", "item_id", users, items),
                                   rtol=1e-5, atol=1e-5)
    n = res.data[0].dataset.user_num
    torch.testing.assert_close(_scores(loaded, n), _scores(res.model, n), rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors
def test_bad_teacher_path(base_config, run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no teacher checkpoint"):
        run_distillation(teacher="BPR", student="BPR", method="rrd", dataset="tiny",
                         teacher_checkpoint=tmp_path / "missing.pt", config_dict=base_config,
                         run_dir=run_dir)


def test_corrupt_teacher_file(base_config, teacher_file, tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = build_config("BPR", "tiny", config_dict=base_config)
    train, _, _ = prepare_data(cfg)
    with pytest.raises(ValueError, match="neither a graphkd model state file nor a RecBole"):
        load_model(bad, cfg, train.dataset)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(print))
    with pytest.raises(ValueError):
        load_model(evil, cfg, train.dataset)


def test_teacher_from_another_dataset(base_config, teacher_file):
    cfg = build_config("BPR", "other", config_dict=base_config)
    train, _, _ = prepare_data(cfg)
    here = dataset_fingerprint(train.dataset)
    saved = torch.load(teacher_file, weights_only=True)
    assert saved["n_items"] != here["n_items"]
    with pytest.raises(ValueError, match=r"trained on dataset 'tiny' with .* items, but dataset "
                                         r"'other' has"):
        load_model(teacher_file, cfg, train.dataset)


def test_item_mapping_mismatch_detected(base_config, teacher_file, tmp_path):
    saved = torch.load(teacher_file, weights_only=True)
    saved["item_hash"] = "0" * 16
    other = tmp_path / "remapped.pt"
    torch.save(saved, other)
    cfg = build_config("BPR", "tiny", config_dict=base_config)
    train, _, _ = prepare_data(cfg)
    with pytest.raises(ValueError, match="another item id mapping"):
        load_model(other, cfg, train.dataset)


def test_unknown_names(base_config, teacher_file, run_dir):
    with pytest.raises(ValueError, match=r"unknown distillation method 'nope'; valid names: "
                                         r".*rrd"):
        run_distillation(method="nope", dataset="tiny", config_dict=base_config,
                         run_dir=run_dir)
    with pytest.raises(ValueError, match="unknown RecBole model 'NotAModel'"):
        run_distillation(student="NotAModel", method="rrd", dataset="tiny",
                         config_dict=base_config, run_dir=run_dir)
    with pytest.raises(ValueError, match="KNOWLEDGE model .*teacher, not a student"):
        run_distillation(student="KGAT", method="rrd", dataset="tiny",
                         config_dict=base_config, run_dir=run_dir)
    with pytest.raises(ValueError, match="takes a teacher of type SEQUENTIAL"):  # BPR teacher
        run_distillation(student="SASRec", method="rrd", dataset="tiny",
                         config_dict=base_config, run_dir=run_dir)
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['kk'\] for method"):
        distill_setup("rrd", base_config, teacher_file, run_dir, distill_params={"kk": 1})


def test_missing_dataset_file(base_config, tmp_path):
    cfg = build_config("BPR", "nothere", config_dict={**base_config, "data_path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="no RecBole atomic file"):
        prepare_data(cfg)


def test_data_root_from_environment(monkeypatch, data_root, base_config):
    monkeypatch.setenv("GRAPHKD_DATA", str(data_root))
    cfg = build_config("BPR", "tiny", config_dict={
        k: v for k, v in base_config.items() if k != "data_path"})
    assert cfg["data_path"] == str(data_root / "tiny")
    train, _, _ = prepare_data(cfg)
    assert train.dataset.dataset_name == "tiny"
    # ml-100k always resolves to the copy shipped inside the recbole wheel
    cfg = build_config("BPR", "ml-100k", config_dict={"epochs": 1})
    assert Path(cfg["data_path"]).resolve() == (
        Path(recbole.__file__).parent / "dataset_example" / "ml-100k").resolve()


def test_teacher_passed_as_object(trained, base_config):
    from recsys.recbole import distill_model_class

    cfg, (train, _, _), model, _, _, _ = trained
    again = distill_model_class("BPR")(cfg, train.dataset, teacher=model.teacher)
    assert again.teacher is model.teacher and not again.teacher.training
    assert set(again.state_dict()) == set(model.state_dict())
    other_cfg = build_config("BPR", "other", config_dict=base_config)
    other_train, _, _ = prepare_data(other_cfg)
    wrong = build_recbole_model("BPR", other_cfg, other_train.dataset, {"embedding_size": 16})
    with pytest.raises(ValueError, match="train the teacher on this dataset"):
        distill_model_class("BPR")(cfg, train.dataset, teacher=wrong)
