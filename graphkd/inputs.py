r"""Reading a batch: model calls, targets, graph context, pooling and device moves.

The one place that knows what a batch looks like — a PyG ``Data``/``Batch``, a (batched) DGL
graph, a DGL-style ``(graph, labels)`` pair, a ``(inputs, target)`` tuple or a tensor. DGL is
never imported here: DGL graphs are recognised by duck typing (``edges()``, ``num_nodes()``,
``batch_num_nodes()``), with long-stable DGL APIs only. Conversions between PyG and DGL (and
the calls that need them, :func:`graphkd.interop.dgl_call` / :func:`graphkd.interop.pyg_call_any`)
live in :mod:`graphkd.interop`, which builds on this module.

=====================================  ========================================================
helper                                 job
=====================================  ========================================================
:func:`default_call`                   ``model(data)`` (``model(data[0])`` for a tuple; PyG
                                       ``BasicGNN`` models get :func:`pyg_call`)
:func:`pyg_call`                       ``model(data.x, data.edge_index, batch=data.batch)``
:func:`default_target`                 the labels: ``data.y``, ``data[-1]``, DGL ``ndata``
:func:`graph_context`                  ``batch``, ``edge_index``, ``pos``, ``num_nodes``,
                                       ``num_graphs`` of a PyG or DGL input
:func:`logits_of`, :func:`prepare_target`   logits in a model output; labels shaped for a loss
:func:`pool` / :func:`mean_pool`       per-graph pooling ``[N, D] -> [B, D]``
:func:`to_device`                      move a batch (tuples included) to a device
=====================================  ========================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from graphkd._context import CONTEXT_KEYS, NODE_CONTEXT

__all__ = [
    "CONTEXT_KEYS",
    "NODE_CONTEXT",
    "Call",
    "POOLS",
    "call_hint",
    "call_model",
    "default_call",
    "default_target",
    "dgl_context",
    "graph_context",
    "graph_target",
    "is_dgl_graph",
    "is_pyg_data",
    "logits_of",
    "mean_pool",
    "node_features",
    "pool",
    "prepare_target",
    "pyg_call",
    "pyg_forward",
    "to_device",
    "unwrap",
]

#: How to run a model on a batch: ``call(model, data) -> output``.
Call = Callable[[nn.Module, Any], Any]



# --------------------------------------------------------------------------- type tests
def is_dgl_graph(obj: Any) -> bool:
    """Whether ``obj`` looks like a (batched) ``DGLGraph`` (duck-typed, DGL not imported)."""
    return (not isinstance(obj, (Tensor, tuple, list, dict)) and obj is not None
            and callable(getattr(obj, "batch_num_nodes", None))
            and callable(getattr(obj, "edges", None))
            and callable(getattr(obj, "num_nodes", None)))


def is_pyg_data(obj: Any) -> bool:
    """Whether ``obj`` looks like a PyG ``Data``/``Batch`` (has a tensor ``edge_index``)."""
    return not is_dgl_graph(obj) and isinstance(getattr(obj, "edge_index", None), Tensor)


def unwrap(data: Any) -> Any:
    """The graph of a ``(graph, labels)`` pair (DGL's usual loader output), else ``data``."""
    if isinstance(data, (tuple, list)) and data and (is_dgl_graph(data[0]) or is_pyg_data(
            data[0])):
        return data[0]
    return data


# --------------------------------------------------------------------------- calls
def _is_basic_gnn(model: nn.Module) -> bool:
    """A ``torch_geometric.nn.models.BasicGNN`` (GCN, GIN, GAT, ...), without importing PyG."""
    return any(c.__name__ == "BasicGNN" and c.__module__.startswith("torch_geometric")
               for c in type(model).__mro__)


def _forward_params(model: nn.Module) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # builtins, odd wrappers
        return None


_BATCH_ARG: dict[type, str] = {}  # forward's signature per model class -> how batch is passed


def _batch_arg(model: nn.Module) -> str:
    """``"keyword"``, ``"positional"`` or ``"none"``: how :func:`pyg_forward` passes ``batch``."""
    how = _BATCH_ARG.get(type(model))
    if how is None:
        params = _forward_params(model)
        kinds = [p.kind for p in (params or {}).values()]
        positional = [n for n, p in (params or {}).items()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if params is None or "batch" in params or inspect.Parameter.VAR_KEYWORD in kinds:
            how = "keyword"
        elif len(positional) >= 3 and positional[2] not in ("edge_weight", "edge_attr"):
            how = "positional"  # forward(x, edge_index, b): batch under another name
        elif inspect.Parameter.VAR_POSITIONAL in kinds and len(positional) < 3:
            how = "positional"
        else:
            how = "none"
        if "forward" not in vars(model):  # an instance-patched forward is not cached
            _BATCH_ARG[type(model)] = how
    return how


def pyg_forward(model: nn.Module, x: Tensor, edge_index: Tensor, batch: Tensor | None) -> Any:
    """Run a PyG-style model on node features, edges and the node-to-graph map.

    ``batch`` goes by keyword (``model(x, edge_index, batch=batch)``) when ``forward`` has a
    ``batch`` parameter or ``**kwargs`` — PyG's own ``GCN``/``GIN``/``GAT`` (``BasicGNN``) take
    ``edge_weight`` third, so a positional ``batch`` would be read as edge weights. A
    ``forward(x, edge_index, b)`` that names it otherwise gets it positionally; a
    ``forward(x, edge_index)`` or ``forward(x, edge_index, edge_weight)`` does not get it. The
    decision is cached per model class.
    """
    how = _batch_arg(model)
    if how == "keyword":
        return model(x, edge_index, batch=batch)
    if how == "positional":
        return model(x, edge_index, batch)
    return model(x, edge_index)


def pyg_call(model: nn.Module, data: Any) -> Any:
    """``model(data.x, data.edge_index, batch=data.batch)`` for a PyG ``Data``/``Batch``.

    ``batch`` is passed by keyword (see :func:`pyg_forward`), which is what PyG's ``BasicGNN``
    models (``GCN``, ``GIN``, ``GAT``, ``GraphSAGE``, ...) expect; their output is per node
    (pool it yourself for graph classification, or match ``"layer:mean_pool"``). A
    ``(data, labels)`` pair is unwrapped. For a DGL batch use
    :func:`graphkd.interop.pyg_call_any`.
    """
    data = unwrap(data)
    return pyg_forward(model, data.x, data.edge_index, getattr(data, "batch", None))


def default_call(model: nn.Module, data: Any) -> Any:
    """``model(data)``, or ``model(data[0])`` when ``data`` is an ``(inputs, target)`` tuple.

    A PyG ``BasicGNN`` model (``GCN``, ``GIN``, ``GAT``, ...) on a PyG batch goes through
    :func:`pyg_call`, since it cannot take a ``Data`` object.
    """
    if _is_basic_gnn(model) and is_pyg_data(unwrap(data)):
        return pyg_call(model, data)
    if isinstance(data, (tuple, list)):
        return model(data[0])
    return model(data)


def node_features(g: Any, keys: Sequence[str] = ("feat", "x")) -> Tensor:
    """The first of ``g.ndata[key]`` for ``key`` in ``keys`` (a DGL graph's node features)."""
    for k in keys:
        if k in g.ndata:
            return g.ndata[k]
    raise KeyError(f"the DGL graph has none of the node features {list(keys)} in g.ndata "
                   f"(it has {list(g.ndata.keys())}); pass feat=<key>.")


def call_hint(model: nn.Module, data: Any) -> str:
    """Which call helper fits ``model`` and ``data`` (for an error message on a failed call)."""
    params = _forward_params(model) or {}
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY,
                                                         p.POSITIONAL_OR_KEYWORD)]
    graph = unwrap(data)
    sig = f"{type(model).__name__}.forward({', '.join(params)})"
    dgl_model = bool(names) and names[0] in ("g", "graph", "block", "blocks", "bg")
    if len(names) == 1 and not dgl_model and (is_pyg_data(graph) or is_dgl_graph(graph)):
        return (f"the model is {sig}, which takes the whole batch: drop call= (the default "
                "call runs model(data)), or pass call=lambda m, d: m(<its argument from d>).")
    if is_dgl_graph(graph):
        which = ("call=dgl_call()  (from graphkd.interop import dgl_call; runs model(g, "
                 "g.ndata['feat']))" if dgl_model or not names else
                 "call=pyg_call_any()  (from graphkd.interop import pyg_call_any; runs "
                 "model(x, edge_index, batch=batch) on the DGL graph)")
        got = "a DGL graph"
    elif is_pyg_data(graph):
        which = ("call=dgl_call()  (from graphkd.interop import dgl_call; converts the PyG "
                 "batch to DGL)" if dgl_model else
                 "call=pyg_call  (from graphkd import pyg_call; runs model(data.x, "
                 "data.edge_index, batch=data.batch))")
        got = f"a PyG {type(graph).__name__}"
    else:
        which, got = "call=lambda m, d: m(...)", f"a {type(data).__name__}"
    return (f"the batch is {got} and the model is {sig}; pass {which}, or any "
            "call=lambda m, d: m(<its arguments from d>).")


def call_model(call: Call, model: nn.Module, data: Any, who: str = "model",
               check: bool = False) -> Any:
    """``call(model, data)``; with ``check`` (a dry run), a ``TypeError``/``AttributeError``
    is re-raised (same type) with :func:`call_hint`'s advice on the call helper to use."""
    if not check:
        return call(model, data)
    try:
        return call(model, data)
    except (TypeError, AttributeError) as e:
        kind = TypeError if isinstance(e, TypeError) else AttributeError
        raise kind(f"running the {who} on the example batch failed ({type(e).__name__}: {e})."
                   f" If the call does not fit the model: {call_hint(model, data)}") from e


# --------------------------------------------------------------------------- targets, logits
def default_target(data: Any) -> Tensor:
    """The labels of a batch: ``data[-1]`` for a tuple/list (``(inputs, target)``, DGL's
    ``(graph, labels)``), ``data.y`` for PyG, ``g.ndata["label"]`` / ``g.ndata["y"]`` for a bare
    DGL graph (node labels).

    Raises:
        ValueError: no labels found (pass ``target=lambda data: ...``).
    """
    if isinstance(data, (tuple, list)):
        return data[-1]
    if is_dgl_graph(data):
        for key in ("label", "y"):
            if key in data.ndata:
                return data.ndata[key]
        raise ValueError("a bare DGLGraph carries no graph labels: pass (graph, labels) pairs, "
                         "store node labels in g.ndata['label'], or pass "
                         "target=lambda data: <label tensor>.")
    y = getattr(data, "y", None)
    if y is None:
        raise ValueError(
            f"cannot find the target of a {type(data).__name__} batch (no `.y`); pass "
            "target=lambda data: <label tensor>."
        )
    return y


#: The same reader (kept under the name :mod:`graphkd.interop` exported).
graph_target = default_target


def logits_of(output: Any) -> Tensor:
    """The logits in a model output: the output itself, or its first element for a tuple."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model output is a {type(output).__name__}, not a tensor; make `call` return "
            "the logits (e.g. call=lambda m, d: m(d)['logits'])."
        )
    return output


def prepare_target(logits: Tensor, y: Tensor) -> Tensor:
    """Shape a label tensor for the usual losses.

    Integer labels for multi-class logits ``[B, C]`` become ``[B]`` int64 (a PyG ``y`` is often
    ``[B, 1]``); labels with as many entries as the logits (binary/multi-label ``[B, T]``)
    are reshaped to the logits' shape and dtype (for ``BCEWithLogitsLoss``).
    """
    if logits.dim() == 2 and logits.shape[1] > 1 and not y.is_floating_point() \
            and y.numel() == logits.shape[0]:
        return y.reshape(-1).long()
    if y.numel() == logits.numel() and (y.shape != logits.shape or y.dtype != logits.dtype):
        return y.reshape(logits.shape).to(logits.dtype)
    return y


# --------------------------------------------------------------------------- graph context
def dgl_context(g: Any) -> dict[str, Any]:
    """Graph context of a (batched) DGL graph, with long-stable DGL APIs only.

    ``edge_index = stack(g.edges())`` (``src -> dst``), ``batch`` from ``g.batch_num_nodes()``
    (no host synchronisation), ``pos = g.ndata["pos"]`` when present; DGL is not imported.
    """
    src, dst = g.edges()
    sizes = g.batch_num_nodes().to(src.device)
    num_nodes = g.num_nodes()
    batch = torch.repeat_interleave(torch.arange(sizes.shape[0], device=src.device), sizes,
                                    output_size=num_nodes)
    ctx = {"edge_index": torch.stack([src, dst]).long(), "batch": batch,
           "num_nodes": num_nodes, "num_graphs": int(sizes.shape[0])}
    if "pos" in g.ndata:
        ctx["pos"] = g.ndata["pos"]
    return ctx


def graph_context(data: Any) -> dict[str, Any]:
    """Graph context of a batch: ``batch``, ``edge_index``, ``pos``, ``num_nodes``,
    ``num_graphs``.

    Reads a PyG ``Data``/``Batch``, a (batched) DGL graph (:func:`dgl_context`), or a
    ``(graph, labels)`` pair of either. Returns the keys present (``num_nodes`` and
    ``num_graphs`` whenever there is a graph); ``{}`` for tensors and ``(inputs, target)``
    tuples. A single ``Data`` gets ``batch = zeros(num_nodes)``.
    """
    data = unwrap(data)
    if isinstance(data, (Tensor, tuple, list)) or data is None:
        return {}
    if is_dgl_graph(data):
        return dgl_context(data)
    ctx: dict[str, Any] = {}
    for key in ("edge_index", "pos"):
        value = getattr(data, key, None)
        if isinstance(value, Tensor):
            ctx[key] = value
    batch = getattr(data, "batch", None)
    x = getattr(data, "x", None)
    if not isinstance(batch, Tensor) and not ctx and not isinstance(x, Tensor):
        return {}
    num_nodes = getattr(data, "num_nodes", None)
    if isinstance(batch, Tensor):
        num_graphs = getattr(data, "num_graphs", None)
        if not isinstance(num_graphs, int):
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        num_nodes = batch.numel()
    else:
        if num_nodes is None:
            return ctx
        ref = next(v for v in (x, ctx.get("pos"), ctx.get("edge_index")) if v is not None)
        batch = torch.zeros(num_nodes, dtype=torch.long, device=ref.device)
        num_graphs = 1
    ctx.update(batch=batch, num_nodes=num_nodes, num_graphs=num_graphs)
    return ctx


# --------------------------------------------------------------------------- pooling
def mean_pool(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    r"""Mean of the node features of each graph: :math:`g_b = \frac{1}{n_b}\sum_{i: batch_i=b}
    x_i`. ``[N, D] -> [B, D]`` (an empty graph gives zeros)."""
    out = x.new_zeros(num_graphs, *x.shape[1:]).index_add(0, batch, x)
    count = x.new_zeros(num_graphs).index_add(0, batch, x.new_ones(batch.shape[0]))
    return out / count.clamp_min(1).view(-1, *([1] * (x.dim() - 1)))


def sum_pool(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Sum of the node features of each graph, ``[N, D] -> [B, D]``."""
    return x.new_zeros(num_graphs, *x.shape[1:]).index_add(0, batch, x)


def max_pool(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Element-wise max of the node features of each graph, ``[N, D] -> [B, D]`` (an empty
    graph gives zeros)."""
    index = batch.view(-1, *([1] * (x.dim() - 1))).expand_as(x)
    out = x.new_zeros(num_graphs, *x.shape[1:])
    return out.scatter_reduce(0, index, x, reduce="amax", include_self=False)


#: Pooling names usable as a path suffix in a ``Match`` (``"convs.1:mean_pool"``).
POOLS: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "mean_pool": mean_pool, "sum_pool": sum_pool, "max_pool": max_pool}


def pool(x: Tensor, ctx: dict[str, Any], how: str = "mean_pool") -> Tensor:
    """Pool node features ``[N, D]`` per graph with the context's ``batch`` (``[B, D]``);
    features with another row count (already per graph) pass through unchanged."""
    batch = ctx.get("batch")
    if batch is None or x.shape[0] != ctx["num_nodes"]:
        return x
    return POOLS[how](x, batch, ctx["num_graphs"])


# --------------------------------------------------------------------------- devices
def to_device(data: Any, device: torch.device | str) -> Any:
    """``data.to(device)`` for tensors, PyG and DGL batches; element-wise for tuples/lists."""
    if isinstance(data, (tuple, list)):
        return type(data)(to_device(d, device) for d in data)
    if hasattr(data, "to"):
        return data.to(device)
    return data
