r"""Projection heads and adapters: the one place where the losses build trainable width maps.

A heterogeneous teacher-student pair (a 300-wide GIN teacher, a 64-wide GCN student) cannot be
compared feature to feature; a head maps features ``[N, d_in]`` to ``[N, d_out]`` (the student's
into the teacher's width, or both into a shared width). Heads are ordinary ``nn.Module``\ s owned
by the loss that builds them, hence by the :class:`~graphkd.distill.Distiller`: they train with
the student and are saved in its checkpoint. FitNet's and AB's adapters, VID's regressor,
G-CRD's projection heads, HKD's embedding heads and MHGD's adapters are all built here.

===================  ==========================================================================
kind                 map ``[N, d_in] -> [N, d_out]``
===================  ==========================================================================
``identity``         :math:`x` (only when ``d_in == d_out``)
``linear``           :math:`W x + b`
``auto``             ``identity`` when the widths agree, else ``linear``
``mlp``              :math:`W_2\,\mathrm{ReLU}(\mathrm{BN}(W_1 x + b_1)) + b_2`, hidden width
                     ``hidden_dim`` (default ``d_out``)
``linear_bn_relu``   :math:`\mathrm{ReLU}(\mathrm{BN}(W x + b))` (G-CRD's reference head)
``normalized``       :math:`(W x + b) / \max(\|W x + b\|_2, \epsilon)` (contrastive embeddings)
``regressor``        :math:`W_3\,\mathrm{ReLU}(W_2\,\mathrm{ReLU}(W_1 x + b_1) + b_2) + b_3`,
                     hidden width ``hidden_dim`` (default ``d_out``; VID's regressor)
===================  ==========================================================================

**One** ``"mlp"``. Two definitions existed before this module: G-CRD's head
``Sequential(Linear(d_in, d_out), BatchNorm1d(d_out), ReLU(), Linear(d_out, d_out))`` and the old
``graphkd.adapters.MLPAdapter`` (the same stack with hidden width ``max(d_in, d_out)`` and
submodules ``fc1``/``bn``/``fc2``). ``"mlp"`` is G-CRD's: it is G-CRD's default head, so its
numbers, its parameter initialisation order and its checkpoint keys (``head_s.0.weight``, ...)
stay exactly as they were; ``MLPAdapter`` was used by no loss. ``hidden_dim=max(d_in, d_out)``
gives the old adapter's shape (with ``Sequential`` keys ``0``/``1``/``3``).

New kinds register themselves (:func:`register_head`) and are then accepted by every loss that
takes a head kind (``GCRD(head=...)``).

Example:
    >>> proj = build_head("linear", 64, 300)
    >>> proj(torch.randn(10, 64)).shape
    torch.Size([10, 300])
    >>> build_head("mlp", 64, 128, hidden_dim=256)[0]
    Linear(in_features=64, out_features=256, bias=True)
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from graphkd.registry import Registry

__all__ = ["HEADS", "build_head", "register_head", "head_names", "NormalizedProjection"]

#: kind -> builder ``(in_dim, out_dim, **options) -> nn.Module``; filled by :func:`register_head`.
HEADS: Registry[Callable[..., nn.Module]] = Registry("head")

#: Decorator: ``@register_head("name")`` on a builder ``(in_dim, out_dim, **options) ->
#: nn.Module`` makes ``"name"`` a kind of :func:`build_head` (and of every loss's ``head=``).
register_head = HEADS.register
head_names = HEADS.names


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


@register_head("identity")
def _identity(in_dim: int, out_dim: int) -> nn.Module:
    if in_dim != out_dim:
        raise ValueError(
            f"an identity head needs equal widths, got {in_dim} -> {out_dim}; use "
            "kind='linear' (or 'auto')."
        )
    return nn.Identity()


@register_head("linear")
def _linear(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


@register_head("auto")
def _auto(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)


@register_head("mlp")
def _mlp(in_dim: int, out_dim: int, *, hidden_dim: int | None = None) -> nn.Module:
    hidden = out_dim if hidden_dim is None else _width(hidden_dim, "hidden_dim")
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


@register_head("linear_bn_relu")
def _linear_bn_relu(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())


@register_head("normalized")
def _normalized(in_dim: int, out_dim: int, *, eps: float = 1e-12) -> nn.Module:
    return NormalizedProjection(in_dim, out_dim, eps)


@register_head("regressor")
def _regressor(in_dim: int, out_dim: int, *, hidden_dim: int | None = None) -> nn.Module:
    hidden = out_dim if hidden_dim is None else _width(hidden_dim, "hidden_dim")
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, out_dim))


def _width(value: object, name: str) -> int:
    try:
        width = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        width = 0
    if isinstance(value, bool) or width < 1:
        raise ValueError(f"`{name}` must be a positive int (a feature width), got {value!r}.")
    return width


def build_head(kind: str, in_dim: int, out_dim: int, **options: object) -> nn.Module:
    """Build a projection head / adapter from width ``in_dim`` to ``out_dim``.

    Args:
        kind: a registered kind (see the module table; case-insensitive, ``-``/``_`` ignored).
        in_dim: input (usually the student's) feature width.
        out_dim: output (the teacher's, or a shared projection) width.
        **options: options of the kind: ``hidden_dim`` (``"mlp"``, ``"regressor"``),
            ``eps`` (``"normalized"``).

    Returns:
        an ``nn.Module`` mapping ``[N, in_dim] -> [N, out_dim]``.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones), an option the kind does
            not take, non-positive widths, or ``"identity"`` between different widths.

    Example:
        >>> build_head("auto", 16, 16)
        Identity()
    """
    builder: Callable[..., nn.Module] = HEADS.get(kind)
    in_dim, out_dim = _width(in_dim, "in_dim"), _width(out_dim, "out_dim")
    try:
        inspect.signature(builder).bind(in_dim, out_dim, **options)
    except TypeError as err:
        raise ValueError(f"head {kind!r} does not take the options {sorted(options)} ({err}); "
                         "see the table in graphkd.losses.heads.") from None
    return builder(in_dim, out_dim, **options)
