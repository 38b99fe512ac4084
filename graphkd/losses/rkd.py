r"""Relational KD (Park et al., CVPR 2019): distance and angle relations of a batch.

.. math::
    L = w_D\,\frac{1}{B^2}\sum_{i \ne j}\mathrm{Huber}_\delta(\psi^S_D - \psi^T_D)
      + w_A\,\frac{1}{B^3}\sum_{j,i,k}\mathrm{Huber}_\delta(\psi^S_A - \psi^T_A)

with :math:`\psi_D(i, j) = \|x_i - x_j\| / \mu` (mean-normalised distances) and
:math:`\psi_A(i, j, k) = \langle e_{ji}, e_{jk}\rangle` (cosines of the angle at anchor ``j``).
A member of the relation family (:mod:`graphkd.losses.relation`, which re-exports every name
here); it has its own module because the angle term is computed by chunked autograd functions
(:class:`_RKDAngleGram`, from the ``B x B`` Gram; :class:`_RKDAngleSum`, from direct differences,
kept as the tests' check) that never materialise the reference's ``B x B x D`` tensor.

Example:
    >>> rkd_loss(torch.randn(16, 8), torch.randn(16, 32)).shape
    torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from graphkd._checks import full_precision
from graphkd.divergences import edge_huber
from graphkd.kernels import offdiagonal, pairwise_kernel
from graphkd.losses._common import flat_pair, positive
from graphkd.losses.base import DistillLoss, register

__all__ = ["RKD_CHUNK_ELEMENTS", "rkd_distance_loss", "rkd_angle_loss", "rkd_loss", "RKD"]

#: Default element budget of one RKD angle chunk: ``chunk * B * (B + D)`` entries.
RKD_CHUNK_ELEMENTS = 1 << 21


def _rkd_distance(s: Tensor, t: Tensor, delta: float, eps: float) -> Tensor:
    b = s.shape[0]
    d_s = offdiagonal(pairwise_kernel(s, kernel="l2", eps=eps)).reshape(-1)
    d_t = offdiagonal(pairwise_kernel(t, kernel="l2", eps=eps)).reshape(-1)
    return edge_huber(d_s / d_s.mean(), d_t / d_t.mean(), delta=delta, reduction="sum") / b**2


@full_precision
def rkd_distance_loss(
    f_s: Tensor, f_t: Tensor, *, delta: float = 1.0, eps: float = 1e-12,
) -> Tensor:
    r"""RKD distance term: Huber between mean-normalised pairwise distances.

    .. math::
        \psi_D(i, j) = \|x_i - x_j\| / \mu, \quad
        \mu = \tfrac{1}{B(B-1)} \sum_{i \ne j} \|x_i - x_j\|, \quad
        L_D = \tfrac{1}{B^2} \sum_{i \ne j} \mathrm{Huber}_\delta(\psi^S_D - \psi^T_D)

    The distances are :math:`\sqrt{\max(\|x_i - x_j\|^2, \epsilon)}` (the reference's
    ``pdist``) and :math:`\mu` averages the off-diagonal pairs selected by a reshape
    (:func:`~graphkd.kernels.offdiagonal`), never by ``d > 0``. The ``1/B^2`` matches the
    reference, which averages over the full ``B x B`` matrix whose diagonal is zero for both.

    Args:
        f_s, f_t: ``[B, *]`` student / teacher features, ``B >= 2``.
        delta: Huber threshold (``smooth_l1``'s ``beta``).
        eps: clamp of the squared distance.
    """
    s, t = flat_pair(f_s, f_t, "rkd", min_rows=2)
    positive(delta, "delta")
    return _rkd_distance(s, t, delta, eps)


def _stack_padded(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``[2, B, D]``: student and teacher, the narrower zero-padded (distances and dot products
    are unchanged), so that every chunk op runs once for both."""
    d = max(f_s.shape[1], f_t.shape[1])
    return torch.stack((F.pad(f_s, (0, d - f_s.shape[1])), F.pad(f_t, (0, d - f_t.shape[1]))))


def _inverse_norms(f2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``1 / max(||x_i - x_j||, eps)`` ``[2, B, B]`` and the mask ``||x_i - x_j|| > eps``.

    Distances by direct differences (no matmul), so a zero difference is exactly 0."""
    n = torch.cdist(f2, f2, compute_mode="donot_use_mm_for_euclid_dist")
    return n.clamp_min(eps).reciprocal_(), n > eps


def _unit_differences(f2: Tensor, rinv_a: Tensor, j0: int, j1: int, out: Tensor) -> Tensor:
    """``E[j, :, i] = (x_i - x_j) / max(||x_i - x_j||, eps)`` for anchors ``j0 <= j < j1``,
    ``[c, 2, B, D]``, written into ``out``. Zero differences (``i == j``, duplicates) give ``0``,
    as ``F.normalize``. ``rinv_a`` is the anchor-major ``[B, 2, B]`` inverse distance."""
    e = torch.sub(f2.unsqueeze(0), f2.transpose(0, 1)[j0:j1].unsqueeze(2), out=out[: j1 - j0])
    return e.mul_(rinv_a[j0:j1].unsqueeze(-1))


class _RKDAngleSum(torch.autograd.Function):
    r""":math:`\sum_{j,i,k} \mathrm{Huber}_\delta(\langle e^S_{ji}, e^S_{jk}\rangle -
    \langle e^T_{ji}, e^T_{jk}\rangle)`, chunked over anchors ``j`` in forward *and* backward.

    Nothing of size ``B^3`` or ``B^2 D`` is kept for backward (only the inputs): the backward
    recomputes each chunk's unit differences ``E_j`` and Grams ``E_j E_j^T`` and applies the
    hand-derived gradient

    .. math::
        G_j = \mathrm{clip}((A^S_j - A^T_j)/\delta, -1, 1), \quad
        \partial E_j = 2 G_j E_j, \quad
        \partial v_{ji} = (\partial e_{ji} - e_{ji}\langle e_{ji}, \partial e_{ji}\rangle)
                          / \|v_{ji}\|,

    then scatters :math:`\partial v_{ji}` to :math:`+x_i` and :math:`-x_j`. At a zero difference
    (a non-differentiable point) the zero subgradient is used; the reference's ``F.normalize``
    would give a gradient scaled by ``1/eps`` there. Student and teacher are stacked (the
    narrower zero-padded) so each chunk costs a handful of batched ops, written into buffers
    allocated once (anchor-major ``[c, 2, B, *]`` layout), so the loop does not churn memory.
    """

    @staticmethod
    def forward(ctx, f_s: Tensor, f_t: Tensor, chunk: int, delta: float, eps: float) -> Tensor:
        f2 = _stack_padded(f_s, f_t)
        rinv_a = _inverse_norms(f2, eps)[0].transpose(0, 1)
        b, d = f2.shape[1:]
        e_buf = f2.new_empty(chunk, 2, b, d)
        a_buf = f2.new_empty(chunk, 2, b, b)
        total = f2.new_zeros(())
        for j0 in range(0, b, chunk):
            j1 = min(j0 + chunk, b)
            e = _unit_differences(f2, rinv_a, j0, j1, e_buf)
            a = torch.matmul(e, e.transpose(-1, -2), out=a_buf[: j1 - j0])
            total += F.smooth_l1_loss(a[:, 0], a[:, 1], reduction="sum", beta=delta)
        ctx.save_for_backward(f_s, f_t)
        ctx.conf = (chunk, delta, eps)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        f_s, f_t = ctx.saved_tensors
        chunk, delta, eps = ctx.conf
        sides = [k for k in (0, 1) if ctx.needs_input_grad[k]]
        lo, hi = sides[0], sides[-1] + 1
        n = hi - lo
        f2 = _stack_padded(f_s, f_t)
        rinv, mask = _inverse_norms(f2, eps)
        # d/dv of e = v * rinv, masked at zero differences; the teacher enters with a minus.
        sign = f2.new_tensor([1.0, -1.0]).view(2, 1, 1)
        weight_a = (rinv * mask * sign)[lo:hi].transpose(0, 1)  # [B, n, B]
        rinv_a = rinv.transpose(0, 1)
        b, d = f2.shape[1:]
        e_buf = f2.new_empty(chunk, 2, b, d)
        a_buf = f2.new_empty(chunk, 2, b, b)
        g_buf = f2.new_empty(chunk, b, b)
        dv_buf = f2.new_empty(chunk, n, b, d)
        # the product e * dE reuses the Gram buffer (dead by then) when it fits
        p_buf = (a_buf.view(-1)[: dv_buf.numel()].view(dv_buf.shape)
                 if a_buf.numel() >= dv_buf.numel() else torch.empty_like(dv_buf))
        cols = f2.new_zeros(n, b, d)
        rows = f2.new_zeros(b, n, d)
        scale = 2.0 * grad_out / delta
        for j0 in range(0, b, chunk):
            j1 = min(j0 + chunk, b)
            c = j1 - j0
            e = _unit_differences(f2, rinv_a, j0, j1, e_buf)
            a = torch.matmul(e, e.transpose(-1, -2), out=a_buf[:c])
            # dHuber/dA_s = clip((A_s - A_t)/delta, -1, 1); the Gram's symmetry gives the 2.
            g = torch.sub(a[:, 0], a[:, 1], out=g_buf[:c]).clamp_(-delta, delta).mul_(scale)
            e = e[:, lo:hi]
            dv = torch.matmul(g.unsqueeze(1), e, out=dv_buf[:c])  # dL/dE, then dL/dv in place
            proj = torch.mul(e, dv, out=p_buf[:c]).sum(-1, keepdim=True)
            dv.addcmul_(e, proj, value=-1.0).mul_(weight_a[j0:j1].unsqueeze(-1))
            cols += dv.sum(0)
            torch.sum(dv, dim=2, out=rows[j0:j1])
        grads = cols.sub_(rows.transpose(0, 1))
        out: list[Tensor | None] = [None, None]
        for k in sides:
            out[k] = grads[k - lo, :, : (f_s, f_t)[k].shape[1]]
        return out[0], out[1], None, None, None


def _gram_inputs(s: Tensor, t: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The Gram path's inputs: centred features ``xs, xt`` in float64 (differentiable), their
    Grams ``[2, B, B]`` and the inverse pair distances ``r[s, j, i] = 1 / ||x_i - x_j||``
    ``[2, B, B]`` (0 where the difference is exactly 0: the diagonal and duplicate samples,
    as ``F.normalize``).

    Precision: ``<x_i - x_j, x_k - x_j>`` from the Gram cancels to an absolute error of about
    ``eps * max ||x - mean||^2``, so the Gram path computes in float64 whatever the inputs'
    dtype (centring, also in float64, removes the batch's offset from that bound); the
    distances are direct differences in the inputs' dtype, so exact duplicates give exactly 0.
    For float32 features the angles are then at least as accurate as the direct float32 path
    unless two samples are closer than ~1e-4 of the batch's spread. Nothing here depends on the
    data (no host synchronisation)."""
    with torch.no_grad():
        n = torch.stack([torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
                         for x in (s.detach(), t.detach())])
        r = n.clamp_min(eps).reciprocal_().mul_(n > eps).double()
        del n
    s64, t64 = s.double(), t.double()
    xs, xt = s64 - s64.mean(0, keepdim=True), t64 - t64.mean(0, keepdim=True)
    with torch.no_grad():
        g = torch.stack((xs @ xs.T, xt @ xt.T))
    return xs, xt, g, r


def _gram_angles(g: Tensor, r_a: Tensor, j0: int, j1: int, out: Tensor) -> Tensor:
    """``A[j, s, i, k] = (G_ik - G_ij - G_jk + G_jj) r_ji r_jk`` for anchors ``j0 <= j < j1``,
    ``[c, 2, B, B]`` into ``out`` (``r_a`` anchor-major ``[B, 2, B]``)."""
    g_a = g[:, j0:j1].transpose(0, 1)  # [c, 2, B]: G_ji
    g_jj = g.diagonal(dim1=1, dim2=2)[:, j0:j1].transpose(0, 1).unsqueeze(-1)
    u = g_a - 0.5 * g_jj  # G_ji - G_jj / 2, so that G_ik - u_ji - u_jk is the dot product
    r = r_a[j0:j1]
    a = torch.sub(g.unsqueeze(0), u.unsqueeze(-1), out=out[: j1 - j0])
    a.sub_(u.unsqueeze(-2))
    return a.mul_(r.unsqueeze(-1)).mul_(r.unsqueeze(-2))


class _RKDAngleGram(torch.autograd.Function):
    r"""The RKD angle sum of :class:`_RKDAngleSum` formed from the ``B x B`` Grams:
    :math:`\langle x_i - x_j, x_k - x_j\rangle = G_{ik} - G_{ij} - G_{jk} + G_{jj}`, scaled by
    the inverse pair distances ``r``. ``O(B^2 D + B^3)`` work instead of ``O(B^3 D)``; chunked
    over anchors in forward and (recomputed) in backward, saving only ``[2, B, B]`` tensors.

    Backward with :math:`P_j = \mathrm{clip}(A^S_j - A^T_j, \pm\delta)/\delta` (teacher: minus):
    :math:`Q_j = P_j \circ r_j r_j^\top` gives
    :math:`\partial G = \sum_j Q_j - 2 S + \mathrm{diag}(S\mathbf 1)` with
    :math:`S_{ji} = \sum_k Q_{jik}`, and the distances
    :math:`\partial n_{ji} = -2 r_{ji} \sum_k P_{jik} A_{jik}` enter :math:`\partial G` as
    :math:`n_{ji}^2 = G_{ii} + G_{jj} - 2 G_{ij}`; then :math:`\partial X = (M + M^\top) X_c`.
    """

    @staticmethod
    def forward(ctx, xs: Tensor, xt: Tensor, g: Tensor, r: Tensor, chunk: int, delta: float
                ) -> Tensor:
        b = g.shape[-1]
        r_a = r.transpose(0, 1)
        a_buf = g.new_empty(chunk, 2, b, b)
        total = g.new_zeros(())
        for j0 in range(0, b, chunk):
            j1 = min(j0 + chunk, b)
            a = _gram_angles(g, r_a, j0, j1, a_buf)
            total += F.smooth_l1_loss(a[:, 0], a[:, 1], reduction="sum", beta=delta)
        ctx.save_for_backward(xs, xt, g, r)
        ctx.conf = (chunk, delta)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xs, xt, g, r = ctx.saved_tensors
        chunk, delta = ctx.conf
        sides = [k for k in (0, 1) if ctx.needs_input_grad[k]]
        lo, hi = sides[0], sides[-1] + 1
        b = g.shape[-1]
        r_a = r.transpose(0, 1)
        a_buf = g.new_empty(chunk, 2, b, b)
        p_buf = g.new_empty(chunk, hi - lo, b, b)
        d_sum = g.new_zeros(hi - lo, b, b)  # sum_j Q_j
        s_rows = g.new_empty(b, hi - lo, b)  # S[j, s, i]
        t_rows = g.new_empty(b, hi - lo, b)  # sum_k P A
        scale = grad_out / delta
        for j0 in range(0, b, chunk):
            j1 = min(j0 + chunk, b)
            c = j1 - j0
            a = _gram_angles(g, r_a, j0, j1, a_buf)
            p = torch.sub(a[:, 0], a[:, 1], out=p_buf[:c, 0]).clamp_(-delta, delta).mul_(scale)
            if hi - lo == 2:
                torch.neg(p, out=p_buf[:c, 1])
            elif lo == 1:
                p.neg_()
            p = p_buf[:c]
            a = a[:, lo:hi]
            torch.sum(a.mul_(p), dim=-1, out=t_rows[j0:j1])
            rj = r_a[j0:j1, lo:hi]
            q = p.mul_(rj.unsqueeze(-1)).mul_(rj.unsqueeze(-2))
            d_sum += q.sum(0)
            torch.sum(q, dim=-1, out=s_rows[j0:j1])
        s = s_rows.transpose(0, 1)  # [n, j, i]
        cn = t_rows.transpose(0, 1).mul_(r[lo:hi]).mul_(r[lo:hi]).mul_(-2.0)  # C = dn * r
        m = d_sum.sub_(s, alpha=2.0).sub_(cn)
        diag = m.diagonal(dim1=1, dim2=2)
        diag += s.sum(-1) + 0.5 * (cn.sum(-1) + cn.sum(-2))
        out: list[Tensor | None] = [None, None]
        for k in sides:
            mk = m[k - lo]
            x = (xs, xt)[k]
            out[k] = (mk + mk.T) @ x  # the centring's backward is autograd's
        return out[0], out[1], None, None, None, None


def _rkd_gram_chunk(b: int, chunk_size: int | None) -> int:
    """Anchors per chunk of the Gram path: ``chunk * B^2 <= 2**18`` (its float64 ``[c, 2, B,
    B]`` buffers then take at most the bytes of the direct float32 path's ``[c, 2, B, B + D]``)."""
    if chunk_size is None:
        return max(1, min(b, (RKD_CHUNK_ELEMENTS // 8) // (b * b)))
    return _rkd_chunk(b, 0, chunk_size)


def _rkd_chunk(b: int, d: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, min(b, RKD_CHUNK_ELEMENTS // (b * (b + d))))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
    return min(chunk_size, b)


@full_precision
def rkd_angle_loss(
    f_s: Tensor, f_t: Tensor, *, delta: float = 1.0, chunk_size: int | None = None,
    eps: float = 1e-12,
) -> Tensor:
    r"""RKD angle term, without the reference's ``B x B x D`` tensor.

    .. math::
        \psi_A(i, j, k) = \langle e_{ji}, e_{jk} \rangle, \quad
        e_{ji} = \frac{x_i - x_j}{\max(\|x_i - x_j\|, \epsilon)}, \quad
        L_A = \frac{1}{B^3} \sum_{j,i,k} \mathrm{Huber}_\delta(\psi^S_A - \psi^T_A)

    The angles come from the ``B x B`` Gram of the centred features (:class:`_RKDAngleGram`):
    :math:`\langle x_i - x_j, x_k - x_j\rangle = G_{ik} - G_{ij} - G_{jk} + G_{jj}`, scaled by
    the inverse pair distances, ``O(B^2 D + B^3)`` work, chunked over anchors in forward and
    (recomputed) in backward, memory ``O(chunk * B^2)`` instead of the reference's
    ``O(B^3 + B^2 D)`` (RepDistiller ``RKD.py``). The Gram form is computed in float64 (its
    cancellation costs ``eps * ||x - mean||^2``, see :func:`_gram_inputs`): for float32
    features it matches the direct float32 computation unless two samples lie closer than
    ~1e-4 of the batch's spread; the loss is returned in the features' dtype. Values equal the
    reference's, including ``e = 0`` for ``i == j`` and for duplicate samples. Measured on CPU
    (float32, D=128, forward + backward, one thread, issue 17, whole ``rkd_loss``): ~0.9x the
    reference's time at B=32, ~0.5x at B=64, ~0.15-0.2x at B=256-512, and below the direct
    path's peak memory (``benchmarks/results/perf_limits.md``). The earlier direct
    path (:class:`_RKDAngleSum`, per anchor the Gram of the unit differences, ``O(B^3 D)``) is
    kept as the tests' independent check.

    Args:
        f_s, f_t: ``[B, *]`` student / teacher features (flattened; widths may differ),
            ``B >= 2``.
        delta: Huber threshold.
        chunk_size: anchors per chunk; ``None`` picks the largest chunk with
            ``chunk * B^2 <= 2**18``.
        eps: the ``F.normalize`` clamp.
    """
    s, t = flat_pair(f_s, f_t, "rkd", min_rows=2)
    positive(delta, "delta")
    return _rkd_angle(s, t, delta, chunk_size, eps)


def _rkd_angle(s: Tensor, t: Tensor, delta: float, chunk_size: int | None, eps: float) -> Tensor:
    b = s.shape[0]
    if t.dtype != s.dtype:  # distances in the student's dtype (the Gram is float64 anyway)
        t = t.to(s.dtype)
    xs, xt, g, r = _gram_inputs(s, t, eps)
    chunk = _rkd_gram_chunk(b, chunk_size)
    return (_RKDAngleGram.apply(xs, xt, g, r, chunk, float(delta)) / b**3).to(s.dtype)


@full_precision
def rkd_loss(
    f_s: Tensor, f_t: Tensor, *, w_dist: float = 25.0, w_angle: float = 50.0,
    delta: float = 1.0, chunk_size: int | None = None,
) -> Tensor:
    r"""Relational KD (Park et al., CVPR 2019): ``w_dist * L_D + w_angle * L_A``.

    See :func:`rkd_distance_loss` and :func:`rkd_angle_loss`; the weights 25 / 50 are the
    paper's and RepDistiller's. A batch of one sample has no pairs: ``B < 2`` raises
    ``ValueError``. With ``B == 2`` both relations are fixed (``psi_D = 1``, angles in
    ``{0, 1}``) and the loss is 0.

    Args:
        f_s: ``[B, *]`` student features.
        f_t: ``[B, *]`` teacher features (width may differ).
        w_dist, w_angle: term weights (0 skips a term).
        delta: Huber threshold of both terms.
        chunk_size: anchors per angle chunk (see :func:`rkd_angle_loss`).

    Example:
        >>> rkd_loss(torch.randn(16, 8), torch.randn(16, 32)).shape
        torch.Size([])
    """
    s, t = flat_pair(f_s, f_t, "rkd", min_rows=2)
    positive(delta, "delta")
    loss = s.new_zeros(())
    if w_dist:
        loss = loss + w_dist * _rkd_distance(s, t, delta, 1e-12)
    if w_angle:
        loss = loss + w_angle * _rkd_angle(s, t, delta, chunk_size, 1e-12)
    return loss


@register("rkd")
class RKD(DistillLoss):
    """Relational KD, see :func:`rkd_loss`.

    Args:
        w_dist: weight of the distance term (25).
        w_angle: weight of the angle term (50).
        delta: Huber threshold.
        chunk_size: anchors per angle chunk (``None``: automatic).
    """

    level = "batch"
    family = "relation"
    global_batch = True

    def __init__(self, w_dist: float = 25.0, w_angle: float = 50.0, delta: float = 1.0,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        positive(delta, "delta")
        self.w_dist, self.w_angle, self.delta, self.chunk_size = w_dist, w_angle, delta, chunk_size

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return rkd_loss(f_s, f_t, w_dist=self.w_dist, w_angle=self.w_angle, delta=self.delta,
                        chunk_size=self.chunk_size)
