"""CSV, OGB raw-folder and ChEMBL loaders on files in the real formats, written here."""

from __future__ import annotations

import csv
import gzip
import logging
import math
from pathlib import Path

import pytest
import torch

from graphkd.datasets import (
    load_chembl_series,
    load_molecule_csv,
    load_ogb_split,
    load_ogbg,
    read_ogb_raw,
    smiles_to_data,
)

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "[NH4+]", "C1CC1C#N"]


def _write_gz(path: Path, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _write_ogb_folder(base: Path, smiles: list[str], labels: list[list]) -> None:
    """The ogbg-mol* layout: bonds stored once (add_inverse_edge=True), ids local per graph."""
    graphs = [smiles_to_data(s) for s in smiles]
    edges, efeat, nfeat = [], [], []
    for g in graphs:
        edges += g.edge_index[:, 0::2].T.tolist()          # one row per bond: i, j
        efeat += g.edge_attr[0::2].tolist()
        nfeat += g.x.tolist()
    raw = base / "raw"
    _write_gz(raw / "edge.csv.gz", edges)
    _write_gz(raw / "edge-feat.csv.gz", efeat)
    _write_gz(raw / "node-feat.csv.gz", nfeat)
    _write_gz(raw / "num-node-list.csv.gz", [[g.num_nodes] for g in graphs])
    _write_gz(raw / "num-edge-list.csv.gz", [[g.edge_index.shape[1] // 2] for g in graphs])
    _write_gz(raw / "graph-label.csv.gz", labels)
    _write_gz(base / "mapping" / "mol.csv.gz",
              [["HIV_active", "smiles", "mol_id"]]
              + [[lab[0], s, f"id{i}"] for i, (s, lab) in enumerate(zip(smiles, labels))])
    for part, idx in (("train", [0, 1, 2]), ("valid", [3]), ("test", [4])):
        _write_gz(base / "split" / "scaffold" / f"{part}.csv.gz", [[i] for i in idx])


def test_ogb_raw_folder_round_trip(tmp_path):
    labels = [[0], [1], [0], [1], [0]]
    _write_ogb_folder(tmp_path / "ogbg_molhiv", SMILES, labels)
    graphs = load_ogbg("ogbg-molhiv", root=tmp_path)
    assert len(graphs) == len(SMILES)
    for g, s, lab in zip(graphs, SMILES, labels):
        ref = smiles_to_data(s)
        assert torch.equal(g.x, ref.x)
        assert torch.equal(g.edge_index, ref.edge_index)      # same interleaved order
        assert torch.equal(g.edge_attr, ref.edge_attr)
        assert g.num_nodes == ref.num_nodes and g.smiles == s
        assert g.y.tolist() == [lab] and g.y.dtype == torch.long
    split = load_ogb_split("ogbg-molhiv", root=tmp_path)
    assert {k: v.tolist() for k, v in split.items()} == {
        "train": [0, 1, 2], "valid": [3], "test": [4]}


def test_ogb_multitask_labels_with_missing_values(tmp_path):
    _write_ogb_folder(tmp_path / "ogbg_moltox21", SMILES[:2], [[1, ""], ["nan", 0]])
    graphs = read_ogb_raw(tmp_path / "ogbg_moltox21" / "raw")
    y = torch.cat([g.y for g in graphs])
    assert y.dtype == torch.float32 and y[0, 0] == 1 and y[1, 1] == 0
    assert math.isnan(y[0, 1]) and math.isnan(y[1, 0])


def test_ogb_mapping_only_is_featurized(tmp_path):
    base = tmp_path / "ogbg_molhiv"
    _write_ogb_folder(base, SMILES, [[0], [1], [1], [0], [1]])
    for f in (base / "raw").iterdir():
        f.unlink()
    (base / "raw").rmdir()
    graphs = load_ogbg("ogbg-molhiv", root=tmp_path)
    assert [g.smiles for g in graphs] == SMILES
    assert [int(g.y) for g in graphs] == [0, 1, 1, 0, 1]
    assert torch.equal(graphs[2].x, smiles_to_data(SMILES[2]).x)


def test_ogb_inconsistent_or_missing_files(tmp_path):
    base = tmp_path / "ogbg_molhiv"
    _write_ogb_folder(base, SMILES, [[0]] * 5)
    _write_gz(base / "raw" / "num-edge-list.csv.gz", [[1]] * 5)
    with pytest.raises(ValueError, match="num-edge-list sums to 5"):
        read_ogb_raw(base / "raw")
    with pytest.raises(FileNotFoundError, match=r"datasets/ogbg_molhiv/README.md"):
        load_ogbg("ogbg-molbace", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="split/scaffold/train.csv.gz"):
        load_ogb_split("ogbg-molbace", root=tmp_path)


def test_csv_loader_skips_and_counts_invalid_smiles(tmp_path, caplog):
    path = tmp_path / "tox.csv"
    path.write_text("mol_id,SMILES,NR-AR,SR-MMP\n"
                    "a,CCO,1,0\n"
                    "b,not_a_smiles,0,1\n"
                    "c,c1ccccc1,,1\n"
                    "d,C1CC(,1,1\n")
    with caplog.at_level(logging.WARNING, logger="graphkd.datasets.molecules"):
        graphs = load_molecule_csv(path, smiles_column="smiles")
    assert "skipped 2 of 4" in caplog.text and "not_a_smiles" in caplog.text
    assert [g.smiles for g in graphs] == ["CCO", "c1ccccc1"]
    assert graphs[0].y.tolist() == [[1.0, 0.0]]
    assert math.isnan(graphs[1].y[0, 0]) and graphs[1].y[0, 1] == 1
    assert torch.equal(graphs[1].x, smiles_to_data("c1ccccc1").x)
    only = load_molecule_csv(path, smiles_column="SMILES", label_columns=["SR-MMP"])
    assert [g.y.tolist() for g in only] == [[[0.0]], [[1.0]]]


def test_csv_loader_gzip_and_errors(tmp_path):
    path = tmp_path / "bbbp.csv.gz"
    _write_gz(path, [["name", "p_np", "smiles"], ["x", "1", "CCN"], ["y", "0", "CCCl"]])
    graphs = load_molecule_csv(path)
    assert [g.y.tolist() for g in graphs] == [[[1.0]], [[0.0]]]
    with pytest.raises(ValueError, match="smiles_column"):
        load_molecule_csv(path, smiles_column="mol")
    with pytest.raises(ValueError, match=r"no label column\(s\) \['p'\]"):
        load_molecule_csv(path, label_columns=["p"])
    with pytest.raises(FileNotFoundError, match="datasets/moleculenet/README.md"):
        load_molecule_csv(tmp_path / "missing.csv")


def test_chembl_series_embedded_default(chembl):
    import rdkit

    act = Path(rdkit.__file__).parent / "Contrib/FreeWilson/data/CHEMBL2321810_act.csv"
    with open(act) as fh:
        rows = list(csv.DictReader(fh))
    graphs = chembl
    assert len(graphs) == 1017
    assert sum(int(g.y) for g in graphs) == sum(float(r["Act"]) >= 7.0 for r in rows) == 353
    first = graphs[0]
    assert first.chembl_id == "1520012" and first.pic50 == pytest.approx(5.48)
    assert first.y.tolist() == [0] and first.y.dtype == torch.long
    assert torch.equal(first.x, smiles_to_data(first.smiles).x)


def test_chembl_series_from_root_as_regression(tmp_path):
    import rdkit

    src = Path(rdkit.__file__).parent / "Contrib/FreeWilson/data"
    dst = tmp_path / "chembl2321810"
    dst.mkdir()
    smi = (src / "CHEMBL2321810.smi").read_text().splitlines()[:4]
    (dst / "CHEMBL2321810.smi").write_text("\n".join(smi) + "\n")
    (dst / "CHEMBL2321810_act.csv").write_text(
        "Name,Act\n" + "".join(f"{line.split()[1]},{6.5 + i}\n" for i, line in enumerate(smi)))
    reg = load_chembl_series(threshold=None, root=tmp_path)
    assert [g.y.shape for g in reg] == [(1, 1)] * 4
    assert [float(g.y) for g in reg] == [6.5, 7.5, 8.5, 9.5]
    assert [int(g.y) for g in load_chembl_series(8.0, root=tmp_path)] == [0, 0, 1, 1]
    (dst / "CHEMBL2321810_act.csv").unlink()
    with pytest.raises(FileNotFoundError, match="CHEMBL2321810_act.csv"):
        load_chembl_series(root=tmp_path)


def test_csv_default_labels_skip_id_columns(tmp_path):
    path = tmp_path / "BBBP.csv"
    path.write_text("num,name,p_np,smiles\n1,a,1,CCO\n2,b,0,CCN\n")
    assert [g.y.tolist() for g in load_molecule_csv(path)] == [[[1.0]], [[0.0]]]
