"""PointNet (Qi et al., 2017), without the input/feature transform nets (vanilla PointNet).

A shared per-point MLP, a global max pool (the symmetric function that makes it invariant to
point order) and a classifier MLP. Submodules for hooks:

* ``convs.{i}`` -> ``[N, widths[i]]`` per-point features after layer ``i`` (Linear, BN, ReLU);
* ``pool`` -> ``[B, widths[-1]]`` the graph embedding (global max);
* ``head`` -> ``[B, num_classes]`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from graphkd.models._common import GlobalPool, check_batch, check_points, mlp_head

if TYPE_CHECKING:
    from torch_geometric.data import Data

__all__ = ["PointNet"]


class PointNet(nn.Module):
    """Vanilla PointNet classifier for batched point clouds.

    Args:
        in_channels: coordinates per point.
        num_classes: number of classes.
        widths: widths of the shared per-point MLP (reference: ``(64, 64, 64, 128, 1024)``).
        head: hidden widths of the classifier (reference: ``(512, 256)``).
        dropout: dropout in the head (reference: 0.3).
        pool: graph readout (``"max"`` as in the paper).

    Forward: ``model(pos, batch=None)`` or ``model(data)``, as :class:`~graphkd.models.DGCNN`;
    returns logits ``[B, num_classes]``.

    Example:
        >>> import torch
        >>> PointNet(2, 10, widths=(16, 32), head=(16,)).eval()(torch.randn(20, 2)).shape
        torch.Size([1, 10])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 40, *,
                 widths: Sequence[int] = (64, 64, 64, 128, 1024),
                 head: Sequence[int] = (512, 256), dropout: float = 0.3,
                 pool: str = "max") -> None:
        super().__init__()
        if not widths:
            raise ValueError("PointNet needs at least one per-point layer (non-empty `widths`).")
        self.in_channels, self.num_classes = in_channels, num_classes
        chans = [in_channels, *widths]
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Linear(chans[i], chans[i + 1], bias=False),
                          nn.BatchNorm1d(chans[i + 1]), nn.ReLU())
            for i in range(len(widths)))
        self.pool = GlobalPool(pool)
        self.head = mlp_head(widths[-1] * self.pool.multiplier, head, num_classes,
                             dropout=dropout)

    def forward(self, pos: Tensor | Data, batch: Tensor | None = None) -> Tensor:
        if not isinstance(pos, Tensor) and hasattr(pos, "pos"):
            pos, batch = pos.pos, getattr(pos, "batch", None)
        check_points(pos, self.in_channels)
        check_batch(batch, pos.shape[0])
        h = pos
        for conv in self.convs:
            h = conv(h)
        return self.head(self.pool(h, batch))
