"""User-supplied losses: plain functions as methods, and the check of a loss's declared context.

``Match(method=fn)`` wraps ``fn(f_s, f_t, **context) -> scalar`` in :class:`FunctionLoss`, whose
``level`` and ``context`` are inferred from the signature (or given). Every loss the Distiller
builds passes :func:`check_context_signature`: a name declared in ``context`` that ``forward``
does not accept is an error; a context keyword ``forward`` takes but does not declare is a hint.

Example:
    >>> import torch
    >>> def cos_gap(f_s, f_t):
    ...     return (1 - torch.cosine_similarity(f_s, f_t, dim=1)).mean()
    >>> loss = FunctionLoss(cos_gap, level=None, context=None)
    >>> (loss.name, loss.level, loss.context)
    ('cos_gap', 'batch', ())
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from graphkd._context import CONTEXT_KEYS, NODE_CONTEXT
from graphkd.losses.base import DistillLoss

__all__ = ["FunctionLoss", "check_context_signature", "parameters_of"]


def parameters_of(fn: Callable) -> dict[str, inspect.Parameter]:
    """The parameters of ``fn``'s signature by name (empty when it has no inspectable one)."""
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


class FunctionLoss(DistillLoss):
    """A plain ``fn(f_s, f_t, **context) -> scalar`` as a method (``Match(method=fn)``)."""

    def __init__(self, fn: Callable, level: str | None, context: Sequence[str] | None) -> None:
        super().__init__()
        self.fn = fn
        params = parameters_of(fn)
        if context is None:  # the context keywords its signature names
            context = tuple(k for k in CONTEXT_KEYS if k in params)
        self.context = tuple(context)
        self.level = level or ("node" if set(self.context) & set(NODE_CONTEXT) else "batch")
        name = getattr(fn, "__name__", type(fn).__name__)
        self.name = "custom" if name == "<lambda>" else name.lower()

    def forward(self, f_s: Any, f_t: Any, **context: Any) -> Tensor:
        return self.fn(f_s, f_t, **context)


def check_context_signature(loss: nn.Module, key: str) -> None:
    """The declared ``context`` must be accepted by ``forward``; undeclared context is a hint."""
    params = parameters_of(loss.forward)
    if not params or isinstance(loss, FunctionLoss):
        return
    cls = type(loss).__name__
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        missing = [k for k in loss.context if k not in params]
        if missing:
            raise ValueError(
                f"match {key!r}: {cls}.context declares {missing} but {cls}.forward does not "
                f"accept {'it' if len(missing) == 1 else 'them'}; add "
                f"{', '.join(f'{k}=None' for k in missing)} to forward's keyword arguments "
                "(or remove the name from context).")
    undeclared = [k for k in CONTEXT_KEYS if k in params and k not in loss.context]
    if undeclared:
        warnings.warn(
            f"match {key!r}: {cls}.forward takes {undeclared} but {cls}.context does not "
            f"declare {'it' if len(undeclared) == 1 else 'them'}, so the Distiller never "
            f"passes {'it' if len(undeclared) == 1 else 'them'}; declare "
            f"context = {tuple(loss.context) + tuple(undeclared)!r} on the class.",
            stacklevel=4)
