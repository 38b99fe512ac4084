"""Projection heads / adapters (graphkd.losses.heads): values against the formulas, the one
"mlp", who builds with it, registration and errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphkd.losses import get_loss
from graphkd.losses.heads import HEADS, NormalizedProjection, build_head, register_head

LOSSES_DIR = Path(__file__).resolve().parents[3] / "graphkd" / "losses"


def test_linear_identity_and_auto():
    x = torch.randn(7, 5)
    lin = build_head("linear", 5, 3)
    torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)
    ident = build_head("identity", 5, 5)
    assert torch.equal(ident(x), x)
    assert isinstance(build_head("auto", 5, 5), nn.Identity)
    assert isinstance(build_head("auto", 5, 4), nn.Linear)


def _bn_train(h: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps)
    return h * bn.weight + bn.bias


def test_mlp_matches_formula_and_default_hidden_is_out_dim():
    torch.manual_seed(0)
    head = build_head("mlp", 4, 6, hidden_dim=9)
    assert head[0].out_features == 9 and head[3].in_features == 9
    x = torch.randn(10, 4)
    h = F.relu(_bn_train(x @ head[0].weight.T + head[0].bias, head[1]))
    torch.testing.assert_close(head(x), h @ head[3].weight.T + head[3].bias)
    default = build_head("mlp", 3, 8)
    assert [type(m) for m in default] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert default[0].out_features == 8  # hidden = out_dim (G-CRD's head)


def test_mlp_is_gcrd_default_head_with_the_old_layers_and_init():
    """The one "mlp" is G-CRD's old head: same modules, keys and (seeded) parameters."""
    torch.manual_seed(3)
    mod = get_loss("gcrd", student_dim=5, teacher_dim=7, proj_dim=4)
    torch.manual_seed(3)
    old_s = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4))
    old_t = nn.Sequential(nn.Linear(7, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4))
    for new, old in ((mod.head_s, old_s), (mod.head_t, old_t)):
        assert new.state_dict().keys() == old.state_dict().keys()
        for k, v in old.state_dict().items():
            assert torch.equal(new.state_dict()[k], v), k


def test_linear_bn_relu_and_regressor_match_formulas():
    torch.manual_seed(1)
    x = torch.randn(9, 4)
    lbr = build_head("linear_bn_relu", 4, 3)
    torch.testing.assert_close(lbr(x), F.relu(_bn_train(x @ lbr[0].weight.T + lbr[0].bias,
                                                         lbr[1])))
    reg = build_head("regressor", 4, 3, hidden_dim=5)
    h = F.relu(x @ reg[0].weight.T + reg[0].bias)
    h = F.relu(h @ reg[2].weight.T + reg[2].bias)
    torch.testing.assert_close(reg(x), h @ reg[4].weight.T + reg[4].bias)
    assert build_head("regressor", 4, 3)[0].out_features == 3


def test_normalized_projection_has_unit_rows():
    proj = build_head("normalized", 4, 3)
    assert isinstance(proj, NormalizedProjection)
    x = torch.randn(6, 4)
    z = proj(x)
    ref = x @ proj.linear.weight.T + proj.linear.bias
    torch.testing.assert_close(z, ref / ref.norm(dim=1, keepdim=True))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6))


def test_losses_build_their_heads_here():
    """FitNet, AB, VID, G-CRD, HKD and MHGD: the kinds of their old hand-built heads."""
    assert isinstance(get_loss("fitnet", student_dim=4, teacher_dim=6).adapter, nn.Linear)
    assert isinstance(get_loss("fitnet", student_dim=4, teacher_dim=4).adapter, nn.Identity)
    assert isinstance(get_loss("ab", student_dim=4, teacher_dim=6).connector, nn.Linear)
    vid = get_loss("vid", student_dim=4, teacher_dim=6, hidden_dim=5).regressor
    assert [m.out_features for m in vid if isinstance(m, nn.Linear)] == [5, 5, 6]
    hkd = get_loss("hkd", student_dim=4, teacher_dim=6, feat_dim=3)
    assert isinstance(hkd.embed_s, NormalizedProjection) and hkd.embed_t.linear.in_features == 6
    mhgd = get_loss("mhgd", student_dim=(4, 6), teacher_dim=(6, 6))
    assert isinstance(mhgd.adapters[0], nn.Linear) and isinstance(mhgd.adapters[1], nn.Identity)
    lin = get_loss("gcrd", student_dim=4, teacher_dim=6, proj_dim=3, head="linear")
    assert isinstance(lin.head_s, nn.Linear)


def test_no_loss_builds_a_head_by_hand_or_imports_the_distiller_layer():
    """Every nn.Linear / nn.Sequential head of the losses comes from heads.py (the layers that
    are part of a method's own maths, TAGConv and MHGD's attention, excepted), and no loss module
    imports graphkd.adapters / distill / hooks / train."""
    own = {"gnn.py": {"TAGConv1", "AttentionGraph", "AttentionEstimator"}}
    for path in sorted(LOSSES_DIR.glob("*.py")):
        if path.name == "heads.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = getattr(node, "module", None) or ""
                names = [a.name for a in node.names]
                for m in [mod, *names]:
                    assert not m.startswith(("graphkd.adapters", "graphkd.distill",
                                             "graphkd.hooks", "graphkd.train")), (path.name, m)
        allowed = own.get(path.name, set())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            if cls.name in allowed:
                continue
            for node in ast.walk(cls):
                if isinstance(node, ast.Attribute) and node.attr in ("Linear", "Sequential"):
                    raise AssertionError(f"{path.name}:{cls.name} builds nn.{node.attr}; use "
                                         "graphkd.losses.heads.build_head")


def test_register_head_makes_a_new_kind_available_to_gcrd():
    @register_head("t_heads_scaled_linear")
    def _scaled(in_dim: int, out_dim: int, *, scale: float = 2.0) -> nn.Module:
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False))

    try:
        assert isinstance(build_head("t-heads-scaled-linear", 3, 2, scale=1.0), nn.Sequential)
        mod = get_loss("gcrd", student_dim=3, teacher_dim=5, proj_dim=2,
                       head="t_heads_scaled_linear")
        assert mod.head_t[0].in_features == 5
    finally:
        HEADS._items.pop("t_heads_scaled_linear")


def test_head_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown head 'conv'.*valid names.*'mlp'"):
        build_head("conv", 3, 4)
    with pytest.raises(ValueError, match="use kind='linear'"):
        build_head("identity", 3, 4)
    with pytest.raises(ValueError, match="positive int"):
        build_head("linear", 0, 4)
    with pytest.raises(ValueError, match="positive int"):
        build_head("linear", 3, (4, 5))
    with pytest.raises(ValueError, match="positive int"):
        build_head("mlp", 3, 4, hidden_dim=0)
    with pytest.raises(ValueError, match=r"head 'linear' does not take .*hidden_dim"):
        build_head("linear", 3, 4, hidden_dim=8)
