"""Model names and types: did-you-mean, teacher-only traditional models (Pop, ItemKNN), the
CLI's progress output and run report."""

from __future__ import annotations

import json

import pytest
import torch

from recsys.recbole import ensure_teacher, run_distillation
from recsys.recbole.zoo import check_student, did_you_mean, load_model, model_class

from .conftest import distill_setup


def test_unknown_model_suggests_the_close_names():
    assert "'MultiVAE'" in did_you_mean("MultVAE")
    assert did_you_mean("sasrec").startswith(" (did you mean 'SASRec'")
    assert did_you_mean("zzzzzzzz") == ""
    with pytest.raises(ValueError, match="did you mean 'MultiVAE'"):
        model_class("MultVAE")
    with pytest.raises(ValueError, match="did you mean 'LightGCN'"):
        run_distillation("BPR", "LightGNC", "rd", "ml-100k")


def test_model_types_accepted_and_refused():
    assert model_class("SASRec").__name__ == "SASRec"
    assert model_class("Pop").__name__ == "Pop"
    assert model_class("KGAT").__name__ == "KGAT"  # a teacher (recsys.recbole.kg)
    with pytest.raises(ValueError, match="KNOWLEDGE model .*teacher, not a student"):
        check_student("KGAT")
    with pytest.raises(ValueError, match="teacher, not a student"):
        check_student("ItemKNN")
    with pytest.raises(ValueError, match="teacher, not a student"):
        run_distillation("BPR", "Pop", "rd", "ml-100k")


def test_pop_teacher_soft_labels_are_its_most_counted_unseen_items(base_config, run_dir):
    path, res = ensure_teacher("Pop", "tiny", config_dict=base_config, run_dir=run_dir)
    assert res is not None
    cfg, (train, _, _), model, _ = distill_setup("rd", base_config, path, run_dir,
                                                 distill_params={"k": 5})
    # the item counts survive the state file (they are not in Pop's state_dict)
    again, name = load_model(path, cfg, train.dataset)
    assert name == "Pop" and torch.equal(again.item_cnt, model.teacher.item_cnt)
    model.prepare()
    top = model.ctx.soft_labels
    # Pop's scores are its item counts (RecBole's Pop counts an item once per batch it is in)
    pop = model.teacher.item_cnt.squeeze(1).float()
    assert int((pop > 0).sum()) == int((model.ctx.item_popularity > 0).sum())
    inter = train.dataset.inter_matrix(form="csr")
    for user in (1, 7, 23):
        scores = pop.clone()
        scores[0] = -1
        scores[torch.from_numpy(inter[user].indices).long()] = -1
        ranked = scores[top.indices[user]]
        assert torch.equal(ranked, scores.topk(5).values)  # the 5 largest counts, in order


def test_itemknn_teacher_trains_and_distils(base_config, run_dir):
    path, res = ensure_teacher("ItemKNN", "tiny", config_dict=base_config, run_dir=run_dir)
    assert res is not None and res["test_result"]["ndcg@10"] > 0
    out = run_distillation("ItemKNN", "BPR", "rd", "tiny", teacher_checkpoint=path,
                           student_config={"embedding_size": 8},
                           config_dict={**base_config, "epochs": 1,
                                        "distill_params": {"k": 5}}, run_dir=run_dir)
    assert out["epochs_run"] == 1 and out["teacher"]["model"] == "ItemKNN"


def test_cli_progress_and_run_report(base_config, run_dir, data_root, teacher_file, tmp_path,
                                     capsys):
    from recsys.cli import main

    common = ["--dataset", "tiny", "--data-path", str(data_root), "--run-dir", str(run_dir),
              "--teacher-checkpoint", str(teacher_file), "--student-config",
              '{"embedding_size": 8}', "--set", "distill_params={k: 5}"]
    for key in ("epochs", "train_batch_size", "seed", "checkpoint_dir"):
        common += ["--set", f"{key}={base_config[key]}"]
    out = tmp_path / "res.json"
    assert main(["run", "--method", "rd", "--out", str(out), *common]) == 0
    io = capsys.readouterr()
    res = json.loads(io.out)  # stdout stays the JSON alone
    assert "epoch 0 training" in io.err and "epoch 1 evaluating" in io.err
    assert [p["epoch"] for p in res["valid_curve"]] == [0, 1]
    md = (tmp_path / "res.md").read_text()
    assert f"| test (best valid epoch) | {res['test_result']['recall@10']:.4f} |" in md
    assert "| 1 | " in md
    assert (tmp_path / "res.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["run", "--method", "rd", "--quiet", *common]) == 0
    assert "epoch 0 training" not in capsys.readouterr().err
    assert main(["methods", "--kind", "sequential"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert names == ["de", "hidden", "kd", "none", "rd", "rrd"]
