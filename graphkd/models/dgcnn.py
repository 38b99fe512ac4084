"""DGCNN (Wang et al., 2019): EdgeConv on a kNN graph rebuilt from the current features.

Every :class:`EdgeConv` layer builds its own kNN graph with the core
:meth:`graphkd.graphs.EdgeSet.knn` (per cloud, chunked; PyG's ``knn_graph`` needs pyg-lib) and
computes ``h_i = max_{j in kNN(i)} LeakyReLU(BN(W [x_i, x_j - x_i]))``. The graph it used is kept
in ``conv.last_edges`` (an ``EdgeSet`` with ``degree=k`` and ``batch``), which is what LSP's
"virtual edges" need.

Submodules for hooks (``model.get_submodule(path)`` / ``Match(teacher="convs.3")``):

* ``convs.{i}`` -> ``[N, widths[i]]`` per-point features of EdgeConv layer ``i``;
* ``fuse`` -> ``[N, emb_dims]`` point-wise fusion of the concatenated layer outputs;
* ``pool`` -> ``[B, 2 * emb_dims]`` the graph embedding (global max ++ mean);
* ``head`` -> ``[B, num_classes]`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from graphkd.graphs import EdgeSet
from graphkd.models._common import GlobalPool, check_batch, check_points, mlp_head

__all__ = ["EdgeConv", "DGCNN"]


class EdgeConv(nn.Module):
    """Dynamic EdgeConv: kNN on the input features, edge MLP, max over neighbours.

    ``h_i = max_{j in kNN_k(x_i)} LeakyReLU(BN(W [x_i, x_j - x_i]))`` with ``W`` of shape
    ``[out, 2 * in]`` (no bias). Computed as ``(W_1 - W_2) x_i + W_2 x_j`` per point before the
    gather, which is the same value with ``k`` times fewer multiply-adds.

    Args:
        in_channels: input width.
        out_channels: output width.
        k: neighbours per point (the kNN graph is built within each cloud).
        loop: whether a point is its own neighbour (True in the reference implementation,
            whose ``knn`` keeps the point itself at distance 0).
        negative_slope: LeakyReLU slope (0.2).

    Shapes: ``x`` ``[N, in]``, ``batch`` ``[N]`` sorted -> ``[N, out]``.

    Example:
        >>> conv = EdgeConv(3, 16, k=4)
        >>> conv(torch.randn(10, 3)).shape
        torch.Size([10, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, k: int, *, loop: bool = True,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        self.in_channels, self.out_channels, self.k, self.loop = (
            in_channels, out_channels, k, loop)
        self.lin = nn.Linear(2 * in_channels, out_channels, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)
        self.act = nn.LeakyReLU(negative_slope)
        self.last_edges: EdgeSet | None = None

    def forward(self, x: Tensor, batch: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        edges = EdgeSet.knn(x.detach(), self.k, batch=batch, loop=self.loop)
        self.last_edges = edges
        w_i, w_j = self.lin.weight[:, : self.in_channels], self.lin.weight[:, self.in_channels:]
        a = x @ (w_i - w_j).T                          # [N, out]: the x_i part
        b = x @ w_j.T                                  # [N, out]: the x_j part
        e = a.unsqueeze(1) + b[edges.col.view(n, self.k)]   # [N, k, out]
        e = self.act(self.bn(e.reshape(n * self.k, -1)))
        return e.view(n, self.k, -1).max(dim=1).values

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, k={self.k}, loop={self.loop}"


class DGCNN(nn.Module):
    """DGCNN classifier for batched point clouds.

    Args:
        in_channels: coordinates per point (3 for ModelNet40, 2 for digits).
        num_classes: number of classes.
        k: neighbours of every EdgeConv layer.
        widths: output width of each EdgeConv layer (reference: ``(64, 64, 128, 256)``).
        emb_dims: width of the point-wise fusion layer (reference: 1024).
        head: hidden widths of the classifier MLP (reference: ``(512, 256)``).
        dropout: dropout in the head.
        pool: graph readout (reference: ``"max+mean"``).
        loop: include each point in its own neighbourhood.

    Forward: ``model(pos, batch=None)`` with ``pos`` ``[N, in_channels]`` flattened points and
    ``batch`` ``[N]`` sorted cloud ids (PyG ``Batch``), or ``model(data)`` with a PyG
    ``Data``/``Batch`` holding ``pos`` (and ``batch``). Returns logits ``[B, num_classes]``.

    Example:
        >>> from torch_geometric.data import Batch, Data
        >>> data = Batch.from_data_list([Data(pos=torch.randn(32, 3)) for _ in range(2)])
        >>> DGCNN(3, 10, k=8, widths=(16, 16), emb_dims=32, head=(16,))(data).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 40, *, k: int = 20,
                 widths: Sequence[int] = (64, 64, 128, 256), emb_dims: int = 1024,
                 head: Sequence[int] = (512, 256), dropout: float = 0.5,
                 pool: str = "max+mean", loop: bool = True) -> None:
        super().__init__()
        if not widths:
            raise ValueError("DGCNN needs at least one EdgeConv layer (non-empty `widths`).")
        self.in_channels, self.num_classes, self.k = in_channels, num_classes, k
        chans = [in_channels, *widths]
        self.convs = nn.ModuleList(
            EdgeConv(chans[i], chans[i + 1], k, loop=loop) for i in range(len(widths)))
        self.fuse = nn.Sequential(nn.Linear(sum(widths), emb_dims, bias=False),
                                  nn.BatchNorm1d(emb_dims), nn.LeakyReLU(0.2))
        self.pool = GlobalPool(pool)
        self.head = mlp_head(emb_dims * self.pool.multiplier, head, num_classes,
                             dropout=dropout, negative_slope=0.2)

    def forward(self, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        if not isinstance(pos, Tensor) and hasattr(pos, "pos"):
            pos, batch = pos.pos, getattr(pos, "batch", None)
        check_points(pos, self.in_channels)
        check_batch(batch, pos.shape[0])
        h, feats = pos, []
        for conv in self.convs:
            h = conv(h, batch)
            feats.append(h)
        h = self.fuse(torch.cat(feats, dim=-1))
        return self.head(self.pool(h, batch))

    @property
    def knn_graphs(self) -> list[EdgeSet | None]:
        """The kNN graph each EdgeConv layer used in the last forward pass."""
        return [conv.last_edges for conv in self.convs]
