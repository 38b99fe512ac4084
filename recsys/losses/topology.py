r"""FTD / HTD: topology distillation (Kang et al., KDD 2021).

Reference: SeongKu-Kang/Topology_Distillation_KDD21 (model.py).

Per batch, the entities are the batch users and their positive/negative items (unique), with
teacher embeddings ``t [N, d_t]`` and student embeddings ``s [N, d_s]``. Relations are cosine
similarities (with ``eps``: a zero row gives 0, not NaN as in the reference), compared with
``graphkd.divergences.edge_mse`` on a relation graph shared by teacher and student:

* **FTD** (full): the dense graph over all ``N`` entities,
  :math:`L = \sum_{i,j} (\cos_t(i,j) - \cos_s(i,j))^2`.
* **HTD** (hierarchical): entities are grouped by a DE-style assignment (``E=30`` user groups and
  ``E`` item groups, :class:`~recsys.losses.de.DistillationExperts`). Entity level: the
  *grouped* graph of same-group pairs (an irregular EdgeSet, :func:`group_relation_graph`).
  Group level: prototypes (group means) ``P``; ``level="pp"`` compares the dense prototype x
  prototype graph (the reference's first choice), ``level="pe"`` the prototype x entity graph
  (its second). :math:`L_{TD} = L_{entity} + L_{group}`, and the total is
  ``L_base + lambda_TD * (alpha * L_TD + (1 - alpha) * L_GA)``, ``lambda_TD = 1e-3``,
  ``alpha = 0.5``, with ``L_GA`` the DE loss of the group-assignment experts.

Reference quirks, off by default: ``positive_mask=True`` drops same-group pairs whose teacher
cosine is not positive (the reference's ``> 0`` mask); ``detach_prototypes=True`` computes the
prototypes without gradient (the reference does, which makes the ``pp`` group-level term a
constant).
"""

from __future__ import annotations

import torch
from torch import Tensor

from graphkd._checks import full_precision
from graphkd.divergences import edge_mse
from graphkd.graphs import EdgeSet
from graphkd.kernels import edge_kernel, pairwise_kernel
from recsys.losses._base import RankingLoss, check_embeddings, check_num_interactions, register
from recsys.losses.de import ExpertPair

__all__ = ["ftd_loss", "group_relation_graph", "group_prototypes", "htd_loss", "FTD", "HTD"]

#: ``"per_interaction"``: the ``"sum"`` divided by ``num_interactions`` (the training batch's
#: interaction count; see :func:`recsys.losses._base.reduce_rows`)
_EDGE_REDUCTIONS = ("sum", "mean", "per_interaction")


def _check_edge_reduction(reduction: str,
                          num_interactions: float | Tensor | None
                          ) -> tuple[str, float | Tensor | None]:
    """``(reduction to compute, divisor or None)``: ``per_interaction`` computes the sum."""
    if reduction not in _EDGE_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {_EDGE_REDUCTIONS}.")
    if reduction == "per_interaction":
        return "sum", check_num_interactions(num_interactions)
    return reduction, None


@full_precision
def ftd_loss(s: Tensor, t: Tensor, *, eps: float = 1e-8, reduction: str = "sum",
             num_interactions: float | Tensor | None = None) -> Tensor:
    r"""Full topology distillation :math:`\sum_{i,j}(\cos_t(i,j) - \cos_s(i,j))^2`.

    Args:
        s: ``[N, d_s]`` student embeddings of the batch entities.
        t: ``[N, d_t]`` teacher embeddings of the same entities (constants).
        eps: norm floor of the cosine.
        reduction: over the ``N**2`` edges: ``"sum"`` (reference), ``"per_interaction"``
            (the sum divided by ``num_interactions``) or ``"mean"``.
        num_interactions: the training batch's interaction count (``"per_interaction"``).

    Example:
        >>> ftd_loss(torch.eye(3), torch.eye(3))
        tensor(0.)
    """
    check_embeddings(s, t, "ftd")
    reduction, divisor = _check_edge_reduction(reduction, num_interactions)
    edges = EdgeSet.dense(s.shape[0], device=s.device)
    with torch.no_grad():
        w_t = edge_kernel(t, edges, "cosine", eps=eps)
    w_s = edge_kernel(s, edges, "cosine", eps=eps)
    loss = edge_mse(w_s, w_t, edges, reduction=reduction)
    return loss if divisor is None else loss / divisor


#: up to this many entity pairs, same-group cosines are read from one dense matmul
DENSE_PAIRS = 1 << 24


def _edge_cosine(x: Tensor, edges: EdgeSet, eps: float) -> Tensor:
    """Cosine on the edges, equal to ``edge_kernel(x, edges, "cosine", eps=eps)``.

    Rows are normalised once (``[N, D]``, not once per edge); for ``N**2 <= DENSE_PAIRS`` the
    values are gathered from the dense ``[N, N]`` matmul (one BLAS call beats an ``[E, D]``
    gather when groups are large), otherwise from per-edge dot products.
    """
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    n = x.shape[0]
    if n * n <= DENSE_PAIRS:
        return (xn @ xn.T)[edges.row, edges.col]
    return (xn.index_select(0, edges.row) * xn.index_select(0, edges.col)).sum(-1)


def group_relation_graph(groups: Tensor, *, loop: bool = False) -> EdgeSet:
    """Graph of same-group pairs: row ``i`` -> every ``j`` with ``groups[j] == groups[i]``.

    Columns of a row are in increasing entity order; ``loop=False`` drops ``(i, i)``.
    Irregular in general (groups differ in size), regular when all groups have equal size.

    Example:
        >>> g = group_relation_graph(torch.tensor([0, 1, 0]))
        >>> g.row.tolist(), g.col.tolist()
        ([0, 2], [2, 0])
    """
    if groups.dim() != 1 or groups.dtype not in (torch.int64, torch.int32):
        raise ValueError("`groups` must be a 1-D integer tensor (one group id per entity).")
    if groups.numel() and int(groups.min()) < 0:
        raise ValueError("`groups` must be non-negative.")
    n = groups.numel()
    groups = groups.long()
    order = torch.sort(groups, stable=True).indices
    size = torch.bincount(groups)
    start = torch.cumsum(size, 0) - size
    cnt = size[groups]
    row = torch.repeat_interleave(torch.arange(n, device=groups.device), cnt)
    offsets = torch.cumsum(cnt, 0) - cnt
    col = order[start[groups][row] + torch.arange(row.numel(), device=groups.device)
                - offsets[row]]
    if not loop:
        keep = row != col
        row, col = row[keep], col[keep]
    return EdgeSet._from_sorted(row, col, n, n)


def group_prototypes(x: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """``[G, D]`` mean feature of each group (zero row for an empty group)."""
    total = x.new_zeros(num_groups, x.shape[1]).index_add(0, groups, x)
    count = torch.bincount(groups, minlength=num_groups).clamp_min(1).to(x.dtype)
    return total / count[:, None]


@full_precision
def htd_loss(s: Tensor, t: Tensor, groups: Tensor, *, num_groups: int | None = None,
             level: str = "pp", eps: float = 1e-8, positive_mask: bool = False,
             detach_prototypes: bool = False, reduction: str = "sum",
             num_interactions: float | Tensor | None = None) -> Tensor:
    r"""Hierarchical topology distillation ``L_entity + L_group`` (no group-assignment term).

    Args:
        s: ``[N, d_s]`` student embeddings.
        t: ``[N, d_t]`` teacher embeddings (constants).
        groups: ``[N]`` group id of each entity (e.g. ``DistillationExperts.assign(t)``).
        num_groups: ``G`` (default ``groups.max() + 1``); empty groups have zero prototypes,
            whose cosines are 0 for both models, so they add nothing.
        level: ``"pp"`` (prototype x prototype) or ``"pe"`` (prototype x entity).
        eps: cosine norm floor.
        positive_mask: reference quirk (drop same-group pairs with teacher cosine <= 0).
        detach_prototypes: reference quirk (no gradient through the prototypes).
        reduction: ``"sum"`` of both terms' squared errors (reference), ``"per_interaction"``
            (that sum divided by ``num_interactions``) or ``"mean"`` (the sum of each term's
            mean).
        num_interactions: the training batch's interaction count (``"per_interaction"``).
    """
    check_embeddings(s, t, "htd")
    if level not in ("pp", "pe"):
        raise ValueError(f"unknown HTD level {level!r}; valid: 'pp', 'pe'.")
    reduction, divisor = _check_edge_reduction(reduction, num_interactions)
    if groups.shape != (s.shape[0],):
        raise ValueError(f"`groups` must have shape ({s.shape[0]},), got {tuple(groups.shape)}.")
    g = int(groups.max()) + 1 if num_groups is None else num_groups
    edges = group_relation_graph(groups)
    t = t.detach()
    w_t = _edge_cosine(t, edges, eps)
    w_s = _edge_cosine(s, edges, eps)
    if positive_mask:
        keep = w_t > 0
        err = ((w_s - w_t) ** 2)[keep]
        entity = err.sum() if reduction == "sum" else err.sum() / keep.sum().clamp_min(1)
    else:
        entity = edge_mse(w_s, w_t, edges, reduction=reduction)
    p_t = group_prototypes(t, groups, g)
    p_s = group_prototypes(s.detach() if detach_prototypes else s, groups, g)
    if level == "pp":
        g_t, g_s = pairwise_kernel(p_t, None, "cosine", eps=eps), pairwise_kernel(
            p_s, None, "cosine", eps=eps)
    else:
        g_t = pairwise_kernel(p_t, t, "cosine", eps=eps)
        g_s = pairwise_kernel(p_s, s, "cosine", eps=eps)
    group = edge_mse(g_s.reshape(-1), g_t.reshape(-1), reduction=reduction)
    return entity + group if divisor is None else (entity + group) / divisor


@register("ftd")
class FTD(RankingLoss):
    """FTD module: ``forward(s_users, t_users, s_items, t_items, *, num_interactions=None)`` on
    the batch's unique users and items (concatenated into one entity set;
    ``num_interactions`` for ``reduction="per_interaction"``)."""

    inputs = "s_users [Bu,d_s], t_users [Bu,d_t], s_items [Bi,d_s], t_items [Bi,d_t] (unique)"

    def __init__(self, eps: float = 1e-8, reduction: str = "sum") -> None:
        super().__init__()
        self.eps, self.reduction = eps, reduction

    def forward(self, s_users: Tensor, t_users: Tensor, s_items: Tensor, t_items: Tensor, *,
                num_interactions: float | Tensor | None = None) -> Tensor:
        return ftd_loss(torch.cat([s_users, s_items]), torch.cat([t_users, t_items]),
                        eps=self.eps, reduction=self.reduction,
                        num_interactions=num_interactions)


@register("htd")
class HTD(ExpertPair):
    """HTD module: ``alpha * L_TD + (1 - alpha) * L_GA`` with DE-style group assignment.

    ``forward(s_users, t_users, s_items, t_items, *, num_interactions=None)`` on the batch's
    unique users and items (``num_interactions`` for ``reduction="per_interaction"``, which
    divides both terms' sums by it). User groups are ``0..E-1``, item groups ``E..2E-1`` (hard
    argmax of each side's selection net). The assignment experts' temperature anneals over
    ``anneal_epochs=100`` epochs (the reference's TD notebook).
    """

    inputs = "s_users [Bu,d_s], t_users [Bu,d_t], s_items [Bi,d_s], t_items [Bi,d_t] (unique)"

    def __init__(self, student_dim: int, teacher_dim: int, num_experts: int = 30,
                 alpha: float = 0.5, level: str = "pp", eps: float = 1e-8,
                 positive_mask: bool = False, detach_prototypes: bool = False,
                 t_start: float = 1.0, t_end: float = 1e-10, reduction: str = "sum",
                 anneal_epochs: int | None = 100, expert_path: str = "auto") -> None:
        super().__init__(student_dim, teacher_dim, num_experts, t_start=t_start, t_end=t_end,
                         reduction=reduction, anneal_epochs=anneal_epochs,
                         expert_path=expert_path)
        self.num_experts, self.alpha, self.level, self.eps = num_experts, alpha, level, eps
        self.positive_mask, self.detach_prototypes = positive_mask, detach_prototypes

    def forward(self, s_users: Tensor, t_users: Tensor, s_items: Tensor, t_items: Tensor, *,
                num_interactions: float | Tensor | None = None) -> Tensor:
        # both terms reduce alike (the DE term used to always sum)
        ga = self.assignment_loss(s_users, t_users, s_items, t_items,
                                  num_interactions=num_interactions)
        groups = torch.cat([self.users.assign(t_users),
                            self.items.assign(t_items) + self.num_experts])
        td = htd_loss(torch.cat([s_users, s_items]), torch.cat([t_users, t_items]), groups,
                      num_groups=2 * self.num_experts, level=self.level, eps=self.eps,
                      positive_mask=self.positive_mask,
                      detach_prototypes=self.detach_prototypes, reduction=self.reduction,
                      num_interactions=num_interactions)
        return self.alpha * td + (1 - self.alpha) * ga
