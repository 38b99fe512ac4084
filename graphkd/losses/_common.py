"""Input checks shared by the loss families (relation, RKD, LSP, graph).

Private helpers so that a family split over several modules (``relation`` + ``rkd``, ``graph``
+ ``lsp``) checks its inputs the same way without one module importing the other's internals.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from graphkd._checks import check_batched, check_features, check_nonempty, check_same_rows
from graphkd.kernels import KERNELS

__all__ = ["flat", "flat_pair", "positive", "check_pair", "check_kernel", "check_kernel_params"]


# ----------------------------------------------------------------------- relation families
def flat(x: Tensor, name: str) -> Tensor:
    """``[B, *] -> [B, prod(*)]``, checked (floating, finite)."""
    check_batched(x, name)
    return x.flatten(1)


def flat_pair(f_s: Tensor, f_t: Tensor, method: str,
              min_rows: int = 1) -> tuple[Tensor, Tensor]:
    """Checked, flattened ``(student, detached teacher)`` features of ``method``."""
    check_nonempty(method, f_s, f_t)
    s, t = flat(f_s, "f_s"), flat(f_t, "f_t").detach()
    check_same_rows(s, t, "f_s", "f_t")
    if s.shape[0] < min_rows:
        raise ValueError(
            f"this loss compares relations between samples and needs a batch of at least "
            f"{min_rows} samples, got {s.shape[0]}."
        )
    return s, t


def positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value}.")


# ----------------------------------------------------------------------- graph families
def check_pair(f_s: Tensor, f_t: Tensor, method: str) -> None:
    """Non-empty, finite ``[N, D]`` floating features with the same ``N``."""
    check_nonempty(method, f_s, f_t)
    check_features(f_s, "f_s")
    check_features(f_t, "f_t")
    check_same_rows(f_s, f_t, "f_s", "f_t")


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; valid kernels: {sorted(KERNELS)}.")


def check_kernel_params(kernel: str, params: dict, evaluate: Callable[[], object]) -> None:
    """Fail at construction (not at the first batch) on a misspelt kernel parameter."""
    try:
        evaluate()
    except TypeError as err:
        raise ValueError(
            f"invalid parameters {sorted(params)} for kernel {kernel!r} ({err}); see the table "
            "in graphkd.kernels for each kernel's parameters."
        ) from None
