"""Molecule datasets as lists of PyG ``Data`` (OGB features, see :mod:`.features`).

* :func:`load_chembl_series` -- the embedded default: RDKit's own ChEMBL series shipped in the
  rdkit wheel (``rdkit/Contrib/FreeWilson/data/CHEMBL2321810.smi`` + ``..._act.csv``, 1,017
  molecules with a measured pIC50), binarized at ``pIC50 >= 7`` (IC50 <= 100 nM): 353 actives.
* :func:`load_molecule_csv` -- MoleculeNet-style CSV: a SMILES column plus label columns (empty
  cells -> NaN, as in multi-task sets such as Tox21); invalid SMILES are skipped and counted.

A file that cannot be what it claims -- not UTF-8 text, a row with a different number of fields
than the header, no data rows, no parsable SMILES at all -- raises ``ValueError`` naming the file
and, where one applies, the 1-based line.

Every graph carries ``x`` ``[n, 9]``, ``edge_index`` ``[2, 2b]``, ``edge_attr`` ``[2b, 3]``
(int64), ``y`` ``[1, T]`` and its ``smiles`` string (for :func:`~.splits.scaffold_split`).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import os
import zlib
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
    lines: Sequence[int] | None = None,
) -> tuple[list, list[int]]:
    """Featurize many SMILES; invalid ones are skipped, counted and logged.

    Args:
        smiles: ``M`` SMILES strings.
        labels: optional ``[M, T]`` labels; graph ``i`` gets ``y = labels[i:i+1]``.
        source: name used in the log message (e.g. a file path).
        lines: optional 1-based line numbers of the ``M`` SMILES in ``source``; the messages then
            name ``line N`` instead of the list index ``#i``.

    Returns:
        ``(graphs, kept)``: the ``Data`` of the valid molecules and their indices in ``smiles``.

    Raises:
        ValueError: when ``smiles`` is not empty and *none* of them can be parsed (an empty
            dataset is never what the caller wants; the message names ``source``, the count and
            the first bad entries). Some invalid SMILES among valid ones are only logged.
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
        where = (lambda i: f"#{i}") if lines is None else (lambda i: f"line {lines[i]}")
        shown = ", ".join(f"{where(i)} {smiles[i]!r}" for i in bad[:5])
        more = ", ..." if len(bad) > 5 else ""
        if not graphs:
            raise ValueError(
                f"{source}: none of its {len(smiles)} SMILES can be parsed by RDKit ({shown}"
                f"{more}). Check that the SMILES column is the right one (smiles_column=...) "
                "and that the file is not damaged.")
        log.warning("%s: skipped %d of %d molecules whose SMILES RDKit cannot parse (%s%s).",
                    source, len(bad), len(smiles), shown, more)
    return graphs, kept


def _read_text(path: Path) -> str:
    """The whole of a UTF-8 text file (``.gz``: gzip-compressed), with errors naming the file.

    A leading UTF-8 byte-order mark (as Excel writes) is dropped. Bytes that are not UTF-8
    (a binary file, an ``.xlsx`` renamed ``.csv``, a compressed file without ``.gz``) and a
    ``.gz`` file that is not gzip or is truncated raise ``ValueError`` naming ``path``.
    """
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = Path(path).read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a valid gzip file ({err}). Re-download it, or drop the "
                         "'.gz' suffix if it is plain text.") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not a UTF-8 text file: byte 0x{data[err.start]:02x} on line {line} "
            "cannot be decoded. Is it a binary file (an Excel workbook, a compressed archive "
            "without a .gz suffix)? Save it as a UTF-8 CSV, or check the path.") from err


def _read_csv(path: Path) -> tuple[list[int], list[list[str]]]:
    """The non-blank records of a CSV(.gz): ``(lines, rows)``, ``lines[k]`` 1-based.

    ``lines[k]`` is the first physical line of record ``rows[k]`` (a quoted field may span
    lines). Two parallel lists rather than ``(line, row)`` pairs: a million small tuples cost
    more in garbage-collector passes than the parsing itself. Decoding and CSV syntax errors
    raise ``ValueError`` naming ``path`` (and the line).
    """
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    lines, rows, start = [], [], 1
    try:
        for row in reader:
            if row:
                lines.append(start)
                rows.append(row)
            start = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}, line {start}: not valid CSV ({err}).") from err
    return lines, rows


def _check_widths(path: Path, lines: Sequence[int], rows: Sequence[Sequence[str]], width: int,
                  what: str = "the header") -> None:
    """``ValueError`` naming ``path`` and the first row whose field count is not ``width``."""
    if all(len(row) == width for row in rows):
        return
    ragged = [(line, len(row)) for line, row in zip(lines, rows) if len(row) != width]
    if ragged:
        line, found = ragged[0]
        others = f" ({len(ragged) - 1} more rows differ too)" if len(ragged) > 1 else ""
        raise ValueError(
            f"{path}, line {line}: expected {width} fields (as in {what}) but found {found}"
            f"{others}. Fix that row: a missing or extra separator, or an unquoted comma "
            "inside a field.")


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

    Raises:
        ValueError: naming the file (and the 1-based line where one applies) when it is not
            UTF-8 text (e.g. binary), has no data rows, has a row whose number of fields differs
            from the header's, has a non-numeric label cell, or none of its SMILES parses.

    Example:
        >>> graphs = load_molecule_csv("datasets/bbbp/BBBP.csv", smiles_column="smiles",
        ...                            label_columns=["p_np"])  # doctest: +SKIP
    """
    path = require(Path(path), "moleculenet", "a CSV with a SMILES column and label columns")
    lines, rows = _read_csv(path)
    if not rows:
        raise ValueError(f"{path} is empty; expected a header row and one row per molecule.")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if smiles_column.lower() not in lower:
        raise ValueError(f"{path} has no column {smiles_column!r}; its columns are {header}. "
                         "Pass smiles_column=... naming the SMILES column.")
    s_idx = lower.index(smiles_column.lower())
    if len(rows) == 1:
        raise ValueError(f"{path} has a header row ({header}) but no data rows; expected one "
                         "row per molecule.")
    lines, body = lines[1:], rows[1:]
    _check_widths(path, lines, body, len(header))
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
    values = []
    for line, r in zip(lines, body):
        try:
            values.append([_to_float(r[j]) for j in label_idx])
        except ValueError as err:
            raise ValueError(f"{path}, line {line}: a label cell is not a number ({err}).") \
                from err
    labels = torch.tensor(values, dtype=dtype)
    smiles = [r[s_idx].strip() for r in body]
    graphs, _ = smiles_to_graphs(smiles, labels, source=str(path), lines=lines)
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
    act_lines, act_rows = (x[1:] for x in _read_csv(act))
    if not act_rows:
        raise ValueError(f"{act} has no data rows; expected a header and one 'id,pIC50' row "
                         "per molecule.")
    _check_widths(act, act_lines, act_rows, 2, "'id,pIC50'")
    pic50 = {}
    for line, r in zip(act_lines, act_rows):
        try:
            pic50[r[0].strip()] = float(r[1])
        except ValueError as err:
            raise ValueError(f"{act}, line {line}: the pIC50 {r[1]!r} is not a number.") \
                from err
    numbered = [(i, ln.split()) for i, ln in enumerate(_read_text(smi).splitlines(), 1)
                if ln.strip()]
    if not numbered:
        raise ValueError(f"{smi} holds no molecules; expected one 'SMILES id' line per molecule.")
    smi_lines, pairs = [i for i, _ in numbered], [p for _, p in numbered]
    _check_widths(smi, smi_lines, pairs, 2, "'SMILES id'")
    missing = [cid for _, cid in pairs if cid not in pic50]
    if missing:
        raise ValueError(f"{act} has no pIC50 for {len(missing)} ids of {smi}, e.g. {missing[0]}.")
    values = torch.tensor([pic50[cid] for _, cid in pairs], dtype=torch.float32)
    graphs, kept = smiles_to_graphs([s for s, _ in pairs], source=str(smi),
                                    lines=smi_lines)
    for g, i in zip(graphs, kept):
        v = float(values[i])
        g.y = (torch.tensor([int(v >= threshold)]) if threshold is not None
               else values[i].view(1, 1))
        g.chembl_id = pairs[i][1]
        g.pic50 = v
    return graphs
