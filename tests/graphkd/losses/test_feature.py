"""Feature losses (FitNet, AT, VID, AB) against the references' formulas and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graphkd.losses import get_loss
from graphkd.losses.feature import (
    AB,
    AT,
    VID,
    FitNet,
    ab_loss,
    at_loss,
    at_map,
    fitnet_loss,
    vid_loss,
)

D64 = torch.float64


def _randn(*shape, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D64).to(device)


# --------------------------------------------------------------------------- FitNet
def test_fitnet_adapter_value(device):
    f_s, f_t = _randn(6, 4, device=device), _randn(6, 7, seed=1, device=device)
    loss = FitNet(student_dim=4, teacher_dim=7).to(device=device, dtype=D64)
    w, b = loss.adapter.weight, loss.adapter.bias
    want = ((f_s @ w.T + b - f_t) ** 2).sum() / f_t.numel()
    torch.testing.assert_close(loss(f_s, f_t), want, rtol=1e-10, atol=0)


def test_fitnet_conv_map_adapter_is_1x1_conv():
    f_s, f_t = _randn(2, 3, 4, 5), _randn(2, 6, 4, 5, seed=1)
    loss = FitNet(3, 6).double()
    w, b = loss.adapter.weight, loss.adapter.bias
    want = F.mse_loss(F.conv2d(f_s, w[:, :, None, None], b), f_t)
    torch.testing.assert_close(loss(f_s, f_t), want, rtol=1e-10, atol=0)


def test_fitnet_adapter_choice():
    assert isinstance(FitNet(5, 5).adapter, torch.nn.Identity)
    assert not list(FitNet(5, 5).parameters())
    assert isinstance(FitNet(5, 5, adapter=True).adapter, torch.nn.Linear)
    f_s, f_t = _randn(4, 5), _randn(4, 5, seed=1)
    torch.testing.assert_close(FitNet(5, 5)(f_s, f_t), ((f_s - f_t) ** 2).mean())
    with pytest.raises(ValueError, match="adapter=False"):
        FitNet(4, 5, adapter=False)
    with pytest.raises(ValueError, match="student_dim"):
        get_loss("fitnet")
    with pytest.raises(ValueError, match="student_dim=5"):
        FitNet(5, 5)(_randn(4, 3), f_t)


def test_fitnet_gradcheck_and_errors():
    f_s = _randn(3, 4).requires_grad_()
    f_t = _randn(3, 4, seed=1)
    assert torch.autograd.gradcheck(lambda a: fitnet_loss(a, f_t), (f_s,))
    with pytest.raises(ValueError, match="adapt the student"):
        fitnet_loss(_randn(3, 4), _randn(3, 5))
    bad = f_t.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="f_t.*NaN"):
        fitnet_loss(f_s, bad)


# --------------------------------------------------------------------------- AT
def ref_at(f_s, f_t, p=2):
    """RepDistiller distiller_zoo/AT.py (equal spatial sizes)."""
    def at(f):
        return F.normalize(f.pow(p).mean(1).view(f.size(0), -1))
    return (at(f_s) - at(f_t)).pow(2).mean()


def ref_at_nodes(x_s, x_t, batch, p=2):
    """Per graph: a = mean_d x^p, a / ||a||, squared distance; summed, divided by N."""
    total = 0.0
    for gid in batch.unique().tolist():
        m = batch == gid
        a_s = x_s[m].pow(p).mean(1)
        a_t = x_t[m].pow(p).mean(1)
        a_s = a_s / a_s.pow(2).sum().sqrt()
        a_t = a_t / a_t.pow(2).sum().sqrt()
        total = total + (a_s - a_t).pow(2).sum()
    return total / x_s.shape[0]


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_maps_match_repdistiller(device, p):
    f_s, f_t = _randn(3, 4, 5, 5, device=device), _randn(3, 6, 5, 5, seed=1, device=device)
    torch.testing.assert_close(at_loss(f_s, f_t, p=p), ref_at(f_s, f_t, p), rtol=1e-10, atol=0)
    torch.testing.assert_close(AT(p=p)(f_s, f_t), ref_at(f_s, f_t, p), rtol=1e-10, atol=0)


def test_at_nodes_per_graph(device):
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2], device=device)
    x_s, x_t = _randn(9, 4, device=device), _randn(9, 3, seed=1, device=device)
    want = ref_at_nodes(x_s, x_t, batch)
    torch.testing.assert_close(at_loss(x_s, x_t, batch=batch), want, rtol=1e-10, atol=0)
    torch.testing.assert_close(AT()(x_s, x_t, batch=batch), want, rtol=1e-10, atol=0)
    # each graph's attention vector has unit norm
    a = at_map(x_s, batch=batch)
    norms = torch.zeros(3, dtype=D64, device=device).index_add(0, batch, a * a)
    torch.testing.assert_close(norms, torch.ones(3, dtype=D64, device=device))


def test_at_nodes_equal_sizes_equal_map_formula():
    # G graphs of n nodes as [G, D, n] "maps": the node path is RepDistiller's formula.
    g, n = 3, 5
    x_s, x_t = _randn(g * n, 4), _randn(g * n, 6, seed=1)
    batch = torch.arange(g).repeat_interleave(n)
    maps_s = x_s.view(g, n, 4).transpose(1, 2)
    maps_t = x_t.view(g, n, 6).transpose(1, 2)
    torch.testing.assert_close(at_loss(x_s, x_t, batch=batch), ref_at(maps_s, maps_t),
                               rtol=1e-10, atol=0)
    # without batch all nodes are one graph
    torch.testing.assert_close(at_loss(x_s, x_t), ref_at(x_s.T[None], x_t.T[None]),
                               rtol=1e-10, atol=0)


def test_at_permutation_within_graphs_and_gradcheck():
    batch = torch.tensor([0, 0, 1, 1, 1])
    x_s, x_t = _randn(5, 3), _randn(5, 2, seed=1)
    perm = torch.tensor([3, 1, 4, 0, 2])
    torch.testing.assert_close(at_loss(x_s[perm], x_t[perm], batch=batch[perm]),
                               at_loss(x_s, x_t, batch=batch), rtol=1e-12, atol=0)
    x_s.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: at_loss(a, x_t, batch=batch), (x_s,))
    m_s = _randn(2, 2, 3, 3).requires_grad_()
    m_t = _randn(2, 3, 3, 3, seed=2)
    assert torch.autograd.gradcheck(lambda a: at_loss(a, m_t), (m_s,))


def test_at_zero_graph_gives_zero_attention_and_finite_grad():
    x_s = _randn(4, 3)
    x_s[2:] = 0.0
    x_s.requires_grad_()
    batch = torch.tensor([0, 0, 1, 1])
    a = at_map(x_s, batch=batch)
    assert float(a.detach()[2:].abs().sum()) == 0.0
    (g,) = torch.autograd.grad(at_loss(x_s, _randn(4, 3, seed=1), batch=batch), x_s)
    assert torch.isfinite(g).all()


def test_at_bad_input():
    x = _randn(4, 3)
    with pytest.raises(ValueError, match="batch"):
        at_loss(_randn(2, 3, 4, 4), _randn(2, 3, 4, 4), batch=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="pool"):
        at_loss(_randn(2, 3, 4, 4), _randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="channels"):
        at_loss(x, x[:3])
    with pytest.raises(ValueError, match="one graph id per node"):
        at_loss(x, x, batch=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch"):
        at_loss(x, x, batch=torch.tensor([0, 0, -1, 1]))
    with pytest.raises(ValueError, match="`p`"):
        AT(p=0)
    bad = x.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="f_s.*inf"):
        at_loss(bad, x)


# --------------------------------------------------------------------------- VID
def test_vid_is_gaussian_nll(device):
    mean, f_t = _randn(5, 3, device=device), _randn(5, 3, seed=1, device=device)
    var = torch.tensor([0.5, 2.0, 3.0], dtype=D64, device=device)
    nll = -torch.distributions.Normal(mean, var.sqrt()).log_prob(f_t).mean()
    want = nll - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(vid_loss(mean, f_t, var), want, rtol=1e-10, atol=0)


def test_vid_module_value_and_maps():
    loss = VID(student_dim=4, teacher_dim=3, hidden_dim=5, init_var=2.0).double()
    torch.testing.assert_close(loss.variance(), torch.full((3,), 2.0, dtype=D64))
    f_s, f_t = _randn(2, 4, 3, 3), _randn(2, 3, 3, 3, seed=1)
    lin = [m for m in loss.regressor if isinstance(m, torch.nn.Linear)]
    h = f_s.permute(0, 2, 3, 1)
    h = torch.relu(h @ lin[0].weight.T + lin[0].bias)
    h = torch.relu(h @ lin[1].weight.T + lin[1].bias)
    mu = (h @ lin[2].weight.T + lin[2].bias).permute(0, 3, 1, 2)
    var = (F.softplus(loss.log_scale) + 1e-5).view(1, 3, 1, 1)
    want = (0.5 * torch.log(var) + (f_t - mu) ** 2 / (2 * var)).mean()
    torch.testing.assert_close(loss(f_s, f_t), want, rtol=1e-10, atol=0)
    assert isinstance(get_loss("vid", student_dim=4, teacher_dim=3), VID)


def test_vid_gradcheck_and_errors():
    mean = _randn(3, 2).requires_grad_()
    var = torch.tensor([0.7, 1.3], dtype=D64, requires_grad=True)
    f_t = _randn(3, 2, seed=1)
    assert torch.autograd.gradcheck(lambda m, v: vid_loss(m, f_t, v), (mean, var))
    with pytest.raises(ValueError, match="one variance per teacher channel"):
        vid_loss(mean, f_t, var[:1])
    with pytest.raises(ValueError, match="regress"):
        vid_loss(_randn(3, 3), f_t, var)
    with pytest.raises(ValueError, match="init_var"):
        VID(2, 2, init_var=0.0)


# --------------------------------------------------------------------------- AB
def ref_ab_sum(source, target, margin=1.0):
    """RepDistiller distiller_zoo/AB.py criterion_alternative_l2."""
    loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)).float()
            + (source - margin) ** 2 * ((source <= margin) & (target > 0)).float())
    return torch.abs(loss).sum()


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_repdistiller(device, margin):
    r_s, f_t = _randn(4, 3, 2, 2, device=device) * 2, _randn(4, 5, 2, 2, seed=1, device=device)
    f_t = f_t[:, :3]
    ref = ref_ab_sum(r_s, f_t, margin)
    torch.testing.assert_close(ab_loss(r_s, f_t, margin=margin), ref / r_s.numel(),
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(ab_loss(r_s, f_t, margin=margin, reduction="batchmean"),
                               ref / 4, rtol=1e-10, atol=0)
    torch.testing.assert_close(ab_loss(r_s, f_t, margin=margin, reduction="sum"), ref,
                               rtol=1e-10, atol=0)


def test_ab_module_and_gradcheck():
    loss = AB(student_dim=3, teacher_dim=2).double()
    f_s, f_t = _randn(5, 3), _randn(5, 2, seed=1)
    r = f_s @ loss.connector.weight.T + loss.connector.bias
    torch.testing.assert_close(loss(f_s, f_t), ref_ab_sum(r, f_t) / r.numel(), rtol=1e-10,
                               atol=0)
    r_s = _randn(4, 3, seed=3).requires_grad_()
    t = _randn(4, 3, seed=4)
    assert torch.autograd.gradcheck(lambda a: ab_loss(a, t), (r_s,))
    # beyond the margin on the right side there is nothing to learn
    assert float(ab_loss(torch.full((2, 2), 3.0), torch.ones(2, 2))) == 0.0
    with pytest.raises(ValueError, match="reduction"):
        ab_loss(r_s, t, reduction="none")
    with pytest.raises(ValueError, match="connect"):
        ab_loss(r_s, t[:, :2])


@pytest.mark.parametrize("name", ["fitnet", "vid", "ab"])
def test_heads_registered_and_mismatched_rows(name):
    loss = get_loss(name, student_dim=3, teacher_dim=3).double()
    assert loss.needs_dims and loss.level == "node"
    with pytest.raises(ValueError, match="shape"):
        loss(_randn(4, 3), _randn(5, 3))
    bad = _randn(4, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="f_s.*NaN"):
        loss(bad, _randn(4, 3))
