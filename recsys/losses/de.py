r"""DE: distillation experts (Kang et al., CIKM 2020; SeongKu-Kang/DE-RRD_CIKM20 Models/DE.py).

``E=30`` experts per side map the student embedding to the teacher space,
:math:`f_k: d_s \to (d_t + d_s)/2 \to d_t` (Linear-ReLU-Linear). A selection network on the
teacher embedding, :math:`p_b = \mathrm{softmax}(W t_b)`, picks one expert per entity through a
Gumbel-softmax whose temperature is annealed from 1 to 1e-10 over training
(:func:`anneal_temperature`):

.. math::
    \alpha_b = \mathrm{softmax}\big((\log p_b + g_b)/\tau\big),\quad
    L_{DE} = \sum_b \Big\| t_b - \sum_k \alpha_{bk} f_k(s_b) \Big\|^2

Total: ``L_base + lambda_DE * (L_users + (L_pos + L_neg) / 2)``, ``lambda_DE = 0.01``, each term
over the *unique* entities of the batch. Differences to the reference: ``log p`` is
``log_softmax(W t)`` (the reference's ``log(softmax + 1e-10)`` differs only for
``p < 1e-8``); all experts run as two batched matmuls instead of a Python loop over experts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from graphkd._checks import full_precision
from recsys.losses._base import RankingLoss, check_embeddings, reduce_rows, register

__all__ = [
    "anneal_temperature",
    "gumbel_noise",
    "gumbel_selection",
    "experts_forward",
    "de_loss",
    "DistillationExperts",
    "ExpertPair",
    "DE",
]


def anneal_temperature(epoch: int, num_epochs: int, t_start: float = 1.0,
                       t_end: float = 1e-10) -> float:
    r""":math:`\tau_e = \max(\tau_0 (\tau_{end}/\tau_0)^{e/E}, \tau_{end})` (exponential decay).

    Example:
        >>> anneal_temperature(0, 10), anneal_temperature(10, 10)
        (1.0, 1e-10)
    """
    if num_epochs < 1 or t_start <= 0 or t_end <= 0:
        raise ValueError("need num_epochs >= 1 and positive temperatures.")
    return max(t_start * (t_end / t_start) ** (epoch / num_epochs), t_end)


def gumbel_noise(shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gumbel noise ``-log(-log(u))``, ``u ~ U(0, 1)`` clamped away from 0 and 1.

    Drawn on the generator's device (CPU by default) and moved to ``device``.
    """
    gen_dev = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_dev, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    u = u.clamp(tiny, 1.0 - torch.finfo(dtype).eps)
    return (-torch.log(-torch.log(u))).to(device)


def gumbel_selection(selection_logits: Tensor, tau: float, *, gumbel: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    r"""``[B, E]`` soft one-hot :math:`\mathrm{softmax}((\log\mathrm{softmax}(z) + g)/\tau)`.

    Args:
        selection_logits: ``[B, E]`` selection logits ``W t``.
        tau: Gumbel-softmax temperature (any ``tau > 0``; ``1e-10`` gives a one-hot).
        gumbel: optional ``[B, E]`` noise (drawn with ``generator`` when omitted).
    """
    if tau <= 0:
        raise ValueError(f"`tau` must be > 0, got {tau}.")
    logp = torch.log_softmax(selection_logits, dim=-1)
    if gumbel is None:
        gumbel = gumbel_noise(tuple(logp.shape), generator=generator, device=logp.device,
                              dtype=logp.dtype)
    return torch.softmax((logp + gumbel) / tau, dim=-1)


def experts_forward(s: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """All experts at once: ``[B, d_s] -> [B, E, d_t]``, ``f_k(s) = relu(s W1_k + b1_k) W2_k +
    b2_k`` with ``w1 [E, d_s, h]``, ``b1 [E, h]``, ``w2 [E, h, d_t]``, ``b2 [E, d_t]``."""
    h = torch.relu(torch.einsum("bd,edh->beh", s, w1) + b1)
    return torch.einsum("beh,eho->beo", h, w2) + b2


@full_precision
def de_loss(s: Tensor, t: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
            selection_logits: Tensor, tau: float, *, gumbel: Tensor | None = None,
            generator: torch.Generator | None = None, reduction: str = "sum") -> Tensor:
    r"""DE loss :math:`\sum_b \|t_b - \sum_k \alpha_{bk} f_k(s_b)\|^2` (see module docstring).

    Args:
        s: ``[B, d_s]`` student embeddings.
        t: ``[B, d_t]`` teacher embeddings (constants).
        w1, b1, w2, b2: stacked expert parameters (see :func:`experts_forward`).
        selection_logits: ``[B, E]``, the selection network's output ``W t``.
        tau: Gumbel-softmax temperature.
        gumbel: optional ``[B, E]`` Gumbel noise (for reproducibility/tests).
        reduction: over entities: ``"sum"`` (reference), ``"mean"``, ``"none"``.
    """
    check_embeddings(s, t, "de")
    if w2.shape[-1] != t.shape[1]:
        raise ValueError(f"experts output width {w2.shape[-1]} but teacher width {t.shape[1]}.")
    alpha = gumbel_selection(selection_logits, tau, gumbel=gumbel, generator=generator)
    pred = torch.einsum("be,beo->bo", alpha, experts_forward(s, w1, b1, w2, b2))
    return reduce_rows(((t.detach() - pred) ** 2).sum(-1), reduction)


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class DistillationExperts(nn.Module):
    """``num_experts`` experts + a selection network for one entity type (users or items).

    Parameters are stacked (``w1 [E, d_s, h]`` ...) and initialised like ``nn.Linear``.

    Example:
        >>> de = DistillationExperts(student_dim=20, teacher_dim=200, num_experts=4)
        >>> de(torch.randn(8, 20), torch.randn(8, 200)).shape
        torch.Size([])
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_experts: int = 30,
                 hidden_dim: int | None = None, t_start: float = 1.0,
                 t_end: float = 1e-10) -> None:
        super().__init__()
        h = hidden_dim or (teacher_dim + student_dim) // 2
        e = num_experts
        self.w1 = _uniform((e, student_dim, h), student_dim)
        self.b1 = _uniform((e, h), student_dim)
        self.w2 = _uniform((e, h, teacher_dim), h)
        self.b2 = _uniform((e, teacher_dim), h)
        self.selection = nn.Linear(teacher_dim, num_experts)
        self.t_start, self.t_end = t_start, t_end
        self.tau = t_start

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Anneal the Gumbel temperature (:func:`anneal_temperature`)."""
        self.tau = anneal_temperature(epoch, num_epochs, self.t_start, self.t_end)

    def assign(self, t: Tensor) -> Tensor:
        """``[B]`` hard expert (group) of each entity: ``argmax softmax(W t)`` (HTD groups)."""
        with torch.no_grad():
            return self.selection(t).argmax(-1)

    def forward(self, s: Tensor, t: Tensor, *, generator: torch.Generator | None = None,
                reduction: str = "sum") -> Tensor:
        return de_loss(s, t, self.w1, self.b1, self.w2, self.b2, self.selection(t.detach()),
                       self.tau, generator=generator, reduction=reduction)


class ExpertPair(RankingLoss):
    """Base of the losses with DE's user experts and item experts (:class:`DE`,
    :class:`~recsys.losses.topology.HTD`): builds both sides (``users`` then ``items``, each a
    :class:`DistillationExperts`), anneals their temperatures together, and sums their DE terms
    (:meth:`assignment_loss`). Not registered: a base, no method of its own.
    """

    needs_dims = True

    def __init__(self, student_dim: int, teacher_dim: int, num_experts: int = 30,
                 t_start: float = 1.0, t_end: float = 1e-10, reduction: str = "sum") -> None:
        super().__init__()
        self.users = DistillationExperts(student_dim, teacher_dim, num_experts,
                                         t_start=t_start, t_end=t_end)
        self.items = DistillationExperts(student_dim, teacher_dim, num_experts,
                                         t_start=t_start, t_end=t_end)
        self.reduction = reduction

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        self.users.set_epoch(epoch, num_epochs)
        self.items.set_epoch(epoch, num_epochs)

    def assignment_loss(self, s_users: Tensor, t_users: Tensor, s_items: Tensor,
                        t_items: Tensor) -> Tensor:
        """``L_users + L_items``: each side's DE loss, reduced by ``self.reduction``."""
        r = self.reduction
        return self.users(s_users, t_users, reduction=r) + self.items(s_items, t_items,
                                                                      reduction=r)


@register("de")
class DE(ExpertPair):
    """DE for a user-item recommender: user experts and item experts.

    ``forward(s_users, t_users, s_items_pos, t_items_pos, s_items_neg, t_items_neg)`` returns
    ``L_users + (L_pos + L_neg) / 2`` (pass the unique entities of the batch).
    """

    inputs = ("s_users [Bu,d_s], t_users [Bu,d_t], s_pos [Bp,d_s], t_pos [Bp,d_t], "
              "s_neg [Bn,d_s], t_neg [Bn,d_t] (unique entities)")

    def forward(self, s_users: Tensor, t_users: Tensor, s_pos: Tensor, t_pos: Tensor,
                s_neg: Tensor, t_neg: Tensor) -> Tensor:
        r = self.reduction
        return self.users(s_users, t_users, reduction=r) + 0.5 * (
            self.items(s_pos, t_pos, reduction=r) + self.items(s_neg, t_neg, reduction=r))
