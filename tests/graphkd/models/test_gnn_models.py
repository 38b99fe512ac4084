"""GIN-E / GCN / MLP and the OGB encoders against formulas written here."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from graphkd.datasets import ATOM_FEATURE_DIMS, smiles_to_data
from graphkd.models import GCN, GIN, MLP, AtomEncoder, BondEncoder, build_model

SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "C1CCN(CC1)C(=O)c1ccncc1", "OCC(N)C(=O)O"]


def _randomize_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)


def _mols() -> Batch:
    return Batch.from_data_list([smiles_to_data(s) for s in SMILES])


def _permute_nodes(data: Batch, gen: torch.Generator) -> Batch:
    """Permute nodes within each graph (relabel edges) and shuffle the edge order."""
    perm = torch.cat([
        (data.batch == g).nonzero().view(-1)[torch.randperm(int((data.batch == g).sum()),
                                                            generator=gen)]
        for g in range(data.num_graphs)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    eperm = torch.randperm(data.edge_index.shape[1], generator=gen)
    return Batch(x=data.x[perm], edge_index=inv[data.edge_index][:, eperm],
                 edge_attr=data.edge_attr[eperm], batch=data.batch[perm], ptr=data.ptr)


def test_atom_and_bond_encoders_sum_one_table_per_column():
    enc = AtomEncoder(8)
    x = torch.tensor([[5, 0, 3, 5, 1, 0, 1, 1, 1], [118, 4, 11, 11, 9, 5, 5, 0, 0]])
    ref = sum(enc.embeddings[j].weight[x[:, j]] for j in range(9))
    torch.testing.assert_close(enc(x), ref)
    assert [e.num_embeddings for e in enc.embeddings] == ATOM_FEATURE_DIMS
    assert [e.num_embeddings for e in BondEncoder(4).embeddings] == [5, 6, 2]


def test_atom_encoder_rejects_bad_features():
    enc = AtomEncoder(4)
    with pytest.raises(ValueError, match="in_channels=F"):
        enc(torch.randn(3, 9))
    with pytest.raises(ValueError, match="column 2 has values in"):
        enc(torch.tensor([[5, 0, 12, 5, 1, 0, 1, 1, 1]]))


@pytest.mark.parametrize("make", [
    lambda: GIN(3, hidden=16, num_layers=3),
    lambda: GIN(3, hidden=16, num_layers=2, edge_features=False),
    lambda: GCN(3, hidden=16, num_layers=2),
    lambda: MLP(3, hidden=16, num_layers=2),
])
def test_graph_models_invariant_to_node_order(device, gen, make):
    model = make()
    _randomize_bn(model)
    model = model.to(device).eval()
    data = _mols()
    perm = _permute_nodes(data, gen)
    out = model(data.to(device))
    out_p = model(perm.to(device))
    assert out.shape == (3, 3)
    torch.testing.assert_close(out_p, out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_gine_layer_matches_message_passing_formula():
    torch.manual_seed(0)
    model = GIN(2, hidden=8, num_layers=2).eval()
    _randomize_bn(model)
    block = model.convs[0]
    block.conv.eps.data.fill_(0.3)
    data = smiles_to_data("CC(=O)N")
    h = torch.randn(data.num_nodes, 8)
    e = block.bond_encoder(data.edge_attr)
    agg = (1.3) * h.clone()
    for k, (s, d) in enumerate(data.edge_index.T.tolist()):
        agg[d] = agg[d] + torch.relu(h[s] + e[k])
    ref = torch.relu(block.bn(block.conv.nn(agg)))
    torch.testing.assert_close(block(h, data.edge_index, data.edge_attr), ref,
                               atol=1e-5, rtol=1e-5)


def test_gcn_layer_matches_dense_normalized_adjacency():
    model = GCN(2, hidden=6, num_layers=2).eval()
    data = smiles_to_data("c1ccccc1CO")
    n = data.num_nodes
    h = torch.randn(n, 6)
    a = torch.zeros(n, n)
    a[data.edge_index[1], data.edge_index[0]] = 1.0
    a = a + torch.eye(n)
    dinv = a.sum(1).rsqrt()
    conv = model.convs[0].conv
    ref = (dinv[:, None] * a * dinv[None, :]) @ (h @ conv.lin.weight.T) + conv.bias
    torch.testing.assert_close(conv(h, data.edge_index), ref, atol=1e-5, rtol=1e-5)


def test_graph_model_batched_equals_separate():
    model = GIN(2, hidden=16, num_layers=3).eval()
    _randomize_bn(model)
    graphs = [smiles_to_data(s) for s in SMILES]
    out = model(Batch.from_data_list(graphs))
    alone = torch.cat([model(g.x, g.edge_index, None, g.edge_attr) for g in graphs])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gin_teacher", "gcn_student", "mlp_student"])
def test_graph_hook_paths(name):
    model = build_model(name, 2)
    h = model.hidden
    n_layers = len(model.convs)
    data = _mols()
    n = data.num_nodes
    want = {"encoder": (n, h), **{f"convs.{i}": (n, h) for i in range(n_layers)},
            "pool": (3, h), "head": (3, 2)}
    got = {}
    for p in want:
        model.get_submodule(p).register_forward_hook(
            lambda m, a, o, p=p: got.__setitem__(p, tuple(o.shape)))
    model(data)
    assert got == want


def test_presets_sizes():
    gin = build_model("gin_teacher", 2)
    assert len(gin.convs) == 5 and gin.hidden == 300 and gin.edge_features
    gcn = build_model("gcn_student", 2)
    assert len(gcn.convs) == 2
    assert 10_000 < sum(p.numel() for p in gcn.parameters()) < 16_000


def test_float_features_and_errors():
    model = GCN(4, hidden=8, in_channels=5).eval()
    x = torch.randn(6, 5)
    ei = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    assert model(x, ei).shape == (1, 4)
    with pytest.raises(ValueError, match="edge_index"):
        model(x, ei + 3)
    with pytest.raises(ValueError, match="edge_attr"):
        GIN(2, hidden=8, num_layers=1).eval()(smiles_to_data("CCO").x,
                                             smiles_to_data("CCO").edge_index)
    with pytest.raises(ValueError, match="in_channels=F"):
        GIN(2, hidden=8, num_layers=1)(x, ei)


def test_mlp_call_forms_agree_and_ignore_edges():
    model = MLP(3, hidden=8).eval()
    data = _mols()
    out = model(data)
    torch.testing.assert_close(model(data.x, data.batch), out)
    torch.testing.assert_close(model(data.x, data.edge_index, data.batch), out)
    torch.testing.assert_close(model(data.x, data.edge_index[:, :0], data.batch), out)
