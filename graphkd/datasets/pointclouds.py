"""Point-cloud datasets as lists of PyG ``Data(pos=[P, D], y=[1])``.

* :func:`load_digits_pointclouds` -- the embedded default: scikit-learn's shipped ``load_digits``
  (1,797 real 8x8 handwritten digits, 10 classes) turned into 2-D point clouds by sampling
  ``num_points`` points from each image's ink density (see :func:`image_to_points`).
* :func:`load_modelnet40` -- ModelNet40 in the standard ``modelnet40_ply_hdf5_2048`` layout
  (``ply_data_{train,test}{i}.h5``, keys ``data`` ``[n, 2048, 3]`` float32, ``label`` ``[n, 1]``):
  9,840 train / 2,468 test shapes, 40 classes.

Convention for the point-cloud models: clouds are batched PyG-style (``Batch.from_data_list``),
so a batch is a flat ``pos`` ``[sum P, D]`` plus a sorted ``batch`` ``[sum P]`` vector.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from graphkd.datasets._paths import dataset_dir, readme_for, require

__all__ = [
    "MODELNET40_DIR",
    "image_to_lit_points",
    "image_to_points",
    "load_digits_pointclouds",
    "load_modelnet40",
    "modelnet40_shape_names",
]

MODELNET40_DIR = "modelnet40_ply_hdf5_2048"
_MODELNET40_CLASSES = 40


def image_to_points(image: Tensor, num_points: int, generator: torch.Generator | None = None,
                    ) -> Tensor:
    """Sample ``num_points`` 2-D points from a grey image read as a density.

    Pixel ``(r, c)`` (row ``r`` from the top) with intensity ``v`` is the square
    ``[c, c + 1] x [r, r + 1]``; a point falls in it with probability ``v / sum(v)`` and is
    uniform inside it. Coordinates are mapped to ``[-1, 1]``: ``x = 2 c' / W - 1`` and
    ``y = 1 - 2 r' / H`` (y points up), where ``(c', r')`` is the sampled position.

    Args:
        image: ``[H, W]`` non-negative intensities with a positive sum, or a stack
            ``[M, H, W]`` of such images (sampled in one call).
        num_points: ``P``.
        generator: optional CPU generator.

    Returns:
        ``[P, 2]`` float32 points (``[M, P, 2]`` for a stack).

    Example:
        >>> image_to_points(torch.eye(8), 16).shape
        torch.Size([16, 2])
    """
    if image.dim() not in (2, 3):
        raise ValueError(f"`image` must be [H, W] or [M, H, W], got shape {tuple(image.shape)}.")
    img = image.detach().to("cpu", torch.float64)
    stack = img if img.dim() == 3 else img.unsqueeze(0)
    if bool((stack < 0).any()) or bool((stack.flatten(1).sum(1) <= 0).any()):
        raise ValueError("`image` needs non-negative intensities with a positive sum.")
    m, h, w = stack.shape
    cell = torch.multinomial(stack.flatten(1), num_points, replacement=True, generator=generator)
    offset = torch.rand(m, num_points, 2, generator=generator, dtype=torch.float64)
    col = (cell % w).double() + offset[..., 0]
    row = (cell // w).double() + offset[..., 1]
    pts = torch.stack([2 * col / w - 1, 1 - 2 * row / h], dim=-1).float()
    return pts if img.dim() == 3 else pts[0]


def image_to_lit_points(images: Tensor, num_points: int, *, threshold: float = 0.0,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The lit pixels of grey images as fixed-size 2-D point clouds with their intensity.

    A pixel ``(r, c)`` (row ``r`` from the top) of an ``H x W`` image is *lit* when its value
    exceeds ``threshold``; it becomes the point at its centre, mapped to ``[-1, 1]``:
    ``x = (2c + 1) / W - 1``, ``y = 1 - (2r + 1) / H`` (y points up), with feature ``v``, its
    value. An image with ``n`` lit pixels gives exactly ``P = num_points`` points: the lit
    pixels in a uniformly random order (``generator``), the first ``P`` of them when ``n >= P``
    (sampling without replacement), else that order repeated cyclically (every lit pixel
    appears ``floor(P / n)`` or ``ceil(P / n)`` times, so the cloud covers the whole digit and
    no pixel is over-weighted by chance). Vectorised over the stack: random keys, unlit pixels
    pushed last, and one ``topk`` per chunk of images; no per-image Python loop.

    Args:
        images: ``[M, H, W]`` (or one ``[H, W]``) finite values; every image needs a lit pixel.
        num_points: ``P >= 1``.
        threshold: pixels with value ``> threshold`` are lit.
        generator: optional CPU generator (the same seed gives the same clouds).

    Returns:
        ``(pos, value)``: ``[M, P, 2]`` float32 coordinates and ``[M, P, 1]`` float32 values
        (``[P, 2]`` / ``[P, 1]`` for one image).

    Raises:
        ValueError: a wrong shape, ``num_points < 1``, a NaN/inf value, or an image without a
            lit pixel (names its index).

    Example:
        >>> img = torch.zeros(28, 28); img[0, 0] = 1.0  # top-left pixel only
        >>> pos, value = image_to_lit_points(img, 2)
        >>> (pos * 28).tolist(), value.view(-1).tolist()
        ([[-27.0, 27.0], [-27.0, 27.0]], [1.0, 1.0])
    """
    if images.dim() not in (2, 3):
        raise ValueError(f"`images` must be [H, W] or [M, H, W], got shape "
                         f"{tuple(images.shape)}.")
    if num_points < 1:
        raise ValueError(f"`num_points` must be >= 1, got {num_points}.")
    img = images.detach().to("cpu", torch.float32)
    stack = img if img.dim() == 3 else img.unsqueeze(0)
    m, h, w = stack.shape
    flat = stack.reshape(m, h * w)
    if not bool(torch.isfinite(flat.sum(dtype=torch.float64))):  # one pass; NaN/inf propagate
        raise ValueError("`images` holds NaN or inf values.")
    lit = flat > threshold
    count = lit.sum(1)
    empty = (count == 0).nonzero().view(-1)
    if empty.numel():
        raise ValueError(f"image {int(empty[0])} has no pixel above threshold={threshold} "
                         f"({empty.numel()} of {m} images are empty); lower the threshold.")
    slots = torch.arange(num_points)
    first = min(num_points, h * w)  # slot j takes order[j % n], and j % n < min(P, n)
    cells = torch.empty(m, num_points, dtype=torch.long)
    for start in range(0, m, 4096):  # bounded memory: 4096 x H*W random keys at a time
        part = slice(start, start + 4096)
        keys = torch.rand(flat[part].shape, generator=generator)
        keys.masked_fill_(~lit[part], 2.0)  # unlit pixels sort after every lit one
        order = keys.topk(first, dim=1, largest=False, sorted=True).indices
        cells[part] = order.gather(1, slots.unsqueeze(0) % count[part].unsqueeze(1))
    row, col = cells // w, cells % w
    pos = torch.stack([(2 * col + 1) / w - 1, 1 - (2 * row + 1) / h], dim=-1).float()
    value = flat.gather(1, cells).unsqueeze(-1)
    return (pos, value) if img.dim() == 3 else (pos[0], value[0])


def load_digits_pointclouds(num_points: int = 64, *, seed: int = 0) -> list:
    """scikit-learn's ``load_digits`` as 2-D point clouds (the offline default).

    Args:
        num_points: points sampled per digit from its ink density (:func:`image_to_points`).
        seed: seed of the sampling (the same seed gives the same clouds).

    Returns:
        1,797 ``Data`` with ``pos`` ``[num_points, 2]`` float32 in ``[-1, 1]^2`` and ``y``
        ``[1]`` int64 (digit 0-9), in sklearn's order. Split with
        :func:`~graphkd.datasets.splits.stratified_split`.

    Example:
        >>> clouds = load_digits_pointclouds(64)
        >>> len(clouds), tuple(clouds[0].pos.shape)
        (1797, (64, 2))
    """
    from sklearn.datasets import load_digits
    from torch_geometric.data import Data

    if num_points < 1:
        raise ValueError(f"`num_points` must be >= 1, got {num_points}.")
    digits = load_digits()
    images = torch.as_tensor(digits.images)
    labels = torch.as_tensor(digits.target).long()
    pos = image_to_points(images, num_points, torch.Generator().manual_seed(seed))
    return [Data(pos=p, y=labels[i:i + 1]) for i, p in enumerate(pos)]


def _h5_files(base: Path, split: str) -> list[Path]:
    def key(p: Path) -> int:
        m = re.search(r"(\d+)\.h5$", p.name)
        return int(m.group(1)) if m else -1

    return sorted(base.glob(f"ply_data_{split}*.h5"), key=key)


def modelnet40_shape_names(root: str | os.PathLike | None = None) -> list[str]:
    """Class names from ``shape_names.txt`` (index = label)."""
    path = require(dataset_dir(MODELNET40_DIR, root) / "shape_names.txt", MODELNET40_DIR,
                   "shape_names.txt (40 class names, one per line)")
    return [s.strip() for s in path.read_text().splitlines() if s.strip()]


def load_modelnet40(
    split: str = "train", *, num_points: int = 1024, root: str | os.PathLike | None = None,
) -> list:
    """Read ModelNet40 from ``<root>/modelnet40_ply_hdf5_2048/ply_data_<split>*.h5``.

    Files are read in the order of their numeric suffix (``..._train0.h5``, ``_train1.h5``, ...);
    each shape keeps its first ``num_points`` points, as the DGCNN and PointNet data loaders do
    (the 2,048 points of each file are already in random order). Carve a validation set from
    the official train split with :func:`~graphkd.datasets.splits.stratified_split`.

    Args:
        split: ``"train"`` or ``"test"`` (the official files).
        num_points: points per shape, at most the files' 2,048.
        root: data root (default: ``datasets/`` or ``$GRAPHKD_DATA``).

    Returns:
        list of ``Data`` with ``pos`` ``[num_points, 3]`` float32 and ``y`` ``[1]`` int64.

    Raises:
        FileNotFoundError: the folder or its ``ply_data_<split>*.h5`` files are missing.
        ValueError: naming the file when it is not a valid (or is a damaged) HDF5 file, lacks
            the ``data``/``label`` datasets or has the wrong shapes, or (naming the file and the
            first offending 0-based sample index in it) holds a label outside ``[0, 40)`` or a
            non-finite (NaN/inf) coordinate.

    Example:
        >>> train = load_modelnet40("train", num_points=1024)  # doctest: +SKIP
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    from torch_geometric.data import Data

    base = require(dataset_dir(MODELNET40_DIR, root), MODELNET40_DIR,
                   f"the folder {MODELNET40_DIR}/ with ply_data_train*.h5 / ply_data_test*.h5")
    files = _h5_files(base, split)
    if not files:
        raise FileNotFoundError(
            f"no ply_data_{split}*.h5 in {base}. Expected the modelnet40_ply_hdf5_2048 files "
            f"(ply_data_{split}0.h5, ...); {readme_for(MODELNET40_DIR)} says where to get them."
        )
    out = []
    for path in files:
        pos, label = _read_h5(path)
        if pos.dim() != 3 or pos.shape[2] != 3 or label.shape[0] != pos.shape[0]:
            raise ValueError(f"{path}: 'data' must be [n, P, 3] and 'label' [n, 1]; got "
                             f"{tuple(pos.shape)} and {tuple(label.shape)}.")
        if num_points > pos.shape[1]:
            raise ValueError(f"num_points={num_points} but {path} holds {pos.shape[1]} points "
                             "per shape.")
        _check_samples(path, pos, label)
        out += [Data(pos=p[:num_points].clone(), y=label[i:i + 1])
                for i, p in enumerate(pos)]
    return out


def _read_h5(path: Path) -> tuple[Tensor, Tensor]:
    """``data`` as float32 ``[n, P, 3]`` and ``label`` as int64 ``[n]`` of one ModelNet40 file.

    h5py's own errors for a file that is not HDF5 (``file signature not found``) or is damaged
    do not always name the file; they are re-raised as ``ValueError`` that does. Errors of the
    operating system (a missing file, no permission) keep their ``OSError`` subclass.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "label" not in f:
                raise ValueError(f"{path} must hold datasets 'data' [n, P, 3] and 'label' "
                                 f"[n, 1]; found keys {sorted(f.keys())}.")
            data, label = f["data"][()], f["label"][()]
    except OSError as err:
        if type(err) is not OSError:        # FileNotFoundError, PermissionError, ...
            raise
        raise ValueError(
            f"{path} is not a valid HDF5 file, or is damaged (h5py: {err}). Re-download the "
            f"ModelNet40 archive ({readme_for(MODELNET40_DIR)} says where) and unzip it again, "
            "or check the path.") from err
    try:
        pos = torch.from_numpy(data.astype("float32"))
        lab = torch.from_numpy(label.astype("int64")).view(-1)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: 'data' must be a float array [n, P, 3] and 'label' an "
                         f"integer array [n, 1] ({err}).") from err
    return pos, lab


def _check_samples(path: Path, pos: Tensor, label: Tensor) -> None:
    """``ValueError`` naming ``path`` and the first sample with a bad label or coordinate."""
    bad = ((label < 0) | (label >= _MODELNET40_CLASSES)).nonzero().view(-1)
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{path}: sample {i} (0-based, in file order) has label {int(label[i])}, outside "
            f"[0, {_MODELNET40_CLASSES}); {bad.numel()} of {label.numel()} labels are out of "
            "range. The file is damaged or is not a ModelNet40 file; re-download it.")
    bad = (~torch.isfinite(pos)).flatten(1).any(1).nonzero().view(-1)
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{path}: sample {i} (0-based, in file order) has a non-finite (NaN or inf) "
            f"coordinate; {bad.numel()} of {pos.shape[0]} samples do. The file is damaged; "
            "re-download it.")
