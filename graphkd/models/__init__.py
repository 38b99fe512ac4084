"""Models with named layers for feature hooks: DGCNN, PointNet (point clouds), GIN/GIN-E, GCN,
MLP (graphs), plus teacher/student presets.

Conventions (same dotted paths across models, for ``Match(teacher=..., student=...)``):

* point-cloud models: ``model(pos [N, D], batch [N])`` on PyG-``Batch``-style flattened points,
  or ``model(data)``; graph models: ``model(x, edge_index, batch, edge_attr)`` or ``model(data)``;
  all return logits ``[num_graphs, num_classes]``;
* ``convs.{i}`` -> per-node/point features of layer ``i``; ``pool`` -> the graph embedding
  ``[B, C]``; ``head`` -> logits. DGCNN adds ``fuse`` and keeps each layer's kNN graph in
  ``convs.{i}.last_edges``; GIN/GCN/MLP add ``encoder``.
"""

from graphkd.models._common import AtomEncoder, BondEncoder, GlobalPool
from graphkd.models.dgcnn import DGCNN, EdgeConv
from graphkd.models.gnn import GCN, GIN, MLP, GINEBlock
from graphkd.models.pointnet import PointNet
from graphkd.models.presets import MODELS, PRESETS, build_model

__all__ = [
    "AtomEncoder",
    "BondEncoder",
    "DGCNN",
    "EdgeConv",
    "GCN",
    "GIN",
    "GINEBlock",
    "GlobalPool",
    "MLP",
    "MODELS",
    "PRESETS",
    "PointNet",
    "build_model",
]
