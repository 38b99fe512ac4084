r"""Distillation losses for click-through-rate (CTR) models: binary soft labels and logit hints.

A CTR model outputs one logit :math:`z` per sample (the click probability is
:math:`\sigma(z)`). The CTR distillation papers of the survey's Table 7 use two terms:

* :func:`soft_label_bce` -- binary cross-entropy of the student against the teacher's
  probability (soft label), with an optional temperature :math:`T`:

  .. math::
     L = T^2 \cdot \mathrm{mean}_b\big[-p_b \log\sigma(s_b/T) - (1-p_b)\log\sigma(-s_b/T)\big],
     \qquad p_b = \sigma(t_b / T)

  (Xu et al. NeurIPS 2020, PFD: :math:`T = 1`; Zhu et al. CIKM 2020: the ensemble's soft
  label). Computed with ``logsigmoid`` (finite and exact for :math:`|s| \sim 100` and beyond).
  The :math:`T^2` factor keeps the gradient scale of Hinton et al.; :math:`T = 1` is the plain
  BCE against a soft label. Its minimum over :math:`s` is at :math:`s = t`.
* :func:`logit_hint` -- squared distance of the logits with the teacher side detached
  ("gradient block", Zhou et al. AAAI 2018, Rocket Launching):

  .. math:: L = \mathrm{mean}_b (s_b - \mathrm{sg}(t_b))^2

  where :math:`\mathrm{sg}` stops the gradient: the booster (teacher) receives none from it.

The teacher input is always treated as a constant (detached). Both are pure functions plus a
thin module registered by name in :data:`CTR_LOSSES` (:func:`get_ctr_loss`); modules go through
the same call boundary as the ranking losses (empty batch -> ``ValueError``, float16 computed in
float32, non-finite output -> ``FloatingPointError``).

Example:
    >>> import torch
    >>> s, t = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 2.0])
    >>> round(float(logit_hint(s, t)), 4)
    0.0
    >>> loss = get_ctr_loss("soft_bce", temperature=2.0)
    >>> bool(loss(s, t) > 0)
    True
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_finite, check_nonempty, full_precision
from graphkd.registry import Registry
from recsys.losses._base import RankingLoss, resolve

__all__ = ["CTR_LOSSES", "CTR_REDUCTIONS", "CTRLoss", "SoftLabelBCE", "LogitHint",
           "soft_label_bce", "logit_hint", "get_ctr_loss", "ctr_loss_names", "check_logits"]

#: name -> CTR distillation loss class (separate from the ranking losses: other inputs).
CTR_LOSSES: Registry[type[CTRLoss]] = Registry("CTR distillation loss")
ctr_loss_names = CTR_LOSSES.names

#: reductions over the batch accepted by the CTR losses.
CTR_REDUCTIONS = ("mean", "sum", "none")


def check_logits(student: Tensor, teacher: Tensor, method: str) -> None:
    """Both inputs must be finite floating ``[B]`` (or ``[B, 1]``) logits of the same shape.

    Raises:
        TypeError: not a floating tensor.
        ValueError: an empty batch, another shape, or a NaN/inf value (named).
    """
    check_nonempty(method, student, teacher)
    for x, name in ((student, "student_logits"), (teacher, "teacher_logits")):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{method}: `{name}` must be a floating torch.Tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}.")
        if x.dim() > 2 or (x.dim() == 2 and x.shape[1] != 1):
            raise ValueError(f"{method}: `{name}` must hold one logit per sample ([B] or "
                             f"[B, 1]), got shape {tuple(x.shape)}.")
        check_finite(x, f"{method}: {name}")
    if student.shape != teacher.shape:
        raise ValueError(f"{method}: `student_logits` {tuple(student.shape)} and "
                         f"`teacher_logits` {tuple(teacher.shape)} must have the same shape.")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; valid: {CTR_REDUCTIONS}.")


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0.0 and t < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
    return t


@full_precision
def soft_label_bce(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
                   reduction: str = "mean") -> Tensor:
    r"""Binary cross-entropy of the student against the teacher's soft label.

    .. math::
       L_b = T^2\big[-p_b \log\sigma(s_b/T) - (1-p_b)\log\sigma(-s_b/T)\big],
       \quad p_b = \sigma(\mathrm{sg}(t_b)/T)

    Args:
        student_logits: ``[B]`` (or ``[B, 1]``) student logits (gradients flow).
        teacher_logits: same shape, the teacher's logits (detached: a constant).
        temperature: :math:`T > 0` (1: the plain soft-label BCE).
        reduction: ``"mean"`` (default) / ``"sum"`` over the batch, or ``"none"``.

    Returns:
        A scalar (``[B]``-shaped for ``"none"``).

    Example:
        >>> import torch
        >>> round(float(soft_label_bce(torch.zeros(3), torch.zeros(3))), 4)  # log 2
        0.6931
    """
    check_logits(student_logits, teacher_logits, "soft_bce")
    t = _check_temperature(temperature)
    s = student_logits / t
    p = torch.sigmoid(teacher_logits.detach() / t)
    per = -(p * F.logsigmoid(s) + (1.0 - p) * F.logsigmoid(-s)) * (t * t)
    return _reduce(per, reduction)


@full_precision
def logit_hint(student_logits: Tensor, teacher_logits: Tensor, *,
               reduction: str = "mean") -> Tensor:
    r"""Squared logit distance with the teacher's side blocked: :math:`(s_b - \mathrm{sg}(t_b))^2`.

    Rocket Launching's hint :math:`\lambda \|l(x) - z(x)\|^2` between the light net's logit
    ``s`` and the booster's ``t``: the booster gets no gradient from it ("gradient block").

    Args:
        student_logits: ``[B]`` (or ``[B, 1]``) light-net logits (gradients flow).
        teacher_logits: same shape, booster logits (detached).
        reduction: ``"mean"`` (default) / ``"sum"`` over the batch, or ``"none"``.

    Example:
        >>> import torch
        >>> float(logit_hint(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])))
        2.5
    """
    check_logits(student_logits, teacher_logits, "logit_hint")
    return _reduce((student_logits - teacher_logits.detach()).pow(2), reduction)


class CTRLoss(RankingLoss):
    """Base of the CTR distillation losses: ``forward(student_logits, teacher_logits)``."""

    inputs: ClassVar[str] = "student_logits [B], teacher_logits [B] (detached)"

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in CTR_REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {CTR_REDUCTIONS}.")
        self.reduction = reduction


@CTR_LOSSES.register("soft_bce")
class SoftLabelBCE(CTRLoss):
    """:func:`soft_label_bce` as a module (``temperature``, ``reduction``)."""

    def __init__(self, temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.temperature = _check_temperature(temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return soft_label_bce(student_logits, teacher_logits, temperature=self.temperature,
                              reduction=self.reduction)


@CTR_LOSSES.register("logit_hint")
class LogitHint(CTRLoss):
    """:func:`logit_hint` as a module (``reduction``)."""

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return logit_hint(student_logits, teacher_logits, reduction=self.reduction)


def get_ctr_loss(method: str | CTRLoss, **kwargs: object) -> CTRLoss:
    """A CTR loss from its (case-insensitive) name and hyperparameters, or an instance as is.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return resolve(CTR_LOSSES, method, **kwargs)
