"""List losses (RD, CD, RRD, DCD, UnKD, baselines) against straightforward references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from recsys.losses import (
    CD,
    DCD,
    RD,
    RRD,
    EmbeddingHint,
    RankingLoss,
    UnKD,
    cd_loss,
    dcd_loss,
    estimate_student_rank,
    get_ranking_loss,
    hint_loss,
    listwise_kd_loss,
    plackett_luce_denominators,
    ranking_loss_names,
    rd_discrepancy_weights,
    rd_loss,
    rd_position_weights,
    rd_weights,
    rrd_loss,
    score_kd_loss,
    unkd_loss,
)

D = torch.float64


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=D) * scale).requires_grad_(True)


# ----------------------------------------------------------------------------- RD
def test_rd_position_weights_formula():
    w = rd_position_weights(10, 2.0, dtype=D)
    ref = torch.tensor([math.exp(-r / 2.0) for r in range(1, 11)], dtype=D)
    assert torch.allclose(w, ref / ref.sum())


def _ref_rank(topk, dyn, num_items, variant):
    """Column by column, as the references do."""
    out = torch.zeros_like(topk)
    for col in range(topk.shape[1]):
        num_smaller = (topk[:, col:col + 1] < dyn).sum(1).to(D)
        rel = num_smaller / dyn.shape[1]
        out[:, col] = (torch.floor(num_items * rel) if variant == "original"
                       else torch.floor((num_items - 1) * rel) + 1)
    return out


@pytest.mark.parametrize("variant", ["original", "cf"])
def test_rd_rank_estimate_and_hybrid_weights_match_reference(variant):
    topk, dyn = _rand(5, 10, seed=1).detach(), _rand(5, 100, seed=2).detach()
    rank = estimate_student_rank(topk, dyn, 1000, variant=variant)
    ref_rank = _ref_rank(topk, dyn, 1000, variant)
    assert torch.equal(rank, ref_rank)
    static = torch.tensor([math.exp(-r) for r in range(1, 11)], dtype=D)
    static = static / static.sum()
    dynamic = torch.stack([torch.tanh(0.1 * (ref_rank[:, c] - c)).clamp(min=0)
                           for c in range(10)], 1)
    ref = static * dynamic
    if variant == "cf":
        ref = ref / ref.sum(1, keepdim=True)
    w = rd_weights(10, scheme="hybrid", lam=1.0, mu=0.1, student_rank=rank, variant=variant)
    assert torch.allclose(w, ref)
    assert torch.allclose(rd_discrepancy_weights(rank, 0.1), dynamic)


def test_rd_loss_matches_reference_and_gradcheck():
    s = _rand(6, 10, seed=3)
    w = rd_position_weights(10, dtype=D)
    ref = -(w * torch.log(torch.sigmoid(s))).sum(1).sum()
    assert torch.allclose(rd_loss(s, w), ref)
    wu = torch.rand(6, 10, dtype=D)
    assert torch.allclose(rd_loss(s, wu, reduction="mean"),
                          -(wu * torch.log(torch.sigmoid(s))).sum(1).mean())
    small = _rand(2, 3, seed=30)
    assert gradcheck(lambda x: rd_loss(x, wu[:2, :3]), (small,))
    # weights are constants
    wg = wu.clone().requires_grad_(True)
    rd_loss(s, wg).backward()
    assert wg.grad is None


def test_rd_module_schedule():
    s, dyn = _rand(4, 10, seed=4), _rand(4, 100, seed=5).detach()
    m = RD(k=10, num_items=500, dynamic_start_epoch=2, variant="cf")
    m.set_epoch(1, 10)
    assert not m.dynamic
    assert torch.allclose(m(s, dyn), rd_loss(s, rd_position_weights(10, dtype=D)))
    m.set_epoch(2, 10)
    assert m.dynamic
    rank = _ref_rank(s.detach(), dyn, 500, "cf")
    w = rd_weights(10, student_rank=rank, variant="cf")
    assert torch.allclose(m(s, dyn), rd_loss(s, w))
    with pytest.raises(ValueError, match="sampled_scores"):
        m(s)


def test_rd_bad_input():
    s = _rand(4, 10)
    with pytest.raises(ValueError, match="weights"):
        rd_loss(s, torch.ones(9, dtype=D))
    with pytest.raises(ValueError, match="variant"):
        rd_weights(10, variant="paper")
    with pytest.raises(ValueError, match="scheme"):
        rd_weights(10, scheme="exp")
    with pytest.raises(ValueError, match="student_rank"):
        rd_weights(10, scheme="hybrid")
    bad = s.detach().clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`topk_scores` contains 1 NaN"):
        rd_loss(bad, rd_position_weights(10, dtype=D))


# ----------------------------------------------------------------------------- CD
def test_cd_matches_reference_and_gradcheck():
    s, t = _rand(5, 2, seed=6, scale=3), _rand(5, 2, seed=7, scale=3).detach()
    y = torch.sigmoid((t + 0.5) / 2.0)
    ref = -(y * torch.log(torch.sigmoid(s)) + (1 - y) * torch.log(1 - torch.sigmoid(s)))
    assert torch.allclose(cd_loss(s, t, t1=2.0, t2=0.5), ref.sum(1).sum())
    assert torch.allclose(CD(t1=2.0, t2=0.5, reduction="mean")(s, t), ref.sum(1).mean())
    assert gradcheck(lambda x: cd_loss(x, t[:3]), (s[:3].detach().requires_grad_(),))


def test_cd_is_stable_for_large_logits():
    s = torch.tensor([[200.0, -200.0]], requires_grad=True)
    t = torch.tensor([[-50.0, 50.0]])
    loss = cd_loss(s, t)
    loss.backward()
    # y ~ (0, 1): loss ~ 200 + 200 (the reference's log(sigmoid + 1e-10) caps at ~46)
    assert torch.isfinite(loss) and abs(loss.item() - 400.0) < 1e-3
    assert torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="same items"):
        cd_loss(torch.zeros(2, 3), torch.zeros(2, 2))


# ----------------------------------------------------------------------------- RRD / DCD
def _naive_rrd(s1, s2):
    """The reference's relaxed_ranking_loss (exp().cumsum() form, no clamp)."""
    above = s1.sum(1, keepdim=True)
    below1 = s1.flip(-1).exp().cumsum(1)
    below2 = s2.exp().sum(1, keepdim=True)
    below = (below1 + below2).log().sum(1, keepdim=True)
    return -(above - below).sum()


def test_rrd_matches_naive_form_and_gradcheck(device):
    s1, s2 = _rand(7, 40, seed=8, scale=2), _rand(7, 40, seed=9, scale=2)
    s1d, s2d = s1.detach().to(device), s2.detach().to(device)
    assert torch.allclose(rrd_loss(s1d, s2d), _naive_rrd(s1d, s2d))
    a, b = _rand(3, 5, seed=10), _rand(3, 4, seed=11)
    assert gradcheck(rrd_loss, (a, b))
    assert torch.allclose(RRD(reduction="mean")(s1, s2), _naive_rrd(s1, s2) / 7)
    assert torch.allclose(dcd_loss(s1, s2), _naive_rrd(s1, s2))
    assert torch.allclose(DCD()(s1, s2), _naive_rrd(s1, s2))


def test_rrd_without_negatives_is_plackett_luce():
    s = _rand(2, 4, seed=12)
    ref = sum(torch.logsumexp(s[:, k:], 1) - s[:, k] for k in range(4)).sum()
    assert torch.allclose(rrd_loss(s, s.new_zeros(2, 0)), ref)


def test_rrd_float32_large_scores_use_the_shifted_path():
    s1 = torch.randn(8, 40, generator=torch.Generator().manual_seed(3)) + 100.0
    s2 = torch.randn(8, 40, generator=torch.Generator().manual_seed(4)) + 99.0
    a, b = s1.clone().requires_grad_(True), s2.clone().requires_grad_(True)
    loss = rrd_loss(a, b)
    loss.backward()
    ad, bd = s1.double().requires_grad_(True), s2.double().requires_grad_(True)
    ref = _exact_rrd_rows(ad, bd).sum()
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-4 * abs(ref.item())
    assert torch.allclose(a.grad.double(), ad.grad, atol=1e-4)
    assert torch.allclose(b.grad.double(), bd.grad, atol=1e-4)


def test_rrd_stable_where_naive_overflows():
    s1 = torch.randn(4, 40) * 2 + 300.0  # exp(300) = inf in float32
    s2 = torch.randn(4, 40) * 2 + 300.0
    assert not torch.isfinite(_naive_rrd(s1, s2))
    loss = rrd_loss(s1, s2)
    assert torch.isfinite(loss)
    # shift invariance: the same loss as the unshifted scores (computed in float64)
    ref = _naive_rrd((s1 - 300).double(), (s2 - 300).double())
    assert abs(loss.item() - ref.item()) < 1e-3 * abs(ref.item())
    s = s1.clone().requires_grad_(True)
    rrd_loss(s, s2).backward()
    assert torch.isfinite(s.grad).all()


def _exact_rrd_rows(s1, s2):
    """Independent float64 form: logcumsumexp on the flipped list, logaddexp negatives."""
    below = torch.logcumsumexp(s1.flip(1), 1).flip(1)
    if s2.shape[1]:
        below = torch.logaddexp(below, torch.logsumexp(s2, 1, keepdim=True))
    return (below - s1).sum(1)


def test_rrd_fallback_rows_underflow_and_overflow():
    # row 0: typical; row 1: a suffix ~800 nats below the first item (float64 underflow);
    # row 2: a score ~800 above the first one (overflow); row 3: negatives far above;
    # row 4: all scores ~750 (unshifted exp overflows, the shifted fast path is exact)
    s1 = torch.tensor([[1.0, 0.5, -0.2, 0.3],
                       [0.0, -800.0, -900.0, -850.0],
                       [0.0, 800.0, 1.0, 2.0],
                       [0.0, 1.0, 2.0, 3.0],
                       [750.0, 749.0, 751.0, 748.0]], dtype=D, requires_grad=True)
    s2 = torch.tensor([[0.1, -0.3], [-870.0, -820.0], [0.5, 900.0], [750.0, 760.0],
                       [747.0, 752.0]], dtype=D, requires_grad=True)
    from recsys.losses.rrd import _RelaxedPL

    with torch.no_grad():
        assert _RelaxedPL.apply(s1, s2, False)[1].tolist() == [1, 2, 3, 4]
        assert _RelaxedPL.apply(s1[1:], s2[1:], True)[1].tolist() == [0, 1, 2]
    ours = rrd_loss(s1, s2, reduction="none")
    ref = _exact_rrd_rows(s1, s2)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-8)
    assert gradcheck(lambda a, b: rrd_loss(a, b, reduction="none"), (s1, s2))
    g1, g2 = torch.autograd.grad(rrd_loss(s1, s2), (s1, s2))
    r1, r2 = torch.autograd.grad(ref.sum(), (s1, s2))
    assert torch.allclose(g1, r1) and torch.allclose(g2, r2)


def test_rrd_analytic_gradient_matches_autograd_reference():
    s1, s2 = _rand(6, 7, seed=21, scale=3), _rand(6, 5, seed=22, scale=3)
    g = torch.rand(6, dtype=D)
    ours = torch.autograd.grad((rrd_loss(s1, s2, reduction="none") * g).sum(), (s1, s2))
    ref = torch.autograd.grad((_exact_rrd_rows(s1, s2) * g).sum(), (s1, s2))
    assert all(torch.allclose(a, b) for a, b in zip(ours, ref))
    assert gradcheck(lambda a, b: rrd_loss(a, b), (s1[:2, :3].detach().requires_grad_(),
                                                     s2[:2, :2].detach().requires_grad_()))


def test_plackett_luce_denominators():
    s = _rand(3, 6, seed=23).detach()
    c = torch.tensor([0.5, -1.0, 2.0], dtype=D)
    ref = torch.logaddexp(torch.logcumsumexp(s.flip(1), 1).flip(1), c[:, None])
    assert torch.allclose(plackett_luce_denominators(s, c), ref)
    assert torch.allclose(plackett_luce_denominators(s),
                          torch.logcumsumexp(s.flip(1), 1).flip(1))


def test_rrd_bad_input():
    with pytest.raises(ValueError, match="rows"):
        rrd_loss(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="matrix"):
        rrd_loss(torch.zeros(3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="`scores_interesting` contains 0 NaN and 1 inf"):
        rrd_loss(torch.tensor([[float("inf"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="`scores_interesting` contains 0 NaN and 1 inf"):
        rrd_loss(torch.tensor([[0.0, -float("inf")]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="`scores_uninteresting` contains 1 NaN"):
        rrd_loss(torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="reduction"):
        rrd_loss(torch.zeros(1, 2), torch.zeros(1, 2), reduction="avg")


# ----------------------------------------------------------------------------- UnKD
def test_unkd_matches_reference_with_mask():
    si, sj = _rand(5, 6, seed=13), _rand(5, 6, seed=14)
    ref = (-torch.log(torch.sigmoid(si - sj))).mean(-1)
    # the reference's torch.mean over users (issue 13 item 4; the default was a sum)
    assert torch.allclose(unkd_loss(si, sj), ref.mean())
    assert torch.allclose(unkd_loss(si, sj, reduction="sum"), ref.sum())
    valid = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) > 0.4
    valid[0] = False
    per = torch.stack([(-torch.log(torch.sigmoid(si[u] - sj[u])))[valid[u]].mean()
                       if valid[u].any() else si.new_zeros(()) for u in range(5)])
    assert torch.allclose(UnKD()(si, sj, valid), per.mean())
    assert gradcheck(lambda a, b: unkd_loss(a, b, valid=valid[1:3, :3]),
                     (si[1:3, :3].detach().requires_grad_(), sj[1:3, :3].detach().requires_grad_()))
    with pytest.raises(ValueError, match="valid"):
        unkd_loss(si, sj, valid=valid[:, :3])


# ----------------------------------------------------------------------------- baselines
def test_score_kd_listwise_and_hint():
    s, t = _rand(4, 10, seed=15), _rand(4, 10, seed=16).detach()
    assert torch.allclose(score_kd_loss(s, t), ((s - t) ** 2).mean())
    assert torch.allclose(score_kd_loss(s, t, reduction="sum"), ((s - t) ** 2).sum())
    tau = 2.0
    pt, ps = torch.softmax(t / tau, 1), torch.softmax(s / tau, 1)
    ref = tau**2 * (pt * (pt.log() - ps.log())).sum(1).sum()
    assert torch.allclose(listwise_kd_loss(s, t, tau=tau), ref)
    assert gradcheck(lambda x: listwise_kd_loss(x, t[:2, :3], tau=tau),
                     (s[:2, :3].detach().requires_grad_(),))
    hint = EmbeddingHint(3, 5).double()
    su, tu, si, ti = (_rand(4, 3, seed=17), _rand(4, 5, seed=18).detach(),
                      _rand(2, 3, seed=19), _rand(2, 5, seed=20).detach())
    ref = ((su @ hint.user_adapter.weight.T - tu) ** 2).sum() + (
        (si @ hint.item_adapter.weight.T - ti) ** 2).sum()
    assert torch.allclose(hint(su, tu, si, ti), ref)
    with pytest.raises(ValueError, match="EmbeddingHint"):
        hint_loss(su, tu)


# ----------------------------------------------------------------------------- registry
def test_registry():
    names = ranking_loss_names()
    for n in ["rd", "cd", "rrd", "dcd", "de", "ftd", "htd", "unkd", "score_kd", "hint"]:
        assert n in names
    m = get_ranking_loss("RRD", k=10, l=5)
    assert isinstance(m, RRD) and m.k == 10 and isinstance(m, RankingLoss)
    assert get_ranking_loss(m) is m
    with pytest.raises(ValueError, match="valid names:.*rrd"):
        get_ranking_loss("rrdd")
    with pytest.raises(ValueError, match="constructor"):
        get_ranking_loss(m, k=3)


def test_resolve_is_the_one_name_or_instance_rule():
    from graphkd.registry import Registry
    from recsys.losses._base import RANKING_LOSSES, resolve

    assert type(resolve(RANKING_LOSSES, "R-R-D", k=7)) is RRD
    other: Registry = Registry("widget")

    @other.register("lin")
    class Lin(torch.nn.Linear):
        pass

    lin = resolve(other, "LIN", in_features=2, out_features=3)
    assert type(lin) is Lin and lin.out_features == 3 and resolve(other, lin) is lin
    with pytest.raises(ValueError, match="unknown widget 'x'; valid names: \\['lin'\\]"):
        resolve(other, "x")
    with pytest.raises(ValueError, match="constructor"):
        resolve(other, lin, bias=False)
