r"""RRD (relaxed ranking distillation, Kang et al. CIKM 2020).

RRD: per user, ``K=40`` "interesting" items sampled from the teacher's top-``M=500``
unobserved items with :math:`p(r) \propto e^{-r/T}` (``T=10``) and kept **in teacher-rank
order**, and ``L=40`` "uninteresting" items uniform over the rest. The relaxed Plackett-Luce
likelihood of the ordered list placed above the uninteresting ones:

.. math::
    L_{RRD} = -\sum_u \sum_{k=1}^{K}\Big[\hat s_{\pi_k}
        - \log\Big(\sum_{l \ge k} e^{\hat s_{\pi_l}}
        + \sum_{j \in \mathcal{U}} e^{\hat s_j}\Big)\Big]

i.e. ``logaddexp(row_logcumsumexp(s, reverse=True), row_logsumexp(s_U))`` per row of the list
graph. The reference computes ``log(exp(s).flip().cumsum())``, which overflows for scores > 88 in
float32 (woriazzc/KDs clamps scores at 80 for that reason). Here a fast path computes the same
``exp -> cumsum -> log`` with an analytic backward (``_RelaxedPL``) and flags rows whose sums
overflow, underflow (suffix sums below ``tiny**0.8``) or are not finite (one host sync per call);
flagged rows are recomputed with a per-row shift by their first score, and rows still flagged
exactly with graphkd's stable ``row_logcumsumexp``. So the loss is exact to the dtype's precision
for any finite scores, at the cost of a plain ``exp().cumsum()`` when scores are moderate
(``torch.logcumsumexp`` with its autograd backward is ~20x slower on CPU).
Total: ``L_base + lambda * L_RRD``, ``lambda = 0.001``. The authors
later reported that sampling the interesting items *uniformly* from the top-M works better:
``recsys.samplers.rank_aware_sample(..., temperature=None)``.

DCD (user- and item-side correction) lives in :mod:`recsys.losses.dcd` and reuses
:func:`rrd_loss`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from graphkd._checks import check_finite, check_nonempty, full_precision
from graphkd.graphs import EdgeSet
from graphkd.ops import gather_rows, row_logcumsumexp, row_logsumexp, row_max, row_sum
from recsys.losses._base import (
    RankingLoss,
    check_lists,
    list_graph,
    reduce_rows,
    register,
)

__all__ = ["rrd_loss", "plackett_luce_denominators", "RRD"]


@full_precision
def rrd_loss(scores_interesting: Tensor, scores_uninteresting: Tensor, *,
             reduction: str = "sum", num_interactions: float | Tensor | None = None) -> Tensor:
    r"""Relaxed Plackett-Luce loss of an ordered list above a set of negatives.

    Args:
        scores_interesting: ``[U, K]`` student scores of the interesting items, in teacher
            rank order (best first).
        scores_uninteresting: ``[U, L]`` student scores of the uninteresting items
            (``L = 0`` allowed: plain Plackett-Luce of the list).
        reduction: over users: ``"sum"`` (reference), ``"per_interaction"`` (the sum divided by
            ``num_interactions``: the reference's ratio to a batch-mean base loss, see
            :func:`recsys.losses._base.reduce_rows`), ``"mean"`` or ``"none"``.
        num_interactions: the training batch's interaction count (``"per_interaction"``).

    Returns:
        :math:`\sum_u \sum_k [\log(\sum_{l\ge k} e^{s_l} + \sum_j e^{s_j}) - s_k]`.

    Example:
        >>> rrd_loss(torch.zeros(1, 2), torch.zeros(1, 1))  # log 3 + log 2
        tensor(1.7918)
    """
    check_nonempty("rrd", scores_interesting, scores_uninteresting)
    check_lists(scores_interesting, "scores_interesting", finite=False)
    u, k = scores_interesting.shape
    check_lists(scores_uninteresting, "scores_uninteresting", rows=u, finite=False)
    per_row, rows = _RelaxedPL.apply(scores_interesting, scores_uninteresting, False)
    if rows.numel():  # rare: scores outside ~[-70, 88] (float32), or non-finite input
        check_finite(scores_interesting, "scores_interesting")
        check_finite(scores_uninteresting, "scores_uninteresting")
        s, n = scores_interesting.index_select(0, rows), scores_uninteresting.index_select(0, rows)
        fixed, rows2 = _RelaxedPL.apply(s, n, True)  # shifted by each row's first score
        if rows2.numel():  # still out of range: exact and stable, but slower
            fixed = fixed.index_put((rows2,), _exact_rows(s.index_select(0, rows2),
                                                          n.index_select(0, rows2)))
        per_row = per_row.index_put((rows,), fixed)
    return reduce_rows(per_row, reduction, num_interactions=num_interactions)


def _exact_rows(s: Tensor, n: Tensor) -> Tensor:
    """Per-row RRD loss with graphkd's ``row_logcumsumexp`` / ``row_logsumexp`` (autograd)."""
    u, k = s.shape
    pos = list_graph(u, k, s.device)
    below = row_logcumsumexp(s.reshape(-1), pos, reverse=True)
    if n.shape[1]:
        lse = row_logsumexp(n.reshape(-1), list_graph(u, n.shape[1], s.device))
        below = below.logaddexp(gather_rows(lse, pos))
    return row_sum(below - s.reshape(-1), pos)


class _RelaxedPL(torch.autograd.Function):
    """Fast path of the per-row RRD loss with an analytic backward.

    With a per-row shift ``m`` (0, or the first score ``s_0`` when ``shift``),
    ``E_l = exp(s_l - m)`` and ``D_k = sum_{l>=k} E_l + sum_j exp(n_j - m)``:
    ``loss_u = sum_k log D_k + K m - sum_k s_k`` and

        d loss / d s_l = E_l * sum_{k<=l} 1/D_k - 1,   d loss / d n_j = exp(n_j - m) sum_k 1/D_k.

    Rows where a shifted sum overflows, where ``D`` underflows (``min_k D_k < tiny**0.8``) or
    whose value is not finite are returned as ``rows`` (one host sync reading two scalars, and
    a row scan only when one of them is off); the caller recomputes them and their gradient
    here is zeroed.
    """

    @staticmethod
    def forward(ctx, s: Tensor, n: Tensor, shift: bool):  # noqa: D102
        # runs under no_grad: in-place ops on fresh buffers save allocations
        k = s.shape[1]
        m = s[:, :1].clone() if shift else None
        e = (s - m).exp_() if shift else s.exp()  # E_l, original order
        d = e.flip(1).cumsum_(1)  # reversed order: d[:, j] = D_{K-1-j} - (negatives' mass)
        en = None
        if n.shape[1]:
            en = (n - m).exp_() if shift else n.exp()
            d.add_(en.sum(1, keepdim=True))
        per_row = torch.log(d).sum(1).sub_(s.sum(1))
        if shift:
            per_row.add_(m.squeeze(1), alpha=k)
        thr = torch.finfo(s.dtype).tiny ** 0.8
        smallest, total = torch.stack((d[:, 0].amin(), per_row.sum())).tolist()  # one sync
        if smallest < thr or not math.isfinite(total):
            rows = ((d[:, 0] < thr) | ~torch.isfinite(per_row)).nonzero().squeeze(1)
        else:
            rows = d.new_zeros(0, dtype=torch.long)
        ctx.mark_non_differentiable(rows)
        ctx.save_for_backward(e, d, en, rows)
        ctx.any_flagged = rows.numel() > 0
        return per_row, rows

    @staticmethod
    def backward(ctx, g: Tensor, _rows_grad: Tensor | None):  # noqa: D102
        e, d, en, rows = ctx.saved_tensors
        # flagged rows may hold inf/NaN here; they stay within their row and are zeroed below
        c = d.reciprocal().flip(1).cumsum_(1)  # c[:, l] = sum_{k<=l} 1/D_k
        g1 = g.unsqueeze(1)
        grad_n = None
        if en is not None:  # before c is overwritten: c[:, -1] = sum_k 1/D_k
            grad_n = en * (c[:, -1:] * g1)
        grad_s = c.mul_(e).sub_(1.0).mul_(g1)
        if ctx.any_flagged:  # recomputed by the caller: no gradient from here
            grad_s.index_fill_(0, rows, 0.0)
            if grad_n is not None:
                grad_n.index_fill_(0, rows, 0.0)
        return grad_s, grad_n, None


def _denominators_reversed(scores: Tensor, negatives: Tensor | None, pos: EdgeSet,
                           neg: EdgeSet | None) -> Tensor:
    """Denominators ``log(sum_{l>=k} e^{s_l} + sum_j e^{n_j})`` with the columns reversed.

    ``negatives`` ``[U, L]`` on the list graph ``neg`` (``None`` or ``L = 0``: no negatives).
    """
    u, k = scores.shape
    m = row_max(scores.detach().reshape(-1), pos)
    has_neg = neg is not None and negatives is not None and negatives.shape[1] > 0
    if has_neg:
        m = torch.maximum(m, row_max(negatives.detach().reshape(-1), neg))
    m = m.unsqueeze(1)
    d = torch.exp(scores.flip(1) - m).cumsum(1)
    if has_neg:
        d = d + row_sum(torch.exp(negatives - m).reshape(-1), neg).unsqueeze(1)
    info = torch.finfo(scores.dtype)
    # the smallest suffix sum is the first one (the last item alone, plus the negatives)
    rows = (d.detach()[:, 0] < info.tiny ** 0.8).nonzero().squeeze(1)
    if rows.numel() == 0:
        return torch.log(d) + m
    # exact recomputation of the rows that would lose precision (one host sync above)
    out = torch.log(d.clamp_min(info.tiny)) + m
    sub = scores.index_select(0, rows)
    exact = row_logcumsumexp(sub.reshape(-1), list_graph(rows.numel(), k, scores.device),
                             reverse=True).view(-1, k)
    if has_neg:
        sub_neg = negatives.index_select(0, rows)
        lse = row_logsumexp(sub_neg.reshape(-1),
                            list_graph(rows.numel(), sub_neg.shape[1], scores.device))
        exact = exact.logaddexp(lse.unsqueeze(1))
    return out.index_put((rows,), exact.flip(1))


@full_precision
def plackett_luce_denominators(scores: Tensor, extra_lse: Tensor | None = None) -> Tensor:
    r"""``[U, K]`` :math:`y_{u,k} = \log(\sum_{l \ge k} e^{s_{u,l}} + e^{c_u})`, stably and fast.

    The reverse logcumsumexp of each row plus an extra log-mass ``c = extra_lse`` ``[U]`` (the
    negatives' logsumexp; ``None``: no extra term).

    Fast path: with the (detached) row maximum ``m`` of the scores and ``c``,
    ``y = m + log(revcumsum(exp(s - m)) + exp(c - m))``: every ``exp`` is ``<= 1`` (no
    overflow) and the scan is a vectorised ``cumsum``. Where a whole suffix (and ``c``) lies so
    far below ``m`` that its sum falls under ``finfo.tiny ** 0.8`` (``~1e-31`` in float32: ~70
    nats), the row is recomputed exactly with graphkd's stable ``row_logcumsumexp`` (one host
    sync to find such rows), so the result is accurate to the dtype's precision for any scores.

    Example:
        >>> plackett_luce_denominators(torch.zeros(1, 2))  # [log 2, log 1]
        tensor([[0.6931, 0.0000]])
    """
    check_lists(scores, "scores")
    u, k = scores.shape
    pos = list_graph(u, k, scores.device)
    if extra_lse is None:
        return _denominators_reversed(scores, None, pos, None).flip(1)
    extra = extra_lse.reshape(u, 1)
    return _denominators_reversed(scores, extra, pos, list_graph(u, 1, scores.device)).flip(1)


@register("rrd")
class RRD(RankingLoss):
    """RRD module: ``forward(scores_interesting [U,K], scores_uninteresting [U,L], *,
    num_interactions=None)`` (``num_interactions``: the batch's interaction count, used by
    ``reduction="per_interaction"``).

    Hyperparameters the trainer reads for sampling: ``k``, ``l``, ``m`` (top-M), ``temperature``
    (``None``: uniform top-M sampling).
    """

    inputs = "scores_interesting [U,K] (teacher order), scores_uninteresting [U,L]"

    def __init__(self, k: int = 40, l: int = 40, m: int = 500,
                 temperature: float | None = 10.0, reduction: str = "sum") -> None:
        super().__init__()
        self.k, self.l, self.m, self.temperature = k, l, m, temperature
        self.reduction = reduction

    def forward(self, scores_interesting: Tensor, scores_uninteresting: Tensor, *,
                num_interactions: float | Tensor | None = None) -> Tensor:
        return rrd_loss(scores_interesting, scores_uninteresting, reduction=self.reduction,
                        num_interactions=num_interactions)
