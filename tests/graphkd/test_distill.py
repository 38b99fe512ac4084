"""Distiller: hooks, frozen teachers, setup, loss names/values, modes, checkpoints, errors."""

from __future__ import annotations

import io
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import (
    GCNConv,
    GINConv,
    global_add_pool,
    global_max_pool,
    global_mean_pool,
)
from torch_geometric.nn.models import GAT as PygGAT
from torch_geometric.nn.models import GCN as PygGCN
from torch_geometric.nn.models import GIN as PygGIN

from graphkd.distill import (
    Distiller,
    FeatureHooks,
    Match,
    Teacher,
    default_call,
    graph_context,
    mean_pool,
    prepare_target,
    pyg_call,
)
from graphkd.losses.base import LOSSES, DistillLoss, register


# --------------------------------------------------------------------------- test-local losses
def _register(name: str):
    def deco(cls):
        return LOSSES[name] if name in LOSSES else register(name)(cls)
    return deco


@_register("t_distill_adapter_mse")
class AdapterMSE(DistillLoss):
    """Batch-level, trainable linear adapter student -> teacher width, MSE."""

    needs_dims: ClassVar[bool] = True
    level: ClassVar[str] = "batch"

    def __init__(self, student_dim: int, teacher_dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)
        self.scale = scale

    def forward(self, f_s, f_t):
        return self.scale * F.mse_loss(self.proj(f_s), f_t)


@_register("t_distill_plain_mse")
class PlainMSE(DistillLoss):
    """Batch-level, no heads: needs equal widths (fails otherwise)."""

    level: ClassVar[str] = "batch"

    def forward(self, f_s, f_t):
        return F.mse_loss(f_s, f_t)


@_register("t_distill_logit_mse")
class LogitMSE(DistillLoss):
    level: ClassVar[str] = "logits"

    def forward(self, f_s, f_t):
        return ((f_s - f_t) ** 2).mean()


@_register("t_distill_node_record")
class NodeRecord(DistillLoss):
    """Node-level; records what it receives."""

    level: ClassVar[str] = "node"
    context: ClassVar[tuple[str, ...]] = ("batch", "edge_index")
    calls: ClassVar[list] = []

    def forward(self, f_s, f_t, batch=None, edge_index=None):
        NodeRecord.calls.append((f_s, f_t, batch, edge_index))
        return (f_s.mean() - f_t.mean()) ** 2


@_register("t_distill_batch_record")
class BatchRecord(DistillLoss):
    level: ClassVar[str] = "batch"
    context: ClassVar[tuple[str, ...]] = ("batch",)
    calls: ClassVar[list] = []

    def forward(self, f_s, f_t, batch=None):
        BatchRecord.calls.append((f_s, f_t, batch))
        return f_s.sum() * 0 + f_t.sum() * 0


# --------------------------------------------------------------------------- models and data
class GCN(nn.Module):
    def __init__(self, in_dim: int = 4, hidden: int = 8, classes: int = 3, layers: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x, edge_index, batch):
        for conv in self.convs:
            x = conv(x, edge_index).relu()
        return self.head(global_mean_pool(x, batch))


class GIN(nn.Module):
    def __init__(self, in_dim: int = 4, hidden: int = 16, classes: int = 3):
        super().__init__()
        self.convs = nn.ModuleList([
            GINConv(nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))),
            GINConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))),
        ])
        self.head = nn.Linear(hidden, classes)

    def forward(self, x, edge_index, batch):
        for conv in self.convs:
            x = conv(x, edge_index).relu()
        return self.head(global_mean_pool(x, batch))


def make_batch(num_graphs: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(num_graphs):
        n = 3 + i % 3
        src = torch.arange(n)
        ring = torch.stack([torch.cat([src, (src + 1) % n]), torch.cat([(src + 1) % n, src])])
        graphs.append(Data(x=torch.randn(n, 4, generator=g), edge_index=ring,
                           y=torch.randint(0, 3, (1,), generator=g)))
    return Batch.from_data_list(graphs)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def build(match_method="t_distill_adapter_mse", **kw):
    torch.manual_seed(0)
    teacher, student = GIN(), GCN()
    d = Distiller(
        teacher, student,
        matches=[Match(teacher="convs.1", student="convs.0", method=match_method, weight=2.0)],
        logits="t_distill_logit_mse", logits_weight=0.5,
        task_loss=nn.CrossEntropyLoss(), task_weight=0.25, call=pyg_call, **kw)
    return teacher, student, d


# --------------------------------------------------------------------------- hooks
def test_hooks_capture_the_tensors_of_a_manual_forward():
    model, data = GCN(), make_batch()
    with FeatureHooks(model, ["convs.0", "convs.1", "head"]) as hooks:
        out = model(data.x, data.edge_index, data.batch)
        feats = hooks.pop()
    h0 = model.convs[0](data.x, data.edge_index)
    h1 = model.convs[1](h0.relu(), data.edge_index)
    assert torch.equal(feats["convs.0"], h0)
    assert torch.equal(feats["convs.1"], h1)
    assert feats["head"] is out  # the very tensor, same autograd graph
    assert len(model.convs[0]._forward_hooks) == 0  # closed


def test_hooks_take_the_first_element_of_a_tuple_output():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[1]

    x, net = torch.randn(3, 2), Net()
    with FeatureHooks(net, ["pair"]) as hooks:
        out = net(x)
        assert torch.equal(hooks.features["pair"], x * 2)
    assert torch.equal(out, x * 3)


def test_wrong_path_lists_valid_paths():
    with pytest.raises(ValueError, match=r"no module at path 'convs\.5'.*Did you mean.*"
                                         r"Valid module paths.*'convs\.0'"):
        FeatureHooks(GCN(), ["convs.5"])
    teacher, student = GIN(), GCN()
    d = Distiller(teacher, student, [Match("convs.1", "conv.0", "t_distill_plain_mse")],
                  call=pyg_call)
    with pytest.raises(ValueError, match=r"the student has no module at path 'conv\.0'"):
        d.setup(make_batch())
    assert not d.is_setup


# --------------------------------------------------------------------------- frozen teacher
def test_teacher_frozen_outside_parameters_state_dict_and_after_train():
    teacher, student, d = build(example=make_batch())
    t_ids = {id(p) for p in teacher.parameters()}
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(id(p) in t_ids for p in d.parameters())
    assert all(k.startswith(("student.", "match_losses.")) for k in d.state_dict())
    d.train()
    assert d.training and student.training and not teacher.training
    teacher.train()  # even if someone flips it, forward runs it in eval mode
    d(make_batch())
    assert not teacher.training
    d.double()  # device/dtype moves reach the teacher
    assert all(p.dtype == torch.float64 for p in teacher.parameters())


def test_distilled_step_changes_only_student_and_adapter_parameters(device):
    data = make_batch()
    teacher, student, d = build()
    d.to(device)  # moves the (unregistered) teacher too
    data = data.to(device)
    assert all(p.device.type == device.type for p in teacher.parameters())
    d.setup(data)
    t0, s0, a0 = snapshot(teacher), snapshot(student), snapshot(d.match_losses)
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    d.train()
    _, losses = d(data)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())
    changed = [k for k, v in s0.items() if not torch.equal(v, student.state_dict()[k])]
    assert "convs.0.lin.weight" in changed and "head.weight" in changed
    assert all(not torch.equal(v, d.match_losses.state_dict()[k]) for k, v in a0.items())


# --------------------------------------------------------------------------- loss values
def test_loss_names_and_values_match_a_manual_computation():
    data = make_batch()
    teacher, student, d = build(example=data)
    d.eval()
    out, losses = d(data)
    assert sorted(losses) == ["t_distill_adapter_mse[convs.0:mean_pool]", "t_distill_logit_mse",
                              "task"]
    z_s = student(data.x, data.edge_index, data.batch)
    z_t = teacher(data.x, data.edge_index, data.batch)
    assert torch.equal(out, z_s)
    h_s = global_mean_pool(student.convs[0](data.x, data.edge_index), data.batch)
    h_t = teacher.convs[1](teacher.convs[0](data.x, data.edge_index).relu(), data.edge_index)
    h_t = global_mean_pool(h_t, data.batch)
    proj = d.match_losses[0].proj
    torch.testing.assert_close(losses["task"], 0.25 * F.cross_entropy(z_s, data.y))
    torch.testing.assert_close(losses["t_distill_logit_mse"], 0.5 * ((z_s - z_t) ** 2).mean())
    torch.testing.assert_close(losses["t_distill_adapter_mse[convs.0:mean_pool]"],
                               2.0 * F.mse_loss(proj(h_s), h_t))


def test_match_params_and_custom_name():
    data = make_batch()
    torch.manual_seed(0)
    d = Distiller(GIN(), GCN(), [
        Match("convs.1", "convs.0", "t_distill_adapter_mse", params={"scale": 3.0}, name="fit"),
    ], call=pyg_call, example=data)
    assert d.match_losses[0].scale == 3.0
    assert list(d(data)[1]) == ["fit"]


def test_batch_level_methods_get_graph_mean_pooled_features():
    data = make_batch(num_graphs=4)
    BatchRecord.calls.clear()
    t, s = GIN(), GCN()
    d = Distiller(t, s, [Match("convs.1", "convs.1", "t_distill_batch_record"),
                         Match("head", "head", "t_distill_batch_record", name="on_logits")],
                  call=pyg_call, example=data)
    BatchRecord.calls.clear()
    d(data)
    (f_s, f_t, batch), (z_s, z_t, batch2) = BatchRecord.calls
    with FeatureHooks(s, ["convs.1"]) as hs:
        s(data.x, data.edge_index, data.batch)
        ref = global_mean_pool(hs.features["convs.1"], data.batch)
    assert f_s.shape == (4, 8) and f_t.shape == (4, 16)
    torch.testing.assert_close(f_s, ref)
    assert batch is None and batch2 is None  # no node context after pooling
    assert torch.equal(z_s, s(data.x, data.edge_index, data.batch))  # graph-level: unchanged


def test_node_level_methods_get_node_features_and_graph_context():
    data = make_batch(num_graphs=3)
    d = Distiller(GIN(), GCN(), [Match("convs.0", "convs.0", "t_distill_node_record")],
                  call=pyg_call, example=data)
    NodeRecord.calls.clear()
    d(data)
    f_s, f_t, batch, edge_index = NodeRecord.calls[0]
    assert f_s.shape == (data.num_nodes, 8) and f_t.shape == (data.num_nodes, 16)
    assert torch.equal(batch, data.batch) and torch.equal(edge_index, data.edge_index)


def test_node_level_method_on_pooled_layer_names_the_fix():
    with pytest.raises(ValueError, match=r"node-level method.*'head'.*hook a node-level layer"):
        Distiller(GIN(), GCN(), [Match("head", "head", "t_distill_node_record")],
                  call=pyg_call, example=make_batch())


def test_graph_context_of_single_data_and_tuples():
    data = make_batch(1)[0]
    data.pos = torch.randn(data.num_nodes, 3)
    ctx = graph_context(data)
    assert torch.equal(ctx["pos"], data.pos)
    assert torch.equal(ctx["batch"], torch.zeros(data.num_nodes, dtype=torch.long))
    assert ctx["num_graphs"] == 1 and torch.equal(ctx["edge_index"], data.edge_index)
    assert graph_context((torch.randn(2, 3), torch.tensor([0, 1]))) == {}
    x, b = torch.randn(5, 2), torch.tensor([0, 0, 1, 1, 1])
    torch.testing.assert_close(mean_pool(x, b, 3),
                               torch.stack([x[:2].mean(0), x[2:].mean(0), torch.zeros(2)]))


# --------------------------------------------------------------------------- errors
def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown distillation method 'nope'.*valid names"):
        Distiller(GIN(), GCN(), [Match("convs.1", "convs.0", "nope")], call=pyg_call)


@pytest.mark.filterwarnings("ignore:Using a target size:UserWarning")  # the mismatch under test
def test_width_mismatch_names_the_match_and_widths():
    with pytest.raises(ValueError, match=r"t_distill_plain_mse\[convs\.0:mean_pool\].*student "
                                         r"width\(s\) 8, teacher width\(s\) 16.*fails on the "
                                         r"first batch"):
        Distiller(GIN(), GCN(), [Match("convs.1", "convs.0", "t_distill_plain_mse")],
                  call=pyg_call, example=make_batch())


def test_argument_errors():
    with pytest.raises(ValueError, match="as many of each"):
        Match(("a", "b"), "c", "sp")
    with pytest.raises(ValueError, match="give one a name"):
        Distiller(GIN(), GCN(), [Match("convs.1", "convs.0", "t_distill_plain_mse"),
                                 Match("convs.0", "convs.0", "t_distill_plain_mse")])
    with pytest.raises(ValueError, match="needs task_loss= and logits="):
        Distiller(GIN(), GCN(), mode="mutual")
    with pytest.raises(ValueError, match="unknown mode"):
        Distiller(GIN(), GCN(), mode="online-ish")
    with pytest.raises(ValueError, match="same classes"):
        Distiller(GIN(classes=4), GCN(), logits="t_distill_logit_mse", call=pyg_call,
                  example=make_batch())


# --------------------------------------------------------------------------- setup / optimizer
def test_optimizer_built_before_lazy_setup_raises_naming_the_fix():
    data = make_batch()
    teacher, student, d = build()
    opt = torch.optim.SGD(d.parameters(), lr=0.1)  # student only: heads do not exist yet
    assert not d.is_setup and len(d.match_losses) == 0
    _, losses = d(data)  # lazy setup on the first batch
    assert d.is_setup and len(d.setup_parameters()) == 2
    sum(losses.values()).backward()
    with pytest.raises(RuntimeError, match=r"distiller\.setup\(example_batch\).*before creating"):
        opt.step()
    opt2 = torch.optim.SGD(d.parameters(), lr=0.1)  # built after setup: fine
    opt2.step()
    d.close()


def test_setup_runs_in_eval_mode_without_side_effects():
    class BNNet(GCN):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x, edge_index, batch):
            return self.bn(super().forward(x, edge_index, batch))

    student = BNNet()
    before = snapshot(student)
    d = Distiller(GIN(), student, [Match("convs.1", "convs.0", "t_distill_adapter_mse")],
                  call=pyg_call, example=make_batch())
    assert d.is_setup and student.training
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())


# --------------------------------------------------------------------------- call signatures
def test_any_call_signature():
    mlp_t = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    mlp_s = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    d = Distiller(mlp_t, mlp_s, [Match("1", "1", "t_distill_adapter_mse")],
                  logits="t_distill_logit_mse", task_loss=nn.CrossEntropyLoss(), example=(x, y))
    out, losses = d((x, y))  # default call: model(data[0]); target: data[-1]
    assert torch.equal(out, mlp_s(x))
    torch.testing.assert_close(losses["task"], F.cross_entropy(mlp_s(x), y))

    class Graph:  # a DGL-style graph object
        def __init__(self, feat):
            self.ndata = {"feat": feat}

    class DGLStyle(nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.lin = nn.Linear(d_in, d_out)

        def forward(self, g, feat):
            return self.lin(feat)

    g = Graph(torch.randn(4, 5))
    dgl_call = lambda m, graph: m(graph, graph.ndata["feat"])  # noqa: E731
    plain_call = lambda m, graph: m(graph.ndata["feat"])  # noqa: E731
    t, s = nn.Sequential(nn.Linear(5, 3)), DGLStyle(5, 3)
    d2 = Distiller(t, s, logits="t_distill_logit_mse", call=dgl_call, teacher_call=plain_call,
                   example=g)
    out, losses = d2(g)
    torch.testing.assert_close(losses["t_distill_logit_mse"],
                               ((s.lin(g.ndata["feat"]) - t(g.ndata["feat"])) ** 2).mean())
    assert default_call(s.lin, (g.ndata["feat"], 0)).shape == (4, 3)


def test_prepare_target():
    assert prepare_target(torch.zeros(4, 3), torch.tensor([[1], [0], [2], [1]])).shape == (4,)
    y = prepare_target(torch.zeros(4, 1), torch.tensor([1, 0, 1, 1]))
    assert y.shape == (4, 1) and y.dtype == torch.float32


# --------------------------------------------------------------------------- modes
def test_multi_teacher_weights_combine_as_documented():
    data = make_batch()
    torch.manual_seed(0)
    t1, t2, s = GIN(hidden=8), GIN(hidden=12), GCN()
    d = Distiller([
        Teacher(t1, [Match("convs.1", "convs.0", "t_distill_plain_mse", weight=2.0)],
                weight=0.3, name="a"),
        Teacher(t2, [Match("convs.1", "convs.1", "t_distill_adapter_mse")], weight=0.7),
    ], s, logits="t_distill_logit_mse", logits_weight=0.5, call=pyg_call, example=data)
    assert not any(id(p) in {id(q) for q in [*t1.parameters(), *t2.parameters()]}
                   for p in d.parameters())
    _, losses = d(data)
    assert sorted(losses) == ["a/t_distill_logit_mse", "a/t_distill_plain_mse[convs.0:mean_pool]",
                              "t1/t_distill_adapter_mse[convs.1:mean_pool]",
                              "t1/t_distill_logit_mse"]
    z_s = s(data.x, data.edge_index, data.batch)
    with FeatureHooks(s, ["convs.0", "convs.1"]) as hs, FeatureHooks(t1, ["convs.1"]) as h1, \
            FeatureHooks(t2, ["convs.1"]) as h2:
        s(data.x, data.edge_index, data.batch)
        z1 = t1(data.x, data.edge_index, data.batch)
        z2 = t2(data.x, data.edge_index, data.batch)
        fs, f1, f2 = hs.pop(), h1.pop(), h2.pop()
    pool = lambda f: global_mean_pool(f, data.batch)  # noqa: E731
    torch.testing.assert_close(losses["a/t_distill_logit_mse"],
                               0.3 * 0.5 * ((z_s - z1) ** 2).mean())
    torch.testing.assert_close(losses["t1/t_distill_logit_mse"],
                               0.7 * 0.5 * ((z_s - z2) ** 2).mean())
    torch.testing.assert_close(losses["a/t_distill_plain_mse[convs.0:mean_pool]"],
                               0.3 * 2.0 * F.mse_loss(pool(fs["convs.0"]), pool(f1["convs.1"])))
    proj = d.match_losses[1].proj
    torch.testing.assert_close(losses["t1/t_distill_adapter_mse[convs.1:mean_pool]"],
                               0.7 * F.mse_loss(proj(pool(fs["convs.1"])), pool(f2["convs.1"])))


def test_mutual_mode_updates_both_networks():
    data = make_batch()
    torch.manual_seed(0)
    peer, s = GCN(), GCN()
    d = Distiller(peer, s, logits="t_distill_logit_mse", logits_weight=0.5,
                  task_loss=nn.CrossEntropyLoss(), call=pyg_call, mode="mutual", example=data)
    assert {id(p) for p in peer.parameters()} <= {id(p) for p in d.parameters()}
    assert any(k.startswith("peer.") for k in d.state_dict())
    d.train()
    assert peer.training
    _, losses = d(data)
    assert sorted(losses) == ["peer/t_distill_logit_mse", "peer/task", "t_distill_logit_mse",
                              "task"]
    z_s, z_p = s(data.x, data.edge_index, data.batch), peer(data.x, data.edge_index, data.batch)
    torch.testing.assert_close(losses["peer/task"], F.cross_entropy(z_p, data.y))
    torch.testing.assert_close(losses["peer/t_distill_logit_mse"], 0.5 * ((z_p - z_s) ** 2).mean())
    # each KL-like term only trains its own side (the other side is detached)
    g = torch.autograd.grad(losses["t_distill_logit_mse"], list(peer.parameters()),
                            allow_unused=True, retain_graph=True)
    assert all(x is None for x in g)
    p0, s0 = snapshot(peer), snapshot(s)
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(p0["head.weight"], peer.head.weight)
    assert not torch.equal(s0["head.weight"], s.head.weight)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_gives_identical_outputs():
    data = make_batch()
    teacher, student, d = build(example=data)
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    _, losses = d(data)
    sum(losses.values()).backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(d.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(1)
    d2 = Distiller(teacher, GCN(), [Match("convs.1", "convs.0", "t_distill_adapter_mse", 2.0)],
                   logits="t_distill_logit_mse", logits_weight=0.5,
                   task_loss=nn.CrossEntropyLoss(), task_weight=0.25, call=pyg_call,
                   example=data)
    d2.load_state_dict(state)
    d3 = Distiller(teacher, GCN(), [Match("convs.1", "convs.0", "t_distill_adapter_mse")],
                   call=pyg_call)
    with pytest.raises(RuntimeError, match=r"pass example= to Distiller.*before load_state_dict"):
        d3.load_state_dict(state)
    d.eval()
    d2.eval()
    out1, l1 = d(data)
    out2, l2 = d2(data)
    assert torch.equal(out1, out2)
    assert all(torch.equal(l1[k], l2[k]) for k in l1)
    assert torch.equal(d.predict(data), out1)


def test_close_removes_hooks():
    teacher, student, d = build(example=make_batch())
    assert len(student.convs[0]._forward_hooks) == 1 and len(teacher.convs[1]._forward_hooks) == 1
    heads = d.match_losses[0]
    with d:
        pass
    assert len(student.convs[0]._forward_hooks) == 0 and len(teacher.convs[1]._forward_hooks) == 0
    d.setup(make_batch())  # hooks back, same heads
    assert len(student.convs[0]._forward_hooks) == 1 and len(d.match_losses) == 1
    assert d.match_losses[0] is heads


# --------------------------------------------------------------------------- registered methods
def test_registered_methods_get_the_documented_inputs():
    """LSP (node level, graph context), SP and HKD (pooled per graph), KD (logits)."""
    from graphkd.losses import get_loss

    data = make_batch(num_graphs=4)
    torch.manual_seed(0)
    t, s = GIN(), GCN()
    d = Distiller(t, s, [Match("convs.1", "convs.0", "lsp", weight=10.0),
                         Match("convs.1", "convs.1", "sp"),
                         Match("convs.1", "convs.1", "hkd", params={"k": 3})],
                  logits="kd", call=pyg_call, example=data)
    _, losses = d(data)
    assert sorted(losses) == ["hkd[convs.1:mean_pool]", "kd", "lsp[convs.0]",
                              "sp[convs.1:mean_pool]"]
    with FeatureHooks(s, ["convs.0", "convs.1"]) as hs, FeatureHooks(t, ["convs.1"]) as ht:
        z_s = s(data.x, data.edge_index, data.batch)
        z_t = t(data.x, data.edge_index, data.batch)
        fs, ft = hs.pop(), ht.pop()
    pool = lambda f: global_mean_pool(f, data.batch)  # noqa: E731
    torch.testing.assert_close(losses["lsp[convs.0]"], 10.0 * get_loss("lsp")(
        fs["convs.0"], ft["convs.1"], batch=data.batch, edge_index=data.edge_index))
    torch.testing.assert_close(losses["sp[convs.1:mean_pool]"],
                               get_loss("sp")(pool(fs["convs.1"]), pool(ft["convs.1"])))
    hkd = d.match_losses[2]
    assert hkd.instance_graph(pool(ft["convs.1"])) is not None  # 4 graphs >= k: graph term on
    torch.testing.assert_close(losses["hkd[convs.1:mean_pool]"],
                               hkd(pool(fs["convs.1"]), pool(ft["convs.1"])))
    torch.testing.assert_close(losses["kd"], get_loss("kd")(z_s, z_t))


@pytest.mark.dgl
def test_dgl_models_and_graph_context():
    from tests.graphkd.test_interop import _require_dgl

    dgl = _require_dgl()  # skips without DGL, fails under GRAPHKD_REQUIRE_DGL=1 (CI)
    from dgl.nn import GraphConv

    class DGLNet(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.conv = GraphConv(4, hidden, allow_zero_in_degree=True)
            self.head = nn.Linear(hidden, 3)

        def forward(self, g, feat):
            h = self.conv(g, feat).relu()
            with g.local_scope():
                g.ndata["h"] = h
                return self.head(dgl.mean_nodes(g, "h"))

    data = make_batch(num_graphs=3)
    g = dgl.batch([dgl.graph((d.edge_index[0], d.edge_index[1]), num_nodes=d.num_nodes)
                   for d in data.to_data_list()])
    g.ndata["feat"] = data.x
    torch.manual_seed(0)
    t, s = DGLNet(16), DGLNet(8)
    d = Distiller(t, s, [Match("conv", "conv", "t_distill_node_record"),
                         Match("conv", "conv", "t_distill_batch_record")],
                  call=lambda m, graph: m(graph, graph.ndata["feat"]),
                  task_loss=nn.CrossEntropyLoss(), target=lambda graph: data.y, example=g)
    NodeRecord.calls.clear()
    BatchRecord.calls.clear()
    out, losses = d(g)
    assert torch.equal(out, s(g, g.ndata["feat"]))
    f_s, f_t, batch, edge_index = NodeRecord.calls[0]
    assert torch.equal(batch, data.batch) and torch.equal(edge_index, data.edge_index)
    torch.testing.assert_close(f_s, s.conv(g, data.x))
    torch.testing.assert_close(BatchRecord.calls[0][0], global_mean_pool(f_s, data.batch))
    torch.testing.assert_close(losses["task"], F.cross_entropy(out, data.y))


# --------------------------------------------------------------------------- PyG's own models
def _node_batch(num_graphs: int = 4) -> Batch:
    data = make_batch(num_graphs)
    data.y = torch.randint(0, 3, (data.num_nodes,), generator=torch.Generator().manual_seed(1))
    return data


@pytest.mark.parametrize("student_cls", [PygGCN, PygGIN, PygGAT])
def test_pyg_basic_gnn_models_out_of_the_box(student_cls):
    """PyG's GCN/GIN/GAT as student and teacher: batch by keyword, node-level outputs."""
    from graphkd.losses import get_loss

    data = _node_batch()
    torch.manual_seed(0)
    teacher = PygGIN(4, 16, num_layers=3, out_channels=3)
    student = student_cls(4, 8, num_layers=2, out_channels=3)
    d = Distiller(teacher, student, [Match("convs.2", "convs.1", "lsp"),
                                     Match("convs.1", "convs.0", "rkd")],
                  logits="kd", task_loss=nn.CrossEntropyLoss(), example=data)  # default call
    d.eval()
    out, losses = d(data)
    assert sorted(losses) == ["kd", "lsp[convs.1]", "rkd[convs.0:mean_pool]", "task"]
    torch.testing.assert_close(out, student(data.x, data.edge_index))
    with FeatureHooks(student, ["convs.0", "convs.1"]) as hs, \
            FeatureHooks(teacher, ["convs.1", "convs.2"]) as ht:
        student(data.x, data.edge_index)
        teacher(data.x, data.edge_index)
        fs, ft = hs.pop(), ht.pop()
    pool = lambda f: global_mean_pool(f, data.batch)  # noqa: E731
    torch.testing.assert_close(losses["lsp[convs.1]"], get_loss("lsp")(
        fs["convs.1"], ft["convs.2"], batch=data.batch, edge_index=data.edge_index))
    torch.testing.assert_close(losses["rkd[convs.0:mean_pool]"],
                               get_loss("rkd")(pool(fs["convs.0"]), pool(ft["convs.1"])))
    torch.testing.assert_close(losses["task"], F.cross_entropy(out, data.y))


# --------------------------------------------------------------------------- pooling by name
def test_explicit_pooling_of_a_node_layer_for_functionally_pooled_models():
    """GCN/GIN here pool with the functional global_mean_pool: match 'convs.0:mean_pool'."""
    data = make_batch(num_graphs=4)
    torch.manual_seed(0)
    t, s = GIN(), GCN()
    d = Distiller(t, s, [Match("convs.1:max_pool", "convs.0:mean_pool", "fitnet"),
                         Match("convs.1", "convs.0:sum_pool", "t_distill_adapter_mse")],
                  call=pyg_call, example=data)
    _, losses = d(data)
    assert sorted(losses) == ["fitnet[convs.0:mean_pool]",
                              "t_distill_adapter_mse[convs.0:sum_pool]"]
    with FeatureHooks(s, ["convs.0"]) as hs, FeatureHooks(t, ["convs.1"]) as ht:
        s(data.x, data.edge_index, data.batch)
        t(data.x, data.edge_index, data.batch)
        fs, ft = hs.pop()["convs.0"], ht.pop()["convs.1"]
    fitnet, adapter = d.match_losses
    torch.testing.assert_close(losses["fitnet[convs.0:mean_pool]"],
                               fitnet(global_mean_pool(fs, data.batch),
                                      global_max_pool(ft, data.batch)))
    torch.testing.assert_close(losses["t_distill_adapter_mse[convs.0:sum_pool]"],
                               adapter(global_add_pool(fs, data.batch),
                                       global_mean_pool(ft, data.batch)))


def test_pooling_errors():
    with pytest.raises(ValueError, match=r"unknown pooling 'avg_pool'.*mean_pool"):
        Match("convs.1", "convs.0:avg_pool", "sp")
    with pytest.raises(ValueError, match=r"node context \('batch', 'edge_index'\).*cannot be "
                                         r"pooled"):
        Distiller(GIN(), GCN(), [Match("convs.1", "convs.0:mean_pool", "lsp")])
    with pytest.raises(ValueError, match=r"student module 'head' gives 5 rows.*'head:mean_pool'"):
        Distiller(GIN(), GCN(), [Match("convs.1:mean_pool", "head:mean_pool", "fitnet")],
                  call=pyg_call, example=make_batch())


# --------------------------------------------------------------------------- call errors
def test_wrong_call_is_caught_at_setup_naming_the_helper():
    data = make_batch()
    with pytest.raises(TypeError, match=r"running the student on the example batch failed.*"
                                        r"missing 2 required positional.*call=pyg_call"):
        Distiller(GIN(), GCN(), [Match("convs.1", "convs.0", "sp")], example=data)
    with pytest.raises(TypeError, match=r"running the teacher on the example batch.*"
                                        r"call=pyg_call"):
        Distiller(GIN(), GCN(), call=pyg_call, teacher_call=default_call, example=data)


# --------------------------------------------------------------------------- names in messages
def test_messages_name_teachers_as_the_user_wrote_them():
    data = make_batch()
    with pytest.raises(ValueError, match=r"the teacher has no module at path 'nope'"):
        Distiller(GIN(), GCN(), [Match("nope", "convs.0", "sp")], call=pyg_call, example=data)
    with pytest.raises(ValueError, match=r"and teacher logits \(5, 4\) differ"):
        Distiller(GIN(classes=4), GCN(), logits="kd", call=pyg_call, example=data)
    with pytest.raises(ValueError, match=r"the teacher\[1\] has no module at path 'nope'"):
        Distiller([Teacher(GIN(), [Match("convs.1", "convs.0", "sp")]),
                   Teacher(GIN(), [Match("nope", "convs.1", "sp")])], GCN(), call=pyg_call,
                  example=data)
    with pytest.raises(ValueError, match=r"student logits \(5, 3\) and teacher 'big' logits"):
        Distiller([Teacher(GIN(classes=4), name="big"), Teacher(GIN())], GCN(), logits="kd",
                  call=pyg_call, example=data)


# --------------------------------------------------------------------------- custom methods
def gram_mse(f_s, f_t):
    return ((f_s @ f_s.T - f_t @ f_t.T) ** 2).mean()


def edge_cos(f_s, f_t, edge_index):
    src, dst = edge_index
    c_s = F.cosine_similarity(f_s[src], f_s[dst])
    c_t = F.cosine_similarity(f_t[src], f_t[dst])
    return F.mse_loss(c_s, c_t)


def test_plain_functions_as_methods():
    data = make_batch(num_graphs=4)
    torch.manual_seed(0)
    t, s = GIN(hidden=8), GCN()
    d = Distiller(t, s, [Match("convs.1", "convs.0", gram_mse, weight=2.0),       # batch level
                         Match("convs.1", "convs.1", edge_cos),                   # node level
                         Match("convs.0", "convs.0", lambda a, b: F.mse_loss(a, b),
                               level="node"),
                         Match("head", "head", nn.MSELoss())],                   # any module
                  call=pyg_call, example=data)
    _, losses = d(data)
    assert sorted(losses) == ["custom[convs.0]", "edge_cos[convs.1]",
                              "gram_mse[convs.0:mean_pool]", "mseloss[head]"]
    assert [m.level for m in d.match_losses] == ["batch", "node", "node", "batch"]
    assert d.match_losses[1].context == ("edge_index",)
    with FeatureHooks(s, ["convs.0", "convs.1", "head"]) as hs, \
            FeatureHooks(t, ["convs.0", "convs.1", "head"]) as ht:
        s(data.x, data.edge_index, data.batch)
        t(data.x, data.edge_index, data.batch)
        fs, ft = hs.pop(), ht.pop()
    pool = lambda f: global_mean_pool(f, data.batch)  # noqa: E731
    torch.testing.assert_close(losses["gram_mse[convs.0:mean_pool]"],
                               2.0 * gram_mse(pool(fs["convs.0"]), pool(ft["convs.1"])))
    torch.testing.assert_close(losses["edge_cos[convs.1]"],
                               edge_cos(fs["convs.1"], ft["convs.1"], data.edge_index))
    torch.testing.assert_close(losses["custom[convs.0]"], F.mse_loss(fs["convs.0"], ft["convs.0"]))
    torch.testing.assert_close(losses["mseloss[head]"], F.mse_loss(fs["head"], ft["head"]))
    with pytest.raises(ValueError, match="Match.level / Match.context describe a function"):
        Match("a", "b", "sp", level="node")


class DeclaresEdgesButIgnoresThem(DistillLoss):
    level = "node"
    context = ("edge_index",)

    def forward(self, f_s, f_t):
        return F.mse_loss(f_s, f_t)


class TakesEdgesUndeclared(DistillLoss):
    level = "node"

    def forward(self, f_s, f_t, edge_index=None):
        return F.mse_loss(f_s, f_t)


def test_context_declaration_is_checked_at_setup():
    data = make_batch()
    with pytest.raises(ValueError, match=r"DeclaresEdgesButIgnoresThem\.context declares "
                                         r"\['edge_index'\] but .*forward does not accept it; "
                                         r"add edge_index=None"):
        Distiller(GIN(hidden=8), GCN(), [Match("convs.1", "convs.1",
                                               DeclaresEdgesButIgnoresThem())],
                  call=pyg_call, example=data)
    with pytest.warns(UserWarning, match=r"TakesEdgesUndeclared\.forward takes \['edge_index'\]"
                                         r".*declare context = \('edge_index',\)"):
        Distiller(GIN(hidden=8), GCN(), [Match("convs.1", "convs.1", TakesEdgesUndeclared())],
                  call=pyg_call, example=data)
