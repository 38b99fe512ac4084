"""Dataset splits: deterministic seeded stratified splits and the Bemis-Murcko scaffold split.

* :func:`stratified_split` -- per-class shuffling with a seeded generator, so each part keeps the
  class proportions (digits; the validation part carved out of ModelNet40's official train set).
* :func:`scaffold_split` -- molecules grouped by Bemis-Murcko scaffold, scaffold sets sorted
  largest first and filled into train, then valid, then test, as DeepChem's
  ``ScaffoldSplitter`` (deepchem/splits/splitters.py) and OGB's dataset preparation do: no
  scaffold is shared between two parts, and the test set holds the rare scaffolds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["stratified_split", "scaffold_split", "murcko_scaffold", "mol_scaffold", "subset"]


def _check_fractions(fractions: Sequence[float]) -> None:
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {tuple(fractions)}.")


def stratified_split(
    labels: torch.Tensor | Sequence[int], fractions: Sequence[float] = (0.8, 0.1, 0.1),
    *, seed: int = 0,
) -> list[torch.Tensor]:
    """Split indices into parts with the same class proportions (seeded, deterministic).

    Within each class, indices are shuffled with ``torch.Generator().manual_seed(seed)`` and cut
    at ``round(cumsum(fractions) * n_class)``; each part is returned sorted.

    Args:
        labels: ``[N]`` integer class labels.
        fractions: one fraction per part, summing to 1.
        seed: RNG seed.

    Returns:
        one sorted int64 index tensor per part; together they cover ``0..N-1`` exactly once.

    Example:
        >>> tr, va = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), (0.75, 0.25))
        >>> len(tr), len(va)
        (6, 2)
    """
    _check_fractions(fractions)
    y = torch.as_tensor(labels).view(-1).long()
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    bounds = torch.tensor([0.0, *fractions]).cumsum(0)
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().view(-1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        cuts = (bounds * idx.numel()).round().long().tolist()
        for p in range(len(fractions)):
            parts[p].append(idx[cuts[p]:cuts[p + 1]])
    return [torch.cat(p).sort().values if p else torch.zeros(0, dtype=torch.long)
            for p in parts]


def mol_scaffold(mol: Any, *, include_chirality: bool = False) -> str:
    """Bemis-Murcko scaffold SMILES of an RDKit molecule.

    RDKit's ``MurckoScaffoldSmiles`` (``MurckoDecompose``, then the property cache, the SSSR and
    ``MolToSmiles(isomericSmiles=include_chirality)``), except that the scaffold's property cache
    is updated with ``strict=False``: the same string for every molecule RDKit sanitizes, and a
    scaffold (instead of an exception) for the hypervalent molecules that
    :func:`~graphkd.datasets.features.mol_from_smiles` accepts with ``lenient_valence=True``.

    Example:
        >>> from rdkit import Chem
        >>> mol_scaffold(Chem.MolFromSmiles("c1ccccc1CCO"))
        'c1ccccc1'
    """
    from rdkit import Chem

    core = Chem.MurckoDecompose(mol)
    core.ClearComputedProps()
    core.UpdatePropertyCache(strict=False)
    Chem.GetSymmSSSR(core)
    return Chem.MolToSmiles(core, isomericSmiles=include_chirality)


def murcko_scaffold(smiles: str, *, include_chirality: bool = False,
                    lenient_valence: bool = False) -> str:
    """Bemis-Murcko scaffold SMILES of a molecule (as RDKit's ``MurckoScaffoldSmiles``).

    Acyclic molecules have the empty scaffold ``""``. ``lenient_valence``: see
    :func:`~graphkd.datasets.features.mol_from_smiles`.

    Example:
        >>> murcko_scaffold("c1ccccc1CCO")
        'c1ccccc1'
    """
    from graphkd.datasets.features import mol_from_smiles

    try:
        mol = mol_from_smiles(smiles, lenient_valence=lenient_valence)
    except ValueError:
        raise ValueError(f"RDKit could not parse SMILES {smiles!r}; drop it before "
                         "splitting.") from None
    return mol_scaffold(mol, include_chirality=include_chirality)


def scaffold_split(
    smiles: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), *,
    scaffolds: Sequence[str] | None = None, include_chirality: bool = False,
) -> list[torch.Tensor]:
    """Deterministic scaffold split (DeepChem ``ScaffoldSplitter`` / OGB).

    Molecules are grouped by :func:`murcko_scaffold`; groups are sorted by
    ``(size, first index)`` descending (DeepChem's and OGB's ``sorted(..., key=lambda x:
    (len(x[1]), x[1][0]), reverse=True)``: among equal sizes the *later* group first); each
    group goes to train while train stays within ``fractions[0] * N``, else to valid while
    train + valid stays within ``(fractions[0] + fractions[1]) * N``, else to test. A scaffold
    never spans two parts. DeepChem computes scaffolds without chirality, OGB's split of
    ``ogbg-mol*`` (the pretrain-gnns ``scaffold_split``) with it (``include_chirality=True``);
    on ogbg-molhiv both give its 32,901 / 4,113 / 4,113.

    Args:
        smiles: ``N`` SMILES strings (e.g. ``[g.smiles for g in graphs]``).
        fractions: ``(train, valid, test)`` fractions summing to 1.
        scaffolds: the ``N`` scaffold strings when already known (e.g. ``g.scaffold`` of
            :func:`~graphkd.datasets.load_moleculenet`); ``smiles`` is then only counted.
        include_chirality: keep stereo marks in the scaffold SMILES.

    Returns:
        ``[train, valid, test]`` int64 index tensors (each in the order groups were assigned).

    Example:
        >>> tr, va, te = scaffold_split(["c1ccccc1C", "c1ccccc1O", "C1CC1N", "CCO"],
        ...                             (0.5, 0.25, 0.25))
        >>> tr.tolist(), va.tolist(), te.tolist()
        ([0, 1], [3], [2])
    """
    if len(fractions) != 3:
        raise ValueError(f"scaffold_split needs (train, valid, test) fractions, got {fractions}.")
    _check_fractions(fractions)
    if scaffolds is None:
        scaffolds = [murcko_scaffold(s, include_chirality=include_chirality) for s in smiles]
    elif len(scaffolds) != len(smiles):
        raise ValueError(f"scaffold_split got {len(smiles)} SMILES but {len(scaffolds)} "
                         "scaffolds.")
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(scaffolds):
        groups.setdefault(key, []).append(i)
    sets = sorted(groups.values(), key=lambda g: (len(g), g[0]), reverse=True)
    n = len(smiles)
    train_cut, valid_cut = fractions[0] * n, (fractions[0] + fractions[1]) * n
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for group in sets:
        if len(train) + len(group) > train_cut:
            if len(train) + len(valid) + len(group) > valid_cut:
                test += group
            else:
                valid += group
        else:
            train += group
    return [torch.tensor(p, dtype=torch.long) for p in (train, valid, test)]


def subset(items: Sequence, index: torch.Tensor | Sequence[int]) -> list:
    """``[items[i] for i in index]`` (a list of ``Data`` indexed by a split tensor)."""
    return [items[int(i)] for i in index]
