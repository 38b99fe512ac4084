"""Input validation shared by the core and the losses.

Every public entry point checks its tensors here, so that bad input fails with an error that
names the argument, what was expected and what was given, instead of a wrong number later.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_finite", "check_features", "check_batched", "check_same_rows", "check_index"]


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf.

    Cost: one reduction (``x.sum()`` is finite iff every entry is, barring overflow of the
    sum, in which case the exact ``isfinite`` scan decides) and one host synchronisation. It is
    called on inputs, once per loss call, never inside the segment ops.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return
    with torch.no_grad():
        if bool(torch.isfinite(x.sum())):
            return
        finite = bool(torch.isfinite(x).all())
    if not finite:
        n_nan = int(torch.isnan(x).sum())  # error path only
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"`{name}` contains {n_nan} NaN and {n_inf} inf values; graphkd refuses to "
            "propagate them silently. Check the model's outputs (exploding activations, a "
            "division by zero, log of 0) before the distillation loss."
        )


def check_features(x: Tensor, name: str, ndim: int = 2) -> None:
    """Check that ``x`` is a finite floating tensor with ``ndim`` dimensions."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != ndim:
        raise ValueError(
            f"`{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}."
            + (" Flatten the feature map first, e.g. x.flatten(1)." if ndim == 2 else "")
        )
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor, got dtype {x.dtype}.")
    check_finite(x, name)


def check_batched(x: Tensor, name: str) -> None:
    """Check that ``x`` is a finite floating tensor with a batch axis: ``[N, D]`` features or a
    ``[B, C, *spatial]`` map (any number of trailing dimensions)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < 2:
        raise ValueError(
            f"`{name}` must have a batch dimension and features ([N, D] or [B, C, *spatial]), "
            f"got shape {tuple(x.shape)}; for a single sample use x.unsqueeze(0)."
        )
    check_features(x, name, ndim=x.dim())


def check_same_rows(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Check that two feature tensors describe the same samples (same first dimension)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`{name_a}` has {a.shape[0]} rows but `{name_b}` has {b.shape[0]}; teacher and "
            "student features must describe the same samples/nodes in the same order."
        )


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str, hint: str = "") -> None:
    """Check that two tensors have the same shape (``hint``: how to fix it, appended)."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the "
                         f"same shape{'; ' + hint if hint else '.'}")


def check_index(index: Tensor, size: int, name: str) -> None:
    """Check that an integer index tensor lies in ``[0, size)``."""
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {index.dtype}.")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(
            f"`{name}` has values in [{int(index.min())}, {int(index.max())}] but must lie in "
            f"[0, {size})."
        )
