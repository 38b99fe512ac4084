"""Relation losses (SP, RKD, PKT, CC, IRG) against the reference implementations' formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.references import ref_pkt, ref_rkd_terms, ref_sp
from graphkd.losses import get_loss
from graphkd.losses.relation import (
    CC,
    IRG,
    PKT,
    RKD,
    SP,
    cc_kernel,
    cc_loss,
    irg_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
)

D64 = torch.float64


def _pair(b=9, ds=5, dt=7, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, ds, generator=g, dtype=D64).to(device)
    t = torch.randn(b, dt, generator=g, dtype=D64).to(device)
    return s, t


# --------------------------------------------------------------------------- references
def ref_sp_torchdistill(f_s, f_t):
    """torchdistill SPKDLoss (reduction='batchmean'): normalize(G, 1) is p=1 (L1 rows)."""
    def g(z):
        z = torch.flatten(z, 1)
        return F.normalize(torch.matmul(z, torch.t(z)), 1)
    b = f_s.shape[0]
    return torch.norm(g(f_t) - g(f_s)) ** 2 / b**2


def ref_sp_loops(f_s, f_t):
    """SP by explicit loops over pairs (the paper's formula)."""
    b = f_s.shape[0]

    def g(z):
        m = [[float(z[i] @ z[j]) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in m]
    gs, gt = g(f_s.flatten(1)), g(f_t.flatten(1))
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def ref_rkd(f_s, f_t, w_d=25.0, w_a=50.0):
    """RepDistiller's RKD as ``(total, distance term, angle term)``."""
    loss_d, loss_a = ref_rkd_terms(f_s, f_t)
    return w_d * loss_d + w_a * loss_a, loss_d, loss_a


def _cc_mat(linear_outputs, gamma=0.4, max_p=2):
    """torchdistill CCKDLoss.compute_cc_mat_by_gaussian_rbf (row loop)."""
    row_list = []
    for linear_output in linear_outputs:
        row = 1
        right_term = torch.matmul(linear_output, torch.t(linear_outputs))
        for p in range(1, max_p + 1):
            left_term = ((2 * gamma) ** p) / (math.factorial(p))
            row += left_term * (right_term ** p)
        row *= math.exp(-2 * gamma)
        row_list.append(row.squeeze(0))
    return torch.stack(row_list)


def ref_cc(f_s, f_t, gamma=0.4, max_p=2):
    """torchdistill CCKDLoss.forward, reduction='batchmean'."""
    b = f_t.shape[0]
    return torch.dist(_cc_mat(f_s, gamma, max_p), _cc_mat(f_t, gamma, max_p), 2) / b**2


class RefIRG:
    """AberHu/Knowledge-Distillation-Zoo kd_losses/irg.py."""

    def __init__(self, w_irg_vert, w_irg_edge, w_irg_tran):
        self.w_irg_vert, self.w_irg_edge, self.w_irg_tran = w_irg_vert, w_irg_edge, w_irg_tran

    def __call__(self, irg_s, irg_t):
        fm_s1, fm_s2, feat_s, out_s = irg_s
        fm_t1, fm_t2, feat_t, out_t = irg_t
        loss_irg_vert = F.mse_loss(out_s, out_t)
        loss_irg_edge = (F.mse_loss(self.dist_feat(feat_s), self.dist_feat(feat_t))
                         + F.mse_loss(self.dist_fm(fm_s1), self.dist_fm(fm_t1))
                         + F.mse_loss(self.dist_fm(fm_s2), self.dist_fm(fm_t2))) / 3.0
        loss_irg_tran = F.mse_loss(self.dist_fms(fm_s1, fm_s2), self.dist_fms(fm_t1, fm_t2))
        return (self.w_irg_vert * loss_irg_vert + self.w_irg_edge * loss_irg_edge
                + self.w_irg_tran * loss_irg_tran)

    @staticmethod
    def dist_fms(fm1, fm2, eps=1e-12):
        if fm1.size(2) > fm2.size(2):
            fm1 = F.adaptive_avg_pool2d(fm1, (fm2.size(2), fm2.size(3)))
        if fm1.size(1) < fm2.size(1):
            fm2 = (fm2[:, 0::2, :, :] + fm2[:, 1::2, :, :]) / 2.0
        fm1 = fm1.view(fm1.size(0), -1)
        fm2 = fm2.view(fm2.size(0), -1)
        d = torch.sum(torch.pow(fm1 - fm2, 2), dim=-1).clamp(min=eps)
        return d / d.max()

    @staticmethod
    def dist_fm(fm, eps=1e-12):
        return RefIRG.dist_feat(fm.view(fm.size(0), -1), eps)

    @staticmethod
    def dist_feat(feat, eps=1e-12):
        sq = feat.pow(2).sum(dim=1)
        d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * torch.mm(feat, feat.t())).clamp(min=eps)
        d = d.clone()
        d[range(len(feat)), range(len(feat))] = 0
        return d / d.max()


def _irg_inputs(b=6, device="cpu", seed=0, c=(3, 4), widths=(5, 4)):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=D64).to(device)
    s = [r(b, c[0], 4, 4), r(b, 2 * c[0], 2, 2), r(b, widths[0]), r(b, 10)]
    t = [r(b, c[1], 4, 4), r(b, 2 * c[1], 2, 2), r(b, widths[1]), r(b, 10)]
    return s, t


# --------------------------------------------------------------------------- SP
def test_sp_matches_torchdistill_and_loops(device):
    s, t = _pair(device=device)
    got = sp_loss(s, t)
    torch.testing.assert_close(got, ref_sp(s, t), rtol=1e-10, atol=0)
    assert math.isclose(float(got), ref_sp_loops(s.cpu(), t.cpu()), rel_tol=1e-10)
    assert got.device.type == device.type


def test_sp_torchdistill_variant_is_l1_rows():
    s, t = _pair(seed=13)
    torch.testing.assert_close(sp_loss(s, t, p=1.0), ref_sp_torchdistill(s, t), rtol=1e-10,
                               atol=0)
    torch.testing.assert_close(SP(p=1.0)(s, t), ref_sp_torchdistill(s, t), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="`p`"):
        SP(p=0.0)


def test_sp_flattens_maps_and_module():
    s = torch.randn(5, 2, 3, 3, dtype=D64)
    t = torch.randn(5, 4, 2, 2, dtype=D64)
    torch.testing.assert_close(SP()(s, t), ref_sp(s, t), rtol=1e-10, atol=0)
    torch.testing.assert_close(sp_loss(s, t), sp_loss(s.flatten(1), t.flatten(1)))


def test_sp_single_sample_is_zero():
    # G = [[1]] for any non-zero sample.
    assert float(sp_loss(torch.randn(1, 4, dtype=D64), torch.randn(1, 3, dtype=D64))) == 0.0


# --------------------------------------------------------------------------- RKD
@pytest.mark.parametrize("chunk", [None, 1, 4, 9, 100])
def test_rkd_matches_repdistiller(device, chunk):
    s, t = _pair(b=9, device=device)
    ref, ref_d, ref_a = ref_rkd(s, t)
    torch.testing.assert_close(rkd_loss(s, t, chunk_size=chunk), ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(rkd_distance_loss(s, t), ref_d, rtol=1e-10, atol=0)
    torch.testing.assert_close(rkd_angle_loss(s, t, chunk_size=chunk), ref_a, rtol=1e-10,
                               atol=0)


def test_rkd_student_gradient_matches_reference_autograd(device):
    s, t = _pair(b=8, ds=6, dt=3, device=device, seed=1)
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(ref_rkd(s1, t)[0], s1)
    (g,) = torch.autograd.grad(rkd_loss(s2, t, chunk_size=3), s2)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_rkd_gradcheck_student_and_teacher():
    s, t = _pair(b=6, ds=4, dt=3, seed=2)
    s.requires_grad_()
    t.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: rkd_loss(a, t, chunk_size=4), (s,))
    assert torch.autograd.gradcheck(lambda a: rkd_angle_loss(a, t, chunk_size=2), (s,))
    # the public losses detach the teacher; the custom backward's teacher side stays exact
    from graphkd.losses.relation import _rkd_angle
    assert torch.autograd.gradcheck(lambda a, b: _rkd_angle(a, b, 1.0, 2, 1e-12), (s, t))
    assert torch.autograd.gradcheck(lambda b: _rkd_angle(s.detach(), b, 1.0, 5, 1e-12), (t,))


def test_rkd_duplicates_match_reference_with_finite_grad():
    s, t = _pair(b=7, seed=3)
    s[4] = s[1]
    t[5] = t[2]
    ref = ref_rkd(s, t)[0]
    s.requires_grad_()
    loss = rkd_loss(s, t, chunk_size=3)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    (g,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(g).all()
    # away from the coincident pair the loss is smooth: the gradient of a row that duplicates
    # nothing equals the reference's (which explodes only on the duplicated rows).
    assert g.abs().max() < 1e3


def test_rkd_permutation_invariant():
    s, t = _pair(b=10, seed=4)
    perm = torch.randperm(10)
    torch.testing.assert_close(rkd_loss(s[perm], t[perm], chunk_size=3), rkd_loss(s, t),
                               rtol=1e-12, atol=0)


def test_rkd_small_batches():
    s, t = _pair(b=2, seed=5)
    assert float(rkd_loss(s, t)) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="at least 2"):
        rkd_loss(s[:1], t[:1])
    with pytest.raises(ValueError, match="at least 2"):
        RKD()(s[:1], t[:1])


def test_rkd_mixed_precision_teacher():
    s, t = _pair(seed=14)
    ref, _, ref_a = ref_rkd(s, t.float().double())
    torch.testing.assert_close(rkd_angle_loss(s, t.float()), ref_a, rtol=1e-10, atol=0)
    # the distance term keeps the teacher's float32 distances
    torch.testing.assert_close(rkd_loss(s, t.float()), ref, rtol=1e-6, atol=0)


def test_rkd_weights_and_module():
    s, t = _pair(seed=6)
    _, ref_d, ref_a = ref_rkd(s, t)
    torch.testing.assert_close(RKD(w_dist=2.0, w_angle=0.0)(s, t), 2.0 * ref_d, rtol=1e-10,
                               atol=0)
    torch.testing.assert_close(RKD(w_dist=0.0, w_angle=3.0, chunk_size=2)(s, t), 3.0 * ref_a,
                               rtol=1e-10, atol=0)
    assert isinstance(get_loss("rkd"), RKD)
    with pytest.raises(ValueError, match="chunk_size"):
        rkd_loss(s, t, chunk_size=0)
    with pytest.raises(ValueError, match="delta"):
        RKD(delta=0.0)


def test_rkd_backward_keeps_no_cubic_tensor():
    """Only O(B^2 + B*D) values are saved for backward (the reference saves O(B^3 + B^2 D))."""
    b, d = 48, 16
    s = torch.randn(b, d, requires_grad=True)
    t = torch.randn(b, d)
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        rkd_loss(s, t, chunk_size=8)
    ours = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ref_rkd(s, t)
    assert max(saved) >= b**3  # the reference keeps the angle tensor
    assert ours < 20 * b * b  # pairwise distance matrices only
    assert ours * 4 < sum(saved)


# --------------------------------------------------------------------------- PKT
def test_pkt_matches_repdistiller(device):
    s, t = _pair(device=device)
    torch.testing.assert_close(pkt_loss(s, t), ref_pkt(s.clone(), t.clone()), rtol=1e-10,
                               atol=0)
    torch.testing.assert_close(PKT()(s, t), ref_pkt(s.clone(), t.clone()), rtol=1e-10, atol=0)


def test_pkt_zero_row_and_duplicates():
    s, t = _pair(seed=7)
    s[0] = 0.0
    s[3] = s[2]
    torch.testing.assert_close(pkt_loss(s, t), ref_pkt(s.clone(), t.clone()), rtol=1e-10,
                               atol=0)
    s.requires_grad_()
    (g,) = torch.autograd.grad(pkt_loss(s, t), s)
    assert torch.isfinite(g).all()


def test_pkt_identical_features_give_zero():
    s, _ = _pair(seed=8)
    assert float(pkt_loss(s, 3.0 * s)) == pytest.approx(0.0, abs=1e-12)
    assert float(pkt_loss(s, s)) == 0.0


# --------------------------------------------------------------------------- CC
def test_cc_matches_torchdistill(device):
    s, t = _pair(ds=6, dt=6, device=device)
    s, t = 0.3 * s, 0.3 * t
    torch.testing.assert_close(cc_loss(s, t), ref_cc(s, t), rtol=1e-10, atol=0)
    torch.testing.assert_close(CC(gamma=0.7, max_order=3)(s, t), ref_cc(s, t, 0.7, 3),
                               rtol=1e-10, atol=0)


def test_cc_kernel_converges_to_rbf_on_unit_vectors():
    x = F.normalize(torch.randn(6, 4, dtype=D64), dim=1)
    rbf = torch.exp(-0.4 * torch.cdist(x, x) ** 2)
    torch.testing.assert_close(cc_kernel(x, gamma=0.4, max_order=25), rbf, rtol=1e-10,
                               atol=1e-12)


def test_cc_equal_kernels_give_zero_with_finite_grad():
    s, _ = _pair(seed=15)
    s.requires_grad_()
    loss = cc_loss(s, s.detach())
    (g,) = torch.autograd.grad(loss, s)
    assert float(loss.detach()) == 0.0 and torch.isfinite(g).all()


def test_cc_normalize_option():
    s, t = _pair(seed=9)
    want = ref_cc(F.normalize(s, dim=1), F.normalize(t, dim=1))
    torch.testing.assert_close(cc_loss(s, t, normalize=True), want, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="max_order"):
        cc_loss(s, t, max_order=-1)


# --------------------------------------------------------------------------- IRG
def test_irg_matches_kd_zoo(device):
    s, t = _irg_inputs(device=device)
    want = RefIRG(0.1, 5.0, 5.0)(s, t)
    torch.testing.assert_close(irg_loss(s, t), want, rtol=1e-10, atol=0)
    torch.testing.assert_close(IRG(lambda_v=0.3, lambda_e=2.0, lambda_t=7.0)(s, t),
                               RefIRG(0.3, 2.0, 7.0)(s, t), rtol=1e-10, atol=0)


def test_irg_terms_separately():
    s, t = _irg_inputs(seed=1)
    ref = RefIRG
    v = F.mse_loss(s[-1], t[-1])
    e = sum(F.mse_loss(ref.dist_feat(a.flatten(1)), ref.dist_feat(b.flatten(1)))
            for a, b in zip(s[:-1], t[:-1], strict=True)) / 3
    tr = F.mse_loss(ref.dist_fms(s[0], s[1]), ref.dist_fms(t[0], t[1]))
    torch.testing.assert_close(irg_loss(s, t, lambda_v=1, lambda_e=0, lambda_t=0), v)
    torch.testing.assert_close(irg_loss(s, t, lambda_v=0, lambda_e=1, lambda_t=0), e,
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(irg_loss(s, t, lambda_v=0, lambda_e=0, lambda_t=1), tr,
                               rtol=1e-10, atol=0)
    # a single hidden layer: no transformation term by default
    one = irg_loss([s[2], s[3]], [t[2], t[3]])
    torch.testing.assert_close(one, 0.1 * v + 5.0 * F.mse_loss(ref.dist_feat(s[2]),
                                                               ref.dist_feat(t[2])))


def test_irg_gradcheck_and_permutation():
    s, t = _irg_inputs(b=4, seed=2, c=(1, 2), widths=(3, 2))
    s = [x.requires_grad_() for x in s]
    assert torch.autograd.gradcheck(lambda *xs: irg_loss(list(xs), t), tuple(s), fast_mode=True)
    perm = torch.randperm(4)
    torch.testing.assert_close(irg_loss([x[perm] for x in s], [x[perm] for x in t]),
                               irg_loss(s, t), rtol=1e-12, atol=0)


def test_irg_bad_input():
    s, t = _irg_inputs()
    with pytest.raises(TypeError, match="lists"):
        irg_loss(s[0], t[0])
    with pytest.raises(ValueError, match="same layers"):
        irg_loss(s, t[1:])
    with pytest.raises(ValueError, match="cannot be compared"):
        irg_loss([s[2], torch.randn(6, 7, dtype=D64), s[3]],
                 [t[2], torch.randn(6, 9, dtype=D64), t[3]])
    with pytest.raises(ValueError, match="out of range"):
        irg_loss(s, t, transform_pairs=[(0, 5)])
    with pytest.raises(ValueError, match="logits"):
        irg_loss(s, t[:-1] + [torch.randn(6, 3, dtype=D64)])
    bad = list(s)
    bad[2] = bad[2].clone()
    bad[2][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        irg_loss(bad, t)


# --------------------------------------------------------------------------- shared
BATCH_LOSSES = [sp_loss, rkd_loss, pkt_loss, cc_loss]


@pytest.mark.parametrize("fn", BATCH_LOSSES, ids=lambda f: f.__name__)
def test_gradcheck_student(fn):
    s, t = _pair(b=5, ds=3, dt=4, seed=10)
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fn(a, t), (s,))


@pytest.mark.parametrize("fn", BATCH_LOSSES, ids=lambda f: f.__name__)
def test_permutation_invariance(fn):
    s, t = _pair(b=8, seed=11)
    perm = torch.randperm(8)
    torch.testing.assert_close(fn(s[perm], t[perm]), fn(s, t), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn", BATCH_LOSSES, ids=lambda f: f.__name__)
def test_bad_input_raises(fn):
    s, t = _pair(seed=12)
    bad = s.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="f_s.*NaN"):
        fn(bad, t)
    inf = t.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="f_t.*inf"):
        fn(s, inf)
    with pytest.raises(ValueError, match="rows"):
        fn(s, t[:-1])
    with pytest.raises(ValueError, match="unsqueeze"):
        fn(s[0], t[0])
    with pytest.raises(TypeError, match="floating"):
        fn(s.long(), t)


@pytest.mark.parametrize("name,cls", [("sp", SP), ("rkd", RKD), ("pkt", PKT), ("cc", CC),
                                      ("irg", IRG)])
def test_registered(name, cls):
    loss = get_loss(name)
    assert isinstance(loss, cls) and loss.level == "batch" and not loss.needs_dims


# ------------------------------------------------ RKD angles from the Gram (issue 17, item 1)
def _rkd_angle_direct(s, t, delta=1.0, chunk=3):
    """The direct-difference angle path (the only path before issue 17)."""
    from graphkd.losses.rkd import _RKDAngleSum

    return _RKDAngleSum.apply(s, t, chunk, delta, 1e-12) / s.shape[0] ** 3


@pytest.mark.parametrize("b,ds,dt,chunk", [(9, 5, 7, None), (33, 16, 8, 4), (64, 32, 32, 1)])
@pytest.mark.parametrize("delta", [1.0, 0.05])
def test_rkd_gram_angles_equal_direct_path_values_and_grads(b, ds, dt, chunk, delta):
    s, t = _pair(b=b, ds=ds, dt=dt, seed=b)
    s1, t1 = s.clone().requires_grad_(), t.clone().requires_grad_()
    s2, t2 = s.clone().requires_grad_(), t.clone().requires_grad_()
    from graphkd.losses.rkd import _rkd_angle

    new = _rkd_angle(s1, t1, delta, chunk, 1e-12)
    old = _rkd_angle_direct(s2, t2, delta)
    torch.testing.assert_close(new, old, rtol=1e-12, atol=0)
    for gn, go in zip(torch.autograd.grad(new, (s1, t1)), torch.autograd.grad(old, (s2, t2))):
        torch.testing.assert_close(gn, go, rtol=1e-6, atol=1e-6 * go.abs().max().item())


def test_rkd_gram_gradcheck():
    s, t = _pair(b=7, ds=4, dt=6, seed=21)
    s.requires_grad_()
    t.requires_grad_()
    from graphkd.losses.rkd import _rkd_angle

    assert torch.autograd.gradcheck(lambda a, b: _rkd_angle(a, b, 1.0, 3, 1e-12), (s, t))
    assert torch.autograd.gradcheck(lambda a, b: _rkd_angle(a, b, 0.02, None, 1e-12), (s, t))


@pytest.mark.parametrize("gap", [1e-1, 1e-3, 1e-4])
def test_rkd_near_duplicates_match_direct_path(gap):
    """Near-duplicate samples far from the origin (the Gram form's cancellation case): float64
    equals the direct-difference path; float32 is as close to the float64 truth as the direct
    float32 path is."""
    s, t = _pair(b=12, ds=6, dt=5, seed=22)
    s, t = s + 50.0, t - 30.0
    s[7] = s[3] + gap * torch.randn(6, dtype=D64)
    t[9] = t[1] + gap * torch.randn(5, dtype=D64)
    s[10] = s[4]  # and an exact duplicate
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    new = rkd_angle_loss(s1, t)
    old = _rkd_angle_direct(s2, t)
    torch.testing.assert_close(new, old, rtol=1e-9, atol=0)
    (gn,), (go,) = torch.autograd.grad(new, s1), torch.autograd.grad(old, s2)
    torch.testing.assert_close(gn, go, rtol=1e-6, atol=1e-6 * go.abs().max().item())
    s32, t32 = s.float(), t.float()
    truth = _rkd_angle_direct(s32.double(), t32.double())
    new32 = rkd_angle_loss(s32, t32).double()
    old32 = _rkd_angle_direct(s32, t32).double()
    assert new32.dtype == torch.float64 and rkd_angle_loss(s32, t32).dtype == torch.float32
    assert abs(new32 - truth) <= max(2 * abs(old32 - truth), 1e-6 * abs(truth))
    a32, b32 = s32.clone().requires_grad_(), s32.clone().requires_grad_()
    t64 = s32.double().requires_grad_()
    (g32,) = torch.autograd.grad(rkd_angle_loss(a32, t32), a32)
    (go32,) = torch.autograd.grad(_rkd_angle_direct(b32, t32), b32)
    (g64,) = torch.autograd.grad(_rkd_angle_direct(t64, t32.double()), t64)
    assert (g32.double() - g64).abs().max() <= 2 * (go32.double() - g64).abs().max() + 1e-9
