"""Point-cloud transforms on PyG ``Data`` (``data.pos`` ``[P, D]``), as used by DGCNN/PointNet.

Each transform is a callable ``data -> data`` that returns a shallow copy with a new ``pos`` (the
input is never modified), so it can be a PyG ``transform=``. Random transforms take an optional
``torch.Generator`` for reproducibility (CPU generator; ``pos`` may live on any device).

* :class:`NormalizeUnitSphere` -- centre at the centroid, scale so the farthest point has norm 1.
* :class:`RandomScaleShift` -- per-axis scale ``U(2/3, 3/2)`` then shift ``U(-0.2, 0.2)`` (the
  DGCNN ``translate_pointcloud`` augmentation).
* :class:`Jitter` -- add ``clip(N(0, sigma^2), -clip, clip)`` noise per coordinate.
* :class:`ShufflePoints` -- random point order.
* :class:`SamplePoints` -- random subset of ``num_points`` points (without replacement).
* :class:`Compose` -- apply several in order.

Example:
    >>> from torch_geometric.data import Data
    >>> t = Compose([NormalizeUnitSphere(), RandomScaleShift(), Jitter(), ShufflePoints()])
    >>> out = t(Data(pos=torch.randn(64, 3), y=torch.tensor([1])))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Compose",
    "NormalizeUnitSphere",
    "RandomScaleShift",
    "Jitter",
    "ShufflePoints",
    "SamplePoints",
    "normalize_unit_sphere",
]


def _pos(data) -> Tensor:
    pos = getattr(data, "pos", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2 or not pos.is_floating_point():
        got = None if pos is None else (tuple(pos.shape), getattr(pos, "dtype", None))
        raise ValueError(f"point-cloud transforms need data.pos as a float [P, D] tensor, "
                         f"got {got}.")
    return pos


def _with(data, **fields):
    out = data.clone() if hasattr(data, "clone") else data
    for k, v in fields.items():
        setattr(out, k, v)
    return out


def normalize_unit_sphere(pos: Tensor) -> Tensor:
    """``(pos - mean) / max_i ||pos_i - mean||`` (a single point stays at the origin)."""
    centred = pos - pos.mean(0, keepdim=True)
    scale = centred.norm(dim=1).max().clamp_min(torch.finfo(pos.dtype).tiny)
    return centred / scale


class NormalizeUnitSphere:
    """Centre the cloud at its centroid and scale it into the unit ball (max norm 1)."""

    def __call__(self, data):
        return _with(data, pos=normalize_unit_sphere(_pos(data)))

    def __repr__(self) -> str:
        return "NormalizeUnitSphere()"


class _Random:
    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator)


class RandomScaleShift(_Random):
    """``pos * s + t`` with per-axis ``s ~ U(scale)``, ``t ~ U(shift)`` (DGCNN augmentation).

    Args:
        scale: ``(low, high)`` of the per-axis scale, default ``(2/3, 3/2)``.
        shift: ``(low, high)`` of the per-axis shift, default ``(-0.2, 0.2)``.
        generator: optional CPU generator.
    """

    def __init__(self, scale: tuple[float, float] = (2 / 3, 3 / 2),
                 shift: tuple[float, float] = (-0.2, 0.2),
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        for name, (lo, hi) in (("scale", scale), ("shift", shift)):
            if lo > hi:
                raise ValueError(f"`{name}` must be (low, high) with low <= high, got {(lo, hi)}.")
        self.scale, self.shift = scale, shift

    def __call__(self, data):
        pos = _pos(data)
        d = pos.shape[1]
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * self._rand(d)
        t = self.shift[0] + (self.shift[1] - self.shift[0]) * self._rand(d)
        return _with(data, pos=pos * s.to(pos) + t.to(pos))

    def __repr__(self) -> str:
        return f"RandomScaleShift(scale={self.scale}, shift={self.shift})"


class Jitter(_Random):
    """Add Gaussian noise ``clip(sigma * N(0, 1), -clip, clip)`` to every coordinate."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.02,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        if sigma < 0 or clip < 0:
            raise ValueError(f"`sigma` and `clip` must be >= 0, got {sigma}, {clip}.")
        self.sigma, self.clip = sigma, clip

    def __call__(self, data):
        pos = _pos(data)
        noise = (self.sigma * torch.randn(*pos.shape, generator=self.generator))
        return _with(data, pos=pos + noise.clamp(-self.clip, self.clip).to(pos))

    def __repr__(self) -> str:
        return f"Jitter(sigma={self.sigma}, clip={self.clip})"


def _take(data, idx: Tensor, num: int):
    """Index every per-point tensor (first dim ``num``) of ``data`` with ``idx``."""
    fields = {}
    for key in data.keys():
        value = data[key]
        if key != "y" and isinstance(value, Tensor) and value.dim() and value.shape[0] == num:
            fields[key] = value[idx.to(value.device)]
    return _with(data, **fields)


class ShufflePoints(_Random):
    """Permute the points (``pos`` and any other per-point tensor, e.g. ``x``, together)."""

    def __call__(self, data):
        n = _pos(data).shape[0]
        return _take(data, torch.randperm(n, generator=self.generator), n)

    def __repr__(self) -> str:
        return "ShufflePoints()"


class SamplePoints(_Random):
    """Keep a random subset of ``num_points`` points (in random order, without replacement).

    Raises:
        ValueError: when the cloud has fewer than ``num_points`` points.
    """

    def __init__(self, num_points: int, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        if num_points < 1:
            raise ValueError(f"`num_points` must be >= 1, got {num_points}.")
        self.num_points = num_points

    def __call__(self, data):
        n = _pos(data).shape[0]
        if n < self.num_points:
            raise ValueError(f"cannot sample {self.num_points} points from a cloud of {n}; "
                             "lower num_points or load the clouds with more points.")
        idx = torch.randperm(n, generator=self.generator)[: self.num_points]
        return _take(data, idx, n)

    def __repr__(self) -> str:
        return f"SamplePoints({self.num_points})"


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, data):
        for t in self.transforms:
            data = t(data)
        return data

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"
