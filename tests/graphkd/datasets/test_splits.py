"""Stratified and scaffold splits."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from graphkd.datasets import murcko_scaffold, scaffold_split, stratified_split, subset


def test_stratified_split_keeps_class_proportions_and_covers_all():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    parts = stratified_split(y, (0.6, 0.2, 0.2), seed=1)
    assert sorted(torch.cat(parts).tolist()) == list(range(100))
    for part, frac in zip(parts, (0.6, 0.2, 0.2)):
        counts = Counter(y[part].tolist())
        assert counts == {0: round(50 * frac), 1: round(30 * frac), 2: round(20 * frac)}
        assert part.tolist() == sorted(part.tolist())
    again = stratified_split(y, (0.6, 0.2, 0.2), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    other = stratified_split(y, (0.6, 0.2, 0.2), seed=2)
    assert not torch.equal(parts[0], other[0])
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(y, (0.5, 0.2))


def test_scaffold_split_by_hand():
    smiles = ["c1ccccc1C", "c1ccccc1O", "c1ccccc1N", "C1CC1N", "C1CC1O", "CCO", "C1CCNCC1"]
    # groups: benzene {0,1,2}, cyclopropane {3,4}, acyclic {5}, piperidine {6}
    tr, va, te = scaffold_split(smiles, (0.5, 0.25, 0.25))
    assert tr.tolist() == [0, 1, 2]        # largest set; adding {3,4} would exceed 3.5
    assert va.tolist() == [3, 4]           # 3 + 2 <= 0.75 * 7 = 5.25
    assert te.tolist() == [6, 5]           # ties by size: larger first index first
    assert murcko_scaffold("CCO") == "" and murcko_scaffold("c1ccccc1CCO") == "c1ccccc1"


def test_scaffold_split_keeps_scaffolds_disjoint(chembl):
    smiles = [g.smiles for g in chembl]
    parts = scaffold_split(smiles, (0.8, 0.1, 0.1))
    assert sorted(torch.cat(parts).tolist()) == list(range(len(smiles)))
    scaf = [murcko_scaffold(s) for s in smiles]
    scaffolds = [{scaf[i] for i in p.tolist()} for p in parts]
    assert not (scaffolds[0] & scaffolds[1]) and not (scaffolds[0] & scaffolds[2])
    assert not (scaffolds[1] & scaffolds[2])
    counts = Counter(scaf)
    assert counts.most_common(1)[0][0] in scaffolds[0]
    assert len(parts[0]) <= 0.8 * len(smiles) and len(parts[1]) <= 0.1 * len(smiles) + 1
    assert [int(chembl[i].y) for i in parts[2][:3]] == [int(g.y) for g in subset(chembl,
                                                                               parts[2][:3])]


def test_scaffold_split_rejects_invalid_smiles():
    with pytest.raises(ValueError, match="drop it before splitting"):
        scaffold_split(["CCO", "C1CC("])
