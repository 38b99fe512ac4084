"""The ``.npz`` cache of decoded arrays (read without pickle, written atomically)."""

from __future__ import annotations

import numpy as np
import pytest

from graphkd.datasets._cache import cached_arrays, file_sha256


def test_built_once_then_read_and_rebuilt_when_damaged(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "s": np.array(["x", "yz"])}

    path = tmp_path / "c" / "key.npz"
    first = cached_arrays(path, build)
    second = cached_arrays(path, build)
    assert len(calls) == 1 and np.array_equal(second["a"], first["a"])
    assert second["s"].tolist() == ["x", "yz"] and second["a"].dtype == np.int32
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    path.write_bytes(b"PK\x03\x04 damaged")
    assert np.array_equal(cached_arrays(path, build)["a"], first["a"]) and len(calls) == 2
    assert np.array_equal(cached_arrays(path, build)["a"], first["a"]) and len(calls) == 2
    assert cached_arrays(None, build)["a"].shape == (2, 3) and len(calls) == 3


def test_object_arrays_are_never_cached(tmp_path):
    with pytest.raises(TypeError, match="hold Python objects"):
        cached_arrays(tmp_path / "o.npz", lambda: {"o": np.array([{"a": 1}], dtype=object)})
    assert not (tmp_path / "o.npz").exists()


def test_file_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
