r"""ADER (Mi, Lin & Faltings, RecSys 2020): the adaptively weighted exemplar distillation loss.

At update cycle (period) ``t`` the model is trained on the new block ``D_t`` plus an exemplar set
``E_{t-1}`` of earlier training rows (sequence prefix -> next item). For each exemplar ``b`` the
previous period's model ``M_{t-1}`` gave logits ``z^{t-1}_b`` over the items known at ``t-1``
(``I_{t-1}``); the current model's logits ``z^t_b`` on the same items are matched by the
cross-entropy between the two softmaxes (the authors' "logits matching"):

.. math::
    L_{KD} = -\frac{1}{|B_E|} \sum_{b \in B_E} \sum_{i \in I_{t-1}}
        \mathrm{softmax}(z^{t-1}_b)_i \, \log \mathrm{softmax}(z^t_b)_i

(:func:`ader_kd_loss`; computed as graphkd's ``row_kl`` on the list graph plus the teacher's
entropy, so ``CE = KL + H(p^{t-1})``; the gradient is the KL's). The total loss of a batch is

.. math::
    L = L_{CE}(D_t\ \text{rows}) + \lambda_t L_{KD}(E_{t-1}\ \text{rows}), \qquad
    \lambda_t = \lambda_{base} \sqrt{\frac{|I_{t-1}|}{|I_t|} \cdot \frac{|E_{t-1}|}{|D_t|}}

(:func:`ader_weight`; the formula of the paper's Eq. 3 and of the authors' ``main.py``:
``lambda_ * sqrt((item_num_prev / max_item) * (exemplar_size / train_size))``, default
``lambda_base = 0.8``). More old data relative to the new block, and fewer new items, give the
old knowledge more weight.

Teacher logits are constants (detached). Reductions over rows: ``"mean"`` (the authors'
``reduce_mean``), ``"sum"``, ``"none"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from graphkd._checks import check_nonempty, full_precision
from graphkd.divergences import row_kl
from recsys.losses._base import RankingLoss, check_lists, list_graph, reduce_rows, register

__all__ = ["ader_kd_loss", "ader_weight", "ADERKD"]


def _known_columns(known: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """Column indices of the known items (None: all ``n`` columns)."""
    if known is None:
        return None
    if known.dtype != torch.bool or known.dim() != 1 or known.numel() != n:
        raise ValueError(f"`known` must be a bool mask of the {n} item columns, got dtype "
                         f"{known.dtype} and shape {tuple(known.shape)}.")
    cols = known.nonzero().squeeze(1).to(device)
    if cols.numel() == 0:
        raise ValueError("`known` marks no item: the previous model knew no items.")
    return cols


@full_precision
def ader_kd_loss(student_logits: Tensor, teacher_logits: Tensor, known: Tensor | None = None,
                 *, reduction: str = "mean") -> Tensor:
    r"""``-sum_i softmax(t_b)_i log softmax(s_b)_i`` over the known items, per exemplar row.

    Args:
        student_logits: ``[B, N]`` the current model's logits of the exemplar rows.
        teacher_logits: ``[B, N]`` the previous model's logits (constants).
        known: ``[N]`` bool, the items the previous model knew (``I_{t-1}``): both softmaxes
            run over these columns only; None: all ``N`` columns.
        reduction: over rows: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        the reduced loss (``[B]`` for ``"none"``).

    Example:
        >>> import torch
        >>> t = torch.tensor([[0.0, 0.0]])
        >>> round(float(ader_kd_loss(torch.zeros(1, 2), t)), 4)  # CE of two uniforms = log 2
        0.6931
    """
    check_nonempty("ader", student_logits, teacher_logits)
    check_lists(student_logits, "student_logits")
    check_lists(teacher_logits, "teacher_logits", rows=student_logits.shape[0])
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape.")
    cols = _known_columns(known, student_logits.shape[1], student_logits.device)
    s, t = student_logits, teacher_logits.detach()
    if cols is not None:
        s, t = s.index_select(1, cols), t.index_select(1, cols)
    b, n = s.shape
    kl = row_kl(s.reshape(-1), t.reshape(-1), list_graph(b, n, s.device), reduction="none")
    log_pt = torch.log_softmax(t, dim=1)
    entropy = -(log_pt.exp() * log_pt).sum(1)
    return reduce_rows(kl + entropy, reduction)


def ader_weight(lambda_base: float, num_exemplars: int, num_new: int, items_prev: int,
                items_now: int) -> float:
    r"""ADER's adaptive weight ``lambda_base * sqrt(|I_{t-1}|/|I_t| * |E_{t-1}|/|D_t|)``.

    Args:
        lambda_base: the base weight (the paper's default 0.8).
        num_exemplars: ``|E_{t-1}|``, the exemplars replayed at this period.
        num_new: ``|D_t|``, the new training rows of this period.
        items_prev, items_now: ``|I_{t-1}|`` and ``|I_t|``, the items known before and after
            this period's data arrives.

    Example:
        >>> ader_weight(0.8, 1000, 4000, 900, 1000)
        0.37947331922020555
    """
    if not math.isfinite(lambda_base) or lambda_base < 0:
        raise ValueError(f"lambda_base must be a finite number >= 0, got {lambda_base}.")
    if num_new <= 0 or items_now <= 0 or num_exemplars < 0 or items_prev < 0:
        raise ValueError(f"need num_new > 0, items_now > 0 and non-negative counts, got "
                         f"num_exemplars={num_exemplars}, num_new={num_new}, "
                         f"items_prev={items_prev}, items_now={items_now}.")
    return float(lambda_base) * math.sqrt((items_prev / items_now) * (num_exemplars / num_new))


@register("ader")
class ADERKD(RankingLoss):
    """ADER's exemplar distillation: softmax cross-entropy to the previous period's model over
    the items it knew (:func:`ader_kd_loss`); ``lambda_base`` is read by the continual loop
    (:func:`ader_weight`, :mod:`recsys.recbole.ader`).

    ``forward(student_logits [B,N], teacher_logits [B,N], known [N] bool | None)``.

    Example:
        >>> import torch
        >>> loss = ADERKD()
        >>> float(loss(torch.zeros(2, 3), torch.zeros(2, 3))) == float(torch.tensor(3.0).log())
        True
    """

    inputs = ("student_logits [B,N] (current model on the exemplars), teacher_logits [B,N] "
              "(previous period's model), known [N] bool (items it knew)")

    def __init__(self, lambda_base: float = 0.8, reduction: str = "mean") -> None:
        super().__init__()
        if not math.isfinite(lambda_base) or lambda_base < 0:
            raise ValueError(f"lambda_base must be a finite number >= 0, got {lambda_base}.")
        self.lambda_base, self.reduction = float(lambda_base), reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor,
                known: Tensor | None = None) -> Tensor:
        return ader_kd_loss(student_logits, teacher_logits, known, reduction=self.reduction)
