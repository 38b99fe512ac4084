r"""DE: distillation experts (Kang et al., CIKM 2020; SeongKu-Kang/DE-RRD_CIKM20 Models/DE.py).

``E=30`` experts per side map the student embedding to the teacher space,
:math:`f_k: d_s \to (d_t + d_s)/2 \to d_t` (Linear-ReLU-Linear). A selection network on the
teacher embedding, :math:`p_b = \mathrm{softmax}(W t_b)`, picks one expert per entity through a
Gumbel-softmax whose temperature is annealed from 1 to 1e-10 (:func:`anneal_temperature`):

.. math::
    \alpha_b = \mathrm{softmax}\big((\log p_b + g_b)/\tau\big),\quad
    L_{DE} = \sum_b \Big\| t_b - \sum_k \alpha_{bk} f_k(s_b) \Big\|^2

Total: ``L_base + lambda_DE * (L_users + (L_pos + L_neg) / 2)``, ``lambda_DE = 0.01``, each term
a sum over the *unique* entities of the batch (the reference's; next to a batch-mean base loss
use ``reduction="per_interaction"``, see :func:`recsys.losses._base.reduce_rows`). The
temperature follows the reference's fixed horizon (``anneal_epochs``: DE-RRD's
``max_epoch=1000`` for DE, 100 for HTD), whatever the number of epochs actually run.

Differences to the reference: ``log p`` is ``log_softmax(W t)`` (the reference's
``log(softmax + 1e-10)`` differs only for ``p < 1e-8``). Cost (:func:`experts_mixture`): while
the selection weights are dense, all experts run as two large matmuls (the weighted second
layers are one ``[B, E*h] x [E*h, d_t]`` product); once few of them are nonzero -- in particular
when the annealed selection is exactly one-hot, as it is in floating point once ``tau`` is
small enough -- only the selected (entity, expert) pairs are evaluated, grouped by expert. Both
paths compute the same function with the same gradients (exact zeros where a weight is exactly
0, including the selection network's gradient through a one-hot selection), up to
floating-point summation order.
"""

from __future__ import annotations

import itertools
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
    "experts_mixture",
    "EXPERT_PATHS",
    "SPARSE_MAX_FRACTION",
    "de_loss",
    "DistillationExperts",
    "ExpertPair",
    "DE",
]

#: how :func:`experts_mixture` evaluates the experts: ``"auto"`` (the selected pairs only when
#: at most :data:`SPARSE_MAX_FRACTION` of the weights are nonzero), ``"dense"``, ``"sparse"``
EXPERT_PATHS = ("auto", "dense", "sparse")
#: ``"auto"`` evaluates only the (entity, expert) pairs with a nonzero weight up to this fraction
#: of nonzero weights (CPU, one thread, B=256, d_s=20, d_t=200, E=30, forward + backward of
#: :func:`de_loss`: the grouped path costs about as much as the dense one at ~60% nonzero,
#: 1/6 of it when one-hot)
SPARSE_MAX_FRACTION = 0.5


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


def experts_mixture(s: Tensor, alpha: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                    *, path: str = "auto") -> Tensor:
    r"""``[B, d_t]`` mixture :math:`\sum_k \alpha_{bk} f_k(s_b)` (experts as in
    :func:`experts_forward`, ``alpha [B, E]``).

    ``path="dense"`` runs every expert on every entity: the first layers as one
    ``[B, d_s] x [d_s, E*h]`` product, the weighted second layers as one
    ``[B, E*h] x [E*h, d_t]`` product (no ``[B, E, d_t]`` intermediate). ``path="sparse"``
    evaluates only the pairs with :math:`\alpha_{bk} \ne 0`, grouped by expert (one small
    matmul per layer and used expert, :class:`_GroupedExperts`): when the selection is exactly
    one-hot that is one expert per entity and the result is exactly that expert's output. The
    weight (1.0 then) is still multiplied in, so the gradient reaches ``alpha`` as in the dense
    path; through a one-hot softmax it is exactly 0 in both. ``"auto"`` counts the nonzero
    weights (one host sync) and takes the sparse path when they are at most
    :data:`SPARSE_MAX_FRACTION` of ``B * E``.

    Both paths give the same values and gradients up to floating-point summation order: a zero
    weight contributes exact zeros to the dense path's values and gradients, and experts no
    entity uses get exactly zero gradients in both.
    """
    if path not in EXPERT_PATHS:
        raise ValueError(f"unknown expert path {path!r}; valid: {EXPERT_PATHS}.")
    if path != "dense":
        counts = (alpha.detach() != 0).sum(0).tolist()  # pairs per expert: the one host sync
        total = sum(counts)
        if path == "sparse" or total <= SPARSE_MAX_FRACTION * alpha.numel():
            return _sparse_mixture(s, alpha, w1, b1, w2, b2, counts, total)
    return _dense_mixture(s, alpha, w1, b1, w2, b2)


def _dense_mixture(s: Tensor, alpha: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                   b2: Tensor) -> Tensor:
    """Every expert on every entity; the weighted second layers as one matmul."""
    e, d_s, h = w1.shape
    b = s.shape[0]
    hidden = torch.relu(s @ w1.permute(1, 0, 2).reshape(d_s, e * h) + b1.reshape(1, e * h))
    mixed = (hidden.view(b, e, h) * alpha.unsqueeze(-1)).reshape(b, e * h)
    return mixed @ w2.reshape(e * h, -1) + alpha @ b2


def _sparse_mixture(s: Tensor, alpha: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                    counts: list[int], total: int) -> Tensor:
    """Only the ``total`` pairs with a nonzero weight (``counts[k]`` of them for expert ``k``)."""
    b, e = alpha.shape
    zero = (alpha.detach() == 0).T.reshape(-1).to(torch.uint8)  # expert-major order
    # flat indices of the nonzero pairs, grouped by expert, without another host sync (no
    # nonzero()) and deterministically (a stable sort puts them first, in order)
    flat = torch.sort(zero, stable=True).indices[:total]
    expert, entity = flat // b, flat % b
    out = _GroupedExperts.apply(s.index_select(0, entity), w1, b1, w2, b2, tuple(counts),
                                expert)
    weighted = alpha.reshape(-1).index_select(0, entity * e + expert).unsqueeze(1) * out
    return weighted.new_zeros(b, out.shape[1]).index_add(0, entity, weighted)


class _GroupedExperts(torch.autograd.Function):
    """``out[p] = f_{k(p)}(x[p])`` for rows grouped by expert (``counts[k]`` consecutive rows
    for expert ``k``; ``row_expert [P]`` the expert of each row): one ``addmm`` / ``mm`` per
    layer and used expert, bias gradients by one ``index_add`` each, a hand-written backward (no
    autograd graph per expert; unused experts get exactly zero gradients)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, counts, row_expert):  # noqa: D102
        spans = [(k, slice(start - c, start)) for k, c, start in
                 zip(range(len(counts)), counts, itertools.accumulate(counts)) if c]
        hidden = x.new_empty(x.shape[0], w1.shape[-1])
        for k, rows in spans:
            torch.addmm(b1[k], x[rows], w1[k], out=hidden[rows])
        hidden.relu_()
        out = x.new_empty(x.shape[0], w2.shape[-1])
        for k, rows in spans:
            torch.addmm(b2[k], hidden[rows], w2[k], out=out[rows])
        ctx.save_for_backward(x, w1, w2, hidden, row_expert)
        ctx.spans = spans
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, w1, w2, hidden, row_expert = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        gw1, gw2 = torch.zeros_like(w1), torch.zeros_like(w2)
        gb2 = w2.new_zeros(w2.shape[0], w2.shape[2]).index_add_(0, row_expert, grad)
        gh = torch.empty_like(hidden)
        for k, rows in ctx.spans:
            torch.mm(hidden[rows].T, grad[rows], out=gw2[k])
            torch.mm(grad[rows], w2[k].T, out=gh[rows])
        gh.masked_fill_(hidden <= 0, 0.0)  # relu's backward
        gb1 = w1.new_zeros(w1.shape[0], w1.shape[2]).index_add_(0, row_expert, gh)
        gx = torch.empty_like(x) if need[0] else None
        for k, rows in ctx.spans:
            torch.mm(x[rows].T, gh[rows], out=gw1[k])
            if gx is not None:
                torch.mm(gh[rows], w1[k].T, out=gx[rows])
        return (gx, gw1 if need[1] else None, gb1 if need[2] else None,
                gw2 if need[3] else None, gb2 if need[4] else None, None, None)


@full_precision
def de_loss(s: Tensor, t: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
            selection_logits: Tensor, tau: float, *, gumbel: Tensor | None = None,
            generator: torch.Generator | None = None, reduction: str = "sum",
            num_interactions: float | Tensor | None = None, path: str = "auto") -> Tensor:
    r"""DE loss :math:`\sum_b \|t_b - \sum_k \alpha_{bk} f_k(s_b)\|^2` (see module docstring).

    Args:
        s: ``[B, d_s]`` student embeddings.
        t: ``[B, d_t]`` teacher embeddings (constants).
        w1, b1, w2, b2: stacked expert parameters (see :func:`experts_forward`).
        selection_logits: ``[B, E]``, the selection network's output ``W t``.
        tau: Gumbel-softmax temperature.
        gumbel: optional ``[B, E]`` Gumbel noise (for reproducibility/tests).
        reduction: over entities: ``"sum"`` (reference), ``"per_interaction"`` (the sum divided
            by ``num_interactions``), ``"mean"``, ``"none"``.
        num_interactions: the training batch's interaction count (``"per_interaction"``).
        path: how the experts are evaluated (:func:`experts_mixture`); every path gives the
            same loss and gradients up to floating-point summation order.
    """
    check_embeddings(s, t, "de")
    if w2.shape[-1] != t.shape[1]:
        raise ValueError(f"experts output width {w2.shape[-1]} but teacher width {t.shape[1]}.")
    alpha = gumbel_selection(selection_logits, tau, gumbel=gumbel, generator=generator)
    pred = experts_mixture(s, alpha, w1, b1, w2, b2, path=path)
    return reduce_rows(((t.detach() - pred) ** 2).sum(-1), reduction,
                       num_interactions=num_interactions)


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _check_path(expert_path: str) -> None:
    if expert_path not in EXPERT_PATHS:
        raise ValueError(f"unknown expert path {expert_path!r}; valid: {EXPERT_PATHS}.")


class DistillationExperts(nn.Module):
    """``num_experts`` experts + a selection network for one entity type (users or items).

    Parameters are stacked (``w1 [E, d_s, h]`` ...) and initialised like ``nn.Linear``.
    ``expert_path`` chooses how the experts are evaluated (:func:`experts_mixture`).

    Example:
        >>> de = DistillationExperts(student_dim=20, teacher_dim=200, num_experts=4)
        >>> de(torch.randn(8, 20), torch.randn(8, 200)).shape
        torch.Size([])
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_experts: int = 30,
                 hidden_dim: int | None = None, t_start: float = 1.0,
                 t_end: float = 1e-10, expert_path: str = "auto") -> None:
        super().__init__()
        _check_path(expert_path)
        h = hidden_dim or (teacher_dim + student_dim) // 2
        e = num_experts
        self.w1 = _uniform((e, student_dim, h), student_dim)
        self.b1 = _uniform((e, h), student_dim)
        self.w2 = _uniform((e, h, teacher_dim), h)
        self.b2 = _uniform((e, teacher_dim), h)
        self.selection = nn.Linear(teacher_dim, num_experts)
        self.t_start, self.t_end = t_start, t_end
        self.tau = t_start
        self.expert_path = expert_path

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Anneal the Gumbel temperature over ``num_epochs`` epochs (:func:`anneal_temperature`;
        :class:`ExpertPair` passes its ``anneal_epochs`` horizon here)."""
        self.tau = anneal_temperature(epoch, num_epochs, self.t_start, self.t_end)

    def assign(self, t: Tensor) -> Tensor:
        """``[B]`` hard expert (group) of each entity: ``argmax softmax(W t)`` (HTD groups)."""
        with torch.no_grad():
            return self.selection(t).argmax(-1)

    def forward(self, s: Tensor, t: Tensor, *, generator: torch.Generator | None = None,
                reduction: str = "sum", num_interactions: float | Tensor | None = None,
                sampled_from: int | None = None) -> Tensor:
        """The DE loss of these entities (:func:`de_loss`).

        ``sampled_from``: the rows are a uniform subsample (without replacement) of that many
        entities (the adapters' ``max_entities``); a ``"sum"`` / ``"per_interaction"`` loss is
        then scaled by ``sampled_from / rows``, an unbiased estimate of the sum over all of them
        (``None`` or the row count: no scaling).
        """
        loss = de_loss(s, t, self.w1, self.b1, self.w2, self.b2, self.selection(t.detach()),
                       self.tau, generator=generator, reduction=reduction,
                       num_interactions=num_interactions, path=self.expert_path)
        rows = s.shape[0]
        if sampled_from is not None and sampled_from != rows and reduction in (
                "sum", "per_interaction"):
            loss = loss * (sampled_from / rows)
        return loss


class ExpertPair(RankingLoss):
    """Base of the losses with DE's user experts and item experts (:class:`DE`,
    :class:`~recsys.losses.topology.HTD`): builds both sides (``users`` then ``items``, each a
    :class:`DistillationExperts`), anneals their temperatures together, and sums their DE terms
    (:meth:`assignment_loss`). Not registered: a base, no method of its own.

    ``anneal_epochs``: the temperature goes from ``t_start`` to ``t_end`` over this many epochs
    whatever the run's length, as in the references (a fixed ``max_epoch``: 1000 in DE-RRD,
    HTD overrides it with 100); ``None`` anneals over the ``num_epochs`` passed to
    :meth:`set_epoch` (the configured epoch count).
    """

    needs_dims = True

    def __init__(self, student_dim: int, teacher_dim: int, num_experts: int = 30,
                 t_start: float = 1.0, t_end: float = 1e-10, reduction: str = "sum",
                 anneal_epochs: int | None = 1000, expert_path: str = "auto") -> None:
        super().__init__()
        if anneal_epochs is not None and anneal_epochs < 1:
            raise ValueError(f"`anneal_epochs` must be >= 1 or None, got {anneal_epochs}.")
        self.users = DistillationExperts(student_dim, teacher_dim, num_experts,
                                         t_start=t_start, t_end=t_end, expert_path=expert_path)
        self.items = DistillationExperts(student_dim, teacher_dim, num_experts,
                                         t_start=t_start, t_end=t_end, expert_path=expert_path)
        self.reduction = reduction
        self.anneal_epochs = anneal_epochs

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Anneal both sides' temperatures: epoch ``epoch`` of ``anneal_epochs`` (of
        ``num_epochs`` when ``anneal_epochs`` is None)."""
        horizon = num_epochs if self.anneal_epochs is None else self.anneal_epochs
        self.users.set_epoch(epoch, horizon)
        self.items.set_epoch(epoch, horizon)

    def assignment_loss(self, s_users: Tensor, t_users: Tensor, s_items: Tensor,
                        t_items: Tensor, *, num_interactions: float | Tensor | None = None,
                        sampled_from: tuple[int | None, int | None] | None = None) -> Tensor:
        """``L_users + L_items``: each side's DE loss, reduced by ``self.reduction``
        (``num_interactions`` for ``"per_interaction"``; ``sampled_from``: each side's entity
        count before a uniform subsampling, see :meth:`DistillationExperts.forward`)."""
        nu, ni = sampled_from or (None, None)
        kw = {"reduction": self.reduction, "num_interactions": num_interactions}
        return (self.users(s_users, t_users, sampled_from=nu, **kw)
                + self.items(s_items, t_items, sampled_from=ni, **kw))


@register("de")
class DE(ExpertPair):
    """DE for a user-item recommender: user experts and item experts.

    ``forward(s_users, t_users, s_items_pos, t_items_pos, s_items_neg, t_items_neg, *,
    num_interactions=None, sampled_from=None)`` returns ``L_users + (L_pos + L_neg) / 2`` (pass
    the unique entities of the batch; ``num_interactions`` for ``reduction="per_interaction"``;
    ``sampled_from``: the three entity counts before a uniform subsampling, see
    :meth:`DistillationExperts.forward`). The temperature anneals over ``anneal_epochs=1000``
    epochs (DE-RRD's ``max_epoch``).
    """

    inputs = ("s_users [Bu,d_s], t_users [Bu,d_t], s_pos [Bp,d_s], t_pos [Bp,d_t], "
              "s_neg [Bn,d_s], t_neg [Bn,d_t] (unique entities)")

    def forward(self, s_users: Tensor, t_users: Tensor, s_pos: Tensor, t_pos: Tensor,
                s_neg: Tensor, t_neg: Tensor, *, num_interactions: float | Tensor | None = None,
                sampled_from: tuple[int | None, int | None, int | None] | None = None
                ) -> Tensor:
        nu, npos, nneg = sampled_from or (None, None, None)
        kw = {"reduction": self.reduction, "num_interactions": num_interactions}
        return self.users(s_users, t_users, sampled_from=nu, **kw) + 0.5 * (
            self.items(s_pos, t_pos, sampled_from=npos, **kw)
            + self.items(s_neg, t_neg, sampled_from=nneg, **kw))
