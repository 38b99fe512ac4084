"""Pan 2019 soft-target loss (``aekd``) and the adversarial list losses (``adkd``) against
independent formulas written with plain loops / torch ops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from recsys.losses import (
    ADKD,
    AEKD,
    aekd_loss,
    discriminator_loss,
    generator_loss,
    get_ranking_loss,
    plackett_luce_log_prob,
)


def _kl_reference(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    out = []
    for su, tu in zip(s, t):
        p = [math.exp(x / tau) for x in tu.tolist()]
        q = [math.exp(x / tau) for x in su.tolist()]
        zp, zq = sum(p), sum(q)
        out.append(sum(pi / zp * (math.log(pi / zp) - math.log(qi / zq)) for pi, qi in zip(p, q)))
    return torch.tensor(out, dtype=torch.float64) * tau**2


def test_aekd_softmax_is_hinton_kl_over_all_items():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g,
                                                                          dtype=torch.float64)
    for tau in (1.0, 2.5):
        ref = _kl_reference(s, t, tau)
        got = aekd_loss(s, t, temperature=tau, reduction="none")
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(aekd_loss(s, t, temperature=tau), ref.mean())
    assert float(aekd_loss(t, t)) == pytest.approx(0.0, abs=1e-12)


def test_aekd_bce_form_and_gradient_only_to_student():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    tau = 2.0
    q = torch.sigmoid(t.detach() / tau)
    p = torch.sigmoid(s / tau)
    ref = (-(q * torch.log(p) + (1 - q) * torch.log(1 - p))).sum(1).mean() * tau**2
    got = AEKD(form="bce", temperature=tau)(s, t)
    torch.testing.assert_close(got, ref)
    got.backward()
    assert s.grad is not None and t.grad is None


def test_aekd_rejects_bad_input():
    with pytest.raises(ValueError, match="form must be"):
        AEKD(form="mse")
    with pytest.raises(ValueError, match="temperature"):
        aekd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="must match"):
        aekd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN|finite"):
        aekd_loss(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    assert isinstance(get_ranking_loss("aekd"), AEKD)


def test_discriminator_loss_formula():
    real, fake = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, -0.5, 0.0])
    ref = sum(-math.log(1 / (1 + math.exp(-r))) - math.log(1 / (1 + math.exp(f)))
              for r, f in zip(real.tolist(), fake.tolist())) / 3
    assert float(discriminator_loss(real, fake)) == pytest.approx(ref, rel=1e-6)


def _pl_reference(scores: list[float], lst: list[int], allowed: set[int], tau: float) -> float:
    left, total = set(allowed), 0.0
    for i in lst:
        total += scores[i] / tau - math.log(sum(math.exp(scores[j] / tau) for j in left))
        left.remove(i)
    return total


def test_plackett_luce_log_prob_matches_sequential_formula_and_normalises():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 6, generator=g, dtype=torch.float64)
    s[0, 0] = float("-inf")  # masked item
    lists = torch.tensor([[3, 1, 5], [0, 4, 2]])
    for tau in (1.0, 0.5):
        got = plackett_luce_log_prob(s, lists, tau=tau)
        ref = [_pl_reference(s[0].tolist(), [3, 1, 5], {1, 2, 3, 4, 5}, tau),
               _pl_reference(s[1].tolist(), [0, 4, 2], set(range(6)), tau)]
        torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    # the probabilities of every ordered 2-list of the allowed items sum to 1
    perms = torch.tensor(list(itertools.permutations([1, 2, 3, 4, 5], 2)))
    rows = s[:1].expand(len(perms), -1)
    assert float(plackett_luce_log_prob(rows, perms).exp().sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="masked items"):
        plackett_luce_log_prob(s[:1], torch.tensor([[0, 1]]))


def test_plackett_luce_log_prob_is_stable_for_peaked_float32_scores():
    """A peaked student (or a small tau): the first picks hold nearly all the mass. float32
    must match float64 on the same inputs (values and gradients) and stay a log-probability
    (<= 0); the old ``total - cumsum`` form cancelled to values above 0 here."""
    g = torch.Generator().manual_seed(5)
    s64 = torch.randn(4, 300, generator=g, dtype=torch.float64) * 3
    s64[:, :5] += torch.tensor([40.0, 30.0, 20.0, 12.0, 6.0], dtype=torch.float64)
    lists = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2], [0, 2, 1, 4], [3, 4, 0, 1]])
    for tau in (1.0, 0.05):
        s32 = s64.float().requires_grad_(True)
        ref_in = s32.detach().double().requires_grad_(True)
        got = plackett_luce_log_prob(s32, lists, tau=tau)
        ref = plackett_luce_log_prob(ref_in, lists, tau=tau)
        assert bool((got <= 0).all())
        torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-4)
        got.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(s32.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-5)
        # independent check against the sequential formula on one row (float64)
        row = s32.detach()[1].double().tolist()
        assert float(ref[1].detach()) == pytest.approx(
            _pl_reference(row, lists[1].tolist(), set(range(300)), tau), abs=1e-9)
    # every allowed item listed: finite value and gradient (no NaN from an empty remainder)
    small = torch.tensor([[1.0, 2.0, float("-inf")]], requires_grad=True)
    val = plackett_luce_log_prob(small, torch.tensor([[1, 0]]))
    val.sum().backward()
    assert torch.isfinite(val).all() and torch.isfinite(small.grad[:, :2]).all()
    assert float(val.detach()) == pytest.approx(2.0 - math.log(math.e + math.e ** 2))


def test_generator_loss_is_reinforce_with_detached_reward():
    logp = torch.tensor([-2.0, -3.0, -1.5], requires_grad=True)
    fake = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    r = torch.nn.functional.logsigmoid(fake.detach())
    ref = (-(r - r.mean()) * logp).mean()
    got = generator_loss(logp, fake)
    torch.testing.assert_close(got, ref)
    got.backward()
    assert fake.grad is None  # the reward carries no gradient to the discriminator
    torch.testing.assert_close(logp.grad, -(r - r.mean()) / 3)
    no_base = generator_loss(logp.detach(), fake.detach(), baseline=False)
    torch.testing.assert_close(no_base, (-r * logp.detach()).mean())


def test_adkd_gradients_split_between_players():
    torch.manual_seed(0)
    loss = ADKD(n_users=5, n_items=8, k=3, dim=4, disc_weight=2.0)
    users = torch.tensor([1, 2, 4])
    teacher = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 1, 2]])
    student = torch.tensor([[5, 6, 7], [1, 2, 3], [3, 4, 5]])
    scores = torch.randn(3, 8, requires_grad=True)
    total = loss(users, teacher, student, scores)
    d = loss.discriminator
    real, fake = d(users, teacher), d(users, student)
    l_d = discriminator_loss(real, fake)
    l_g = generator_loss(plackett_luce_log_prob(scores, student), fake)
    torch.testing.assert_close(total, l_g + 2.0 * l_d)
    params = list(d.parameters())
    g_total = torch.autograd.grad(total, [scores, *params], allow_unused=True)
    g_gen = torch.autograd.grad(l_g, [scores, *params], allow_unused=True)
    g_disc = torch.autograd.grad(l_d, [scores, *params], allow_unused=True)
    # the student's gradient is the generator's alone, the discriminator's is 2 * L_D's alone
    torch.testing.assert_close(g_total[0], g_gen[0])
    assert g_disc[0] is None and all(x is None for x in g_gen[1:])
    for a, b in zip(g_total[1:], g_disc[1:]):
        torch.testing.assert_close(a, 2.0 * b)
