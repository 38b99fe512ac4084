"""graphkd.inputs: model calls (PyG BasicGNN by keyword), targets, graph context, pooling,
device moves and the call hints."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_max_pool, global_mean_pool
from torch_geometric.nn.models import GAT, GCN, GIN

from graphkd.inputs import (
    POOLS,
    call_hint,
    call_model,
    default_call,
    default_target,
    graph_context,
    logits_of,
    pool,
    pyg_call,
    pyg_forward,
    to_device,
)


def make_batch(num_graphs: int = 3) -> Batch:
    g = torch.Generator().manual_seed(0)
    graphs = []
    for i in range(num_graphs):
        n = 3 + i
        src = torch.arange(n)
        ring = torch.stack([torch.cat([src, (src + 1) % n]), torch.cat([(src + 1) % n, src])])
        graphs.append(Data(x=torch.randn(n, 4, generator=g), edge_index=ring,
                           y=torch.tensor([i % 2])))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("cls", [GCN, GIN, GAT])
def test_pyg_call_runs_pyg_basic_gnns_with_batch_by_keyword(cls):
    """GCN/GIN/GAT read a third positional argument as edge_weight: batch goes by keyword."""
    data = make_batch()
    torch.manual_seed(0)
    model = cls(4, 8, num_layers=2, out_channels=3)
    ref = model(data.x, data.edge_index)
    torch.testing.assert_close(pyg_call(model, data), ref)
    torch.testing.assert_close(default_call(model, data), ref)  # BasicGNN detected
    torch.testing.assert_close(pyg_call(model, (data, data.y)), ref)  # (graph, labels) pair


def test_pyg_forward_follows_the_signature():
    seen = {}

    class Positional(nn.Module):
        def forward(self, x, edge_index, b):
            seen["b"] = b
            return x

    class TwoArgs(nn.Module):
        def forward(self, x, edge_index):
            return x + 1

    class Kw(nn.Module):
        def forward(self, x, edge_index, **kw):
            seen["kw"] = kw
            return x

    class EdgeWeight(nn.Module):
        def forward(self, x, edge_index, edge_weight=None):
            seen["w"] = edge_weight
            return x

    x, ei, batch = torch.zeros(2, 1), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2)
    pyg_forward(EdgeWeight(), x, ei, batch)
    assert seen["w"] is None  # never batch as edge weights
    pyg_forward(Positional(), x, ei, batch)
    assert seen["b"] is batch
    assert torch.equal(pyg_forward(TwoArgs(), x, ei, batch), x + 1)
    pyg_forward(Kw(), x, ei, batch)
    assert seen["kw"] == {"batch": batch}


def test_default_call_and_target_and_logits():
    lin = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    assert torch.equal(default_call(lin, (x, y)), lin(x))
    assert default_target((x, y)) is y
    data = make_batch()
    assert default_target(data) is data.y
    with pytest.raises(ValueError, match="target=lambda data"):
        default_target(Data(x=x))
    assert logits_of((x, 1)) is x
    with pytest.raises(TypeError, match="make `call` return the logits"):
        logits_of({"logits": x})


def test_graph_context_of_pyg_batches_pairs_and_tensors():
    data = make_batch()
    ctx = graph_context(data)
    assert torch.equal(ctx["batch"], data.batch) and ctx["num_graphs"] == 3
    assert ctx["num_nodes"] == data.num_nodes and torch.equal(ctx["edge_index"],
                                                              data.edge_index)
    pair = graph_context((data, data.y))
    assert torch.equal(pair["batch"], data.batch)
    assert graph_context(torch.zeros(3)) == {} and graph_context((torch.zeros(3), 1)) == {}


def test_pools_match_pyg():
    data = make_batch()
    ctx = graph_context(data)
    x = torch.randn(data.num_nodes, 5)
    torch.testing.assert_close(pool(x, ctx), global_mean_pool(x, data.batch))
    torch.testing.assert_close(pool(x, ctx, "max_pool"), global_max_pool(x, data.batch))
    torch.testing.assert_close(POOLS["sum_pool"](x, data.batch, 3),
                               torch.stack([x[data.batch == i].sum(0) for i in range(3)]))
    per_graph = torch.randn(3, 5)
    assert pool(per_graph, ctx) is per_graph  # already one row per graph


def test_to_device_moves_tuples_and_batches():
    data = make_batch()
    moved = to_device((data, torch.ones(2), 3), "cpu")
    assert isinstance(moved, tuple) and moved[2] == 3
    assert moved[0].x.device.type == "cpu"


def test_call_model_names_the_helper_on_a_dry_run():
    data = make_batch()

    class PygStyle(nn.Module):
        def forward(self, x, edge_index, batch):
            return x

    with pytest.raises(TypeError, match=r"student.*PygStyle\.forward\(x, edge_index, "
                                        r"batch\).*call=pyg_call"):
        call_model(default_call, PygStyle(), data, "student", check=True)
    with pytest.raises(TypeError):  # not a dry run: the raw error
        call_model(default_call, PygStyle(), data, "student")
    assert "call=lambda" in call_hint(nn.Linear(2, 2), torch.zeros(2))

    class WholeBatch(nn.Module):
        def forward(self, data):
            return data.x

    with pytest.raises(TypeError, match=r"WholeBatch\.forward\(data\), which takes the whole "
                                        r"batch: drop call="):
        call_model(pyg_call, WholeBatch(), data, "student", check=True)
