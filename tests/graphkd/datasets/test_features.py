"""OGB featurization of known molecules against hand-computed features."""

from __future__ import annotations

import pytest
import torch

from graphkd.datasets import ATOM_FEATURE_DIMS, BOND_FEATURE_DIMS, smiles_to_data
from graphkd.datasets.features import atom_to_feature_vector, bond_to_feature_vector

# column order: atomic number idx (Z - 1), chirality, total degree, formal charge idx (charge+5),
# total Hs, radical electrons, hybridization (SP=0, SP2=1, SP3=2), aromatic, in ring
C_AROMATIC_CH = [5, 0, 3, 5, 1, 0, 1, 1, 1]


def test_dims_match_ogb():
    assert ATOM_FEATURE_DIMS == [119, 5, 12, 12, 10, 6, 6, 2, 2]
    assert BOND_FEATURE_DIMS == [5, 6, 2]


def test_benzene():
    d = smiles_to_data("c1ccccc1")
    assert d.x.tolist() == [C_AROMATIC_CH] * 6
    assert d.edge_attr.tolist() == [[3, 0, 1]] * 12          # AROMATIC, STEREONONE, conjugated
    assert d.x.dtype == d.edge_index.dtype == d.edge_attr.dtype == torch.long
    ring = {(i, (i + 1) % 6) for i in range(6)}
    assert set(map(tuple, d.edge_index.T.tolist())) == ring | {(j, i) for i, j in ring}


def test_ethanol():
    d = smiles_to_data("CCO")
    assert d.x.tolist() == [
        [5, 0, 4, 5, 3, 0, 2, 0, 0],    # CH3: degree 1 heavy + 3 H = 4, SP3
        [5, 0, 4, 5, 2, 0, 2, 0, 0],    # CH2
        [7, 0, 2, 5, 1, 0, 2, 0, 0],    # OH: Z=8 -> 7, degree 2
    ]
    # bond i -> j then j -> i, in bond order
    assert d.edge_index.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]
    assert d.edge_attr.tolist() == [[0, 0, 0]] * 4
    assert d.smiles == "CCO" and d.num_nodes == 3


def test_ogb_reference_example_chirality_and_stereo():
    # the example in ogb/utils/features.py comments
    from rdkit import Chem

    mol = Chem.MolFromSmiles("Cl[C@H](/C=C/C)Br")
    assert atom_to_feature_vector(mol.GetAtomWithIdx(1)) == [5, 2, 4, 5, 1, 0, 2, 0, 0]
    assert bond_to_feature_vector(mol.GetBondWithIdx(2)) == [1, 2, 0]


def test_charges_misc_atoms_and_no_bonds():
    amm = smiles_to_data("[NH4+]")
    assert amm.x.tolist() == [[6, 0, 4, 6, 4, 0, 2, 0, 0]]
    assert amm.edge_index.shape == (2, 0) and amm.edge_attr.shape == (0, 3)
    dummy = smiles_to_data("*C")
    assert dummy.x[0, 0] == 118                                   # atomic number 0 -> misc
    nitrile = smiles_to_data("CC#N")
    assert nitrile.edge_attr[2].tolist() == [2, 0, 0]    # TRIPLE, not conjugated (lone pi bond)
    assert nitrile.x[2, 6] == 0                                   # N is SP


def test_invalid_smiles_raises():
    with pytest.raises(ValueError, match="could not parse"):
        smiles_to_data("C1CC(")
