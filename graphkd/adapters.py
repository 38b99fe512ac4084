r"""Feature adapters: trainable maps between a student's and a teacher's feature widths.

A heterogeneous teacher-student pair (a 300-wide GIN teacher, a 64-wide GCN student) cannot be
compared feature to feature; an adapter maps student features ``[N, d_s]`` into the teacher's
width ``[N, d_t]`` (or both into a shared width). Adapters are ordinary ``nn.Module``\ s owned by
the loss that needs them, hence by the :class:`~graphkd.distill.Distiller`: they train with the
student and are saved in its checkpoint.

=============  ==========================================================
kind           map
=============  ==========================================================
``identity``   :math:`x` (only when ``in_dim == out_dim``)
``linear``     :math:`W x + b`
``mlp``        :math:`W_2\,\mathrm{ReLU}(\mathrm{BN}(W_1 x + b_1)) + b_2`
``auto``       identity when the widths agree, else linear
=============  ==========================================================

Example:
    >>> proj = build_adapter(64, 300, "linear")
    >>> proj(torch.randn(10, 64)).shape
    torch.Size([10, 300])
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ADAPTERS", "build_adapter", "MLPAdapter", "NormalizedProjection"]

ADAPTERS = ("identity", "linear", "mlp", "auto")


class MLPAdapter(nn.Module):
    r"""Two-layer adapter :math:`W_2\,\mathrm{ReLU}(\mathrm{BN}(W_1 x + b_1)) + b_2`.

    Args:
        in_dim: input width ``d_in``.
        out_dim: output width ``d_out``.
        hidden_dim: hidden width (default ``max(in_dim, out_dim)``).

    Shapes: ``[N, d_in] -> [N, d_out]``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or max(in_dim, out_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class NormalizedProjection(nn.Module):
    r"""Linear map followed by L2 row normalisation: :math:`z = (Wx + b) / \|Wx + b\|_2`.

    The embedding head of contrastive distillers (CRD, HKD). Shapes: ``[N, d_in] -> [N, d_out]``.
    """

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=-1, eps=self.eps)


def _check_dim(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int (a feature width), got {value!r}.")
    return value


def build_adapter(
    in_dim: int, out_dim: int, kind: str = "linear", *, hidden_dim: int | None = None
) -> nn.Module:
    """Build an adapter from width ``in_dim`` to ``out_dim``.

    Args:
        in_dim: student (input) feature width.
        out_dim: teacher (output) feature width.
        kind: ``"identity"``, ``"linear"``, ``"mlp"`` or ``"auto"`` (identity when the widths
            agree, else linear).
        hidden_dim: hidden width of the ``"mlp"`` adapter.

    Returns:
        an ``nn.Module`` mapping ``[N, in_dim] -> [N, out_dim]``.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones), non-positive widths,
            or ``"identity"`` between different widths.
    """
    in_dim = _check_dim(in_dim, "in_dim")
    out_dim = _check_dim(out_dim, "out_dim")
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; valid: {ADAPTERS}.")
    if kind == "auto":
        kind = "identity" if in_dim == out_dim else "linear"
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(
                f"an identity adapter needs equal widths, got {in_dim} -> {out_dim}; use "
                "kind='linear' (or 'auto')."
            )
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return MLPAdapter(in_dim, out_dim, hidden_dim)
