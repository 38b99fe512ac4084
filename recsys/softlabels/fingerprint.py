"""Cache keys of a top-K extraction: what defines the scores, hashed the same in every process.

:func:`topk_fingerprint` is the SHA-256 key of the soft-label caches (the ``.pt`` file and the
memory-mapped directory): the teacher's weights, the score function's identity
(:func:`score_fn_key`, or the caller's ``score_key``), ``K``, the users, the item count, the
padding item, the exclusion set and the stored score dtype. :func:`hash_tensor` feeds a tensor's
dtype, shape and bytes to a hash (also the ``.pt`` format's content checksum).
"""

from __future__ import annotations

import dis
import functools
import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys.softlabels.history import HistoryLike, as_history
from recsys.softlabels.settings import UNSET, ExtractionSettings, resolve_settings
from recsys.softlabels.topk import as_users

__all__ = ["score_fn_key", "topk_fingerprint", "keyed_users", "hash_tensor"]

_KEY_VERSION = 2  # what the fingerprint covers (2: + score function identity, scores dtype)


def hash_tensor(h: Any, t: Tensor) -> None:
    """Feed ``t``'s dtype, shape and bytes (on CPU, contiguous) to the hash ``h``."""
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    t = t.reshape(-1)
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


_VALUE_TYPES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _tensor_id(t: Tensor) -> tuple[Any, ...]:
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))


def _source_digest(obj: Any) -> str:
    """blake2b of ``inspect.getsource(obj)``, or ``"-"`` where the source is unavailable."""
    try:
        src = inspect.getsource(obj)
    except (OSError, TypeError):
        return "-"
    return hashlib.blake2b(src.encode(), digest_size=16).hexdigest()


def _code_digest(h: Any, code: Any) -> None:
    """The bytecode, names and constants of ``code`` (nested code objects included)."""
    h.update(code.co_code + b"|" + "|".join(code.co_names).encode() + b"|")
    for const in code.co_consts:
        if inspect.iscode(const):
            _code_digest(h, const)
        else:
            h.update(f"{type(const).__name__}:{const!r}|".encode())


def _describe(h: Any, obj: Any, known: Mapping[tuple[Any, ...], str], depth: int = 0) -> None:
    """Feed a deterministic, process-independent description of ``obj`` to ``h``."""
    if depth > 6:
        h.update(b"<deep>|")
        return
    if isinstance(obj, _VALUE_TYPES):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    elif isinstance(obj, Tensor):
        name = known.get(_tensor_id(obj))
        if name is not None:  # a teacher weight: already in the fingerprint
            h.update(f"teacher-tensor:{name}|".encode())
        else:
            h.update(b"tensor|")
            hash_tensor(h, obj)
    elif isinstance(obj, np.ndarray):
        h.update(b"ndarray|")
        hash_tensor(h, torch.from_numpy(np.ascontiguousarray(obj)))
    elif isinstance(obj, tuple):
        h.update(f"tuple{len(obj)}(".encode())
        for item in obj:
            _describe(h, item, known, depth + 1)
        h.update(b")|")
    elif isinstance(obj, functools.partial):
        h.update(b"partial|")
        _describe(h, obj.func, known, depth + 1)
        _describe(h, tuple(obj.args), known, depth + 1)
        _describe(h, tuple(sorted(obj.keywords.items())), known, depth + 1)
    elif inspect.ismethod(obj):
        h.update(b"method|")
        _describe(h, type(obj.__self__), known, depth + 1)
        _describe(h, obj.__func__, known, depth + 1)
    elif inspect.isfunction(obj):
        code = obj.__code__
        h.update(f"function:{obj.__module__}.{obj.__qualname__}|src={_source_digest(obj)}|"
                 .encode())
        _code_digest(h, code)
        _describe(h, obj.__defaults__ or (), known, depth + 1)
        _describe(h, tuple(sorted((obj.__kwdefaults__ or {}).items())), known, depth + 1)
        # closure values, except variables the function rebinds itself (counters: state)
        rebound = {ins.argval for ins in dis.get_instructions(code)
                   if ins.opname == "STORE_DEREF"}
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            h.update(f"free:{name}=".encode())
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                value = None
            if name in rebound:
                h.update(b"<rebound>|")
            else:
                _describe(h, value, known, depth + 1)
    elif isinstance(obj, type):
        mro = ",".join(f"{c.__module__}.{c.__qualname__}" for c in obj.__mro__)
        h.update(f"class:{mro}|src={_source_digest(obj)}|".encode())
    elif inspect.isbuiltin(obj) or inspect.isroutine(obj):
        h.update(f"builtin:{getattr(obj, '__module__', None)}."
                 f"{getattr(obj, '__qualname__', repr(type(obj)))}|".encode())
    else:  # a module, a callable object, a list used as a counter, ...: its class only
        h.update(b"instance-of|")
        _describe(h, type(obj), known, depth + 1)


def score_fn_key(score_fn: Callable[..., Any],
                 teacher: nn.Module | Mapping[str, Tensor] | None = None) -> str:
    """A hex digest identifying what a score function computes, the same in every process.

    It covers, recursively through ``functools.partial`` objects and bound methods:

    - a Python function's module and qualified name, a hash of its source text
      (``inspect.getsource``, when available) and of its bytecode, names and constants (so two
      lambdas on one line differ), its default arguments, and the values it closes over:
      numbers, strings, tuples, tensors and arrays by content (a tensor that *is* one of
      ``teacher``'s weights by its name only: the weights are keyed anyway), functions
      recursively, anything else (a module, a list) by its class;
    - a bound method's class (qualified names of its MRO and the class source) and function;
    - any other callable object (e.g. an ``nn.Module``) by its class.

    Not covered: module-level globals the function reads, attributes of objects it reaches
    through (an ``nn.Module``'s weights: pass it as the teacher), and closure variables the
    function rebinds itself (``nonlocal`` counters). A score function whose output depends on
    such state must be given an explicit ``score_key`` by the caller.
    """
    known: dict[tuple[Any, ...], str] = {}
    if teacher is not None:
        state = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
        known = {_tensor_id(t): name for name, t in state.items() if isinstance(t, Tensor)}
    h = hashlib.sha256()
    _describe(h, score_fn, known)
    return h.hexdigest()


def topk_fingerprint(
    teacher: nn.Module | Mapping[str, Tensor],
    *,
    k: int | None = None,
    num_items: int,
    users: Tensor,
    settings: ExtractionSettings | None = None,
    exclude: HistoryLike | None = UNSET,
    padding_item: int | None = UNSET,
    score_fn: Callable[[Tensor], Tensor] | None = None,
    score_key: str | None = UNSET,
    scores_dtype: torch.dtype | None = UNSET,
) -> str:
    """SHA-256 hex digest identifying a top-K extraction (the soft-label cache key).

    Covers everything that defines the stored top-K:

    - the teacher's weights: every tensor of its ``state_dict`` (names, dtypes, shapes, bytes);
    - the score function: ``score_key`` if given (a string the caller chooses, e.g. a model
      name + version), else :func:`score_fn_key` of ``score_fn`` (its qualified name, source
      and bytecode hash, closure values), else nothing (``"unspecified"``);
    - ``k``, ``num_items``, the user ids, the padding item, the exclusion CSR (``ptr`` and
      ``col``), and the stored score dtype (``scores_dtype``; ``None``: the score function's).

    ``k``, ``exclude``, ``padding_item``, ``score_key`` and ``scores_dtype`` may come from
    ``settings`` (an :class:`~recsys.softlabels.ExtractionSettings`; keywords override it).
    Chunk size, device and progress do not change the result and are not covered.
    """
    s = resolve_settings(settings, k=k, exclude=exclude, padding_item=padding_item,
                         score_key=score_key, scores_dtype=scores_dtype)
    state = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
    h = hashlib.sha256()
    h.update(f"graphkd-topk-key-v{_KEY_VERSION}|k={s.k}|items={num_items}|"
             f"pad={s.padding_item}|dtype={s.scores_dtype}|".encode())
    if s.score_key is not None:
        h.update(f"score_key={s.score_key}|".encode())
    elif score_fn is not None:
        h.update(f"score_fn={score_fn_key(score_fn, state)}|".encode())
    else:
        h.update(b"score=unspecified|")
    for name in sorted(state):
        h.update(name.encode() + b"|")
        hash_tensor(h, state[name])
    h.update(b"users|")
    hash_tensor(h, users.long())
    if s.exclude is None:
        h.update(b"exclude=None")
    else:
        hist = as_history(s.exclude, num_items)
        h.update(b"exclude|")
        hash_tensor(h, hist.ptr)
        hash_tensor(h, hist.col)
    return h.hexdigest()


def keyed_users(teacher: nn.Module | Mapping[str, Tensor], users: Tensor | int, num_items: int,
                settings: ExtractionSettings, *,
                score_fn: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, str]:
    """``(user ids on settings.device, topk_fingerprint)`` of an extraction (the cache key)."""
    users_t = as_users(users, settings.device)
    return users_t, topk_fingerprint(teacher, num_items=num_items, users=users_t,
                                     settings=settings, score_fn=score_fn)
