"""Input validation and the numerics policy shared by the core and the losses.

Every public entry point checks its tensors here, so that bad input fails with an error that
names the argument, what was expected and what was given, instead of a wrong number later.

Numerics policy (no silent wrong answers):

* **dtype**: float16 / bfloat16 inputs are computed in float32 (:func:`as_compute_dtype`,
  :func:`full_precision`, with autocast off inside) and the result is returned in the caller's
  dtype; float32 and float64 are computed as given (float64 is never downcast).
* **empty batch**: every loss refuses 0 samples with one ``ValueError``
  (:func:`check_nonempty`): ``"<method>: got an empty batch (0 samples); ..."``.
* **non-finite output**: a loss module's result is checked once, at its boundary
  (:func:`checked_call`, :func:`check_loss_output`): ``inf``/``NaN`` from finite inputs raises
  ``FloatingPointError`` naming the method and the inputs' scale (largest ``|x|``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_finite", "check_features", "check_batched", "check_same_rows", "check_index",
    "LOW_PRECISION", "as_compute_dtype", "result_dtype", "full_precision", "check_nonempty",
    "check_loss_output", "checked_call",
]


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


# ------------------------------------------------------------------------------ numerics policy
#: Floating dtypes that the core computes in float32 internally (results are cast back).
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (False for types autocast does not know)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no per-device query
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()
    except RuntimeError:  # e.g. "meta": no autocast there
        return False


def _flat_tensors(values: Iterable[Any]) -> Iterator[Tensor]:
    """The tensors among ``values``, one level into lists/tuples (IRG/MHGD take layer lists)."""
    for v in values:
        if isinstance(v, Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            for u in v:
                if isinstance(u, Tensor):
                    yield u


def _upcast(v: Any, dtype: torch.dtype = torch.float32) -> Any:
    """``v`` with its float16/bfloat16 tensors (also inside a list/tuple) cast to ``dtype``."""
    if isinstance(v, Tensor):
        return v.to(dtype) if v.dtype in LOW_PRECISION else v
    if isinstance(v, (list, tuple)) and any(
            isinstance(u, Tensor) and u.dtype in LOW_PRECISION for u in v):
        out = [_upcast(u, dtype) for u in v]
        return out if isinstance(v, list) else tuple(out)
    return v


def as_compute_dtype(*tensors: Any) -> Any:
    """The dtype policy of the core, for one or several inputs.

    ``float16`` / ``bfloat16`` tensors are upcast to ``float32`` (differentiably: gradients flow
    back in the input's dtype); ``float32`` / ``float64`` tensors, integer tensors, ``None`` and
    non-tensors pass through unchanged (float64 is never downcast). Lists/tuples of tensors
    (layer lists) are upcast element by element.

    Returns:
        the single converted value for one argument, a tuple for several.

    Example:
        >>> as_compute_dtype(torch.ones(2, dtype=torch.float16)).dtype
        torch.float32
    """
    out = tuple(_upcast(t) for t in tensors)
    return out[0] if len(out) == 1 else out


def result_dtype(*values: Any) -> torch.dtype | None:
    """The dtype a loss returns: the promoted dtype of its floating tensor inputs (``None`` if
    there are none). ``float16`` + ``float32`` inputs give ``float32``."""
    return _precision(values)[0]


def _precision(values: Iterable[Any]) -> tuple[torch.dtype | None, bool, str | None]:
    """``(result dtype, any low-precision input, device type)`` of a call's arguments."""
    dtype, low, device = None, False, None
    for t in _flat_tensors(values):
        if t.is_floating_point():
            if dtype is None:
                dtype, device = t.dtype, t.device.type
            elif t.dtype != dtype:
                dtype = torch.promote_types(dtype, t.dtype)
            low = low or t.dtype in LOW_PRECISION
    return dtype, low, device


def _cast_back(out: Any, dtype: torch.dtype) -> Any:
    if isinstance(out, Tensor):
        return out.to(dtype) if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_cast_back(o, dtype) for o in out)
    return out


def full_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run ``fn`` in float32 (or wider) whatever the inputs' precision.

    ``float16`` / ``bfloat16`` tensor arguments are upcast with :func:`as_compute_dtype`,
    autocast is switched off on the inputs' device for the call (so matmuls, distances,
    kernels and softmaxes really run in float32 under ``torch.autocast``), and floating results
    are cast back to the caller's dtype (:func:`result_dtype`). A float16 call therefore equals
    the float32 call on the same (float16-rounded) values up to float16 rounding of the result.
    float32 / float64 calls outside autocast run ``fn`` unchanged (no copy, no cast).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dtype, low, device = _precision((*args, *kwargs.values()))
        autocast = device is not None and _autocast_enabled(device)
        if not (low or autocast):
            return fn(*args, **kwargs)
        if low:
            args = tuple(_upcast(a) for a in args)
            kwargs = {k: _upcast(v) for k, v in kwargs.items()}
        with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
            out = fn(*args, **kwargs)
        return _cast_back(out, dtype) if dtype in LOW_PRECISION else out

    return wrapper


# ------------------------------------------------------------------------------ loss boundaries
def check_nonempty(method: str, *inputs: Any) -> None:
    """Raise ``ValueError`` if a loss is called on an empty batch.

    One behaviour for every loss: a batch of 0 samples (rows of any tensor input, or of any
    tensor in a layer list) is refused with an error naming the method, instead of a ``NaN``
    mean, a silent ``0`` sum or a reshape error deep inside. Shape-only: no host sync.
    """
    for x in _flat_tensors(inputs):
        if x.dim() >= 1 and x.shape[0] == 0:
            raise ValueError(
                f"{method}: got an empty batch (0 samples); a distillation loss over no samples "
                "is undefined (a mean would be NaN). Skip the loss for empty batches, e.g. "
                "`if f_s.shape[0] > 0: ...`."
            )


def _named_tensors(inputs: Mapping[str, Any] | Iterable[Any]) -> Iterator[tuple[str, Tensor]]:
    """``(label, tensor)`` of a call's inputs: ``name``, or ``name[j]`` inside a layer list."""
    items = inputs.items() if isinstance(inputs, Mapping) else (
        (f"input {i}", v) for i, v in enumerate(inputs))
    for name, v in items:
        if isinstance(v, Tensor):
            yield name, v
        elif isinstance(v, (list, tuple)):
            yield from ((f"{name}[{j}]", u) for j, u in enumerate(v) if isinstance(u, Tensor))


def _scale(tensors: list[Tensor]) -> float:
    """``max |x|`` over the floating inputs (error path only)."""
    vals = [float(t.detach().abs().max()) for t in tensors if t.is_floating_point() and t.numel()]
    return max(vals, default=0.0)


def check_loss_output(out: Any, method: str, inputs: Mapping[str, Any] | Iterable[Any] = (), *,
                      dtype: torch.dtype | None = None) -> Any:
    """Check (and cast) a loss's output: never return a silent ``inf`` / ``NaN``.

    Args:
        out: the loss (any shape; non-tensors pass through).
        method: the method's name, for the message.
        inputs: the call's inputs (tensors or layer lists), by name (a mapping) or position;
            scanned on the error path only.
        dtype: cast ``out`` to this dtype first (the caller's dtype of a low-precision call).

    Returns:
        ``out`` (cast to ``dtype`` if given).

    Raises:
        ValueError: the output is not finite because an input is not (names the input).
        FloatingPointError: the output is not finite although every input is: the inputs'
            scale overflowed the computation, or the result does not fit ``dtype``. The
            message names the method and the inputs' scale (largest ``|x|``).

    Cost: one reduction over the (small) output and one host synchronisation per call.
    """
    if not isinstance(out, Tensor) or not out.is_floating_point():
        return out
    full = out
    if dtype is not None and out.dtype != dtype:
        out = out.to(dtype)
    if bool(torch.isfinite(out).all()):
        return out
    tensors = []
    for label, x in _named_tensors(inputs):
        check_finite(x, f"{method}: {label}")
        tensors.append(x)
    scale = _scale(tensors)
    if bool(torch.isfinite(full).all()):
        value = float(full.detach().abs().max())
        raise FloatingPointError(
            f"{method}: the loss ({value:.4g} in {full.dtype}) does not fit the inputs' dtype "
            f"{out.dtype} (largest |x| of the inputs = {scale:.4g}); pass {full.dtype} inputs, "
            "use a 'mean' reduction or a smaller loss weight."
        )
    n_nan, n_inf = int(torch.isnan(full).sum()), int(torch.isinf(full).sum())
    raise FloatingPointError(
        f"{method}: the loss is not finite ({n_nan} NaN and {n_inf} inf of {full.numel()} "
        f"values) although every input is finite (largest |x| of the inputs = {scale:.4g}, "
        f"dtype {full.dtype}): the inputs' scale overflows the computation. Normalise or "
        "rescale the features (F.normalize, a BatchNorm/LayerNorm, x / x.abs().max()) or "
        "compute in float64."
    )


def _parameter_dtype(module: Any) -> torch.dtype | None:
    """The dtype of ``module``'s first floating parameter (its heads), if any."""
    params = getattr(module, "parameters", None)
    if params is None:
        return None
    return next((p.dtype for p in params() if p.is_floating_point()), None)


def checked_call(method: str, fn: Callable[..., Any], args: tuple, kwargs: dict, *,
                 module: Any = None) -> Any:
    """Run a loss module's forward at the library boundary, with the numerics policy.

    1. :func:`check_nonempty` on the positional inputs (empty batch -> ``ValueError``);
    2. float16 / bfloat16 inputs upcast to float32 (or to the float64 of ``module``'s
       parameters) and autocast off for the call, so trainable heads run in their parameters'
       dtype; a module whose own parameters are low precision gets its inputs as they are
       (its pure functions still compute in float32);
    3. :func:`check_loss_output`: the result cast back to the caller's dtype, and a
       non-finite result refused (``FloatingPointError`` naming ``method``).
    """
    check_nonempty(method, *args)
    dtype, low, device = _precision((*args, *kwargs.values()))
    if low:
        target = _parameter_dtype(module) or torch.float32
        if target not in LOW_PRECISION:
            args = tuple(_upcast(a, target) for a in args)
            kwargs = {k: _upcast(v, target) for k, v in kwargs.items()}
    autocast = device is not None and _autocast_enabled(device)
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        out = fn(*args, **kwargs)
    code = getattr(getattr(module, "forward", None), "__code__", None)
    names = code.co_varnames[1:code.co_argcount] if code is not None else ()
    inputs = {names[i] if i < len(names) else f"input {i}": a for i, a in enumerate(args)}
    return check_loss_output(out, method, {**inputs, **kwargs},
                             dtype=dtype if dtype in LOW_PRECISION else None)
