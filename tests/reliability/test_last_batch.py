"""A trailing training batch of one sample (100 samples, batch 33) is skipped, not fatal.

BatchNorm in training mode and batch-relation losses (RKD, GKD, ...) need at least two samples;
``fit`` skips such a final batch of one sample with one warning, and the experiment pipeline's
training loader drops it (``drop_last``) with one warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graphkd.distill import Distiller, Match
from graphkd.train import fit

SKIP_MSG = "skipped a final training batch of 1 sample"


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x[:n], y[:n])


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 2))


METHODS = {
    "kd+gcrd": dict(logits="kd", matches=[Match("3", "3", "gcrd",
                                                params={"proj_dim": 4, "seed": 0})]),
    "rkd": dict(matches=[Match("3", "3", "rkd")]),
    "gkd": dict(matches=[Match("3", "3", "gkd")]),
}


def _train(method: str, n: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    teacher, student = _mlp(16).eval(), _mlp(8)
    loader = DataLoader(_data(n), batch_size=33, shuffle=False)
    d = Distiller(teacher, student, task_loss=nn.CrossEntropyLoss(), **METHODS[method])
    fit(d, loader, epochs=2, lr=0.01, progress=False, seed=0, restore_best=False)
    return {k: v.clone() for k, v in d.state_dict().items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_fit_skips_a_final_batch_of_one_sample(method):
    with pytest.warns(UserWarning, match=SKIP_MSG) as record:
        full = _train(method, 100)  # batches 33, 33, 33, 1
    assert sum(SKIP_MSG in str(w.message) for w in record) == 1  # once, not once per epoch
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no short batch: no warning
        first99 = _train(method, 99)
    assert full.keys() == first99.keys()
    assert all(torch.equal(v, first99[k]) for k, v in full.items())


def test_plain_model_without_batchnorm_still_trains_on_a_batch_of_one():
    """Nothing needs two samples: the final batch of one is used as before."""
    def run(n):
        torch.manual_seed(0)
        model = _mlp(8)
        fit(model, DataLoader(_data(n), batch_size=33), epochs=1, progress=False, seed=0)
        return model.state_dict()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full, first99 = run(100), run(99)
    assert not all(torch.equal(v, first99[k]) for k, v in full.items())


TINY = {
    "name": "last_batch",
    # limit 125 with these fractions gives exactly 100 training clouds (asserted below)
    "data": {"name": "digits", "kwargs": {"num_points": 16, "limit": 125,
                                           "fractions": [0.8, 0.1, 0.1]}},
    "teacher": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [16], "emb_dims": 16, "head": [8],
                                     "dropout": 0.0}},
                "train": {"epochs": 1, "batch_size": 33, "optimizer": {"lr": 0.005}}},
    "student": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [8], "emb_dims": 8, "head": [8],
                                     "dropout": 0.0}},
                "train": {"epochs": 1, "batch_size": 33, "optimizer": {"lr": 0.005}}},
    "methods": {
        "kd": {"logits_weight": 0.9, "tau": 4.0},
        "rkd": {"matches": [{"teacher": "pool", "student": "pool", "method": "rkd",
                             "weight": 1.0}]},
    },
    "seeds": [0],
    "threads": 1,
    "device": "cpu",
}


def test_cli_distill_with_100_clouds_and_batch_33_completes(tmp_path, capsys, monkeypatch):
    from graphkd.cli import main
    from graphkd.config import load_config
    from graphkd.pipeline import data as ex

    monkeypatch.setattr(ex, "_TAIL_WARNED", set(), raising=False)  # warned once a process
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    cfg = load_config(path)
    assert len(ex.load_data(cfg.data).train) == 100  # 100 % 33 == 1: a final batch of one
    with pytest.warns(UserWarning, match="drop") as record:
        rc = main(["distill", "--config", str(path), "--output-dir", str(tmp_path / "out"),
                   "-q", "--no-plot"])
    assert rc == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    assert record  # the dropped sample is announced
    assert (tmp_path / "out" / "last_batch" / "results.json").is_file()
