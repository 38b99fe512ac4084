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

import torch

__all__ = ["stratified_split", "scaffold_split", "murcko_scaffold", "subset"]


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


def murcko_scaffold(smiles: str, *, include_chirality: bool = False) -> str:
    """Bemis-Murcko scaffold SMILES of a molecule (RDKit ``MurckoScaffoldSmiles``).

    Acyclic molecules have the empty scaffold ``""``.

    Example:
        >>> murcko_scaffold("c1ccccc1CCO")
        'c1ccccc1'
    """
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit could not parse SMILES {smiles!r}; drop it before splitting.")
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=include_chirality)


def scaffold_split(
    smiles: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> list[torch.Tensor]:
    """Deterministic scaffold split (DeepChem ``ScaffoldSplitter`` / OGB).

    Molecules are grouped by :func:`murcko_scaffold`; groups are sorted by
    ``(size, first index)`` descending; each group goes to train while train stays within
    ``fractions[0] * N``, else to valid while train + valid stays within
    ``(fractions[0] + fractions[1]) * N``, else to test. A scaffold never spans two parts.

    Args:
        smiles: ``N`` SMILES strings (e.g. ``[g.smiles for g in graphs]``).
        fractions: ``(train, valid, test)`` fractions summing to 1.

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
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        groups.setdefault(murcko_scaffold(s), []).append(i)
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
