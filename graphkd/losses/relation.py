r"""Relation / structured knowledge on dense batch graphs: SP, RKD, PKT, CC and IRG.

The samples of a batch are the nodes of an all-pairs relation graph; each method turns the
teacher's and the student's ``[B, *]`` features (flattened with ``.flatten(1)``) into a
``B x B`` (or, for RKD's angles, ``B x B x B``) relation and compares the two.

=========  ===============================================================================
name       loss
=========  ===============================================================================
``sp``     :math:`\|G_t - G_s\|_F^2 / B^2`, :math:`G = \mathrm{rownorm}_{L2}(F F^\top)`
``rkd``    :math:`25\,\mathrm{Huber}(\psi_D) + 50\,\mathrm{Huber}(\psi_A)` (distance, angle)
``pkt``    :math:`\mathrm{mean}_{ij} P^t_{ij}\log\frac{P^t_{ij}+\epsilon}{P^s_{ij}+\epsilon}`
``cc``     :math:`\|K_s - K_t\|_F / B^2`, :math:`K` a Taylor-expanded Gaussian RBF
``irg``    :math:`\lambda_v L_{vertex} + \lambda_e L_{edge} + \lambda_t L_{transform}`
=========  ===============================================================================

RKD, whose chunked angle term has its own autograd function, lives in
:mod:`graphkd.losses.rkd`; its names are re-exported here (``relation.rkd_loss``,
``relation.RKD``), so the family keeps one import path.

All are invariant to a permutation of the batch (the tests check it). The teacher's features are
constants: every loss detaches them (mutual learning trains each side on the other's detached
features, as :class:`~graphkd.distill.Distiller` does). float16 / bfloat16 features are
computed in float32 and the loss is returned in their dtype. SP and PKT are invariant to the
features' scale and stay so for huge features (exact power-of-two rescaling,
:mod:`graphkd.losses._scale`).

Example:
    >>> f_s, f_t = torch.randn(32, 64), torch.randn(32, 256)
    >>> RKD()(f_s, f_t).shape
    torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_nonempty, check_same_rows, check_same_shape, full_precision
from graphkd.divergences import edge_mse
from graphkd.kernels import pairwise_kernel, pairwise_sqdist
from graphkd.losses._common import flat, flat_pair, positive
from graphkd.losses._scale import rescale_pow2
from graphkd.losses.base import DistillLoss, register
from graphkd.losses.rkd import (  # noqa: F401  (re-exported: one import path for the family)
    RKD,
    RKD_CHUNK_ELEMENTS,
    _rkd_angle,
    _rkd_distance,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
)

__all__ = [
    "sp_similarity",
    "sp_loss",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "rkd_loss",
    "pkt_loss",
    "cc_kernel",
    "cc_loss",
    "irg_loss",
    "SP",
    "RKD",
    "PKT",
    "CC",
    "IRG",
]

# ----------------------------------------------------------------------------- SP
def sp_similarity(f: Tensor, p: float = 2.0) -> Tensor:
    r"""SP's batch similarity :math:`G = \mathrm{rownorm}_{Lp}(F F^\top)`, ``[B, B]``.

    Invariant to the scale of ``f``: features of any magnitude are first divided by a power
    of two (:func:`~graphkd.losses._scale.rescale_pow2`, exact; a no-op below ``2**16``), so
    the ``F F^T`` rows' norm cannot overflow (features of ``~1e12`` gave ``G = 0`` before).

    Args:
        f: ``[B, D]`` flattened features.
        p: norm of the row normalisation (2).
    """
    f = rescale_pow2(f)
    return F.normalize(pairwise_kernel(f, kernel="dot"), p=p, dim=1)


@full_precision
def sp_loss(f_s: Tensor, f_t: Tensor, *, p: float = 2.0) -> Tensor:
    r"""Similarity-preserving KD (Tung & Mori, ICCV 2019).

    .. math:: L = \frac{1}{B^2}\,\| G_t - G_s \|_F^2, \qquad
        G = \mathrm{rownorm}_{L2}(F F^\top)

    As the paper and RepDistiller ``SP.py``: the mean of the squared entries of ``G_t - G_s``
    (an :func:`~graphkd.divergences.edge_mse` on the dense ``B x B`` graph). Reference quirk:
    torchdistill ``SPKDLoss`` calls ``normalize(G, 1)``, whose positional ``1`` is ``p``, i.e.
    an L1 row normalisation; ``p=1`` reproduces it (with ``reduction='batchmean'``).

    Args:
        f_s: ``[B, *]`` student features (flattened).
        f_t: ``[B, *]`` teacher features (flattened; the width may differ).
        p: row-normalisation norm (2 = paper; 1 = torchdistill).

    Returns:
        Scalar loss.

    Example:
        >>> sp_loss(torch.randn(8, 16), torch.randn(8, 32)).shape
        torch.Size([])
    """
    s, t = flat_pair(f_s, f_t, "sp")
    positive(p, "p")
    return edge_mse(sp_similarity(s, p).reshape(-1), sp_similarity(t, p).reshape(-1))


@register("sp")
class SP(DistillLoss):
    """Similarity-preserving KD, see :func:`sp_loss`.

    Args:
        p: row-normalisation norm (2; 1 reproduces torchdistill's ``SPKDLoss``).
    """

    level = "batch"
    family = "relation"
    global_batch = True

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        positive(p, "p")
        self.p = p

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return sp_loss(f_s, f_t, p=self.p)


# ----------------------------------------------------------------------------- PKT
def _pkt_conditional(f: Tensor, eps: float) -> Tensor:
    f = rescale_pow2(f)  # scale-free (up to eps): huge rows must not overflow their norm
    norm = torch.linalg.vector_norm(f, dim=1, keepdim=True)
    sim = pairwise_kernel(f / (norm + eps), kernel="dot")
    sim = (sim + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


@full_precision
def pkt_loss(f_s: Tensor, f_t: Tensor, *, eps: float = 1e-7) -> Tensor:
    r"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), RepDistiller's formula.

    .. math::
        c_{ij} = \frac{1}{2}\Big(1 + \frac{x_i^\top x_j}{(\|x_i\| + \epsilon)
                 (\|x_j\| + \epsilon)}\Big), \quad
        P_{ij} = \frac{c_{ij}}{\sum_k c_{ik}}, \quad
        L = \frac{1}{B^2}\sum_{i,j} P^t_{ij}\log\frac{P^t_{ij} + \epsilon}{P^s_{ij} + \epsilon}

    Exactly RepDistiller ``PKT.py`` / torchdistill ``PKTLoss``: the sums **include the
    diagonal** ``j = i`` (``c_ii = 1``), the mean runs over all ``B^2`` entries, and
    ``eps = 1e-7`` sits both in the normalisation and inside the log.

    Features with ``max |x| >= 2**16`` are first divided by a power of two
    (:func:`~graphkd.losses._scale.rescale_pow2`): the cosine is unchanged and the ``eps``
    negligible at that scale, but the row norms no longer overflow (``~1e30`` gave 0 before).

    Args:
        f_s, f_t: ``[B, *]`` student / teacher features (flattened; widths may differ).
        eps: the reference's epsilon.
    """
    s, t = flat_pair(f_s, f_t, "pkt")
    p_s, p_t = _pkt_conditional(s, eps), _pkt_conditional(t, eps)
    return (p_t * (torch.log(p_t + eps) - torch.log(p_s + eps))).mean()


@register("pkt")
class PKT(DistillLoss):
    """Probabilistic knowledge transfer, see :func:`pkt_loss`.

    Args:
        eps: the reference's epsilon (``1e-7``).
    """

    level = "batch"
    family = "relation"
    global_batch = True

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return pkt_loss(f_s, f_t, eps=self.eps)


# ----------------------------------------------------------------------------- CC
def cc_kernel(f: Tensor, *, gamma: float = 0.4, max_order: int = 2) -> Tensor:
    r"""Gaussian RBF by its ``max_order`` Taylor expansion, ``[B, B]``.

    .. math:: K_{ij} = e^{-2\gamma} \sum_{p=0}^{P} \frac{(2\gamma)^p}{p!} (x_i^\top x_j)^p

    (:math:`e^{-\gamma\|x_i - x_j\|^2} = e^{-2\gamma} e^{2\gamma x_i^\top x_j}` for unit vectors.)
    """
    sim = pairwise_kernel(f, kernel="dot")
    coef = [math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p)
            for p in range(max_order + 1)]
    if max_order == 0:
        return sim * 0.0 + coef[0]
    k = sim * coef[-1] + coef[-2]  # Horner: fewest B x B passes
    for p in range(max_order - 2, -1, -1):
        k = k * sim + coef[p]
    return k


@full_precision
def cc_loss(
    f_s: Tensor, f_t: Tensor, *, gamma: float = 0.4, max_order: int = 2, normalize: bool = False,
) -> Tensor:
    r"""Correlation congruence (Peng et al., ICCV 2019), torchdistill's ``CCKDLoss``.

    .. math:: L = \frac{1}{B^2}\, \| K(F_s) - K(F_t) \|_F

    with :func:`cc_kernel`. This reproduces torchdistill ``losses/mid_level.py`` ``CCKDLoss``
    with ``kernel_config={'type': 'gaussian', 'gamma': 0.4, 'max_p': 2}`` and
    ``reduction='batchmean'``: ``torch.dist(K_s, K_t, 2) / B**2`` — the Frobenius norm, *not*
    squared, of the difference. torchdistill applies it to the outputs of its ``Linear4CCKD``
    embedding heads without normalising them; ``normalize=True`` first scales rows to unit
    length (as the paper's expansion assumes and as Knowledge-Distillation-Zoo's ``cc.py``
    does). RepDistiller's ``CC.py`` (an adjacent-pair shortcut) is not reproduced.

    The norm is taken of the difference scaled by its largest entry (then scaled back), so
    unnormalised embeddings of norm ~1e8, whose kernel entries reach ~1e31, give a finite loss
    and gradient instead of ``inf`` (the squares would overflow float32).

    Args:
        f_s, f_t: ``[B, *]`` student / teacher embeddings (flattened; widths may differ).
        gamma: RBF width (0.4).
        max_order: Taylor order ``P`` (2).
        normalize: L2-normalise rows first.
    """
    s, t = flat_pair(f_s, f_t, "cc")
    if not isinstance(max_order, int) or max_order < 0:
        raise ValueError(f"`max_order` must be an int >= 0, got {max_order!r}.")
    if normalize:
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    diff = cc_kernel(s, gamma=gamma, max_order=max_order) - cc_kernel(
        t, gamma=gamma, max_order=max_order)
    return _frobenius(diff) / s.shape[0] ** 2


def _frobenius(m: Tensor) -> Tensor:
    """``||m||_F`` without overflow: ``a * ||m / a||_F`` with ``a = max |m|`` (detached).

    The plain norm squares the entries: CC kernels of features of norm ~1e8 reach ~1e31, whose
    squares overflow float32 to an ``inf`` loss with a zero gradient.
    """
    a = m.detach().abs().amax().clamp_min(torch.finfo(m.dtype).tiny)
    return torch.linalg.vector_norm(m / a) * a


@register("cc")
class CC(DistillLoss):
    """Correlation congruence, see :func:`cc_loss`.

    Args:
        gamma: RBF width.
        max_order: Taylor order.
        normalize: L2-normalise the embeddings first.
    """

    level = "batch"
    family = "relation"
    global_batch = True

    def __init__(self, gamma: float = 0.4, max_order: int = 2, normalize: bool = False) -> None:
        super().__init__()
        self.gamma, self.max_order, self.normalize = gamma, max_order, normalize

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return cc_loss(f_s, f_t, gamma=self.gamma, max_order=self.max_order,
                       normalize=self.normalize)


# ----------------------------------------------------------------------------- IRG
def _irg_edges(f: Tensor, eps: float) -> Tensor:
    """Squared distances (clamped at ``eps``, zero diagonal), divided by their maximum."""
    d = pairwise_sqdist(f, f).clamp_min(eps)
    d = d * (1.0 - torch.eye(d.shape[0], dtype=d.dtype, device=d.device))
    return d / d.max().clamp_min(eps)


def _irg_match(a: Tensor, b: Tensor, which: str) -> tuple[Tensor, Tensor]:
    """Bring layer ``a`` (earlier) and ``b`` (later) of one sample to the same shape, as the
    reference: average-pool ``a`` to ``b``'s spatial size, average ``b``'s channel pairs when it
    has twice ``a``'s channels."""
    if a.dim() == 4 and b.dim() == 4 and a.shape[2] > b.shape[2]:
        a = F.adaptive_avg_pool2d(a, b.shape[2:])
    if a.dim() >= 2 and b.dim() >= 2 and b.shape[1] == 2 * a.shape[1]:
        b = (b[:, 0::2] + b[:, 1::2]) / 2.0
    a, b = a.flatten(1), b.flatten(1)
    if a.shape != b.shape:
        raise ValueError(
            f"IRG transformation {which}: layers of {a.shape[1]} and {b.shape[1]} values per "
            "sample cannot be compared; pick layers of equal size (or conv maps whose later "
            "layer has 2x the channels and <= the spatial size), or set transform_pairs=()."
        )
    return a, b


def _irg_transform(a: Tensor, b: Tensor, eps: float) -> Tensor:
    d = ((a - b) ** 2).sum(-1).clamp_min(eps)
    return d / d.max()


@full_precision
def irg_loss(
    f_s: Sequence[Tensor], f_t: Sequence[Tensor], *, lambda_v: float = 0.1,
    lambda_e: float = 5.0, lambda_t: float = 5.0,
    transform_pairs: Sequence[tuple[int, int]] | None = None, eps: float = 1e-12,
) -> Tensor:
    r"""Instance relationship graph (Liu et al., CVPR 2019), Knowledge-Distillation-Zoo's form.

    Input convention: ``f_s = [h_1, ..., h_L, z]`` (and ``f_t`` likewise, same length): ``L >= 1``
    intermediate features in network order (``[B, *]``, conv maps allowed) followed by the
    vertex features ``z`` (logits). The terms are

    .. math::
        L_v = \mathrm{MSE}(z_s, z_t), \quad
        L_e = \frac{1}{L}\sum_{l} \mathrm{MSE}(\bar D(h^s_l), \bar D(h^t_l)), \quad
        L_t = \mathrm{mean}_{(a,b)} \mathrm{MSE}(\bar T(h^s_a, h^s_b), \bar T(h^t_a, h^t_b))

    where :math:`D(h)_{ij} = \|h_i - h_j\|^2` (clamped at ``eps``, zero diagonal),
    :math:`T(h_a, h_b)_i = \|h_{a,i} - h_{b,i}\|^2` and the bar divides by the maximum entry.
    ``L = lambda_v L_v + lambda_e L_e + lambda_t L_t``. With the reference's four inputs
    ``[fm1, fm2, feat, out]`` this is exactly AberHu/Knowledge-Distillation-Zoo
    ``kd_losses/irg.py`` (edges on all three feature levels averaged, transformation
    ``fm1 -> fm2`` with its pooling / channel-pair averaging); its weights 0.1 / 5 / 5 are the
    defaults. The max-normalisation divides by ``max(., eps)`` so identical samples give 0
    instead of the reference's NaN.

    Args:
        f_s, f_t: per-layer student / teacher features, last entry the logits.
        lambda_v, lambda_e, lambda_t: term weights.
        transform_pairs: ``(a, b)`` indices into ``h_1..h_L`` (``a`` earlier); default
            ``[(0, 1)]`` when ``L >= 2``, none otherwise.
        eps: distance clamp.
    """
    if isinstance(f_s, Tensor) or isinstance(f_t, Tensor):
        raise TypeError("IRG takes lists of per-layer features [h_1, ..., h_L, logits] for "
                        "`f_s` and `f_t`, not single tensors.")
    f_s, f_t = list(f_s), [x.detach() if isinstance(x, Tensor) else x for x in f_t]
    check_nonempty("irg", f_s, f_t)
    if len(f_s) != len(f_t) or len(f_s) < 2:
        raise ValueError(
            f"`f_s` and `f_t` must list the same layers, at least one feature and the logits "
            f"([h_1, ..., h_L, logits]); got {len(f_s)} and {len(f_t)} entries."
        )
    s_flat = [flat(x, f"f_s[{i}]") for i, x in enumerate(f_s)]
    t_flat = [flat(x, f"f_t[{i}]") for i, x in enumerate(f_t)]
    for i, (a, b) in enumerate(zip(s_flat, t_flat, strict=True)):
        check_same_rows(a, b, f"f_s[{i}]", f"f_t[{i}]")
        check_same_rows(a, s_flat[0], f"f_s[{i}]", "f_s[0]")
    z_s, z_t = s_flat[-1], t_flat[-1]
    check_same_shape(z_s, z_t, "student logits", "teacher logits")
    n_layers = len(f_s) - 1
    pairs = ([(0, 1)] if n_layers >= 2 else []) if transform_pairs is None else list(
        transform_pairs)
    for a, b in pairs:
        if not (0 <= a < n_layers and 0 <= b < n_layers):
            raise ValueError(f"transform pair {(a, b)} out of range for {n_layers} layers.")

    loss_v = F.mse_loss(z_s, z_t)
    loss_e = sum(
        edge_mse(_irg_edges(hs, eps).reshape(-1), _irg_edges(ht, eps).reshape(-1))
        for hs, ht in zip(s_flat[:-1], t_flat[:-1], strict=True)
    ) / n_layers
    loss = lambda_v * loss_v + lambda_e * loss_e
    if pairs:
        loss_t = sum(
            F.mse_loss(_irg_transform(*_irg_match(f_s[a], f_s[b], f"f_s[{a}]->f_s[{b}]"), eps),
                       _irg_transform(*_irg_match(f_t[a], f_t[b], f"f_t[{a}]->f_t[{b}]"), eps))
            for a, b in pairs
        ) / len(pairs)
        loss = loss + lambda_t * loss_t
    return loss


@register("irg")
class IRG(DistillLoss):
    """Instance relationship graph, see :func:`irg_loss` for the input convention.

    ``forward(f_s, f_t)`` takes *lists* ``[h_1, ..., h_L, logits]`` of per-layer features.

    Args:
        lambda_v, lambda_e, lambda_t: term weights (0.1, 5, 5).
        transform_pairs: layer pairs of the transformation term.
    """

    level = "batch"
    family = "relation"
    global_batch = True

    def __init__(self, lambda_v: float = 0.1, lambda_e: float = 5.0, lambda_t: float = 5.0,
                 transform_pairs: Sequence[tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.lambda_v, self.lambda_e, self.lambda_t = lambda_v, lambda_e, lambda_t
        self.transform_pairs = None if transform_pairs is None else list(transform_pairs)

    def forward(self, f_s: Sequence[Tensor], f_t: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        return irg_loss(f_s, f_t, lambda_v=self.lambda_v, lambda_e=self.lambda_e,
                        lambda_t=self.lambda_t, transform_pairs=self.transform_pairs)
