r"""PyG <-> DGL <-> EdgeSet conversion, and Distiller calls for DGL models.

Everything in graphkd that takes a PyG ``Data``/``Batch`` also takes a (batched) ``DGLGraph``.
Only long-stable DGL APIs are used (``g.edges()``, ``g.num_nodes()``, ``g.batch_num_nodes()``,
``g.batch_num_edges()``, ``g.ndata``, ``dgl.graph``, ``dgl.batch``), so this works with the DGL
a user already has. DGL is imported only inside the functions that build DGL graphs; reading a
DGL graph needs no import at all (duck typing): the readers (``graph_context``,
``graph_target``, ``is_dgl_graph``, ...) live in :mod:`graphkd.inputs` and are re-exported here.
Install DGL with ``pip install graphkd[dgl]``. This module sits below the Distiller: it imports
nothing from :mod:`graphkd.distill`.

Conventions (the same as :class:`~graphkd.graphs.EdgeSet`): an edge ``src -> dst`` of a DGL
graph is the column ``src`` of row ``dst`` (``dst`` aggregates from ``src``), exactly as the PyG
``edge_index = [src, dst]``. ``batch`` ``[N]`` is the graph id of each node, taken from
``g.batch_num_nodes()`` (so graphs with isolated or trailing nodes keep their sizes).

=================================  ============================================================
function                           from -> to
=================================  ============================================================
:func:`dgl_to_edge_index`          DGLGraph -> ``(edge_index [2,E], batch [N], num_nodes)``
:func:`dgl_to_edgeset`             DGLGraph -> EdgeSet (rows = dst, ``batch`` set)
:func:`edge_index_to_dgl`          ``edge_index`` (+ ``batch``) -> (batched) DGLGraph
:func:`edgeset_to_dgl`             EdgeSet -> (batched) DGLGraph (``col -> row`` edges)
:func:`pyg_to_dgl`                 PyG ``Data``/``Batch`` -> DGLGraph (node/edge tensors copied)
:func:`dgl_to_pyg`                 DGLGraph -> PyG ``Batch`` (one ``Data`` per graph)
:func:`as_edgeset`                 PyG data, DGLGraph or ``edge_index`` -> EdgeSet
:func:`graph_context`              any of them (or an ``(graph, labels)`` tuple) -> context dict
:func:`dgl_call`                   Distiller call: DGL model on a DGL or PyG batch
:func:`pyg_call_any`               Distiller call: PyG-style model on a PyG or DGL batch
=================================  ============================================================

Cross-framework distillation (a DGL teacher, a PyG student on the same graphs, the setting of
the LSP paper)::

    distiller = Distiller(
        dgl_teacher, pyg_student,
        matches=[Match("layers.1", "convs.1", "lsp", weight=100.0)],
        call=pyg_call_any(), teacher_call=dgl_call(),
        task_loss=nn.CrossEntropyLoss(), example=batch)

where ``batch`` may be a PyG ``Batch``, a batched ``DGLGraph`` or a DGL ``(graph, labels)``
pair: :func:`dgl_call` converts a PyG batch to DGL (and :func:`pyg_call_any` reads a DGL graph
as PyG tensors) as needed; the Distiller's default ``context`` and ``target`` read both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from graphkd.graphs import EdgeSet
from graphkd.inputs import (  # the readers live in graphkd.inputs; re-exported here
    dgl_context,
    graph_context,
    graph_target,
    is_dgl_graph,
    is_pyg_data,
    node_features,
    pyg_forward,
    unwrap,
)

__all__ = [
    "DGL_EXTRA_HINT",
    "import_dgl",
    "is_dgl_graph",
    "is_pyg_data",
    "dgl_to_edge_index",
    "dgl_to_edgeset",
    "edge_index_to_dgl",
    "edgeset_to_dgl",
    "pyg_to_dgl",
    "dgl_to_pyg",
    "as_edgeset",
    "graph_context",
    "graph_target",
    "dgl_call",
    "pyg_call_any",
]

#: The install hint every DGL-needing function raises with.
DGL_EXTRA_HINT = (
    "this needs DGL: `pip install graphkd[dgl]` (dgl 1.1.3 is the newest that imports on recent "
    "torch; it also needs `packaging` and `setuptools<71`), and set DGLBACKEND=pytorch."
)


def import_dgl() -> Any:
    """Import and return the ``dgl`` module, or raise ``ImportError`` naming the extra."""
    import os

    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        import dgl
    except Exception as err:  # ImportError, or DGL's own errors on an incompatible torch
        raise ImportError(f"{DGL_EXTRA_HINT} (import failed: {err})") from err
    return dgl


# --------------------------------------------------------------------------- checks
def _check_dgl(g: Any) -> None:
    if not is_dgl_graph(g):
        raise TypeError(
            f"expected a DGLGraph (with edges(), num_nodes(), batch_num_nodes()), got "
            f"{type(g).__name__}."
        )


# --------------------------------------------------------------------------- DGL -> ours
def dgl_to_edge_index(g: Any) -> tuple[Tensor, Tensor, int]:
    """Edges and node-to-graph map of a (batched) DGL graph.

    Args:
        g: a ``DGLGraph`` (batched or not).

    Returns:
        ``(edge_index, batch, num_nodes)``: ``edge_index`` ``[2, E]`` int64 ``[src, dst]`` in
        DGL's edge-id order, ``batch`` ``[N]`` int64 graph id of each node (zeros for an
        unbatched graph) and ``N``.

    Example:
        >>> g = dgl.batch([dgl.graph(([0], [1]), num_nodes=3), dgl.graph(([1], [0]))])
        >>> ei, batch, n = dgl_to_edge_index(g)
        >>> ei.tolist(), batch.tolist(), n
        ([[0, 4], [1, 3]], [0, 0, 0, 1, 1], 5)
    """
    _check_dgl(g)
    n = int(g.num_nodes())
    total = int(g.batch_num_nodes().sum())
    if total != n:
        raise ValueError(
            f"batch_num_nodes() sums to {total} but the graph has {n} nodes; the graph's "
            "batch information is inconsistent (rebuild it with dgl.batch)."
        )
    ctx = dgl_context(g)  # the one DGL reader (graphkd.inputs)
    return ctx["edge_index"], ctx["batch"], n


def dgl_to_edgeset(g: Any) -> EdgeSet:
    """The EdgeSet of a (batched) DGL graph: row ``v`` holds the sources of ``v``'s in-edges.

    The same EdgeSet as ``EdgeSet.from_edge_index(edge_index, N, batch=batch)`` on the
    equivalent PyG batch (so LSP, GSP, ... give the same values on both).

    Returns:
        an ``N x N`` EdgeSet with ``batch`` ``[N]`` and ``num_graphs = g.batch_size``.
    """
    edge_index, batch, n = dgl_to_edge_index(g)
    num_graphs = int(g.batch_num_nodes().numel())
    return EdgeSet.from_edge_index(edge_index, n).with_batch(batch, num_graphs)


# --------------------------------------------------------------------------- ours -> DGL
def _split_sizes(batch: Tensor | None, num_nodes: int, num_graphs: int | None) -> list[int]:
    if batch is None:
        return [num_nodes]
    if batch.shape != (num_nodes,):
        raise ValueError(f"`batch` must have shape ({num_nodes},), got {tuple(batch.shape)}.")
    if num_nodes and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("`batch` must be sorted (nodes of graph 0 first, as in a PyG Batch).")
    g = num_graphs if num_graphs is not None else (int(batch.max()) + 1 if num_nodes else 0)
    return torch.bincount(batch.long(), minlength=g).tolist()


def edge_index_to_dgl(
    edge_index: Tensor, num_nodes: int | None = None, *, batch: Tensor | None = None,
    num_graphs: int | None = None, ndata: dict[str, Tensor] | None = None,
    edata: dict[str, Tensor] | None = None,
) -> Any:
    """A (batched) DGLGraph with the edges ``edge_index[0] -> edge_index[1]``.

    With ``batch``, the graph is a ``dgl.batch`` of one graph per id, so
    ``g.batch_num_nodes()`` gives each graph's size (including graphs whose last nodes are
    isolated, and empty graphs when ``num_graphs`` says so). Edge order is kept (edges must
    not cross graphs).

    Args:
        edge_index: ``[2, E]`` ``[src, dst]``.
        num_nodes: ``N`` (default: ``batch.numel()``, else ``max + 1``).
        batch: ``[N]`` sorted graph id of each node.
        num_graphs: number of graphs (default ``batch.max() + 1``).
        ndata: node tensors ``[N, *]`` to attach (e.g. ``{"feat": x}``).
        edata: edge tensors ``[E, *]`` to attach.

    Raises:
        ImportError: DGL is missing (names ``pip install graphkd[dgl]``).
        ValueError: malformed inputs or an edge between two graphs.
    """
    dgl = import_dgl()
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"`edge_index` must be [2, E], got shape {tuple(edge_index.shape)}.")
    if num_nodes is None:
        num_nodes = batch.numel() if batch is not None else (
            int(edge_index.max()) + 1 if edge_index.numel() else 0)
    edge_index = edge_index.long()
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"`edge_index` has node ids outside [0, {num_nodes}).")
    sizes = _split_sizes(batch, num_nodes, num_graphs)
    src, dst = edge_index[0], edge_index[1]
    if batch is None:
        g = dgl.graph((src, dst), num_nodes=num_nodes)
    else:
        b = batch.long()
        eg = b[src]
        if src.numel() and bool((eg != b[dst]).any()):
            raise ValueError("`edge_index` has an edge between two graphs of `batch`.")
        if src.numel() and bool((eg[1:] < eg[:-1]).any()):
            raise ValueError("edges must be grouped by graph (graph 0's edges first), as in a "
                             "PyG Batch; sort them by batch[src] first.")
        starts = [0]
        for s in sizes:
            starts.append(starts[-1] + s)
        ecount = torch.bincount(eg, minlength=len(sizes)).tolist()
        graphs, e0 = [], 0
        for i, size in enumerate(sizes):
            e1 = e0 + ecount[i]
            graphs.append(dgl.graph((src[e0:e1] - starts[i], dst[e0:e1] - starts[i]),
                                    num_nodes=size))
            e0 = e1
        g = dgl.batch(graphs) if graphs else dgl.graph(([], []), num_nodes=0)
    for key, value in (ndata or {}).items():
        g.ndata[key] = value
    for key, value in (edata or {}).items():
        g.edata[key] = value
    return g


def edgeset_to_dgl(edges: EdgeSet, *, ndata: dict[str, Tensor] | None = None) -> Any:
    """A (batched) DGLGraph with one edge ``col -> row`` per EdgeSet edge (square graphs only).

    The inverse of :func:`dgl_to_edgeset`: ``dgl_to_edgeset(edgeset_to_dgl(e))`` has the same
    rows, columns and edge order as ``e``. ``edges.batch`` (if set) becomes the batching.
    """
    if edges.num_rows != edges.num_cols:
        raise ValueError(
            f"a DGLGraph has one node set; this EdgeSet is bipartite ({edges.num_rows} x "
            f"{edges.num_cols}). Build a heterograph yourself for bipartite relations."
        )
    ei = torch.stack([edges.col, edges.row])
    return edge_index_to_dgl(ei, edges.num_rows, batch=edges.batch,
                             num_graphs=edges.num_graphs if edges.batch is not None else None,
                             ndata=ndata)


def pyg_to_dgl(
    data: Any, *, node_attrs: Sequence[str] | None = None,
    edge_attrs: Sequence[str] | None = None, rename: dict[str, str] | None = None,
) -> Any:
    """A PyG ``Data``/``Batch`` as a (batched) DGLGraph.

    Args:
        data: a PyG ``Data`` (one graph) or ``Batch``.
        node_attrs: node tensors copied to ``g.ndata`` (default: every ``[N, *]`` tensor
            among ``x``, ``pos``, ``y`` when ``y`` is per node).
        edge_attrs: edge tensors copied to ``g.edata`` (default: ``edge_attr`` if present).
        rename: PyG name -> DGL name (default ``{"x": "feat"}``: DGL's usual feature key; the
            tensor is also kept under ``"x"``).

    Returns:
        a DGLGraph; batched with ``data.num_graphs`` graphs when ``data`` has ``batch``.
    """
    if not is_pyg_data(data):
        raise TypeError(f"expected a PyG Data/Batch with `edge_index`, got {type(data).__name__}.")
    n = int(data.num_nodes)
    batch = getattr(data, "batch", None)
    num_graphs = getattr(data, "num_graphs", None) if isinstance(batch, Tensor) else None
    rename = {"x": "feat"} if rename is None else dict(rename)
    if node_attrs is None:
        node_attrs = [k for k in ("x", "pos", "y") if isinstance(getattr(data, k, None), Tensor)
                      and getattr(data, k).dim() >= 1 and getattr(data, k).shape[0] == n
                      and not (k == "y" and isinstance(num_graphs, int) and num_graphs == n)]
    if edge_attrs is None:
        edge_attrs = ["edge_attr"] if isinstance(getattr(data, "edge_attr", None), Tensor) else []
    ndata: dict[str, Tensor] = {}
    for k in node_attrs:
        v = getattr(data, k)
        ndata[k] = v
        if k in rename:
            ndata[rename[k]] = v
    edata = {k: getattr(data, k) for k in edge_attrs}
    return edge_index_to_dgl(data.edge_index, n,
                             batch=batch if isinstance(batch, Tensor) else None,
                             num_graphs=num_graphs if isinstance(num_graphs, int) else None,
                             ndata=ndata, edata=edata)


def dgl_to_pyg(g: Any, *, node_attrs: Sequence[str] | None = None,
               edge_attrs: Sequence[str] | None = None, y: Tensor | None = None) -> Any:
    """A (batched) DGLGraph as a PyG ``Batch`` (one ``Data`` per graph of the batch).

    Args:
        g: the DGL graph.
        node_attrs: ``g.ndata`` keys to copy (default: all; ``"feat"`` also becomes ``x``).
        edge_attrs: ``g.edata`` keys to copy (default: all).
        y: optional graph labels ``[B, *]`` (DGL keeps them outside the graph).

    Returns:
        ``torch_geometric.data.Batch`` whose ``edge_index``, ``batch`` and ``ptr`` describe the
        same graphs in the same node order (edges grouped by graph, DGL order within a graph).
    """
    from torch_geometric.data import Batch, Data

    edge_index, batch, n = dgl_to_edge_index(g)
    sizes = g.batch_num_nodes().long().tolist()
    keys_n = list(g.ndata.keys()) if node_attrs is None else list(node_attrs)
    keys_e = list(g.edata.keys()) if edge_attrs is None else list(edge_attrs)
    eg = batch[edge_index[0]] if edge_index.numel() else edge_index.new_zeros(0)
    order = torch.sort(eg, stable=True).indices
    edge_index = edge_index[:, order]
    ecount = torch.bincount(eg, minlength=len(sizes)).tolist()
    if y is not None and y.shape[0] != len(sizes):
        raise ValueError(f"`y` has {y.shape[0]} rows for {len(sizes)} graphs.")
    datas, n0, e0 = [], 0, 0
    for i, size in enumerate(sizes):
        e1 = e0 + ecount[i]
        d = Data(edge_index=edge_index[:, e0:e1] - n0, num_nodes=size)
        for k in keys_n:
            d[k] = g.ndata[k][n0:n0 + size]
            if k == "feat" and "x" not in keys_n:
                d["x"] = d[k]
        for k in keys_e:
            d[k] = g.edata[k][order[e0:e1]]
        if y is not None:
            d["y"] = y[i:i + 1]
        datas.append(d)
        n0, e0 = n0 + size, e1
    return Batch.from_data_list(datas)


# --------------------------------------------------------------------------- any input
def as_edgeset(data: Any, num_nodes: int | None = None) -> EdgeSet:
    """The input graph of ``data`` as an EdgeSet (rows = destination nodes, ``batch`` set).

    Args:
        data: a PyG ``Data``/``Batch``, a (batched) DGLGraph, a ``(graph, labels)`` pair, or
            an ``edge_index`` ``[2, E]`` tensor.
        num_nodes: ``N`` for a bare ``edge_index``.
    """
    data = unwrap(data)
    if is_dgl_graph(data):
        return dgl_to_edgeset(data)
    if isinstance(data, Tensor):
        return EdgeSet.from_edge_index(data, num_nodes)
    if is_pyg_data(data):
        n = int(data.num_nodes)
        batch = getattr(data, "batch", None)
        e = EdgeSet.from_edge_index(data.edge_index, n)
        if isinstance(batch, Tensor):
            g = getattr(data, "num_graphs", None)
            return e.with_batch(batch, g if isinstance(g, int) else None)
        return e.with_batch(torch.zeros(n, dtype=torch.long, device=data.edge_index.device), 1)
    raise TypeError(
        f"cannot read a graph from a {type(data).__name__}; pass a PyG Data/Batch, a DGLGraph "
        "or an edge_index tensor."
    )


# --------------------------------------------------------------------------- calls
def dgl_call(feat: str | Sequence[str] = ("feat", "x"), *,
             forward: Callable[[nn.Module, Any, Tensor], Any] | None = None) -> Callable:
    """A Distiller ``call`` running a DGL model as ``model(g, g.ndata[feat])``.

    Accepts a DGLGraph, a ``(graph, labels)`` pair, or a PyG ``Data``/``Batch`` (converted with
    :func:`pyg_to_dgl`, so a DGL teacher and a PyG student can share one loader).

    Args:
        feat: node-feature key(s) tried in order.
        forward: custom ``forward(model, g, x)`` (default ``model(g, x)``).
    """
    keys = (feat,) if isinstance(feat, str) else tuple(feat)

    def call(model: nn.Module, data: Any) -> Any:
        g = unwrap(data)
        if is_pyg_data(g):
            g = pyg_to_dgl(g)
        if not is_dgl_graph(g):
            raise TypeError(f"dgl_call needs a DGLGraph or a PyG batch, got {type(g).__name__}.")
        x = node_features(g, keys)
        return forward(model, g, x) if forward is not None else model(g, x)

    return call


def pyg_call_any(feat: str | Sequence[str] = ("feat", "x")) -> Callable:
    """A Distiller ``call`` running a PyG-style model as ``model(x, edge_index, batch=batch)``
    (``batch`` by keyword, as PyG's ``GCN``/``GIN``/``GAT`` expect; see
    :func:`graphkd.inputs.pyg_forward`).

    Accepts a PyG ``Data``/``Batch``, or a DGLGraph / ``(graph, labels)`` pair (read with
    :func:`dgl_to_edge_index`; ``x = g.ndata[feat]``), so a PyG student trains on DGL batches.
    """
    keys = (feat,) if isinstance(feat, str) else tuple(feat)

    def call(model: nn.Module, data: Any) -> Any:
        g = unwrap(data)
        if is_dgl_graph(g):
            ctx = dgl_context(g)
            return pyg_forward(model, node_features(g, keys), ctx["edge_index"], ctx["batch"])
        return pyg_forward(model, g.x, g.edge_index, getattr(g, "batch", None))

    return call
