"""PyG <-> DGL <-> EdgeSet interop, and DGL models in the Distiller (also cross-framework).

DGL tests skip when DGL is missing, unless ``GRAPHKD_REQUIRE_DGL=1`` (set by ``make test`` /
CI), where a missing DGL fails them instead of hiding them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv, global_mean_pool

from graphkd.distill import Distiller, Match
from graphkd.graphs import EdgeSet
from graphkd.interop import (
    DGL_EXTRA_HINT,
    as_edgeset,
    dgl_call,
    dgl_to_edge_index,
    dgl_to_edgeset,
    dgl_to_pyg,
    edge_index_to_dgl,
    edgeset_to_dgl,
    graph_context,
    graph_target,
    import_dgl,
    is_dgl_graph,
    pyg_call_any,
    pyg_to_dgl,
)
from graphkd.losses.graph import gcrd_loss, lsp_loss


def _require_dgl():
    """The dgl module; skip without it, or fail when GRAPHKD_REQUIRE_DGL=1 (CI)."""
    try:
        return import_dgl()
    except ImportError as err:
        if os.environ.get("GRAPHKD_REQUIRE_DGL", "") not in ("", "0"):
            pytest.fail(f"GRAPHKD_REQUIRE_DGL is set but DGL cannot be imported: {err}")
        pytest.skip(f"DGL not installed ({err})")


@pytest.fixture(scope="module")
def dgl():
    return _require_dgl()


def _graphs() -> list[Data]:
    """Three small graphs: isolated nodes (one trailing), and a graph without any edge."""
    g = torch.Generator().manual_seed(1)
    d0 = Data(x=torch.randn(5, 4, generator=g),
              edge_index=torch.tensor([[0, 1, 2, 1, 3], [1, 0, 1, 2, 1]]))  # node 4 isolated
    d1 = Data(x=torch.randn(3, 4, generator=g), edge_index=torch.zeros(2, 0, dtype=torch.long))
    d2 = Data(x=torch.randn(6, 4, generator=g),
              edge_index=torch.tensor([[0, 2, 3, 4, 5, 2, 0], [2, 0, 2, 2, 4, 3, 3]]))  # 1 iso
    for i, d in enumerate((d0, d1, d2)):
        d.y = torch.tensor([i % 2])
    return [d0, d1, d2]


def _pyg_batch() -> Batch:
    return Batch.from_data_list(_graphs())


def _dgl_batch(dgl):
    gs = []
    for d in _graphs():
        g = dgl.graph((d.edge_index[0], d.edge_index[1]), num_nodes=d.num_nodes)
        g.ndata["feat"] = d.x
        gs.append(g)
    return dgl.batch(gs)


# --------------------------------------------------------------------------- no DGL needed
def test_import_dgl_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dgl", None)  # makes `import dgl` raise ImportError
    with pytest.raises(ImportError, match=r"pip install graphkd\[dgl\]"):
        import_dgl()
    assert "graphkd[dgl]" in DGL_EXTRA_HINT


def test_missing_dgl_fails_when_required_and_skips_otherwise(monkeypatch):
    monkeypatch.setitem(sys.modules, "dgl", None)
    monkeypatch.setenv("GRAPHKD_REQUIRE_DGL", "1")
    with pytest.raises(pytest.fail.Exception, match="GRAPHKD_REQUIRE_DGL is set"):
        _require_dgl()
    monkeypatch.delenv("GRAPHKD_REQUIRE_DGL")
    with pytest.raises(pytest.skip.Exception, match="DGL not installed"):
        _require_dgl()


def test_interop_import_does_not_import_dgl():
    code = ("import sys, graphkd.interop, graphkd.distill; "
            "assert 'dgl' not in sys.modules, 'dgl imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_as_edgeset_from_pyg_matches_from_edge_index():
    b = _pyg_batch()
    e = as_edgeset(b)
    ref = EdgeSet.from_edge_index(b.edge_index, b.num_nodes, batch=b.batch)
    assert torch.equal(e.ptr, ref.ptr) and torch.equal(e.col, ref.col)
    assert torch.equal(e.batch, b.batch) and e.num_graphs == 3
    single = as_edgeset(_graphs()[0])
    assert torch.equal(single.batch, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="PyG Data/Batch, a DGLGraph"):
        as_edgeset(3.0)


def test_is_dgl_graph_duck_typing():
    assert not is_dgl_graph(_pyg_batch())
    assert not is_dgl_graph(torch.zeros(2)) and not is_dgl_graph(None)


# --------------------------------------------------------------------------- conversions
@pytest.mark.dgl
def test_dgl_to_edge_index_matches_pyg_batch(dgl):
    b, g = _pyg_batch(), _dgl_batch(dgl)
    ei, batch, n = dgl_to_edge_index(g)
    assert n == b.num_nodes == 14
    assert torch.equal(ei, b.edge_index)  # dgl.batch and PyG offset node ids the same way
    assert torch.equal(batch, b.batch)
    assert batch.tolist() == [0] * 5 + [1] * 3 + [2] * 6  # isolated/edgeless graphs kept


@pytest.mark.dgl
def test_dgl_to_edgeset_equals_pyg_edgeset(dgl):
    b, g = _pyg_batch(), _dgl_batch(dgl)
    e, ref = dgl_to_edgeset(g), as_edgeset(b)
    assert torch.equal(e.ptr, ref.ptr) and torch.equal(e.row, ref.row)
    assert torch.equal(e.col, ref.col) and torch.equal(e.batch, ref.batch)
    assert e.num_graphs == 3 and e.num_rows == 14
    # independent check: row v lists the sources of v's in-edges, in edge order
    src, dst = g.edges()
    for v in range(14):
        assert e.col[e.ptr[v]:e.ptr[v + 1]].tolist() == src[dst == v].tolist()
    assert e.counts[4] == 0 and e.counts[5:8].sum() == 0  # isolated node, edgeless graph


@pytest.mark.dgl
def test_pyg_dgl_pyg_round_trip(dgl):
    b = _pyg_batch()
    b.pos = torch.randn(b.num_nodes, 3)
    b.edge_attr = torch.arange(b.edge_index.shape[1], dtype=torch.float).unsqueeze(1)
    g = pyg_to_dgl(b)
    assert g.batch_size == 3
    assert g.batch_num_nodes().tolist() == [5, 3, 6]
    assert g.batch_num_edges().tolist() == [5, 0, 7]
    assert torch.equal(g.ndata["feat"], b.x) and torch.equal(g.ndata["pos"], b.pos)
    assert torch.equal(g.edata["edge_attr"], b.edge_attr)
    back = dgl_to_pyg(g, y=b.y)
    assert back.num_graphs == 3
    for key in ("edge_index", "batch", "ptr", "x", "pos", "edge_attr", "y"):
        assert torch.equal(back[key], b[key]), key


@pytest.mark.dgl
def test_dgl_pyg_dgl_round_trip_unsorted_edges(dgl):
    # a graph whose edges are not grouped by graph: dgl_to_pyg groups them (stable)
    g = dgl.graph((torch.tensor([5, 0, 6, 1]), torch.tensor([6, 1, 5, 2])), num_nodes=7)
    g.set_batch_num_nodes(torch.tensor([4, 3]))
    g.set_batch_num_edges(torch.tensor([2, 2]))
    g.ndata["feat"] = torch.arange(7.0).unsqueeze(1)
    p = dgl_to_pyg(g)
    assert p.edge_index.tolist() == [[0, 1, 5, 6], [1, 2, 6, 5]]
    assert p.batch.tolist() == [0] * 4 + [1] * 3
    assert torch.equal(p.x, g.ndata["feat"])
    g2 = pyg_to_dgl(p)
    ei, batch, _ = dgl_to_edge_index(g2)
    assert torch.equal(ei, p.edge_index) and torch.equal(batch, p.batch)


@pytest.mark.dgl
def test_edgeset_dgl_round_trip(dgl):
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    batch = torch.tensor([0] * 5 + [1] * 7)
    e = EdgeSet.knn(x, k=3, batch=batch)
    g = edgeset_to_dgl(e)
    assert g.batch_num_nodes().tolist() == [5, 7]
    back = dgl_to_edgeset(g)
    assert torch.equal(back.ptr, e.ptr) and torch.equal(back.col, e.col)
    assert torch.equal(back.batch, e.batch) and back.degree == 3
    with pytest.raises(ValueError, match="bipartite"):
        edgeset_to_dgl(EdgeSet.dense(2, 3))


@pytest.mark.dgl
def test_edge_index_to_dgl_errors(dgl):
    ei = torch.tensor([[0, 3], [1, 2]])
    with pytest.raises(ValueError, match="between two graphs"):
        edge_index_to_dgl(torch.tensor([[0], [3]]), batch=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="grouped by graph"):
        edge_index_to_dgl(torch.tensor([[3, 0], [2, 1]]), batch=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="sorted"):
        edge_index_to_dgl(ei, batch=torch.tensor([1, 0, 0, 1]))
    with pytest.raises(ValueError, match="outside"):
        edge_index_to_dgl(ei, num_nodes=3)
    # empty trailing graph kept with num_graphs
    g = edge_index_to_dgl(ei, batch=torch.tensor([0, 0, 1, 1]), num_graphs=3)
    assert g.batch_num_nodes().tolist() == [2, 2, 0]


@pytest.mark.dgl
def test_graph_context_and_target_on_dgl_pairs(dgl):
    b, g = _pyg_batch(), _dgl_batch(dgl)
    labels = torch.tensor([0, 1, 0])
    for data in (g, (g, labels)):
        ctx = graph_context(data)
        assert torch.equal(ctx["edge_index"], b.edge_index)
        assert torch.equal(ctx["batch"], b.batch)
        assert ctx["num_nodes"] == 14 and ctx["num_graphs"] == 3
    assert torch.equal(graph_target((g, labels)), labels)
    assert torch.equal(graph_target(b), b.y)
    with pytest.raises(ValueError, match="graph labels"):
        graph_target(g)
    pctx = graph_context(b)
    assert torch.equal(pctx["edge_index"], b.edge_index)


# --------------------------------------------------------------------------- losses
def _lsp_reference(f_s, f_t, edge_index, n, gamma=0.5):
    """LSP by loops over nodes: softmax of -gamma||h_v - h_u||^2 over in-neighbours u."""
    total, count = 0.0, 0
    for v in range(n):
        nbr = edge_index[0][edge_index[1] == v]
        if nbr.numel() == 0:
            continue
        ls = -gamma * ((f_s[v] - f_s[nbr]) ** 2).sum(-1)
        lt = -gamma * ((f_t[v] - f_t[nbr]) ** 2).sum(-1)
        pt = torch.softmax(lt.double(), 0)
        total += (pt * (torch.log_softmax(lt.double(), 0)
                        - torch.log_softmax(ls.double(), 0))).sum()
        count += 1
    return total / count


class PygNet(nn.Module):
    """A PyG GCN: convs.0, convs.1, mean pool, linear head."""

    def __init__(self, hidden: int, in_dim: int = 4, classes: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList([GCNConv(in_dim, hidden), GCNConv(hidden, hidden)])
        self.head = nn.Linear(hidden, classes)

    def forward(self, x, edge_index, batch):
        for conv in self.convs:
            x = conv(x, edge_index).relu()
        return self.head(global_mean_pool(x, batch))


def _dgl_gat(dgl, hidden: int = 6, heads: int = 2, classes: int = 2) -> nn.Module:
    from dgl.nn import GATConv, GraphConv

    class DGLGAT(nn.Module):
        """A DGL teacher: GATConv (heads flattened by `flat`), GraphConv, mean pool, head."""

        def __init__(self) -> None:
            super().__init__()
            self.gat = GATConv(4, hidden, heads, allow_zero_in_degree=True)
            self.flat = nn.Flatten(1)
            self.conv = GraphConv(hidden * heads, hidden, allow_zero_in_degree=True)
            self.head = nn.Linear(hidden, classes)

        def forward(self, g, x):
            h = self.flat(self.gat(g, x)).relu()
            h = self.conv(g, h).relu()
            with g.local_scope():
                g.ndata["h"] = h
                return self.head(dgl.mean_nodes(g, "h"))

    return DGLGAT()


def _distiller(teacher, student, teacher_call, example):
    return Distiller(
        teacher, student,
        [Match("conv", "convs.1", "lsp"),
         Match("flat", "convs.0", "gcrd", params={"proj_dim": 5, "head": "linear"})],
        logits="kd", task_loss=nn.CrossEntropyLoss(),
        call=pyg_call_any(), teacher_call=teacher_call, context=graph_context,
        target=graph_target, example=example)


@pytest.mark.dgl
def test_lsp_gcrd_same_value_from_pyg_and_dgl_batches(dgl):
    b, g = _pyg_batch(), _dgl_batch(dgl)
    torch.manual_seed(0)
    f_s, f_t = torch.randn(14, 3), torch.randn(14, 8)
    # pure functions on the EdgeSet read from either framework
    v_pyg = lsp_loss(f_s, f_t, as_edgeset(b))
    v_dgl = lsp_loss(f_s, f_t, as_edgeset(g))
    assert torch.equal(v_pyg, v_dgl)
    ref = _lsp_reference(f_s, f_t, b.edge_index, 14)
    torch.testing.assert_close(v_dgl.double(), ref, rtol=1e-5, atol=1e-7)
    # through the Distiller: a DGL teacher and a PyG student, fed a PyG batch or a DGL batch
    torch.manual_seed(0)
    teacher, student = _dgl_gat(dgl), PygNet(5)
    d = _distiller(teacher, student, dgl_call(), b)
    d.eval()  # GCRD heads' BatchNorm (none with head="linear") and dropout: deterministic
    _, l_pyg = d(b)
    _, l_dgl = d((g, b.y))
    assert sorted(l_pyg) == ["gcrd[convs.0]", "kd", "lsp[convs.1]", "task"]
    for key in l_pyg:
        torch.testing.assert_close(l_pyg[key], l_dgl[key], rtol=1e-6, atol=1e-7)
    # and the values are the pure functions on independently computed features
    h0 = student.convs[0](b.x, b.edge_index).relu()
    h1 = student.convs[1](h0, b.edge_index)
    with torch.no_grad():
        t_flat = teacher.flat(teacher.gat(g, g.ndata["feat"]))
        t_conv = teacher.conv(g, t_flat.relu())
    torch.testing.assert_close(l_dgl["lsp[convs.1]"],
                               _lsp_reference(h1, t_conv, b.edge_index, 14).float(),
                               rtol=1e-4, atol=1e-6)
    gcrd = d.match_losses[1]
    torch.testing.assert_close(
        l_dgl["gcrd[convs.0]"],
        gcrd_loss(gcrd.head_s(student.convs[0](b.x, b.edge_index)), gcrd.head_t(t_flat)))


@pytest.mark.dgl
def test_dgl_teacher_pyg_student_training_step(dgl):
    b, g = _pyg_batch(), _dgl_batch(dgl)
    data = (g, b.y)
    torch.manual_seed(0)
    teacher, student = _dgl_gat(dgl), PygNet(5)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = _distiller(teacher, student, dgl_call(), data)
    opt = torch.optim.SGD(d.parameters(), lr=0.5)
    held = {id(p) for grp in opt.param_groups for p in grp["params"]}
    assert not any(id(p) in held for p in teacher.parameters())  # frozen teacher outside
    s_before = [p.detach().clone() for p in student.parameters()]
    d.train()
    assert not teacher.training
    _, losses = d(data)
    total = sum(losses.values())
    assert torch.isfinite(total) and losses["lsp[convs.1]"] > 0
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert student.convs[1].lin.weight.grad.abs().sum() > 0  # LSP reaches the hooked layer
    # the gradient of the LSP term alone equals autograd through the reference computation
    student.zero_grad()
    _, losses = d(data)
    losses["lsp[convs.1]"].backward()
    g_ours = student.convs[1].lin.weight.grad.clone()
    student.zero_grad()
    h1 = student.convs[1](student.convs[0](b.x, b.edge_index).relu(), b.edge_index)
    with torch.no_grad():
        t_conv = teacher.conv(g, teacher.flat(teacher.gat(g, g.ndata["feat"])).relu())
    _lsp_reference(h1, t_conv, b.edge_index, 14).backward()
    torch.testing.assert_close(g_ours, student.convs[1].lin.weight.grad.float(), rtol=1e-3,
                               atol=1e-6)
    # one optimizer step moves the student, never the teacher
    student.zero_grad()
    _, losses = d(data)
    sum(losses.values()).backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(s_before, student.parameters()))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k


@pytest.mark.dgl
def test_dgl_student_on_pyg_batches(dgl):
    """The reverse direction: a PyG teacher and a DGL student on PyG batches."""
    b = _pyg_batch()
    torch.manual_seed(0)
    teacher, student = PygNet(6), _dgl_gat(dgl, hidden=3)
    d = Distiller(teacher, student, [Match("convs.1", "conv", "lsp")], logits="kd",
                  call=dgl_call(), teacher_call=pyg_call_any(), context=graph_context,
                  example=b)
    _, losses = d(b)
    with torch.no_grad():
        t1 = teacher.convs[1](teacher.convs[0](b.x, b.edge_index).relu(), b.edge_index)
    g = pyg_to_dgl(b)
    s1 = student.conv(g, student.flat(student.gat(g, b.x)).relu())
    torch.testing.assert_close(losses["lsp[conv]"], lsp_loss(s1, t1, as_edgeset(b)))
    F.mse_loss(losses["lsp[conv]"], torch.zeros(())).backward()
    assert student.gat.fc.weight.grad is not None


@pytest.mark.dgl
def test_fit_and_evaluate_on_dgl_batches(dgl):
    """graphkd.train drives a DGL-teacher -> PyG-student Distiller on (graph, labels) batches."""
    from graphkd.train import evaluate, fit

    b, g = _pyg_batch(), _dgl_batch(dgl)
    data = (g, b.y)
    torch.manual_seed(0)
    teacher, student = _dgl_gat(dgl), PygNet(5)
    d = _distiller(teacher, student, dgl_call(), data)
    before = [p.detach().clone() for p in student.parameters()]
    fit(d, [data], [data], epochs=2, progress=False, lr=1e-2, restore_best=False)
    assert any(not torch.equal(a, p) for a, p in zip(before, student.parameters()))
    ev = evaluate(d, [data])
    assert ev["num_samples"] == 3
    expected = (student(b.x, b.edge_index, b.batch).argmax(1) == b.y).float().mean()
    torch.testing.assert_close(torch.tensor(ev["accuracy"]), expected, check_dtype=False)


# --------------------------------------------------------------------------- layering
def test_interop_sits_below_distill_and_shares_the_readers_of_inputs():
    """interop imports nothing from distill (not even lazily); its readers are inputs'."""
    import ast
    import inspect

    import graphkd.inputs
    import graphkd.interop

    tree = ast.parse(inspect.getsource(graphkd.interop))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith(("graphkd.distill", "graphkd.train")) for m in imported)
    for name in ("graph_context", "graph_target", "is_dgl_graph", "is_pyg_data"):
        assert getattr(graphkd.interop, name) is getattr(graphkd.inputs, name)


# --------------------------------------------------------------------------- PyG's models, DGL's
class _DGLGIN(nn.Module):
    """A DGL GIN (dgl.nn.GINConv), graph classifier: the README's teacher."""

    def __init__(self, dgl, d_in: int, hidden: int, classes: int = 2) -> None:
        super().__init__()
        from dgl.nn import GINConv

        self.dgl = dgl
        self.layers = nn.ModuleList([GINConv(nn.Linear(d_in, hidden), "sum"),
                                     GINConv(nn.Linear(hidden, hidden), "sum")])
        self.head = nn.Linear(hidden, classes)

    def forward(self, g, feat):
        for layer in self.layers:
            feat = layer(g, feat).relu()
        with g.local_scope():
            g.ndata["h"] = feat
            return self.head(self.dgl.mean_nodes(g, "h"))


class _PygGraphGIN(nn.Module):
    """PyG's own GIN (BasicGNN) + functional global_mean_pool."""

    def __init__(self, d_in: int, hidden: int, classes: int = 2) -> None:
        super().__init__()
        from torch_geometric.nn.models import GIN

        self.gnn = GIN(d_in, hidden, num_layers=2)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x, edge_index, batch):
        return self.head(global_mean_pool(self.gnn(x, edge_index), batch))


@pytest.mark.dgl
def test_dgl_gin_teacher_pyg_gin_student_on_pyg_and_dgl_batches(dgl):
    from torch_geometric.nn.models import GIN

    b, g = _pyg_batch(), _dgl_batch(dgl)
    torch.manual_seed(0)
    teacher, student = _DGLGIN(dgl, 4, 16), _PygGraphGIN(4, 8)
    d = Distiller(teacher, student, [Match("layers.1", "gnn.convs.1", "lsp", weight=10.0),
                                     Match("layers.1", "gnn.convs.1", "rkd")],
                  logits="kd", task_loss=nn.CrossEntropyLoss(), call=pyg_call_any(),
                  teacher_call=dgl_call(), example=b)
    _, l_pyg = d(b)
    _, l_dgl = d((g, b.y))
    assert sorted(l_pyg) == ["kd", "lsp[gnn.convs.1]", "rkd[gnn.convs.1:mean_pool]", "task"]
    for key in l_pyg:
        torch.testing.assert_close(l_pyg[key], l_dgl[key])
    h_s = student.gnn.convs[1](student.gnn.convs[0](b.x, b.edge_index).relu(), b.edge_index)
    with torch.no_grad():
        h_t = teacher.layers[1](g, teacher.layers[0](g, g.ndata["feat"]).relu())
    torch.testing.assert_close(l_dgl["lsp[gnn.convs.1]"],
                               10.0 * lsp_loss(h_s, h_t, as_edgeset(b)))
    # the README's variant: PyG's GIN as a node-level student, no task loss
    d2 = Distiller(teacher, GIN(4, 8, num_layers=2, out_channels=2),
                   [Match("layers.1", "convs.1", "lsp", weight=10.0)],
                   call=pyg_call_any(), teacher_call=dgl_call(), example=(g, b.y))
    assert list(d2(b)[1]) == ["lsp[convs.1]"]


@pytest.mark.dgl
def test_wrong_call_on_dgl_batches_names_the_helper(dgl):
    from graphkd.distill import pyg_call

    g = _dgl_batch(dgl)
    student = _PygGraphGIN(4, 8)
    with pytest.raises(AttributeError, match=r"running the student.*DGL graph.*"
                                             r"call=pyg_call_any\(\)"):
        Distiller(_DGLGIN(dgl, 4, 16), student, logits="kd", call=pyg_call,
                  teacher_call=dgl_call(), example=g)
    with pytest.raises(AttributeError, match=r"running the teacher.*DGL graph.*_DGLGIN\.forward"
                                             r"\(g, feat\); pass call=dgl_call\(\)"):
        Distiller(_DGLGIN(dgl, 4, 16), student, logits="kd", call=pyg_call_any(), example=g)
