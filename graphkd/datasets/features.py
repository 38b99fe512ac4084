"""OGB molecular featurization: 9 integer atom features and 3 integer bond features.

A faithful re-implementation of ``ogb/utils/features.py`` (``allowable_features``,
``atom_to_feature_vector``, ``bond_to_feature_vector``, ``get_atom_feature_dims``,
``get_bond_feature_dims``) and ``ogb/utils/mol.py`` (``smiles2graph``) from
snap-stanford/ogb, so that molecules featurized here match the ``ogbg-mol*`` datasets
column for column, without the ``ogb`` package. RDKit is imported only inside the functions that
need it.

Atom features (index into each list; a value not in the list maps to the last entry, ``misc``):
atomic number (1..118, misc), chirality tag, total degree (0..10), formal charge (-5..5),
total number of Hs (0..8), radical electrons (0..4), hybridization (SP..SP3D2), is aromatic,
is in ring. Bond features: bond type (SINGLE, DOUBLE, TRIPLE, AROMATIC, misc), stereo
(STEREONONE..STEREOANY; no misc entry, as in OGB), is conjugated.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "ALLOWABLE_FEATURES",
    "ATOM_FEATURE_DIMS",
    "BOND_FEATURE_DIMS",
    "atom_to_feature_vector",
    "bond_to_feature_vector",
    "mol_from_smiles",
    "mol_to_data",
    "smiles_to_data",
]

ALLOWABLE_FEATURES: dict[str, list[Any]] = {
    "possible_atomic_num_list": [*range(1, 119), "misc"],
    "possible_chirality_list": [
        "CHI_UNSPECIFIED", "CHI_TETRAHEDRAL_CW", "CHI_TETRAHEDRAL_CCW", "CHI_OTHER", "misc",
    ],
    "possible_degree_list": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "misc"],
    "possible_formal_charge_list": [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, "misc"],
    "possible_numH_list": [0, 1, 2, 3, 4, 5, 6, 7, 8, "misc"],
    "possible_number_radical_e_list": [0, 1, 2, 3, 4, "misc"],
    "possible_hybridization_list": ["SP", "SP2", "SP3", "SP3D", "SP3D2", "misc"],
    "possible_is_aromatic_list": [False, True],
    "possible_is_in_ring_list": [False, True],
    "possible_bond_type_list": ["SINGLE", "DOUBLE", "TRIPLE", "AROMATIC", "misc"],
    "possible_bond_stereo_list": [
        "STEREONONE", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS", "STEREOANY",
    ],
    "possible_is_conjugated_list": [False, True],
}

_ATOM_KEYS = [
    "possible_atomic_num_list", "possible_chirality_list", "possible_degree_list",
    "possible_formal_charge_list", "possible_numH_list", "possible_number_radical_e_list",
    "possible_hybridization_list", "possible_is_aromatic_list", "possible_is_in_ring_list",
]
_BOND_KEYS = [
    "possible_bond_type_list", "possible_bond_stereo_list", "possible_is_conjugated_list",
]

#: Vocabulary size of each of the 9 atom features: ``[119, 5, 12, 12, 10, 6, 6, 2, 2]``.
ATOM_FEATURE_DIMS: list[int] = [len(ALLOWABLE_FEATURES[k]) for k in _ATOM_KEYS]
#: Vocabulary size of each of the 3 bond features: ``[5, 6, 2]``.
BOND_FEATURE_DIMS: list[int] = [len(ALLOWABLE_FEATURES[k]) for k in _BOND_KEYS]


def _safe_index(values: list[Any], value: Any) -> int:
    """Index of ``value`` in ``values``, or the last index (``misc``) when absent."""
    try:
        return values.index(value)
    except ValueError:
        return len(values) - 1


def atom_to_feature_vector(atom: Any) -> list[int]:
    """The 9 OGB integer features of an RDKit atom (see the module docstring).

    Example:
        >>> from rdkit import Chem
        >>> atom_to_feature_vector(Chem.MolFromSmiles("Cl[C@H](/C=C/C)Br").GetAtomWithIdx(1))
        [5, 2, 4, 5, 1, 0, 2, 0, 0]
    """
    f = ALLOWABLE_FEATURES
    return [
        _safe_index(f["possible_atomic_num_list"], atom.GetAtomicNum()),
        _safe_index(f["possible_chirality_list"], str(atom.GetChiralTag())),
        _safe_index(f["possible_degree_list"], atom.GetTotalDegree()),
        _safe_index(f["possible_formal_charge_list"], atom.GetFormalCharge()),
        _safe_index(f["possible_numH_list"], atom.GetTotalNumHs()),
        _safe_index(f["possible_number_radical_e_list"], atom.GetNumRadicalElectrons()),
        _safe_index(f["possible_hybridization_list"], str(atom.GetHybridization())),
        f["possible_is_aromatic_list"].index(atom.GetIsAromatic()),
        f["possible_is_in_ring_list"].index(atom.IsInRing()),
    ]


def bond_to_feature_vector(bond: Any) -> list[int]:
    """The 3 OGB integer features of an RDKit bond: type, stereo, is conjugated.

    Example:
        >>> from rdkit import Chem
        >>> bond_to_feature_vector(Chem.MolFromSmiles("Cl[C@H](/C=C/C)Br").GetBondWithIdx(2))
        [1, 2, 0]
    """
    f = ALLOWABLE_FEATURES
    return [
        _safe_index(f["possible_bond_type_list"], str(bond.GetBondType())),
        f["possible_bond_stereo_list"].index(str(bond.GetStereo())),
        f["possible_is_conjugated_list"].index(bond.GetIsConjugated()),
    ]


def mol_to_data(mol: Any, y: torch.Tensor | None = None, **attrs: Any):
    """Featurize an RDKit molecule as OGB's ``smiles2graph`` does, into a PyG ``Data``.

    Every bond ``(i, j)`` becomes two directed edges, ``i -> j`` then ``j -> i``, in bond order,
    both with the bond's features.

    Returns:
        ``Data`` with ``x`` ``[n, 9]`` int64, ``edge_index`` ``[2, 2 * bonds]`` int64,
        ``edge_attr`` ``[2 * bonds, 3]`` int64, ``num_nodes = n``, ``y`` when given, plus
        ``attrs`` (e.g. ``smiles=...``).
    """
    from torch_geometric.data import Data

    x = torch.tensor([atom_to_feature_vector(a) for a in mol.GetAtoms()],
                     dtype=torch.long).view(-1, len(ATOM_FEATURE_DIMS))
    src, dst, feats = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        f = bond_to_feature_vector(bond)
        src += [i, j]
        dst += [j, i]
        feats += [f, f]
    edge_index = torch.tensor([src, dst], dtype=torch.long).view(2, -1)
    edge_attr = torch.tensor(feats, dtype=torch.long).view(-1, len(BOND_FEATURE_DIMS))
    data = Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=x.shape[0], **attrs)
    if y is not None:
        data.y = y
    return data


def mol_from_smiles(smiles: str, *, lenient_valence: bool = False) -> Any:
    """Parse a SMILES string with RDKit (sanitized), optionally tolerating hypervalent atoms.

    Recent RDKit releases refuse some valences that older ones accepted (e.g. six bonds on Al,
    five on Ge): 7 of the 41,127 molecules of ogbg-molhiv, which OGB featurized with an older
    RDKit. With ``lenient_valence=True`` a SMILES that fails *only* the valence check is parsed
    unsanitized, its implicit hydrogens computed with ``UpdatePropertyCache(strict=False)`` and
    sanitized without ``SANITIZE_PROPERTIES`` (ring perception, Kekulization, aromaticity,
    conjugation and hybridization still run). Molecules that pass the check are parsed exactly
    as without the flag.

    Raises:
        ValueError: RDKit cannot parse ``smiles`` (or, leniently, cannot sanitize it).

    Example:
        >>> mol_from_smiles("O=C1O[Al]23(OC1=O)(OC(=O)C(=O)O2)OC(=O)C(=O)O3",
        ...                 lenient_valence=True).GetNumAtoms()
        19
    """
    try:
        from rdkit import Chem, RDLogger
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "molecule featurization needs RDKit: pip install 'graphkd[chem]' (or rdkit)."
        ) from err
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles else None
    if mol is None and lenient_valence and isinstance(smiles, str) and smiles:
        raw = Chem.MolFromSmiles(smiles, sanitize=False)
        if raw is not None:
            try:
                Chem.SanitizeMol(Chem.Mol(raw))
            except Chem.AtomValenceException:
                raw.UpdatePropertyCache(strict=False)
                flags = Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES
                if Chem.SanitizeMol(raw, flags, catchErrors=True) == \
                        Chem.SanitizeFlags.SANITIZE_NONE:
                    mol = raw
            except Chem.MolSanitizeException:  # Kekulization etc.: not parsable
                pass
    if mol is None:
        raise ValueError(f"RDKit could not parse SMILES {smiles!r}.")
    return mol


def smiles_to_data(smiles: str, y: torch.Tensor | None = None, *, remove_hs: bool = True,
                   lenient_valence: bool = False):
    """Parse a SMILES string and featurize it (OGB ``smiles2graph``), keeping ``smiles`` on it.

    Args:
        smiles: the molecule.
        y: optional label tensor stored as ``data.y``.
        remove_hs: keep RDKit's implicit hydrogens (True, as OGB) or add them as atoms.
        lenient_valence: accept atoms above RDKit's allowed valence (:func:`mol_from_smiles`).

    Raises:
        ValueError: if RDKit cannot parse ``smiles``.

    Example:
        >>> d = smiles_to_data("CCO")
        >>> d.x.shape, d.edge_index.shape
        (torch.Size([3, 9]), torch.Size([2, 4]))
    """
    mol = mol_from_smiles(smiles, lenient_valence=lenient_valence)
    if not remove_hs:
        from rdkit import Chem

        mol = Chem.AddHs(mol)
    return mol_to_data(mol, y, smiles=smiles)
