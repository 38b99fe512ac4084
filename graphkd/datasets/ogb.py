"""Reader for OGB graph-property datasets (``ogbg-mol*``) from their raw folders, without ``ogb``.

The layout of an extracted OGB download (e.g. ``hiv.zip`` for ``ogbg-molhiv``), placed at
``<data root>/ogbg_molhiv/``::

    ogbg_molhiv/
      raw/edge.csv.gz            one row "src,dst" per undirected bond, node ids local to a graph
      raw/num-node-list.csv.gz   one row per graph: its number of nodes
      raw/num-edge-list.csv.gz   one row per graph: its number of (undirected) edges
      raw/node-feat.csv.gz       one row per node: 9 integer atom features   (optional)
      raw/edge-feat.csv.gz       one row per edge: 3 integer bond features   (optional)
      raw/graph-label.csv.gz     one row per graph: its task label(s), empty/nan = missing
      mapping/mol.csv.gz         header + one row per graph: label(s),smiles,mol_id (optional)
      split/scaffold/{train,valid,test}.csv.gz   one graph index per row

This mirrors ``ogb/io/read_graph_raw.py:read_csv_graph_raw`` with ``add_inverse_edge=True``
(``ogb/graphproppred/master.csv`` sets it for every ``ogbg-mol*`` set): each stored edge
``(s, d)`` becomes ``s -> d`` followed by ``d -> s``, both with the stored edge features, which is
the same order as :func:`~graphkd.datasets.features.smiles_to_data`. When ``raw/`` is absent but
``mapping/mol.csv.gz`` exists, the SMILES are featurized with RDKit instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from graphkd.datasets._paths import dataset_dir, require
from graphkd.datasets.molecules import _check_widths, _read_csv

__all__ = ["read_ogb_raw", "load_ogbg", "load_ogb_split"]


def _matrix(path: Path) -> torch.Tensor:
    """A headerless CSV(.gz) as int64 when every cell is an integer, else float32 (NaN allowed).

    A binary or damaged file, rows of different lengths and non-numeric cells raise
    ``ValueError`` naming ``path`` (and the 1-based line).
    """
    lines, rows = _read_csv(path)
    if rows:
        _check_widths(path, lines, rows, len(rows[0]), "its first row")
    try:
        return torch.tensor([[int(c) for c in r] for r in rows], dtype=torch.long)
    except ValueError:
        pass
    vals = []
    for line, r in zip(lines, rows):
        try:
            vals.append([math.nan if c.strip() in ("", "nan", "NaN") else float(c) for c in r])
        except ValueError as err:
            raise ValueError(f"{path}, line {line}: a cell is not a number ({err}).") from err
    return torch.tensor(vals, dtype=torch.float32)


def read_ogb_raw(raw_dir: str | os.PathLike, *, add_inverse_edge: bool = True) -> list:
    """Read an OGB ``raw/`` folder into a list of PyG ``Data`` (one per graph).

    Args:
        raw_dir: the folder with ``edge.csv.gz``, ``num-node-list.csv.gz``,
            ``num-edge-list.csv.gz`` and optionally ``node-feat``, ``edge-feat``,
            ``graph-label`` (all ``.csv.gz``, headerless).
        add_inverse_edge: store each edge in both directions (True for ``ogbg-mol*``).

    Returns:
        list of ``Data`` with ``edge_index`` ``[2, E]``, ``x`` ``[n, F]`` and ``edge_attr``
        ``[E, 3]`` when present, ``num_nodes``, and ``y`` ``[1, T]`` when the label file exists
        (int64 when all labels are integers, else float32 with NaN for missing labels).

    Example:
        >>> graphs = read_ogb_raw("datasets/ogbg_molhiv/raw")  # doctest: +SKIP
    """
    raw = Path(raw_dir)
    name = raw.parent.name or "ogbg_molhiv"
    need = "OGB raw files edge.csv.gz, num-node-list.csv.gz, num-edge-list.csv.gz"
    edge = _matrix(require(raw / "edge.csv.gz", name, need)).long().view(-1, 2).T
    n_nodes = _matrix(require(raw / "num-node-list.csv.gz", name, need)).long().view(-1).tolist()
    n_edges = _matrix(require(raw / "num-edge-list.csv.gz", name, need)).long().view(-1).tolist()
    opt = {k: (_matrix(raw / f"{k}.csv.gz") if (raw / f"{k}.csv.gz").exists() else None)
           for k in ("node-feat", "edge-feat", "graph-label")}
    if not n_nodes:
        raise ValueError(f"{raw}/num-node-list.csv.gz lists no graphs; the download is "
                         "incomplete or damaged.")
    if len(n_nodes) != len(n_edges):
        raise ValueError(f"{raw}: num-node-list has {len(n_nodes)} graphs but num-edge-list "
                         f"has {len(n_edges)}; the folder is incomplete or mixed.")
    if sum(n_edges) != edge.shape[1]:
        raise ValueError(f"{raw}: num-edge-list sums to {sum(n_edges)} but edge.csv.gz has "
                         f"{edge.shape[1]} rows.")
    for key, total in (("node-feat", sum(n_nodes)), ("edge-feat", sum(n_edges)),
                       ("graph-label", len(n_nodes))):
        if opt[key] is not None and opt[key].shape[0] != total:
            raise ValueError(f"{raw}/{key}.csv.gz has {opt[key].shape[0]} rows, expected {total}.")

    from torch_geometric.data import Data

    graphs = []
    n0 = e0 = 0
    for g, (n, m) in enumerate(zip(n_nodes, n_edges)):
        ei = edge[:, e0:e0 + m]
        if m and (int(ei.min()) < 0 or int(ei.max()) >= n):
            raise ValueError(f"{raw}: graph {g} has an edge to node {int(ei.max())} but only "
                             f"{n} nodes (edge ids in OGB raw files are local to each graph).")
        ef = None if opt["edge-feat"] is None else opt["edge-feat"][e0:e0 + m]
        if add_inverse_edge:
            ei = torch.stack([ei, ei.flip(0)], dim=2).reshape(2, 2 * m)
            ef = None if ef is None else ef.repeat_interleave(2, dim=0)
        data = Data(edge_index=ei.contiguous(), num_nodes=n)
        if opt["node-feat"] is not None:
            data.x = opt["node-feat"][n0:n0 + n]
        if ef is not None:
            data.edge_attr = ef
        if opt["graph-label"] is not None:
            data.y = opt["graph-label"][g:g + 1]
        graphs.append(data)
        n0 += n
        e0 += m
    return graphs


def _read_mapping(path: Path) -> tuple[list[str], torch.Tensor | None, list[int]]:
    """``mapping/mol.csv.gz``: header row, a ``smiles`` column and label columns (+ ``mol_id``).

    Returns the SMILES, their labels (``None`` without label columns) and the 1-based lines.
    """
    lines, rows = _read_csv(path)
    if not rows:
        raise ValueError(f"{path} is empty; expected a header row and one row per molecule.")
    header = [h.strip().lower() for h in rows[0]]
    if "smiles" not in header:
        raise ValueError(f"{path} has no 'smiles' column (columns: {rows[0]}).")
    if len(rows) == 1:
        raise ValueError(f"{path} has a header row but no data rows; expected one row per "
                         "molecule.")
    lines, rows = lines[1:], rows[1:]
    _check_widths(path, lines, rows, len(header))
    s = header.index("smiles")
    lab = [j for j, h in enumerate(header) if j != s and h != "mol_id"]
    smiles = [r[s] for r in rows]
    if not lab:
        return smiles, None, lines
    vals = []
    for line, r in zip(lines, rows):
        try:
            vals.append([math.nan if r[j].strip() in ("", "nan") else float(r[j]) for j in lab])
        except ValueError as err:
            raise ValueError(f"{path}, line {line}: a label cell is not a number ({err}).") \
                from err
    y = torch.tensor(vals, dtype=torch.float32)
    if not bool(torch.isnan(y).any()) and bool((y == y.round()).all()):
        y = y.long()
    return smiles, y, lines


def load_ogbg(name: str = "ogbg-molhiv", root: str | os.PathLike | None = None) -> list:
    """Load an ``ogbg-mol*`` dataset from ``<root>/<name with '-' -> '_'>/``.

    Reads ``raw/`` (see :func:`read_ogb_raw`); attaches ``smiles`` from ``mapping/mol.csv.gz``
    when present (needed by :func:`~graphkd.datasets.splits.scaffold_split`). Without ``raw/``,
    featurizes the SMILES of ``mapping/mol.csv.gz`` with RDKit (invalid ones are dropped with a
    logged count, so indices may then differ from the official split files).

    Example:
        >>> graphs = load_ogbg("ogbg-molhiv")  # doctest: +SKIP
        >>> split = load_ogb_split("ogbg-molhiv")  # doctest: +SKIP
    """
    folder = name.replace("-", "_")
    base = dataset_dir(folder, root)
    raw, mapping = base / "raw", base / "mapping" / "mol.csv.gz"
    if raw.is_dir():
        graphs = read_ogb_raw(raw)
        if mapping.exists():
            smiles, _, _ = _read_mapping(mapping)
            if len(smiles) != len(graphs):
                raise ValueError(f"{mapping} lists {len(smiles)} molecules but {raw} holds "
                                 f"{len(graphs)} graphs.")
            for g, s in zip(graphs, smiles):
                g.smiles = s
        return graphs
    if mapping.exists():
        from graphkd.datasets.molecules import smiles_to_graphs

        smiles, y, lines = _read_mapping(mapping)
        graphs, _ = smiles_to_graphs(smiles, y, source=str(mapping), lines=lines)
        return graphs
    require(raw, folder, "an OGB 'raw/' folder (edge.csv.gz, num-node-list.csv.gz, "
                         "num-edge-list.csv.gz, node-feat.csv.gz, edge-feat.csv.gz, "
                         "graph-label.csv.gz) or 'mapping/mol.csv.gz'")
    return []  # pragma: no cover - require() raised


def load_ogb_split(
    name: str = "ogbg-molhiv", root: str | os.PathLike | None = None, split: str = "scaffold",
) -> dict[str, torch.Tensor]:
    """The official split: ``{"train", "valid", "test"}`` -> int64 graph indices.

    Reads ``<root>/<folder>/split/<split>/{train,valid,test}.csv.gz`` (one index per row).
    """
    folder = name.replace("-", "_")
    base = dataset_dir(folder, root) / "split" / split
    out = {}
    for part in ("train", "valid", "test"):
        path = require(base / f"{part}.csv.gz", folder,
                       f"the official split file split/{split}/{part}.csv.gz")
        out[part] = _matrix(path).long().view(-1)
    return out
