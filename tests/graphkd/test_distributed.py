"""Multi-process distillation: global-batch relation methods under DDP equal one process.

The 2-process test starts two gloo processes on 127.0.0.1 (``graphkd.distributed.launch``), each
holding half of a batch, and checks inside every rank that the distillation losses, the
per-sample terms (averaged over ranks) and the DDP-averaged gradients of the student and of the
methods' heads equal a single-process run on the concatenated batch.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from graphkd import distributed as gd
from graphkd.distill import Distiller, Match
from graphkd.losses.graph import LSP
from graphkd.losses.relation import RKD, SP

METHODS = [("sp", {}), ("rkd", {}), ("pkt", {}), ("cc", {}),
           ("hkd", {"k": 3, "feat_dim": 4}), ("gcrd", {"proj_dim": 4})]


def _mlp(d_in: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def _distiller(student: nn.Module, teacher: nn.Module, example) -> Distiller:
    torch.manual_seed(1)  # the same heads in every process and in the reference
    matches = [Match("0", "0", m, params=p) for m, p in METHODS]
    return Distiller(teacher, student, matches, logits="kd", logits_weight=0.5,
                     task_loss=nn.CrossEntropyLoss(), example=example)


def _data(n: int = 16):
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _ddp_check(out_dir: str) -> None:
    """Runs in every rank (initialised by gd.launch); asserts, and rank 0 writes a report."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    w, r = gd.world_size(), gd.rank()
    assert w == 2 and gd.is_distributed()

    # 1. gather / gather_with_grad with unequal local sizes (3 and 5 rows)
    full = torch.arange(16.0).view(8, 2)
    lo, hi = (0, 3) if r == 0 else (3, 8)
    x = full[lo:hi].clone().requires_grad_(True)
    got = gd.gather_with_grad(x)
    assert torch.equal(got, full) and torch.equal(gd.gather(x), full)
    weight = torch.linspace(-1.0, 1.0, 16).view(8, 2)
    (got * weight).sum().backward()  # every rank: the same loss L = sum(full * weight)
    assert torch.equal(x.grad, w * weight[lo:hi])  # sum over ranks of dL/dx_local

    # 2. a Distiller with SP, RKD, PKT, CC, HKD, G-CRD + KD + task under DDP
    torch.manual_seed(0)
    teacher, student = _mlp(6, 12, 3), _mlp(6, 5, 3)
    x, y = _data()
    ref = _distiller(copy.deepcopy(student), teacher, (x, y))
    _, ref_losses = ref((x, y))
    sum(ref_losses.values()).backward()
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}

    b = x.shape[0] // w
    local = (x[r * b:(r + 1) * b], y[r * b:(r + 1) * b])
    d = _distiller(copy.deepcopy(student), teacher, local)
    model = gd.wrap(d)
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    _, losses = model(local)
    sum(losses.values()).backward()
    report = {}
    for key, value in losses.items():
        if key in ("task", "kd"):  # per-sample means: the rank average is the global mean
            value = value.detach().clone()
            dist.all_reduce(value)
            value = value / w
        torch.testing.assert_close(value, ref_losses[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, k=key: f"loss {k}: {m}")
        report[key] = [float(value), float(ref_losses[key])]
    for name, p in d.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"grad {n}: {m}")
    assert any(n.startswith("match_losses.") for n in ref_grads)  # heads compared too
    # 3. without the gather the relation losses differ (the test can fail)
    solo = _distiller(copy.deepcopy(student), teacher, local)
    _, solo_losses = solo(local)
    assert not torch.allclose(solo_losses["sp[0]"], ref_losses["sp[0]"])
    if r == 0:
        report["world_size"] = w
        report["num_grads"] = len(ref_grads)
        Path(out_dir, "report.json").write_text(json.dumps(report))


def test_two_process_gloo_equals_single_process(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    gd.launch(_ddp_check, 2, str(tmp_path), backend="gloo")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2
    assert {f"{m}[0]" for m, _ in METHODS} <= set(report)
    assert report["num_grads"] >= 4


# --------------------------------------------------------------------------- one process
def test_single_process_is_identity():
    x = torch.randn(5, 3, requires_grad=True)
    assert gd.gather_with_grad(x) is x and gd.gather(x) is x
    assert gd.world_size() == 1 and gd.rank() == 0 and gd.is_main_process()
    f_s, f_t = torch.randn(8, 4), torch.randn(8, 6)
    torch.testing.assert_close(gd.GlobalBatch(RKD())(f_s, f_t), RKD()(f_s, f_t))
    torch.manual_seed(0)
    teacher, student = _mlp(6, 12, 3), _mlp(6, 5, 3)
    d = _distiller(student, teacher, _data())
    assert gd.wrap(d) is d


def test_make_global_keeps_module_and_state_dict():
    loss = SP()
    handle = gd.make_global(loss)
    f_s, f_t = torch.randn(6, 3), torch.randn(6, 5)
    torch.testing.assert_close(loss(f_s, f_t), SP()(f_s, f_t))
    handle.remove()
    assert gd.GlobalBatch(SP()).state_dict().keys() == SP().state_dict().keys()


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="needs no global batch"):
        gd.GlobalBatch(LSP(graph="knn", k=2))
    with pytest.raises(ValueError, match="needs no global batch"):
        gd.make_global(LSP())
    teacher, student = _mlp(6, 12, 3), _mlp(6, 5, 3)
    d = Distiller(teacher, student, [Match("0", "0", "sp")])
    with pytest.raises(RuntimeError, match="setup"):
        gd.globalize(d)
    with pytest.raises(ValueError, match="nproc"):
        gd.launch(print, 0)


def test_launch_single_process_and_torchrun_mismatch(monkeypatch):
    calls = []
    gd.launch(calls.append, 1, "x")
    assert calls == ["x"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="WORLD_SIZE=4"):
        gd.launch(calls.append, 2, "y")
    assert calls == ["x"]


def test_globalize_selects_context_free_relation_methods():
    torch.manual_seed(0)
    teacher, student = _mlp(6, 12, 3), _mlp(6, 5, 3)
    d = _distiller(student, teacher, _data())
    handles = gd.globalize(d)
    assert len(handles) == len(METHODS)  # all six (gcrd is node level with global_batch)
    for h in handles:
        h.remove()
    assert len(gd.globalize(d, methods=["sp"])) == 1
    assert gd.free_port() > 0


def test_init_distributed_reads_torchrun_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert gd.init_distributed() is False  # single process: nothing to initialise
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert gd.init_distributed() is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        gd.init_distributed()


# --------------------------------------------------------------------------- flags, layering
def test_global_batch_is_read_from_the_method_class():
    """Which methods are gathered comes from their class attributes: a newly registered method
    is gathered (or not) with no list of names to update."""
    from graphkd.losses import LOSSES, DistillLoss, register

    gathered = {n for n, cls in LOSSES.items() if gd.wants_global_batch(cls)}
    assert {"sp", "rkd", "pkt", "cc", "irg", "gkd", "hkd", "gcrd", "mhgd"} <= gathered
    assert not gathered & {"lsp", "at", "kd", "fitnet", "gsp", "vid", "ab"}
    for n, cls in LOSSES.items():  # the rule, spelled out on the flags
        want = not cls.context and (cls.level == "batch" or cls.global_batch)
        assert gd.wants_global_batch(cls) is want, n

    @register("t_dist_node_global")
    class NodeGlobal(DistillLoss):
        level = "node"
        global_batch = True

        def forward(self, f_s, f_t):
            return (f_s.mean() - f_t.mean()) ** 2

    @register("t_dist_node_local")
    class NodeLocal(NodeGlobal):
        global_batch = False

    try:
        assert gd.wants_global_batch(NodeGlobal()) and not gd.wants_global_batch(NodeLocal())
        assert gd.wants_global_batch(NodeGlobal) and not gd.wants_global_batch(NodeLocal)
        assert gd.wants_global_batch(nn.MSELoss())  # a plain module: DistillLoss defaults
        with pytest.warns(DeprecationWarning, match="global_batch"):
            names = gd.GLOBAL_METHODS
        assert "t_dist_node_global" in names and "t_dist_node_local" not in names
        assert {"sp", "rkd", "pkt", "cc", "hkd", "gcrd", "gkd", "irg"} <= names
    finally:
        LOSSES._items.pop("t_dist_node_global")
        LOSSES._items.pop("t_dist_node_local")
    assert gd.GlobalBatch(RKD()).global_batch and gd.GlobalBatch(RKD()).family == "relation"


def _graphkd_imports(path: Path) -> set[str]:
    """Every graphkd module ``path`` imports, at module level or inside functions."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graphkd"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("graphkd"))
    return out


def test_no_cycle_between_distributed_and_sync_batchnorm():
    """distributed -> sync_batchnorm -> _collectives, lazy imports included."""
    root = Path(gd.__file__).parent
    sbn = _graphkd_imports(root / "sync_batchnorm.py")
    assert not any(m.startswith("graphkd.distributed") for m in sbn), sbn
    assert not _graphkd_imports(root / "_collectives.py")
    assert "graphkd.sync_batchnorm" in _graphkd_imports(root / "distributed.py")
    from graphkd import _collectives, sync_batchnorm

    assert gd.gather_with_grad is _collectives.gather_with_grad  # one implementation
    assert sync_batchnorm.gather_with_grad is _collectives.gather_with_grad
