"""Divergences and reductions against hand-written per-row / per-edge references."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from graphkd.divergences import edge_huber, edge_mse, info_nce, reduce, row_kl
from graphkd.graphs import EdgeSet


def irregular_graph(device, batch: bool = False) -> EdgeSet:
    """6 rows with 3, 0, 1, 4, 0, 2 edges; with ``batch`` rows 0-2 are graph 0, 3-5 graph 1."""
    counts = [3, 0, 1, 4, 0, 2]
    row = torch.repeat_interleave(torch.arange(6), torch.tensor(counts))
    col = torch.tensor([1, 2, 5, 0, 1, 2, 3, 4, 0, 3])
    e = EdgeSet.from_rows(row, col, 6)
    if batch:
        e = e.with_batch(torch.tensor([0, 0, 0, 1, 1, 1]))
    return e.to(device)


def kl_per_row_reference(w_s, w_t, e: EdgeSet, tau: float) -> list[float | None]:
    """KL(P_t || P_s) per row with plain Python (None for an empty row)."""
    s, t = w_s.detach().cpu().tolist(), w_t.detach().cpu().tolist()
    ptr = e.ptr.cpu().tolist()
    out: list[float | None] = []
    for r in range(e.num_rows):
        a, b = ptr[r], ptr[r + 1]
        if a == b:
            out.append(None)
            continue
        zs = [x / tau for x in s[a:b]]
        zt = [x / tau for x in t[a:b]]
        ns = sum(math.exp(x) for x in zs)
        nt = sum(math.exp(x) for x in zt)
        ps = [math.exp(x) / ns for x in zs]
        pt = [math.exp(x) / nt for x in zt]
        out.append(sum(p * math.log(p / q) for p, q in zip(pt, ps)))
    return out


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_row_kl_matches_hand_computed(device, tau):
    e = irregular_graph(device, batch=True)
    w_s = torch.randn(e.num_edges, dtype=torch.float64, device=device)
    w_t = torch.randn(e.num_edges, dtype=torch.float64, device=device)
    ref = kl_per_row_reference(w_s, w_t, e, tau)
    per_row = row_kl(w_s, w_t, e, tau=tau, reduction="none")
    assert per_row.shape == (6,)
    ref_none = torch.tensor([0.0 if r is None else r for r in ref], dtype=torch.float64)
    torch.testing.assert_close(per_row.cpu(), ref_none)
    vals = [r for r in ref if r is not None]
    torch.testing.assert_close(row_kl(w_s, w_t, e, tau=tau).item(), sum(vals) / len(vals))
    torch.testing.assert_close(row_kl(w_s, w_t, e, tau=tau, reduction="sum").item(), sum(vals))
    g0 = [r for r in ref[:3] if r is not None]
    g1 = [r for r in ref[3:] if r is not None]
    expected = (sum(g0) / len(g0) + sum(g1) / len(g1)) / 2
    torch.testing.assert_close(row_kl(w_s, w_t, e, tau=tau, reduction="graph").item(), expected)


def test_row_kl_regular_equals_irregular_and_dense_kl_div(device):
    idx = torch.randint(0, 5, (5, 4))
    reg = EdgeSet.from_topk(idx, 5).to(device)
    irr = dataclasses.replace(reg, degree=None)
    w_s = torch.randn(reg.num_edges, dtype=torch.float64, device=device)
    w_t = torch.randn(reg.num_edges, dtype=torch.float64, device=device)
    a, b = row_kl(w_s, w_t, reg, tau=2.0), row_kl(w_s, w_t, irr, tau=2.0)
    torch.testing.assert_close(a, b)
    ref = F.kl_div(F.log_softmax(w_s.view(5, 4) / 2.0, 1), F.log_softmax(w_t.view(5, 4) / 2.0, 1),
                   reduction="batchmean", log_target=True)
    torch.testing.assert_close(a, ref)


def test_row_kl_zero_when_equal_and_gradcheck():
    e = irregular_graph("cpu")
    w = torch.randn(e.num_edges, dtype=torch.float64)
    assert row_kl(w, w.clone(), e).abs().item() < 1e-12
    # shifting a row by a constant leaves its distribution unchanged
    shift = torch.randn(e.num_rows, dtype=torch.float64)[e.row]
    assert row_kl(w + shift, w, e).abs().item() < 1e-12
    w_s = torch.randn(e.num_edges, dtype=torch.float64, requires_grad=True)
    w_t = torch.randn(e.num_edges, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: row_kl(a, b, e, tau=1.5), (w_s, w_t))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_edge_mse_and_huber_match_torch(device, reduction):
    e = irregular_graph(device)
    w_s = torch.randn(e.num_edges, dtype=torch.float64, device=device) * 2
    w_t = torch.randn(e.num_edges, dtype=torch.float64, device=device) * 2
    torch.testing.assert_close(edge_mse(w_s, w_t, e, reduction=reduction),
                               F.mse_loss(w_s, w_t, reduction=reduction))
    torch.testing.assert_close(edge_mse(w_s, w_t, reduction=reduction),
                               F.mse_loss(w_s, w_t, reduction=reduction))
    for delta in (1.0, 0.3):
        torch.testing.assert_close(
            edge_huber(w_s, w_t, e, delta=delta, reduction=reduction),
            F.smooth_l1_loss(w_s, w_t, beta=delta, reduction=reduction))
    # an independent Huber formula
    d = (w_s - w_t).abs()
    hub = torch.where(d < 0.3, 0.5 * d ** 2 / 0.3, d - 0.15)
    torch.testing.assert_close(edge_huber(w_s, w_t, delta=0.3, reduction="none"), hub)


def test_edge_losses_graph_reduction(device):
    e = irregular_graph(device, batch=True)
    w_s = torch.randn(e.num_edges, dtype=torch.float64, device=device)
    w_t = torch.randn(e.num_edges, dtype=torch.float64, device=device)
    sq = ((w_s - w_t) ** 2).cpu().tolist()
    g = [0 if r < 3 else 1 for r in e.row.cpu().tolist()]
    m0 = sum(v for v, gi in zip(sq, g) if gi == 0) / g.count(0)
    m1 = sum(v for v, gi in zip(sq, g) if gi == 1) / g.count(1)
    # graph 0 has 4 edges and graph 1 six: per-graph weighting differs from the edge mean
    torch.testing.assert_close(edge_mse(w_s, w_t, e, reduction="graph").item(), (m0 + m1) / 2)
    assert abs((m0 + m1) / 2 - sum(sq) / len(sq)) > 1e-6
    with pytest.raises(ValueError, match="batch"):
        edge_mse(w_s, w_t, irregular_graph(device), reduction="graph")
    # Huber per graph, against F.smooth_l1_loss per edge averaged by hand
    hub = F.smooth_l1_loss(w_s, w_t, beta=0.5, reduction="none").cpu().tolist()
    h0 = sum(v for v, gi in zip(hub, g) if gi == 0) / g.count(0)
    h1 = sum(v for v, gi in zip(hub, g) if gi == 1) / g.count(1)
    torch.testing.assert_close(
        edge_huber(w_s, w_t, e, delta=0.5, reduction="graph").item(), (h0 + h1) / 2)


def test_reduce():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    assert reduce(v, "sum").item() == 20.0
    assert reduce(v, "mean").item() == 4.0
    assert torch.equal(reduce(v, "none"), v)
    valid = torch.tensor([True, True, False, True, False])
    assert reduce(v, "mean", valid=valid).item() == pytest.approx(7 / 3)
    assert reduce(v, "sum", valid=valid).item() == 7.0
    group = torch.tensor([0, 0, 1, 1, 2])
    # graph means 1.5, 3.5, 10 -> 5
    assert reduce(v, "graph", group=group, num_groups=3).item() == pytest.approx(5.0)
    # a graph with no valid unit is left out (graph 2 here), not counted as 0
    assert reduce(v, "graph", group=group, num_groups=3, valid=valid).item() == pytest.approx(
        (1.5 + 4.0) / 2)
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce(v, "avg")
    with pytest.raises(ValueError, match="batch"):
        reduce(v, "graph")


def test_shape_errors():
    e = irregular_graph("cpu")
    with pytest.raises(ValueError, match="same EdgeSet"):
        row_kl(torch.randn(e.num_edges), torch.randn(e.num_edges + 1), e)
    with pytest.raises(ValueError, match="edges"):
        edge_mse(torch.randn(3), torch.randn(3), e)
    with pytest.raises(ValueError, match="unknown reduction"):
        edge_huber(torch.randn(e.num_edges), torch.randn(e.num_edges), e, reduction="avg")
    with pytest.raises(ValueError, match="must match"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3))


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_info_nce_dense_equals_cross_entropy(device, tau):
    z_s = F.normalize(torch.randn(9, 5, dtype=torch.float64, device=device), dim=1)
    z_t = F.normalize(torch.randn(9, 5, dtype=torch.float64, device=device), dim=1)
    target = torch.arange(9, device=device)
    ref = F.cross_entropy(z_s @ z_t.T / tau, target)
    torch.testing.assert_close(info_nce(z_s, z_t, tau=tau), ref)
    # independent formula, per anchor
    per = []
    for i in range(9):
        logits = [float(z_s[i] @ z_t[j]) / tau for j in range(9)]
        m = max(logits)
        per.append(-(logits[i] - m - math.log(sum(math.exp(x - m) for x in logits))))
    torch.testing.assert_close(info_nce(z_s, z_t, tau=tau, reduction="none").cpu(),
                               torch.tensor(per, dtype=torch.float64))
    torch.testing.assert_close(info_nce(z_s, z_t, tau=tau, reduction="sum").item(), sum(per))


def test_info_nce_negatives_edgeset_matches_loop(device):
    n = 7
    z_s = torch.randn(n, 4, dtype=torch.float64, device=device)
    z_t = torch.randn(n, 4, dtype=torch.float64, device=device)
    # irregular negatives, no (i, i); anchor 3 has no negatives at all
    pairs = [(0, 1), (0, 4), (1, 0), (1, 2), (1, 6), (2, 5), (4, 0), (4, 1), (4, 2), (4, 3),
             (5, 6), (6, 0)]
    row = torch.tensor([p[0] for p in pairs])
    col = torch.tensor([p[1] for p in pairs])
    neg = EdgeSet.from_rows(row, col, n).to(device)
    tau = 0.5
    per = []
    for i in range(n):
        logits = [float(z_s[i] @ z_t[i]) / tau] + [
            float(z_s[i] @ z_t[j]) / tau for (a, j) in pairs if a == i]
        m = max(logits)
        per.append(-(logits[0] - m - math.log(sum(math.exp(x - m) for x in logits))))
    out = info_nce(z_s, z_t, tau=tau, negatives=neg, reduction="none")
    torch.testing.assert_close(out.cpu(), torch.tensor(per, dtype=torch.float64))
    assert abs(per[3]) < 1e-12  # only the positive: loss 0
    torch.testing.assert_close(info_nce(z_s, z_t, tau=tau, negatives=neg).item(), sum(per) / n)
    # all-pairs negatives reproduce the dense form
    full = EdgeSet.dense(n, loop=False, device=device)
    torch.testing.assert_close(info_nce(z_s, z_t, tau=tau, negatives=full),
                               info_nce(z_s, z_t, tau=tau))
    # per-graph reduction over anchors
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1], device=device)
    g = info_nce(z_s, z_t, tau=tau, negatives=neg.with_batch(batch), reduction="graph")
    torch.testing.assert_close(g.item(), (sum(per[:3]) / 3 + sum(per[3:]) / 4) / 2)


def test_info_nce_gradcheck():
    z_s = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    neg = EdgeSet.from_rows(torch.tensor([0, 0, 1, 2, 4]), torch.tensor([1, 3, 4, 0, 2]), 5)
    assert torch.autograd.gradcheck(
        lambda a, b: info_nce(a, b, tau=0.3, negatives=neg), (z_s, z_t))
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, tau=0.3), (z_s, z_t))
