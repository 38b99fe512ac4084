"""Teacher / student presets and a name -> model resolver (:func:`build_model`).

Two registries (:class:`graphkd.registry.Registry`: names case-insensitive, ``-``/``_``
ignored): :data:`PRESETS` (a configured model of an architecture) and :data:`MODELS` (the
architectures, built with their class defaults plus keyword overrides).

=================  =======================================================  ==================
name               architecture                                             for
=================  =======================================================  ==================
dgcnn_teacher      DGCNN k=20, EdgeConv 64-64-128-256, emb 512, head 256    point clouds
dgcnn_student      DGCNN k=10, EdgeConv 32-64, emb 128, head 64             point clouds
pointnet_student   PointNet 32-64-128, head 64                              point clouds
gin_teacher        GIN-E, 5 layers, hidden 300, dropout 0.5, mean pool      molecules (OGB)
gcn_student        GCN, 2 layers, hidden 48, dropout 0.5, mean pool         molecules (OGB)
mlp_student        node-wise MLP, 2 layers, hidden 64, mean pool            either
=================  =======================================================  ==================

The DGCNN teacher is the reference architecture (Wang et al. 2019) with ``emb_dims`` 512
instead of 1024 and a one-layer head, so that it trains on CPU in minutes; the model classes
take the reference values as their defaults.

Example:
    >>> model = build_model("dgcnn_teacher", num_classes=10, in_channels=2)
    >>> model = build_model("gin", num_classes=2, hidden=64, num_layers=3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from graphkd.models.dgcnn import DGCNN
from graphkd.models.gnn import GCN, GIN, MLP
from graphkd.models.pointnet import PointNet
from graphkd.registry import Registry

__all__ = ["PRESETS", "MODELS", "build_model"]


def _dgcnn_teacher(num_classes: int, in_channels: int = 3, **kw: Any) -> DGCNN:
    cfg = dict(k=20, widths=(64, 64, 128, 256), emb_dims=512, head=(256,), dropout=0.5)
    return DGCNN(in_channels, num_classes, **{**cfg, **kw})


def _dgcnn_student(num_classes: int, in_channels: int = 3, **kw: Any) -> DGCNN:
    cfg = dict(k=10, widths=(32, 64), emb_dims=128, head=(64,), dropout=0.5)
    return DGCNN(in_channels, num_classes, **{**cfg, **kw})


def _pointnet_student(num_classes: int, in_channels: int = 3, **kw: Any) -> PointNet:
    cfg = dict(widths=(32, 64, 128), head=(64,), dropout=0.3)
    return PointNet(in_channels, num_classes, **{**cfg, **kw})


def _gin_teacher(num_classes: int, **kw: Any) -> GIN:
    return GIN(num_classes, **{**dict(hidden=300, num_layers=5, dropout=0.5), **kw})


def _gcn_student(num_classes: int, **kw: Any) -> GCN:
    return GCN(num_classes, **{**dict(hidden=48, num_layers=2, dropout=0.5), **kw})


def _mlp_student(num_classes: int, **kw: Any) -> MLP:
    return MLP(num_classes, **{**dict(hidden=64, num_layers=2), **kw})


#: Preset name -> factory ``(num_classes, **overrides) -> nn.Module``.
PRESETS: Registry[Callable[..., nn.Module]] = Registry("model preset")
#: Architecture name -> class (built with the class defaults plus keyword overrides).
MODELS: Registry[type[nn.Module]] = Registry("model architecture")

for _name, _factory in (("dgcnn_teacher", _dgcnn_teacher), ("dgcnn_student", _dgcnn_student),
                        ("pointnet_student", _pointnet_student), ("gin_teacher", _gin_teacher),
                        ("gcn_student", _gcn_student), ("mlp_student", _mlp_student)):
    PRESETS.add(_name, _factory)
for _name, _cls in (("dgcnn", DGCNN), ("pointnet", PointNet), ("gin", GIN), ("gcn", GCN),
                    ("mlp", MLP)):
    MODELS.add(_name, _cls)


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a preset (``"dgcnn_teacher"``) or an architecture (``"dgcnn"``) by name.

    Args:
        name: a name of :data:`PRESETS` or :data:`MODELS` (case-insensitive, ``-``/``_``
            ignored).
        num_classes: outputs of the head.
        **kwargs: constructor overrides (e.g. ``in_channels=2``, ``k=16``, ``hidden=128``).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    preset = PRESETS.find(name)
    if preset is not None:
        return PRESETS[preset](num_classes, **kwargs)
    arch = MODELS.find(name)
    if arch is not None:
        return MODELS[arch](num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown model {name!r}; valid presets: {PRESETS.names()}; valid "
                     f"architectures: {MODELS.names()}.")
