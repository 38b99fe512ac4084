"""Synchronised BatchNorm on CPU (gloo): 2 processes equal one BatchNorm on the whole batch.

The 2-process tests start two gloo processes (``graphkd.distributed.launch``) that split a
global batch unevenly (5 + 3, 3 + 5, 0 + 4 samples) and assert inside every rank that the
outputs, the input gradients, the rank-summed weight/bias gradients and the running statistics
after two steps equal ``nn.BatchNorm1d/2d/3d`` on the concatenated batch; rank 0 then writes a
report that the test reads back. The single-process tests need no process group.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from graphkd import distributed as gd
from graphkd.distill import Distiller, Match
from graphkd.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

# name, layer, kwargs, global input shape, samples per rank
CASES = [
    ("bn1d_nc", nn.BatchNorm1d, {"num_features": 3}, (8, 3), (5, 3)),
    ("bn1d_ncl_cumulative", nn.BatchNorm1d, {"num_features": 3, "momentum": None},
     (8, 3, 4), (3, 5)),
    ("bn2d", nn.BatchNorm2d, {"num_features": 3, "eps": 1e-3}, (8, 3, 2, 3), (5, 3)),
    ("bn3d_empty_rank", nn.BatchNorm3d, {"num_features": 2}, (4, 2, 2, 2, 2), (0, 4)),
]


def _bn_case(cls, kwargs: dict, shape: tuple, split: tuple, r: int) -> None:
    import torch.distributed as dist

    g = torch.Generator().manual_seed(0)  # the same draws in every rank
    base = cls(**kwargs).double()
    with torch.no_grad():
        base.weight.uniform_(0.5, 1.5, generator=g)
        base.bias.normal_(generator=g)
    ref, sync = copy.deepcopy(base), convert_sync_batchnorm(copy.deepcopy(base))
    assert isinstance(sync, SyncBatchNorm) and not isinstance(ref, SyncBatchNorm)
    lo = sum(split[:r])
    hi = lo + split[r]
    for _ in range(2):
        x = 3.0 * torch.randn(shape, generator=g, dtype=torch.float64) + 1.0
        weights = torch.randn(shape, generator=g, dtype=torch.float64)
        x_ref = x.clone().requires_grad_(True)
        out_ref = ref(x_ref)
        (out_ref * weights).sum().backward()
        x_loc = x[lo:hi].clone().requires_grad_(True)
        out = sync(x_loc)
        (out * weights[lo:hi]).sum().backward()  # the global loss is the sum over ranks
        torch.testing.assert_close(out, out_ref[lo:hi].detach())
        torch.testing.assert_close(x_loc.grad, x_ref.grad[lo:hi])
        for name in ("weight", "bias"):
            grad = getattr(sync, name).grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad, getattr(ref, name).grad,
                                       msg=lambda m, n=name: f"{n}.grad: {m}")
        sync.zero_grad()
        ref.zero_grad()
    torch.testing.assert_close(sync.running_mean, ref.running_mean)
    torch.testing.assert_close(sync.running_var, ref.running_var)
    assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    # without synchronisation the statistics would be local: the comparison can fail
    if 1 < split[r] < sum(split):
        local = copy.deepcopy(base)(x[lo:hi])
        assert not torch.allclose(local, copy.deepcopy(base)(x)[lo:hi])
    # eval: running statistics, no communication at all
    sync.eval()
    ref.eval()
    boom = mock.Mock(side_effect=AssertionError("eval mode communicated"))
    with mock.patch.object(dist, "all_gather", boom), mock.patch.object(dist, "all_reduce", boom):
        torch.testing.assert_close(sync(x[lo:hi]), ref(x)[lo:hi])


def _bn_check(out_dir: str) -> None:
    """Runs in every rank (initialised by gd.launch); asserts, rank 0 writes a report."""
    torch.set_num_threads(1)
    r = gd.rank()
    assert gd.world_size() == 2 and gd.is_distributed()
    for _name, cls, kwargs, shape, split in CASES:
        _bn_case(cls, kwargs, shape, split, r)
    # one value per channel in the whole group (1 + 0 samples): every rank raises
    bn = SyncBatchNorm(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1 - r, 3))
    # float32: the same within float32 rounding
    x = torch.randn(8, 4, 3, generator=torch.Generator().manual_seed(3))
    lo, hi = (0, 5) if r == 0 else (5, 8)
    torch.testing.assert_close(SyncBatchNorm(4)(x[lo:hi]), nn.BatchNorm1d(4)(x)[lo:hi],
                               rtol=1e-5, atol=1e-5)
    if r == 0:
        Path(out_dir, "report.json").write_text(json.dumps({"cases": [c[0] for c in CASES]}))


def test_two_process_sync_batchnorm_equals_global_batchnorm(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    gd.launch(_bn_check, 2, str(tmp_path), backend="gloo")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cases"] == [c[0] for c in CASES]


# --------------------------------------------------------------------------- wrap
def _bn_mlp(d_in: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.Tanh(),
                         nn.Linear(hidden, classes))


def _distiller(student: nn.Module, teacher: nn.Module, example) -> Distiller:
    torch.manual_seed(1)
    # SP on the BatchNorm output itself: its feature hook must survive the conversion
    matches = [Match("1", "1", "sp"), Match("3", "3", "rkd")]
    return Distiller(teacher, student, matches, logits="kd", logits_weight=0.5,
                     task_loss=nn.CrossEntropyLoss(), example=example)


def _wrap_check(out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    w, r = gd.world_size(), gd.rank()
    torch.manual_seed(0)
    teacher, student = _bn_mlp(6, 8, 3), _bn_mlp(6, 5, 3)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    ref = _distiller(copy.deepcopy(student), teacher, (x, y))
    _, ref_losses = ref((x, y))
    sum(ref_losses.values()).backward()
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}

    b = x.shape[0] // w  # equal shards: the per-sample means average to the global mean
    local = (x[r * b:(r + 1) * b], y[r * b:(r + 1) * b])
    results = {}
    for sync_bn in (True, False):
        d = _distiller(copy.deepcopy(student), teacher, local)
        bn = d.student[1]
        model = gd.wrap(d, sync_batchnorm=sync_bn)
        assert isinstance(model, nn.parallel.DistributedDataParallel)
        assert isinstance(d.student[1], SyncBatchNorm) is sync_bn
        assert type(teacher[1]) is nn.BatchNorm1d  # only the student is converted
        if sync_bn:  # parameters and buffers are the very same objects
            assert d.student[1].weight is bn.weight and d.student[1].running_mean is bn.running_mean
        _, losses = model(local)
        assert set(losses) == set(ref_losses)
        sum(losses.values()).backward()
        for key, value in losses.items():
            if key in ("task", "kd"):
                value = value.detach().clone()
                dist.all_reduce(value)
                value = value / w
            if sync_bn:
                torch.testing.assert_close(value, ref_losses[key], rtol=1e-5, atol=1e-6,
                                           msg=lambda m, k=key: f"loss {k}: {m}")
        # atol 1e-5: the bias before a BatchNorm has a true gradient of 0, so float32 sums in
        # another order (2 ranks vs one batch) leave ~1e-6 of rounding there
        same = all(torch.allclose(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5)
                   for n, p in d.named_parameters())
        if sync_bn:
            for n, p in d.named_parameters():
                torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5,
                                           msg=lambda m, n=n: f"grad {n}: {m}")
        results[str(sync_bn)] = same
    assert results == {"True": True, "False": False}  # per-rank statistics differ
    if r == 0:
        Path(out_dir, "wrap.json").write_text(json.dumps(results))


def test_wrap_sync_batchnorm_two_processes(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    gd.launch(_wrap_check, 2, str(tmp_path), backend="gloo")
    assert json.loads((tmp_path / "wrap.json").read_text()) == {"True": True, "False": False}


# --------------------------------------------------------------------------- one process
@pytest.mark.parametrize("cls, kwargs, shape", [
    (nn.BatchNorm1d, {}, (6, 4)),
    (nn.BatchNorm1d, {"momentum": None}, (6, 4, 5)),
    (nn.BatchNorm2d, {"affine": False}, (3, 4, 2, 3)),
    (nn.BatchNorm3d, {"track_running_stats": False}, (2, 4, 2, 2, 3)),
])
def test_single_process_equals_batchnorm(cls, kwargs, shape):
    torch.manual_seed(0)
    ref = cls(4, **kwargs)
    mine = convert_sync_batchnorm(copy.deepcopy(ref))
    assert isinstance(mine, SyncBatchNorm)
    for train in (True, True, False):
        ref.train(train)
        mine.train(train)
        x = torch.randn(shape)
        w = torch.randn(shape)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_a, out_b = ref(xa), mine(xb)
        assert torch.equal(out_a, out_b)
        (out_a * w).sum().backward()
        (out_b * w).sum().backward()
        assert torch.equal(xa.grad, xb.grad)
        for (n, a), b in zip(ref.named_parameters(), mine.parameters()):
            assert torch.equal(a.grad, b.grad), n
        for (n, a), b in zip(ref.named_buffers(), mine.buffers()):
            assert torch.equal(a, b), n


def test_convert_keeps_parameters_buffers_flags_and_hooks():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=None))
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3, affine=False), inner,
                          nn.SyncBatchNorm(4, eps=1e-3), nn.BatchNorm3d(2, bias=False))
    model[1].running_mean.fill_(0.5)
    model[1].num_batches_tracked.fill_(7)
    inner[1].weight.requires_grad_(False)
    inner[1].eval()
    seen = []
    handle = inner[1].register_forward_hook(lambda m, a, o: seen.append(o.shape))
    old = [model[1], inner[1], model[3], model[4]]
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: t for n, t in model.named_buffers()}
    got = convert_sync_batchnorm(model, process_group=None)
    assert got is model  # children replaced in place
    new = [model[1], inner[1], model[3], model[4]]
    assert all(isinstance(m, SyncBatchNorm) for m in new)
    assert not any(isinstance(m, SyncBatchNorm) for m in old)
    for a, b in zip(old, new):
        assert (a.num_features, a.eps, a.momentum, a.affine, a.track_running_stats) == \
            (b.num_features, b.eps, b.momentum, b.affine, b.track_running_stats)
        assert a.training == b.training and b.process_group is None
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(t is buffers[n] for n, t in model.named_buffers())
    assert float(model[1].running_mean[0]) == 0.5 and int(model[1].num_batches_tracked) == 7
    assert not inner[1].weight.requires_grad and not inner[1].training
    assert model[4].weight is not None and model[4].bias is None
    inner(torch.randn(2, 3, 2, 2))
    assert seen == [torch.Size([2, 4, 2, 2])]  # the hook moved with the layer
    handle.remove()
    inner(torch.randn(2, 3, 2, 2))
    assert len(seen) == 1
    # a BatchNorm itself: a new layer; an already converted one is kept
    bn = nn.BatchNorm1d(3)
    top = SyncBatchNorm.convert_sync_batchnorm(bn)
    assert isinstance(top, SyncBatchNorm) and top.weight is bn.weight
    assert convert_sync_batchnorm(top) is top
    assert SyncBatchNorm.convert_sync_batchnorm(bn, process_group="g").process_group == "g"


def test_torch_forward_accepts_the_module():
    """Non-CPU inputs go to ``nn.SyncBatchNorm.forward(self, x)``: it must run on this class."""
    torch.manual_seed(0)
    mine, ref = SyncBatchNorm(4, momentum=None), nn.BatchNorm1d(4, momentum=None)
    x = torch.randn(6, 4, 3)
    assert torch.equal(nn.SyncBatchNorm.forward(mine, x), ref(x))
    assert torch.equal(mine.running_var, ref.running_var) and int(mine.num_batches_tracked) == 1


def test_errors():
    bn = SyncBatchNorm(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 3))
    bn(torch.randn(1, 3, 2))  # 2 values per channel are enough
    with pytest.raises(ValueError, match="at least 2D"):
        bn(torch.randn(3))
    bn.eval()
    bn(torch.randn(1, 3))  # eval mode: running statistics


def test_wrap_single_process_is_identity():
    torch.manual_seed(0)
    teacher, student = _bn_mlp(6, 8, 3), _bn_mlp(6, 5, 3)
    g = torch.Generator().manual_seed(2)
    data = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    d = _distiller(student, teacher, data)
    assert gd.wrap(d, sync_batchnorm=True) is d
    assert type(d.student[1]) is nn.BatchNorm1d  # nothing to synchronise with


# --------------------------------------------------------------------------- DGCNN's EdgeConv
CLOUDS, POINTS, CLOUD_SPLIT = 4, 16, (3, 1)  # whole clouds per rank, uneven


def _point_clouds() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    pos = torch.randn(CLOUDS * POINTS, 3, generator=g, dtype=torch.float64)
    return pos, torch.arange(CLOUDS).repeat_interleave(POINTS)


def _edge_models() -> dict[str, nn.Module]:
    from graphkd.models import DGCNN, EdgeConv

    torch.manual_seed(5)
    models = {"edgeconv": EdgeConv(3, 6, k=4),
              "dgcnn": DGCNN(3, 5, k=4, widths=(6, 8), emb_dims=12, head=(8,), dropout=0.0)}
    g = torch.Generator().manual_seed(6)
    for model in models.values():
        model.double()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):  # mixed signs: EdgeConv's max/min per channel
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.weight.mul_(torch.where(torch.rand(m.num_features, generator=g) < 0.3,
                                              -1.0, 1.0).double())
                    m.bias.uniform_(-0.3, 0.3, generator=g)
    return models


def _edgeconv_check(out_dir: str) -> None:
    """Every rank: its whole clouds (3 + 1) through converted EdgeConv / DGCNN; asserts."""
    import torch.distributed as dist

    from graphkd.models import dgcnn

    torch.set_num_threads(1)
    r = gd.rank()
    pos, batch = _point_clouds()
    first = sum(CLOUD_SPLIT[:r])
    clouds = range(first, first + CLOUD_SPLIT[r])
    rows = (batch >= clouds.start) & (batch < clouds.stop)
    pos_r, batch_r = pos[rows], batch[rows] - first
    report = {}
    for name, base in _edge_models().items():
        ref, sync = copy.deepcopy(base), convert_sync_batchnorm(copy.deepcopy(base))
        bns = [m for m in sync.modules() if isinstance(m, SyncBatchNorm)]
        assert bns and not any(type(m) is nn.BatchNorm1d for m in sync.modules())
        per_point = name == "edgeconv"
        local = rows if per_point else torch.isin(torch.arange(CLOUDS), torch.tensor(clouds))
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
        opt_sync = torch.optim.SGD(sync.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(7)
        for _ in range(2):  # the second step: updated parameters and running statistics
            out_ref = ref(pos, batch)
            weights = torch.randn(out_ref.shape, generator=g, dtype=torch.float64)
            (out_ref * weights).sum().backward()
            out = sync(pos_r, batch_r)
            (out * weights[local]).sum().backward()
            torch.testing.assert_close(out, out_ref[local],
                                       msg=lambda m, n=name: f"{n} output: {m}")
            for (pname, p), q in zip(sync.named_parameters(), ref.parameters(), strict=True):
                dist.all_reduce(p.grad)  # the global loss is the sum over ranks (DDP)
                torch.testing.assert_close(p.grad, q.grad,
                                           msg=lambda m, n=f"{name}.{pname}": f"{n}.grad: {m}")
            opt_ref.step()
            opt_sync.step()
            opt_ref.zero_grad()
            opt_sync.zero_grad()
        for (bname, buf), ref_buf in zip(sync.named_buffers(), ref.buffers(), strict=True):
            torch.testing.assert_close(buf, ref_buf,
                                       msg=lambda m, n=f"{name}.{bname}": f"{n}: {m}")
        # eval: running statistics, rows equal without any communication
        sync.eval()
        ref.eval()
        torch.testing.assert_close(sync(pos_r, batch_r), ref(pos, batch)[local])
        # the EdgeConv synchronisation is what makes the rows equal: without it they differ
        sync.train()
        ref.train()
        with mock.patch.object(dgcnn, "batchnorm_moments",
                               lambda bn, count, mean, var, training: (count, mean, var)):
            unsynced = copy.deepcopy(sync)(pos_r, batch_r).detach()
        report[name] = not torch.allclose(unsynced, copy.deepcopy(ref)(pos, batch)[local])
    assert report == {"edgeconv": True, "dgcnn": True}, report
    if r == 0:
        Path(out_dir, "edgeconv.json").write_text(json.dumps(report))


def test_two_process_edgeconv_sync_equals_single_process(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    gd.launch(_edgeconv_check, 2, str(tmp_path), backend="gloo")
    assert json.loads((tmp_path / "edgeconv.json").read_text()) == {"edgeconv": True,
                                                                   "dgcnn": True}


def test_edgeconv_single_process_sync_is_unchanged():
    """Converted but without a process group: EdgeConv/DGCNN compute exactly as before."""
    pos, batch = _point_clouds()
    for base in _edge_models().values():
        ref, mine = copy.deepcopy(base), convert_sync_batchnorm(copy.deepcopy(base))
        w = None
        for train in (True, False):
            ref.train(train)
            mine.train(train)
            out_ref, out = ref(pos, batch), mine(pos, batch)
            assert torch.equal(out, out_ref)
            w = torch.randn_like(out) if w is None else w
            (out_ref * w).sum().backward()
            (out * w).sum().backward()
            for (n, a), b in zip(ref.named_parameters(), mine.parameters(), strict=True):
                assert torch.equal(a.grad, b.grad), n
            for (n, a), b in zip(ref.named_buffers(), mine.buffers(), strict=True):
                assert torch.equal(a, b), n


# --------------------------------------------------------------------------- config and CLI
SBN_CFG = {
    "name": "sbn",
    "data": {"name": "sbn_tiny"},
    "teacher": {"model": {"preset": "sbn_net", "kwargs": {"hidden": 6}}},
    "student": {"model": {"preset": "sbn_net", "kwargs": {"hidden": 4}},
                "train": {"batch_size": 4}},
    "methods": {"student": {}, "kd": {"logits_weight": 0.5}},
}


class _BnNet(nn.Module):
    """Node Linear + BatchNorm, mean pooling per graph, linear head."""

    def __init__(self, num_features: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_features, hidden), nn.BatchNorm1d(hidden))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, data):
        from torch_geometric.nn import global_mean_pool

        return self.head(global_mean_pool(self.body(data.x), data.batch, data.num_graphs))


def _sbn_data(cfg):
    from torch_geometric.data import Data

    from graphkd.pipeline import DataBundle

    g = torch.Generator().manual_seed(0)
    graphs = [Data(x=torch.randn(3, 4, generator=g), y=torch.randint(0, 2, (1,), generator=g))
              for _ in range(8)]
    return DataBundle(train=graphs[:4], val=graphs[4:6], test=graphs[6:], num_features=4,
                      num_classes=2)


def test_config_sync_batchnorm_field(tmp_path):
    import yaml

    from graphkd.config import ConfigError, ExperimentConfig, from_dict, load_config, to_dict
    from graphkd.pipeline import teacher_path

    cfg = from_dict(ExperimentConfig, SBN_CFG)
    assert cfg.sync_batchnorm is False
    on = from_dict(ExperimentConfig, dict(SBN_CFG, sync_batchnorm=True))
    assert on.sync_batchnorm is True
    assert from_dict(ExperimentConfig, to_dict(on)) == on  # round trip
    # student-only setting: the cached teacher checkpoint is shared with and without it
    assert teacher_path(on) == teacher_path(cfg)
    with pytest.raises(ConfigError, match=r"config\.sync_batchnorm: expected true/false"):
        from_dict(ExperimentConfig, dict(SBN_CFG, sync_batchnorm="yes"))
    with pytest.raises(ConfigError, match="did you mean 'sync_batchnorm'"):
        from_dict(ExperimentConfig, dict(SBN_CFG, sync_batchnom=True))
    path = tmp_path / "sbn.yaml"
    path.write_text(yaml.safe_dump(dict(SBN_CFG, sync_batchnorm=True)))
    assert load_config(path, check_registry=False).sync_batchnorm is True
    assert not load_config(path, ["sync_batchnorm=false"], check_registry=False).sync_batchnorm


def test_cli_sync_bn_flag_sets_the_config_field(tmp_path, monkeypatch):
    import yaml

    from graphkd import cli

    path = tmp_path / "sbn.yaml"
    path.write_text(yaml.safe_dump(SBN_CFG))
    parser = cli.build_parser()
    for command in ("distill", "quickstart"):
        args = parser.parse_args([command, "--config", str(path)])
        assert not args.sync_bn and not cli._load(args).sync_batchnorm
        args = parser.parse_args([command, "--config", str(path), "--nproc", "2", "--sync-bn"])
        assert args.sync_bn and cli._load(args).sync_batchnorm
    assert not cli._load(parser.parse_args(["train-teacher", "--config", str(path)])
                         ).sync_batchnorm
    # a rank of --nproc N / torchrun runs the experiment with the field set
    seen = []
    monkeypatch.setattr(cli, "_run_and_report", lambda cfg, *a: seen.append(cfg) or 0)
    for flag in ([], ["--sync-bn"]):
        assert cli._distill_rank(parser.parse_args(["distill", "--config", str(path), *flag])) == 0
    assert [c.sync_batchnorm for c in seen] == [False, True]


@pytest.mark.parametrize("sync", [False, True])
def test_pipeline_passes_sync_batchnorm_to_wrap_and_ddp(monkeypatch, sync):
    """``cfg.sync_batchnorm`` reaches the training loop, whose DDP runner hands it to
    ``gd.wrap`` (Distiller) or converts a lone student before DDP."""
    from torch_geometric.data import Batch

    from graphkd import pipeline, train
    from graphkd.config import ExperimentConfig, from_dict
    from graphkd.pipeline import runs

    pipeline.register_dataset("sbn_tiny", _sbn_data)
    pipeline.register_model("sbn_net", _BnNet)
    cfg = from_dict(ExperimentConfig, dict(SBN_CFG, sync_batchnorm=sync))
    data = pipeline.load_data(cfg.data)
    seen: list = []

    def fake_train_on(module, data, train_cfg, **kwargs):
        seen.append(kwargs["sync_batchnorm"])
        return {"best_epoch": 0, "best_val": 0.0, "test_at_best": 0.0, "epoch_time_median": 0.0,
                "val": [], "test": [], "epoch_time": [], "losses": []}

    monkeypatch.setattr(runs, "train_on", fake_train_on)
    runs.run_method(cfg, "student", 0, None, data)
    assert seen == [sync]  # the pipeline hands the field to the loop

    calls: list = []
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel",
                        lambda model, **kwargs: calls.append(("ddp", model)) or model)
    monkeypatch.setattr(gd, "wrap", lambda module, **kwargs: calls.append(("wrap", kwargs))
                        or module)
    cpu = torch.device("cpu")
    student, module, step, _ = runs._make_student(cfg, "student", 0, None, data, cpu)
    assert train._ddp_runner(student, None, cpu, sync_batchnorm=sync) is student
    assert calls == [("ddp", student)] and module is student
    assert isinstance(student.body[1], SyncBatchNorm) is sync
    assert set(step(Batch.from_data_list(data.train))) == {"task"}
    calls.clear()
    teacher = pipeline.model_from_config(cfg.teacher.model, data)
    student, module, step, _ = runs._make_student(cfg, "kd", 0, teacher, data, cpu)
    assert train._ddp_runner(student, module, cpu, sync_batchnorm=sync) is module
    assert calls == [("wrap", {"find_unused_parameters": False, "sync_batchnorm": sync})]
    assert type(student.body[1]) is nn.BatchNorm1d  # wrap converts (faked here)
