r"""Output-level distillation: Hinton's KD on class logits.

Example:
    >>> z_s, z_t = torch.randn(8, 10), torch.randn(8, 10)
    >>> KD(tau=4.0)(z_s, z_t).shape
    torch.Size([])
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_features, check_nonempty, check_same_shape, full_precision
from graphkd.losses.base import DistillLoss, register

__all__ = ["KD_REDUCTIONS", "kd_loss", "KD"]

#: Reductions of :func:`kd_loss` (over samples).
KD_REDUCTIONS = ("batchmean", "sum", "none")


@full_precision
def kd_loss(
    logits_s: Tensor, logits_t: Tensor, tau: float = 4.0, *, reduction: str = "batchmean",
) -> Tensor:
    r"""Knowledge distillation (Hinton et al., 2015).

    .. math::
        L = \tau^2 \cdot \frac{1}{N} \sum_{n} \sum_c p^t_{nc}
            \big(\log p^t_{nc} - \log p^s_{nc}\big), \qquad
        p^x_n = \mathrm{softmax}(z^x_n / \tau)

    computed from log-softmaxes, in float32 for float16/bfloat16 logits. The teacher's logits
    are constants (detached). ``reduction="batchmean"`` divides by the number of samples
    ``N`` only, as RepDistiller ``KD.py`` (``F.kl_div(..., size_average=False) * T**2 /
    B``); it is *not* the element mean that also divides by the class count.

    Args:
        logits_s: ``[N, C]`` student logits.
        logits_t: ``[N, C]`` teacher logits.
        tau: temperature (> 0).
        reduction: ``"batchmean"`` (default), ``"sum"`` or ``"none"`` (``[N]`` per sample,
            already multiplied by ``tau**2``).

    Returns:
        Scalar (or ``[N]``).

    Example:
        >>> kd_loss(torch.randn(4, 3), torch.randn(4, 3), tau=2.0).shape
        torch.Size([])
    """
    check_nonempty("kd", logits_s, logits_t)
    check_features(logits_s, "logits_s")
    check_features(logits_t, "logits_t")
    logits_t = logits_t.detach()
    check_same_shape(logits_s, logits_t, "student logits", "teacher logits",
                     "both are [N, num_classes].")
    if not tau > 0:
        raise ValueError(f"`tau` must be > 0, got {tau}.")
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {KD_REDUCTIONS}.")
    log_ps = F.log_softmax(logits_s / tau, dim=1)
    log_pt = F.log_softmax(logits_t / tau, dim=1)
    per_sample = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1) * tau**2
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()


@register("kd")
class KD(DistillLoss):
    """Hinton KD on logits, see :func:`kd_loss`.

    Args:
        tau: temperature (4).
        reduction: ``"batchmean"``, ``"sum"`` or ``"none"``.
    """

    level = "logits"
    family = "output"

    def __init__(self, tau: float = 4.0, reduction: str = "batchmean") -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"`tau` must be > 0, got {tau}.")
        if reduction not in KD_REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {KD_REDUCTIONS}.")
        self.tau, self.reduction = tau, reduction

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return kd_loss(f_s, f_t, self.tau, reduction=self.reduction)
