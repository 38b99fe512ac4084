r"""Divergences between a student's and a teacher's relation graph on the same EdgeSet.

All take per-edge values ``w_s``, ``w_t`` ``[E]`` computed on one shared EdgeSet (so the two
graphs are compared edge by edge) and end with an explicit reduction:

===============  ==========================================================================
``reduction``    result
===============  ==========================================================================
``"mean"``       mean over the reduced units (rows for row divergences, edges for edge ones);
                 empty rows do not count
``"sum"``        sum over the units
``"graph"``      mean within each graph (``edges.batch``), then mean over graphs, so every
                 graph weighs the same whatever its size
``"none"``       the per-unit values (``[R]`` or ``[E]``)
===============  ==========================================================================

float16 / bfloat16 inputs are computed in float32 and the result is returned in their dtype
(:func:`graphkd._checks.full_precision`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import full_precision
from graphkd.graphs import EdgeSet
from graphkd.kernels import edge_kernel
from graphkd.ops import row_log_softmax, row_logsumexp, row_sum

__all__ = ["REDUCTIONS", "reduce", "row_kl", "edge_mse", "edge_huber", "info_nce"]

REDUCTIONS = ("mean", "sum", "graph", "none")


@full_precision
def reduce(values: Tensor, reduction: str, *, group: Tensor | None = None,
           num_groups: int = 1, valid: Tensor | None = None) -> Tensor:
    """Reduce per-unit ``values`` ``[U]``.

    Args:
        values: per-unit losses.
        reduction: one of :data:`REDUCTIONS`.
        group: ``[U]`` graph id of each unit (needed for ``"graph"``).
        num_groups: number of graphs.
        valid: optional ``[U]`` bool mask of units that count (e.g. non-empty rows).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {REDUCTIONS}.")
    if reduction == "none":
        return values
    if valid is None and reduction == "mean":
        return values.mean()
    if valid is None and reduction == "sum":
        return values.sum()
    weight = values.new_ones(values.shape) if valid is None else valid.to(values.dtype)
    if reduction == "sum":
        return (values * weight).sum()
    if reduction == "mean":
        return (values * weight).sum() / weight.sum().clamp_min(1.0)
    if group is None:
        raise ValueError("reduction='graph' needs graph ids: build the EdgeSet with `batch`.")
    total = values.new_zeros(num_groups).index_add(0, group, values * weight)
    count = values.new_zeros(num_groups).index_add(0, group, weight)
    has = (count > 0).to(values.dtype)
    return (total / count.clamp_min(1.0) * has).sum() / has.sum().clamp_min(1.0)


def _check_pair(w_s: Tensor, w_t: Tensor, edges: EdgeSet | None) -> None:
    if w_s.shape != w_t.shape:
        raise ValueError(
            f"student and teacher edge values differ in shape: {tuple(w_s.shape)} vs "
            f"{tuple(w_t.shape)}; evaluate both kernels on the same EdgeSet."
        )
    if edges is not None and w_s.shape[0] != edges.num_edges:
        raise ValueError(f"{w_s.shape[0]} edge values for an EdgeSet of {edges.num_edges} edges.")


@full_precision
def row_kl(
    w_s: Tensor, w_t: Tensor, edges: EdgeSet, *, tau: float = 1.0, reduction: str = "mean",
) -> Tensor:
    r"""Per-row KL divergence between the teacher's and the student's neighbour distributions.

    .. math::
        P^X_r(e) = \mathrm{softmax}_{e \in r}(w^X_e / \tau), \qquad
        \ell_r = \sum_{e \in r} P^T_r(e) \,(\log P^T_r(e) - \log P^S_r(e))

    Computed from log-softmaxes (no ``log`` of a probability). Units: rows; empty rows are
    excluded from ``"mean"`` and ``"graph"``.

    Args:
        w_s, w_t: ``[E]`` student / teacher logits on the edges.
        edges: the shared EdgeSet.
        tau: temperature.
        reduction: see the module docstring.
    """
    _check_pair(w_s, w_t, edges)
    if tau != 1.0:
        w_s, w_t = w_s / tau, w_t / tau
    log_ps = row_log_softmax(w_s, edges)
    log_pt = row_log_softmax(w_t, edges)
    per_row = row_sum(log_pt.exp() * (log_pt - log_ps), edges)
    return reduce(per_row, reduction, group=edges.batch, num_groups=edges.num_graphs,
                  valid=edges.counts > 0)


def _edge_reduce(per_edge: Tensor, edges: EdgeSet | None, reduction: str) -> Tensor:
    group = None if edges is None or edges.batch is None else edges.batch.index_select(
        0, edges.row)
    return reduce(per_edge, reduction, group=group,
                  num_groups=1 if edges is None else edges.num_graphs)


@full_precision
def edge_mse(
    w_s: Tensor, w_t: Tensor, edges: EdgeSet | None = None, *, reduction: str = "mean",
) -> Tensor:
    r"""Squared error per edge, :math:`\ell_e = (w^S_e - w^T_e)^2`. Units: edges."""
    _check_pair(w_s, w_t, edges)
    if reduction in ("mean", "sum", "none"):  # fused kernel, fewer [E] temporaries
        return F.mse_loss(w_s, w_t, reduction=reduction)
    return _edge_reduce((w_s - w_t) ** 2, edges, reduction)


@full_precision
def edge_huber(
    w_s: Tensor, w_t: Tensor, edges: EdgeSet | None = None, *, delta: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Huber (smooth-L1) error per edge, as ``F.smooth_l1_loss(beta=delta)``. Units: edges.

    .. math:: \ell_e = \begin{cases} \tfrac12 d^2/\delta & |d| < \delta \\
        |d| - \tfrac12\delta & \text{otherwise}\end{cases},\quad d = w^S_e - w^T_e
    """
    _check_pair(w_s, w_t, edges)
    if reduction in ("mean", "sum", "none"):
        return F.smooth_l1_loss(w_s, w_t, reduction=reduction, beta=delta)
    per_edge = F.smooth_l1_loss(w_s, w_t, reduction="none", beta=delta)
    return _edge_reduce(per_edge, edges, reduction)


@full_precision
def info_nce(
    z_s: Tensor, z_t: Tensor, *, tau: float = 0.07, negatives: EdgeSet | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""InfoNCE of student anchors against teacher keys; the positive of ``i`` is ``i``.

    .. math::
        \ell_i = -\log \frac{\exp(z^S_i \cdot z^T_i / \tau)}
                            {\sum_{j \in \mathcal{N}(i) \cup \{i\}} \exp(z^S_i \cdot z^T_j / \tau)}

    With ``negatives=None`` the denominator runs over all ``j`` (one ``[N, N]`` matmul +
    cross-entropy). Otherwise ``negatives`` (``N x N``, rows = anchors) lists the negative keys
    of each anchor; the positive is always added, so the edge set should not contain ``(i, i)``.
    Inputs are used as given: normalise them first for a cosine similarity.

    Args:
        z_s: ``[N, D]`` student embeddings (anchors).
        z_t: ``[N, D]`` teacher embeddings (keys).
        tau: temperature.
        negatives: optional EdgeSet of negatives.
        reduction: over anchors.
    """
    if z_s.shape != z_t.shape:
        raise ValueError(f"z_s {tuple(z_s.shape)} and z_t {tuple(z_t.shape)} must match.")
    if negatives is None:
        logits = (z_s * (1.0 / tau)) @ z_t.T  # scale the [N, D] anchors, not the [N, N] logits
        target = torch.arange(z_s.shape[0], device=z_s.device)
        per_row = F.cross_entropy(logits, target, reduction="none")
        return reduce(per_row, reduction)
    pos = (z_s * z_t).sum(-1) / tau
    neg = edge_kernel(z_s * (1.0 / tau), negatives, "dot", x_cols=z_t, check=False)
    lse = torch.logaddexp(row_logsumexp(neg, negatives), pos)
    return reduce(lse - pos, reduction, group=negatives.batch, num_groups=negatives.num_graphs)
