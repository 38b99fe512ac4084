"""A relation loss registered from outside the package, used by name from a Match: in one
process on graph batches, and under 2-process gloo DDP (``global_batch = True``: it sees the
global batch, so its value and gradients equal one process on the whole batch)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn.models import GCN, GIN

from graphkd import Distiller, DistillLoss, Match, register
from graphkd import distributed as gd


@register("my_rel")
class MyRel(DistillLoss):
    """Cosine-similarity relation graph of the batch, matched with MSE."""

    level = "batch"          # one row per sample (node features are mean-pooled per graph)
    global_batch = True      # under DDP, relate samples across all ranks
    family = "relation"

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, f_s, f_t):
        g_s, g_t = (F.normalize(f, dim=1) for f in (f_s, f_t))
        return self.scale * F.mse_loss(g_s @ g_s.T, g_t @ g_t.T)


def _reference(f_s, f_t, scale=1.0):
    g_s, g_t = F.normalize(f_s, dim=1), F.normalize(f_t, dim=1)
    return scale * ((g_s @ g_s.T - g_t @ g_t.T) ** 2).mean()


def test_registered_outside_and_used_by_name_on_graph_batches():
    g = torch.Generator().manual_seed(0)
    graphs = [Data(x=torch.randn(n, 4, generator=g), y=torch.tensor([n % 2]),
                   edge_index=torch.stack([torch.arange(n), (torch.arange(n) + 1) % n]))
              for n in (3, 4, 5, 6)]
    data = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    teacher, student = GIN(4, 16, 2, out_channels=2), GCN(4, 8, 2, out_channels=2)
    d = Distiller(teacher, student, [Match("convs.0", "convs.0", "my_rel", weight=2.0,
                                           params={"scale": 3.0})], example=data)
    assert isinstance(d.match_losses[0], MyRel) and d.match_losses[0].scale == 3.0
    _, losses = d(data)
    assert list(losses) == ["my_rel[convs.0:mean_pool]"]  # the automatic pooling is shown
    h_s = student.convs[0](data.x, data.edge_index)
    h_t = teacher.convs[0](data.x, data.edge_index)
    pool = lambda h: torch.stack([h[data.batch == i].mean(0) for i in range(4)])  # noqa: E731
    torch.testing.assert_close(losses["my_rel[convs.0:mean_pool]"],
                               2.0 * _reference(pool(h_s), pool(h_t), 3.0))


def _mlp(d_in: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def _ddp_check(out_dir: str) -> None:
    torch.set_num_threads(1)
    w, r = gd.world_size(), gd.rank()
    torch.manual_seed(0)
    teacher, student = _mlp(6, 12, 3), _mlp(6, 5, 3)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    def distiller(data):  # the task loss gives every student parameter a gradient (DDP)
        return Distiller(teacher, copy.deepcopy(student), [Match("0", "0", "my_rel")],
                         task_loss=nn.CrossEntropyLoss(), example=data)

    ref = distiller((x, y))
    _, ref_losses = ref((x, y))
    sum(ref_losses.values()).backward()
    b = x.shape[0] // w
    local = (x[r * b:(r + 1) * b], y[r * b:(r + 1) * b])
    d = distiller(local)
    _, solo = d(local)
    model = gd.wrap(d)
    _, losses = model(local)
    sum(losses.values()).backward()
    torch.testing.assert_close(losses["my_rel[0]"], ref_losses["my_rel[0]"])
    for (name, p), q in zip(d.student.named_parameters(), ref.student.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, n=name: f"grad {n}: {m}")
    assert not torch.allclose(solo["my_rel[0]"], ref_losses["my_rel[0]"])  # the gather matters
    if r == 0:
        Path(out_dir, "report.json").write_text(json.dumps(
            {"world_size": w, "loss": float(losses["my_rel[0]"])}))


def test_registered_loss_sees_the_global_batch_under_two_process_ddp(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    gd.launch(_ddp_check, 2, str(tmp_path), backend="gloo")
    assert json.loads((tmp_path / "report.json").read_text())["world_size"] == 2
