"""Shared building blocks: global pooling, MLP heads, OGB-style atom/bond encoders, input checks,
and the BatchNorm-statistics hook of layers that compute their own (:func:`batchnorm_moments`).

The models import nothing of the distributed layer: a BatchNorm that synchronises across
processes (:class:`graphkd.sync_batchnorm.SyncBatchNorm`) plugs into :func:`batchnorm_moments`
through its ``combine_moments`` method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from graphkd.datasets.features import ATOM_FEATURE_DIMS, BOND_FEATURE_DIMS

__all__ = ["GlobalPool", "AtomEncoder", "BondEncoder", "mlp_head", "num_graphs_of",
           "batchnorm_moments"]

_REDUCE = ("max", "mean", "sum")


def num_graphs_of(batch: Tensor | None, num_graphs: int | None = None) -> int:
    """Number of graphs in a PyG ``batch`` vector (1 when ``batch`` is None)."""
    if num_graphs is not None:
        return num_graphs
    if batch is None:
        return 1
    return int(batch.max()) + 1 if batch.numel() else 0


def batchnorm_moments(bn: nn.Module, count: int, mean: Tensor, var: Tensor,
                      training: bool) -> tuple[int, Tensor, Tensor]:
    """The per-channel ``(count, mean, biased variance)`` that ``bn`` normalises with, given
    this process's local ones.

    For layers that read a BatchNorm's parameters but compute its training statistics
    themselves (DGCNN's fused :class:`~graphkd.models.dgcnn.EdgeConv`). A plain
    ``nn.BatchNorm`` normalises with the local batch: the arguments come back unchanged (the
    same objects). A BatchNorm layer that normalises over more than the local batch provides
    ``combine_moments(count, mean, var, training)`` and is asked instead:
    :class:`graphkd.sync_batchnorm.SyncBatchNorm` combines the moments over its process group,
    with gradients. This hook is what keeps the models free of any import of the
    distributed / synchronisation layers.

    Args:
        bn: the BatchNorm layer whose parameters the caller applies.
        count: values per channel in the local batch.
        mean: ``[C]`` local mean.
        var: ``[C]`` local biased variance.
        training: the caller's mode (statistics are combined only in training).

    Returns:
        ``(count, mean, var)`` of the batch ``bn`` normalises over.
    """
    combine = getattr(bn, "combine_moments", None)
    if combine is None:
        return count, mean, var
    return combine(count, mean, var, training)


def check_batch(batch: Tensor | None, n: int) -> None:
    if batch is None:
        return
    if batch.dim() != 1 or batch.shape[0] != n:
        raise ValueError(f"`batch` must have shape ({n},) (one graph id per node/point), got "
                         f"{tuple(batch.shape)}.")
    if batch.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"`batch` must be an integer tensor, got {batch.dtype}.")


def _dense_reduce(x: Tensor, mode: str) -> Tensor:
    """Reduce ``[B, P, C]`` over ``P``."""
    if mode == "max":
        return x.amax(dim=1)
    return x.mean(dim=1) if mode == "mean" else x.sum(dim=1)


class GlobalPool(nn.Module):
    """Per-graph readout of node/point features: ``max``, ``mean``, ``sum`` or ``max+mean``.

    ``forward(x [N, C], batch [N] | None, num_graphs=None) -> [B, C]`` (``[B, 2C]`` for
    ``max+mean``, max first). Its output is the graph embedding a batch-level distillation
    method reads with a hook on ``"pool"``. An empty graph pools to zeros.

    Example:
        >>> GlobalPool("max")(torch.tensor([[1.], [3.], [2.]]), torch.tensor([0, 0, 1]))
        tensor([[3.],
                [2.]])
    """

    def __init__(self, reduce: str = "mean") -> None:
        super().__init__()
        modes = [*(m.strip() for m in reduce.split("+"))]
        bad = [m for m in modes if m not in _REDUCE]
        if bad or not modes:
            raise ValueError(f"unknown pooling {reduce!r}; valid: 'max', 'mean', 'sum', "
                             "'max+mean' (any '+'-joined list).")
        self.reduce = reduce
        self.modes = modes

    def forward(self, x: Tensor, batch: Tensor | None = None,
                num_graphs: int | None = None) -> Tensor:
        b = num_graphs_of(batch, num_graphs)
        if batch is None:
            if b != 1:
                raise ValueError(f"num_graphs={b} needs a `batch` vector.")
            return torch.cat([_dense_reduce(x.unsqueeze(0), m) for m in self.modes], dim=-1)
        counts = torch.bincount(batch.long(), minlength=b)
        n = x.shape[0]
        if b and n % b == 0 and bool((counts == n // b).all()) and (
                n < 2 or bool((batch[1:] >= batch[:-1]).all())):
            # equal-size graphs in sorted order (batched point clouds): one dense reduction,
            # much faster than scatter_reduce (whose amax backward is slow on CPU).
            dense = x.view(b, n // b, x.shape[1])
            return torch.cat([_dense_reduce(dense, m) for m in self.modes], dim=-1)
        index = batch.long().unsqueeze(-1).expand_as(x)
        outs = []
        for mode in self.modes:
            if mode == "max":
                out = x.new_zeros(b, x.shape[1]).scatter_reduce(0, index, x, "amax",
                                                                include_self=False)
            else:
                out = x.new_zeros(b, x.shape[1]).index_add_(0, batch.long(), x)
                if mode == "mean":
                    out = out / counts.clamp_min(1).unsqueeze(-1).to(x.dtype)
            outs.append(out)
        return torch.cat(outs, dim=-1)

    @property
    def multiplier(self) -> int:
        """Output width / input width."""
        return len(self.modes)

    def extra_repr(self) -> str:
        return repr(self.reduce)


def mlp_head(in_channels: int, hidden: Sequence[int], out_channels: int, *,
             dropout: float = 0.5, negative_slope: float = 0.0) -> nn.Sequential:
    """``[Linear -> BatchNorm -> (Leaky)ReLU -> Dropout] * len(hidden) -> Linear``."""
    layers: list[nn.Module] = []
    c = in_channels
    for h in hidden:
        act = nn.LeakyReLU(negative_slope) if negative_slope else nn.ReLU()
        layers += [nn.Linear(c, h, bias=False), nn.BatchNorm1d(h), act, nn.Dropout(dropout)]
        c = h
    layers.append(nn.Linear(c, out_channels))
    return nn.Sequential(*layers)


class _CategoricalEncoder(nn.Module):
    """Sum of one embedding table per integer feature column (OGB ``AtomEncoder`` style)."""

    kind = "feature"

    def __init__(self, emb_dim: int, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = list(dims)
        self.embeddings = nn.ModuleList(nn.Embedding(d, emb_dim) for d in self.dims)
        for emb in self.embeddings:
            nn.init.xavier_uniform_(emb.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_floating_point() or x.dim() != 2 or x.shape[1] != len(self.dims):
            raise ValueError(
                f"{type(self).__name__} expects int64 OGB {self.kind} features "
                f"[N, {len(self.dims)}] (graphkd.datasets.smiles_to_data), got "
                f"{tuple(x.shape)} {x.dtype}. For float features pass in_channels=F to the model."
            )
        if x.shape[0]:
            lo = x.min(0).values
            hi = x.max(0).values
            for j, d in enumerate(self.dims):
                if int(lo[j]) < 0 or int(hi[j]) >= d:
                    raise ValueError(f"{self.kind} feature column {j} has values in "
                                     f"[{int(lo[j])}, {int(hi[j])}] but must lie in [0, {d}).")
        out = self.embeddings[0](x[:, 0])
        for j in range(1, len(self.dims)):
            out = out + self.embeddings[j](x[:, j])
        return out


class AtomEncoder(_CategoricalEncoder):
    """Embed the 9 OGB atom features ``[N, 9]`` (int64) as a sum of 9 tables -> ``[N, emb]``."""

    kind = "atom"

    def __init__(self, emb_dim: int) -> None:
        super().__init__(emb_dim, ATOM_FEATURE_DIMS)


class BondEncoder(_CategoricalEncoder):
    """Embed the 3 OGB bond features ``[E, 3]`` (int64) as a sum of 3 tables -> ``[E, emb]``."""

    kind = "bond"

    def __init__(self, emb_dim: int) -> None:
        super().__init__(emb_dim, BOND_FEATURE_DIMS)


def node_encoder(in_channels: int | None, hidden: int) -> nn.Module:
    """``AtomEncoder(hidden)`` for OGB integer features (``in_channels=None``), else a Linear."""
    return AtomEncoder(hidden) if in_channels is None else nn.Linear(in_channels, hidden)


def check_points(pos: Tensor, in_channels: int, name: str = "pos") -> None:
    if not isinstance(pos, Tensor):
        raise TypeError(f"`{name}` must be a Tensor or a PyG Data/Batch, got {type(pos).__name__}.")
    if pos.dim() != 2 or pos.shape[1] != in_channels or not pos.is_floating_point():
        raise ValueError(
            f"`{name}` must be a float [N, {in_channels}] tensor of flattened points (PyG Batch "
            f"style, with `batch`), got {tuple(pos.shape)} {pos.dtype}. Build the model with "
            f"in_channels={pos.shape[-1] if pos.dim() else '?'} or flatten [B, P, D] clouds "
            "with Batch.from_data_list."
        )
