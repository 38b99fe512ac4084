r"""Losses of sequential (next-item) ranking distillation: one row per training sequence prefix.

* ``sampled_kd_loss`` / :class:`SampledKD` (``"sampled_kd"``): Hinton KD over the teacher's
  top-K items of a prefix plus ``S`` items sampled outside it. With teacher logits ``t`` and
  student logits ``s`` on the ``K + S`` listed items of row ``b``,

  .. math::
      L = \frac{\tau^2}{B} \sum_b \mathrm{KL}\big(\mathrm{softmax}(t_b/\tau)\,\|\,
          \mathrm{softmax}(s_b/\tau)\big)

  (a sampled estimate of the full-catalogue softmax KD; ``S = 0``: the top-K list only, i.e.
  :func:`recsys.losses.listwise_kd_loss` on the top-K). Computed with graphkd's ``row_kl`` on
  the list graph (log-softmax: stable for any finite logits).
* ``hidden_state_loss`` / :class:`HiddenStateKD` (``"hidden_state"``): FitNet / DE-style
  distillation of the sequence representation (the hidden state that scores the next item): a
  trainable projector ``P: d_s -> d_t`` and

  .. math::
      L = \frac{1}{B} \sum_b \| P(h^S_b) - h^T_b \|^2

  ``projector="linear"`` (``P(x) = W x + c``) or ``"mlp"`` (DE's expert shape,
  ``d_s -> (d_s + d_t)/2 -> d_t`` with a ReLU). DE's mixture of experts on the same
  representations is :class:`recsys.losses.DistillationExperts`.

Teacher tensors are constants (detached). Reductions over rows (prefixes): ``"mean"``
(default: RecBole's sequential losses are batch means), ``"sum"``, ``"none"``.
"""

from __future__ import annotations

from torch import Tensor, nn

from graphkd._checks import check_nonempty, full_precision
from graphkd.divergences import row_kl
from recsys.losses._base import (
    RankingLoss,
    check_embeddings,
    check_lists,
    list_graph,
    reduce_rows,
    register,
)

__all__ = ["sampled_kd_loss", "hidden_state_loss", "SampledKD", "HiddenStateKD",
           "HIDDEN_PROJECTORS"]

#: projector shapes of :class:`HiddenStateKD`
HIDDEN_PROJECTORS = ("linear", "mlp")


def _cat(a: Tensor, b: Tensor | None) -> Tensor:
    import torch

    return a if b is None or b.shape[1] == 0 else torch.cat([a, b], dim=1)


@full_precision
def sampled_kd_loss(student_topk: Tensor, teacher_topk: Tensor,
                    student_sampled: Tensor | None = None,
                    teacher_sampled: Tensor | None = None, *, tau: float = 1.0,
                    reduction: str = "mean") -> Tensor:
    r"""``tau**2 * KL(softmax(t/tau) || softmax(s/tau))`` per row over top-K + sampled items.

    Args:
        student_topk, teacher_topk: ``[B, K]`` logits of the teacher's top-K items.
        student_sampled, teacher_sampled: ``[B, S]`` logits of ``S`` sampled items (both or
            neither; ``None``: the top-K list alone).
        tau: softmax temperature (> 0).
        reduction: over rows: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        the reduced loss (``[B]`` for ``"none"``).

    Example:
        >>> import torch
        >>> s = torch.zeros(2, 3, requires_grad=True)
        >>> sampled_kd_loss(s, torch.zeros(2, 3))  # equal distributions
        tensor(0., grad_fn=<MeanBackward0>)
    """
    if tau <= 0:
        raise ValueError(f"`tau` must be > 0, got {tau}.")
    check_nonempty("sampled_kd", student_topk, teacher_topk)
    check_lists(student_topk, "student_topk")
    check_lists(teacher_topk, "teacher_topk", rows=student_topk.shape[0])
    if (student_sampled is None) != (teacher_sampled is None):
        raise ValueError("pass both `student_sampled` and `teacher_sampled`, or neither.")
    if student_sampled is not None:
        check_lists(student_sampled, "student_sampled", rows=student_topk.shape[0])
        check_lists(teacher_sampled, "teacher_sampled", rows=student_topk.shape[0])
    s = _cat(student_topk, student_sampled)
    t = _cat(teacher_topk, teacher_sampled)
    if s.shape != t.shape:
        raise ValueError(f"student lists {tuple(s.shape)} and teacher lists {tuple(t.shape)} "
                         "must match.")
    b, n = s.shape
    per_row = row_kl(s.reshape(-1), t.detach().reshape(-1), list_graph(b, n, s.device),
                     tau=tau, reduction="none")
    return reduce_rows(per_row * tau**2, reduction)


@full_precision
def hidden_state_loss(s_projected: Tensor, t: Tensor, *, reduction: str = "mean") -> Tensor:
    r""":math:`\|s'_b - t_b\|^2` per row (projected student vs teacher hidden state), reduced.

    Args:
        s_projected: ``[B, d_t]`` student representations already projected to the teacher's
            width.
        t: ``[B, d_t]`` teacher representations (constants).
        reduction: over rows: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> hidden_state_loss(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(3.)
    """
    check_embeddings(s_projected, t, "hidden_state", ("s_projected", "t"))
    if s_projected.shape != t.shape:
        raise ValueError(f"projected student width {s_projected.shape[1]} != teacher width "
                         f"{t.shape[1]}: project the student first (HiddenStateKD).")
    return reduce_rows(((s_projected - t.detach()) ** 2).sum(-1), reduction)


@register("sampled_kd")
class SampledKD(RankingLoss):
    """Softmax KD over the teacher's top-``k`` plus ``num_samples`` sampled items per row.

    ``forward(student_topk [B,K], teacher_topk [B,K], student_sampled [B,S] | None,
    teacher_sampled [B,S] | None)``; ``k`` and ``num_samples`` are read by the trainer.

    Example:
        >>> import torch
        >>> SampledKD(k=3, num_samples=0)(torch.zeros(2, 3), torch.zeros(2, 3))
        tensor(0.)
    """

    inputs = ("student_topk [B,K], teacher_topk [B,K] (teacher's top-K), student_sampled "
              "[B,S], teacher_sampled [B,S] (sampled items)")

    def __init__(self, k: int = 50, num_samples: int = 100, tau: float = 1.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        if k < 1 or num_samples < 0 or tau <= 0:
            raise ValueError(f"need k >= 1, num_samples >= 0 and tau > 0, got k={k}, "
                             f"num_samples={num_samples}, tau={tau}.")
        self.k, self.num_samples, self.tau, self.reduction = k, num_samples, tau, reduction

    def forward(self, student_topk: Tensor, teacher_topk: Tensor,
                student_sampled: Tensor | None = None,
                teacher_sampled: Tensor | None = None) -> Tensor:
        return sampled_kd_loss(student_topk, teacher_topk, student_sampled, teacher_sampled,
                               tau=self.tau, reduction=self.reduction)


@register("hidden_state")
class HiddenStateKD(RankingLoss):
    """Projector ``d_s -> d_t`` + squared error to the teacher's sequence representation.

    ``forward(s [B,d_s], t [B,d_t])``; the projector is trainable (optimise it with the
    student).

    Example:
        >>> import torch
        >>> loss = HiddenStateKD(student_dim=16, teacher_dim=64)
        >>> loss(torch.randn(4, 16), torch.randn(4, 64)).shape
        torch.Size([])
    """

    inputs = "s [B,d_s] (student hidden state), t [B,d_t] (teacher hidden state)"
    needs_dims = True

    def __init__(self, student_dim: int, teacher_dim: int, projector: str = "linear",
                 reduction: str = "mean") -> None:
        super().__init__()
        if projector not in HIDDEN_PROJECTORS:
            raise ValueError(f"unknown projector {projector!r}; valid: {HIDDEN_PROJECTORS}.")
        if projector == "linear":
            self.projector: nn.Module = nn.Linear(student_dim, teacher_dim)
        else:
            h = (student_dim + teacher_dim) // 2
            self.projector = nn.Sequential(nn.Linear(student_dim, h), nn.ReLU(),
                                           nn.Linear(h, teacher_dim))
        self.reduction = reduction

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        check_embeddings(s, t, "hidden_state", ("s", "t"))
        return hidden_state_loss(self.projector(s), t, reduction=self.reduction)
