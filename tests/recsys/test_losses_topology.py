"""DE, FTD and HTD against straightforward (reference-style) implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from recsys.losses import (
    DE,
    FTD,
    HTD,
    DistillationExperts,
    ExpertPair,
    anneal_temperature,
    de_loss,
    ftd_loss,
    gumbel_noise,
    gumbel_selection,
    htd_loss,
)
from recsys.losses.topology import group_relation_graph

D = torch.float64


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D).requires_grad_(True)


def _sim(a, b):
    """The reference's cosine (no epsilon)."""
    return (a @ b.T) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1)[None, :])


# ----------------------------------------------------------------------------- DE
def _de_reference(s, t, experts: DistillationExperts, g, tau):
    """Per-expert loop with nn.Linear-style layers, as the reference's get_DE_loss."""
    dist = torch.softmax(experts.selection(t), dim=1) + 1e-10
    sel = torch.softmax((dist.log() + g) / tau, dim=1)
    outs = []
    for k in range(experts.w1.shape[0]):
        h = F.relu(F.linear(s, experts.w1[k].T, experts.b1[k]))
        outs.append(F.linear(h, experts.w2[k].T, experts.b2[k]).unsqueeze(-1))
    out = (torch.cat(outs, -1) * sel.unsqueeze(1)).sum(2)
    return ((t - out) ** 2).sum(-1).sum()


@pytest.mark.parametrize("tau", [1.0, 0.3, 1e-10])
def test_de_matches_reference_loop(tau):
    torch.manual_seed(0)
    ex = DistillationExperts(4, 7, num_experts=3).double()
    s, t = _rand(6, 4, seed=1), _rand(6, 7, seed=2).detach()
    g = gumbel_noise((6, 3), generator=torch.Generator().manual_seed(3), dtype=D)
    ours = de_loss(s, t, ex.w1, ex.b1, ex.w2, ex.b2, ex.selection(t), tau, gumbel=g)
    ref = _de_reference(s, t, ex, g, tau)
    assert torch.allclose(ours, ref, rtol=1e-6)


def test_de_gradcheck_and_hidden_width():
    torch.manual_seed(0)
    ex = DistillationExperts(3, 5, num_experts=2).double()
    assert ex.w1.shape == (2, 3, 4) and ex.w2.shape == (2, 4, 5)  # (d_t + d_s) // 2
    s, t = _rand(3, 3, seed=4), _rand(3, 5, seed=5).detach()
    g = gumbel_noise((3, 2), generator=torch.Generator().manual_seed(6), dtype=D)
    sel = ex.selection(t).detach()
    w1 = ex.w1.detach().clone().requires_grad_(True)
    b2 = ex.b2.detach().clone().requires_grad_(True)
    assert gradcheck(lambda x, a, c: de_loss(x, t, a, ex.b1, ex.w2, c, sel, 0.5, gumbel=g),
                     (s, w1, b2))


def test_gumbel_selection_distribution():
    # with tau -> 0 the selection is one-hot and picks expert k with probability softmax(z)_k
    z = torch.tensor([[0.0, 1.0, -1.0]], dtype=D).expand(20000, 3)
    a = gumbel_selection(z, 1e-10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a.sum(1), torch.ones(20000, dtype=D))
    assert bool(((a == 0) | (a == 1)).all())
    freq = a.mean(0)
    p = torch.softmax(z[0], 0)
    sd = (p * (1 - p) / 20000).sqrt()
    assert bool(((freq - p).abs() < 5 * sd).all())  # 5 sigma


def test_anneal_temperature_matches_reference_schedule():
    end_t, anneal = 1e-10, 1e10
    for e in [0, 3, 10, 50, 100]:
        ref = max(end_t * anneal * ((1.0 / anneal) ** (e / 100)), end_t)
        assert abs(anneal_temperature(e, 100) - ref) <= 1e-12 * max(ref, 1e-300) + 1e-24
    # by default over the reference's fixed horizon (max_epoch=1000), whatever num_epochs
    m = DE(4, 8, num_experts=3)
    m.set_epoch(50, 100)
    ref = max(end_t * anneal * ((1.0 / anneal) ** (50 / 1000)), end_t)
    assert m.users.tau == m.items.tau == pytest.approx(ref, rel=1e-12)
    # anneal_epochs=None: over the num_epochs given (the configured epoch count)
    m = DE(4, 8, num_experts=3, anneal_epochs=None)
    m.set_epoch(50, 100)
    assert abs(m.users.tau - 1e-5) < 1e-12 and abs(m.items.tau - 1e-5) < 1e-12


def test_de_module_combines_users_and_items():
    torch.manual_seed(0)
    m = DE(4, 6, num_experts=2).double()
    xs = [_rand(5, 4, seed=7), _rand(5, 6, seed=8).detach(), _rand(3, 4, seed=9),
          _rand(3, 6, seed=10).detach(), _rand(2, 4, seed=11), _rand(2, 6, seed=12).detach()]
    torch.manual_seed(1)
    ours = m(*xs)
    torch.manual_seed(1)
    ref = m.users(xs[0], xs[1]) + 0.5 * (m.items(xs[2], xs[3]) + m.items(xs[4], xs[5]))
    assert torch.allclose(ours, ref)
    ours.backward()
    assert m.users.w1.grad is not None and m.items.selection.weight.grad is not None


def test_de_bad_input():
    ex = DistillationExperts(4, 7, num_experts=3)
    with pytest.raises(ValueError, match="rows"):
        ex(torch.randn(5, 4), torch.randn(6, 7))
    with pytest.raises(ValueError, match="tau"):
        gumbel_selection(torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        ex(torch.full((2, 4), float("nan")), torch.randn(2, 7))


# ----------------------------------------------------------------------------- FTD
def test_ftd_matches_reference_and_gradcheck(device):
    s, t = _rand(9, 3, seed=13), _rand(9, 8, seed=14).detach()
    ref = ((_sim(t, t) - _sim(s, s)) ** 2).sum()
    assert torch.allclose(ftd_loss(s.to(device), t.to(device)).cpu(), ref)
    assert torch.allclose(ftd_loss(s, t, reduction="mean"), ref / 81)
    assert gradcheck(lambda x: ftd_loss(x, t[:4]), (s[:4].detach().requires_grad_(),))
    su, si = s[:4], s[4:]
    assert torch.allclose(FTD()(su, t[:4], si, t[4:]), ref)


def test_ftd_zero_row_is_finite():
    s, t = _rand(4, 3, seed=15), _rand(4, 6, seed=16).detach()
    s = s.detach().clone()
    s[1] = 0.0
    s.requires_grad_(True)
    assert torch.isnan(_sim(s, s)).any()  # the reference's NaN
    loss = ftd_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------- HTD
def _htd_reference(s, t, z, level):
    """The reference's get_TD_loss1 / get_TD_loss2 (positive mask, detached prototypes)."""
    g_set = z.unique()
    zz = F.one_hot(z).to(D)
    with torch.no_grad():
        tmp = zz.T / (zz.T.sum(1, keepdim=True) + 1e-10)
        p_s, p_t = (tmp @ s)[g_set], (tmp @ t)[g_set]
    mask = zz @ zz.T
    t_tmp = _sim(t, t) * mask
    t_d = t_tmp[t_tmp > 0.0]
    s_d = (_sim(s, s) * mask)[t_tmp > 0.0]
    if level == "pp":
        tp, sp = _sim(p_t, p_t).view(-1), _sim(p_s, p_s).view(-1)
    else:
        tp, sp = _sim(p_t, t).view(-1), _sim(p_s, s).view(-1)
    return ((s_d - t_d) ** 2).sum() + ((sp - tp) ** 2).sum()


@pytest.mark.parametrize("level", ["pp", "pe"])
def test_htd_matches_reference_quirks(level):
    s, t = _rand(12, 3, seed=17), _rand(12, 8, seed=18).detach()
    z = torch.tensor([0, 2, 0, 5, 2, 2, 0, 5, 1, 0, 2, 5])
    ours = htd_loss(s, t, z, level=level, positive_mask=True, detach_prototypes=True)
    assert torch.allclose(ours, _htd_reference(s, t, z, level))


def _htd_dense(s, t, z, g, level):
    """Default HTD: all same-group pairs i != j, differentiable prototypes, eps cosine."""
    same = (z[:, None] == z[None, :]) & ~torch.eye(len(z), dtype=torch.bool)
    cs, ct = F.normalize(s, dim=1), F.normalize(t, dim=1)
    ent = (((cs @ cs.T) - (ct @ ct.T)) ** 2)[same].sum()
    ps = torch.stack([s[z == k].mean(0) if (z == k).any() else s.new_zeros(s.shape[1])
                      for k in range(g)])
    pt = torch.stack([t[z == k].mean(0) if (z == k).any() else t.new_zeros(t.shape[1])
                      for k in range(g)])
    nps, npt = F.normalize(ps, dim=1), F.normalize(pt, dim=1)
    if level == "pp":
        grp = ((nps @ nps.T - npt @ npt.T) ** 2).sum()
    else:
        grp = ((nps @ cs.T - npt @ ct.T) ** 2).sum()
    return ent + grp


@pytest.mark.parametrize("level", ["pp", "pe"])
def test_htd_default_matches_dense_and_gradcheck(level):
    s, t = _rand(10, 3, seed=19), _rand(10, 6, seed=20).detach()
    z = torch.tensor([3, 0, 3, 1, 1, 3, 0, 0, 3, 1])  # group 2 is empty
    assert torch.allclose(htd_loss(s, t, z, num_groups=5, level=level),
                          _htd_dense(s, t, z, 5, level))
    zs = z[:5]
    assert gradcheck(lambda x: htd_loss(x, t[:5], zs, level=level),
                     (s[:5].detach().requires_grad_(),))


def test_group_relation_graph_matches_dense_mask():
    z = torch.tensor([2, 0, 2, 1, 0, 2, 2])
    e = group_relation_graph(z)
    pairs = set(zip(e.row.tolist(), e.col.tolist()))
    ref = {(i, j) for i in range(7) for j in range(7) if i != j and z[i] == z[j]}
    assert pairs == ref and e.num_edges == len(ref)
    assert bool((e.row[1:] >= e.row[:-1]).all())
    with_loops = group_relation_graph(z, loop=True)
    assert with_loops.num_edges == len(ref) + 7


def test_de_and_htd_build_the_same_expert_pair():
    torch.manual_seed(3)
    de = DE(3, 6, num_experts=2, t_end=1e-4, reduction="mean", anneal_epochs=None).double()
    torch.manual_seed(3)
    htd = HTD(3, 6, num_experts=2, t_end=1e-4, reduction="mean", anneal_epochs=None).double()
    assert isinstance(de, ExpertPair) and isinstance(htd, ExpertPair)
    assert DE.needs_dims and HTD.needs_dims and not FTD.needs_dims
    # same parameters under the same names (checkpoints keep their keys), same initial values
    assert list(de.state_dict()) == list(htd.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(de.state_dict().values(),
                                                 htd.state_dict().values()))
    de.set_epoch(1, 2)
    htd.set_epoch(1, 2)
    assert de.users.tau == de.items.tau == htd.users.tau == htd.items.tau == pytest.approx(1e-2)
    su, tu, si, ti = (_rand(4, 3, seed=31), _rand(4, 6, seed=32).detach(),
                      _rand(5, 3, seed=33), _rand(5, 6, seed=34).detach())
    torch.manual_seed(7)
    ga = de.assignment_loss(su, tu, si, ti)
    torch.manual_seed(7)
    ref = de.users(su, tu, reduction="mean") + de.items(si, ti, reduction="mean")
    assert torch.equal(ga, ref)


def test_htd_module_combination():
    torch.manual_seed(0)
    m = HTD(3, 6, num_experts=2, alpha=0.3).double()
    su, tu, si, ti = (_rand(4, 3, seed=21), _rand(4, 6, seed=22).detach(),
                      _rand(5, 3, seed=23), _rand(5, 6, seed=24).detach())
    torch.manual_seed(5)
    ours = m(su, tu, si, ti)
    torch.manual_seed(5)
    ga = m.users(su, tu) + m.items(si, ti)
    z = torch.cat([m.users.selection(tu).argmax(1), m.items.selection(ti).argmax(1) + 2])
    td = htd_loss(torch.cat([su, si]), torch.cat([tu, ti]), z, num_groups=4)
    assert torch.allclose(ours, 0.3 * td + 0.7 * ga)


def test_topology_bad_input():
    with pytest.raises(ValueError, match="rows"):
        ftd_loss(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="groups"):
        htd_loss(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="level"):
        htd_loss(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1, 0]), level="xx")
    with pytest.raises(ValueError, match="reduction"):
        ftd_loss(torch.randn(3, 2), torch.randn(3, 2), reduction="none")
