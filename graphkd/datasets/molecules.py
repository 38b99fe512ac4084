"""Molecule datasets as lists of PyG ``Data`` (OGB features, see :mod:`.features`).

* :func:`load_chembl_series` -- the embedded default: RDKit's own ChEMBL series shipped in the
  rdkit wheel (``rdkit/Contrib/FreeWilson/data/CHEMBL2321810.smi`` + ``..._act.csv``, 1,017
  molecules with a measured pIC50), binarized at ``pIC50 >= 7`` (IC50 <= 100 nM): 353 actives.
* :func:`load_molecule_csv` -- MoleculeNet-style CSV: a SMILES column plus label columns (empty
  cells -> NaN, as in multi-task sets such as Tox21); invalid SMILES are skipped and counted.

Every graph carries ``x`` ``[n, 9]``, ``edge_index`` ``[2, 2b]``, ``edge_attr`` ``[2b, 3]``
(int64), ``y`` ``[1, T]`` and its ``smiles`` string (for :func:`~.splits.scaffold_split`).
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from graphkd.datasets._paths import dataset_dir, require
from graphkd.datasets.features import smiles_to_data

__all__ = ["CHEMBL_ACTIVE_PIC50", "load_chembl_series", "load_molecule_csv", "smiles_to_graphs"]

log = logging.getLogger(__name__)

_ID_COLUMNS = {"", "num", "id", "mol_id", "cid", "index", "unnamed: 0"}

#: Default activity threshold for the ChEMBL series: pIC50 >= 7, i.e. IC50 <= 100 nM.
CHEMBL_ACTIVE_PIC50 = 7.0


def smiles_to_graphs(
    smiles: Sequence[str], labels: torch.Tensor | None = None, *, source: str = "input",
) -> tuple[list, list[int]]:
    """Featurize many SMILES; invalid ones are skipped, counted and logged.

    Args:
        smiles: ``M`` SMILES strings.
        labels: optional ``[M, T]`` labels; graph ``i`` gets ``y = labels[i:i+1]``.
        source: name used in the log message (e.g. a file path).

    Returns:
        ``(graphs, kept)``: the ``Data`` of the valid molecules and their indices in ``smiles``.
    """
    graphs, kept, bad = [], [], []
    for i, s in enumerate(smiles):
        try:
            y = None if labels is None else labels[i:i + 1]
            graphs.append(smiles_to_data(s, y))
            kept.append(i)
        except ValueError:
            bad.append(i)
    if bad:
        shown = ", ".join(f"#{i} {smiles[i]!r}" for i in bad[:5])
        log.warning("%s: skipped %d of %d molecules whose SMILES RDKit cannot parse (%s%s).",
                    source, len(bad), len(smiles), shown, ", ..." if len(bad) > 5 else "")
    return graphs, kept


def _to_float(cell: str) -> float:
    cell = cell.strip()
    if cell == "" or cell.lower() in ("nan", "na", "none"):
        return math.nan
    return float(cell)


def load_molecule_csv(
    path: str | os.PathLike, *, smiles_column: str = "smiles",
    label_columns: Sequence[str] | None = None, dtype: torch.dtype = torch.float32,
) -> list:
    """Read a MoleculeNet-style CSV: one SMILES column and one or more label columns.

    Args:
        path: the ``.csv`` (or ``.csv.gz``) file.
        smiles_column: header of the SMILES column (matched case-insensitively).
        label_columns: headers of the label columns; default: every other all-numeric column
            except id-like ones (``num``, ``id``, ``mol_id``, ``cid``, ``index``, unnamed).
        dtype: label dtype (empty cells become NaN, i.e. a missing label of a multi-task set).

    Returns:
        list of ``Data`` with ``y`` ``[1, T]``; rows with invalid SMILES are skipped and their
        count is logged (logger ``graphkd.datasets.molecules``).

    Example:
        >>> graphs = load_molecule_csv("datasets/bbbp/BBBP.csv", smiles_column="smiles",
        ...                            label_columns=["p_np"])  # doctest: +SKIP
    """
    path = require(Path(path), "moleculenet", "a CSV with a SMILES column and label columns")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path} is empty; expected a header row and one row per molecule.")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if smiles_column.lower() not in lower:
        raise ValueError(f"{path} has no column {smiles_column!r}; its columns are {header}. "
                         "Pass smiles_column=... naming the SMILES column.")
    s_idx = lower.index(smiles_column.lower())
    body = [r for r in rows[1:] if r]
    if label_columns is None:
        label_idx = []
        for j, name in enumerate(lower):
            if j == s_idx or name in _ID_COLUMNS:
                continue
            try:
                [_to_float(r[j]) for r in body]
            except (ValueError, IndexError):
                continue
            label_idx.append(j)
    else:
        missing = [c for c in label_columns if c not in header]
        if missing:
            raise ValueError(f"{path} has no label column(s) {missing}; its columns are {header}.")
        label_idx = [header.index(c) for c in label_columns]
    if not label_idx:
        raise ValueError(f"{path} has no numeric label column; pass label_columns=[...].")
    try:
        labels = torch.tensor([[_to_float(r[j]) for j in label_idx] for r in body], dtype=dtype)
    except ValueError as err:
        raise ValueError(f"{path}: a label cell is not a number ({err}).") from err
    smiles = [r[s_idx].strip() for r in body]
    graphs, _ = smiles_to_graphs(smiles, labels, source=str(path))
    return graphs


def _chembl_files() -> tuple[Path, Path]:
    try:
        import rdkit
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the ChEMBL series ships with RDKit: pip install 'graphkd[chem]'.") \
            from err
    base = Path(rdkit.__file__).parent / "Contrib" / "FreeWilson" / "data"
    smi, act = base / "CHEMBL2321810.smi", base / "CHEMBL2321810_act.csv"
    for p in (smi, act):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} not found: this RDKit build does not ship Contrib/FreeWilson/data. Install "
                "the PyPI rdkit wheel, or copy CHEMBL2321810.smi and CHEMBL2321810_act.csv from "
                "github.com/rdkit/rdkit (Contrib/FreeWilson/data) into "
                f"{dataset_dir('chembl2321810')}/ and pass root=..."
            )
    return smi, act


def load_chembl_series(
    threshold: float | None = CHEMBL_ACTIVE_PIC50, *, root: str | os.PathLike | None = None,
) -> list:
    """RDKit's ChEMBL series CHEMBL2321810 (1,017 molecules with pIC50): the offline default.

    Args:
        threshold: label ``y = 1`` when ``pIC50 >= threshold`` else 0 (``y`` int64 ``[1]``);
            ``None`` keeps the raw pIC50 as a float regression target ``[1, 1]``. The default
            7.0 (IC50 <= 100 nM, a common "active" cut-off) gives 353 actives / 664 inactives.
        root: a folder holding ``chembl2321810/CHEMBL2321810.smi`` and ``..._act.csv``; default:
            the copy inside the installed rdkit wheel.

    Returns:
        list of 1,017 ``Data`` in file order, each with ``smiles``, ``chembl_id`` and ``pic50``.

    Example:
        >>> graphs = load_chembl_series()
        >>> len(graphs), int(sum(int(g.y) for g in graphs))
        (1017, 353)
    """
    if root is not None:
        base = dataset_dir("chembl2321810", root)
        smi = require(base / "CHEMBL2321810.smi", "chembl2321810", "CHEMBL2321810.smi")
        act = require(base / "CHEMBL2321810_act.csv", "chembl2321810", "CHEMBL2321810_act.csv")
    else:
        smi, act = _chembl_files()
    with open(act, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        pic50 = {r[0].strip(): float(r[1]) for r in reader if r}
    pairs = [line.split() for line in smi.read_text().splitlines() if line.strip()]
    missing = [cid for _, cid in pairs if cid not in pic50]
    if missing:
        raise ValueError(f"{act} has no pIC50 for {len(missing)} ids of {smi}, e.g. {missing[0]}.")
    values = torch.tensor([pic50[cid] for _, cid in pairs], dtype=torch.float32)
    graphs, kept = smiles_to_graphs([s for s, _ in pairs], source=str(smi))
    for g, i in zip(graphs, kept):
        v = float(values[i])
        g.y = (torch.tensor([int(v >= threshold)]) if threshold is not None
               else values[i].view(1, 1))
        g.chembl_id = pairs[i][1]
        g.pic50 = v
    return graphs
