r"""Graph-representation knowledge: LSP, GSP, GKD and G-CRD.

Each method is a pure function (the maths, on features and an :class:`~graphkd.graphs.EdgeSet`)
plus a thin registered :class:`~graphkd.losses.base.DistillLoss` module that builds the graph
(and holds trainable heads, for G-CRD). All of them compose the core: an EdgeSet builder, a
kernel on its edges (:func:`~graphkd.kernels.edge_kernel`) and a divergence
(:mod:`graphkd.divergences`).

=========  ==========================================================================  ==========
name       loss                                                                        graph
=========  ==========================================================================  ==========
``lsp``    :math:`\mathrm{mean}_v\,\mathrm{KL}(P^T_v \| P^S_v)`, neighbour softmax     input/kNN
``gsp``    :math:`\mathrm{mean}_{i,j}(\kappa(s_i,s_j) - \kappa(t_i,t_j))^2`            all pairs
``gkd``    :math:`\lambda \sum (A_t^p - A_s^p)^2`, :math:`A = D^{-1/2}\cos(F)D^{-1/2}`  batch
``gcrd``   InfoNCE of normalised projections, :math:`\tau = 0.075`                      sampled
=========  ==========================================================================  ==========

LSP (its kernel logits and its three graph builders) lives in :mod:`graphkd.losses.lsp`; its
names are re-exported here (``graph.lsp_loss``, ``graph.LSP``), so the family keeps one import
path. G-CRD's projection heads are built by :mod:`graphkd.losses.heads`.

The teacher's features are constants (detached) in every loss; G-CRD's trainable teacher-side
head still learns (on the detached features). float16 / bfloat16 features are computed in
float32 (kNN graphs included) and the loss is returned in their dtype. GKD and GSP with a
scale-invariant kernel stay exact for huge features (power-of-two rescaling,
:mod:`graphkd.losses._scale`).

Example:
    >>> f_t, f_s = torch.randn(6, 8), torch.randn(6, 4)
    >>> edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 0, 4, 5, 3]])
    >>> LSP(graph="input")(f_s, f_t, edge_index=edge_index).shape
    torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_features, check_nonempty, check_same_shape, full_precision
from graphkd.divergences import edge_mse, info_nce
from graphkd.kernels import offdiagonal, pairwise_kernel, unit
from graphkd.losses._common import check_kernel, check_kernel_params, check_pair
from graphkd.losses._scale import rescale_pow2
from graphkd.losses.base import DistillLoss, register
from graphkd.losses.heads import HEADS, build_head
from graphkd.losses.lsp import (  # noqa: F401  (re-exported: one import path for the family)
    LSP,
    _lsp,
    lsp_logits,
    lsp_loss,
)

__all__ = [
    "lsp_logits",
    "lsp_loss",
    "gsp_loss",
    "gkd_adjacency",
    "gkd_loss",
    "gcrd_loss",
    "make_head",
    "HEADS",
    "LSP",
    "GSP",
    "GKD",
    "GCRD",
]


# ====================================================================================== GSP
# name -> (normalise features first, default parameters), following gpw_criterion.
_GSP_KERNELS: dict[str, tuple[bool, dict]] = {
    "poly": (True, {"degree": 2, "coef": 0.0}),   # the reference's cos(s_i, s_j) ** 2
    "rbf": (False, {"gamma": 0.5}),
}


#: Kernels invariant to the features' scale: their inputs are rescaled by a power of two.
_SCALE_FREE_KERNELS = frozenset({"cosine"})


def _sample_nodes(
    n: int, max_samples: int, generator: torch.Generator | None, device: torch.device,
) -> Tensor | None:
    """Sorted indices of ``max_samples`` nodes drawn without replacement, or None (all nodes).

    The same draw as ``EdgeSet.sample_pairs`` (CPU ``randperm``, sorted), without building the
    ``m * m`` index arrays of ``EdgeSet.dense(m)``: the kernels here are one dense matmul.
    """
    if max_samples < 1:
        raise ValueError(f"`max_samples` must be >= 1, got {max_samples}.")
    if n <= max_samples:
        return None
    perm = torch.randperm(n, generator=generator, device="cpu")[:max_samples]
    return perm.sort().values.to(device)


@full_precision
def gsp_loss(
    f_s: Tensor, f_t: Tensor, kernel: str = "cosine", *, max_samples: int = 8192,
    loop: bool = True, generator: torch.Generator | None = None, reduction: str = "mean",
    **kernel_params,
) -> Tensor:
    r"""Global Structure Preserving loss (Joshi et al., TNNLS 2022).

    .. math:: L = \operatorname{mean}_{i,j}\big(\kappa(s_i, s_j) - \kappa(t_i, t_j)\big)^2

    over all pairs of ``m = min(N, max_samples)`` nodes sampled without replacement (all nodes
    when ``N <= max_samples``). Kernels as in the reference ``gpw_criterion``: ``cosine``;
    ``poly`` = :math:`\cos^2` (``degree=2, coef=0`` on L2-normalised features, unlike the core's
    ``poly`` default); ``rbf`` = :math:`\exp(-\tfrac12\|\cdot\|^2)`; ``l2`` = Euclidean distance;
    any other core kernel is used as is. One ``[m, m]`` matmul per model. With the
    scale-invariant kernels (``cosine``, ``poly``) features with ``max |x| >= 2**16`` are first
    divided by a power of two (exact), so their norms cannot overflow (``~1e30`` gave 0).

    Args:
        f_s: ``[N, D_s]`` student features (project to a common width first if the kernel needs
            it; ``cosine``/``rbf``/``l2`` relations compare across widths).
        f_t: ``[N, D_t]`` teacher features.
        kernel: kernel name.
        max_samples: at most this many nodes.
        loop: include the ``i == j`` pairs (the reference averages over all ``m**2`` pairs).
        generator: CPU generator for the node sample.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over pairs.
        **kernel_params: kernel parameters.

    Example:
        >>> gsp_loss(torch.randn(16, 4), torch.randn(16, 8), "rbf").shape
        torch.Size([])
    """
    check_pair(f_s, f_t, "gsp")
    f_t = f_t.detach()
    check_kernel(kernel)
    normalise, defaults = _GSP_KERNELS.get(kernel, (False, {}))
    params = {**defaults, **kernel_params}
    n = f_s.shape[0]
    if not loop and n < 2:
        raise ValueError("gsp_loss with loop=False needs at least 2 nodes; pass loop=True.")
    nodes = _sample_nodes(n, max_samples, generator, f_s.device)
    if nodes is not None:
        f_s, f_t = f_s.index_select(0, nodes), f_t.index_select(0, nodes)
    if normalise or kernel in _SCALE_FREE_KERNELS:  # exact power-of-two rescale: no overflow
        f_s, f_t = rescale_pow2(f_s), rescale_pow2(f_t)
    if normalise:
        f_s, f_t = unit(f_s, 1e-12), unit(f_t, 1e-12)
    k_s = pairwise_kernel(f_s, kernel=kernel, **params)
    k_t = pairwise_kernel(f_t, kernel=kernel, **params)
    if not loop:
        k_s, k_t = offdiagonal(k_s), offdiagonal(k_t)
    return edge_mse(k_s.reshape(-1), k_t.reshape(-1), reduction=reduction)


def _seeded(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


@register("gsp")
class GSP(DistillLoss):
    """Global Structure Preserving loss module; see :func:`gsp_loss`.

    The reference projects both models' features with trainable heads first; put an adapter
    before this loss (or use :class:`GCRD`'s heads) for that.

    Args:
        kernel: ``"cosine"`` (default), ``"poly"``, ``"rbf"``, ``"l2"``, or another core kernel.
        max_samples: node sample size.
        seed: seed of the module's own sampling generator (``None``: global RNG).
        loop: include ``i == j`` pairs.
        reduction: over pairs.
        **kernel_params: kernel parameters.
    """

    level = "node"
    family = "graph"

    def __init__(
        self, kernel: str = "cosine", max_samples: int = 8192, *, seed: int | None = None,
        loop: bool = True, reduction: str = "mean", **kernel_params,
    ) -> None:
        super().__init__()
        check_kernel(kernel)
        if max_samples < 1:
            raise ValueError(f"`max_samples` must be >= 1, got {max_samples}.")
        check_kernel_params(kernel, kernel_params, lambda: gsp_loss(
            torch.ones(2, 1), torch.ones(2, 1), kernel, **kernel_params))
        self.kernel, self.max_samples, self.loop = kernel, max_samples, loop
        self.reduction = reduction
        self.kernel_params = kernel_params
        self.generator = _seeded(seed)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return gsp_loss(f_s, f_t, self.kernel, max_samples=self.max_samples, loop=self.loop,
                        generator=self.generator, reduction=self.reduction,
                        **self.kernel_params)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, max_samples={self.max_samples}"


# ====================================================================================== GKD
def gkd_adjacency(f: Tensor, *, eps: float = 1e-8) -> Tensor:
    r"""Normalised cosine adjacency :math:`D^{-1/2} C D^{-1/2}` of a batch, ``[B, B]``.

    :math:`C_{ij} = \cos(f_i, f_j)` for :math:`i \ne j`, :math:`C_{ii} = 0`,
    :math:`D = \operatorname{diag}(\max(\sum_j |C_{ij}|, \epsilon))`. For non-negative
    features (post-ReLU, the reference's setting) :math:`|C| = C` and this is exactly the
    reference (cadurosar/graph_kd ``representations_to_adj``); the reference's unguarded
    ``rowsum ** -0.5`` is NaN as soon as a row's cosines sum to <= 0, which the absolute value
    (a signed-graph degree) and the clamp avoid.

    Scale-invariant: features with ``max |f| >= 2**16`` are first divided by a power of two
    (:func:`~graphkd.losses._scale.rescale_pow2`, exact), so the row norms cannot overflow.

    Args:
        f: ``[B, ...]`` features (flattened to ``[B, D]`` like the reference).
        eps: lower bound of the degree.
    """
    x = unit(rescale_pow2(f.flatten(1)), 1e-12)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    c = (x @ x.T).masked_fill(eye, 0.0)
    d = c.abs().sum(1).clamp_min(eps).rsqrt()
    return d[:, None] * c * d[None, :]


def _knn_mask(a: Tensor, k: int) -> Tensor:
    """Symmetric 0/1 mask of each row's ``k`` largest off-diagonal entries of ``a``."""
    n = a.shape[0]
    scores = a.detach().clone().fill_diagonal_(-torch.inf)
    idx = scores.topk(k, dim=1).indices
    m = a.new_zeros(n, n).scatter_(1, idx, 1.0)
    return torch.maximum(m, m.T)


@full_precision
def gkd_loss(
    f_s: Tensor, f_t: Tensor, *, k: int | None = None, power: int = 1, weight: float = 1.0,
    reduction: str = "sum", eps: float = 1e-8,
) -> Tensor:
    r"""Graph Knowledge Distillation (Lassance et al., ICASSP 2020).

    .. math::
        A = D^{-1/2}\,\cos(F)\,D^{-1/2}\ (\text{zero diagonal}),\qquad
        L = \lambda \sum_{i,j}\big((M \odot A_t)^p - (M \odot A_s)^p\big)_{ij}^2

    with :math:`M` the symmetrised kNN mask of the teacher's ``A_t`` (each row's ``k`` largest
    off-diagonal entries, ``M = max(M, M^T)``), reused for the student; no mask when ``k`` is
    None. The mask multiplies the already-normalised adjacency, as in the reference
    (cadurosar/graph_kd ``utils.py``), whose candidates also include the (zero) diagonal.
    Another version of the reference computes the power but compares ``A`` (not ``A^p``) with
    a mean; use ``reduction="mean"`` for the mean.

    Args:
        f_s: ``[B, ...]`` student features.
        f_t: ``[B, ...]`` teacher features.
        k: kNN mask size (``1 <= k < B``), or None for the full graph.
        power: matrix power ``p >= 1``.
        weight: :math:`\lambda`.
        reduction: ``"sum"`` (the reference) or ``"mean"`` over the ``B**2`` entries.
        eps: degree clamp, see :func:`gkd_adjacency`.

    Example:
        >>> gkd_loss(torch.rand(8, 16), torch.rand(8, 32), k=3, power=2).shape
        torch.Size([])
    """
    if f_s.dim() > 2 or f_t.dim() > 2:
        f_s, f_t = f_s.flatten(1), f_t.flatten(1)
    check_pair(f_s, f_t, "gkd")
    f_t = f_t.detach()
    if reduction not in ("sum", "mean"):
        raise ValueError(f"gkd_loss reduction must be 'sum' or 'mean', got {reduction!r}.")
    if power < 1:
        raise ValueError(f"`power` must be an integer >= 1, got {power}.")
    n = f_s.shape[0]
    if n < 2:
        raise ValueError(f"GKD needs a batch of at least 2 samples, got {n}.")
    a_t, a_s = gkd_adjacency(f_t, eps=eps), gkd_adjacency(f_s, eps=eps)
    if k is not None:
        if not 1 <= k < n:
            raise ValueError(
                f"GKD kNN mask needs 1 <= k < batch size ({n}), got k={k}; lower k or pass "
                "k=None for the full graph."
            )
        mask = _knn_mask(a_t, k)
        a_t, a_s = a_t * mask, a_s * mask
    if power > 1:
        a_t, a_s = torch.linalg.matrix_power(a_t, power), torch.linalg.matrix_power(a_s, power)
    return weight * edge_mse(a_s.reshape(-1), a_t.reshape(-1), reduction=reduction)


@register("gkd")
class GKD(DistillLoss):
    """Graph Knowledge Distillation module (Lassance 2020); see :func:`gkd_loss`.

    Args:
        k: teacher kNN mask size (None: full graph).
        power: matrix power ``p``.
        weight: :math:`\\lambda`.
        reduction: ``"sum"`` or ``"mean"``.
    """

    level = "batch"
    family = "graph"
    global_batch = True

    def __init__(
        self, k: int | None = None, power: int = 1, weight: float = 1.0, *,
        reduction: str = "sum", eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if power < 1:
            raise ValueError(f"`power` must be an integer >= 1, got {power}.")
        if k is not None and k < 1:
            raise ValueError(f"`k` must be >= 1 or None, got {k}.")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
        self.k, self.power, self.weight, self.reduction, self.eps = k, power, weight, reduction, eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        return gkd_loss(f_s, f_t, k=self.k, power=self.power, weight=self.weight,
                        reduction=self.reduction, eps=self.eps)

    def extra_repr(self) -> str:
        return f"k={self.k}, power={self.power}, weight={self.weight}"


# ===================================================================================== G-CRD
#: G-CRD's projection heads are built by :func:`graphkd.losses.heads.build_head` (kinds
#: ``"mlp"``, ``"linear_bn_relu"``, ``"linear"``, ...); ``HEADS`` / ``make_head`` are kept here
#: as aliases of :data:`~graphkd.losses.heads.HEADS` / :func:`~graphkd.losses.heads.build_head`.
make_head = build_head


@full_precision
def gcrd_loss(
    z_s: Tensor, z_t: Tensor, *, tau: float = 0.075, max_samples: int = 8192,
    generator: torch.Generator | None = None, reduction: str = "mean",
) -> Tensor:
    r"""Graph Contrastive Representation Distillation (Joshi et al., TNNLS 2022).

    .. math::
        L = -\operatorname{mean}_i \log
            \frac{\exp(\hat z^S_i \cdot \hat z^T_i / \tau)}
                 {\sum_j \exp(\hat z^S_i \cdot \hat z^T_j / \tau)},
        \qquad \hat z = z / \|z\|

    over ``m = min(N, max_samples)`` nodes sampled without replacement (the reference's
    ``nce_criterion``); :func:`graphkd.divergences.info_nce` on the normalised projections.

    ``z_t`` is a constant here (detached), as every teacher input of a pure loss. The
    :class:`GCRD` module, whose teacher-side head is trainable (as in the reference), runs the
    same computation on ``head_t(f_t.detach())`` without detaching the projection, so the
    head still learns while the teacher's features get no gradient.

    Args:
        z_s: ``[N, P]`` projected student embeddings (e.g. ``head_s(f_s)``).
        z_t: ``[N, P]`` projected teacher embeddings (detached).
        tau: temperature.
        max_samples: node sample size.
        generator: CPU generator for the sample.
        reduction: over anchors (``"mean"``, ``"sum"``, ``"none"``).

    Example:
        >>> gcrd_loss(torch.randn(32, 16), torch.randn(32, 16)).shape
        torch.Size([])
    """
    return _gcrd(z_s, z_t.detach(), tau, max_samples, generator, reduction)


def _gcrd(z_s: Tensor, z_t: Tensor, tau: float, max_samples: int,
          generator: torch.Generator | None, reduction: str) -> Tensor:
    """:func:`gcrd_loss` with gradients to both projections (the module's trainable heads)."""
    check_nonempty("gcrd", z_s, z_t)
    check_features(z_s, "z_s")
    check_features(z_t, "z_t")
    check_same_shape(z_s, z_t, "`z_s`", "`z_t`",
                     "project both models to a common width (GCRD's heads do this).")
    n = z_s.shape[0]
    nodes = _sample_nodes(n, max_samples, generator, z_s.device)
    if nodes is not None:
        z_s, z_t = z_s.index_select(0, nodes), z_t.index_select(0, nodes)
    return info_nce(F.normalize(z_s, dim=-1), F.normalize(z_t, dim=-1), tau=tau,
                    reduction=reduction)


@register("gcrd")
class GCRD(DistillLoss):
    """G-CRD module: trainable heads on both sides + :func:`gcrd_loss`.

    Args:
        student_dim: student feature width.
        teacher_dim: teacher feature width.
        proj_dim: common projection width (reference: 256).
        head: a :mod:`~graphkd.losses.heads` kind: ``"mlp"`` (default), ``"linear_bn_relu"``
            (the reference) or ``"linear"``.
        tau: temperature (0.075).
        max_samples: node sample size (8192).
        seed: seed of the module's sampling generator (``None``: global RNG).
        reduction: over anchors.

    Example:
        >>> loss = GCRD(student_dim=8, teacher_dim=16, proj_dim=4)
        >>> loss(torch.randn(10, 8), torch.randn(10, 16)).shape
        torch.Size([])
    """

    needs_dims = True
    level = "node"
    family = "graph"
    global_batch = True

    def __init__(
        self, student_dim: int, teacher_dim: int, proj_dim: int = 256, head: str = "mlp", *,
        tau: float = 0.075, max_samples: int = 8192, seed: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"`tau` must be > 0, got {tau}.")
        if max_samples < 1:
            raise ValueError(f"`max_samples` must be >= 1, got {max_samples}.")
        self.head_s = build_head(head, student_dim, proj_dim)
        self.head_t = build_head(head, teacher_dim, proj_dim)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.tau, self.max_samples, self.reduction = tau, max_samples, reduction
        self.generator = _seeded(seed)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        check_pair(f_s, f_t, "gcrd")
        if f_s.shape[1] != self.student_dim or f_t.shape[1] != self.teacher_dim:
            raise ValueError(
                f"GCRD was built for student_dim={self.student_dim}, "
                f"teacher_dim={self.teacher_dim} but got widths {f_s.shape[1]} and "
                f"{f_t.shape[1]}; rebuild it with the right widths."
            )
        # the teacher's features are constants; its projection head still trains
        return _gcrd(self.head_s(f_s), self.head_t(f_t.detach()), self.tau, self.max_samples,
                     self.generator, self.reduction)
