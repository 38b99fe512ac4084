"""DGCNN / PointNet / GlobalPool against brute-force references written here."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphkd.graphs import EdgeSet
from graphkd.models import DGCNN, EdgeConv, GlobalPool, PointNet, build_model
from graphkd.models.dgcnn import _neighbour_sum


def _brute_knn(x: torch.Tensor, batch: torch.Tensor, k: int, loop: bool) -> list[set[int]]:
    """Neighbour sets by a full distance matrix per graph (independent of EdgeSet.knn)."""
    out: list[set[int]] = []
    for g in batch.unique().tolist():
        idx = (batch == g).nonzero().view(-1)
        d = torch.cdist(x[idx].double(), x[idx].double())
        if not loop:
            d.fill_diagonal_(float("inf"))
        nn_local = d.argsort(dim=1)[:, :k]
        out += [set(idx[row].tolist()) for row in nn_local]
    return out


def _randomize_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)


def _clouds(sizes=(24, 30), dim=3) -> Batch:
    return Batch.from_data_list([Data(pos=torch.randn(n, dim)) for n in sizes])


@pytest.mark.parametrize("reduce", ["max", "mean", "sum", "max+mean"])
@pytest.mark.parametrize("sizes", [[3, 3, 3], [2, 0, 4, 1]])
def test_global_pool_matches_per_graph_loop(device, reduce, sizes):
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)
    x = torch.randn(batch.numel(), 5, device=device)
    out = GlobalPool(reduce)(x, batch, num_graphs=len(sizes))
    ref = []
    for g in range(len(sizes)):
        xs = x[batch == g]
        parts = []
        for mode in reduce.split("+"):
            if xs.shape[0] == 0:
                parts.append(torch.zeros(5, device=device))
            else:
                parts.append({"max": xs.max(0).values, "mean": xs.mean(0),
                              "sum": xs.sum(0)}[mode])
        ref.append(torch.cat(parts))
    torch.testing.assert_close(out, torch.stack(ref))


def test_global_pool_unsorted_equal_sizes_uses_true_groups():
    batch = torch.tensor([1, 0, 1, 0])
    x = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    assert GlobalPool("max")(x, batch).tolist() == [[5.0], [3.0]]
    assert GlobalPool("mean")(x, batch).tolist() == [[3.5], [2.0]]


def test_global_pool_rejects_unknown_mode():
    with pytest.raises(ValueError, match="valid: 'max'"):
        GlobalPool("median")


@pytest.mark.parametrize("loop", [True, False])
def test_edgeconv_matches_bruteforce_formula(device, loop):
    torch.manual_seed(1)
    conv = EdgeConv(3, 6, k=4, loop=loop).to(device)
    _randomize_bn(conv)
    conv.eval()
    data = _clouds((9, 7))
    x, batch = data.pos.to(device), data.batch.to(device)
    out = conv(x, batch)
    nbrs = _brute_knn(x.cpu(), batch.cpu(), 4, loop)
    ref = []
    for i, js in enumerate(nbrs):
        feats = torch.stack([torch.cat([x[i], x[j] - x[i]]) for j in js])   # [k, 2 * in]
        h = torch.nn.functional.leaky_relu(conv.bn(feats @ conv.lin.weight.T), 0.2)
        ref.append(h.max(0).values)
    torch.testing.assert_close(out, torch.stack(ref), atol=1e-5, rtol=1e-5)
    assert conv.last_edges.degree == 4
    assert conv.last_edges.batch is not None


def _naive_edgeconv(conv: EdgeConv, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """The reference pipeline on the [N, k, C] edge tensor with an explicit BatchNorm1d."""
    nbr = conv.last_edges.col.view(x.shape[0], conv.k)
    xi = x.unsqueeze(1).expand(-1, conv.k, -1)
    e = torch.cat([xi, x[nbr] - xi], dim=-1) @ conv.lin.weight.T       # [N, k, C]
    e = conv.bn(e.reshape(-1, e.shape[-1])).view(*e.shape)
    return torch.nn.functional.leaky_relu(e, 0.2).max(dim=1).values


def test_edgeconv_training_mode_equals_edge_tensor_pipeline(device):
    torch.manual_seed(3)
    fast = EdgeConv(4, 5, k=6).to(device)
    with torch.no_grad():
        fast.bn.weight.copy_(torch.tensor([1.2, -0.7, 0.4, -1.5, 0.9]))
        fast.bn.bias.uniform_(-0.3, 0.3)
    slow = EdgeConv(4, 5, k=6).to(device)
    slow.load_state_dict(fast.state_dict())
    data = _clouds((15, 11), dim=4)
    x, batch = data.pos.to(device), data.batch.to(device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast = fast(x1, batch)
    slow.last_edges = fast.last_edges
    out_slow = _naive_edgeconv(slow, x2, batch)          # BN in train mode: edge statistics
    torch.testing.assert_close(out_fast, out_slow, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(out_fast)
    (out_fast * w).sum().backward()
    (out_slow * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fast.bn, key), getattr(slow.bn, key))


@pytest.mark.parametrize("sparse", [True, False])
def test_neighbour_sum_paths_match_a_loop(sparse):
    x = torch.randn(30, 4)
    values = torch.randn(30, 6, dtype=torch.float64, requires_grad=True)
    edges = EdgeSet.knn(x, 5, batch=torch.tensor([0] * 12 + [1] * 18))
    out = _neighbour_sum(values, edges, sparse=sparse)
    ref = torch.stack([values[edges.col[edges.ptr[i]:edges.ptr[i + 1]]].sum(0)
                       for i in range(30)])
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(lambda v: _neighbour_sum(v, edges, sparse=sparse), values)


@pytest.mark.parametrize("loop", [True, False])
def test_dgcnn_knn_of_every_layer_equals_bruteforce(loop):
    model = DGCNN(3, 5, k=5, widths=(8, 8, 16), emb_dims=16, head=(8,), loop=loop).eval()
    data = _clouds((20, 13, 17))
    inputs: dict[int, torch.Tensor] = {}
    for i, conv in enumerate(model.convs):
        conv.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach()))
    model(data)
    assert len(inputs) == 3
    for i, edges in enumerate(model.knn_graphs):
        got = [set(r) for r in edges.col.view(-1, 5).tolist()]
        assert got == _brute_knn(inputs[i], data.batch, 5, loop), f"layer {i}"
    # layers after the first build their graph from features, not from coordinates
    assert [set(r) for r in model.knn_graphs[1].col.view(-1, 5).tolist()] != \
        _brute_knn(data.pos, data.batch, 5, loop)


def _permute_within(data: Batch, gen: torch.Generator) -> Batch:
    perms = []
    for g in range(data.num_graphs):
        idx = (data.batch == g).nonzero().view(-1)
        perms.append(idx[torch.randperm(idx.numel(), generator=gen)])
    perm = torch.cat(perms)
    return Batch(pos=data.pos[perm], batch=data.batch[perm], ptr=data.ptr)


@pytest.mark.parametrize("make", [
    lambda: DGCNN(3, 7, k=6, widths=(16, 16, 32), emb_dims=32, head=(16,)),
    lambda: PointNet(3, 7, widths=(16, 32, 64), head=(16,)),
])
def test_pointcloud_models_invariant_to_point_order(device, gen, make):
    model = make().to(device)
    _randomize_bn(model)
    model.eval()
    data = _clouds((25, 31))
    pooled = []
    model.pool.register_forward_hook(lambda m, a, o: pooled.append(o))
    out = model(data.pos.to(device), data.batch.to(device))
    perm = _permute_within(data, gen)
    out_p = model(perm.pos.to(device), perm.batch.to(device))
    torch.testing.assert_close(out_p, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled[1], pooled[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_dgcnn_batched_equals_separate_clouds():
    model = DGCNN(2, 4, k=4, widths=(8, 16), emb_dims=16, head=(8,)).eval()
    _randomize_bn(model)
    clouds = [Data(pos=torch.randn(n, 2)) for n in (10, 15, 12)]
    out = model(Batch.from_data_list(clouds))
    alone = torch.cat([model(c.pos) for c in clouds])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,paths", [
    ("dgcnn", {"convs.0": (56, 8), "convs.1": (56, 16), "fuse": (56, 24), "pool": (2, 48),
               "head": (2, 5)}),
    ("pointnet", {"convs.0": (56, 8), "convs.1": (56, 16), "pool": (2, 16), "head": (2, 5)}),
])
def test_hook_paths_have_documented_shapes(name, paths):
    kw = dict(widths=(8, 16), head=(8,))
    model = build_model(name, 5, in_channels=3, **kw, **({"k": 4, "emb_dims": 24}
                                                           if name == "dgcnn" else {}))
    shapes = {}
    for p in paths:
        model.get_submodule(p).register_forward_hook(
            lambda m, a, o, p=p: shapes.__setitem__(p, tuple(o.shape)))
    model(_clouds((26, 30)))
    assert shapes == paths


def test_all_parameters_receive_gradients():
    model = DGCNN(3, 4, k=4, widths=(8, 8), emb_dims=16, head=(8,))
    data = _clouds((12, 12))
    model(data).logsumexp(-1).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert dead == []


def test_presets_follow_the_documented_architecture():
    t = build_model("dgcnn_teacher", 10, in_channels=2)
    assert [c.k for c in t.convs] == [20] * 4
    assert [c.out_channels for c in t.convs] == [64, 64, 128, 256]
    s = build_model("DGCNN-student", 10, in_channels=2)
    assert [c.out_channels for c in s.convs] == [32, 64] and s.convs[0].k == 10
    p = build_model("pointnet_student", 10, in_channels=2)
    assert p.eval()(torch.randn(64, 2)).shape == (1, 10)
    n_t = sum(x.numel() for x in t.parameters())
    n_s = sum(x.numel() for x in s.parameters())
    assert n_s * 10 < n_t


def test_bad_point_input_names_the_fix():
    model = DGCNN(3, 4, k=4, widths=(8,), emb_dims=8, head=())
    with pytest.raises(ValueError, match="in_channels=2"):
        model(torch.randn(10, 2))
    with pytest.raises(ValueError, match="Lower k"):
        model(torch.randn(3, 3))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(10, 3), torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="Batch.from_data_list"):
        PointNet(3, 4)(torch.randn(2, 10, 3))
    with pytest.raises(ValueError, match="valid presets"):
        build_model("resnet", 3)


# --------------------------------------------------------------------------- layering
def test_models_import_no_distributed_or_distillation_layer():
    """The models sit low: no import (lazy ones included) of the DDP / sync-BatchNorm layers or
    of anything above them; DGCNN's synchronised statistics come through batchnorm_moments."""
    import ast
    from pathlib import Path

    import graphkd.models as models

    banned = ("graphkd.distributed", "graphkd.sync_batchnorm", "graphkd._collectives",
              "graphkd.distill", "graphkd.train", "graphkd.hooks", "graphkd.inputs",
              "graphkd.pipeline", "graphkd.experiment", "graphkd.losses", "graphkd.cli")
    for path in Path(models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith(banned) for n in names), (path.name, names)


def test_batchnorm_moments_hook():
    """Plain BatchNorm: the local moments, the same objects. A layer with combine_moments
    (graphkd's SyncBatchNorm) is asked instead, with the caller's mode."""
    from graphkd.models._common import batchnorm_moments

    mean, var = torch.randn(3), torch.rand(3)
    out = batchnorm_moments(torch.nn.BatchNorm1d(3), 12, mean, var, True)
    assert out[0] == 12 and out[1] is mean and out[2] is var

    class Doubling(torch.nn.BatchNorm1d):
        def combine_moments(self, count, mean, var, training=None):
            return 2 * count, mean + 1, var * 0 if training else var

    got = batchnorm_moments(Doubling(3), 12, mean, var, True)
    assert got[0] == 24 and torch.equal(got[1], mean + 1) and not got[2].any()
    from graphkd.sync_batchnorm import SyncBatchNorm

    sync = SyncBatchNorm(3)  # no process group: unchanged, same objects
    out = batchnorm_moments(sync, 12, mean, var, True)
    assert out[0] == 12 and out[1] is mean and out[2] is var
