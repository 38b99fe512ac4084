"""EdgeSet builders against brute-force references written here."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from graphkd.graphs import EdgeSet


def brute_knn(
    x: torch.Tensor, k: int, metric: str, loop: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full distance matrix + sort: ``(indices [N, k], distances [N, k])``, nearest first."""
    if metric == "l2":
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # exact: no |a|^2-2ab+|b|^2 form
    else:
        xn = F.normalize(x, dim=-1)
        d = 1.0 - xn @ xn.T
    if not loop:
        d = d.clone()
        d.fill_diagonal_(float("inf"))
    dist, idx = d.sort(dim=1, stable=True)
    return idx[:, :k], dist[:, :k]


def edge_dists(x: torch.Tensor, e: EdgeSet, metric: str) -> torch.Tensor:
    """Distances of the EdgeSet's edges, ``[R, K]``, computed directly here."""
    a, b = x[e.row], x[e.col]
    if metric == "l2":
        d = ((a - b) ** 2).sum(-1)
    else:
        d = 1.0 - F.cosine_similarity(a, b, dim=-1)
    return d.view(e.num_rows, e.degree)


def check_csr(e: EdgeSet) -> None:
    """Structural invariants every EdgeSet must satisfy."""
    assert e.ptr.shape == (e.num_rows + 1,)
    assert e.ptr[0] == 0 and e.ptr[-1] == e.num_edges
    assert torch.equal(e.row, torch.repeat_interleave(torch.arange(e.num_rows, device=e.device),
                                                       e.counts))
    if e.degree is not None:
        assert bool((e.counts == e.degree).all())


# ----------------------------------------------------------------------------- kNN
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("loop", [False, True])
def test_knn_matches_brute_force(device, metric, loop):
    x = torch.randn(57, 5, dtype=torch.float64, device=device)
    k = 6
    ref_idx, ref_d = brute_knn(x, k, metric, loop)
    results = []
    for chunk in (None, 1, 7, 57, 1000):
        e = EdgeSet.knn(x, k, metric=metric, loop=loop, chunk_size=chunk)
        check_csr(e)
        assert (e.num_rows, e.num_cols, e.degree) == (57, 57, k)
        d = edge_dists(x, e, metric)
        torch.testing.assert_close(d, ref_d)
        # random float64 points have no distance ties: indices must match exactly
        assert torch.equal(e.col.view(57, k), ref_idx)
        if not loop:
            assert not bool((e.row == e.col).any())
        else:
            assert torch.equal(e.col.view(57, k)[:, 0], torch.arange(57, device=device))
        results.append(e.col)
    for c in results[1:]:
        assert torch.equal(c, results[0])


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_knn_batched_matches_per_graph_brute_force(device, metric):
    sizes = [9, 23, 14]
    k = 4
    x = torch.randn(sum(sizes), 3, dtype=torch.float64, device=device)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes)).to(device)
    ref = []
    start = 0
    for s in sizes:
        idx, _ = brute_knn(x[start:start + s], k, metric, False)
        ref.append(idx + start)
        start += s
    ref = torch.cat(ref)
    for chunk in (None, 2, 5, 100):
        e = EdgeSet.knn(x, k, batch=batch, metric=metric, chunk_size=chunk)
        check_csr(e)
        assert torch.equal(e.col.view(-1, k), ref)
        # no edge crosses graphs
        assert torch.equal(batch[e.row], batch[e.col])
        assert e.batch is not None and torch.equal(e.batch, batch)
        assert e.num_graphs == 3


def test_knn_ties_distances_agree():
    # integer grid: many ties; compare sorted distances only
    g = torch.arange(5, dtype=torch.float64)
    x = torch.cartesian_prod(g, g)
    e = EdgeSet.knn(x, 8, chunk_size=3)
    _, ref_d = brute_knn(x, 8, "l2", False)
    torch.testing.assert_close(edge_dists(x, e, "l2").sort(1).values, ref_d)


def test_knn_errors():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="needs at least"):
        EdgeSet.knn(x, 5)
    with pytest.raises(ValueError, match="needs at least"):
        EdgeSet.knn(x, 6, loop=True)
    EdgeSet.knn(x, 5, loop=True)  # k == n with loops is fine
    with pytest.raises(ValueError, match="graph 1"):
        EdgeSet.knn(x, 2, batch=torch.tensor([0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="sorted"):
        EdgeSet.knn(x, 1, batch=torch.tensor([0, 1, 0, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        EdgeSet.knn(x, 1, batch=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="metric"):
        EdgeSet.knn(x, 2, metric="l3")
    with pytest.raises(ValueError, match=">= 1"):
        EdgeSet.knn(x, 0)
    with pytest.raises(ValueError, match="NaN"):
        EdgeSet.knn(torch.tensor([[0.0, float("nan")], [1.0, 1.0], [2.0, 2.0]]), 1)
    with pytest.raises(ValueError, match="dimensions"):
        EdgeSet.knn(torch.randn(5), 1)


# ----------------------------------------------------------------------------- dense
@pytest.mark.parametrize("loop", [True, False])
@pytest.mark.parametrize("n", [2, 3, 6])
def test_dense_matches_double_loop(device, n, loop):
    e = EdgeSet.dense(n, loop=loop, device=device)
    pairs = [(i, j) for i in range(n) for j in range(n) if loop or i != j]
    assert e.row.tolist() == [p[0] for p in pairs]
    assert e.col.tolist() == [p[1] for p in pairs]
    assert e.degree == (n if loop else n - 1)
    assert e.is_dense and e.dense_loop is loop
    assert e.device.type == device.type
    check_csr(e)


def test_dense_bipartite_and_errors():
    e = EdgeSet.dense(2, 3)
    assert list(zip(e.row.tolist(), e.col.tolist())) == [(i, j) for i in range(2) for j in range(3)]
    assert (e.num_rows, e.num_cols, e.degree) == (2, 3, 3)
    with pytest.raises(ValueError, match="square"):
        EdgeSet.dense(2, 3, loop=False)
    with pytest.raises(ValueError, match="n >= 2"):
        EdgeSet.dense(1, loop=False)
    with pytest.raises(ValueError, match="at least one"):
        EdgeSet.dense(0)


# ----------------------------------------------------------------------------- edge_index
def test_from_edge_index_rows_are_dst_and_order_kept(device):
    src = torch.tensor([3, 0, 2, 1, 0, 3, 2], device=device)
    dst = torch.tensor([1, 2, 1, 0, 1, 2, 3], device=device)
    e = EdgeSet.from_edge_index(torch.stack([src, dst]), num_nodes=5)
    check_csr(e)
    expected = []
    for r in range(5):
        expected += [(r, s) for s, d in zip(src.tolist(), dst.tolist()) if d == r]
    assert list(zip(e.row.tolist(), e.col.tolist())) == expected
    assert e.counts.tolist() == [1, 3, 2, 1, 0]
    assert e.degree is None and not e.is_dense
    assert e.num_rows == e.num_cols == 5


def test_from_edge_index_regularity_detection():
    # a directed cycle: every node has in-degree 1
    ring = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    assert EdgeSet.from_edge_index(ring).degree == 1
    # two in-edges each
    two = torch.tensor([[1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2]])
    assert EdgeSet.from_edge_index(two).degree == 2
    # an isolated node breaks regularity
    assert EdgeSet.from_edge_index(ring, num_nodes=5).degree is None
    assert EdgeSet.from_edge_index(ring).num_rows == 4  # inferred


def test_from_edge_index_errors():
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        EdgeSet.from_edge_index(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        EdgeSet.from_edge_index(torch.tensor([[0, 5], [1, 0]]), num_nodes=3)
    with pytest.raises(TypeError, match="integer"):
        EdgeSet.from_edge_index(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), num_nodes=3)


def test_from_edge_index_with_batch():
    ei = torch.tensor([[1, 0, 3, 2], [0, 1, 2, 3]])
    e = EdgeSet.from_edge_index(ei, 4, batch=torch.tensor([0, 0, 1, 1]))
    assert e.num_graphs == 2 and e.batch.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="one graph id per row"):
        EdgeSet.from_edge_index(ei, 4, batch=torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- top-k
def test_from_topk(device):
    idx = torch.tensor([[4, 1, 2], [0, 0, 3]], device=device)
    e = EdgeSet.from_topk(idx, num_cols=5)
    check_csr(e)
    assert e.row.tolist() == [0, 0, 0, 1, 1, 1]
    assert e.col.tolist() == [4, 1, 2, 0, 0, 3]
    assert (e.num_rows, e.num_cols, e.degree) == (2, 5, 3)
    with pytest.raises(ValueError, match="must lie in"):
        EdgeSet.from_topk(idx, num_cols=4)
    with pytest.raises(ValueError, match=r"\[R, K\]"):
        EdgeSet.from_topk(idx.reshape(-1), num_cols=5)


# ----------------------------------------------------------------------------- union
def test_union_equals_set_union(device):
    gen = torch.Generator().manual_seed(3)
    n = 30
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64).to(device)
    y = torch.randn(n, 4, generator=gen, dtype=torch.float64).to(device)
    a, b = EdgeSet.knn(x, 5), EdgeSet.knn(y, 3)
    u = EdgeSet.union(a, b)
    check_csr(u)
    ref = set(zip(a.row.tolist(), a.col.tolist())) | set(zip(b.row.tolist(), b.col.tolist()))
    got = list(zip(u.row.tolist(), u.col.tolist()))
    assert got == sorted(ref)  # rows sorted, columns sorted per row, no duplicates
    assert u.num_edges == len(ref)
    # union with itself is the same edge set; degree 5 is detected again
    s = EdgeSet.union(a, a)
    assert s.degree == 5
    assert set(zip(s.row.tolist(), s.col.tolist())) == set(zip(a.row.tolist(), a.col.tolist()))


def test_union_keeps_batch_and_checks_shape():
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    x = torch.randn(6, 2)
    a = EdgeSet.knn(x, 1, batch=batch)
    b = EdgeSet.knn(x.flip(1), 2, batch=batch)
    u = EdgeSet.union(a, b)
    assert u.batch is not None and torch.equal(u.batch, batch) and u.num_graphs == 2
    with pytest.raises(ValueError, match="same shape"):
        EdgeSet.union(EdgeSet.dense(3), EdgeSet.dense(4))


# ----------------------------------------------------------------------------- sample_pairs
def test_sample_pairs():
    nodes, e = EdgeSet.sample_pairs(7, 10)
    assert nodes.tolist() == list(range(7))
    assert e.is_dense and e.num_rows == 7 and e.dense_loop is False
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    n1, e1 = EdgeSet.sample_pairs(100, 12, generator=g1)
    n2, _ = EdgeSet.sample_pairs(100, 12, generator=g2)
    assert torch.equal(n1, n2)  # seeded
    assert torch.equal(n1, n1.sort().values) and n1.unique().numel() == 12
    assert int(n1.min()) >= 0 and int(n1.max()) < 100
    assert e1.num_rows == 12 and e1.num_edges == 12 * 11
    n3, _ = EdgeSet.sample_pairs(100, 12, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(n1, n3)
    _, el = EdgeSet.sample_pairs(4, 4, loop=True)
    assert el.num_edges == 16
    with pytest.raises(ValueError, match="max_samples"):
        EdgeSet.sample_pairs(5, 0)


# ----------------------------------------------------------------------------- padded / positions
def test_to_padded_and_edge_position(device):
    ei = torch.tensor([[1, 2, 3, 0, 4, 2], [0, 0, 0, 2, 2, 3]], device=device)
    e = EdgeSet.from_edge_index(ei, 5)
    vals = torch.arange(1.0, 7.0, device=device)
    pos = e.edge_position()
    ref_pos = []
    for r in range(5):
        ref_pos += list(range(int(e.counts[r])))
    assert pos.tolist() == ref_pos
    p = e.to_padded(vals, fill=-1.0)
    assert p.shape == (5, 3)
    ref = torch.full((5, 3), -1.0)
    for i, (r, j) in enumerate(zip(e.row.tolist(), ref_pos)):
        ref[r, j] = vals[i]
    assert torch.equal(p.cpu(), ref)
    assert torch.equal(p[e.row, pos], vals)
    # regular: a plain view
    reg = EdgeSet.from_topk(torch.tensor([[1, 0], [0, 1]]), 2)
    assert torch.equal(reg.to_padded(torch.arange(4.0), fill=0.0), torch.arange(4.0).view(2, 2))
    assert reg.edge_position().tolist() == [0, 1, 0, 1]


def test_regular_view_and_helpers():
    e = EdgeSet.dense(3, loop=False)
    assert e.regular_view(torch.arange(6.0)).shape == (3, 2)
    irr = dataclasses.replace(e, degree=None, dense_loop=None)
    with pytest.raises(ValueError, match="regular"):
        irr.regular_view(torch.arange(6.0))
    assert "dense(loop=False)" in repr(e) and "irregular" in repr(irr)
    assert "regular(K=2)" in repr(EdgeSet.from_topk(torch.zeros(3, 2, dtype=torch.long), 3))
    moved = e.with_batch(torch.tensor([0, 1, 1])).to("cpu")
    assert moved.num_graphs == 2 and moved.batch.tolist() == [0, 1, 1]
    assert e.with_batch(None).batch is None


def test_from_rows_sorts_stably():
    row = torch.tensor([2, 0, 2, 1, 0])
    col = torch.tensor([0, 1, 1, 2, 2])
    e = EdgeSet.from_rows(row, col, 3)
    assert list(zip(e.row.tolist(), e.col.tolist())) == [(0, 1), (0, 2), (1, 2), (2, 0), (2, 1)]
    assert e.degree is None


def test_knn_float32_far_from_origin_is_translation_invariant():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(300, 3, generator=gen, dtype=torch.float64) * 0.01 + 1000.0).float()
    _, ref_d = brute_knn(x.double(), 5, "l2", False)
    e = EdgeSet.knn(x, 5)
    # Exact (float64) distances of the neighbours found in float32: equal to the true 5 nearest
    # up to float32 rounding of near-ties (without centring, most rows were simply wrong).
    got = edge_dists(x.double(), e, "l2").sort(1).values
    torch.testing.assert_close(got, ref_d, rtol=1e-4, atol=0.0)


def test_union_takes_batch_from_second_graph():
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    a = EdgeSet.knn(torch.randn(6, 2), 1)
    b = EdgeSet.knn(torch.randn(6, 2), 1, batch=batch)
    u = EdgeSet.union(a, b)
    assert torch.equal(u.batch, batch)
    assert u.num_graphs == 2


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("loop", [False, True])
def test_knn_equal_size_batched_path_matches_brute_force(metric, loop):
    """Equal-size graphs take the batched-GEMM path; it must equal per-graph brute force."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6 * 20, 3, generator=gen, dtype=torch.float64)
    batch = torch.arange(6).repeat_interleave(20)
    e = EdgeSet.knn(x, 4, batch=batch, metric=metric, loop=loop)
    for g in range(6):
        ref, _ = brute_knn(x[g * 20:(g + 1) * 20], 4, metric, loop)
        got = e.col.view(-1, 4)[g * 20:(g + 1) * 20] - g * 20
        assert torch.equal(got, ref)
    assert e.num_graphs == 6 and torch.equal(e.batch, batch)


# ----------------------------------------------------------------------------- equal-size batches
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("budget_graphs", [None, 1, 2])
def test_knn_equal_size_batched_path(device, monkeypatch, metric, loop, budget_graphs):
    """Equal-size graphs take the batched-GEMM path; it must equal per-graph brute force,
    also when the chunk budget holds only 1 or 2 graphs at a time."""
    import graphkd.graphs as graphs_mod

    g, p, k = 5, 12, 4
    if budget_graphs is not None:
        monkeypatch.setattr(graphs_mod, "KNN_CHUNK_ELEMENTS", budget_graphs * p * p)
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(g * p, 3, generator=gen, dtype=torch.float64) + 50.0).to(device)
    batch = torch.arange(g).repeat_interleave(p).to(device)
    ref = torch.cat([brute_knn(x[i * p:(i + 1) * p], k, metric, loop)[0] + i * p
                     for i in range(g)])
    e = EdgeSet.knn(x, k, batch=batch, metric=metric, loop=loop)
    check_csr(e)
    assert torch.equal(e.col.view(-1, k), ref)
    assert e.degree == k and e.num_graphs == g and torch.equal(e.batch, batch)
    # the chunked per-graph path gives the same graph
    e2 = EdgeSet.knn(x, k, batch=batch, metric=metric, loop=loop, chunk_size=5)
    assert torch.equal(e2.col, e.col)


def test_knn_equal_size_float32_far_from_origin():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4 * 100, 3, generator=gen, dtype=torch.float64) * 0.01 + 1000.0).float()
    batch = torch.arange(4).repeat_interleave(100)
    e = EdgeSet.knn(x, 5, batch=batch)
    for i in range(4):
        xi = x[i * 100:(i + 1) * 100].double()
        _, ref_d = brute_knn(xi, 5, "l2", False)
        d = ((xi[e.row[i * 500:(i + 1) * 500] - i * 100]
              - xi[e.col[i * 500:(i + 1) * 500] - i * 100]) ** 2).sum(-1).view(100, 5)
        torch.testing.assert_close(d, ref_d, rtol=1e-4, atol=0.0)


def test_knn_does_not_track_gradients():
    x = torch.randn(20, 3, requires_grad=True)
    e = EdgeSet.knn(x, 3)
    assert not e.col.requires_grad
    assert x.grad is None


# ----------------------------------------------------------------------------- lazy dense lists
@pytest.mark.parametrize("loop", [True, False])
def test_dense_edge_lists_are_lazy_and_correct(device, loop):
    from graphkd.kernels import edge_kernel

    n = 5
    e = EdgeSet.dense(n, loop=loop, device=device)
    x = torch.randn(n, 3, dtype=torch.float64, device=device)
    w = edge_kernel(x, e, "dot")
    assert w.shape == (e.num_edges,) == ((n * n if loop else n * (n - 1)),)
    # the dense kernel path did not need the edge lists
    assert e._row is None and e._col is None
    moved = e.to(device).with_batch(torch.zeros(n, dtype=torch.long, device=device))
    pairs = [(i, j) for i in range(n) for j in range(n) if loop or i != j]
    for g in (e, moved):
        assert list(zip(g.row.tolist(), g.col.tolist())) == pairs
    # values on the materialised lists equal the dense path
    torch.testing.assert_close(w, (x[e.row] * x[e.col]).sum(-1))


def test_sample_nodes():
    assert EdgeSet.sample_nodes(4, 10).tolist() == [0, 1, 2, 3]
    a = EdgeSet.sample_nodes(50, 7, generator=torch.Generator().manual_seed(9))
    b = EdgeSet.sample_nodes(50, 7, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and a.numel() == 7 and a.unique().numel() == 7
    assert torch.equal(a, a.sort().values)
    nodes, _ = EdgeSet.sample_pairs(50, 7, generator=torch.Generator().manual_seed(9))
    assert torch.equal(nodes, a)
    with pytest.raises(ValueError, match="max_samples"):
        EdgeSet.sample_nodes(5, 0)


def test_max_degree_recorded_by_builders():
    ei = torch.tensor([[1, 2, 3, 0, 4, 2], [0, 0, 0, 2, 2, 3]])
    e = EdgeSet.from_edge_index(ei, 5)
    assert e.max_degree == int(e.counts.max()) == 3
    assert EdgeSet.dense(4, loop=False).max_degree == 3
    assert EdgeSet.from_topk(torch.zeros(3, 2, dtype=torch.long), 3).max_degree == 2
    x = torch.randn(12, 2)
    a, b = EdgeSet.knn(x, 2), EdgeSet.knn(x.flip(1), 3)
    u = EdgeSet.union(a, b)
    assert u.max_degree == int(u.counts.max())
    assert e.to("cpu").max_degree == 3
    assert e.with_batch(torch.zeros(5, dtype=torch.long)).max_degree == 3
    # padding with the recorded maximum equals padding with the computed one
    unknown = EdgeSet(e.ptr, e.row, e.col, e.num_rows, e.num_cols)
    assert unknown.max_degree is None
    vals = torch.arange(6.0)
    assert torch.equal(unknown.to_padded(vals, -1.0), e.to_padded(vals, -1.0))
