"""graphkd.hooks: dotted paths with pooling suffixes, feature reading, FeatureHooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphkd.hooks import FeatureHooks, as_paths, layer_features, resolve_module, split_path


def test_split_and_check_paths():
    assert split_path("convs.1:mean_pool") == ("convs.1", "mean_pool")
    assert split_path("convs.1") == ("convs.1", None)
    assert as_paths("a") == ("a",) and as_paths(["a", "b:max_pool"]) == ("a", "b:max_pool")
    with pytest.raises(ValueError, match=r"unknown pooling 'avg'.*mean_pool"):
        as_paths("convs.1:avg", "Match.student")
    with pytest.raises(TypeError, match="module path or a tuple"):
        as_paths([], "Match.student")


def test_layer_features_pools_and_checks():
    batch = torch.tensor([0, 0, 1, 1, 1])
    ctx = {"batch": batch, "num_nodes": 5, "num_graphs": 2}
    x = torch.arange(10.0).view(5, 2)
    feats = {"conv": x, "head": torch.zeros(2, 3), "tup": None}
    mean = torch.stack([x[:2].mean(0), x[2:].mean(0)])
    torch.testing.assert_close(layer_features(feats, "conv:mean_pool", ctx, level="node"), mean)
    torch.testing.assert_close(layer_features(feats, "conv", ctx, level="batch"), mean)
    assert layer_features(feats, "conv", ctx, level="node") is x
    assert layer_features(feats, "head", ctx, level="batch") is feats["head"]
    with pytest.raises(ValueError, match=r"'head:mean_pool' cannot pool it"):
        layer_features(feats, "head:mean_pool", ctx, level="batch", key="k", who="student")
    with pytest.raises(ValueError, match=r"node-level method.*'head'.*hook a node-level"):
        layer_features(feats, "head", ctx, level="node", key="k")
    with pytest.raises(ValueError, match=r"the teacher module 'tup' produced no output"):
        layer_features(feats, "tup", ctx, level="node", key="k", who="teacher")


def test_feature_hooks_and_resolve_module():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with FeatureHooks(model, ["0", "2", "0"]) as hooks:
        out = model(torch.randn(5, 3))
        assert hooks.paths == ["0", "2"] and hooks.features["2"] is out
        assert set(hooks.pop()) == {"0", "2"} and hooks.features == {}
    assert not model[0]._forward_hooks
    with pytest.raises(ValueError, match=r"the student has no module at path '3'.*Valid"):
        resolve_module(model, "3", "student")
