"""Runs of an experiment on a tiny synthetic graph task: protocol, step timing, dry runs, and
the shipped configs' methods."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from graphkd.config import ConfigError, load_config
from graphkd.pipeline import DataBundle, make_loader, model_from_config, runs, train_teacher
from graphkd.pipeline import training as ptraining
from graphkd.pipeline.runs import run_experiment, run_method, step_times
from tests.graphkd.pipeline._toy import STUDENT_PARAMS, toy_config, toy_data


def test_student_alone_runs_and_selects_best_val(tmp_path):
    cfg = toy_config(tmp_path)
    res = run_experiment(cfg)
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    assert res["teacher"] is None  # the student alone never trains a teacher
    assert (res["metric"], res["higher_is_better"]) == ("accuracy", True)
    for r in res["runs"]:
        h = r["history"]
        assert len(h["val"]) == len(h["test"]) == len(h["epoch_time"]) == 3
        best = max(range(3), key=lambda i: (h["val"][i], -i))
        assert r["best_epoch"] == best
        assert r["test"] == h["test"][best] and r["val"] == h["val"][best]
        assert r["num_params"] == STUDENT_PARAMS
        assert all(t > 0 for t in h["epoch_time"])
    # the toy task is separable: the student learns it
    assert min(r["test"] for r in res["runs"]) > 0.8
    # same seed -> same numbers
    again = run_method(cfg, "student", 0, None, toy_data())
    assert again["history"]["val"] == res["runs"][0]["history"]["val"]


def test_every_model_trains_through_graphkd_train_fit(tmp_path, monkeypatch):
    seen = []
    real = ptraining.fit
    monkeypatch.setattr(ptraining, "fit", lambda m, *a, **k: seen.append(
        (type(m).__name__, k["restore_best"])) or real(m, *a, **k))
    run_experiment(toy_config(tmp_path, student={}, kd={"logits_weight": 0.9}), seeds=[0])
    assert seen == [("PoolMLP", True), ("PoolMLP", False), ("Distiller", False)]


def test_unknown_method_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'lsp'"):
        run_experiment(toy_config(tmp_path), methods=["lsp"])


def test_step_times_and_kd_run(tmp_path):
    from graphkd.report import step_time_section

    cfg = toy_config(tmp_path, student={}, kd={"logits_weight": 0.9, "tau": 4.0})
    st = step_times(cfg, rounds=3, warmup=1)
    assert st["rounds"] == 3 and st["batch_size"] == 16
    assert set(st["times"]) == {"student", "kd"}
    assert all(len(t) == 3 and min(t) > 0 for t in st["times"].values())
    assert st["median"]["kd"] == sorted(st["times"]["kd"])[1]
    lines = step_time_section({"step_times": st})
    ratio = st["median"]["kd"] / st["median"]["student"]
    assert f"| kd | {1000 * st['median']['kd']:.1f} | {ratio:.2f}× | 1.00× |" in lines
    # a distilled run trains through the Distiller: the KD term is logged every epoch
    rec = run_method(cfg, "kd", 0, train_teacher(cfg)[0], toy_data())
    assert all(set(h) == {"task", "kd"} for h in rec["history"]["losses"])
    assert rec["num_params"] == STUDENT_PARAMS  # no teacher parameters


def _fake_clouds(cfg) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    clouds = [Data(pos=torch.randn(32, 3, generator=g), y=torch.tensor([i % 4]))
              for i in range(8)]
    return DataBundle(clouds, clouds[:4], clouds[:4], num_features=3, num_classes=40,
                      model_kwargs={"in_channels": 3})


def _fake_molecules(cfg) -> DataBundle:
    from graphkd.datasets import smiles_to_data

    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C1CCNCC1", "CCN(CC)CC", "OC(=O)c1ccccc1"]
    mols = [smiles_to_data(s, torch.tensor([[i % 2]])) for i, s in enumerate(smiles)]
    return DataBundle(mols, mols[:3], mols[:3], num_features=9, num_classes=2,
                      metric="roc_auc")


def _fake_digits(cfg) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    clouds = [Data(pos=torch.rand(16, 2, generator=g) * 2 - 1, y=torch.tensor([i % 10]))
              for i in range(8)]
    return DataBundle(clouds, clouds[:4], clouds[:4], num_features=2, num_classes=10,
                      model_kwargs={"in_channels": 2})


@pytest.mark.parametrize("config, fake", [
    ("pointcloud_modelnet40.yaml", _fake_clouds),
    ("molecules_molhiv.yaml", _fake_molecules),
    ("pointcloud_digits.yaml", None),
    ("molecules_chembl.yaml", None),
])
def test_shipped_configs_build_every_method(config, fake, tmp_path):
    """Every method's layer paths and widths of a shipped config pass the Distiller's dry run
    (on tiny stand-in data with the real models, for the datasets that are not shipped)."""
    path = Path(__file__).resolve().parents[3] / "configs" / config
    cfg = load_config(path, ["device=cpu", f"output_dir={tmp_path}"])
    if fake is None:  # shipped data: only check the models on a stand-in of the same shape
        fake = _fake_molecules if cfg.data.name == "chembl" else _fake_digits
    data = fake(cfg)
    torch.manual_seed(0)
    teacher = model_from_config(cfg.teacher.model, data).eval()
    cfg.student.train.batch_size = 4
    for name, method in cfg.methods.items():
        method.pretrain_epochs = 1
        _, module, step, _ = runs._make_student(cfg, name, 0, teacher, data, torch.device("cpu"))
        batch = next(iter(make_loader(data.train, 4, False, 0)))
        losses = step(batch)
        expected = {"task"} | ({"kd"} if method.logits_weight > 0 else set())
        assert expected <= set(losses) and len(losses) == len(expected) + len(method.matches)
        assert all(torch.isfinite(v) for v in losses.values()), (name, losses)
