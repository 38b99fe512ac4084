"""fit / evaluate / pretrain: selection, checkpoints, CSV logs, resume, progress, and the hooks
the experiment pipeline uses (test metric at the best epoch, schedulers, clipping, timing)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch_geometric.loader import DataLoader as PyGLoader

from graphkd.distill import Distiller, Match, pyg_call
from graphkd.metrics import Metric
from graphkd.train import evaluate, fit, load_checkpoint, loss_columns, pretrain
from tests.graphkd.test_distill import GCN, GIN, make_batch, snapshot


# --------------------------------------------------------------------------- plain models
def _tabular(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _mlp():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_selects_on_validation_and_writes_checkpoints_and_csv(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    train = DataLoader(_tabular(), batch_size=16, shuffle=True)
    val = DataLoader(_tabular(48, seed=1), batch_size=16)
    res = fit(model, train, val, epochs=4, lr=0.05, out_dir=tmp_path, progress=False, seed=0)
    accs = [row["val_accuracy"] for row in res.history]
    assert [row["epoch"] for row in res.history] == [1, 2, 3, 4]
    assert res.best_epoch == accs.index(max(accs)) + 1 and res.best_metric == max(accs)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == res.best_epoch
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in best["model"].items())
    assert evaluate(model, val)["accuracy"] == res.best_metric  # restored best weights
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 4 and set(last) >= {"model", "optimizer", "rng", "history"}
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"epoch", "loss", "task", "val_accuracy", "time_s"}
    assert math.isclose(float(rows[1]["loss"]), res.history[1]["loss"], rel_tol=1e-6)


def test_resume_continues_from_the_saved_epoch_like_an_uninterrupted_run(tmp_path):
    data = _tabular()

    def run(out, epochs, init_seed, resume=False):
        torch.manual_seed(init_seed)
        model = _mlp()
        loader = DataLoader(data, batch_size=16, shuffle=True)
        res = fit(model, loader, DataLoader(data, batch_size=32), epochs=epochs, lr=0.05,
                  out_dir=out, resume=resume, progress=False, seed=3, restore_best=False)
        return model, res

    full, res_full = run(tmp_path / "a", 4, 0)
    run(tmp_path / "b", 2, 0)  # "interrupted" after epoch 2
    resumed, res = run(tmp_path / "b", 4, 7, resume=True)  # different init: weights come back
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    assert [r["loss"] for r in res.history] == [r["loss"] for r in res_full.history]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())
    rows = list(csv.DictReader((tmp_path / "b" / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_progress_bars_can_be_turned_off(capsys):
    loader = DataLoader(_tabular(32), batch_size=16)
    fit(_mlp(), loader, epochs=1, progress=False)
    assert "epoch 1/1" not in capsys.readouterr().err
    fit(_mlp(), loader, epochs=1, progress=True)
    assert "epoch 1/1" in capsys.readouterr().err


def test_errors_name_the_fix(tmp_path):
    loader = DataLoader(_tabular(32), batch_size=16)
    with pytest.raises(ValueError, match="unknown metric"):
        fit(_mlp(), loader, epochs=1, metric="f1")
    with pytest.raises(ValueError, match="resume=True needs the out_dir"):
        fit(_mlp(), loader, epochs=1, resume=True)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.*resume=False"):
        fit(_mlp(), loader, epochs=1, out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    model = _mlp()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer misses 2 trainable"):
        fit(model, loader, epochs=1, optimizer=opt, progress=False)


# --------------------------------------------------------------------------- distillers
def _graphs(n=12, seed=0):
    return list(make_batch(n, seed).to_data_list())


def test_fit_distiller_saves_student_and_adapters_only(tmp_path, device):
    torch.manual_seed(0)
    teacher, student = GIN(), GCN()
    loader = PyGLoader(_graphs(), batch_size=4, shuffle=True)
    d = Distiller(teacher, student, [Match("convs.1", "convs.0", "t_distill_adapter_mse")],
                  logits="t_distill_logit_mse", task_loss=nn.CrossEntropyLoss(), call=pyg_call)
    t0, s0 = snapshot(teacher), snapshot(student)
    t0 = {k: v.to(device) for k, v in t0.items()}
    s0 = {k: v.to(device) for k, v in s0.items()}
    res = fit(d, loader, PyGLoader(_graphs(8, 1), batch_size=4), epochs=2, out_dir=tmp_path,
              progress=False, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), device=device)
    assert all(p.device.type == device.type for p in [*teacher.parameters(), *d.parameters()])
    assert d.is_setup  # fit set it up before building the optimizer
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())
    assert not torch.equal(s0["head.weight"], student.head.weight)
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / name, weights_only=True)["model"]
        assert state and all(k.startswith(("student.", "match_losses.")) for k in state)
        assert any(k.startswith("match_losses.") for k in state)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert {"task", "t_distill_logit_mse",
            "t_distill_adapter_mse[convs.0:mean_pool]"} <= set(rows[0])
    val = PyGLoader(_graphs(8, 1), batch_size=4)
    assert evaluate(d, val)["accuracy"] == evaluate(student, val, call=pyg_call)["accuracy"]
    assert evaluate(d, val)["accuracy"] == res.best_metric


def test_mhgd_pretraining_trains_heads_only_then_fit_trains_the_student():
    torch.manual_seed(0)
    teacher, student = GIN(), GCN()
    loader = PyGLoader(_graphs(), batch_size=6)
    d = Distiller(teacher, student, [
        Match(("convs.0", "convs.1"), ("convs.0", "convs.1"), "mhgd", params={"num_heads": 2}),
    ], task_loss=nn.CrossEntropyLoss(), call=pyg_call, example=next(iter(loader)))
    mhgd = d.match_losses[0]
    assert d.needs_pretraining()
    with pytest.raises(ValueError, match="pretrain_epochs"):
        fit(d, loader, epochs=1, progress=False)
    s0, h0, a0 = snapshot(student), snapshot(mhgd.heads), snapshot(mhgd.adapters)
    hist = pretrain(d, loader, epochs=2, lr=0.01, progress=False)
    assert len(hist) == 2 and not d.needs_pretraining() and mhgd.pretrained
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in s0.items())
    assert all(torch.equal(v, mhgd.adapters.state_dict()[k]) for k, v in a0.items())
    assert not torch.equal(h0["0.sender.weight"], mhgd.heads[0].sender.weight)
    h1 = snapshot(mhgd.heads)
    fresh = Distiller(GIN(), GCN(), [  # a resumed run: the stage comes back with the state
        Match(("convs.0", "convs.1"), ("convs.0", "convs.1"), "mhgd", params={"num_heads": 2}),
    ], call=pyg_call, example=next(iter(loader)))
    fresh.load_state_dict(d.state_dict())
    assert not fresh.needs_pretraining()
    assert not any(p.requires_grad for p in fresh.match_losses[0].pretrain_parameters())
    _, losses = d(next(iter(loader)))
    assert sorted(losses) == ["mhgd[convs.0:mean_pool,convs.1:mean_pool]", "task"]
    fit(d, loader, epochs=1, progress=False, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert all(torch.equal(v, mhgd.heads.state_dict()[k]) for k, v in h1.items())
    assert not torch.equal(s0["convs.0.lin.weight"], student.convs[0].lin.weight)
    assert not torch.equal(a0["0.weight"], mhgd.adapters[0].weight)


# --------------------------------------------------------------------------- pipeline hooks
def test_test_loader_is_reported_at_the_selected_epoch(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    val, test = DataLoader(_tabular(48, seed=1), batch_size=16), DataLoader(_tabular(40, 2))
    res = fit(model, DataLoader(_tabular(), batch_size=16, shuffle=True), val, epochs=4,
              lr=0.05, test_loader=test, progress=False, seed=0, out_dir=tmp_path)
    tests = [row["test_accuracy"] for row in res.history]
    assert len(tests) == 4 and res.test == tests[res.best_epoch - 1]
    assert evaluate(model, test)["accuracy"] == res.test  # restored best weights
    assert loss_columns(res.history[0]) == {"task": res.history[0]["task"]}
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert set(rows[0]) == {"epoch", "loss", "task", "val_accuracy", "test_accuracy", "time_s"}


class _Spy(nn.Module):
    """An MLP that records the weights it is evaluated with (every eval-mode forward)."""

    def __init__(self):
        super().__init__()
        self.net = _mlp()
        self.states: list[dict[str, torch.Tensor]] = []

    def forward(self, x):
        if not self.training:
            self.states.append({k: v.clone() for k, v in self.net.state_dict().items()})
        return self.net(x)


def test_selection_takes_the_first_best_finite_value():
    """Scripted validation values: NaN epochs are skipped, ties keep the first epoch."""
    values = iter([float("nan"), 0.2, 0.5, 0.5, 0.1])
    scripted = Metric("scripted", lambda z, y: next(values))
    model = _Spy()
    states = model.states
    loader = DataLoader(_tabular(32), batch_size=16)
    res = fit(model, loader, DataLoader(_tabular(16, 1), batch_size=16), epochs=5, lr=0.1,
              metric=scripted, progress=False)
    assert (res.best_epoch, res.best_metric) == (3, 0.5)
    assert len(states) == 5
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in states[2].items())


def test_select_last_reports_and_keeps_the_final_epoch():
    """``select="last"``: the final epoch's validation/test values and weights, although epoch
    1 validated higher; an unknown selection names the choices."""
    values = iter([0.9, 0.1, 0.2, 0.2, 0.5, 0.3, 0.4, 0.4, 0.3, 0.5])  # (val, test) per epoch
    scripted = Metric("scripted", lambda z, y: next(values))
    torch.manual_seed(0)
    model = _Spy()
    states = model.states
    loader, one = DataLoader(_tabular(32), batch_size=16), DataLoader(_tabular(16, 1), 16)
    res = fit(model, loader, one, test_loader=one, epochs=5, lr=0.1, metric=scripted,
              progress=False, select="last")
    assert (res.best_epoch, res.best_metric, res.test) == (5, 0.3, 0.5)
    assert [r["val_scripted"] for r in res.history] == [0.9, 0.2, 0.5, 0.4, 0.3]
    assert len(states) == 10 and not all(torch.equal(v, states[-1][k])
                                         for k, v in states[0].items())
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in states[-1].items())
    with pytest.raises(ValueError, match="'best', 'last'"):
        fit(model, loader, one, epochs=1, progress=False, select="final")


def test_scheduler_is_stepped_per_epoch_and_resumed_exactly(tmp_path):
    data = _tabular()

    def run(out, epochs, resume=False):
        torch.manual_seed(0)
        model = _mlp()
        loader = DataLoader(data, batch_size=16, shuffle=True,
                            generator=torch.Generator().manual_seed(1))
        res = fit(model, loader, DataLoader(data, batch_size=32), epochs=epochs, out_dir=out,
                  resume=resume, progress=False, restore_best=False,
                  optimizer=lambda ps: torch.optim.SGD(ps, lr=0.4),
                  scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
        return model, res

    full, res = run(tmp_path / "a", 4)
    assert [row["lr"] for row in res.history] == [0.4, 0.2, 0.1, 0.05]
    run(tmp_path / "b", 2)
    resumed, res_b = run(tmp_path / "b", 4, resume=True)
    assert [row["lr"] for row in res_b.history] == [0.4, 0.2, 0.1, 0.05]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())
    model = _mlp()
    other = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=0.1), 1)
    with pytest.raises(ValueError, match="drives another optimizer"):
        fit(model, DataLoader(data, batch_size=16), epochs=1, scheduler=other, progress=False)


def test_plateau_scheduler_gets_the_validation_value():
    values = iter([0.5, 0.4, 0.3])
    res = fit(_mlp(), DataLoader(_tabular(32), batch_size=16),
              DataLoader(_tabular(16, 1), batch_size=16), epochs=3, progress=False,
              metric=Metric("scripted", lambda z, y: next(values)),
              optimizer=lambda ps: torch.optim.SGD(ps, lr=0.4),
              scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
                  opt, mode="max", factor=0.5, patience=0))
    assert [row["lr"] for row in res.history] == [0.4, 0.4, 0.2]


def test_grad_clip_bounds_every_step():
    torch.manual_seed(0)
    model = _mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loader = DataLoader(_tabular(64), batch_size=16)  # 4 steps
    fit(model, loader, epochs=1, grad_clip=1e-3, progress=False,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=1.0))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0 < float((after - before).norm()) <= 4e-3 + 1e-7


def test_epoch_time_excludes_evaluation():
    import time

    class SlowLoader:  # evaluation costs 0.3 s an epoch
        def __iter__(self):
            time.sleep(0.3)
            yield from DataLoader(_tabular(16, 1), batch_size=16)

    res = fit(_mlp(), DataLoader(_tabular(32), batch_size=16), SlowLoader(), epochs=2,
              progress=False)
    assert all(0 < row["time_s"] < 0.25 for row in res.history)


def test_non_finite_loss_raises_with_the_fix():
    x = torch.randn(32, 5)
    x[3, 0] = float("nan")
    loader = DataLoader(TensorDataset(x, (x[:, 1] > 0).long()), batch_size=16)
    with pytest.raises(FloatingPointError, match="non-finite training loss in epoch 1.*lower"):
        fit(_mlp(), loader, epochs=1, progress=False)
