"""Tests of the graph-representation losses LSP, GSP, GKD and G-CRD.

Every value is checked against an independent, straightforward implementation written here
(Python loops over neighbourhoods, dense pairwise formulas, the reference implementations'
formulas), plus gradchecks, permutation invariance and error cases.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from graphkd.graphs import EdgeSet
from graphkd.losses import get_loss
from graphkd.losses.graph import (
    GCRD,
    GKD,
    GSP,
    LSP,
    gcrd_loss,
    gkd_adjacency,
    gkd_loss,
    gsp_loss,
    lsp_loss,
)

DT = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-11}


# ------------------------------------------------------------------------------ helpers
def rand_edge_index(n_active: int, num_edges: int, seed: int = 0) -> torch.Tensor:
    """Random directed edges among nodes ``0 .. n_active - 1`` (no self loops, no duplicates)."""
    g = torch.Generator().manual_seed(seed)
    pairs = [(i, j) for i in range(n_active) for j in range(n_active) if i != j]
    pick = torch.randperm(len(pairs), generator=g)[:num_edges].tolist()
    return torch.tensor([pairs[p] for p in pick]).T.contiguous()


def kernel_logit(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LSP logit of one edge, written out by hand."""
    if name == "rbf":
        return -0.5 * ((a - b) ** 2).sum()
    if name == "gaussian_l1":
        return -(a - b).abs().sum() / 100.0
    if name == "dot":
        return (a * b).sum()
    if name == "cosine":
        return (a * b).sum() / (a.norm() * b.norm())
    if name == "poly":
        return ((a * b).sum() + 1.0) ** 2
    raise AssertionError(name)


def ref_lsp_rows(f_s, f_t, neighbours, logit):
    """Per-node KL(P_t || P_s) by a Python loop; ``None`` for nodes without neighbours."""
    out = []
    for v, nbrs in enumerate(neighbours):
        if not nbrs:
            out.append(None)
            continue
        dists = []
        for f in (f_s, f_t):
            z = torch.stack([logit(f[v], f[u]) for u in nbrs])
            e = torch.exp(z - z.max())
            dists.append(e / e.sum())
        ps, pt = dists
        out.append((pt * (torch.log(pt) - torch.log(ps))).sum())
    return out


def in_neighbours(edge_index: torch.Tensor, n: int) -> list[list[int]]:
    src, dst = edge_index.tolist()
    return [[s for s, d in zip(src, dst) if d == v] for v in range(n)]


def ref_mean(rows):
    vals = [r for r in rows if r is not None]
    return torch.stack(vals).mean()


def brute_knn(x: torch.Tensor, k: int, batch: torch.Tensor) -> list[list[int]]:
    """k nearest other points of the same graph, by a full distance matrix."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    same = batch[:, None] == batch[None, :]
    d = torch.where(same, d, torch.full_like(d, math.inf))
    d.fill_diagonal_(math.inf)
    return [sorted(d[i].argsort()[:k].tolist()) for i in range(x.shape[0])]


# ==================================================================================== LSP
@pytest.mark.parametrize("kernel", ["rbf", "gaussian_l1", "dot", "cosine", "poly"])
def test_lsp_matches_loop_reference(device, kernel):
    n = 7  # node 6 is isolated
    ei = rand_edge_index(6, 14, seed=1)
    f_t = torch.randn(n, 8, dtype=DT)
    f_s = torch.randn(n, 4, dtype=DT)  # widths differ
    if kernel == "gaussian_l1":
        f_t, f_s = 30 * f_t, 30 * f_s  # make the l1/100 logits non-trivial
    edges = EdgeSet.from_edge_index(ei.to(device), n)
    got = lsp_loss(f_s.to(device), f_t.to(device), edges, kernel)
    rows = ref_lsp_rows(f_s, f_t, in_neighbours(ei, n), lambda a, b: kernel_logit(kernel, a, b))
    want = ref_mean(rows)
    assert want > 1e-4  # a non-trivial value
    torch.testing.assert_close(got.cpu(), want, **TOL)
    per_row = lsp_loss(f_s.to(device), f_t.to(device), edges, kernel, "none").cpu()
    torch.testing.assert_close(per_row[6], torch.zeros((), dtype=DT))  # isolated node
    torch.testing.assert_close(
        per_row.sum(), torch.stack([r for r in rows if r is not None]).sum(), **TOL)


def test_lsp_kernel_parameters_are_used():
    n = 6
    ei = rand_edge_index(n, 14, seed=9)
    f_t, f_s = torch.randn(n, 4, dtype=DT), torch.randn(n, 3, dtype=DT)
    edges = EdgeSet.from_edge_index(ei, n)
    nbrs = in_neighbours(ei, n)
    got = lsp_loss(f_s, f_t, edges, "rbf", gamma=0.2, tau=0.5)
    want = ref_mean(ref_lsp_rows(f_s, f_t, nbrs,
                                 lambda a, b: -0.2 * ((a - b) ** 2).sum() / 0.5))
    torch.testing.assert_close(got, want, **TOL)
    got = LSP(kernel="gaussian_l1", scale=2.0)(f_s, f_t, edge_index=ei)
    want = ref_mean(ref_lsp_rows(f_s, f_t, nbrs, lambda a, b: -(a - b).abs().sum() / 2.0))
    torch.testing.assert_close(got, want, **TOL)


def test_lsp_kernel_as_logit_reproduces_official_double_exp(device):
    n = 6
    ei = rand_edge_index(n, 15, seed=2)
    f_t, f_s = torch.randn(n, 5, dtype=DT), torch.randn(n, 3, dtype=DT)
    edges = EdgeSet.from_edge_index(ei.to(device), n)
    got = lsp_loss(f_s.to(device), f_t.to(device), edges, "rbf", kernel_as_logit=True)
    want = ref_mean(ref_lsp_rows(f_s, f_t, in_neighbours(ei, n),
                                 lambda a, b: torch.exp(-0.5 * ((a - b) ** 2).sum())))
    torch.testing.assert_close(got.cpu(), want, **TOL)
    # ... and it differs from the (correct) default
    default = lsp_loss(f_s.to(device), f_t.to(device), edges, "rbf")
    assert not torch.allclose(got, default)


def test_lsp_kernel_as_logit_l2_reproduces_pyg_port():
    from torch_geometric.utils import scatter
    from torch_geometric.utils import softmax as pyg_softmax

    n = 6
    ei = rand_edge_index(n, 16, seed=3)
    f_t, f_s = torch.randn(n, 5, dtype=DT), torch.randn(n, 3, dtype=DT)
    src, dst = ei
    pw_s = pyg_softmax((f_s[src] - f_s[dst]).norm(p=2, dim=-1), dst)
    pw_t = pyg_softmax((f_t[src] - f_t[dst]).norm(p=2, dim=-1), dst)
    per_node = scatter(pw_t * (pw_t.log() - pw_s.log()), dst, dim=0, dim_size=n, reduce="sum")
    want = per_node[torch.bincount(dst, minlength=n) > 0].mean()
    got = lsp_loss(f_s, f_t, EdgeSet.from_edge_index(ei, n), "l2", kernel_as_logit=True)
    torch.testing.assert_close(got, want, **TOL)
    # the default l2 logit is minus the distance: nearer neighbours weigh more
    got_default = lsp_loss(f_s, f_t, EdgeSet.from_edge_index(ei, n), "l2")
    pw_s = pyg_softmax(-(f_s[src] - f_s[dst]).norm(p=2, dim=-1), dst)
    pw_t = pyg_softmax(-(f_t[src] - f_t[dst]).norm(p=2, dim=-1), dst)
    per_node = scatter(pw_t * (pw_t.log() - pw_s.log()), dst, dim=0, dim_size=n, reduce="sum")
    torch.testing.assert_close(got_default, per_node[torch.bincount(dst, minlength=n) > 0].mean(),
                               **TOL)


@pytest.mark.parametrize("kernel", ["rbf", "cosine", "gaussian_l1"])
def test_lsp_regular_and_irregular_paths_agree(kernel):
    f_t, f_s = torch.randn(12, 6, dtype=DT), torch.randn(12, 3, dtype=DT)
    regular = EdgeSet.knn(f_t, k=4)
    assert regular.degree == 4
    irregular = dataclasses.replace(regular, degree=None)
    for reduction in ("mean", "sum", "none"):
        a = lsp_loss(f_s, f_t, regular, kernel, reduction)
        b = lsp_loss(f_s, f_t, irregular, kernel, reduction)
        torch.testing.assert_close(a, b, **TOL)


def test_lsp_node_permutation_invariance(device):
    n = 9
    ei = rand_edge_index(8, 25, seed=4)
    f_t, f_s = torch.randn(n, 6, dtype=DT), torch.randn(n, 4, dtype=DT)
    perm = torch.randperm(n)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)  # old id -> new id
    base = lsp_loss(f_s.to(device), f_t.to(device), EdgeSet.from_edge_index(ei.to(device), n))
    permuted = lsp_loss(f_s[perm].to(device), f_t[perm].to(device),
                        EdgeSet.from_edge_index(inv[ei].to(device), n))
    torch.testing.assert_close(base, permuted, **TOL)


@pytest.mark.parametrize("kernel", ["rbf", "cosine"])
def test_lsp_gradcheck(kernel):
    n = 5
    ei = rand_edge_index(n, 10, seed=5)
    edges = EdgeSet.from_edge_index(ei, n)
    f_t = torch.randn(n, 3, dtype=DT)
    f_s = torch.randn(n, 2, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: lsp_loss(s, f_t, edges, kernel), (f_s,))


def test_lsp_gradcheck_regular_path():
    f_t = torch.randn(6, 3, dtype=DT)
    f_s = torch.randn(6, 2, dtype=DT, requires_grad=True)
    edges = EdgeSet.knn(f_t, k=3)
    assert torch.autograd.gradcheck(lambda s: lsp_loss(s, f_t, edges), (f_s,))


def test_lsp_isolated_node_contributes_nothing():
    ei = rand_edge_index(5, 12, seed=6)
    f_t, f_s = torch.randn(6, 4, dtype=DT), torch.randn(6, 3, dtype=DT)
    with_isolated = lsp_loss(f_s, f_t, EdgeSet.from_edge_index(ei, 6))
    without = lsp_loss(f_s[:5], f_t[:5], EdgeSet.from_edge_index(ei, 5))
    torch.testing.assert_close(with_isolated, without, **TOL)


def test_lsp_ties_duplicate_features(device):
    # nodes 0, 1 and 2 have identical features: equal logits (ties) and a zero distance
    f_t = torch.randn(6, 4, dtype=DT)
    f_t[1] = f_t[0]
    f_t[2] = f_t[0]
    f_s = torch.randn(6, 3, dtype=DT)
    f_s[1] = f_s[0]
    ei = torch.tensor([[1, 2, 3, 0, 2, 4, 5, 0], [0, 0, 0, 1, 1, 1, 2, 2]])
    got = lsp_loss(f_s.to(device), f_t.to(device), EdgeSet.from_edge_index(ei.to(device), 6))
    want = ref_mean(ref_lsp_rows(f_s, f_t, in_neighbours(ei, 6),
                                 lambda a, b: kernel_logit("rbf", a, b)))
    torch.testing.assert_close(got.cpu(), want, **TOL)
    s = f_s.clone().requires_grad_(True)
    lsp_loss(s, f_t, EdgeSet.from_edge_index(ei, 6)).backward()
    assert torch.isfinite(s.grad).all()


def test_lsp_module_input_graph_two_graphs_and_graph_reduction(device):
    # two graphs: nodes 0-2 and 3-8 (node 8 isolated)
    ei = torch.cat([rand_edge_index(3, 5, seed=7), rand_edge_index(5, 12, seed=8) + 3], 1)
    batch = torch.tensor([0] * 3 + [1] * 6)
    f_t, f_s = torch.randn(9, 6, dtype=DT), torch.randn(9, 2, dtype=DT)
    rows = ref_lsp_rows(f_s, f_t, in_neighbours(ei, 9), lambda a, b: kernel_logit("rbf", a, b))
    dev = {"batch": batch.to(device), "edge_index": ei.to(device)}
    got = LSP(graph="input")(f_s.to(device), f_t.to(device), **dev)
    torch.testing.assert_close(got.cpu(), ref_mean(rows), **TOL)
    got_graph = LSP(graph="input", reduction="graph")(f_s.to(device), f_t.to(device), **dev)
    want_graph = (ref_mean(rows[:3]) + ref_mean(rows[3:])) / 2
    torch.testing.assert_close(got_graph.cpu(), want_graph, **TOL)
    assert not torch.allclose(want_graph, ref_mean(rows))


@pytest.mark.parametrize("graph", ["knn", "union"])
def test_lsp_module_knn_and_union_graphs(device, graph):
    batch = torch.tensor([0] * 7 + [1] * 6)
    f_t, f_s = torch.randn(13, 5, dtype=DT), torch.randn(13, 3, dtype=DT)
    k = 3
    nbr_t = brute_knn(f_t, k, batch)
    nbr_s = brute_knn(f_s, k, batch)
    nbrs = nbr_t if graph == "knn" else [sorted(set(a) | set(b)) for a, b in zip(nbr_t, nbr_s)]
    for v, nb in enumerate(nbrs):  # never across graphs
        assert all(batch[u] == batch[v] for u in nb)
    want = ref_mean(ref_lsp_rows(f_s, f_t, nbrs, lambda a, b: kernel_logit("rbf", a, b)))
    got = LSP(graph=graph, k=k)(f_s.to(device), f_t.to(device), batch=batch.to(device))
    torch.testing.assert_close(got.cpu(), want, **TOL)


def test_lsp_module_gradient_reaches_student_only_through_kernel():
    f_t = torch.randn(10, 5, dtype=DT, requires_grad=True)
    f_s = torch.randn(10, 3, dtype=DT, requires_grad=True)
    LSP(graph="union", k=3)(f_s, f_t).backward()
    assert f_s.grad.abs().sum() > 0 and f_t.grad is None  # the teacher is a constant


def test_lsp_errors():
    f_t, f_s = torch.randn(6, 4), torch.randn(6, 3)
    with pytest.raises(ValueError, match="edge_index"):
        LSP(graph="input")(f_s, f_t)
    with pytest.raises(ValueError, match="k=6"):
        LSP(graph="knn", k=6)(f_s, f_t)
    with pytest.raises(ValueError, match="graph 1"):
        LSP(graph="knn", k=3)(f_s, f_t, batch=torch.tensor([0, 0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="unknown LSP graph"):
        LSP(graph="full")
    with pytest.raises(ValueError, match="valid kernels"):
        LSP(kernel="gauss")
    with pytest.raises(ValueError, match="gama"):
        LSP(kernel="rbf", gama=0.1)
    bad = f_s.clone()
    bad[2, 1] = math.nan
    ei = rand_edge_index(6, 8)
    with pytest.raises(ValueError, match="f_s"):
        LSP()(bad, f_t, edge_index=ei)
    with pytest.raises(ValueError, match="f_t"):
        lsp_loss(f_s, torch.full((6, 4), math.inf), EdgeSet.from_edge_index(ei, 6))
    with pytest.raises(ValueError, match="same samples"):
        lsp_loss(f_s[:5], f_t, EdgeSet.from_edge_index(ei, 6))
    with pytest.raises(ValueError, match="EdgeSet is 7 x 7"):
        lsp_loss(f_s, f_t, EdgeSet.from_edge_index(ei, 7))
    with pytest.raises(ValueError, match="unknown reduction"):
        lsp_loss(f_s, f_t, EdgeSet.from_edge_index(ei, 6), reduction="avg")


# ==================================================================================== GSP
def ref_gpw(feat, teacher_feat, kernel):
    """The reference gpw_criterion's pairwise similarities and MSE, written densely."""
    def sim(x):
        if kernel == "cosine":
            x = F.normalize(x, p=2, dim=-1)
            return (x @ x.T).flatten()
        if kernel == "poly":
            x = F.normalize(x, p=2, dim=-1)
            return (x @ x.T).flatten() ** 2
        if kernel == "l2":
            return (x.unsqueeze(0) - x.unsqueeze(1)).norm(p=2, dim=-1).flatten()
        if kernel == "rbf":
            return torch.exp(-0.5 * ((x.unsqueeze(0) - x.unsqueeze(1)) ** 2).sum(-1).flatten())
        raise AssertionError(kernel)

    return ((sim(feat) - sim(teacher_feat)) ** 2).mean()


@pytest.mark.parametrize("kernel", ["cosine", "poly", "rbf", "l2"])
def test_gsp_matches_reference_formula(device, kernel):
    f_t, f_s = torch.randn(11, 6, dtype=DT), torch.randn(11, 4, dtype=DT)
    got = gsp_loss(f_s.to(device), f_t.to(device), kernel)
    want = ref_gpw(f_s, f_t, kernel)
    assert want > 1e-4
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-10)
    # module
    torch.testing.assert_close(GSP(kernel)(f_s.to(device), f_t.to(device)).cpu(), want,
                               rtol=1e-9, atol=1e-10)


def test_gsp_without_loops_averages_offdiagonal_pairs():
    f_t, f_s = torch.randn(8, 5, dtype=DT), torch.randn(8, 3, dtype=DT)
    got = gsp_loss(f_s, f_t, "rbf", loop=False)
    # diagonal pairs are 0 for rbf, so the sum is the reference's sum over all pairs
    torch.testing.assert_close(got, ref_gpw(f_s, f_t, "rbf") * 64 / 56, **TOL)


def test_gsp_sampling_is_seeded_and_uses_a_subset():
    n, m = 40, 12
    f_t, f_s = torch.randn(n, 5, dtype=DT), torch.randn(n, 3, dtype=DT)
    a = gsp_loss(f_s, f_t, max_samples=m, generator=torch.Generator().manual_seed(3))
    b = gsp_loss(f_s, f_t, max_samples=m, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the value is the full-formula loss on some m-node subset: the seeded sample
    nodes = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:m]
    torch.testing.assert_close(a, ref_gpw(f_s[nodes], f_t[nodes], "cosine"), **TOL)
    assert not torch.allclose(a, ref_gpw(f_s, f_t, "cosine"))
    mod = GSP(max_samples=m, seed=3)
    torch.testing.assert_close(mod(f_s, f_t), a, rtol=0, atol=0)


def test_gsp_permutation_invariance_and_gradcheck():
    f_t, f_s = torch.randn(7, 4, dtype=DT), torch.randn(7, 3, dtype=DT)
    perm = torch.randperm(7)
    for kernel in ("cosine", "rbf", "l2"):
        torch.testing.assert_close(gsp_loss(f_s, f_t, kernel),
                                   gsp_loss(f_s[perm], f_t[perm], kernel), **TOL)
    s = f_s.clone().requires_grad_(True)
    for kernel in ("cosine", "poly", "rbf"):
        assert torch.autograd.gradcheck(lambda a, k=kernel: gsp_loss(a, f_t, k), (s,))


def test_gsp_errors():
    f_t, f_s = torch.randn(6, 4), torch.randn(6, 3)
    with pytest.raises(ValueError, match="valid kernels"):
        gsp_loss(f_s, f_t, "cos")
    with pytest.raises(ValueError, match="f_s"):
        gsp_loss(f_s.masked_fill(f_s > 1, math.nan), f_t)
    with pytest.raises(ValueError, match="same samples"):
        gsp_loss(f_s, f_t[:4])
    with pytest.raises(ValueError, match="max_samples"):
        GSP(max_samples=0)
    with pytest.raises(ValueError, match="degre"):
        GSP("poly", degre=3)


# ==================================================================================== GKD
def ref_representations_to_adj(x, k=None, a_final=None):
    """The reference representations_to_adj (cadurosar/graph_kd utils.py), CPU, k=None=128."""
    rview = F.normalize(x.view(x.size(0), -1), p=2, dim=1)
    adj = torch.mm(rview, rview.t())
    adj = adj - torch.diag(torch.diag(adj))
    degree = torch.pow(adj.sum(dim=1), -0.5)
    dm = torch.diag(degree)
    adj = dm @ adj @ dm
    if k is not None:
        if a_final is None:
            _, ind = torch.sort(adj, 1)
            a = torch.zeros_like(adj)
            for i, value in enumerate(ind[:, -k:]):
                a[i, value] = 1
            a_final = torch.clamp(a + a.t(), max=1.0)
        adj = adj * a_final
    return adj, a_final


def ref_gkd(f_s, f_t, k, power, lam):
    adj_t, mask = ref_representations_to_adj(f_t, k)
    adj_s, _ = ref_representations_to_adj(f_s, k, mask)
    pt, ps = adj_t, adj_s
    for _ in range(power - 1):
        pt, ps = pt @ adj_t, ps @ adj_s
    return lam * ((pt - ps) ** 2).sum()


@pytest.mark.parametrize(("k", "power"), [(None, 1), (None, 3), (3, 1), (2, 2)])
def test_gkd_matches_reference(device, k, power):
    # non-negative (post-ReLU) features: the reference's setting, where it is well defined
    f_t, f_s = torch.rand(9, 10, dtype=DT), torch.rand(9, 6, dtype=DT)
    want = ref_gkd(f_s, f_t, k, power, 25.0)
    got = gkd_loss(f_s.to(device), f_t.to(device), k=k, power=power, weight=25.0)
    assert want > 1e-6
    torch.testing.assert_close(got.cpu(), want, **TOL)
    mod = GKD(k=k, power=power, weight=25.0, reduction="mean")
    torch.testing.assert_close(mod(f_s.to(device), f_t.to(device)).cpu(), want / 81, **TOL)


def test_gkd_signed_features_stay_finite_with_abs_degree():
    f_t, f_s = torch.randn(8, 5, dtype=DT), torch.randn(8, 4, dtype=DT)
    a = gkd_adjacency(f_t)
    x = F.normalize(f_t, dim=1)
    c = x @ x.T
    c.fill_diagonal_(0)
    d = c.abs().sum(1) ** -0.5
    want = torch.stack([torch.stack([d[i] * c[i, j] * d[j] for j in range(8)])
                        for i in range(8)])
    torch.testing.assert_close(a, want, **TOL)
    assert torch.isfinite(gkd_loss(f_s, f_t, k=3, power=2))


def test_gkd_flattens_feature_maps_and_is_permutation_invariant():
    f_t, f_s = torch.rand(6, 2, 3, 2, dtype=DT), torch.rand(6, 4, 2, dtype=DT)
    torch.testing.assert_close(gkd_loss(f_s, f_t, k=2),
                               gkd_loss(f_s.flatten(1), f_t.flatten(1), k=2), **TOL)
    perm = torch.randperm(6)
    for k, p in ((None, 2), (2, 1), (3, 3)):
        torch.testing.assert_close(gkd_loss(f_s, f_t, k=k, power=p),
                                   gkd_loss(f_s[perm], f_t[perm], k=k, power=p), **TOL)


def test_gkd_gradcheck():
    f_t = torch.rand(5, 4, dtype=DT)
    f_s = torch.rand(5, 3, dtype=DT, requires_grad=True)
    for k, p in ((None, 1), (2, 2)):
        assert torch.autograd.gradcheck(
            lambda s, k=k, p=p: gkd_loss(s, f_t, k=k, power=p), (f_s,))


def test_gkd_errors():
    f_t, f_s = torch.rand(5, 4), torch.rand(5, 3)
    with pytest.raises(ValueError, match="k < batch size"):
        gkd_loss(f_s, f_t, k=5)
    with pytest.raises(ValueError, match="k"):
        GKD(k=0)
    with pytest.raises(ValueError, match="power"):
        GKD(power=0)
    with pytest.raises(ValueError, match="at least 2"):
        gkd_loss(f_s[:1], f_t[:1])
    with pytest.raises(ValueError, match="f_t"):
        gkd_loss(f_s, f_t.masked_fill(f_t > 0.5, math.nan))
    with pytest.raises(ValueError, match="reduction"):
        gkd_loss(f_s, f_t, reduction="none")


# ================================================================================== G-CRD
def ref_nce(z_s, z_t, tau):
    z_s, z_t = F.normalize(z_s, dim=-1), F.normalize(z_t, dim=-1)
    logits = z_s @ z_t.T / tau
    return (torch.logsumexp(logits, 1) - torch.diagonal(logits)).mean()


def test_gcrd_loss_matches_reference(device):
    z_s, z_t = torch.randn(10, 6, dtype=DT), torch.randn(10, 6, dtype=DT)
    got = gcrd_loss(z_s.to(device), z_t.to(device))
    torch.testing.assert_close(got.cpu(), ref_nce(z_s, z_t, 0.075), **TOL)
    # a hand-written row for good measure
    zs, zt = F.normalize(z_s, dim=-1), F.normalize(z_t, dim=-1)
    row0 = -math.log(math.exp(float(zs[0] @ zt[0]) / 0.2)
                     / sum(math.exp(float(zs[0] @ zt[j]) / 0.2) for j in range(10)))
    per_row = gcrd_loss(z_s, z_t, tau=0.2, reduction="none")
    assert abs(float(per_row[0]) - row0) < 1e-10


def test_gcrd_sampling_seeded():
    n, m = 30, 8
    z_s, z_t = torch.randn(n, 4, dtype=DT), torch.randn(n, 4, dtype=DT)
    a = gcrd_loss(z_s, z_t, max_samples=m, generator=torch.Generator().manual_seed(5))
    nodes = torch.randperm(n, generator=torch.Generator().manual_seed(5))[:m]
    torch.testing.assert_close(a, ref_nce(z_s[nodes], z_t[nodes], 0.075), **TOL)


def test_gcrd_module_linear_head_matches_hand_projection(device):
    f_s, f_t = torch.randn(12, 5, dtype=DT), torch.randn(12, 9, dtype=DT)
    mod = GCRD(student_dim=5, teacher_dim=9, proj_dim=4, head="linear").to(device, DT)
    ws, bs = mod.head_s.weight.detach().cpu(), mod.head_s.bias.detach().cpu()
    wt, bt = mod.head_t.weight.detach().cpu(), mod.head_t.bias.detach().cpu()
    want = ref_nce(f_s @ ws.T + bs, f_t @ wt.T + bt, 0.075)
    torch.testing.assert_close(mod(f_s.to(device), f_t.to(device)).cpu(), want, **TOL)


@pytest.mark.parametrize("head", ["mlp", "linear_bn_relu"])
def test_gcrd_heads_are_trainable_on_both_sides_and_permutation_invariant(head):
    f_s, f_t = torch.randn(16, 5, dtype=DT), torch.randn(16, 7, dtype=DT)
    mod = GCRD(student_dim=5, teacher_dim=7, proj_dim=6, head=head).to(DT)
    assert isinstance(mod.head_s[1], torch.nn.BatchNorm1d)
    assert isinstance(mod.head_s[-1], torch.nn.Linear if head == "mlp" else torch.nn.ReLU)
    perm = torch.randperm(16)
    loss = mod(f_s, f_t)
    torch.testing.assert_close(loss, mod(f_s[perm], f_t[perm]), **TOL)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.head_t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.head_s.parameters())


def test_gcrd_gradcheck():
    z_s = torch.randn(6, 3, dtype=DT, requires_grad=True)
    z_t = torch.randn(6, 3, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: gcrd_loss(a, z_t.detach(), tau=0.5), (z_s,))
    # the module's path trains both heads: both projections get exact gradients
    from graphkd.losses.graph import _gcrd
    assert torch.autograd.gradcheck(lambda a, b: _gcrd(a, b, 0.5, 8192, None, "mean"),
                                    (z_s, z_t))


def test_gcrd_errors_and_registry():
    with pytest.raises(ValueError, match="same shape"):
        gcrd_loss(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"unknown head .gcn.; valid names"):
        GCRD(3, 4, head="gcn")
    mod = GCRD(3, 4, proj_dim=2)
    with pytest.raises(ValueError, match="teacher_dim=4"):
        mod(torch.randn(5, 3), torch.randn(5, 5))
    with pytest.raises(ValueError, match="z_s"):
        gcrd_loss(torch.full((5, 3), math.nan), torch.randn(5, 3))
    with pytest.raises(ValueError, match="student_dim"):
        get_loss("gcrd")
    assert isinstance(get_loss("G-CRD", student_dim=3, teacher_dim=4), GCRD)
    assert isinstance(get_loss("lsp", graph="knn", k=3), LSP)
    assert isinstance(get_loss("gsp"), GSP) and isinstance(get_loss("gkd", k=2), GKD)
    assert LSP.context == ("batch", "edge_index") and LSP.level == "node"
