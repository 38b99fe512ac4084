"""Message-passing graph classifiers on PyG: GIN / GIN-E, GCN, and a node-wise MLP baseline.

All three share one layout, so the same dotted paths work for hooks:

* ``encoder`` -> ``[N, hidden]`` node embeddings (an OGB-style :class:`AtomEncoder` over the 9
  integer atom features when ``in_channels=None``, else a ``Linear`` over float features);
* ``convs.{i}`` -> ``[N, hidden]`` node features after layer ``i`` (conv, BN, ReLU except after
  the last layer, dropout), as OGB's ``GNN_node`` with ``JK="last"``;
* ``pool`` -> ``[B, hidden]`` the graph embedding (mean readout by default);
* ``head`` -> ``[B, num_classes]`` logits (one Linear, as OGB's ``graph_pred_linear``).

Forward: ``model(x, edge_index, batch=None, edge_attr=None)`` or ``model(data)`` with a PyG
``Data``/``Batch`` (``x``, ``edge_index``, ``edge_attr``, ``batch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from graphkd.models._common import BondEncoder, GlobalPool, check_batch, node_encoder

if TYPE_CHECKING:
    from torch_geometric.data import Data

__all__ = ["GIN", "GCN", "MLP", "GINEBlock"]


def _unpack(x, edge_index, batch, edge_attr):
    if not isinstance(x, Tensor) and hasattr(x, "x"):
        data = x
        return (data.x, data.edge_index, getattr(data, "batch", None),
                getattr(data, "edge_attr", None))
    return x, edge_index, batch, edge_attr


def _check_edge_index(edge_index: Tensor | None, n: int) -> Tensor:
    if edge_index is None:
        raise ValueError("`edge_index` [2, E] is required (or pass a PyG Data/Batch).")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point():
        raise ValueError(f"`edge_index` must be an integer [2, E] tensor, got "
                         f"{tuple(edge_index.shape)} {edge_index.dtype}.")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"`edge_index` refers to node {int(edge_index.max())} but x has {n} "
                         "rows.")
    return edge_index


class _GraphClassifier(nn.Module):
    """Encoder -> layers -> pool -> linear head (see the module docstring)."""

    def __init__(self, num_classes: int, hidden: int, num_layers: int,
                 in_channels: int | None, dropout: float, pool: str) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1, got {num_layers}.")
        self.num_classes, self.hidden, self.in_channels = num_classes, hidden, in_channels
        self.dropout = dropout
        self.encoder = node_encoder(in_channels, hidden)
        self.convs = nn.ModuleList()
        self.pool = GlobalPool(pool)
        self.head = nn.Linear(hidden * self.pool.multiplier, num_classes)

    def _readout(self, h: Tensor, batch: Tensor | None) -> Tensor:
        return self.head(self.pool(h, batch))


class GINEBlock(nn.Module):
    """One GIN(-E) layer: ``BN(MLP((1 + eps) x_i + sum_{j -> i} ReLU(x_j + e_ji)))``, then ReLU
    (unless ``last``) and dropout. Without edge features the message is ``x_j`` (plain GIN).

    Shapes: ``x`` ``[N, H]``, ``edge_index`` ``[2, E]``, ``edge_attr`` ``[E, 3]`` int64 OGB bond
    features (embedded by this layer's own :class:`BondEncoder`) -> ``[N, H]``.
    """

    def __init__(self, hidden: int, *, edge_features: bool, last: bool, dropout: float) -> None:
        super().__init__()
        from torch_geometric.nn import GINConv, GINEConv

        mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.BatchNorm1d(2 * hidden),
                            nn.ReLU(), nn.Linear(2 * hidden, hidden))
        self.bond_encoder = BondEncoder(hidden) if edge_features else None
        self.conv = GINEConv(mlp, train_eps=True) if edge_features else GINConv(mlp,
                                                                                 train_eps=True)
        self.bn = nn.BatchNorm1d(hidden)
        self.last, self.dropout = last, dropout

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        if self.bond_encoder is not None:
            if edge_attr is None:
                raise ValueError("GIN-E needs `edge_attr` [E, 3] (OGB bond features); build "
                                 "GIN(edge_features=False) for graphs without them.")
            h = self.conv(x, edge_index, self.bond_encoder(edge_attr))
        else:
            h = self.conv(x, edge_index)
        h = self.bn(h)
        if not self.last:
            h = torch.relu(h)
        return nn.functional.dropout(h, self.dropout, self.training)


class GIN(_GraphClassifier):
    """GIN-E (GIN with OGB bond features, Hu et al. 2020) or plain GIN (``edge_features=False``).

    Args:
        num_classes: outputs of the head.
        hidden: node embedding width (OGB: 300).
        num_layers: message-passing layers (OGB: 5).
        in_channels: ``None`` for OGB integer atom features ``[N, 9]``; an int for float ``x``.
        edge_features: use OGB bond features (GIN-E).
        dropout: dropout after every layer (OGB: 0.5).
        pool: readout (OGB: ``"mean"``).

    Example:
        >>> from graphkd.datasets import smiles_to_data
        >>> GIN(2, hidden=16, num_layers=2)(smiles_to_data("CCO")).shape
        torch.Size([1, 2])
    """

    def __init__(self, num_classes: int = 2, *, hidden: int = 300, num_layers: int = 5,
                 in_channels: int | None = None, edge_features: bool = True,
                 dropout: float = 0.5, pool: str = "mean") -> None:
        super().__init__(num_classes, hidden, num_layers, in_channels, dropout, pool)
        self.edge_features = edge_features
        self.convs.extend(
            GINEBlock(hidden, edge_features=edge_features, last=i == num_layers - 1,
                      dropout=dropout) for i in range(num_layers))

    def forward(self, x: Tensor | Data, edge_index: Tensor | None = None,
                batch: Tensor | None = None, edge_attr: Tensor | None = None) -> Tensor:
        x, edge_index, batch, edge_attr = _unpack(x, edge_index, batch, edge_attr)
        edge_index = _check_edge_index(edge_index, x.shape[0])
        check_batch(batch, x.shape[0])
        h = self.encoder(x)
        for conv in self.convs:
            h = conv(h, edge_index, edge_attr)
        return self._readout(h, batch)


class _GCNBlock(nn.Module):
    """``Dropout(ReLU(BN(GCNConv(x))))`` (no ReLU after the last layer)."""

    def __init__(self, hidden: int, *, last: bool, dropout: float) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv = GCNConv(hidden, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.last, self.dropout = last, dropout

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.bn(self.conv(x, edge_index))
        if not self.last:
            h = torch.relu(h)
        return nn.functional.dropout(h, self.dropout, self.training)


class GCN(_GraphClassifier):
    """GCN (Kipf & Welling): ``H' = D^-1/2 (A + I) D^-1/2 H W + b`` per layer (PyG ``GCNConv``).

    Bond features are not used (``GCNConv`` has no edge-feature input); use GIN-E for them.
    Arguments as :class:`GIN`. The 2-layer, ``hidden=32`` student has about 8.3K parameters.

    Example:
        >>> from graphkd.datasets import smiles_to_data
        >>> GCN(2, hidden=16)(smiles_to_data("c1ccccc1O")).shape
        torch.Size([1, 2])
    """

    def __init__(self, num_classes: int = 2, *, hidden: int = 64, num_layers: int = 2,
                 in_channels: int | None = None, dropout: float = 0.5,
                 pool: str = "mean") -> None:
        super().__init__(num_classes, hidden, num_layers, in_channels, dropout, pool)
        self.convs.extend(_GCNBlock(hidden, last=i == num_layers - 1, dropout=dropout)
                          for i in range(num_layers))

    def forward(self, x: Tensor | Data, edge_index: Tensor | None = None,
                batch: Tensor | None = None, edge_attr: Tensor | None = None) -> Tensor:
        x, edge_index, batch, _ = _unpack(x, edge_index, batch, edge_attr)
        edge_index = _check_edge_index(edge_index, x.shape[0])
        check_batch(batch, x.shape[0])
        h = self.encoder(x)
        for conv in self.convs:
            h = conv(h, edge_index)
        return self._readout(h, batch)


class MLP(_GraphClassifier):
    """Node-wise MLP + readout (DeepSets); ignores edges. A structure-blind student baseline.

    Layers ``convs.{i}`` are ``Linear -> BN -> ReLU -> Dropout``. Input: OGB integer atom
    features (``in_channels=None``) or float features; for a point cloud pass ``pos`` as ``x``.
    ``model(data)`` reads ``data.x``, or ``data.pos`` when the data has no ``x``.

    Example:
        >>> MLP(10, in_channels=2, hidden=16)(torch.randn(30, 2)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_classes: int = 2, *, hidden: int = 64, num_layers: int = 2,
                 in_channels: int | None = None, dropout: float = 0.5,
                 pool: str = "mean") -> None:
        super().__init__(num_classes, hidden, num_layers, in_channels, dropout, pool)
        self.convs.extend(
            nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                          nn.Dropout(dropout)) for _ in range(num_layers))

    def forward(self, x: Tensor | Data, edge_index_or_batch: Tensor | None = None,
                batch: Tensor | None = None, edge_attr: Tensor | None = None) -> Tensor:
        """``model(x, batch)``, ``model(x, edge_index, batch[, edge_attr])`` (edges ignored) or
        ``model(data)``; a 2-row integer second argument is read as ``edge_index``."""
        if not isinstance(x, Tensor):
            data = x
            x = data.x if getattr(data, "x", None) is not None else data.pos
            batch = getattr(data, "batch", None)
        elif edge_index_or_batch is not None and edge_index_or_batch.dim() == 1:
            batch = edge_index_or_batch
        check_batch(batch, x.shape[0])
        if self.in_channels is not None and (x.dim() != 2 or x.shape[1] != self.in_channels):
            raise ValueError(f"`x` must be [N, {self.in_channels}], got {tuple(x.shape)}.")
        h = self.encoder(x)
        for layer in self.convs:
            h = layer(h)
        return self._readout(h, batch)
