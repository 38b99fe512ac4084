"""Adapters: shapes, values against the formulas, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphkd.adapters import MLPAdapter, NormalizedProjection, build_adapter


def test_linear_and_identity_and_auto():
    x = torch.randn(7, 5)
    lin = build_adapter(5, 3, "linear")
    torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)
    ident = build_adapter(5, 5, "identity")
    assert torch.equal(ident(x), x)
    assert isinstance(build_adapter(5, 5, "auto"), nn.Identity)
    assert isinstance(build_adapter(5, 4, "auto"), nn.Linear)


def test_mlp_adapter_matches_formula():
    torch.manual_seed(0)
    ad = build_adapter(4, 6, "mlp", hidden_dim=9)
    assert isinstance(ad, MLPAdapter) and ad.fc1.out_features == 9
    x = torch.randn(10, 4)
    h = x @ ad.fc1.weight.T + ad.fc1.bias
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + ad.bn.eps)
    h = F.relu(h * ad.bn.weight + ad.bn.bias)
    torch.testing.assert_close(ad(x), h @ ad.fc2.weight.T + ad.fc2.bias)
    assert MLPAdapter(3, 8).fc1.out_features == 8  # default hidden = max(in, out)


def test_normalized_projection_has_unit_rows():
    proj = NormalizedProjection(4, 3)
    x = torch.randn(6, 4)
    z = proj(x)
    ref = x @ proj.linear.weight.T + proj.linear.bias
    torch.testing.assert_close(z, ref / ref.norm(dim=1, keepdim=True))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6))


def test_adapter_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown adapter kind 'conv'.*valid"):
        build_adapter(3, 4, "conv")
    with pytest.raises(ValueError, match="use kind='linear'"):
        build_adapter(3, 4, "identity")
    with pytest.raises(ValueError, match="positive int"):
        build_adapter(0, 4)
    with pytest.raises(ValueError, match="positive int"):
        build_adapter(3, (4, 5))
