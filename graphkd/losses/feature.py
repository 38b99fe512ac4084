r"""Feature-level distillation: FitNet, AT, VID and AB.

These compare features position by position (no relation between samples). They accept node /
point / sample features ``[N, D]`` and conv-style maps ``[B, C, *spatial]``; trainable heads
(FitNet's adapter, VID's regressor, AB's connector) act on the channel axis ``1``, i.e. a
``Linear`` on ``[N, D]`` and the equivalent of a 1x1 convolution on maps. The teacher's
features are constants (detached) in every loss; float16 / bfloat16 inputs are computed in
float32 and the loss is returned in their dtype.

=========  ===========================================================================
name       loss
=========  ===========================================================================
``fitnet`` :math:`\mathrm{MSE}(r(f_s), f_t)`, :math:`r` linear (identity when widths match)
``at``     :math:`\mathrm{mean}(\hat a_s - \hat a_t)^2`, :math:`\hat a` unit-norm :math:`\bar{f^p}`
``vid``    :math:`\mathrm{mean}\,[\log\sigma_c + (t - \mu(s))^2 / (2\sigma_c^2)]`
``ab``     :math:`\mathrm{mean}\,[1_{t>0}(m - r(s))_+^2 + 1_{t\le0}(m + r(s))_+^2]`
=========  ===========================================================================

Example:
    >>> f_s, f_t = torch.randn(10, 16), torch.randn(10, 32)
    >>> FitNet(student_dim=16, teacher_dim=32)(f_s, f_t).shape
    torch.Size([])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphkd._checks import check_batched, check_index, check_nonempty, full_precision
from graphkd.losses._scale import rescale_pow2
from graphkd.losses.base import DistillLoss, register
from graphkd.losses.heads import build_head

__all__ = [
    "fitnet_loss",
    "at_map",
    "at_loss",
    "vid_loss",
    "ab_loss",
    "AB_REDUCTIONS",
    "FitNet",
    "AT",
    "VID",
    "AB",
]

AB_REDUCTIONS = ("mean", "batchmean", "sum")


# ----------------------------------------------------------------------------- helpers
_check = check_batched


def _check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str, hint: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` has shape {tuple(a.shape)} but `{name_b}` has {tuple(b.shape)}; {hint}"
        )


def _channelwise(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a module acting on the last axis to the channel axis ``1`` (a 1x1 conv on maps)."""
    if x.dim() == 2:
        return module(x)
    return module(x.movedim(1, -1)).movedim(-1, 1)


def _check_width(x: Tensor, width: int, name: str, arg: str) -> None:
    if x.shape[1] != width:
        raise ValueError(
            f"`{name}` has {x.shape[1]} channels (axis 1) but the loss was built with "
            f"{arg}={width}; build it with the feature width of the hooked layer."
        )


# ----------------------------------------------------------------------------- FitNet
@full_precision
def fitnet_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""FitNet hint loss (Romero et al., 2015): :math:`\mathrm{MSE}(f_s, f_t)`, element mean.

    ``f_s`` is the student feature *after* the adapter (RepDistiller ``FitNet.py``:
    ``nn.MSELoss()`` of the regressed student feature and the teacher's).

    Args:
        f_s: ``[N, D]`` or ``[B, C, *spatial]`` adapted student features.
        f_t: teacher features of the same shape.
    """
    check_nonempty("fitnet", f_s, f_t)
    _check(f_s, "f_s")
    _check(f_t, "f_t")
    _check_same_shape(f_s, f_t, "f_s", "f_t",
                      "FitNet compares features elementwise: adapt the student's width first.")
    return F.mse_loss(f_s, f_t.detach())


@register("fitnet")
class FitNet(DistillLoss):
    """FitNet with a trainable linear adapter, see :func:`fitnet_loss`.

    Args:
        student_dim: student feature width (channels, axis 1).
        teacher_dim: teacher feature width.
        adapter: ``None`` (default): a ``Linear(student_dim, teacher_dim)`` when the widths
            differ, the identity when they are equal; ``True``: always a ``Linear``;
            ``False``: never (widths must be equal).
    """

    needs_dims = True
    level = "node"
    family = "feature"

    def __init__(self, student_dim: int, teacher_dim: int, adapter: bool | None = None) -> None:
        super().__init__()
        if adapter is False and student_dim != teacher_dim:
            raise ValueError(
                f"adapter=False needs equal widths, got student_dim={student_dim} and "
                f"teacher_dim={teacher_dim}; use adapter=None or True."
            )
        use = student_dim != teacher_dim if adapter is None else adapter
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.adapter = build_head("linear" if use else "identity", student_dim, teacher_dim)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        _check(f_s, "f_s")
        _check_width(f_s, self.student_dim, "f_s", "student_dim")
        return fitnet_loss(_channelwise(self.adapter, f_s), f_t)


# ----------------------------------------------------------------------------- AT
def at_map(
    f: Tensor, p: float = 2.0, *, batch: Tensor | None = None, num_graphs: int | None = None,
    eps: float = 1e-12,
) -> Tensor:
    r"""Normalised attention map :math:`\hat a = a / \|a\|_2`, :math:`a = \mathrm{mean}_c f^p`.

    * ``[B, C, *spatial]`` maps: ``a`` ``[B, prod(spatial)]``, normalised per sample
      (RepDistiller ``AT.py``: ``F.normalize(f.pow(p).mean(1).view(B, -1))``).
    * ``[N, D]`` node features: ``a`` ``[N]`` (one value per node), normalised per graph
      over its nodes (:math:`\hat a_n = a_n / \max(\|a_{g(n)}\|_2, \epsilon)`, segment sums over
      ``batch``); without ``batch`` all nodes form one graph.

    The map is invariant to the scale of ``f``; features with ``max |f| >= 2**(32 / p)`` are
    first divided by a power of two (:func:`~graphkd.losses._scale.rescale_pow2`, exact), so
    that ``f^p`` and its norm cannot overflow (features of ``~1e12`` gave 0 before).

    Args:
        f: features.
        p: power (2).
        batch: ``[N]`` graph id of each node (node features only).
        num_graphs: number of graphs (default ``batch.max() + 1``).
        eps: norm clamp, as ``F.normalize``.

    Returns:
        ``[B, S]`` for maps, ``[N]`` for node features.
    """
    f = rescale_pow2(f, above=max(1, int(32 / p)))
    if f.dim() > 2:
        if batch is not None:
            raise ValueError("`batch` groups node features [N, D]; a [B, C, *spatial] map "
                             "already has one sample per row, pass batch=None.")
        return F.normalize(f.pow(p).mean(1).flatten(1), p=2.0, dim=1, eps=eps)
    a = f.pow(p).mean(1)
    if batch is None:
        norm = torch.linalg.vector_norm(a).clamp_min(eps)
        return a / norm
    if batch.shape != a.shape:
        raise ValueError(f"`batch` must have shape [{a.shape[0]}] (one graph id per node), "
                         f"got {tuple(batch.shape)}.")
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 1
    check_index(batch, num_graphs, "batch")
    sq = a.new_zeros(num_graphs).index_add(0, batch, a * a)
    return a / sq.clamp_min(eps * eps).sqrt().index_select(0, batch)


@full_precision
def at_loss(
    f_s: Tensor, f_t: Tensor, *, p: float = 2.0, batch: Tensor | None = None,
    num_graphs: int | None = None,
) -> Tensor:
    r"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), RepDistiller's form.

    .. math:: L = \mathrm{mean}\,(\hat a_s - \hat a_t)^2

    with :func:`at_map`. On maps the mean runs over ``B x prod(spatial)`` entries (exactly
    RepDistiller ``AT.py``, which needs equal spatial sizes). On node features the mean runs
    over the ``N`` nodes: :math:`\frac1N \sum_g \|\hat a^s_g - \hat a^t_g\|^2`. Every graph's
    (scale-free) distance between unit attention vectors counts the same, and with ``G``
    graphs of ``n`` nodes each this is exactly the map formula with ``n`` positions. Teacher
    and student channel widths may differ.

    Args:
        f_s, f_t: ``[N, D_s]`` / ``[N, D_t]`` node features, or ``[B, C_s, *S]`` /
            ``[B, C_t, *S]`` maps.
        p: power.
        batch: ``[N]`` graph ids for node features.
        num_graphs: number of graphs.
    """
    check_nonempty("at", f_s, f_t)
    _check(f_s, "f_s")
    _check(f_t, "f_t")
    f_t = f_t.detach()
    if not p > 0:
        raise ValueError(f"`p` must be > 0, got {p}.")
    if f_s.dim() != f_t.dim() or f_s.shape[0] != f_t.shape[0] or f_s.shape[2:] != f_t.shape[2:]:
        raise ValueError(
            f"`f_s` {tuple(f_s.shape)} and `f_t` {tuple(f_t.shape)} must agree in every axis "
            "but the channels (axis 1); pool the larger map to the smaller spatial size first."
        )
    a_s = at_map(f_s, p, batch=batch, num_graphs=num_graphs)
    a_t = at_map(f_t, p, batch=batch, num_graphs=num_graphs)
    return (a_s - a_t).pow(2).mean()


@register("at")
class AT(DistillLoss):
    """Attention transfer, see :func:`at_loss`.

    ``forward(f_s, f_t, batch=None)``: node features are grouped per graph by ``batch``.

    Args:
        p: power of the attention map (2).
    """

    context = ("batch",)
    level = "node"
    family = "feature"

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"`p` must be > 0, got {p}.")
        self.p = p

    def forward(self, f_s: Tensor, f_t: Tensor, *, batch: Tensor | None = None) -> Tensor:
        return at_loss(f_s, f_t, p=self.p, batch=batch)


# ----------------------------------------------------------------------------- VID
@full_precision
def vid_loss(mean: Tensor, f_t: Tensor, var: Tensor) -> Tensor:
    r"""VID negative log-likelihood (Ahn et al., CVPR 2019), RepDistiller ``VID.py``.

    .. math::
        L = \mathrm{mean}_{n,c,\dots} \Big[\tfrac12 \log\sigma_c^2
            + \frac{(t_{n,c} - \mu_{n,c})^2}{2\sigma_c^2}\Big]

    Args:
        mean: ``[N, C]`` / ``[B, C, *S]`` regressed student features :math:`\mu(s)`.
        f_t: teacher features, same shape.
        var: ``[C]`` positive per-channel variances :math:`\sigma_c^2`.
    """
    check_nonempty("vid", mean, f_t)
    _check(mean, "mean")
    _check(f_t, "f_t")
    f_t = f_t.detach()
    _check_same_shape(mean, f_t, "mean", "f_t", "regress the student to the teacher's shape.")
    if var.shape != (f_t.shape[1],):
        raise ValueError(f"`var` must have shape [{f_t.shape[1]}] (one variance per teacher "
                         f"channel), got {tuple(var.shape)}.")
    v = var.view(1, -1, *([1] * (f_t.dim() - 2)))
    return 0.5 * ((mean - f_t) ** 2 / v + torch.log(v)).mean()


@register("vid")
class VID(DistillLoss):
    r"""Variational information distillation with a learned regressor and variance.

    Regressor (RepDistiller): ``Linear(s, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, t)``
    on the channel axis; variance :math:`\sigma_c^2 = \mathrm{softplus}(\alpha_c) + \epsilon`,
    initialised to ``init_var``.

    Args:
        student_dim, teacher_dim: feature widths.
        hidden_dim: regressor width (default ``teacher_dim``).
        init_var: initial variance (5.0).
        eps: variance floor (1e-5).
    """

    needs_dims = True
    level = "node"
    family = "feature"

    def __init__(self, student_dim: int, teacher_dim: int, hidden_dim: int | None = None,
                 init_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        if not init_var > eps:
            raise ValueError(f"`init_var` must exceed eps={eps}, got {init_var}.")
        h = teacher_dim if hidden_dim is None else hidden_dim
        self.student_dim, self.eps = student_dim, eps
        self.regressor = build_head("regressor", student_dim, teacher_dim, hidden_dim=h)
        alpha = math.log(math.expm1(init_var - eps))
        self.log_scale = nn.Parameter(torch.full((teacher_dim,), alpha))

    def variance(self) -> Tensor:
        """``[teacher_dim]`` current variances ``softplus(alpha) + eps``."""
        return F.softplus(self.log_scale) + self.eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        _check(f_s, "f_s")
        _check_width(f_s, self.student_dim, "f_s", "student_dim")
        return vid_loss(_channelwise(self.regressor, f_s), f_t, self.variance())


# ----------------------------------------------------------------------------- AB
@full_precision
def ab_loss(r_s: Tensor, f_t: Tensor, *, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Activation-boundary loss (Heo et al., AAAI 2019) on pre-activations.

    .. math::
        \ell = 1[t > 0]\,\mathrm{relu}(m - r)^2 + 1[t \le 0]\,\mathrm{relu}(m + r)^2

    the same per-element value as RepDistiller ``AB.py``'s ``criterion_alternative_l2``.
    ``reduction="mean"`` averages over all elements (METHODS.md); ``"batchmean"`` is the
    reference's ``sum / B`` (its extra per-layer factors ``2**(i-L+1) * 3 / 1000`` belong in
    the match weight); ``"sum"`` sums.

    Args:
        r_s: connected student pre-activations, shape of ``f_t``.
        f_t: teacher pre-activations (before ReLU).
        margin: ``m`` (1.0).
        reduction: see above.
    """
    check_nonempty("ab", r_s, f_t)
    _check(r_s, "r_s")
    _check(f_t, "f_t")
    f_t = f_t.detach()
    _check_same_shape(r_s, f_t, "r_s", "f_t", "connect the student to the teacher's shape.")
    if reduction not in AB_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {AB_REDUCTIONS}.")
    on = f_t > 0
    per = torch.where(on, F.relu(margin - r_s), F.relu(margin + r_s)) ** 2
    if reduction == "mean":
        return per.mean()
    total = per.sum()
    return total / r_s.shape[0] if reduction == "batchmean" else total


@register("ab")
class AB(DistillLoss):
    """Activation-boundary distillation with a linear connector, see :func:`ab_loss`.

    Hook the *pre-activation* outputs (before ReLU) of both models.

    Args:
        student_dim, teacher_dim: feature widths.
        margin: ``m`` (1.0).
        reduction: ``"mean"``, ``"batchmean"`` or ``"sum"``.
    """

    needs_dims = True
    level = "node"
    family = "feature"

    def __init__(self, student_dim: int, teacher_dim: int, margin: float = 1.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in AB_REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {AB_REDUCTIONS}.")
        self.student_dim, self.margin, self.reduction = student_dim, margin, reduction
        self.connector = build_head("linear", student_dim, teacher_dim)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        _check(f_s, "f_s")
        _check_width(f_s, self.student_dim, "f_s", "student_dim")
        return ab_loss(_channelwise(self.connector, f_s), f_t, margin=self.margin,
                       reduction=self.reduction)
