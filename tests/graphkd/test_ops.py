"""Segment ops: regular path vs irregular path vs a Python per-row reference."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from graphkd.graphs import EdgeSet
from graphkd.ops import (
    gather_rows,
    row_log_softmax,
    row_logcumsumexp,
    row_logsumexp,
    row_max,
    row_mean,
    row_softmax,
    row_sum,
)


def py_rows(values: torch.Tensor, e: EdgeSet) -> list[list[float]]:
    """Each row's edge values (1-D values), in edge order, as Python lists."""
    v = values.detach().cpu().tolist()
    ptr = e.ptr.cpu().tolist()
    return [v[ptr[r]:ptr[r + 1]] for r in range(e.num_rows)]


def py_lse(xs: list[float]) -> float:
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ref_per_row(op: str, values: torch.Tensor, e: EdgeSet) -> torch.Tensor:
    rows = py_rows(values, e)
    if op == "sum":
        out = [sum(r) for r in rows]
    elif op == "mean":
        out = [sum(r) / len(r) if r else 0.0 for r in rows]
    elif op == "max":
        out = [max(r) if r else -math.inf for r in rows]
    elif op == "logsumexp":
        out = [py_lse(r) for r in rows]
    else:
        raise KeyError(op)
    return torch.tensor(out, dtype=torch.float64)


def ref_per_edge(op: str, values: torch.Tensor, e: EdgeSet) -> torch.Tensor:
    out: list[float] = []
    for r in py_rows(values, e):
        lse = py_lse(r)
        for i, x in enumerate(r):
            if op == "softmax":
                out.append(math.exp(x - lse))
            elif op == "log_softmax":
                out.append(x - lse)
            elif op == "lcse_rev":
                out.append(py_lse(r[i:]))
            elif op == "lcse_fwd":
                out.append(py_lse(r[:i + 1]))
            else:
                raise KeyError(op)
    return torch.tensor(out, dtype=torch.float64)


ROW_OPS = {"sum": row_sum, "mean": row_mean, "max": row_max, "logsumexp": row_logsumexp}
EDGE_OPS = {
    "softmax": row_softmax,
    "log_softmax": row_log_softmax,
    "lcse_rev": lambda v, e: row_logcumsumexp(v, e, reverse=True),
    "lcse_fwd": lambda v, e: row_logcumsumexp(v, e, reverse=False),
}


def irregular_graph(device) -> EdgeSet:
    """Rows of 3, 0 (empty), 1, 4, 0, 2 edges."""
    counts = [3, 0, 1, 4, 0, 2]
    row = torch.repeat_interleave(torch.arange(6), torch.tensor(counts))
    col = torch.tensor([1, 2, 5, 0, 1, 2, 3, 4, 0, 3])
    return EdgeSet.from_rows(row, col, 6).to(device)


def regular_pair(device) -> tuple[EdgeSet, EdgeSet]:
    idx = torch.randint(0, 7, (7, 4))
    e = EdgeSet.from_topk(idx, 7).to(device)
    return e, dataclasses.replace(e, degree=None)


@pytest.mark.parametrize("op", sorted(ROW_OPS))
def test_row_ops_match_reference(device, op):
    fn = ROW_OPS[op]
    irr = irregular_graph(device)
    assert irr.degree is None
    v = torch.randn(irr.num_edges, dtype=torch.float64, device=device)
    torch.testing.assert_close(fn(v, irr).cpu(), ref_per_row(op, v, irr))
    reg, reg_irr = regular_pair(device)
    v = torch.randn(reg.num_edges, dtype=torch.float64, device=device)
    a, b = fn(v, reg), fn(v, reg_irr)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.cpu(), ref_per_row(op, v, reg))


@pytest.mark.parametrize("op", sorted(EDGE_OPS))
def test_edge_ops_match_reference(device, op):
    fn = EDGE_OPS[op]
    irr = irregular_graph(device)
    v = torch.randn(irr.num_edges, dtype=torch.float64, device=device)
    torch.testing.assert_close(fn(v, irr).cpu(), ref_per_edge(op, v, irr))
    reg, reg_irr = regular_pair(device)
    v = torch.randn(reg.num_edges, dtype=torch.float64, device=device)
    a, b = fn(v, reg), fn(v, reg_irr)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.cpu(), ref_per_edge(op, v, reg))


def test_single_edge_rows():
    e = EdgeSet.from_topk(torch.tensor([[2], [0], [1]]), 3)
    irr = dataclasses.replace(e, degree=None)
    v = torch.tensor([3.0, -1.0, 1000.0], dtype=torch.float64)
    for g in (e, irr):
        torch.testing.assert_close(row_softmax(v, g), torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(row_log_softmax(v, g), torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(row_logsumexp(v, g), v)
        torch.testing.assert_close(row_logcumsumexp(v, g), v)
        torch.testing.assert_close(row_max(v, g), v)
        torch.testing.assert_close(row_mean(v, g), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_values_are_stable(device, dtype):
    irr = irregular_graph(device)
    reg, reg_irr = regular_pair(device)
    for e in (irr, reg, reg_irr):
        v = torch.randn(e.num_edges, dtype=torch.float64) * 3 + 1000.0
        v[::3] -= 2000.0  # also very negative logits
        ref_sm = ref_per_edge("softmax", v, e)
        ref_lse = ref_per_row("logsumexp", v, e)
        vd = v.to(device=device, dtype=dtype)
        sm = row_softmax(vd, e)
        lse = row_logsumexp(vd, e)
        assert torch.isfinite(sm).all()
        nonempty = e.counts.cpu() > 0
        assert torch.isfinite(lse.cpu()[nonempty]).all()
        tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
        torch.testing.assert_close(sm.cpu().double(), ref_sm, **tol)
        torch.testing.assert_close(lse.cpu().double(), ref_lse, **tol)
        torch.testing.assert_close(row_sum(sm, e).cpu()[nonempty].double(),
                                   torch.ones(int(nonempty.sum()), dtype=torch.float64), **tol)
        torch.testing.assert_close(row_log_softmax(vd, e).cpu().double(),
                                   ref_per_edge("log_softmax", v, e), **tol)


def test_empty_rows_values():
    irr = irregular_graph("cpu")
    v = torch.randn(irr.num_edges, dtype=torch.float64)
    empty = irr.counts == 0
    assert (row_logsumexp(v, irr)[empty] == -math.inf).all()
    assert (row_sum(v, irr)[empty] == 0).all()
    assert (row_mean(v, irr)[empty] == 0).all()
    assert (row_max(v, irr)[empty] == -math.inf).all()
    # a regular graph with K = 0
    e0 = EdgeSet.from_topk(torch.zeros(3, 0, dtype=torch.long), 4)
    z = torch.zeros(0)
    assert row_sum(z, e0).tolist() == [0.0] * 3
    assert row_mean(z, e0).tolist() == [0.0] * 3
    assert row_max(z, e0).tolist() == [-math.inf] * 3
    assert row_logsumexp(z, e0).tolist() == [-math.inf] * 3


@pytest.mark.parametrize("op", ["sum", "mean", "max", "logsumexp", "softmax", "log_softmax"])
def test_multi_head(device, op):
    heads = 3
    fn = {**ROW_OPS, **EDGE_OPS}[op]
    reg, reg_irr = regular_pair(device)
    irr = irregular_graph(device)
    for e in (irr, reg, reg_irr):
        v = torch.randn(e.num_edges, heads, dtype=torch.float64, device=device)
        out = fn(v, e)
        ref_fn = ref_per_row if op in ROW_OPS else ref_per_edge
        ref = torch.stack([ref_fn(op, v[:, h], e) for h in range(heads)], dim=1)
        torch.testing.assert_close(out.cpu(), ref)


def test_multi_head_regular_equals_irregular(device):
    reg, reg_irr = regular_pair(device)
    v = torch.randn(reg.num_edges, 2, dtype=torch.float64, device=device)
    for fn in (row_sum, row_mean, row_max, row_logsumexp, row_softmax, row_log_softmax):
        torch.testing.assert_close(fn(v, reg), fn(v, reg_irr))


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp", "lcse_rev", "lcse_fwd",
                                "sum", "mean", "max"])
def test_gradcheck_irregular(op):
    fn = {**ROW_OPS, **EDGE_OPS}[op]
    irr = irregular_graph("cpu")
    v = torch.randn(irr.num_edges, dtype=torch.float64, requires_grad=True)
    if op in ("logsumexp", "max"):
        # empty rows give -inf; check the gradient through finite outputs only
        keep = irr.counts > 0
        assert torch.autograd.gradcheck(lambda t: fn(t, irr)[keep], (v,))
    else:
        assert torch.autograd.gradcheck(lambda t: fn(t, irr), (v,))
    reg, reg_irr = regular_pair("cpu")
    w = torch.randn(reg.num_edges, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn(t, reg_irr), (w,))
    assert torch.autograd.gradcheck(lambda t: fn(t, reg), (w,))


def test_logsumexp_gradient_empty_rows_is_finite():
    irr = irregular_graph("cpu")
    v = torch.randn(irr.num_edges, dtype=torch.float64, requires_grad=True)
    out = row_logsumexp(v, irr)
    out[irr.counts > 0].sum().backward()
    # d/dv sum_r lse_r = softmax per row
    torch.testing.assert_close(v.grad, row_softmax(v.detach(), irr))


@pytest.mark.parametrize("reverse", [True, False])
def test_logcumsumexp_vs_naive(reverse):
    irr = irregular_graph("cpu")
    v = torch.randn(irr.num_edges, dtype=torch.float64) * 5
    naive = []
    for r in py_rows(v, irr):
        t = torch.tensor(r, dtype=torch.float64)
        if reverse:
            naive.append(torch.log(t.flip(0).exp().cumsum(0)).flip(0))
        else:
            naive.append(torch.log(t.exp().cumsum(0)))
    naive = torch.cat(naive)
    torch.testing.assert_close(row_logcumsumexp(v, irr, reverse=reverse), naive)
    # float32 values > 88 overflow the naive form; the op stays finite and exact
    big = (v.float() + 500.0)
    n32 = torch.log(big.exp().cumsum(0))
    assert not torch.isfinite(n32).all()
    out = row_logcumsumexp(big, irr, reverse=reverse)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), naive + 500.0, rtol=1e-5, atol=1e-4)


def test_logcumsumexp_rejects_heads():
    reg, _ = regular_pair("cpu")
    with pytest.raises(ValueError, match=r"\[E\]"):
        row_logcumsumexp(torch.randn(reg.num_edges, 2), reg)


def test_gather_rows(device):
    irr = irregular_graph(device)
    reg, reg_irr = regular_pair(device)
    for e in (irr, reg, reg_irr):
        per_row = torch.randn(e.num_rows, 2, device=device)
        out = gather_rows(per_row, e)
        ref = torch.stack([per_row[r] for r in e.row.tolist()]) if e.num_edges else None
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(gather_rows(per_row[:, 0], e), ref[:, 0])


@pytest.mark.parametrize("fn", [row_sum, row_mean, row_max, row_logsumexp, row_softmax,
                                row_log_softmax, row_logcumsumexp])
def test_wrong_length_raises(fn):
    irr = irregular_graph("cpu")
    reg, _ = regular_pair("cpu")
    for e in (irr, reg):
        with pytest.raises(ValueError, match="edges"):
            fn(torch.randn(e.num_edges + 1), e)


def test_permutation_of_edges_within_rows():
    """Row reductions do not depend on the order of edges inside a row."""
    irr = irregular_graph("cpu")
    v = torch.randn(irr.num_edges, dtype=torch.float64)
    perm = torch.cat([torch.randperm(int(c)) + int(s)
                      for s, c in zip(irr.ptr[:-1], irr.counts)])
    e2 = EdgeSet(irr.ptr, irr.row, irr.col[perm], irr.num_rows, irr.num_cols)
    for fn in (row_sum, row_mean, row_max, row_logsumexp):
        torch.testing.assert_close(fn(v[perm], e2), fn(v, irr))
    torch.testing.assert_close(row_softmax(v[perm], e2), row_softmax(v, irr)[perm])
