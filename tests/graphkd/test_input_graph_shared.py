"""Input graphs built once per batch (issue 17, item 3): the Distiller builds the EdgeSet of
``edge_index`` once and shares it across every ``LSP(graph="input")`` match on the batch, and
an already validated ``edge_index`` is not range-checked again."""

from __future__ import annotations

import torch

import graphkd.graphs as graphs
from graphkd.distill import Distiller, FeatureHooks, Match, pyg_call
from graphkd.graphs import EdgeSet
from graphkd.losses import get_loss
from tests.graphkd.test_distill import GCN, GIN, make_batch


def _count_builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = EdgeSet.from_edge_index.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(EdgeSet, "from_edge_index", classmethod(counting))
    return calls


def test_two_lsp_matches_build_the_input_graph_once(monkeypatch):
    data = make_batch(num_graphs=4)
    torch.manual_seed(0)
    t, s = GIN(), GCN()
    d = Distiller(t, s, [Match("convs.1", "convs.0", "lsp", weight=2.0, name="a"),
                         Match("convs.0", "convs.1", "lsp", name="b",
                               params={"kernel": "gaussian_l1", "scale": 5.0}),
                         Match("convs.1", "convs.1", "lsp", name="knn",
                               params={"graph": "knn", "k": 2})],
                  call=pyg_call, example=data)
    calls = _count_builds(monkeypatch)
    _, losses = d(data)
    assert len(calls) == 1
    with FeatureHooks(s, ["convs.0", "convs.1"]) as hs, FeatureHooks(t, ["convs.0", "convs.1"]
                                                                      ) as ht:
        s(data.x, data.edge_index, data.batch)
        t(data.x, data.edge_index, data.batch)
        fs, ft = hs.pop(), ht.pop()
    ctx = {"batch": data.batch, "edge_index": data.edge_index}
    assert sorted(losses) == ["a", "b", "knn"]
    torch.testing.assert_close(losses["a"], 2.0 * get_loss("lsp")(
        fs["convs.0"], ft["convs.1"], **ctx))
    torch.testing.assert_close(losses["b"], get_loss(
        "lsp", kernel="gaussian_l1", scale=5.0)(fs["convs.1"], ft["convs.0"], **ctx))
    torch.testing.assert_close(losses["knn"], get_loss("lsp", graph="knn", k=2)(
        fs["convs.1"], ft["convs.1"], **ctx))
    calls.clear()
    d(make_batch(num_graphs=4, seed=1))  # a new batch: built again, once
    assert len(calls) == 1


def test_lsp_forward_uses_a_prebuilt_input_graph():
    data = make_batch(num_graphs=3)
    n = data.num_nodes
    f_s, f_t = torch.randn(n, 4, dtype=torch.float64), torch.randn(n, 6, dtype=torch.float64)
    loss = get_loss("lsp", kernel="gaussian_l1")
    edges = EdgeSet.from_edge_index(data.edge_index, n, batch=data.batch)
    assert loss.takes_input_edges and not get_loss("lsp", graph="knn").takes_input_edges
    torch.testing.assert_close(
        loss(f_s, f_t, batch=data.batch, edge_index=data.edge_index, edges=edges),
        loss(f_s, f_t, batch=data.batch, edge_index=data.edge_index), rtol=0, atol=0)


def test_validated_edge_index_is_not_checked_again(monkeypatch):
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    first = EdgeSet.from_edge_index(edge_index, 4)
    checks: list[str] = []
    real = graphs.check_index
    monkeypatch.setattr(graphs, "check_index", lambda i, n, name: checks.append(name) or real(
        i, n, name))
    again = EdgeSet.from_edge_index(edge_index, 4)
    assert checks == []
    assert torch.equal(again.row, first.row) and torch.equal(again.col, first.col)
    assert again.degree == first.degree
    EdgeSet.from_edge_index(edge_index, 5)  # another node count: checked
    assert checks == ["row", "col"]
    checks.clear()
    edge_index[0, 0] = 3  # modified in place: checked again
    EdgeSet.from_edge_index(edge_index, 4)
    assert checks == ["row", "col"]
    checks.clear()
    edge_index[0, 0] = 7  # an out-of-range edit is caught
    try:
        EdgeSet.from_edge_index(edge_index, 4)
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("an edited, out-of-range edge_index was not checked")
