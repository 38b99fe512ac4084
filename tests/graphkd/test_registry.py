"""The shared name registry behind losses, ranking losses and RecBole method adapters."""

from __future__ import annotations

import pytest

from graphkd.registry import Registry


def test_register_lookup_and_mapping_views():
    reg: Registry = Registry("widget")

    @reg.register("de_rrd")
    class A:
        pass

    @reg.register("lsp")
    class B:
        pass

    assert A.name == "de_rrd" and B.name == "lsp"
    assert reg.get("DE-RRD") is A and reg.get("derrd") is A and reg.get("LSP") is B
    assert reg.names() == ["de_rrd", "lsp"] and len(reg) == 2 and "lsp" in reg
    assert dict(reg.items()) == {"de_rrd": A, "lsp": B}
    assert reg.get("nope", default=B) is B


def test_unknown_name_lists_valid_ones_and_duplicates_are_refused():
    reg: Registry = Registry("gadget")

    @reg.register("one")
    class One:
        pass

    with pytest.raises(ValueError, match=r"unknown gadget 'two'; valid names: \['one'\]"):
        reg.get("two")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("ONE")(type("Other", (), {}))
    assert reg.register("one")(One) is One  # re-registering the same class is harmless


def test_add_registers_any_object_untouched_and_find_normalises():
    reg: Registry = Registry("dataset")

    def load(cfg):
        return cfg

    assert reg.add("ogbg-molhiv", load) is load and not hasattr(load, "name")
    assert reg.find("OGBG_MolHIV") == "ogbg-molhiv" and reg.find("cifar") is None
    assert reg.add("OGBG_molhiv", load) is load and reg.names() == ["ogbg-molhiv"]
    with pytest.raises(ValueError, match="a dataset named 'ogbgmolhiv' is already registered"):
        reg.add("ogbgmolhiv", print)


def test_build_resolves_names_instances_and_widths():
    from torch import nn

    from graphkd.registry import Registry

    reg = Registry("widget")

    @reg.register("lin")
    class Lin(nn.Linear):
        needs_dims = True

        def __init__(self, student_dim, teacher_dim, bias=True):
            super().__init__(student_dim, teacher_dim, bias=bias)

    m = reg.build("LIN", instance_of=nn.Module, student_dim=3, teacher_dim=5, bias=False)
    assert isinstance(m, Lin) and m.weight.shape == (5, 3) and m.bias is None
    assert reg.build(m, instance_of=nn.Module) is m
    with pytest.raises(ValueError, match="trainable heads"):
        reg.build("lin", instance_of=nn.Module)
    with pytest.raises(ValueError, match="hyperparameters go to the constructor"):
        reg.build(m, instance_of=nn.Module, bias=False)
    with pytest.raises(ValueError, match=r"valid names: \['lin'\]"):
        reg.build("nope")
    with pytest.raises(TypeError, match="name or an instance"):
        reg.build(3.0, instance_of=nn.Module)
