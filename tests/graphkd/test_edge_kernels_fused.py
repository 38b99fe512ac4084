"""Gathered-edge kernels (issue 17, item 2): the fused, edge-chunked evaluation equals the
unfused gather ``k.edge(x[row], x_cols[col])`` in values and gradients, and allocates no
``[E, D]`` tensor."""

from __future__ import annotations

import pytest
import torch

import graphkd.kernels as kernels
from graphkd.graphs import EdgeSet
from graphkd.kernels import KERNELS, edge_kernel

D64 = torch.float64
NAMES = ["dot", "cosine", "poly", "rbf", "l2", "l2sq", "l1", "gaussian_l1"]


def _unfused(x, edges, name, x_cols=None, **params):
    xc = x if x_cols is None else x_cols
    if name == "cosine":
        x, xc = kernels._normalize(x, 1e-8), kernels._normalize(xc, 1e-8)
        name = "dot"
    return KERNELS[name].edge(x.index_select(0, edges.row), xc.index_select(0, edges.col),
                              **params)


def _graphs(n, x):
    g = torch.Generator().manual_seed(0)
    irregular = EdgeSet.from_edge_index(torch.randint(0, n, (2, 7 * n), generator=g), n)
    return {"irregular": irregular, "regular": EdgeSet.knn(x.detach(), 4)}


@pytest.fixture(params=[None, 5])
def small_chunks(request, monkeypatch):
    """``5``: chunks of 5 edges / D elements (many chunks, a ragged last one)."""
    if request.param is not None:
        monkeypatch.setattr(kernels, "_edge_chunk", lambda x: request.param)
    return request.param


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bipartite", [False, True])
def test_fused_equals_unfused_values_and_grads(name, bipartite, small_chunks):
    n = 23
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, dtype=D64, generator=g, requires_grad=True)
    y = torch.randn(n, 6, dtype=D64, generator=g, requires_grad=True)
    x_cols = y if bipartite else None
    ins = (x, y) if bipartite else (x,)
    for edges in _graphs(n, x).values():
        w = edge_kernel(x, edges, name, x_cols=x_cols)
        w_old = _unfused(x, edges, name, x_cols=x_cols)
        torch.testing.assert_close(w, w_old, rtol=1e-12, atol=1e-12)
        v = torch.randn(w.shape, dtype=D64, generator=g)
        for a, b in zip(torch.autograd.grad(w, ins, v), torch.autograd.grad(w_old, ins, v)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert torch.autograd.gradcheck(
            lambda *t, e=edges: edge_kernel(t[0], e, name, x_cols=t[1] if bipartite else None),
            ins)


def test_fused_kernel_parameters_and_duplicates(small_chunks):
    x = torch.randn(12, 3, dtype=D64)
    x[5] = x[2]  # a zero difference: the l1 / l2 subgradient at 0 is 0, as before
    e = EdgeSet.from_edge_index(torch.tensor([[2, 5, 1, 0, 7], [5, 2, 3, 3, 3]]), 12)
    for name, params in [("rbf", {"gamma": 0.3}), ("gaussian_l1", {"scale": 7.0}),
                         ("poly", {"degree": 3, "coef": 0.5}), ("l2", {"eps": 1e-6})]:
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        w = edge_kernel(a, e, name, **params)
        w_old = _unfused(b, e, name, **params)
        torch.testing.assert_close(w, w_old, rtol=1e-12, atol=0)
        (ga,), (gb,) = torch.autograd.grad(w.sum(), a), torch.autograd.grad(w_old.sum(), b)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-15)
    for name in ("l1", "l2"):
        a = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(edge_kernel(a, e, name).sum(), a)
        assert torch.isfinite(g).all()


def test_fused_keeps_no_edge_by_width_tensor():
    """Forward and backward allocate and save nothing of size ``[E, D]`` (chunks only)."""
    n, d, k = 4000, 16, 10
    x = torch.randn(n, d, requires_grad=True)
    e = EdgeSet.from_edge_index(torch.randint(0, n, (2, n * k)), n)
    chunk = kernels._edge_chunk(x) * d
    assert chunk < n * k * d
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                  lambda t: t):
        w = edge_kernel(x, e, "gaussian_l1")
    assert max(saved) < n * k * d
    w.sum().backward()


def test_lsp_gaussian_l1_equals_unfused_path():
    from graphkd.divergences import row_kl
    from graphkd.losses.lsp import lsp_loss

    n = 40
    g = torch.Generator().manual_seed(3)
    s = torch.randn(n, 5, dtype=D64, generator=g, requires_grad=True)
    t = torch.randn(n, 8, dtype=D64, generator=g)
    e = EdgeSet.from_edge_index(torch.randint(0, n, (2, 6 * n), generator=g), n)
    s2 = s.detach().clone().requires_grad_()
    new = lsp_loss(s, t, e, "gaussian_l1", scale=2.0)
    old = row_kl(_unfused(s2, e, "l1") * -0.5, _unfused(t, e, "l1") * -0.5, e)
    torch.testing.assert_close(new, old, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(new, s)[0], torch.autograd.grad(old, s2)[0],
                               rtol=1e-10, atol=1e-14)
