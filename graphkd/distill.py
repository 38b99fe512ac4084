r"""The Distiller: teacher(s) + student + named distillation losses at chosen layers.

.. code-block:: python

    distiller = Distiller(
        teacher, student,
        matches=[Match(teacher="convs.2", student="convs.1", method="lsp", weight=100.0)],
        logits="kd", logits_weight=0.9,
        task_loss=torch.nn.CrossEntropyLoss(), task_weight=0.1,
        call=pyg_call, teacher_call=pyg_call,
        example=next(iter(train_loader)),       # builds the heads now (see "Setup")
    )
    optimizer = torch.optim.Adam(distiller.parameters(), lr=1e-3)   # student + heads only
    out, losses = distiller(batch)   # {"task": ..., "kd": ..., "lsp[convs.1]": ...}
    sum(losses.values()).backward()

**Objective.** Every entry of the loss dict is already weighted, so the objective is
``sum(losses.values())``::

    L = task_weight * task(z_s, y)
      + sum_k w_k * ( logits_weight * logits_loss(z_s, z_t^k)
                      + sum_{m in matches_k} weight_m * method_m(f_s^m, f_t^{k,m}) )

with ``w_k`` the weight of teacher ``k`` (1 for a single teacher). Names: ``"task"``, the
logits method's name (``"kd"``) and ``"{method}[{student path}]"`` per match (or the match's
``name``); with several teachers each teacher's entries are prefixed with ``"{teacher name}/"``.

**Calling models.** One mechanism for teacher and student alike: a *call*
``call(model, data) -> output``. The default :func:`default_call` runs ``model(data)``, or
``model(data[0])`` for an ``(inputs, target)`` tuple. :func:`pyg_call` runs
``model(data.x, data.edge_index, data.batch)``; a DGL-style model is
``call=lambda m, g: m(g, g.ndata["feat"])`` (its graph context is read by
:func:`dgl_context`). The output's logits are the output itself, or its
first element when it is a tuple/list. The target is read by ``target(data)`` (default
:func:`default_target`: ``data.y``, or ``data[-1]`` for a tuple).

**Features** are captured by forward hooks on dotted module paths (``model.get_submodule``
names, e.g. ``"convs.1"``); no model is rewritten. A hook stores the module's output, or its
first element when the output is a tuple/list. A :class:`Match` with a tuple of paths hands the
method a tuple of tensors (multi-layer methods: IRG, MHGD) and, if the method has trainable
heads, tuples of widths.

**Graph context.** ``context(data)`` (default :func:`graph_context`) reads ``batch``,
``edge_index`` and ``pos`` from a PyG ``Data``/``Batch`` (``batch`` is all zeros for a single
graph). Methods receive exactly the context keywords they declare (``DistillLoss.context``).
By ``level``: ``"node"`` methods get node features as they are (relations within each graph);
``"batch"`` methods compare samples across the batch, so node-level features (as many rows as
nodes) are first **mean-pooled per graph** by ``batch`` (``[N, D] -> [B, D]``) and no node
context is passed; graph-level features (already ``[B, D]``) pass through unchanged.

**Setup.** Methods with trainable heads (``needs_dims``) are built once the feature widths are
known, by a dry run of every model on one batch: pass ``example=`` to the constructor or call
:meth:`Distiller.setup` *before creating the optimizer*. The dry run also validates every
module path (the error lists the valid ones) and runs every method once (a width mismatch
fails there, naming the match). Without it, the first ``forward`` sets up lazily; an optimizer
built earlier does not hold the new heads, and stepping it raises an error that says so.

**Frozen teachers** (``mode="offline"``): ``eval()`` always (also after ``distiller.train()``),
``requires_grad_(False)``, run under ``torch.no_grad()``, held outside the module tree: they
are not in ``parameters()`` (so never in an optimizer built from it) nor in ``state_dict()``,
yet ``distiller.to(device)`` moves them.

**Several teachers**: pass ``teacher=[Teacher(model, matches=[...], weight=0.7), ...]``.

**Mutual learning** (``mode="mutual"``, DML, Zhang et al. 2018): the "teacher" is a trainable
peer (a registered submodule, in ``parameters()`` and ``state_dict()``). The student learns
from the peer (``logits`` loss on detached peer logits, feature matches on detached peer
features) and the peer from the student (``"peer/task"``, ``"peer/" + logits name`` on detached
student logits), so one backward of ``sum(losses.values())`` trains both.

**Two-stage methods** (MHGD) declare ``requires_pretraining = True`` and provide
``pretrain_loss(f_t, **context)``, ``pretrain_parameters()`` and ``finish_pretraining()``;
:meth:`Distiller.pretrain_losses` gives their stage-1 objectives on a batch and
:func:`graphkd.train.pretrain` runs stage 1.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from graphkd.losses.base import LOSSES, DistillLoss, get_loss

__all__ = [
    "Call",
    "Match",
    "Teacher",
    "Distiller",
    "FeatureHooks",
    "default_call",
    "pyg_call",
    "default_target",
    "graph_context",
    "dgl_context",
    "logits_of",
    "prepare_target",
    "mean_pool",
]

#: How to run a model on a batch: ``call(model, data) -> output``.
Call = Callable[[nn.Module, Any], Any]

_MAX_LISTED_PATHS = 80


# --------------------------------------------------------------------------- calls and data
def default_call(model: nn.Module, data: Any) -> Any:
    """``model(data)``, or ``model(data[0])`` when ``data`` is an ``(inputs, target)`` tuple."""
    if isinstance(data, (tuple, list)):
        return model(data[0])
    return model(data)


def pyg_call(model: nn.Module, data: Any) -> Any:
    """``model(data.x, data.edge_index, data.batch)`` for a PyG ``Data``/``Batch``."""
    return model(data.x, data.edge_index, getattr(data, "batch", None))


def default_target(data: Any) -> Tensor:
    """The label of a batch: ``data[-1]`` for a tuple/list, else ``data.y``.

    Raises:
        ValueError: no ``y`` attribute (pass ``target=lambda data: ...``).
    """
    if isinstance(data, (tuple, list)):
        return data[-1]
    y = getattr(data, "y", None)
    if y is None:
        raise ValueError(
            f"cannot find the target of a {type(data).__name__} batch (no `.y`); pass "
            "target=lambda data: <label tensor>."
        )
    return y


def logits_of(output: Any) -> Tensor:
    """The logits in a model output: the output itself, or its first element for a tuple."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model output is a {type(output).__name__}, not a tensor; make `call` return "
            "the logits (e.g. call=lambda m, d: m(d)['logits'])."
        )
    return output


def prepare_target(logits: Tensor, y: Tensor) -> Tensor:
    """Shape a label tensor for the usual losses.

    Integer labels for multi-class logits ``[B, C]`` become ``[B]`` int64 (a PyG ``y`` is often
    ``[B, 1]``); labels with as many entries as the logits (binary/multi-label ``[B, T]``)
    are reshaped to the logits' shape and dtype (for ``BCEWithLogitsLoss``).
    """
    if logits.dim() == 2 and logits.shape[1] > 1 and not y.is_floating_point() \
            and y.numel() == logits.shape[0]:
        return y.reshape(-1).long()
    if y.numel() == logits.numel() and (y.shape != logits.shape or y.dtype != logits.dtype):
        return y.reshape(logits.shape).to(logits.dtype)
    return y


def _is_dgl_graph(data: Any) -> bool:
    return callable(getattr(data, "batch_num_nodes", None)) and callable(
        getattr(data, "edges", None))


def dgl_context(g: Any) -> dict[str, Any]:
    """Graph context of a (batched) DGL graph, with long-stable DGL APIs only.

    ``edge_index = stack(g.edges())`` (``src -> dst``), ``batch`` from ``g.batch_num_nodes()``,
    ``pos = g.ndata["pos"]`` when present; DGL itself is not imported.
    """
    src, dst = g.edges()
    sizes = g.batch_num_nodes().to(src.device)
    num_nodes = g.num_nodes()
    batch = torch.repeat_interleave(torch.arange(sizes.shape[0], device=src.device), sizes,
                                    output_size=num_nodes)
    ctx = {"edge_index": torch.stack([src, dst]).long(), "batch": batch,
           "num_nodes": num_nodes, "num_graphs": int(sizes.shape[0])}
    if "pos" in g.ndata:
        ctx["pos"] = g.ndata["pos"]
    return ctx


def graph_context(data: Any) -> dict[str, Any]:
    """Graph context of a PyG ``Data``/``Batch`` (or a DGL graph): ``batch``, ``edge_index``,
    ``pos``.

    Returns a dict with the keys present (``num_nodes`` and ``num_graphs`` too when there is a
    graph); ``{}`` for tensors and tuples, except a DGL ``(graph, labels)`` pair. A single
    ``Data`` gets ``batch = zeros(num_nodes)``.
    A DGL graph (duck-typed: ``edges`` and ``batch_num_nodes`` methods) goes to
    :func:`dgl_context`.
    """
    if isinstance(data, (tuple, list)) and data and _is_dgl_graph(data[0]):
        return dgl_context(data[0])  # DGL loaders yield (batched_graph, labels)
    if isinstance(data, (Tensor, tuple, list)) or data is None:
        return {}
    if _is_dgl_graph(data):
        return dgl_context(data)
    ctx: dict[str, Any] = {}
    for key in ("edge_index", "pos"):
        value = getattr(data, key, None)
        if isinstance(value, Tensor):
            ctx[key] = value
    batch = getattr(data, "batch", None)
    x = getattr(data, "x", None)
    if not isinstance(batch, Tensor) and not ctx and not isinstance(x, Tensor):
        return {}
    num_nodes = getattr(data, "num_nodes", None)
    if isinstance(batch, Tensor):
        num_graphs = getattr(data, "num_graphs", None)
        if not isinstance(num_graphs, int):
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        num_nodes = batch.numel()
    else:
        if num_nodes is None:
            return ctx
        ref = next(v for v in (x, ctx.get("pos"), ctx.get("edge_index")) if v is not None)
        batch = torch.zeros(num_nodes, dtype=torch.long, device=ref.device)
        num_graphs = 1
    ctx.update(batch=batch, num_nodes=num_nodes, num_graphs=num_graphs)
    return ctx


def mean_pool(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    r"""Mean of the node features of each graph: :math:`g_b = \frac{1}{n_b}\sum_{i: batch_i=b}
    x_i`. ``[N, D] -> [B, D]`` (an empty graph gives zeros)."""
    out = x.new_zeros(num_graphs, *x.shape[1:]).index_add(0, batch, x)
    count = x.new_zeros(num_graphs).index_add(0, batch, x.new_ones(batch.shape[0]))
    return out / count.clamp_min(1).view(-1, *([1] * (x.dim() - 1)))


def _to_device(data: Any, device: torch.device) -> Any:
    if hasattr(data, "to") and not isinstance(data, (tuple, list)):
        return data.to(device)
    if isinstance(data, (tuple, list)):
        return type(data)(_to_device(d, device) for d in data)
    return data


# --------------------------------------------------------------------------- hooks
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


class FeatureHooks:
    """Forward hooks that record the outputs of named submodules.

    ``features[path]`` holds the output of ``model.get_submodule(path)`` from the latest
    forward pass (the first element when the output is a tuple/list), as the very tensor the
    model computed (same autograd graph). Use as a context manager or call :meth:`close`.

    Example:
        >>> with FeatureHooks(model, ["convs.0"]) as hooks:
        ...     out = model(x, edge_index, batch)
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


# --------------------------------------------------------------------------- specs
def _as_paths(p: str | Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(p, str):
        return (p,)
    paths = tuple(p)
    if not paths or not all(isinstance(x, str) for x in paths):
        raise TypeError(f"Match.{name} must be a module path or a tuple of paths, got {p!r}.")
    return paths


@dataclass
class Match:
    """One distillation term: a method comparing a teacher layer with a student layer.

    Attributes:
        teacher: dotted module path in the teacher, or a tuple of paths (multi-layer methods).
        student: the matching student path(s); as many as ``teacher``.
        method: a registered loss name (``"lsp"``, ``"sp"``, ...) or a ``DistillLoss``.
        weight: multiplies the method's value in the loss dict.
        params: hyperparameters for the method's constructor (with a name only).
        name: key in the loss dict (default ``"{method}[{student path(s)}]"``).
    """

    teacher: str | tuple[str, ...]
    student: str | tuple[str, ...]
    method: str | DistillLoss
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        t = _as_paths(self.teacher, "teacher")
        s = _as_paths(self.student, "student")
        if len(t) != len(s):
            raise ValueError(
                f"Match pairs {len(t)} teacher path(s) with {len(s)} student path(s); give "
                "as many of each (one per compared layer)."
            )
        if isinstance(self.method, nn.Module) and self.params:
            raise ValueError("Match.params go to the constructor: pass a method name with them, "
                             "or configure the instance yourself.")

    @property
    def teacher_paths(self) -> tuple[str, ...]:
        return _as_paths(self.teacher, "teacher")

    @property
    def student_paths(self) -> tuple[str, ...]:
        return _as_paths(self.student, "student")

    @property
    def multi_layer(self) -> bool:
        return not isinstance(self.teacher, str)


@dataclass
class Teacher:
    """A teacher with its own matches, weight and call (for several teachers at once).

    Attributes:
        model: the teacher network (frozen in offline mode).
        matches: this teacher's :class:`Match` terms.
        weight: multiplies every term of this teacher (logits and matches).
        call: how to run it (default: the Distiller's ``teacher_call``).
        name: prefix of its loss names (default ``"t0"``, ``"t1"``, ...).
        logits: whether the Distiller's ``logits`` loss applies to this teacher.
    """

    model: nn.Module
    matches: Sequence[Match] = ()
    weight: float = 1.0
    call: Call | None = None
    name: str | None = None
    logits: bool = True


def _loss_class(method: str | DistillLoss) -> type[nn.Module]:
    """The class of a method (raises the registry's error, listing valid names, if unknown)."""
    if isinstance(method, nn.Module):
        return type(method)
    if isinstance(method, str):
        key = method.lower().replace("-", "").replace("_", "")
        for n, cls in LOSSES.items():
            if n.replace("_", "") == key:
                return cls
    get_loss(method)  # raises ValueError / TypeError naming the valid methods
    raise AssertionError("unreachable")  # pragma: no cover


def _method_name(method: str | DistillLoss) -> str:
    if isinstance(method, str):
        return method.lower()
    return getattr(type(method), "name", "") or type(method).__name__.lower()


@dataclass
class _Spec:
    teacher: int
    match: Match
    key: str
    cls: type[nn.Module]


# --------------------------------------------------------------------------- optimizer guard
def _install_guard(distiller: Distiller) -> Any:
    """Global optimizer step pre-hook that catches optimizers built before ``setup``."""
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


# --------------------------------------------------------------------------- Distiller
class Distiller(nn.Module):
    """Teacher(s) + student + distillation losses; ``forward(data) -> (output, losses)``.

    See the module docstring for the objective, calls, hooks, graph context, setup, frozen
    teachers, several teachers and mutual learning.

    Args:
        teacher: a model, or a list of :class:`Teacher` (several teachers).
        student: the model being trained.
        matches: :class:`Match` terms (single teacher only; a :class:`Teacher` holds its own).
        logits: output-level method (``"kd"`` or a ``DistillLoss``) applied to the student's
            and each teacher's logits, or ``None``.
        logits_weight: its weight.
        task_loss: ``task_loss(student_logits, target)`` (e.g. ``nn.CrossEntropyLoss()``), or
            ``None``.
        task_weight: its weight.
        call: how to run the student (default :func:`default_call`).
        teacher_call: how to run the teacher(s) (default: ``call``).
        target: ``target(data) -> labels`` (default :func:`default_target`).
        context: ``context(data) -> dict`` of graph context (default :func:`graph_context`).
        mode: ``"offline"`` (frozen teachers) or ``"mutual"`` (one trainable peer, DML).
        example: a batch for :meth:`setup` at construction (recommended).

    Raises:
        ValueError: unknown method names, inconsistent arguments; at setup, wrong module paths
            (listing the valid ones) and failing methods (naming the match and widths).

    Example:
        >>> d = Distiller(teacher, student, [Match("convs.1", "convs.0", "sp")],
        ...               logits="kd", task_loss=nn.CrossEntropyLoss(), call=pyg_call,
        ...               example=batch)
        >>> out, losses = d(batch)
        >>> sorted(losses)
        ['kd', 'sp[convs.0]', 'task']
    """

    def __init__(
        self,
        teacher: nn.Module | Sequence[Teacher],
        student: nn.Module,
        matches: Sequence[Match] = (),
        *,
        logits: str | DistillLoss | None = None,
        logits_weight: float = 1.0,
        task_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        task_weight: float = 1.0,
        call: Call | None = None,
        teacher_call: Call | None = None,
        target: Callable[[Any], Tensor] = default_target,
        context: Callable[[Any], dict[str, Any]] = graph_context,
        mode: str = "offline",
        example: Any = None,
    ) -> None:
        super().__init__()
        if mode not in ("offline", "mutual"):
            raise ValueError(f"unknown mode {mode!r}; valid: 'offline', 'mutual'.")
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module, got {type(student).__name__}.")
        self.mode = mode
        self.student = student
        self.student_call: Call = call or default_call
        default_tcall = teacher_call or self.student_call
        if isinstance(teacher, nn.Module):
            teachers = [Teacher(teacher, tuple(matches), call=default_tcall, name="t0")]
            single = True
        else:
            teachers = list(teacher)
            if not teachers or not all(isinstance(t, Teacher) for t in teachers):
                raise TypeError("teacher must be an nn.Module or a non-empty list of Teacher.")
            if matches:
                raise ValueError("with several teachers, give each Teacher its own matches= "
                                 "instead of the Distiller's matches=.")
            single = len(teachers) == 1
            teachers = [
                Teacher(t.model, tuple(t.matches), t.weight, t.call or default_tcall,
                        t.name or f"t{i}", t.logits)
                for i, t in enumerate(teachers)
            ]
        if mode == "mutual":
            if len(teachers) != 1:
                raise ValueError("mode='mutual' takes exactly one peer network as `teacher`.")
            if task_loss is None or logits is None:
                raise ValueError("mode='mutual' (DML) needs task_loss= and logits= (e.g. "
                                 "logits='kd'): each network learns from the labels and from "
                                 "the other's predictions.")
            self.peer = teachers[0].model
        else:
            for t in teachers:
                t.model.eval()
                t.model.requires_grad_(False)
        self._teachers = teachers  # a plain list: frozen teachers stay out of the module tree
        self.teacher_weights = [float(t.weight) for t in teachers]
        self.logits_loss = None if logits is None else get_loss(logits)
        if self.logits_loss is not None and getattr(self.logits_loss, "needs_dims", False):
            raise ValueError("the logits method must not need widths; use a Match instead.")
        self.logits_name = None if logits is None else _method_name(logits)
        self.logits_weight = float(logits_weight)
        self.task_loss = task_loss
        self.task_weight = float(task_weight)
        self.target = target
        self.context = context
        self.check_optimizer = True

        self._specs: list[_Spec] = []
        keys: set[str] = set()
        for ti, t in enumerate(teachers):
            for m in t.matches:
                if not isinstance(m, Match):
                    raise TypeError(f"matches must be Match objects, got {type(m).__name__}.")
                cls = _loss_class(m.method)
                key = m.name or f"{_method_name(m.method)}[{','.join(m.student_paths)}]"
                if not single:
                    key = f"{t.name}/{key}"
                if key in keys:
                    raise ValueError(f"two matches are named {key!r}; give one a name= .")
                keys.add(key)
                self._specs.append(_Spec(ti, m, key, cls))
        self.match_losses = nn.ModuleList()
        self._prefix = ["" if single else f"{t.name}/" for t in teachers]
        self._student_hooks: FeatureHooks | None = None
        self._teacher_hooks: list[FeatureHooks] = []
        self._setup_params: list[nn.Parameter] = []
        self._checked_optimizers: weakref.WeakSet = weakref.WeakSet()
        self._guard = None
        self.is_setup = False
        if example is not None:
            self.setup(example)

    # ------------------------------------------------------------------ module plumbing
    @property
    def teachers(self) -> list[nn.Module]:
        """The teacher models (frozen in offline mode; the peer in mutual mode)."""
        return [t.model for t in self._teachers]

    @property
    def frozen(self) -> bool:
        return self.mode == "offline"

    def train(self, mode: bool = True) -> Distiller:
        """Set the student (and adapters, and a mutual peer) to ``mode``; teachers stay eval."""
        super().train(mode)
        if self.frozen:
            for t in self._teachers:
                t.model.eval()
        return self

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        super()._apply(fn, recurse)
        if self.frozen:
            for t in self._teachers:
                t.model._apply(fn)
        return self

    def setup_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters created by :meth:`setup` (heads/adapters of the methods)."""
        return list(self._setup_params)

    def close(self) -> None:
        """Remove all hooks and the optimizer check (``setup`` re-attaches the hooks and keeps
        the heads already built)."""
        for h in [self._student_hooks, *self._teacher_hooks]:
            if h is not None:
                h.close()
        self._student_hooks, self._teacher_hooks = None, []
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        self.is_setup = False

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        guard = self.__dict__.get("_guard")
        if guard is not None:
            guard.remove()

    # ------------------------------------------------------------------ running
    def _run(self, data: Any, *, student: bool = True) -> tuple[Any, dict, list, list]:
        """Run the student and every teacher; return outputs and hooked features."""
        s_out, s_feats = None, {}
        if student:
            s_out = self.student_call(self.student, data)
            s_feats = self._student_hooks.pop() if self._student_hooks is not None else {}
        t_outs, t_feats = [], []
        grad = nullcontext() if not self.frozen else torch.no_grad()
        for i, t in enumerate(self._teachers):
            if self.frozen and t.model.training:
                t.model.eval()
            with grad:
                t_outs.append(t.call(t.model, data))
            t_feats.append(self._teacher_hooks[i].pop() if self._teacher_hooks else {})
        return s_out, s_feats, t_outs, t_feats

    def _inputs(
        self, spec: _Spec, s_feats: dict, t_feats: dict, ctx: dict,
    ) -> tuple[Any, Any, dict]:
        """Features and context keywords of one match, pooled per graph for batch methods."""
        m = spec.match
        f_s = [self._feature(s_feats, p, "student", spec) for p in m.student_paths]
        f_t = [self._feature(t_feats, p, "teacher", spec) for p in m.teacher_paths]
        if not self.frozen:
            f_t = [f.detach() for f in f_t]
        level = getattr(spec.cls, "level", "batch")
        batch = ctx.get("batch")
        kwargs: dict[str, Any] = {}
        if level == "batch":
            if batch is not None:
                n, g = ctx["num_nodes"], ctx["num_graphs"]
                f_s = [mean_pool(f, batch, g) if f.shape[0] == n else f for f in f_s]
                f_t = [mean_pool(f, batch, g) if f.shape[0] == n else f for f in f_t]
        else:
            if level == "node" and batch is not None:
                for f, p in [*zip(f_s, m.student_paths), *zip(f_t, m.teacher_paths)]:
                    if f.shape[0] != ctx["num_nodes"]:
                        raise ValueError(
                            f"match {spec.key!r}: {spec.cls.__name__} is a node-level method "
                            f"but the output of {p!r} has {f.shape[0]} rows for "
                            f"{ctx['num_nodes']} nodes; hook a node-level layer (before "
                            "pooling)."
                        )
            for k in getattr(spec.cls, "context", ()):
                if ctx.get(k) is not None:
                    kwargs[k] = ctx[k]
        if m.multi_layer:
            return tuple(f_s), tuple(f_t), kwargs
        return f_s[0], f_t[0], kwargs

    @staticmethod
    def _feature(feats: dict, path: str, role: str, spec: _Spec) -> Tensor:
        f = feats.get(path)
        if not isinstance(f, Tensor):
            got = "no output (was the module called in this forward?)" if f is None \
                else f"a {type(f).__name__}"
            raise ValueError(
                f"match {spec.key!r}: the {role} module {path!r} produced {got}; hook a module "
                "whose output (or first output) is a tensor."
            )
        return f

    # ------------------------------------------------------------------ setup
    def setup(self, example: Any) -> Distiller:
        """Dry run on ``example``: validate paths, build heads with the widths, check methods.

        Call before creating the optimizer (or pass ``example=`` to the constructor). Runs every
        model once in eval mode under ``torch.no_grad()`` (no BatchNorm statistics change).

        Raises:
            ValueError: a wrong module path (the message lists the valid ones), a method that
                fails on these features (the message names the match and the widths), or
                student and teacher logits of different shapes.
        """
        if self.is_setup:
            return self
        first = next(self.student.parameters(), None)
        device = None if first is None else first.device
        dtype = first.dtype if first is not None and first.is_floating_point() else None
        if device is not None:
            example = _to_device(example, device)
        s_paths = [p for s in self._specs for p in s.match.student_paths]
        self._student_hooks = FeatureHooks(self.student, s_paths, "student")
        self._teacher_hooks = [
            FeatureHooks(t.model, [p for s in self._specs if s.teacher == i
                                   for p in s.match.teacher_paths], f"teacher {t.name!r}")
            for i, t in enumerate(self._teachers)
        ]
        modes = [(m, m.training) for m in [self.student, *self.teachers]]
        try:
            for m, _ in modes:
                m.eval()
            with torch.no_grad():
                s_out, s_feats, t_outs, t_feats = self._run(example)
                ctx = self.context(example)
                self._check_logits(s_out, t_outs)
                if len(self.match_losses) != len(self._specs):  # not built yet
                    built = [self._build(spec, s_feats, t_feats[spec.teacher], ctx, device,
                                         dtype) for spec in self._specs]
                else:  # set up again after close(): keep the trained heads
                    built = []
        except Exception:
            self.close()
            raise
        finally:
            for m, was in modes:
                m.train(was)
            if self.frozen:
                for t in self._teachers:
                    t.model.eval()
        for loss in built:
            self.match_losses.append(loss)
        self._setup_params = [p for p in self.match_losses.parameters() if p.requires_grad]
        if self._setup_params and self._guard is None:
            self._guard = _install_guard(self)
        self.is_setup = True
        return self

    def _check_logits(self, s_out: Any, t_outs: list) -> None:
        if self.logits_loss is None:
            return
        z_s = logits_of(s_out)
        for t, out in zip(self._teachers, t_outs):
            if not t.logits:
                continue
            z_t = logits_of(out)
            if z_s.shape != z_t.shape:
                raise ValueError(
                    f"student logits {tuple(z_s.shape)} and teacher {t.name!r} logits "
                    f"{tuple(z_t.shape)} differ in shape; both must predict the same classes "
                    "(or set Teacher(logits=False) / logits=None)."
                )

    def _build(self, spec: _Spec, s_feats: dict, t_feats: dict, ctx: dict,
               device: torch.device | None, dtype: torch.dtype | None) -> nn.Module:
        m = spec.match
        f_s, f_t, kwargs = self._inputs(spec, s_feats, t_feats, ctx)
        fs = f_s if m.multi_layer else (f_s,)
        ft = f_t if m.multi_layer else (f_t,)
        ds = tuple(f.shape[-1] for f in fs)
        dt = tuple(f.shape[-1] for f in ft)
        widths = f"student width(s) {ds if m.multi_layer else ds[0]}, teacher width(s) " \
            f"{dt if m.multi_layer else dt[0]}"
        if getattr(spec.cls, "needs_dims", False) and not isinstance(m.method, nn.Module):
            dims = (ds, dt) if m.multi_layer else (ds[0], dt[0])
            loss = get_loss(m.method, student_dim=dims[0], teacher_dim=dims[1], **m.params)
        else:
            loss = get_loss(m.method, **m.params)
        if device is not None:
            loss = loss.to(device=device, dtype=dtype)  # heads follow the student
        was = loss.training
        loss.eval()
        try:
            if getattr(loss, "requires_pretraining", False) and not getattr(
                    loss, "pretrained", False):
                loss.pretrain_loss(f_t, **kwargs)
            else:
                loss(f_s, f_t, **kwargs)
        except Exception as e:
            raise ValueError(
                f"match {spec.key!r} (teacher {m.teacher!r} -> student {m.student!r}, "
                f"{widths}) fails on the first batch: {e}"
            ) from e
        finally:
            loss.train(was)
        return loss

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False,
    ):
        """Load student, heads/adapters (and a mutual peer); the Distiller must be set up."""
        if not self.is_setup and any(k.startswith("match_losses.") for k in state_dict):
            raise RuntimeError(
                "this state holds the methods' heads/adapters, which a Distiller builds from "
                "the feature widths at setup: pass example= to Distiller (or call "
                "distiller.setup(example_batch)) before load_state_dict."
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ forward
    def forward(self, data: Any) -> tuple[Any, dict[str, Tensor]]:
        """Run student and teacher(s) on ``data``; return ``(student output, losses)``.

        ``losses`` maps names to weighted scalars; ``sum(losses.values())`` is the objective.
        """
        if not self.is_setup:
            self.setup(data)
        s_out, s_feats, t_outs, t_feats = self._run(data)
        ctx = self.context(data)
        losses: dict[str, Tensor] = {}
        z_s = logits_of(s_out)
        y = None
        if self.task_loss is not None:
            y = self.target(data)
            losses["task"] = self.task_weight * self.task_loss(z_s, prepare_target(z_s, y))
        if self.logits_loss is not None:
            for i, t in enumerate(self._teachers):
                if t.logits:
                    z_t = logits_of(t_outs[i]).detach()
                    losses[self._prefix[i] + self.logits_name] = (
                        self.logits_weight * t.weight * self.logits_loss(z_s, z_t))
        for spec, loss in zip(self._specs, self.match_losses):
            f_s, f_t, kwargs = self._inputs(spec, s_feats, t_feats[spec.teacher], ctx)
            w = spec.match.weight * self._teachers[spec.teacher].weight
            losses[spec.key] = w * loss(f_s, f_t, **kwargs)
        if self.mode == "mutual":
            z_p = logits_of(t_outs[0])
            losses["peer/task"] = self.task_weight * self.task_loss(z_p, prepare_target(z_p, y))
            losses["peer/" + self.logits_name] = (
                self.logits_weight * self.logits_loss(z_p, z_s.detach()))
        return s_out, losses

    @torch.no_grad()
    def predict(self, data: Any) -> Any:
        """The student's output alone (no teacher, no hooks kept), under ``no_grad``."""
        out = self.student_call(self.student, data)
        if self._student_hooks is not None:
            self._student_hooks.pop()
        return out

    # ------------------------------------------------------------------ two-stage methods
    def _pretrainable(self) -> list[tuple[_Spec, nn.Module]]:
        return [(s, m) for s, m in zip(self._specs, self.match_losses)
                if getattr(m, "requires_pretraining", False)]

    def needs_pretraining(self) -> bool:
        """Whether a method still waits for its stage-1 pre-training (e.g. MHGD's heads)."""
        return any(not getattr(m, "pretrained", False) for _, m in self._pretrainable())

    def pretrain_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in stage 1 (of methods not pre-trained yet)."""
        return [p for _, m in self._pretrainable() if not m.pretrained
                for p in m.pretrain_parameters()]

    def pretrain_losses(self, data: Any) -> dict[str, Tensor]:
        """Stage-1 objectives on a batch (teacher forward only): ``{"{key}/pretrain": ...}``."""
        if not self.is_setup:
            self.setup(data)
        _, _, _, t_feats = self._run(data, student=False)
        ctx = self.context(data)
        out = {}
        for spec, loss in self._pretrainable():
            if loss.pretrained:
                continue
            m = spec.match
            ft = [self._feature(t_feats[spec.teacher], p, "teacher", spec)
                  for p in m.teacher_paths]
            level = getattr(spec.cls, "level", "batch")
            kwargs = {}
            if level == "batch" and ctx.get("batch") is not None:
                ft = [mean_pool(f, ctx["batch"], ctx["num_graphs"])
                      if f.shape[0] == ctx["num_nodes"] else f for f in ft]
            else:
                kwargs = {k: ctx[k] for k in getattr(spec.cls, "context", ())
                          if ctx.get(k) is not None}
            f_t = tuple(ft) if m.multi_layer else ft[0]
            out[f"{spec.key}/pretrain"] = loss.pretrain_loss(f_t, **kwargs)
        return out

    def finish_pretraining(self) -> None:
        """End stage 1 of every two-stage method (freezes their stage-1 modules)."""
        for _, m in self._pretrainable():
            m.finish_pretraining()
