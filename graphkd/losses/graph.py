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

The teacher's features are constants (detached) in every loss; G-CRD's trainable teacher-side
head still learns (on the detached features). float16 / bfloat16 features are computed in
float32 (kNN graphs included) and the loss is returned in their dtype.

Example:
    >>> f_t, f_s = torch.randn(6, 8), torch.randn(6, 4)
    >>> edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 0, 4, 5, 3]])
    >>> LSP(graph="input")(f_s, f_t, edge_index=edge_index).shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphkd._checks import (
    check_features,
    check_nonempty,
    check_same_rows,
    check_same_shape,
    full_precision,
)
from graphkd.divergences import edge_mse, info_nce, row_kl
from graphkd.graphs import EdgeSet
from graphkd.kernels import KERNELS, edge_kernel, offdiagonal, pairwise_kernel, unit
from graphkd.losses.base import DistillLoss, register

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


def _check_pair(f_s: Tensor, f_t: Tensor, method: str) -> None:
    check_nonempty(method, f_s, f_t)
    check_features(f_s, "f_s")
    check_features(f_t, "f_t")
    check_same_rows(f_s, f_t, "f_s", "f_t")


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels: {sorted(KERNELS)}.")


def _check_kernel_params(kernel: str, params: dict, evaluate: Callable[[], object]) -> None:
    """Fail at construction (not at the first batch) on a misspelt kernel parameter."""
    try:
        evaluate()
    except TypeError as err:
        raise ValueError(
            f"invalid parameters {sorted(params)} for kernel {kernel!r} ({err}); see the table "
            "in graphkd.kernels for each kernel's parameters."
        ) from None


# ====================================================================================== LSP
# Kernels whose similarity is exp(-distance): the neighbour logit is the log of the kernel, so
# that softmax(logit) is the kernel normalised over the neighbourhood. Distances themselves
# ("l1", "l2", "l2sq") are turned into similarities the same way (logit = -distance).
_LOG_KERNELS: dict[str, Callable[..., Tensor]] = {
    "rbf": lambda x, e, gamma=0.5, check=True: edge_kernel(x, e, "l2sq", check=check) * (-gamma),
    "gaussian_l1": lambda x, e, scale=100.0, check=True: (
        edge_kernel(x, e, "l1", check=check) * (-1.0 / scale)),
    "l1": lambda x, e, check=True: -edge_kernel(x, e, "l1", check=check),
    "l2": lambda x, e, eps=1e-12, check=True: -edge_kernel(x, e, "l2", eps=eps, check=check),
    "l2sq": lambda x, e, check=True: -edge_kernel(x, e, "l2sq", check=check),
}


def lsp_logits(
    x: Tensor, edges: EdgeSet, kernel: str = "rbf", *, kernel_as_logit: bool = False,
    check: bool = True, **kernel_params,
) -> Tensor:
    r"""Per-edge LSP logits ``[E]`` whose row softmax is the neighbour distribution ``P_v``.

    * ``rbf``: :math:`-\gamma\|h_v - h_u\|^2` (``gamma=0.5``, the paper's
      :math:`\exp(-\tfrac12\|\cdot\|^2)`); ``gaussian_l1``: :math:`-\|h_v - h_u\|_1 / s`
      (``scale=100``, the original kernel); ``l1``/``l2``/``l2sq``: minus the distance. The
      softmax of these logits is the kernel normalised over the neighbourhood.
    * ``dot``/``cosine``/``poly``: the kernel value itself.
    * ``kernel_as_logit=True``: the kernel value for every kernel, i.e. the official code's
      ``edge_softmax(exp(...))`` (a double exponential, close to uniform for ``gaussian_l1``) and,
      with ``kernel="l2"``, the PyG port's raw distance logit (farther neighbours get *more*
      weight). Only for reproducing old numbers.

    Args:
        x: ``[N, D]`` node features of one model.
        edges: an ``N x N`` EdgeSet (row ``v`` lists ``N(v)``).
        kernel: a name from :data:`graphkd.kernels.KERNELS`.
        kernel_as_logit: reproduce the reference implementations (see above).
        **kernel_params: ``gamma``, ``scale``, ``degree``, ``coef``, ``eps``.
    """
    _check_kernel(kernel)
    log_kernel = None if kernel_as_logit else _LOG_KERNELS.get(kernel)
    if log_kernel is None:
        return edge_kernel(x, edges, kernel, check=check, **kernel_params)
    return log_kernel(x, edges, check=check, **kernel_params)


@full_precision
def lsp_loss(
    f_s: Tensor, f_t: Tensor, edges: EdgeSet, kernel: str = "rbf", reduction: str = "mean", *,
    tau: float = 1.0, kernel_as_logit: bool = False, **kernel_params,
) -> Tensor:
    r"""Local Structure Preserving loss (Yang et al., CVPR 2020).

    .. math::
        P^X_v(u) = \frac{\exp(\ell^X_{vu}/\tau)}{\sum_{u' \in N(v)} \exp(\ell^X_{vu'}/\tau)},
        \qquad L = \operatorname{mean}_{v:\,N(v) \ne \emptyset}
        \mathrm{KL}(P^T_v \,\|\, P^S_v)

    with :math:`\ell^X_{vu}` the kernel logit between :math:`h_v` and :math:`h_u` computed from
    each model's *own* features (see :func:`lsp_logits`), so the widths of ``f_s`` and ``f_t``
    may differ. Nodes without edges contribute nothing.

    Reference quirks (not the default): the official code
    (ihollywhy/DistillGCN.PyTorch ``local_structure.py``) applies ``edge_softmax`` to values that
    are already ``exp(...)``; the PyG port (chaitjo/efficient-gnns ``lpw_criterion``) uses the raw
    L2 distance as the logit. ``kernel_as_logit=True`` reproduces both (the latter with
    ``kernel="l2"``); the PyG port also averages over edges rather than nodes.

    Args:
        f_s: ``[N, D_s]`` student node features.
        f_t: ``[N, D_t]`` teacher node features.
        edges: ``N x N`` EdgeSet shared by both models.
        kernel: kernel name (``rbf``, ``gaussian_l1``, ``dot``, ``poly``, ``cosine``, ...).
        reduction: ``"mean"`` (over non-empty rows), ``"sum"``, ``"graph"`` (needs
            ``edges.batch``) or ``"none"`` (``[N]``), see :func:`graphkd.divergences.row_kl`.
        tau: softmax temperature.
        kernel_as_logit: reference behaviour, see above.
        **kernel_params: kernel parameters.

    Returns:
        the loss (scalar unless ``reduction="none"``).

    Example:
        >>> x = torch.randn(10, 3)
        >>> e = EdgeSet.knn(x, k=3)
        >>> lsp_loss(torch.randn(10, 4), torch.randn(10, 8), e).shape
        torch.Size([])
    """
    _check_pair(f_s, f_t, "lsp")
    return _lsp(f_s, f_t, edges, kernel, reduction, tau, kernel_as_logit, kernel_params)


def _lsp(f_s, f_t, edges, kernel, reduction, tau, kernel_as_logit, kernel_params) -> Tensor:
    """:func:`lsp_loss` without the (already done) input checks (the teacher is detached)."""
    f_t = f_t.detach()
    w_s = lsp_logits(f_s, edges, kernel, kernel_as_logit=kernel_as_logit, check=False,
                     **kernel_params)
    w_t = lsp_logits(f_t, edges, kernel, kernel_as_logit=kernel_as_logit, check=False,
                     **kernel_params)
    return row_kl(w_s, w_t, edges, tau=tau, reduction=reduction)


def _input_graph(f_s, f_t, batch, edge_index, k, metric) -> EdgeSet:
    if edge_index is None:
        raise ValueError(
            "LSP(graph='input') needs `edge_index` ([2, E]); pass it to forward(), or use "
            "graph='knn' / graph='union' to build the graph from the features."
        )
    return EdgeSet.from_edge_index(edge_index, f_t.shape[0], batch=batch)


def _knn_graph(f_s, f_t, batch, edge_index, k, metric) -> EdgeSet:
    return EdgeSet.knn(f_t.detach(), k, batch=batch, metric=metric)


def _union_graph(f_s, f_t, batch, edge_index, k, metric) -> EdgeSet:
    return EdgeSet.union(
        EdgeSet.knn(f_t.detach(), k, batch=batch, metric=metric),
        EdgeSet.knn(f_s.detach(), k, batch=batch, metric=metric),
    )


_LSP_GRAPHS: dict[str, Callable[..., EdgeSet]] = {
    "input": _input_graph,
    "knn": _knn_graph,
    "union": _union_graph,
}


@register("lsp")
class LSP(DistillLoss):
    """Local Structure Preserving loss module; see :func:`lsp_loss`.

    Args:
        graph: ``"input"`` (the input graph, ``edge_index``), ``"knn"`` (the teacher's kNN graph
            per graph of the batch) or ``"union"`` (teacher kNN union student kNN: the paper's
            "virtual edges" for point clouds).
        k: neighbours for ``"knn"`` / ``"union"`` (DGCNN uses 20).
        kernel: kernel name (default ``"rbf"``).
        metric: kNN metric, ``"l2"`` or ``"cosine"``.
        tau: softmax temperature.
        reduction: see :func:`lsp_loss`.
        kernel_as_logit: reproduce the reference implementations' logits.
        **kernel_params: kernel parameters (``gamma``, ``scale``, ...).

    Example:
        >>> loss = LSP(graph="knn", k=4)
        >>> pts_t, pts_s = torch.randn(20, 8), torch.randn(20, 4)
        >>> loss(pts_s, pts_t, batch=torch.arange(2).repeat_interleave(10)).shape
        torch.Size([])
    """

    context = ("batch", "edge_index")
    level = "node"
    family = "graph"

    def __init__(
        self, graph: str = "input", k: int = 20, kernel: str = "rbf", *, metric: str = "l2",
        tau: float = 1.0, reduction: str = "mean", kernel_as_logit: bool = False,
        **kernel_params,
    ) -> None:
        super().__init__()
        if graph not in _LSP_GRAPHS:
            raise ValueError(f"unknown LSP graph {graph!r}; valid: {sorted(_LSP_GRAPHS)}.")
        _check_kernel(kernel)
        if graph != "input" and k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        _check_kernel_params(kernel, kernel_params, lambda: lsp_logits(
            torch.ones(2, 1), EdgeSet.dense(2), kernel, kernel_as_logit=kernel_as_logit,
            **kernel_params))
        self.graph, self.k, self.kernel, self.metric = graph, k, kernel, metric
        self.tau, self.reduction, self.kernel_as_logit = tau, reduction, kernel_as_logit
        self.kernel_params = kernel_params

    def build_graph(
        self, f_s: Tensor, f_t: Tensor, *, batch: Tensor | None = None,
        edge_index: Tensor | None = None,
    ) -> EdgeSet:
        """The EdgeSet the loss is evaluated on."""
        return _LSP_GRAPHS[self.graph](f_s, f_t, batch, edge_index, self.k, self.metric)

    def forward(
        self, f_s: Tensor, f_t: Tensor, *, batch: Tensor | None = None,
        edge_index: Tensor | None = None,
    ) -> Tensor:
        _check_pair(f_s, f_t, "lsp")
        edges = self.build_graph(f_s, f_t, batch=batch, edge_index=edge_index)
        return _lsp(f_s, f_t, edges, self.kernel, self.reduction, self.tau,
                    self.kernel_as_logit, self.kernel_params)

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}, k={self.k}, kernel={self.kernel!r}, tau={self.tau}"


# ====================================================================================== GSP
# name -> (normalise features first, default parameters), following gpw_criterion.
_GSP_KERNELS: dict[str, tuple[bool, dict]] = {
    "poly": (True, {"degree": 2, "coef": 0.0}),   # the reference's cos(s_i, s_j) ** 2
    "rbf": (False, {"gamma": 0.5}),
}


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
    any other core kernel is used as is. One ``[m, m]`` matmul per model.

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
    _check_pair(f_s, f_t, "gsp")
    f_t = f_t.detach()
    _check_kernel(kernel)
    normalise, defaults = _GSP_KERNELS.get(kernel, (False, {}))
    params = {**defaults, **kernel_params}
    n = f_s.shape[0]
    if not loop and n < 2:
        raise ValueError("gsp_loss with loop=False needs at least 2 nodes; pass loop=True.")
    nodes = _sample_nodes(n, max_samples, generator, f_s.device)
    if nodes is not None:
        f_s, f_t = f_s.index_select(0, nodes), f_t.index_select(0, nodes)
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
        _check_kernel(kernel)
        if max_samples < 1:
            raise ValueError(f"`max_samples` must be >= 1, got {max_samples}.")
        _check_kernel_params(kernel, kernel_params, lambda: gsp_loss(
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

    Args:
        f: ``[B, ...]`` features (flattened to ``[B, D]`` like the reference).
        eps: lower bound of the degree.
    """
    x = unit(f.flatten(1), 1e-12)
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
    _check_pair(f_s, f_t, "gkd")
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
def _linear(i: int, o: int) -> nn.Module:
    return nn.Linear(i, o)


def _linear_bn_relu(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU())


def _mlp(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU(), nn.Linear(o, o))


#: Projection heads of G-CRD: ``linear``, ``linear_bn_relu`` (the reference's
#: ``Linear + BatchNorm1d + ReLU``) and ``mlp`` (``linear_bn_relu`` followed by a ``Linear``).
HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": _linear,
    "linear_bn_relu": _linear_bn_relu,
    "mlp": _mlp,
}


def make_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """Build a projection head ``[N, in_dim] -> [N, out_dim]`` from :data:`HEADS`."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; valid heads: {sorted(HEADS)}.")
    return HEADS[kind](in_dim, out_dim)


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
        head: ``"mlp"`` (default), ``"linear_bn_relu"`` (the reference) or ``"linear"``.
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
        self.head_s = make_head(head, student_dim, proj_dim)
        self.head_t = make_head(head, teacher_dim, proj_dim)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.tau, self.max_samples, self.reduction = tau, max_samples, reduction
        self.generator = _seeded(seed)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        _check_pair(f_s, f_t, "gcrd")
        if f_s.shape[1] != self.student_dim or f_t.shape[1] != self.teacher_dim:
            raise ValueError(
                f"GCRD was built for student_dim={self.student_dim}, "
                f"teacher_dim={self.teacher_dim} but got widths {f_s.shape[1]} and "
                f"{f_t.shape[1]}; rebuild it with the right widths."
            )
        # the teacher's features are constants; its projection head still trains
        return _gcrd(self.head_s(f_s), self.head_t(f_t.detach()), self.tau, self.max_samples,
                     self.generator, self.reduction)
