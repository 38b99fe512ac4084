"""Shared, expensive-to-build fixtures of the dataset tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def chembl():
    from graphkd.datasets import load_chembl_series

    return load_chembl_series()
