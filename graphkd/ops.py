r"""Segment ops over the rows of an :class:`~graphkd.graphs.EdgeSet`.

Every op takes per-edge values ``[E]`` (or ``[E, H]`` for ``H`` heads) and reduces or normalises
them within each row. Regular graphs (``edges.degree == K``) take the fast path: a reshape to
``[R, K]`` and one dense op. Irregular graphs use ``scatter_reduce`` / ``index_add`` with the
row index stored in the EdgeSet. Both give identical results (tests check it), are
differentiable, allocate on the input's device and never read values back to the host.

Numerics: softmax / logsumexp subtract the (detached) row maximum, the reverse logcumsumexp is
``torch.logcumsumexp`` on a flipped, ``-inf``-padded view. An empty row has ``logsumexp = -inf``,
``sum = 0`` and ``mean = 0``. float16 / bfloat16 values are reduced and normalised in float32
and returned in their own dtype (:func:`graphkd._checks.full_precision`).

Example:
    >>> e = EdgeSet.from_edge_index(torch.tensor([[1, 2, 0], [0, 0, 1]]), num_nodes=3)
    >>> row_softmax(torch.tensor([0.0, 0.0, 5.0]), e)
    tensor([0.5000, 0.5000, 1.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor

from graphkd._checks import full_precision
from graphkd.graphs import EdgeSet

__all__ = [
    "row_sum",
    "row_mean",
    "row_max",
    "row_logsumexp",
    "row_softmax",
    "row_log_softmax",
    "row_logcumsumexp",
    "gather_rows",
]


def _check_values(values: Tensor, edges: EdgeSet) -> None:
    if values.shape[0] != edges.num_edges:
        raise ValueError(
            f"per-edge values have {values.shape[0]} entries but the EdgeSet has "
            f"{edges.num_edges} edges."
        )


def _row_index(edges: EdgeSet, values: Tensor) -> Tensor:
    """Row index broadcast to ``values``' trailing (head) dimensions."""
    index = edges.row
    for _ in range(values.dim() - 1):
        index = index.unsqueeze(-1)
    return index.expand_as(values)


def gather_rows(per_row: Tensor, edges: EdgeSet) -> Tensor:
    """Broadcast a per-row value ``[R, *]`` to the edges ``[E, *]`` (``per_row[row[e]]``)."""
    if edges.degree is not None:
        k = edges.degree
        return per_row.unsqueeze(1).expand(-1, k, *per_row.shape[1:]).reshape(
            -1, *per_row.shape[1:])
    return per_row.index_select(0, edges.row)


@full_precision
def row_sum(values: Tensor, edges: EdgeSet) -> Tensor:
    r"""Sum of each row's edge values: :math:`y_r = \sum_{e \in r} v_e`. ``[E,*] -> [R,*]``."""
    _check_values(values, edges)
    if edges.degree is not None:
        return edges.regular_view(values).sum(1)
    out = values.new_zeros(edges.num_rows, *values.shape[1:])
    return out.index_add(0, edges.row, values)


@full_precision
def row_mean(values: Tensor, edges: EdgeSet) -> Tensor:
    r"""Mean of each row's edge values (0 for an empty row). ``[E,*] -> [R,*]``."""
    if edges.degree is not None:
        _check_values(values, edges)
        return edges.regular_view(values).mean(1) if edges.degree else values.new_zeros(
            edges.num_rows, *values.shape[1:])
    counts = edges.counts.clamp_min(1).to(values.dtype)
    for _ in range(values.dim() - 1):
        counts = counts.unsqueeze(-1)
    return row_sum(values, edges) / counts


def row_max(values: Tensor, edges: EdgeSet) -> Tensor:
    r"""Maximum of each row's edge values (``-inf`` for an empty row). ``[E,*] -> [R,*]``."""
    _check_values(values, edges)
    if edges.degree is not None:
        if edges.degree == 0:
            return values.new_full((edges.num_rows, *values.shape[1:]), -torch.inf)
        return edges.regular_view(values).amax(1)
    out = values.new_full((edges.num_rows, *values.shape[1:]), -torch.inf)
    return out.scatter_reduce(0, _row_index(edges, values), values, "amax", include_self=True)


@full_precision
def row_logsumexp(values: Tensor, edges: EdgeSet) -> Tensor:
    r"""Stable :math:`\log \sum_{e \in r} \exp(v_e)` per row (``-inf`` if empty).

    ``[E, *] -> [R, *]``.
    """
    if edges.degree is not None:
        _check_values(values, edges)
        return edges.regular_view(values).logsumexp(1)
    m = row_max(values, edges).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = row_sum(torch.exp(values - gather_rows(m, edges)), edges)
    return torch.log(s) + m


@full_precision
def row_log_softmax(values: Tensor, edges: EdgeSet) -> Tensor:
    r"""Row-wise log-softmax: :math:`v_e - \log\sum_{e' \in r} \exp(v_{e'})`. ``[E,*]->[E,*]``."""
    if edges.degree is not None:
        _check_values(values, edges)
        return torch.log_softmax(edges.regular_view(values), dim=1).reshape(values.shape)
    return values - gather_rows(row_logsumexp(values, edges), edges)


@full_precision
def row_softmax(values: Tensor, edges: EdgeSet) -> Tensor:
    r"""Row-wise softmax :math:`p_e = \exp(v_e) / \sum_{e' \in r} \exp(v_{e'})`. ``[E,*]->[E,*]``.

    The same as PyG's ``torch_geometric.utils.softmax(values, index=edges.row)``.
    """
    if edges.degree is not None:
        _check_values(values, edges)
        return torch.softmax(edges.regular_view(values), dim=1).reshape(values.shape)
    m = row_max(values, edges).detach()
    ex = torch.exp(values - gather_rows(m, edges))
    return ex / gather_rows(row_sum(ex, edges), edges)


@full_precision
def row_logcumsumexp(values: Tensor, edges: EdgeSet, *, reverse: bool = True) -> Tensor:
    r"""Per-row cumulative logsumexp along the edge order. ``[E] -> [E]``.

    With ``reverse=True`` (the Plackett-Luce form, edges ordered best first):

    .. math:: y_e = \log \sum_{e' \ge e,\ e' \in r} \exp(v_{e'})

    and with ``reverse=False`` the sum runs over ``e' <= e``. Computed with
    ``torch.logcumsumexp`` (stable), never ``log(exp(v).cumsum())``, which overflows for
    ``v > 88`` in float32. Irregular rows are padded with ``-inf`` to ``[R, K_max]``.
    """
    _check_values(values, edges)
    if values.dim() != 1:
        raise ValueError("row_logcumsumexp takes one value per edge ([E]).")
    padded = edges.to_padded(values, -torch.inf)
    if reverse:
        out = torch.logcumsumexp(padded.flip(1), dim=1).flip(1)
    else:
        out = torch.logcumsumexp(padded, dim=1)
    if edges.degree is not None:
        return out.reshape(-1)
    return out[edges.row, edges.edge_position()]
