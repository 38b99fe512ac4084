r"""Synchronised BatchNorm over a process group that also runs on CPU (gloo).

``torch.nn.SyncBatchNorm`` only synchronises CUDA (and XPU/HPU) tensors: on CPU it raises
``ValueError`` as soon as a process group is initialised, and ``DistributedDataParallel`` refuses
CPU modules that contain it. :class:`SyncBatchNorm` here defers to torch's kernel on those
devices and computes the *global* batch statistics itself on CPU.

For an input ``x`` of shape ``[N_r, C, *]`` on rank ``r`` (``*``: any number of spatial dims,
possibly none), every channel is reduced over all dims but dim 1: rank ``r`` holds
``n_r = N_r * prod(*)`` values per channel with mean ``m_r`` and centred sum of squares
``M2_r = sum (x - m_r)^2``. :func:`global_moments` gathers the per-rank ``[2, C]`` statistics
with gradients (:func:`graphkd.distributed.gather_with_grad`, defined in the low-level
:mod:`graphkd._collectives`, so this module never imports :mod:`graphkd.distributed`) and
combines them exactly (Chan et al.)::

    n    = sum_r n_r
    mean = sum_r n_r * m_r / n
    M2   = sum_r [M2_r + n_r * (m_r - mean)^2]
    y    = (x - mean) / sqrt(M2 / n + eps) * weight + bias

so the forward *and* backward pass of every rank equal those of one ``nn.BatchNorm`` on the
concatenated global batch (ranks may hold different ``N_r``, even zero). The running
statistics get ``mean`` and the unbiased ``M2 / (n - 1)`` with ``momentum`` (a cumulative
average when ``momentum is None``), as ``nn.BatchNorm`` does on the global batch.

Layers that read a BatchNorm's parameters but compute its statistics themselves (DGCNN's
fused :class:`~graphkd.models.dgcnn.EdgeConv`) hand their local moments to
:func:`graphkd.models._common.batchnorm_moments`, which calls the layer's
:meth:`SyncBatchNorm.combine_moments` (the same :func:`global_moments`), so they are
synchronised as well, while the models never import this module or the DDP layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from graphkd._collectives import gather_with_grad, group_size

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "global_moments", "synchronises"]

# Hook dictionaries shared by a converted layer (hooks installed on the BatchNorm, e.g. a
# Distiller's feature hooks, keep firing and their handles keep removing them).
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_backward_pre_hooks", "_backward_hooks")


def global_moments(count: int, mean: Tensor, m2: Tensor,
                   group: Any = None) -> tuple[int, Tensor, Tensor]:
    r"""Per-channel moments of the global batch from every rank's local ones, with gradients.

    Rank ``r`` passes its number of values per channel ``n_r`` (``count``), their mean ``m_r``
    and centred sum of squares ``M2_r = sum (x - m_r)^2`` (``[C]`` each; finite, e.g. zeros,
    when ``n_r = 0``). The ``[2C]`` statistics are gathered with
    :func:`graphkd.distributed.gather_with_grad` and combined exactly (Chan et al.)::

        n    = sum_r n_r
        mean = sum_r n_r * m_r / n
        M2   = sum_r [M2_r + n_r * (m_r - mean)^2]

    so the biased variance of the global batch is ``M2 / n`` and the unbiased one
    ``M2 / (n - 1)``; the gradient of anything computed from ``mean``/``M2`` flows back to
    every rank's ``m_r``/``M2_r`` (summed over ranks, as DDP expects). It is the one place
    where :class:`SyncBatchNorm` and layers that compute their BatchNorm statistics themselves
    (DGCNN's :class:`~graphkd.models.dgcnn.EdgeConv`, through
    :meth:`SyncBatchNorm.combine_moments`) synchronise. Every process of ``group``
    must call it (and backward) the same number of times. Outside ``torch.distributed`` or with
    one process it returns its arguments unchanged.

    Args:
        count: ``n_r``, this rank's number of values per channel.
        mean: ``m_r`` ``[C]``.
        m2: ``M2_r`` ``[C]`` (same dtype and device as ``mean``).
        group: the process group (default: the world).

    Returns:
        ``(n, mean, M2)`` of the global batch: an ``int`` and two ``[C]`` tensors.

    Example:
        >>> m = x.mean(0)                                   # x: [N_r, C] on this rank
        >>> n, mean, m2 = global_moments(x.shape[0], m, (x - m).square().sum(0))
        >>> var = m2 / n                                    # the global batch's biased variance
    """
    w = group_size(group)
    if w <= 1:
        return count, mean, m2
    c = mean.shape[0]
    counts = [torch.zeros(1, dtype=torch.long, device=mean.device) for _ in range(w)]
    dist.all_gather(counts, torch.tensor([count], dtype=torch.long, device=mean.device),
                    group=group)
    n_r = torch.cat(counts)
    n = int(n_r.sum())
    stats = gather_with_grad(torch.cat([mean, m2]).unsqueeze(0), group=group)
    means, m2s = stats[:, :c], stats[:, c:]  # [W, C] each
    weights = n_r.to(mean.dtype).unsqueeze(1)
    total = (weights * means).sum(0) / max(n, 1)
    return n, total, (m2s + weights * (means - total).square()).sum(0)


def synchronises(bn: nn.Module, training: bool | None = None) -> bool:
    """Whether ``bn`` normalises with global-batch statistics: a :class:`SyncBatchNorm` in
    training mode (``training``, default ``bn.training``) whose process group holds more than
    one process.

    Layers that read a BatchNorm's parameters and compute the statistics themselves (DGCNN's
    ``EdgeConv``, passing its own mode) have them combined with :func:`global_moments` when
    this is true (:meth:`SyncBatchNorm.combine_moments`). A plain ``nn.BatchNorm`` returns
    ``False`` at the cost of one ``isinstance``.
    """
    if not isinstance(bn, SyncBatchNorm):
        return False
    if not (bn.training if training is None else training):
        return False
    return group_size(bn.process_group) > 1


class SyncBatchNorm(_BatchNorm):
    r"""BatchNorm over the global batch of a process group, on CPU as on CUDA.

    A drop-in replacement for ``torch.nn.SyncBatchNorm`` (same arguments, ``process_group``
    attribute and input checks) for inputs ``[N, C, *]`` with at least 2 dims:

    * non-CPU inputs: torch's ``SyncBatchNorm.forward`` (its CUDA kernel);
    * CPU, no synchronisation needed (eval mode, no process group, a group of 1 process):
      ``F.batch_norm``, exactly ``nn.BatchNorm1d/2d/3d``; eval mode never communicates;
    * CPU in training with ``W > 1`` processes: rank ``r``'s per-channel count ``n_r``, mean
      ``m_r`` and ``M2_r = sum (x - m_r)^2`` (``[C]`` each) are gathered with gradients and
      combined exactly: ``mean = sum_r n_r m_r / n``,
      ``M2 = sum_r [M2_r + n_r (m_r - mean)^2]``, ``y = (x - mean) / sqrt(M2 / n + eps) *
      weight + bias``. Every process of the group must call ``forward`` (and, like DDP,
      ``backward``) the same number of times.

    It derives from ``_BatchNorm`` rather than ``torch.nn.SyncBatchNorm`` because
    ``DistributedDataParallel`` rejects CPU modules holding the latter.

    Args:
        num_features: ``C``, the channel dim (dim 1) of the input.
        eps: added to the variance.
        momentum: running-statistics factor (``None``: cumulative average).
        affine: learnable ``weight`` and ``bias`` ``[C]``.
        track_running_stats: keep ``running_mean`` / ``running_var`` ``[C]``.
        process_group: the group to synchronise over (default: the world).
        **kwargs: ``device``, ``dtype`` (and ``bias`` where torch's BatchNorm takes it).

    Raises:
        ValueError: in training, the whole group holds at most one value per channel.

    Example:
        >>> bn = SyncBatchNorm(16)              # or convert_sync_batchnorm(model)
        >>> y = bn(torch.randn(5, 16, 32))      # rank 0: 5 samples; rank 1 may hold 3
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, **kwargs)
        self.process_group = process_group

    _check_input_dim = nn.SyncBatchNorm._check_input_dim
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type != "cpu":
            return nn.SyncBatchNorm.forward(self, input)  # type: ignore[arg-type]
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        track = not self.training or self.track_running_stats
        running_mean = self.running_mean if track else None
        running_var = self.running_var if track else None
        if not self.training or group_size(self.process_group) <= 1:
            bn_training = self.training or (running_mean is None and running_var is None)
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                bn_training, factor, self.eps)
        return self._global_batch_norm(input, running_mean, running_var, factor,
                                       self.process_group)

    def _global_batch_norm(self, input: Tensor, running_mean: Tensor | None,
                           running_var: Tensor | None, factor: float, group: Any) -> Tensor:
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        low = input.dtype in (torch.float16, torch.bfloat16)
        x = input.float() if low else input
        n_local = input.numel() // c
        mean_r = x.sum(dims) / max(n_local, 1)  # a rank without samples adds nothing
        m2_r = (x - mean_r.view(shape)).square().sum(dims)
        n, mean, m2 = global_moments(n_local, mean_r, m2_r, group)
        if n <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {n} over the "
                f"{group_size(group)} processes (local input size {list(input.shape)}).")
        y = (x - mean.view(shape)) * torch.rsqrt(m2 / n + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype).view(shape)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(shape)
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1.0 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
            if running_var is not None:
                var = (m2 / (n - 1)).to(running_var.dtype)
                running_var.mul_(1.0 - factor).add_(var, alpha=factor)
        return y.to(input.dtype)

    def combine_moments(self, count: int, mean: Tensor, var: Tensor,
                        training: bool | None = None) -> tuple[int, Tensor, Tensor]:
        """Per-channel moments of the batch this layer normalises over, from local ones.

        The hook of :func:`graphkd.models._common.batchnorm_moments`, for layers that read this
        BatchNorm's parameters but compute its statistics themselves (DGCNN's fused
        ``EdgeConv``, passing its own ``training`` mode). When :func:`synchronises` holds, the
        local ``count`` values per channel with ``mean`` and biased ``var`` (``[C]`` each) are
        combined over the process group with gradients (:func:`global_moments`) into the global
        batch's ``(count, mean, biased var)``; otherwise the arguments are returned unchanged
        (the same objects, so a single process computes exactly as before).
        """
        if not synchronises(self, training):
            return count, mean, var
        count, mean, m2 = global_moments(count, mean, var * count, self.process_group)
        return count, mean, m2 / max(count, 1)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """:func:`convert_sync_batchnorm` (torch's classmethod spelling)."""
        return convert_sync_batchnorm(module, process_group)


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a :class:`SyncBatchNorm`.

    Mirrors ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: ``BatchNorm1d/2d/3d`` and
    ``torch.nn.SyncBatchNorm`` layers (any ``_BatchNorm``) at any depth become
    :class:`SyncBatchNorm` layers that share their ``weight``/``bias`` parameters (so their
    ``requires_grad`` and any optimizer holding them), running statistics and
    ``num_batches_tracked`` buffers, training mode and forward/backward hooks. Layers that
    already are :class:`SyncBatchNorm` are kept. Children are replaced in place.

    Args:
        module: a model, or a single BatchNorm layer.
        process_group: the group to synchronise over (default: the world).

    Returns:
        ``module`` with its layers converted, or the new layer when ``module`` itself is one.

    Example:
        >>> student = convert_sync_batchnorm(student)     # before DDP
    """
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        kwargs = {"bias": False} if module.affine and module.bias is None else {}
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group, **kwargs)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
        for name in _HOOK_DICTS:
            if hasattr(module, name):
                setattr(out, name, getattr(module, name))
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out
