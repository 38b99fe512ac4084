"""One data root for graphkd and recsys (issue 11, part 7c): ``GRAPHKD_DATA``, resolved by
``graphkd.datasets.data_root``; ``GRAPHKD_DATA_ROOT`` is a deprecated alias."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from graphkd.datasets import data_root


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("GRAPHKD_DATA", raising=False)
    monkeypatch.delenv("GRAPHKD_DATA_ROOT", raising=False)


@pytest.fixture
def recbole_root(tmp_path):
    pytest.importorskip("recbole")
    from tests.reliability._cli_helpers import write_ml100k_slice

    root = tmp_path / "root"
    write_ml100k_slice(root, "tiny")
    return root


def _recsys_data_path(dataset: str = "tiny", **config) -> Path:
    from recsys.recbole import build_config

    return Path(build_config("BPR", dataset, config_dict={"state": "WARNING", **config})[
        "data_path"])


def test_graphkd_data_is_the_recsys_root(monkeypatch, recbole_root):
    monkeypatch.setenv("GRAPHKD_DATA", str(recbole_root))
    assert data_root() == recbole_root
    assert _recsys_data_path() == recbole_root / "tiny"


def test_default_root_is_the_same_for_both(recbole_root):
    assert _recsys_data_path("tiny") == data_root() / "tiny"
    assert data_root().is_absolute()  # not a cwd-relative "datasets"


def test_old_variable_is_a_deprecated_alias(monkeypatch, recbole_root):
    monkeypatch.setenv("GRAPHKD_DATA_ROOT", str(recbole_root))
    with pytest.warns(DeprecationWarning, match="GRAPHKD_DATA_ROOT is deprecated.*GRAPHKD_DATA"):
        assert data_root() == recbole_root
    with pytest.warns(DeprecationWarning):
        assert _recsys_data_path() == recbole_root / "tiny"


def test_new_variable_wins_over_the_alias(monkeypatch, recbole_root, tmp_path):
    monkeypatch.setenv("GRAPHKD_DATA", str(recbole_root))
    monkeypatch.setenv("GRAPHKD_DATA_ROOT", str(tmp_path / "old"))
    with pytest.warns(DeprecationWarning, match="ignored"):
        assert data_root() == recbole_root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert _recsys_data_path() == recbole_root / "tiny"


def test_explicit_data_path_wins(monkeypatch, recbole_root, tmp_path):
    monkeypatch.setenv("GRAPHKD_DATA", str(tmp_path / "elsewhere"))
    assert _recsys_data_path(data_path=str(recbole_root)) == recbole_root / "tiny"


def test_data_path_in_a_config_file_is_not_overridden(monkeypatch, recbole_root, tmp_path):
    from recsys.recbole import build_config

    monkeypatch.setenv("GRAPHKD_DATA", str(tmp_path / "elsewhere"))
    f = tmp_path / "mine.yaml"
    f.write_text(f"data_path: {recbole_root}\n")
    cfg = build_config("BPR", "tiny", config_file_list=[str(f)],
                       config_dict={"state": "WARNING"})
    assert Path(cfg["data_path"]) == recbole_root / "tiny"


def test_missing_dataset_error_names_the_variable(monkeypatch, tmp_path):
    pytest.importorskip("recbole")
    from recsys.recbole import build_config, prepare_data

    monkeypatch.setenv("GRAPHKD_DATA", str(tmp_path))
    cfg = build_config("BPR", "nothere", config_dict={"state": "WARNING"})
    with pytest.raises(FileNotFoundError, match=r"\$GRAPHKD_DATA\b") as info:
        prepare_data(cfg)
    assert "GRAPHKD_DATA_ROOT" not in str(info.value)


def test_recsys_cli_help_names_the_variable(capsys):
    pytest.importorskip("recbole")
    from recsys.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "$GRAPHKD_DATA" in out and "GRAPHKD_DATA_ROOT" not in out
