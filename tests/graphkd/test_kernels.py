"""Kernels on every EdgeSet layout against a Python per-edge loop of each formula."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from graphkd.graphs import EdgeSet
from graphkd.kernels import KERNELS, edge_kernel, offdiagonal, pairwise_kernel, pairwise_sqdist


def formula(name: str, a: list[float], b: list[float], **p) -> float:
    """The kernel formulas, written with plain Python floats."""
    dot = sum(x * y for x, y in zip(a, b))
    sq = sum((x - y) ** 2 for x, y in zip(a, b))
    l1 = sum(abs(x - y) for x, y in zip(a, b))
    if name == "dot":
        return dot
    if name == "cosine":
        eps = p.get("eps", 1e-8)
        na = max(math.sqrt(sum(x * x for x in a)), eps)
        nb = max(math.sqrt(sum(y * y for y in b)), eps)
        return dot / (na * nb)
    if name == "poly":
        return (dot + p.get("coef", 1.0)) ** p.get("degree", 2)
    if name == "rbf":
        return math.exp(-p.get("gamma", 0.5) * sq)
    if name == "l2":
        return math.sqrt(max(sq, p.get("eps", 1e-12)))
    if name == "l2sq":
        return sq
    if name == "l1":
        return l1
    if name == "gaussian_l1":
        return math.exp(-l1 / p.get("scale", 100.0))
    raise KeyError(name)


PARAMS = {
    "dot": {}, "cosine": {}, "poly": {"degree": 3, "coef": 0.5}, "rbf": {"gamma": 0.3},
    "l2": {}, "l2sq": {}, "l1": {}, "gaussian_l1": {"scale": 2.0},
}


def loop_reference(x, e: EdgeSet, name: str, x_cols=None, **p) -> torch.Tensor:
    xc = x if x_cols is None else x_cols
    xl, cl = x.tolist(), xc.tolist()
    return torch.tensor(
        [formula(name, xl[r], cl[c], **p) for r, c in zip(e.row.tolist(), e.col.tolist())],
        dtype=torch.float64,
    )


def layouts(x: torch.Tensor) -> dict[str, EdgeSet]:
    n = x.shape[0]
    knn = EdgeSet.knn(x, 3)
    ei = torch.tensor([[1, 2, 3, 0, 4, 2, 5, 5], [0, 0, 0, 2, 2, 3, 1, 4]], device=x.device)
    return {
        "dense": EdgeSet.dense(n, device=x.device),
        "dense_noloop": EdgeSet.dense(n, loop=False, device=x.device),
        "regular": knn,
        "irregular": EdgeSet.from_edge_index(ei, n),
        "regular_as_irregular": dataclasses.replace(knn, degree=None),
    }


def test_registry_is_the_documented_set():
    assert set(KERNELS) == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_kernel_all_layouts_match_python_loop(device, name):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64).to(device)
    for layout, e in layouts(x).items():
        got = edge_kernel(x, e, name, **PARAMS[name])
        assert got.shape == (e.num_edges,), layout
        assert got.dtype == torch.float64
        ref = loop_reference(x.cpu(), e.to("cpu"), name, **PARAMS[name])
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=1e-10, msg=layout)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_kernel_default_parameters(name):
    x = torch.randn(5, 3, dtype=torch.float64)
    e = EdgeSet.knn(x, 2)
    torch.testing.assert_close(edge_kernel(x, e, name), loop_reference(x, e, name))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_bipartite(device, name):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 4, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(5, 4, generator=gen, dtype=torch.float64).to(device)
    top = EdgeSet.from_topk(torch.tensor([[4, 0], [1, 1], [2, 3]], device=device), 5)
    for e in (EdgeSet.dense(3, 5, device=device), top, dataclasses.replace(top, degree=None)):
        got = edge_kernel(a, e, name, x_cols=b, **PARAMS[name])
        ref = loop_reference(a.cpu(), e.to("cpu"), name, x_cols=b.cpu(), **PARAMS[name])
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=1e-10)
    m = pairwise_kernel(a, b, name, **PARAMS[name])
    dense = EdgeSet.dense(3, 5)
    torch.testing.assert_close(
        m.cpu().reshape(-1), loop_reference(a.cpu(), dense, name, x_cols=b.cpu(), **PARAMS[name]),
        rtol=1e-10, atol=1e-10)


def test_cosine_zero_row_is_finite():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    w = edge_kernel(x, EdgeSet.dense(3), "cosine")
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, loop_reference(x, EdgeSet.dense(3), "cosine"))


def test_l2_gradient_finite_at_zero_distance():
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    for e in (EdgeSet.dense(3), EdgeSet.knn(x.detach(), 1)):
        edge_kernel(x, e, "l2").sum().backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None


@pytest.mark.parametrize("name", ["dot", "cosine", "poly", "rbf", "l2", "gaussian_l1"])
def test_gradcheck_irregular(name):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    e = EdgeSet.from_edge_index(torch.tensor([[1, 2, 0, 4, 3], [0, 0, 1, 1, 2]]), 5)
    assert torch.autograd.gradcheck(lambda t: edge_kernel(t, e, name), (x,))
    d = EdgeSet.dense(5, loop=False)
    assert torch.autograd.gradcheck(lambda t: edge_kernel(t, d, name), (x,))


def test_pairwise_helpers():
    a = torch.randn(4, 3, dtype=torch.float64)
    b = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(pairwise_sqdist(a, b), torch.cdist(a, b) ** 2)
    assert (pairwise_sqdist(a, a).diagonal() >= 0).all()
    torch.testing.assert_close(pairwise_kernel(a), a @ a.T)
    m = torch.arange(16.0).view(4, 4)
    ref = torch.stack([torch.cat([m[i, :i], m[i, i + 1:]]) for i in range(4)])
    assert torch.equal(offdiagonal(m), ref)


def test_errors():
    x = torch.randn(4, 3)
    e = EdgeSet.dense(4)
    with pytest.raises(ValueError, match="valid kernels") as info:
        edge_kernel(x, e, "gauss")
    for k in KERNELS:
        assert k in str(info.value)
    with pytest.raises(ValueError, match="valid kernels"):
        pairwise_kernel(x, kernel="nope")
    with pytest.raises(ValueError, match="equal widths"):
        edge_kernel(x, EdgeSet.dense(4, 2), "dot", x_cols=torch.randn(2, 5))
    with pytest.raises(ValueError, match="EdgeSet is"):
        edge_kernel(x, EdgeSet.dense(5), "dot")
    with pytest.raises(ValueError, match="EdgeSet is"):
        edge_kernel(x, EdgeSet.dense(4, 3), "dot", x_cols=torch.randn(2, 3))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        edge_kernel(bad, e, "dot")
    with pytest.raises(ValueError, match="inf"):
        edge_kernel(x, EdgeSet.dense(4, 2), "dot", x_cols=torch.tensor([[1.0, 2, 3],
                                                                           [float("inf"), 0, 0]]))
    with pytest.raises(ValueError, match="dimensions"):
        edge_kernel(x.view(4, 3, 1), e, "dot")
    with pytest.raises(TypeError, match="floating"):
        edge_kernel(torch.ones(4, 3, dtype=torch.long), e, "dot")


def test_check_flag_and_overflowing_sum():
    x = torch.randn(4, 3)
    bad = x.clone()
    bad[0, 0] = float("nan")
    e = EdgeSet.dense(4)
    # check=False skips the scan (the caller validated its inputs)
    assert torch.isnan(edge_kernel(bad, e, "dot", check=False)).any()
    # finite values whose sum overflows float32 are accepted (exact scan after the cheap one)
    big = torch.full((4, 3), 3e38)
    big[:, 1] = -3e38
    assert torch.isinf(big.sum())
    w = edge_kernel(big * 1e-30, e, "dot")  # kernel itself in range
    assert torch.isfinite(w).all()
    edge_kernel(big, EdgeSet.dense(4), "l1", check=True)  # no error: every entry is finite
    inf = big.clone()
    inf[2, 2] = float("inf")
    with pytest.raises(ValueError, match="1 inf"):
        edge_kernel(inf, e, "dot")


def test_cosine_zero_rows_on_gathered_paths():
    """The sparse cosine path normalises feature rows once; a zero row must give 0, not NaN,
    and values must equal the per-edge formula."""
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    reg = EdgeSet.from_topk(torch.tensor([[1, 0], [0, 2], [3, 1], [2, 0]]), 4)
    for e in (reg, dataclasses.replace(reg, degree=None)):
        w = edge_kernel(x, e, "cosine")
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w, loop_reference(x, e, "cosine"))
        assert (w[e.row == 0] == 0).all() and (w[e.col == 0] == 0).all()


@pytest.mark.parametrize("kernel", ["dot", "cosine", "poly", "rbf", "l2", "l2sq", "l1",
                                    "gaussian_l1"])
def test_block_path_equals_gather_path_values_and_gradients(kernel, device):
    """kNN unions of equal-size clouds take the batched-block path; it must equal the gather."""
    gen = torch.Generator().manual_seed(5)
    batch = torch.arange(6).repeat_interleave(12).to(device)
    x = (torch.randn(72, 5, generator=gen, dtype=torch.float64) + 3.0).to(device)
    y = torch.randn(72, 4, generator=gen, dtype=torch.float64).to(device)
    e = EdgeSet.union(EdgeSet.knn(x, 3, batch=batch), EdgeSet.knn(y, 3, batch=batch))
    assert e.block_size == 12 and e.degree is None and e.num_graphs == 6
    plain = dataclasses.replace(e, block_size=None)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    w_block = edge_kernel(xa, e, kernel)
    w_plain = edge_kernel(xb, plain, kernel)
    torch.testing.assert_close(w_block, w_plain, rtol=1e-9, atol=1e-9)
    wts = torch.randn(w_block.shape, generator=gen, dtype=torch.float64).to(device)
    (w_block * wts).sum().backward()
    (w_plain * wts).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-8, atol=1e-9)


def test_block_size_is_recorded_only_for_equal_blocks():
    x = torch.randn(30, 3)
    assert EdgeSet.knn(x, 4).block_size == 30
    assert EdgeSet.knn(x, 4, batch=torch.arange(3).repeat_interleave(10)).block_size == 10
    uneven = torch.tensor([0] * 12 + [1] * 18)
    assert EdgeSet.knn(x, 4, batch=uneven).block_size is None
    assert EdgeSet.union(EdgeSet.knn(x, 4), EdgeSet.knn(x[:, :2], 4)).block_size == 30
