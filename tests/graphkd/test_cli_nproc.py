"""Multi-process students: ``graphkd distill --nproc 2`` and DDP in the experiment loop.

* Two gloo processes run :func:`graphkd.pipeline.run_experiment` on a tiny float64 dataset
  (a student alone, and a student distilled with SP + RKD + KD); the trained students of both
  ranks must equal a single-process run over the same global batches (each global batch = the
  two ranks' ``DistributedSampler`` shards of ``batch_size / 2`` samples).
* ``graphkd distill --nproc 2`` on tiny digits clouds: the teacher is trained once, the results
  are written and printed once (rank 0); with ``--sync-bn`` (the student's BatchNorm layers
  synchronised over the processes, DGCNN's EdgeConv included).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from graphkd import distributed as gd
from graphkd.config import ConfigError, ExperimentConfig, from_dict

BATCH = 8  # global batch: 4 samples per rank and step
CFG: dict[str, Any] = {
    "name": "nproc",
    "data": {"name": "nproc_tiny"},
    "teacher": {"model": {"preset": "nproc_net", "kwargs": {"hidden": 12}},
                "train": {"epochs": 1, "batch_size": BATCH, "optimizer": {"lr": 0.01}}},
    "student": {"model": {"preset": "nproc_net", "kwargs": {"hidden": 5}},
                "train": {"epochs": 2, "batch_size": BATCH, "optimizer": {"lr": 0.01}}},
    "methods": {
        "student": {},
        "rel": {"logits_weight": 0.5, "tau": 2.0,
                "matches": [{"teacher": "body", "student": "body", "method": "sp",
                             "weight": 10.0},
                            {"teacher": "body", "student": "body", "method": "rkd"}]},
    },
    "seeds": [0],
    "threads": 1,
}


# --------------------------------------------------------------------------- tiny task
class _Net(nn.Module):
    """Node MLP (``body``), mean pooling per graph, linear head; no BatchNorm, no dropout."""

    def __init__(self, num_features: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, data: Any) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        return self.head(global_mean_pool(self.body(data.x), data.batch, data.num_graphs))


_BUILT: list[tuple[int, nn.Module]] = []  # every model the registry built, in order


def _net(num_features: int, num_classes: int, hidden: int) -> nn.Module:
    model = _Net(num_features, num_classes, hidden).double()
    _BUILT.append((hidden, model))
    return model


def _tiny_data(cfg: Any) -> Any:
    from torch_geometric.data import Data

    from graphkd.pipeline import DataBundle

    g = torch.Generator().manual_seed(3)
    graphs = [Data(x=torch.randn(3, 4, generator=g, dtype=torch.float64),
                   y=torch.randint(0, 3, (1,), generator=g)) for _ in range(45)]
    # 29 training graphs: the sampler drops one so that both ranks hold 14 (3 full steps + 2)
    return DataBundle(train=graphs[:29], val=graphs[29:37], test=graphs[37:], num_features=4,
                      num_classes=3)


def _register() -> None:
    from graphkd.pipeline import register_dataset, register_model

    register_dataset("nproc_tiny", _tiny_data)
    register_model("nproc_net", _net)


def _config(out: Path) -> ExperimentConfig:
    return from_dict(ExperimentConfig, dict(CFG, output_dir=str(out)))


def _students(hidden: int = 5) -> list[nn.Module]:
    return [m for h, m in _BUILT if h == hidden]


# --------------------------------------------------------------------------- ranks
def _rank_run(out: str) -> None:
    """Every rank: the whole experiment; saves its trained students and its results."""
    from graphkd.pipeline import run_experiment

    torch.set_num_threads(1)
    assert gd.is_distributed() and gd.world_size() == 2
    _register()
    _BUILT.clear()
    res = run_experiment(_config(Path(out)))
    # check_methods builds one student per method first; the trained ones are the last two
    trained = _students()[-2:]
    torch.save({"student": trained[0].state_dict(), "rel": trained[1].state_dict(),
                "runs": [{k: r[k] for k in ("method", "best_epoch", "history")}
                         for r in res["runs"]],
                "world_size": res["world_size"], "teacher_cached": res["teacher"]["cached"]},
               Path(out, f"rank{gd.rank()}.pt"))


def _reference(cfg: ExperimentConfig, method: str) -> dict[str, torch.Tensor]:
    """One process, plain loop: the same seeded student over the same global batches."""
    from torch.utils.data.distributed import DistributedSampler
    from torch_geometric.data import Batch

    from graphkd.pipeline import build_optimizer, load_data, train_teacher
    from graphkd.pipeline.runs import _make_student

    data = load_data(cfg.data)
    teacher, rec = train_teacher(cfg, data)  # the checkpoint rank 0 wrote
    assert rec["cached"]
    student, module, step, _ = _make_student(cfg, method, 0, teacher, data,
                                             torch.device("cpu"))
    opt = build_optimizer(module.parameters(), cfg.student.train)
    per_rank = BATCH // 2
    steps = 0
    for epoch in range(cfg.student.train.epochs):
        shards = []
        for r in range(2):
            s = DistributedSampler(data.train, num_replicas=2, rank=r, shuffle=True, seed=0,
                                   drop_last=True)
            s.set_epoch(epoch)
            shards.append(list(s))
        assert len(shards[0]) == len(shards[1]) == 14
        for k in range(0, 14, per_rank):
            idx = shards[0][k:k + per_rank] + shards[1][k:k + per_rank]
            batch = Batch.from_data_list([data.train[i] for i in idx])
            module.train()
            loss = sum(step(batch).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    assert steps == 8
    return student.state_dict()


def test_two_process_experiment_equals_single_process(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    _register()
    gd.launch(_rank_run, 2, str(tmp_path), backend="gloo")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(rk["world_size"] == 2 for rk in ranks)
    # rank 0 trained the teacher, rank 1 loaded its checkpoint
    assert [rk["teacher_cached"] for rk in ranks] == [False, True]
    assert len(list((tmp_path / "nproc").glob("teacher-*.pt"))) == 1
    cfg = _config(tmp_path)
    for method in ("student", "rel"):
        ref = _reference(cfg, method)
        for rk in ranks:
            got = rk[method]
            assert got.keys() == ref.keys()
            for name, value in ref.items():
                torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12,
                                           msg=lambda m, n=name, k=method: f"{k} {n}: {m}")
    # the students moved (the comparison is not between untouched initialisations)
    _BUILT.clear()
    from graphkd.pipeline import load_data
    from graphkd.pipeline.runs import _make_student

    fresh, *_ = _make_student(cfg, "student", 0, None, load_data(cfg.data), torch.device("cpu"))
    trained = ranks[0]["student"]["head.weight"]
    assert not torch.allclose(fresh.state_dict()["head.weight"], trained)
    # validation/test values are rank 0's, broadcast: both ranks select the same epoch
    for a, b in zip(ranks[0]["runs"], ranks[1]["runs"]):
        assert a["best_epoch"] == b["best_epoch"]
        assert a["history"]["val"] == b["history"]["val"]
        assert a["history"]["test"] == b["history"]["test"]
        assert a["history"]["losses"] == b["history"]["losses"]  # averaged over ranks
        assert len(a["history"]["val"]) == 2
    assert set(ranks[0]["runs"][1]["history"]["losses"][0]) == {
        "task", "kd", "sp[body:mean_pool]", "rkd[body:mean_pool]"}


# --------------------------------------------------------------------------- CLI
TINY_DIGITS = {
    "name": "tiny",
    "data": {"name": "digits", "kwargs": {"num_points": 16, "limit": 120}},
    "teacher": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [8], "emb_dims": 16, "head": [8],
                                     "dropout": 0.0}},
                "train": {"epochs": 1, "batch_size": 20, "optimizer": {"lr": 0.005}}},
    "student": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [8], "emb_dims": 8, "head": [8],
                                     "dropout": 0.0}},
                "train": {"epochs": 1, "batch_size": 20, "optimizer": {"lr": 0.005}}},
    "methods": {
        "student": {},
        "sp": {"matches": [{"teacher": "pool", "student": "pool", "method": "sp",
                            "weight": 100.0}]},
    },
    "seeds": [0],
    "threads": 1,
}


def test_distill_cli_nproc_writes_once_on_rank0(tmp_path, capfd):
    from graphkd.cli import main

    os.environ.pop("WORLD_SIZE", None)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_DIGITS, sort_keys=False))
    out = tmp_path / "runs"
    # --sync-bn: the DGCNN student's BatchNorm layers (EdgeConv's included) are converted to
    # graphkd SyncBatchNorm and synchronised through DDP's forward and backward
    rc = main(["distill", "--config", str(config), "--output-dir", str(out), "--nproc", "2",
               "--no-plot", "--sync-bn"])
    assert rc == 0
    res = json.loads((out / "tiny" / "results.json").read_text())
    assert res["world_size"] == 2 and res["config"]["sync_batchnorm"] is True
    assert [r["method"] for r in res["runs"]] == ["student", "sp"]
    assert res["teacher"]["cached"]  # trained by the launching process, loaded by the ranks
    assert len(list((out / "tiny").glob("teacher-*.pt"))) == 1
    assert set(res["runs"][1]["history"]["losses"][0]) == {"task", "sp[pool]"}
    assert (out / "tiny" / "report.md").is_file()
    assert not (out / "tiny" / "report.png").exists()
    printed = capfd.readouterr().out  # both ranks' file descriptors: only rank 0 prints
    assert printed.count("results.json") == 1
    assert printed.count("sp seed 0: test") == 1
    assert printed.count("| sp |") == 1


def test_nproc_errors(tmp_path, monkeypatch):
    from graphkd.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_DIGITS, sort_keys=False))
    assert main(["distill", "--config", str(config), "--nproc", "0"]) == 2
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(["distill", "--config", str(config), "--nproc", "2"]) == 2
    monkeypatch.delenv("WORLD_SIZE")
    from graphkd.pipeline import train_loader

    with pytest.raises(ConfigError, match="multiple"):
        monkeypatch.setattr(gd, "world_size", lambda: 3)
        monkeypatch.setattr(gd, "rank", lambda: 0)
        train_loader(list(range(10)), 8, 0, distributed=True)


# --------------------------------------------------------------------------- graphkd.train.fit
FIT_METHODS = [("sp", {}), ("gcrd", {"proj_dim": 4})]
PER_RANK = 4  # global batch 8


def _fit_data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    return x[:22], y[:22], x[22:], y[22:]  # 11 training samples per rank: batches 4, 4, 3


def _fit_distiller() -> Any:
    from graphkd.distill import Distiller, Match

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    student = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y, _, _ = _fit_data()
    matches = [Match("0", "0", m, params=p) for m, p in FIT_METHODS]
    d = Distiller(teacher, student, matches, logits="kd", logits_weight=0.5,
                  task_loss=nn.CrossEntropyLoss(), example=(x[:PER_RANK], y[:PER_RANK]))
    return d.double()


def _fit_rank(out: str) -> None:
    """Every rank: graphkd.train.fit on its DistributedSampler shard; saves the result."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from graphkd.train import fit

    torch.set_num_threads(1)
    x, y, xv, yv = _fit_data()
    ds = TensorDataset(x, y)
    loader = DataLoader(ds, batch_size=PER_RANK,
                        sampler=DistributedSampler(ds, shuffle=True, seed=0, drop_last=True))
    d = _fit_distiller()
    res = fit(d, loader, DataLoader(TensorDataset(xv, yv), batch_size=8), epochs=2, lr=0.01,
              out_dir=Path(out, "fit"), progress=False, restore_best=False)
    torch.save({"params": {n: p.detach() for n, p in d.named_parameters()},
                "history": res.history, "best": res.best_epoch},
               Path(out, f"fit{gd.rank()}.pt"))


def test_two_process_fit_equals_single_process(tmp_path):
    from torch.utils.data.distributed import DistributedSampler

    os.environ.pop("WORLD_SIZE", None)
    gd.launch(_fit_rank, 2, str(tmp_path), backend="gloo")
    ranks = [torch.load(tmp_path / f"fit{r}.pt", weights_only=False) for r in range(2)]
    # reference: one process, Adam on the concatenated shards (fit calls set_epoch(0), (1))
    x, y, _, _ = _fit_data()
    d = _fit_distiller()
    start = {n: p.detach().clone() for n, p in d.named_parameters()}
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=0.01)
    for epoch in (0, 1):
        shards = []
        for r in range(2):
            s = DistributedSampler(range(22), num_replicas=2, rank=r, shuffle=True, seed=0,
                                   drop_last=True)
            s.set_epoch(epoch)
            shards.append(list(s))
        for k in range(0, 11, PER_RANK):
            idx = shards[0][k:k + PER_RANK] + shards[1][k:k + PER_RANK]
            _, losses = d((x[idx], y[idx]))
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
    ref = {n: p.detach() for n, p in d.named_parameters()}
    assert any(n.startswith("match_losses.") for n in ref)  # G-CRD's heads compared too
    for rk in ranks:
        assert rk["params"].keys() == ref.keys()
        for name, value in ref.items():
            # float64: the student and weights agree to ~1e-16; G-CRD's projection bias (its
            # gradient is ~0 before the L2 normalisation, which Adam divides by) to ~1e-9
            torch.testing.assert_close(rk["params"][name], value, rtol=1e-7, atol=1e-8,
                                       msg=lambda m, n=name: f"{n}: {m}")
    assert not torch.allclose(start["student.0.weight"], ref["student.0.weight"])
    # identical history and best epoch on both ranks (rank 0's validation, broadcast)
    for a, b in zip(ranks[0]["history"], ranks[1]["history"], strict=True):
        a.pop("time_s"), b.pop("time_s")
        assert a == b and set(a) >= {"loss", "task", "kd", "sp[0]", "gcrd[0]", "val_accuracy"}
    assert ranks[0]["best"] == ranks[1]["best"]
    # rank 0 alone wrote the files: one header + one row per epoch
    rows = (tmp_path / "fit" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,")
    assert (tmp_path / "fit" / "best.pt").is_file() and (tmp_path / "fit" / "last.pt").is_file()
