r"""Similarity kernels evaluated on the edges of an :class:`~graphkd.graphs.EdgeSet`.

For an edge ``e = (r, c)`` the kernel value is :math:`w_e = \kappa(a_r, b_c)` with ``a`` the row
features and ``b`` the column features (``b = a`` unless a bipartite ``x_cols`` is given).

=================  =========================================================  ===============
name               :math:`\kappa(a, b)`                                        parameters
=================  =========================================================  ===============
``dot``            :math:`a^\top b`
``cosine``         :math:`a^\top b / (\max(\|a\|,\epsilon) \max(\|b\|,\epsilon))`  ``eps=1e-8``
``poly``           :math:`(a^\top b + c)^d`                                     ``degree=2, coef=1``
``rbf``            :math:`\exp(-\gamma \|a - b\|_2^2)`                          ``gamma=0.5``
``l2``             :math:`\|a - b\|_2` (:math:`\sqrt{\max(d^2, \epsilon)}`)    ``eps=1e-12``
``l2sq``           :math:`\|a - b\|_2^2`
``l1``             :math:`\|a - b\|_1`
``gaussian_l1``    :math:`\exp(-\|a - b\|_1 / s)` (LSP's original kernel)      ``scale=100``
=================  =========================================================  ===============

Paths: a dense EdgeSet evaluates the full ``[R, C]`` kernel matrix with one matmul
(:func:`pairwise_kernel`) and drops the diagonal by a reshape when ``loop=False``; a graph whose
edges stay inside blocks of ``block_size`` consecutive nodes (kNN graphs of a batch of
equal-size point clouds, and their unions) evaluates each block's ``[P, P]`` kernel with one
batched matmul and picks its edges, when that is cheaper than a gather (``2 R P <= E D``);
other graphs gather the edges' features in chunks of edges with a fused autograd function
(:class:`_EdgeReduce`: the per-edge reduction ``sum|a - b|``, ``sum (a - b)^2`` or ``a . b``, then
the kernel's outer function on ``[E]``), so that no ``[E, D]`` tensor is allocated or saved for
backward, which regathers each chunk (a regular graph reads its row features as a broadcast
view, without a gather).

Precision: float16 / bfloat16 features are evaluated in float32 (autocast off) and the values
are returned in the features' dtype (:func:`graphkd._checks.full_precision`): distances of
features of size ~100 overflow float16 (``|x|^2 > 65504``).

Example:
    >>> x = torch.randn(5, 8)
    >>> w = edge_kernel(x, EdgeSet.knn(x, k=2), "rbf", gamma=0.5)   # [10]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from graphkd._checks import check_features, full_precision
from graphkd.graphs import EdgeSet

__all__ = ["KERNELS", "edge_kernel", "pairwise_kernel", "offdiagonal", "pairwise_sqdist"]


@full_precision
def pairwise_sqdist(a: Tensor, b: Tensor) -> Tensor:
    r"""``[N, M]`` squared Euclidean distances :math:`\|a_i\|^2 + \|b_j\|^2 - 2 a_i^\top b_j`,
    clamped at 0 (one matmul, no ``[N, M, D]`` tensor). Batched inputs ``[G, N, D]`` give
    ``[G, N, M]``."""
    sq = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2.0 * (a @ b.mT)
    return sq.clamp_min(0.0)


def _edge_sqdist(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b) ** 2).sum(-1)


def _edge_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


@dataclass(frozen=True)
class Kernel:
    """A kernel given by its dense ``pair`` form (``[N,D],[M,D] -> [N,M]``) and its per-edge
    ``edge`` form (broadcasting ``[...,D],[...,D] -> [...]``)."""

    pair: Callable[..., Tensor]
    edge: Callable[..., Tensor]


def _normalize(x: Tensor, eps: float) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


KERNELS: dict[str, Kernel] = {
    "dot": Kernel(lambda a, b: a @ b.mT, _edge_dot),
    "cosine": Kernel(
        lambda a, b, eps=1e-8: _normalize(a, eps) @ _normalize(b, eps).mT,
        lambda a, b, eps=1e-8: _edge_dot(_normalize(a, eps), _normalize(b, eps)),
    ),
    "poly": Kernel(
        lambda a, b, degree=2, coef=1.0: (a @ b.mT + coef) ** degree,
        lambda a, b, degree=2, coef=1.0: (_edge_dot(a, b) + coef) ** degree,
    ),
    "rbf": Kernel(
        lambda a, b, gamma=0.5: torch.exp(-gamma * pairwise_sqdist(a, b)),
        lambda a, b, gamma=0.5: torch.exp(-gamma * _edge_sqdist(a, b)),
    ),
    "l2": Kernel(
        lambda a, b, eps=1e-12: pairwise_sqdist(a, b).clamp_min(eps).sqrt(),
        lambda a, b, eps=1e-12: _edge_sqdist(a, b).clamp_min(eps).sqrt(),
    ),
    "l2sq": Kernel(pairwise_sqdist, _edge_sqdist),
    "l1": Kernel(
        lambda a, b: torch.cdist(a, b, p=1.0),
        lambda a, b: (a - b).abs().sum(-1),
    ),
    "gaussian_l1": Kernel(
        lambda a, b, scale=100.0: torch.exp(-torch.cdist(a, b, p=1.0) / scale),
        lambda a, b, scale=100.0: torch.exp(-(a - b).abs().sum(-1) / scale),
    ),
}



# ----------------------------------------------------------------------------- gathered edges
#: Element budget of one edge chunk (``chunk * D``) of :class:`_EdgeReduce` on CPU; on an
#: accelerator the chunk is larger (fewer launches), still bounded.
EDGE_CHUNK_ELEMENTS = 1 << 18
_EDGE_CHUNK_ELEMENTS_ACCEL = 1 << 24


def _edge_chunk(x: Tensor) -> int:
    budget = EDGE_CHUNK_ELEMENTS if x.device.type == "cpu" else _EDGE_CHUNK_ELEMENTS_ACCEL
    return max(1, budget // max(1, x.shape[1]))


def _elementwise(op: str, a: Tensor, b: Tensor) -> Tensor:
    """``[c, D], [c, D] -> [c, D]`` terms of the reduction, written into ``a`` (a gathered
    temporary)."""
    if op == "dot":
        return a.mul_(b)
    a.sub_(b)
    return a.abs_() if op == "l1" else a.square_()


class _EdgeReduce(torch.autograd.Function):
    r"""``s_e = reduce_d op(a_{row_e}, b_{col_e})`` ``[E]`` with ``op`` one of ``l1``
    (:math:`\sum|a - b|`), ``sq`` (:math:`\sum (a - b)^2`) or ``dot`` (:math:`\sum a b`),
    evaluated over chunks of edges so that at most one ``[chunk, D]`` block of gathered rows
    lives at a time, in forward and in backward (which regathers and scatters the gradient
    with ``index_add_``). Nothing of size ``[E, D]`` is allocated or saved for backward: the
    unfused ``(x[row] - x[col]).abs().sum(-1)`` keeps three such temporaries and saves two.
    ``xc is None``: columns index ``x`` too (one gradient). ``degree > 0`` (a regular graph,
    ``row[e] = e // degree``): the row side is a broadcast view of ``x`` (no gather) and its
    gradient a sum over each row's ``degree`` edges (no scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor, xc: Tensor | None, row: Tensor, col: Tensor, op: str,
                degree: int) -> Tensor:
        b_src = x if xc is None else xc
        e = col.numel()
        out = x.new_empty(e)
        k = max(degree, 1)
        chunk = max(1, _edge_chunk(x) // k) * k
        for e0 in range(0, e, chunk):
            e1 = min(e0 + chunk, e)
            b = b_src.index_select(0, col[e0:e1])
            if degree:  # b - a (or b * a) against the broadcast rows: same |.|, (.)^2, product
                b = b.view(-1, degree, b.shape[-1])
                a = x[e0 // degree: e1 // degree].unsqueeze(1)
                torch.sum(_elementwise(op, b, a), -1, out=out[e0:e1].view(-1, degree))
            else:
                a = x.index_select(0, row[e0:e1])
                torch.sum(_elementwise(op, a, b), -1, out=out[e0:e1])
        ctx.save_for_backward(x, xc, row, col)
        ctx.conf = (op, degree)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, xc, row, col = ctx.saved_tensors
        op, degree = ctx.conf
        same = xc is None
        b_src = x if same else xc
        need_a = ctx.needs_input_grad[0]
        need_b = (not same) and ctx.needs_input_grad[1]
        da = torch.zeros_like(x) if need_a else None
        db = torch.zeros_like(xc) if need_b else None
        if same:
            db = da
        e = col.numel()
        k = max(degree, 1)
        chunk = max(1, _edge_chunk(x) // k) * k
        for e0 in range(0, e, chunk):
            e1 = min(e0 + chunk, e)
            c = col[e0:e1]
            b = b_src.index_select(0, c)
            if degree:
                d_ = b.shape[-1]
                r0, r1 = e0 // degree, e1 // degree
                b = b.view(-1, degree, d_)
                a = x[r0:r1].unsqueeze(1)
                g = grad[e0:e1].view(-1, degree, 1)
                if op == "dot":
                    if db is not None:
                        db.index_add_(0, c, (a * g).view(-1, d_))
                    if da is not None:
                        da[r0:r1] += b.mul_(g).sum(1)
                    continue
                d = b.sub_(a)  # b - a: the column side's derivative direction
                d = d.sign_() if op == "l1" else d.mul_(2.0)
                d.mul_(g)
                if db is not None:
                    db.index_add_(0, c, d.view(-1, d_))
                if da is not None:
                    da[r0:r1] -= d.sum(1)
                continue
            r, g = row[e0:e1], grad[e0:e1].unsqueeze(-1)
            a = x.index_select(0, r)
            if op == "dot":
                if da is not None:
                    da.index_add_(0, r, b.mul_(g))
                if db is not None:
                    db.index_add_(0, c, a.mul_(g))
                continue
            d = a.sub_(b)
            d = d.sign_() if op == "l1" else d.mul_(2.0)
            d.mul_(g)
            if da is not None:
                da.index_add_(0, r, d)
            if db is not None:  # (index_add_ with alpha=-1 takes a slow path on CPU)
                db.index_add_(0, c, d.neg_())
        return (da if need_a else None), (db if need_b else None), None, None, None, None


#: Gathered-edge kernels as ``(reduction, outer)``: ``w_e = outer(s_e)`` with ``s_e`` the
#: :class:`_EdgeReduce` reduction; the outer functions act on ``[E]`` only.
_EDGE_FORMS: dict[str, tuple[str, Callable[..., Tensor]]] = {
    "dot": ("dot", lambda s: s),
    "poly": ("dot", lambda s, degree=2, coef=1.0: (s + coef) ** degree),
    "rbf": ("sq", lambda s, gamma=0.5: torch.exp(-gamma * s)),
    "l2": ("sq", lambda s, eps=1e-12: s.clamp_min(eps).sqrt()),
    "l2sq": ("sq", lambda s: s),
    "l1": ("l1", lambda s: s),
    "gaussian_l1": ("l1", lambda s, scale=100.0: torch.exp(-s / scale)),
}


def _gathered_edge_kernel(kernel: str, x: Tensor, xc: Tensor | None, edges: EdgeSet,
                          **params) -> Tensor:
    op, outer = _EDGE_FORMS[kernel]
    degree = edges.degree or 0
    row = edges.col if degree else edges.row  # a regular graph never reads its rows
    return outer(_EdgeReduce.apply(x, xc, row, edges.col, op, degree), **params)


#: Kernels of the difference ``a - b`` whose pair form expands a square: centring a block first
#: removes the float32 cancellation of ``|a|^2 + |b|^2 - 2 a.b`` far from the origin.
_EXPANDED_DISTANCE = frozenset({"l2", "l2sq", "rbf"})


def _get_kernel(name: str) -> Kernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; valid kernels: {sorted(KERNELS)}.") from None


def offdiagonal(m: Tensor) -> Tensor:
    """``[n, n] -> [n, n - 1]``: drop the diagonal of a square matrix by a reshape (no mask).

    Row ``i`` keeps columns ``j != i`` in increasing order, the edge order of
    ``EdgeSet.dense(n, loop=False)``.
    """
    n = m.shape[0]
    return m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


@full_precision
def pairwise_kernel(a: Tensor, b: Tensor | None = None, kernel: str = "dot", **params) -> Tensor:
    """Dense kernel matrix ``[N, M]`` between the rows of ``a`` ``[N, D]`` and ``b`` ``[M, D]``.

    ``b`` defaults to ``a``. See the module table for kernels and parameters.
    """
    return _get_kernel(kernel).pair(a, a if b is None else b, **params)


@full_precision
def edge_kernel(
    x: Tensor, edges: EdgeSet, kernel: str = "dot", *, x_cols: Tensor | None = None,
    check: bool = True, **params,
) -> Tensor:
    """Kernel value on every edge: ``w[e] = kernel(x[row[e]], x_cols[col[e]])``. Shape ``[E]``.

    Args:
        x: ``[R, D]`` row features.
        edges: the EdgeSet (``R`` rows, ``C`` columns).
        kernel: a name from :data:`KERNELS`.
        x_cols: ``[C, D]`` column features for a bipartite graph (default: ``x``).
        check: scan the features for NaN/inf (callers that already validated their inputs
            pass ``False`` to avoid a second pass over them).
        **params: kernel parameters (``gamma``, ``degree``, ``coef``, ``scale``, ``eps``).

    Returns:
        ``[E]`` kernel values in edge order.
    """
    k = _get_kernel(kernel)
    if check:
        check_features(x, "x")
    xc = x if x_cols is None else x_cols
    if x_cols is not None:
        if check:
            check_features(x_cols, "x_cols")
        if x_cols.shape[1] != x.shape[1]:
            raise ValueError(
                f"row features have width {x.shape[1]} but column features {x_cols.shape[1]}; "
                "a bipartite kernel needs equal widths."
            )
    if x.shape[0] != edges.num_rows or xc.shape[0] != edges.num_cols:
        raise ValueError(
            f"features have {x.shape[0]} rows / {xc.shape[0]} columns but the EdgeSet is "
            f"{edges.num_rows} x {edges.num_cols}."
        )
    if kernel == "cosine" and not edges.is_dense:
        # Normalise the R + C feature rows once, not the E gathered pairs.
        eps = params.get("eps", 1e-8)
        x, xc = _normalize(x, eps), (None if x_cols is None else _normalize(xc, eps))
        xc = x if xc is None else xc
        k, params = KERNELS["dot"], {}
    p = edges.block_size
    if p is not None and x_cols is None and not edges.is_dense and (
            2 * x.shape[0] * p <= edges.num_edges * x.shape[1]):
        # Block path (batches of equal-size point clouds): all pairs inside each block with
        # one batched matmul, then pick the E edges, instead of gathering [E, D] features.
        xb = x.view(-1, p, x.shape[1])
        if kernel in _EXPANDED_DISTANCE:
            xb = xb - xb.mean(1, keepdim=True)
        m = k.pair(xb, xb, **params)
        return m.reshape(-1).index_select(0, edges.row * p + edges.col % p)
    if edges.is_dense:
        m = k.pair(x, xc, **params)
        return (m if edges.dense_loop else offdiagonal(m)).reshape(-1)
    # Gathered edges (regular or not): fused, chunked over edges, no [E, D] temporary.
    name = "dot" if k is KERNELS["dot"] else kernel
    return _gathered_edge_kernel(name, x, None if xc is x else xc, edges, **params)


@full_precision
def unit(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Rows scaled to unit L2 norm, with ``eps`` guarding zero rows (``F.normalize``)."""
    return F.normalize(x, dim=-1, eps=eps)
