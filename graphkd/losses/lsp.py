r"""Local Structure Preserving distillation (LSP; Yang et al., CVPR 2020).

.. math::
    P^X_v(u) = \mathrm{softmax}_{u \in N(v)}(\ell^X_{vu} / \tau), \qquad
    L = \operatorname{mean}_{v:\,N(v) \ne \emptyset} \mathrm{KL}(P^T_v \,\|\, P^S_v)

on the input graph, the teacher's kNN graph or the union of both models' kNN graphs (the
paper's "virtual edges" for point clouds). A member of the graph family
(:mod:`graphkd.losses.graph`, which re-exports every name here); it has its own module because
its kernel logits (:func:`lsp_logits`) and graph builders are specific to it.

Example:
    >>> f_t, f_s = torch.randn(6, 8), torch.randn(6, 4)
    >>> edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 0, 4, 5, 3]])
    >>> LSP(graph="input")(f_s, f_t, edge_index=edge_index).shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from graphkd._checks import full_precision
from graphkd.divergences import row_kl
from graphkd.graphs import EdgeSet
from graphkd.kernels import edge_kernel
from graphkd.losses._common import check_kernel, check_kernel_params, check_pair
from graphkd.losses.base import DistillLoss, register

__all__ = ["lsp_logits", "lsp_loss", "LSP"]


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
    check_kernel(kernel)
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
    check_pair(f_s, f_t, "lsp")
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
        check_kernel(kernel)
        if graph != "input" and k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        check_kernel_params(kernel, kernel_params, lambda: lsp_logits(
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

    @property
    def takes_input_edges(self) -> bool:
        """Whether :meth:`forward` accepts a prebuilt input-graph ``edges`` EdgeSet (the
        Distiller builds it once per batch and shares it across matches)."""
        return self.graph == "input"

    def forward(
        self, f_s: Tensor, f_t: Tensor, *, batch: Tensor | None = None,
        edge_index: Tensor | None = None, edges: EdgeSet | None = None,
    ) -> Tensor:
        """``edges``: the input graph already built from ``edge_index`` (``graph="input"``
        only; it replaces ``edge_index`` and ``batch``)."""
        check_pair(f_s, f_t, "lsp")
        if edges is None or self.graph != "input":
            edges = self.build_graph(f_s, f_t, batch=batch, edge_index=edge_index)
        return _lsp(f_s, f_t, edges, self.kernel, self.reduction, self.tau,
                    self.kernel_as_logit, self.kernel_params)

    def extra_repr(self) -> str:
        return f"graph={self.graph!r}, k={self.k}, kernel={self.kernel!r}, tau={self.tau}"
