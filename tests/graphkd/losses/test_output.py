"""KD on logits against RepDistiller's formula, known numbers and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graphkd.losses import get_loss
from graphkd.losses.output import KD, kd_loss

D64 = torch.float64


def ref_kd(y_s, y_t, tau):
    """RepDistiller distiller_zoo/KD.py (size_average=False == reduction='sum')."""
    p_s = F.log_softmax(y_s / tau, dim=1)
    p_t = F.softmax(y_t / tau, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * (tau**2) / y_s.shape[0]


def ref_kd_loops(y_s, y_t, tau):
    """The definition, one sample and class at a time."""
    total = 0.0
    for zs, zt in zip(y_s.tolist(), y_t.tolist(), strict=True):
        es = [math.exp(v / tau) for v in zs]
        et = [math.exp(v / tau) for v in zt]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    return tau**2 * total / len(y_s)


@pytest.mark.parametrize("tau", [1.0, 4.0, 0.5])
def test_kd_matches_repdistiller(device, tau):
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(7, 5, generator=g, dtype=D64).to(device) * 3
    z_t = torch.randn(7, 5, generator=g, dtype=D64).to(device) * 3
    got = kd_loss(z_s, z_t, tau)
    torch.testing.assert_close(got, ref_kd(z_s, z_t, tau), rtol=1e-10, atol=0)
    assert math.isclose(float(got), ref_kd_loops(z_s.cpu(), z_t.cpu(), tau), rel_tol=1e-10)
    torch.testing.assert_close(KD(tau=tau)(z_s, z_t), got)


def test_kd_known_number():
    # p_t = (1/2, 1/2), p_s = (3/4, 1/4): KL = 1/2 log(4/3); tau=1.
    z_t = torch.zeros(1, 2, dtype=D64)
    z_s = torch.tensor([[math.log(3.0), 0.0]], dtype=D64)
    assert float(kd_loss(z_s, z_t, 1.0)) == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-12)
    # the same logits at tau=2 are z/2: p_s = (sqrt3, 1)/(sqrt3 + 1), times tau^2 = 4
    r3 = math.sqrt(3.0)
    want = 4.0 * 0.5 * (math.log(0.5 * (r3 + 1.0) / r3) + math.log(0.5 * (r3 + 1.0)))
    assert float(kd_loss(z_s, z_t, 2.0)) == pytest.approx(want, rel=1e-12)


def test_kd_reductions_and_invariance():
    z_s, z_t = torch.randn(6, 4, dtype=D64), torch.randn(6, 4, dtype=D64)
    per = kd_loss(z_s, z_t, 3.0, reduction="none")
    assert per.shape == (6,)
    torch.testing.assert_close(per.mean(), kd_loss(z_s, z_t, 3.0))
    torch.testing.assert_close(kd_loss(z_s, z_t, 3.0, reduction="sum"), per.sum())
    # softmax ignores a per-row shift; equal distributions give 0; KL >= 0.
    torch.testing.assert_close(kd_loss(z_s + 5.0, z_t - torch.arange(6.0, dtype=D64)[:, None],
                                       3.0), kd_loss(z_s, z_t, 3.0))
    assert float(kd_loss(z_s, z_s + 2.0, 3.0)) == pytest.approx(0.0, abs=1e-14)
    assert (per >= 0).all()


def test_kd_gradcheck():
    z_s = torch.randn(4, 3, dtype=D64, requires_grad=True)
    z_t = torch.randn(4, 3, dtype=D64)  # the teacher's logits are constants
    assert torch.autograd.gradcheck(lambda a: kd_loss(a, z_t, 2.0), (z_s,))


def test_kd_large_logits_are_stable():
    z_s = torch.tensor([[1000.0, 0.0, -1000.0]])
    z_t = torch.tensor([[0.0, 1000.0, -1000.0]])
    out = kd_loss(z_s, z_t, 1.0)
    assert torch.isfinite(out) and float(out) == pytest.approx(1000.0, rel=1e-6)


def test_kd_bad_input():
    z = torch.randn(3, 4)
    bad = z.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="logits_s.*NaN"):
        kd_loss(bad, z)
    with pytest.raises(ValueError, match="logits_t.*NaN"):
        kd_loss(z, bad)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(z, z[:2])
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(z, torch.randn(3, 5))
    with pytest.raises(ValueError, match="2 dimensions"):
        kd_loss(z[0], z[0])
    with pytest.raises(ValueError, match="tau"):
        kd_loss(z, z, 0.0)
    with pytest.raises(ValueError, match="reduction"):
        kd_loss(z, z, reduction="mean")
    with pytest.raises(ValueError, match="tau"):
        KD(tau=-1.0)


def test_kd_registered():
    loss = get_loss("kd", tau=2.0)
    assert isinstance(loss, KD) and loss.tau == 2.0 and loss.level == "logits"
    with pytest.raises(ValueError, match="valid names"):
        get_loss("kdd")
