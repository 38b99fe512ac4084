"""Bad data files raise errors that name the file (and the row) and say what to do.

Issue 11, part 7a. Each case was tried on the loaders before this change; the old outcome is in
the test's docstring (a raw h5py/codec error without the file name, an ``IndexError``, or a
silently wrong or empty result).
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from graphkd.datasets import load_chembl_series, load_modelnet40, load_molecule_csv, load_ogbg

BINARY = bytes(range(256)) * 8          # not UTF-8 (0x80 is not a valid start byte)


def _names(path: Path) -> str:
    return re.escape(str(path))


# --------------------------------------------------------------------------- ModelNet40 HDF5

def _modelnet(tmp_path: Path) -> Path:
    base = tmp_path / "modelnet40_ply_hdf5_2048"
    base.mkdir()
    return base


def _write_h5(path: Path, data: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label.reshape(-1, 1))


def _valid_h5_bytes(tmp_path: Path) -> bytes:
    p = tmp_path / "valid.h5"
    _write_h5(p, np.zeros((20, 32, 3), np.float32), np.zeros(20, np.uint8))
    return p.read_bytes()


@pytest.mark.parametrize("damage", ["not_hdf5", "truncated"])
def test_modelnet40_corrupt_hdf5_names_the_file(tmp_path, damage):
    """Old: ``OSError: Unable to synchronously open file (file signature not found)`` (or
    ``truncated file: eof = ...``), without the file's name."""
    base = _modelnet(tmp_path)
    good = _valid_h5_bytes(tmp_path)
    path = base / "ply_data_train0.h5"
    path.write_bytes(b"<html>404 Not Found</html>\n" * 20 if damage == "not_hdf5"
                     else good[: len(good) // 2])
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_modelnet40("train", num_points=8, root=tmp_path)
    msg = str(info.value)
    assert "not a valid HDF5 file" in msg and "Re-download" in msg and "check the path" in msg
    assert "modelnet40_ply_hdf5_2048/README.md" in msg


@pytest.mark.parametrize("label", [40, 255, -1])
def test_modelnet40_label_out_of_range_names_file_and_sample(tmp_path, label):
    """Old: accepted; the shape got ``y = 40`` (or -1), which fails later inside the loss."""
    base = _modelnet(tmp_path)
    _write_h5(base / "ply_data_train0.h5", np.zeros((2, 8, 3), np.float32),
              np.array([0, 1], np.int16))
    path = base / "ply_data_train1.h5"
    _write_h5(path, np.zeros((4, 8, 3), np.float32), np.array([3, 5, label, label], np.int16))
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_modelnet40("train", num_points=8, root=tmp_path)
    msg = str(info.value)
    assert "sample 2" in msg and f"label {label}" in msg and "[0, 40)" in msg
    assert "2 of 4 labels" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_modelnet40_non_finite_points_name_file_and_sample(tmp_path, bad):
    """Old: accepted; NaN coordinates reached the model and turned the loss into NaN."""
    base = _modelnet(tmp_path)
    data = np.zeros((5, 8, 3), np.float32)
    data[3, 7, 1] = bad            # beyond num_points=4 too: the file itself is damaged
    path = base / "ply_data_test0.h5"
    _write_h5(path, data, np.arange(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_modelnet40("test", num_points=4, root=tmp_path)
    assert "sample 3" in str(info.value) and "NaN or inf" in str(info.value)


def test_modelnet40_os_errors_keep_their_type(tmp_path):
    """A folder named like a data file is an OS error, not 'invalid HDF5': it stays one."""
    base = _modelnet(tmp_path)
    (base / "ply_data_train0.h5").mkdir()
    with pytest.raises(IsADirectoryError):
        load_modelnet40("train", root=tmp_path)


# --------------------------------------------------------------------------- molecule CSVs

@pytest.mark.parametrize("name, expect", [
    ("data.csv", "is not a UTF-8 text file: byte 0x80 on line 2"),   # 0x0a precedes 0x80
    ("gzipped_binary.csv.gz", "is not a UTF-8 text file: byte 0x80 on line 2"),
    ("data.csv.gz", "is not a valid gzip file"),
], ids=["binary", "gzipped_binary", "binary_named_gz"])
def test_binary_csv_names_the_file(tmp_path, name, expect):
    """Old: ``UnicodeDecodeError: 'utf-8' codec can't decode byte 0x80 in position 128`` (or
    ``gzip.BadGzipFile: Not a gzipped file``), without the file's name."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(BINARY) if name.startswith("gzipped") else BINARY)
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_molecule_csv(path)
    assert type(info.value) is ValueError       # not the codec's UnicodeDecodeError
    assert expect in str(info.value)


def test_non_utf8_byte_reports_its_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"smiles,p_np\nCCO,1\nCCN,0\n" + "CCC,1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=_names(path) + ".*byte 0xe9 on line 4"):
        load_molecule_csv(path)


def test_utf8_bom_is_accepted(tmp_path):
    """Excel's 'CSV UTF-8' starts with a byte-order mark; the header still reads 'smiles'."""
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffsmiles,p_np\nCCO,1\n".encode())
    assert [g.y.tolist() for g in load_molecule_csv(path)] == [[[1.0]]]


RAGGED = "smiles,p_np,tox\nCCO,1,0\nCCN,1\nCCC,0,1\n"


@pytest.mark.parametrize("label_columns", [None, ["p_np", "tox"]])
def test_ragged_csv_names_file_row_and_counts(tmp_path, label_columns):
    """Old: auto-detected labels silently dropped the 'tox' column (its short row made the
    column look non-numeric); explicit ``label_columns`` raised a bare ``IndexError``."""
    path = tmp_path / "ragged.csv"
    path.write_text(RAGGED)
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_molecule_csv(path, label_columns=label_columns)
    msg = str(info.value)
    assert "line 3" in msg and "expected 3 fields" in msg and "found 2" in msg


def test_ragged_csv_extra_field_and_physical_line_numbers(tmp_path):
    """A row with an extra field; line numbers count blank lines and quoted line breaks."""
    path = tmp_path / "extra.csv"
    path.write_text('smiles,p_np\nCCO,1\n\n"CCN","1\n"\nCCC,0,7\nCCCl,1,2\n')
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_molecule_csv(path)
    msg = str(info.value)
    assert "line 6" in msg and "expected 2 fields" in msg and "found 3" in msg
    assert "1 more rows differ" in msg


def test_header_only_csv_names_the_file(tmp_path):
    """Old: returned ``[]`` silently (an empty training set)."""
    path = tmp_path / "header_only.csv"
    path.write_text("smiles,p_np\n\n")
    with pytest.raises(ValueError, match=_names(path) + ".*no data rows"):
        load_molecule_csv(path)


def test_all_invalid_smiles_names_file_count_and_rows(tmp_path):
    """Old: logged a warning and returned ``[]``."""
    path = tmp_path / "bad_smiles.csv"
    rows = [f"not_smiles_{i},1" for i in range(7)]
    path.write_text("smiles,p_np\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_molecule_csv(path)
    msg = str(info.value)
    assert "none of its 7 SMILES" in msg
    assert "line 2 'not_smiles_0'" in msg and "line 6 'not_smiles_4'" in msg
    assert "not_smiles_5" not in msg and ", ..." in msg      # the first five, then "..."


def test_some_invalid_smiles_are_still_skipped_with_a_warning(tmp_path, caplog):
    """Kept: invalid SMILES among valid ones are skipped and logged (now by file line)."""
    path = tmp_path / "mixed.csv"
    path.write_text("smiles,p_np\nCCO,1\nnot_a_smiles,0\nCCN,0\n")
    with caplog.at_level(logging.WARNING, logger="graphkd.datasets.molecules"):
        graphs = load_molecule_csv(path)
    assert [g.smiles for g in graphs] == ["CCO", "CCN"]
    assert str(path) in caplog.text and "skipped 1 of 3" in caplog.text
    assert "line 3 'not_a_smiles'" in caplog.text


def test_non_numeric_label_names_file_and_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("smiles,p_np\nCCO,1\nCCN,yes\n")
    with pytest.raises(ValueError, match=_names(path) + ", line 3: a label cell"):
        load_molecule_csv(path, label_columns=["p_np"])


# --------------------------------------------------------------------------- OGB and ChEMBL

def _mapping(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "ogbg_molhiv" / "mapping" / "mol.csv.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(content))
    return path


@pytest.mark.parametrize("content, expect", [
    (b"HIV_active,smiles,mol_id\n", "no data rows"),
    (b"HIV_active,smiles,mol_id\n0,xx,a\n1,C1CC(,b\n", "none of its 2 SMILES"),
    (b"HIV_active,smiles,mol_id\n0,CCO,a\n1,CCN\n", "line 3: expected 3 fields"),
    (BINARY, "not a UTF-8 text file"),
], ids=["header_only", "all_invalid_smiles", "ragged", "binary"])
def test_ogb_mapping_errors_name_the_file(tmp_path, content, expect):
    """Old: ``[]`` (header only / all invalid), ``IndexError`` (ragged),
    ``UnicodeDecodeError`` (binary)."""
    path = _mapping(tmp_path, content)
    with pytest.raises(ValueError, match=_names(path) + ".*" + re.escape(expect)):
        load_ogbg("ogbg-molhiv", root=tmp_path)


@pytest.mark.parametrize("act, expect", [
    (BINARY, "not a UTF-8 text file"),
    (b"Name,Act\n1520012\n", "line 2: expected 2 fields"),
], ids=["binary", "ragged"])
def test_chembl_activity_csv_errors_name_the_file(tmp_path, act, expect):
    """Old: ``UnicodeDecodeError`` (binary) and ``IndexError`` (ragged), without the file."""
    base = tmp_path / "chembl2321810"
    base.mkdir()
    (base / "CHEMBL2321810.smi").write_text("CCO 1520012\n")
    path = base / "CHEMBL2321810_act.csv"
    path.write_bytes(act)
    with pytest.raises(ValueError, match=_names(path) + ".*" + re.escape(expect)):
        load_chembl_series(root=tmp_path)
