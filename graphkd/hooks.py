"""Hooks: features of named submodules (no model rewrite), and the optimizer-order guard.

* :class:`FeatureHooks` records the outputs of modules given by dotted path
  (``model.get_submodule`` names, e.g. ``"convs.1"``); :func:`resolve_module` finds one with an
  error that lists the valid paths.
* A layer may carry a pooling suffix, ``"convs.1:mean_pool"`` (``:sum_pool``, ``:max_pool``):
  its node features are pooled per graph, for models that pool functionally
  (``global_mean_pool``) and so have no pooled module to hook (:func:`split_path`,
  :func:`layer_features`).
* :func:`install_optimizer_guard` catches an optimizer built before a
  :class:`~graphkd.distill.Distiller` created its trainable heads (a global optimizer step
  pre-hook).
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from graphkd.inputs import POOLS, pool

__all__ = ["FeatureHooks", "resolve_module", "split_path", "as_paths", "layer_features",
           "install_optimizer_guard"]

_MAX_LISTED_PATHS = 80


def _first_tensor(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) else output


def resolve_module(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """``model.get_submodule(path)`` with an error that lists the valid paths.

    Raises:
        ValueError: no module at ``path``; the message suggests close names and lists the
            model's module paths.
    """
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(path, names, n=3)
        listed = names[:_MAX_LISTED_PATHS]
        more = f" ... ({len(names) - len(listed)} more)" if len(names) > len(listed) else ""
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"the {role} has no module at path {path!r}.{hint} Valid module paths "
            f"(names from model.named_modules()): {listed}{more}."
        ) from None


def split_path(path: str) -> tuple[str, str | None]:
    """``"convs.1:mean_pool"`` -> ``("convs.1", "mean_pool")``; ``"convs.1"`` -> ``(.., None)``."""
    module, _, how = path.partition(":")
    return module, (how or None)


def as_paths(p: str | Sequence[str], what: str = "path") -> tuple[str, ...]:
    """One path or a tuple of paths as a tuple, with pooling suffixes checked."""
    paths = (p,) if isinstance(p, str) else tuple(p)
    if not paths or not all(isinstance(x, str) for x in paths):
        raise TypeError(f"{what} must be a module path or a tuple of paths, got {p!r}.")
    for x in paths:
        how = split_path(x)[1]
        if how is not None and how not in POOLS:
            raise ValueError(f"{what}: unknown pooling {how!r} in {x!r}; valid: "
                             f"{sorted(POOLS)} (e.g. 'convs.1:mean_pool').")
    return paths


def layer_features(feats: dict[str, Any], path: str, ctx: dict[str, Any], *, level: str,
                   key: str = "", who: str = "model") -> Tensor:
    """The features of ``path`` recorded by :class:`FeatureHooks`, shaped for a method.

    ``path`` with a pooling suffix: node features pooled per graph (``[N, D] -> [B, D]``).
    ``level="batch"``: node features mean-pooled per graph, per-graph features unchanged.
    ``level="node"``: node features as they are (checked to have one row per node).

    Args:
        feats: module path -> recorded output.
        ctx: the batch's graph context (:func:`graphkd.inputs.graph_context`).
        key, who: the match's loss key and the model's name, for error messages.

    Raises:
        ValueError: no tensor recorded, pooling a layer that is not node-level, or a
            node-level method on per-graph features.
    """
    module, how = split_path(path)
    f = feats.get(module)
    if not isinstance(f, Tensor):
        got = "no output (was the module called in this forward?)" if f is None \
            else f"a {type(f).__name__}"
        raise ValueError(f"match {key!r}: the {who} module {module!r} produced {got}; hook a "
                         "module whose "
                         "output (or first output) is a tensor.")
    rows = f.shape[0] if f.dim() else 0
    nodes = ctx.get("num_nodes")
    if how is not None:
        if ctx.get("batch") is None or rows != nodes:
            raise ValueError(f"match {key!r}: the {who} module {module!r} gives {rows} rows, "
                             "not one per node "
                             f"of a graph batch ({nodes or 'no'} nodes), so {path!r} cannot "
                             "pool it per graph; pool a node-level layer of a PyG/DGL batch.")
        return POOLS[how](f, ctx["batch"], ctx["num_graphs"])
    if level == "batch":
        return pool(f, ctx)
    if level == "node" and ctx.get("batch") is not None and rows != nodes:
        raise ValueError(f"match {key!r} is a node-level method but the output of {module!r} "
                         f"({who}) has {rows} rows for {nodes} nodes; hook a node-level layer "
                         "(before pooling), or pool it explicitly (':mean_pool').")
    return f


class FeatureHooks:
    """Forward hooks that record the outputs of named submodules.

    ``features[path]`` holds the output of ``model.get_submodule(path)`` from the latest
    forward pass (the first element when the output is a tuple/list), as the very tensor the
    model computed (same autograd graph). Use as a context manager or call :meth:`close`.

    Example:
        >>> with FeatureHooks(model, ["convs.0"]) as hooks:
        ...     out = model(x, edge_index, batch=batch)
        ...     h0 = hooks.features["convs.0"]       # [N, hidden]
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], role: str = "model") -> None:
        self.features: dict[str, Any] = {}
        self.paths = list(dict.fromkeys(paths))
        modules = [resolve_module(model, p, role) for p in self.paths]
        self._handles = [
            m.register_forward_hook(self._hook(p)) for p, m in zip(self.paths, modules)
        ]

    def _hook(self, path: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.features[path] = _first_tensor(output)

        return hook

    def pop(self) -> dict[str, Any]:
        """Return the recorded features and forget them (no tensor outlives the step)."""
        out, self.features = self.features, {}
        return out

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features = {}

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def install_optimizer_guard(distiller: Any) -> Any:
    """Global optimizer step pre-hook that catches optimizers built before ``setup``.

    ``distiller`` needs ``check_optimizer``, ``student``, ``_setup_params`` and
    ``_checked_optimizers`` (a ``WeakSet``); it is held by a weak reference. Returns the hook
    handle (``.remove()`` it when the distiller closes).
    """
    ref = weakref.ref(distiller)

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        d = ref()
        if d is None or not d.check_optimizer or optimizer in d._checked_optimizers:
            return
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        student = any(id(p) in held for p in d.student.parameters())
        late = [p for p in d._setup_params if p.requires_grad and p.grad is not None]
        if student and late and not any(id(p) in held for p in late):
            raise RuntimeError(
                f"this optimizer holds the student's parameters but none of the {len(late)} "
                "trainable head/adapter parameters the Distiller created at setup (after the "
                "optimizer was built). Call distiller.setup(example_batch) (or pass example= "
                "to Distiller) before creating the optimizer, or add them with "
                "optimizer.add_param_group({'params': distiller.setup_parameters()}). "
                "Set distiller.check_optimizer = False to silence this check."
            )
        d._checked_optimizers.add(optimizer)

    return register_optimizer_step_pre_hook(hook)
