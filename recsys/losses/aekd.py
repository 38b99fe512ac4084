r"""Pan et al. 2019 (ECAE, Neurocomputing 332): the teacher's reconstruction of a user's whole
item row is the soft target of the student's reconstruction.

Two forms, matching the two likelihoods of RecBole's autoencoders:

* ``form="softmax"`` (multinomial autoencoders: MultiDAE, MultiVAE, RecVAE), Hinton's KD over
  the whole catalogue,

  .. math:: L_u = T^2 \sum_i p^T_{ui} (\log p^T_{ui} - \log p^S_{ui}),\quad
            p_{u\cdot} = \mathrm{softmax}(z_{u\cdot} / T),

  i.e. :func:`~recsys.losses.baselines.listwise_kd_loss` on a list that holds every item (a
  dense ``[U, I]`` row per user through the same sparse ``row_kl`` core);
* ``form="bce"`` (Bernoulli autoencoders: CDAE), the student's per-item sigmoid fitted to the
  teacher's,

  .. math:: L_u = T^2 \sum_i \mathrm{BCE}(\sigma(z^S_{ui}/T),\ \sigma(z^T_{ui}/T)).

``z`` are pre-activation reconstructions (logits); the teacher's are constants. Memory is
``U x I`` per call: the adapter (:mod:`recsys.recbole.autoencoder`) scores the batch's users
only, and chunks the teacher side over users.

What the paper leaves open (the text we could read fixes neither the divergence nor ``T``): we
use the multinomial KL for multinomial autoencoders (their own training likelihood) and the
Bernoulli cross-entropy for sigmoid ones, both with Hinton's ``T**2`` factor; ``T=1`` by
default. See the README's method table for what was adapted.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_nonempty, full_precision
from recsys.losses._base import ROW_REDUCTIONS, RankingLoss, check_lists, reduce_rows, register
from recsys.losses.baselines import listwise_kd_loss

__all__ = ["AEKD_FORMS", "aekd_loss", "AEKD"]

#: the soft-target divergences (see the module docstring)
AEKD_FORMS = ("softmax", "bce")


@full_precision
def aekd_loss(student_logits: Tensor, teacher_logits: Tensor, *, form: str = "softmax",
              temperature: float = 1.0, reduction: str = "mean",
              num_interactions: float | None = None) -> Tensor:
    """Soft-target loss between two reconstructions of the same users' item rows.

    Args:
        student_logits: ``[U, I]`` the student's reconstruction logits (with gradients).
        teacher_logits: ``[U, I]`` the teacher's (treated as constants).
        form: ``"softmax"`` (multinomial KL) or ``"bce"`` (per-item Bernoulli cross-entropy).
        temperature: ``T > 0``; the loss is multiplied by ``T**2``.
        reduction: over users (``"mean"``, ``"sum"``, ``"none"``, ``"per_interaction"``).

    Returns:
        A scalar (or ``[U]`` for ``reduction="none"``).

    Example:
        >>> import torch
        >>> z = torch.randn(3, 5)
        >>> float(aekd_loss(z, z)) < 1e-6
        True
    """
    check_nonempty("aekd", student_logits, teacher_logits)
    check_lists(student_logits, "student_logits")
    check_lists(teacher_logits, "teacher_logits", rows=student_logits.shape[0])
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"`student_logits` {tuple(student_logits.shape)} and `teacher_logits` "
                         f"{tuple(teacher_logits.shape)} must match.")
    if form not in AEKD_FORMS:
        raise ValueError(f"form must be one of {AEKD_FORMS}, got {form!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    if form == "softmax":
        per_row = listwise_kd_loss(student_logits, teacher_logits, tau=t, reduction="none")
    else:
        target = (teacher_logits.detach() / t).sigmoid()
        per_row = F.binary_cross_entropy_with_logits(
            student_logits / t, target, reduction="none").sum(1) * t**2
    return reduce_rows(per_row, reduction, num_interactions=num_interactions)


@register("aekd")
class AEKD(RankingLoss):
    """``forward(student_logits [U, I], teacher_logits [U, I])``: :func:`aekd_loss`.

    Args:
        form: ``"softmax"`` (default) or ``"bce"``.
        temperature: softmax / sigmoid temperature ``T``.
        reduction: over users (default ``"mean"``).
    """

    inputs: ClassVar[str] = "student and teacher reconstructions of the batch users' rows"

    def __init__(self, form: str = "softmax", temperature: float = 1.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        if form not in AEKD_FORMS:
            raise ValueError(f"form must be one of {AEKD_FORMS}, got {form!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if reduction not in ROW_REDUCTIONS:
            raise ValueError(f"reduction must be one of {ROW_REDUCTIONS}, got {reduction!r}")
        self.form, self.temperature, self.reduction = form, float(temperature), reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, *,
                num_interactions: float | None = None) -> Tensor:
        return aekd_loss(student_logits, teacher_logits, form=self.form,
                         temperature=self.temperature, reduction=self.reduction,
                         num_interactions=num_interactions)
