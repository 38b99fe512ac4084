r"""DCD: dual correction strategy for ranking distillation (Lee & Kim, CIKM 2021).

DCD corrects the student where its ranking disagrees most with the teacher's, on both sides of
the user-item matrix:

* **user side** (``L_user``): for each user, the teacher's top-``M`` unobserved items
  (``m=500``) with teacher ranks :math:`r^T = 0..M-1` and the student's ranks :math:`r^S` of
  those items among all items. ``K`` (``k=100``) *under-estimated* items are drawn without
  replacement with :math:`p \propto \max(\tanh(\max((r^S - r^T)/T, 0)), 10^{-5})` and ``K``
  *over-estimated* ones with the roles swapped (``T=10``;
  ``recsys.samplers.discrepancy_sample``). The loss is the relaxed Plackett-Luce likelihood of
  the under-estimated list (in teacher order) placed above the over-estimated items (the same
  form as RRD, ``recsys.losses.rrd_loss``).
* **item side** (``L_item``): the same on the transposed matrix. For each item, the teacher's
  top-``item_m`` users that did not interact with it (``item_m=100``), the student's ranks of
  those users among all users (scores ``s(., i)``), ``item_k=20`` under- and over-estimated
  users by the same discrepancy sampling, and the relaxed Plackett-Luce loss over users.

Total, as the paper combines them with the student's own (base) ranking loss:

.. math::
    L = L_{base} + \lambda\,(w_u L_{user} + w_i L_{item})

with ``L_base`` the student's own loss (BPR in the RecBole plugin), ``lambda`` the plugin's
``distill_weight`` and ``w_u = user_weight``, ``w_i = item_weight`` (both 1). ``sides="user"``
keeps only the user side (the variant ported by woriazzc/KDs, which is this plugin's old DCD).
Each side sums over its rows (users / items) like KDs' port; the plugin divides those sums by
the batch's interaction count (``reduction="per_interaction"``, as RRD) so that ``lambda`` keeps
its meaning against RecBole's batch-mean BPR.

Choices (the paper does not fix every size; documented here):

* user side ``k=100, m=500, T=10``: woriazzc/KDs' DCD configuration (``dcd_K``, ``dcd_mxK``,
  ``dcd_T``).
* item side ``item_k=20, item_m=100``, same ``T``: the user side's ``K/M = 1/5`` on a shorter
  list, since item rankings run over users, usually far fewer than items (ml-100k: 943 users,
  1,682 items) and a popular item leaves few unobserved users. Both are clamped to the users
  available; items whose list is shorter than ``item_m`` (``teacher_topk(strict=False)``) have
  a valid prefix, and their invalid list entries are masked (``valid_under`` / ``valid_over``).
* student ranks run over *all* users / items, history included (as KDs' reference ranks over
  every item).
"""

from __future__ import annotations

import torch
from torch import Tensor

from graphkd._checks import check_nonempty, full_precision
from recsys.losses._base import RankingLoss, check_lists, reduce_rows, register
from recsys.losses.rrd import rrd_loss

__all__ = ["dcd_loss", "DCD", "DCD_SIDES"]

#: ``"both"``: user- and item-side correction (the paper); ``"user"``: the user side only.
DCD_SIDES = ("both", "user")

#: distance (in log-space) below the row's smallest valid score at which masked entries are
#: placed: ``exp(-1000)`` is exactly 0 in float32 and float64, so they carry no mass.
_MASK_GAP = 1000.0


def dcd_loss(scores_under: Tensor, scores_over: Tensor, *, valid_under: Tensor | None = None,
             valid_over: Tensor | None = None, reduction: str = "sum",
             num_interactions: float | Tensor | None = None) -> Tensor:
    r"""One DCD side: the under-estimated list (teacher order) ranked above the over-estimated
    entries, by the relaxed Plackett-Luce likelihood.

    .. math::
        \ell_r = \sum_{k\,\mathrm{valid}} \Big[\log\Big(\sum_{l \ge k,\ \mathrm{valid}}
        e^{s_{r,l}} + \sum_{j\ \mathrm{valid}} e^{o_{r,j}}\Big) - s_{r,k}\Big]

    Rows are users (user side) or items (item side, ``s`` = scores of the listed users).

    Args:
        scores_under: ``[R, K]`` student scores of the sampled under-estimated entries, sorted
            by teacher rank.
        scores_over: ``[R, K']`` student scores of the sampled over-estimated entries.
        valid_under, valid_over: optional ``[R, K]`` / ``[R, K']`` bool masks of real entries
            (DCD's item side: items with fewer candidate users than the list length). Masked
            entries carry no probability mass and no term; ``None``: all valid.
        reduction: over rows: ``"sum"`` (reference), ``"per_interaction"`` (the sum divided
            by ``num_interactions``, the training batch's interaction count: the reference's
            ratio to RecBole's batch-mean base loss, see
            :func:`recsys.losses._base.reduce_rows`), ``"mean"`` (over the rows with at least
            one valid under-estimated entry) or ``"none"``.
        num_interactions: the training batch's interaction count (``"per_interaction"``).

    Example:
        >>> dcd_loss(torch.zeros(1, 2), torch.zeros(1, 1))  # log 3 + log 2
        tensor(1.7918)
        >>> dcd_loss(torch.zeros(1, 2), torch.zeros(1, 1),
        ...          valid_under=torch.tensor([[True, False]]))  # log 2
        tensor(0.6931)
    """
    check_nonempty("dcd", scores_under, scores_over)
    if valid_under is None and valid_over is None:
        return rrd_loss(scores_under, scores_over, reduction=reduction,
                        num_interactions=num_interactions)
    return _masked_dcd(scores_under, scores_over, valid_under, valid_over, reduction,
                       num_interactions)


@full_precision
def _masked_dcd(s: Tensor, o: Tensor, valid_s: Tensor | None, valid_o: Tensor | None,
                reduction: str, num_interactions: float | Tensor | None) -> Tensor:
    """:func:`dcd_loss` with masks: exact, with a stable reverse ``logcumsumexp``."""
    check_lists(s, "scores_under")
    check_lists(o, "scores_over", rows=s.shape[0])
    vs = _mask(valid_s, s, "valid_under")
    vo = _mask(valid_o, o, "valid_over")
    # masked entries -> far below every valid score of the row (finite: no inf/NaN gradients)
    big = torch.finfo(s.dtype).max
    low = torch.minimum(s.detach().masked_fill(~vs, big).amin(1),
                        o.detach().masked_fill(~vo, big).amin(1)) if o.shape[1] else \
        s.detach().masked_fill(~vs, big).amin(1)
    fill = (torch.where(low < big, low, torch.zeros_like(low)) - _MASK_GAP).unsqueeze(1)
    s_f = torch.where(vs, s, fill)
    denom = torch.logcumsumexp(s_f.flip(1), dim=1).flip(1)  # log sum_{l >= k} e^{s_l}
    if o.shape[1]:
        o_f = torch.where(vo, o, fill)
        denom = torch.logaddexp(denom, torch.logsumexp(o_f, dim=1, keepdim=True))
    per_row = torch.where(vs, denom - s_f, torch.zeros_like(s_f)).sum(1)
    if reduction == "mean":
        rows = vs.any(1)
        return per_row.sum() / rows.sum().clamp_min(1).to(per_row.dtype)
    return reduce_rows(per_row, reduction, num_interactions=num_interactions)


def _mask(valid: Tensor | None, x: Tensor, name: str) -> Tensor:
    if valid is None:
        return torch.ones_like(x, dtype=torch.bool)
    if valid.shape != x.shape:
        raise ValueError(f"`{name}` must have shape {tuple(x.shape)}, got {tuple(valid.shape)}.")
    return valid.to(device=x.device, dtype=torch.bool)


@register("dcd")
class DCD(RankingLoss):
    """DCD module: ``w_u * L_user + w_i * L_item`` (see the module docstring).

    ``forward(scores_under [U,K], scores_over [U,K], item_under [I,K_i], item_over [I,K_i],
    item_valid_under, item_valid_over)``: the item-side arguments are the student scores
    ``s(v, i)`` of the users sampled for each batch item (teacher order) and their masks; the
    item term is added when they are given (the adapter always gives them with
    ``sides="both"``). :meth:`user_loss` and :meth:`item_loss` return the two parts.

    Hyperparameters the trainer reads for sampling: ``k``, ``m``, ``temperature`` (user side),
    ``item_k``, ``item_m`` (item side, same temperature), ``sides``.
    """

    inputs = ("scores_under [U,K] (teacher order), scores_over [U,K]; item side (optional): "
              "item_under [I,K_i] (teacher order), item_over [I,K_i], item_valid_under, "
              "item_valid_over [I,K_i] bool")

    def __init__(self, k: int = 100, m: int = 500, temperature: float = 10.0,
                 item_k: int = 20, item_m: int = 100, user_weight: float = 1.0,
                 item_weight: float = 1.0, sides: str = "both", reduction: str = "sum") -> None:
        super().__init__()
        if sides not in DCD_SIDES:
            raise ValueError(f"unknown DCD sides {sides!r}; valid: {DCD_SIDES}.")
        self.k, self.m, self.temperature, self.reduction = k, m, temperature, reduction
        self.item_k, self.item_m, self.sides = item_k, item_m, sides
        self.user_weight, self.item_weight = float(user_weight), float(item_weight)

    @property
    def item_side(self) -> bool:
        return self.sides == "both"

    def user_loss(self, scores_under: Tensor, scores_over: Tensor, *,
                  num_interactions: float | Tensor | None = None) -> Tensor:
        """``L_user`` (unweighted)."""
        return dcd_loss(scores_under, scores_over, reduction=self.reduction,
                        num_interactions=num_interactions)

    def item_loss(self, item_under: Tensor, item_over: Tensor,
                  item_valid_under: Tensor | None = None,
                  item_valid_over: Tensor | None = None, *,
                  num_interactions: float | Tensor | None = None) -> Tensor:
        """``L_item`` (unweighted)."""
        return dcd_loss(item_under, item_over, valid_under=item_valid_under,
                        valid_over=item_valid_over, reduction=self.reduction,
                        num_interactions=num_interactions)

    def forward(self, scores_under: Tensor, scores_over: Tensor,
                item_under: Tensor | None = None, item_over: Tensor | None = None,
                item_valid_under: Tensor | None = None,
                item_valid_over: Tensor | None = None, *,
                num_interactions: float | Tensor | None = None) -> Tensor:
        n = num_interactions
        loss = self.user_weight * self.user_loss(scores_under, scores_over, num_interactions=n)
        if item_under is None and item_over is None:
            return loss
        if not self.item_side:
            raise ValueError("DCD(sides='user') got item-side inputs; use sides='both'.")
        if item_under is None or item_over is None:
            raise ValueError("DCD: pass both `item_under` and `item_over` (or neither).")
        return loss + self.item_weight * self.item_loss(
            item_under, item_over, item_valid_under, item_valid_over, num_interactions=n)
