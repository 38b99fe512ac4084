"""CTR distillation losses against independent formulas (float64 references)."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.losses.ctr import (
    CTR_LOSSES,
    LogitHint,
    SoftLabelBCE,
    get_ctr_loss,
    logit_hint,
    soft_label_bce,
)


def _ref_bce(s: list[float], t: list[float], temp: float = 1.0) -> float:
    """Plain-Python mean of T^2 * BCE(sigmoid(t/T), sigmoid(s/T)) with log(1 + exp(.))."""
    total = 0.0
    for si, ti in zip(s, t):
        p = 1.0 / (1.0 + math.exp(-ti / temp))
        x = si / temp
        # -log sigmoid(x) = log(1 + exp(-x)); -log(1 - sigmoid(x)) = log(1 + exp(x))
        total += (p * math.log1p(math.exp(-x)) + (1 - p) * math.log1p(math.exp(x))) * temp ** 2
    return total / len(s)


@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_soft_label_bce_equals_formula(temp):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(17, generator=g, dtype=torch.float64) * 3
    t = torch.randn(17, generator=g, dtype=torch.float64) * 3
    got = soft_label_bce(s, t, temperature=temp)
    assert got.item() == pytest.approx(_ref_bce(s.tolist(), t.tolist(), temp), rel=1e-12)
    # torch's BCE on probabilities agrees where it is accurate
    ref = torch.nn.functional.binary_cross_entropy(torch.sigmoid(s / temp),
                                                   torch.sigmoid(t / temp)) * temp ** 2
    assert got.item() == pytest.approx(ref.item(), rel=1e-9)


def test_soft_label_bce_stable_at_large_logits():
    s = torch.tensor([100.0, -100.0, 100.0, -100.0, 0.0], requires_grad=True)
    t = torch.tensor([-100.0, 100.0, 100.0, -100.0, 100.0])
    per = soft_label_bce(s, t, reduction="none")
    # p = sigmoid(t) is 0/1 to float precision: the loss is |s| for a wrong sign, ~0 for right
    expected = torch.tensor([100.0, 100.0, 0.0, 0.0, math.log(2.0)])
    assert torch.isfinite(per).all()
    assert torch.allclose(per, expected, atol=1e-5)
    per.sum().backward()
    assert torch.isfinite(s.grad).all()
    # d/ds = sigmoid(s) - p
    assert torch.allclose(s.grad, torch.sigmoid(s.detach()) - torch.sigmoid(t), atol=1e-6)


def test_soft_label_bce_gradient_is_sigmoid_difference_over_t():
    """dL_b/ds_b = T * (sigmoid(s/T) - sigmoid(t/T)) (T^2 scaling), minimum at s = t."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    temp = 3.0
    soft_label_bce(s, t, temperature=temp, reduction="sum").backward()
    ref = temp * (torch.sigmoid(s.detach() / temp) - torch.sigmoid(t.detach() / temp))
    assert torch.allclose(s.grad, ref)
    assert t.grad is None  # the teacher is a constant
    assert torch.autograd.gradcheck(
        lambda x: soft_label_bce(x, t.detach(), temperature=temp), (s.detach().requires_grad_(),))


def test_logit_hint_formula_and_gradient_block():
    s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64, requires_grad=True)
    loss = logit_hint(s, t)
    assert loss.item() == pytest.approx((1.0 + 9.0 + 0.0) / 3)
    loss.backward()
    assert torch.allclose(s.grad, 2 * (s.detach() - t.detach()) / 3)
    assert t.grad is None
    assert logit_hint(s, t, reduction="sum").item() == pytest.approx(10.0)
    assert logit_hint(s, t, reduction="none").shape == (3,)


def test_registry_and_modules():
    assert {"soft_bce", "logit_hint"} <= set(CTR_LOSSES.names())
    m = get_ctr_loss("Soft-BCE", temperature=2.0)
    assert isinstance(m, SoftLabelBCE) and m.temperature == 2.0
    assert isinstance(get_ctr_loss("logit_hint"), LogitHint)
    s, t = torch.randn(5), torch.randn(5)
    assert torch.allclose(m(s, t), soft_label_bce(s, t, temperature=2.0))
    with pytest.raises(ValueError, match="valid names"):
        get_ctr_loss("soft_bc")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty batch"):
        soft_label_bce(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        logit_hint(torch.tensor([float("nan")]), torch.zeros(1))
    with pytest.raises(ValueError, match="inf"):
        soft_label_bce(torch.zeros(1), torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match="same shape"):
        logit_hint(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="one logit per sample"):
        soft_label_bce(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="temperature"):
        SoftLabelBCE(temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        LogitHint(reduction="avg")


def test_half_precision_computed_in_float32():
    s = torch.tensor([30.0, -30.0, 2.0], dtype=torch.float16)
    t = torch.tensor([-30.0, 30.0, 2.0], dtype=torch.float16)
    out = get_ctr_loss("soft_bce")(s, t)
    assert out.dtype == torch.float16
    assert out.float().item() == pytest.approx(
        soft_label_bce(s.float(), t.float()).item(), rel=1e-3)
