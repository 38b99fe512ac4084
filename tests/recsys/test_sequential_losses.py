"""The sequential-distillation losses against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.losses import (
    HiddenStateKD,
    SampledKD,
    get_ranking_loss,
    hidden_state_loss,
    ranking_loss_names,
    sampled_kd_loss,
)


def _kd_reference(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * mean_b sum_i p_t (log p_t - log p_s), with explicit exp/sum (no log_softmax)."""
    rows = []
    for sb, tb in zip(s.double().tolist(), t.double().tolist(), strict=True):
        zs = sum(math.exp(x / tau) for x in sb)
        zt = sum(math.exp(x / tau) for x in tb)
        kl = 0.0
        for a, b in zip(sb, tb, strict=True):
            pt, ps = math.exp(b / tau) / zt, math.exp(a / tau) / zs
            kl += pt * (math.log(pt) - math.log(ps))
        rows.append(tau**2 * kl)
    return torch.tensor(sum(rows) / len(rows), dtype=torch.float64)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_sampled_kd_matches_formula(tau):
    g = torch.Generator().manual_seed(0)
    s_top, t_top = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    s_smp, t_smp = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    got = sampled_kd_loss(s_top, t_top, s_smp, t_smp, tau=tau)
    ref = _kd_reference(torch.cat([s_top, s_smp], 1), torch.cat([t_top, t_smp], 1), tau)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    # the top-K list alone, and the module (registered by name) agrees
    only_top = sampled_kd_loss(s_top, t_top, tau=tau)
    assert float(only_top) == pytest.approx(float(_kd_reference(s_top, t_top, tau)), rel=1e-5)
    mod = get_ranking_loss("sampled_kd", k=4, num_samples=3, tau=tau)
    assert isinstance(mod, SampledKD)
    assert float(mod(s_top, t_top, s_smp, t_smp)) == pytest.approx(float(got), rel=1e-6)


def test_sampled_kd_gradient_and_zero_at_match():
    s = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: sampled_kd_loss(x, t, tau=2.0), (s,))
    same = sampled_kd_loss(t.clone().requires_grad_(), t).detach()
    assert float(same) == pytest.approx(0.0, abs=1e-12)
    # shift invariance of the softmax: adding a constant per row changes nothing
    shifted = sampled_kd_loss(s.detach() + torch.arange(3.0, dtype=torch.float64).unsqueeze(1), t)
    assert float(shifted) == pytest.approx(float(sampled_kd_loss(s.detach(), t)), rel=1e-10)


def test_sampled_kd_input_errors():
    with pytest.raises(ValueError, match="both"):
        sampled_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="not finite|NaN|nan"):
        sampled_kd_loss(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="tau"):
        sampled_kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), tau=0.0)
    with pytest.raises(ValueError, match="empty"):
        sampled_kd_loss(torch.zeros(0, 3), torch.zeros(0, 3))


def test_hidden_state_matches_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 8, generator=g)
    loss = HiddenStateKD(student_dim=4, teacher_dim=8)
    w, b = loss.projector.weight.detach(), loss.projector.bias.detach()
    ref = sum(float(((w @ s[i] + b - t[i]) ** 2).sum()) for i in range(6)) / 6
    assert float(loss(s, t).detach()) == pytest.approx(ref, rel=1e-5)
    assert float(hidden_state_loss(s @ w.T + b, t, reduction="sum")) == pytest.approx(
        ref * 6, rel=1e-5)
    # the projector learns; the teacher side gets no gradient
    tt = t.clone().requires_grad_()
    loss(s, tt).backward()
    assert loss.projector.weight.grad is not None and tt.grad is None
    mlp = get_ranking_loss("hidden_state", student_dim=4, teacher_dim=8, projector="mlp")
    assert mlp(s, t).shape == () and len(list(mlp.parameters())) == 4


def test_hidden_state_errors_and_registry():
    assert {"sampled_kd", "hidden_state"} <= set(ranking_loss_names())
    with pytest.raises(ValueError, match="projector"):
        HiddenStateKD(4, 8, projector="conv")
    with pytest.raises(ValueError, match="width"):
        hidden_state_loss(torch.zeros(2, 4), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="not finite|NaN|nan"):
        HiddenStateKD(2, 2)(torch.tensor([[float("inf"), 0.0]]), torch.zeros(1, 2))
