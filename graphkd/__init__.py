"""graphkd: graph-representation knowledge distillation on a sparse graph-loss core.

The public API, imported lazily (``import graphkd`` loads none of it, and never DGL, RecBole,
RDKit or matplotlib)::

    from graphkd import Distiller, Match, Teacher, fit, evaluate, get_loss, register
    from graphkd import DistillLoss, pyg_call, dgl_call, pyg_call_any

=====================  =======================================================================
name                   from
=====================  =======================================================================
``Distiller``          :mod:`graphkd.distill` (also ``Match``, ``Teacher``)
``fit``                :mod:`graphkd.train` (also ``evaluate``)
``get_loss``           :mod:`graphkd.losses` (also ``register``, ``DistillLoss``, ``loss_names``)
``pyg_call``           :mod:`graphkd.inputs` (also ``default_call``, ``graph_context``,
                       ``to_device``)
``dgl_call``           :mod:`graphkd.interop` (also ``pyg_call_any``)
``FeatureHooks``       :mod:`graphkd.hooks`
=====================  =======================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Distiller": "graphkd.distill",
    "Match": "graphkd.distill",
    "Teacher": "graphkd.distill",
    "fit": "graphkd.train",
    "evaluate": "graphkd.train",
    "get_loss": "graphkd.losses",
    "register": "graphkd.losses",
    "DistillLoss": "graphkd.losses",
    "loss_names": "graphkd.losses",
    "pyg_call": "graphkd.inputs",
    "default_call": "graphkd.inputs",
    "graph_context": "graphkd.inputs",
    "to_device": "graphkd.inputs",
    "dgl_call": "graphkd.interop",
    "pyg_call_any": "graphkd.interop",
    "FeatureHooks": "graphkd.hooks",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
