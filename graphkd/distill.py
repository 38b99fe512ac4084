r"""The Distiller: teacher(s) + student + named distillation losses at chosen layers.

.. code-block:: python

    distiller = Distiller(
        teacher, student,
        matches=[Match(teacher="convs.2", student="convs.1", method="lsp", weight=100.0)],
        logits="kd", logits_weight=0.9, task_loss=torch.nn.CrossEntropyLoss(),
        call=pyg_call, example=next(iter(train_loader)))   # dry run: paths, widths, heads
    optimizer = torch.optim.Adam(distiller.parameters(), lr=1e-3)   # student + heads only
    out, losses = distiller(batch)   # {"task": ..., "kd": ..., "lsp[convs.1]": ...}
    sum(losses.values()).backward()

**Objective.** Every entry of the loss dict is already weighted::

    L = task_weight * task(z_s, y)
      + sum_k w_k * ( logits_weight * logits_loss(z_s, z_t^k)
                      + sum_{m in matches_k} weight_m * method_m(f_s^m, f_t^{k,m}) )

Keys: ``"task"``, the logits method's name, and ``"{method}[{student path(s)}]"`` per match (or
its ``name``); a student path whose node features were pooled per graph shows it:
``"rkd[convs.1:mean_pool]"``. With several teachers each teacher's keys get ``"{name}/"``.

**Layers** are dotted module paths, optionally with a pooling suffix (``"convs.1:mean_pool"``;
:mod:`graphkd.hooks`). ``level="batch"`` methods mean-pool node-level features per graph
automatically; ``"node"`` methods get node features and the context keywords they declare.
**Calls, targets, context**: :mod:`graphkd.inputs` (``call=pyg_call``,
:func:`graphkd.interop.dgl_call`, ``call=lambda m, d: ...``). **Methods**: a registered name, a
:class:`~graphkd.losses.base.DistillLoss`, or a function ``fn(f_s, f_t, **context) -> scalar``.

**Setup** (``example=`` or :meth:`Distiller.setup`, before the optimizer) runs every model once:
it checks calls and paths, builds the heads of ``needs_dims`` methods and runs every method.
**Frozen teachers** (``mode="offline"``) stay in ``eval()``, out of ``parameters()`` and
``state_dict()``; ``mode="mutual"`` (DML) trains a peer. Two-stage methods
(``requires_pretraining``, MHGD) get :meth:`Distiller.pretrain_losses`.

Size: this module is longer than the project's ~450-line guide because it holds one cohesive job,
the Distiller's life cycle (setup dry run, frozen/mutual teachers, per-match feature routing,
pretraining stage); everything separable lives beside it (:mod:`graphkd.hooks`,
:mod:`graphkd.inputs`, :mod:`graphkd.losses.custom`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from graphkd._context import NODE_CONTEXT
from graphkd.graphs import EdgeSet
from graphkd.hooks import (  # noqa: F401  (FeatureHooks, resolve_module: old names)
    FeatureHooks,
    as_paths,
    install_optimizer_guard,
    layer_features,
    resolve_module,
    split_path,
)
from graphkd.inputs import (  # noqa: F401  (old names, re-exported)
    Call,
    call_model,
    default_call,
    default_target,
    dgl_context,
    graph_context,
    logits_of,
    mean_pool,
    prepare_target,
    pyg_call,
    to_device,
)
from graphkd.inputs import to_device as _to_device  # noqa: F401  (old private name)
from graphkd.losses.base import LOSSES, DistillLoss, get_loss
from graphkd.losses.custom import FunctionLoss, check_context_signature

__all__ = ["Match", "Teacher", "Distiller"]



@dataclass
class Match:
    """One distillation term: a method comparing a teacher layer with a student layer.

    Attributes:
        teacher: dotted module path in the teacher (``"convs.2"``, or ``"convs.2:mean_pool"``
            to pool its node features per graph), or a tuple of paths (multi-layer methods).
        student: the matching student path(s); as many as ``teacher``.
        method: a registered loss name (``"lsp"``, ``"sp"``, ...), a ``DistillLoss``, or a
            function ``fn(f_s, f_t, **context) -> scalar``.
        weight: multiplies the method's value in the loss dict.
        params: hyperparameters for the method's constructor (with a name only).
        name: key in the loss dict (default ``"{method}[{student path(s)}]"``).
        level: for a function method: ``"batch"`` (one row per sample; node features are
            pooled) or ``"node"`` (default: ``"node"`` when it takes node context).
        context: for a function method: the context keywords it gets (default: those among
            ``batch``, ``edge_index``, ``pos``, ``num_nodes``, ``num_graphs`` it names).
    """

    teacher: str | tuple[str, ...]
    student: str | tuple[str, ...]
    method: str | DistillLoss | Callable[..., Tensor]
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    level: str | None = None
    context: Sequence[str] | None = None

    def __post_init__(self) -> None:
        t = as_paths(self.teacher, "Match.teacher")
        s = as_paths(self.student, "Match.student")
        if len(t) != len(s):
            raise ValueError(
                f"Match pairs {len(t)} teacher path(s) with {len(s)} student path(s); give "
                "as many of each (one per compared layer)."
            )
        if isinstance(self.method, nn.Module) and self.params:
            raise ValueError("Match.params go to the constructor: pass a method name with them, "
                             "or configure the instance yourself.")
        is_fn = callable(self.method) and not isinstance(self.method, (str, DistillLoss))
        if (self.level is not None or self.context is not None) and not is_fn:
            raise ValueError("Match.level / Match.context describe a function method; a "
                             "DistillLoss declares them as class attributes.")
        if self.level not in (None, "batch", "node", "logits"):
            raise ValueError(f"Match.level must be 'batch', 'node' or 'logits', got "
                             f"{self.level!r}.")
        if is_fn and self.params:
            raise ValueError("Match.params go to a named method's constructor; bind a "
                             "function's parameters yourself (functools.partial).")

    @property
    def teacher_paths(self) -> tuple[str, ...]:
        return as_paths(self.teacher, "Match.teacher")

    @property
    def student_paths(self) -> tuple[str, ...]:
        return as_paths(self.student, "Match.student")

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
        name: prefix of its loss keys and its name in messages (default: ``"t0"``, ``"t1"``,
            ... as key prefixes, ``teacher[0]``, ... in messages).
        logits: whether the Distiller's ``logits`` loss applies to this teacher.
    """

    model: nn.Module
    matches: Sequence[Match] = ()
    weight: float = 1.0
    call: Call | None = None
    name: str | None = None
    logits: bool = True


def _input_graph(cache: dict[tuple, EdgeSet], kwargs: dict[str, Any], f_t: Any) -> EdgeSet:
    """The EdgeSet of the batch's ``edge_index`` over the match's nodes, built on first use
    and shared by every match on the same graph (the same tensors and node count)."""
    n = (f_t[0] if isinstance(f_t, (tuple, list)) else f_t).shape[0]
    edge_index, batch = kwargs["edge_index"], kwargs.get("batch")
    key = (id(edge_index), id(batch), n)
    if key not in cache:
        cache[key] = EdgeSet.from_edge_index(edge_index, n, batch=batch)
    return cache[key]


def _method_name(method: Any) -> str:
    if isinstance(method, str):
        return method.lower()
    return getattr(method, "name", "") or type(method).__name__.lower()


@dataclass
class _Spec:
    """A match as the Distiller drives it: the method's facts, read as plain attributes."""

    teacher: int
    match: Match
    key: str
    method: str | DistillLoss       # a registered name or an instance (functions wrapped)
    level: str
    context: tuple[str, ...]
    needs_dims: bool
    s_pools: tuple[str | None, ...]
    t_pools: tuple[str | None, ...]


def _spec(ti: int, m: Match) -> _Spec:
    method: Any = m.method
    if isinstance(method, type) and issubclass(method, DistillLoss):
        if method.name not in LOSSES or LOSSES[method.name] is not method:
            raise TypeError(f"Match.method got the class {method.__name__}; pass an instance "
                            f"({method.__name__}(...)) or register it and pass its name.")
        method = method.name
    if callable(method) and not isinstance(method, DistillLoss):
        method = FunctionLoss(method, m.level, m.context)
    elif not isinstance(method, (str, DistillLoss)):
        raise TypeError(f"Match.method must be a name, a DistillLoss or a function "
                        f"(f_s, f_t, **context) -> scalar, got {type(method).__name__}.")
    facts = method if isinstance(method, DistillLoss) else LOSSES.get(method)  # lists names
    s_pools = tuple(split_path(p)[1] for p in m.student_paths)
    t_pools = tuple(split_path(p)[1] for p in m.teacher_paths)
    node_ctx = tuple(k for k in facts.context if k in NODE_CONTEXT)
    if any(s_pools + t_pools) and node_ctx:
        raise ValueError(f"Match({m.teacher!r}, {m.student!r}): {_method_name(method)!r} "
                         f"reads node context {node_ctx}, so its features cannot be pooled "
                         "per graph; hook a node-level layer without ':..._pool'.")
    return _Spec(ti, m, "", method, facts.level, tuple(facts.context),
                 facts.needs_dims and isinstance(method, str), s_pools, t_pools)


# --------------------------------------------------------------------------- Distiller
class Distiller(nn.Module):
    """Teacher(s) + student + distillation losses; ``forward(data) -> (output, losses)``.

    See the module docstring (and the README) for the objective, layers and pooling, calls,
    setup, frozen teachers, several teachers and mutual learning.

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
        call: how to run the student (default :func:`~graphkd.inputs.default_call`).
        teacher_call: how to run the teacher(s) (default: ``call``).
        target: ``target(data) -> labels`` (default :func:`~graphkd.inputs.default_target`).
        context: ``context(data) -> dict`` (default :func:`~graphkd.inputs.graph_context`).
        mode: ``"offline"`` (frozen teachers) or ``"mutual"`` (one trainable peer, DML).
        example: a batch for :meth:`setup` at construction (recommended).

    Raises:
        ValueError: unknown method names, inconsistent arguments; at setup, wrong module paths
            (listing the valid ones) and failing methods (naming the match and widths).
        TypeError, AttributeError: at setup, a call that does not fit a model (the message
            names the call helper to use).

    Example:
        >>> d = Distiller(teacher, student, [Match("convs.1", "convs.0", "sp")],
        ...               logits="kd", task_loss=nn.CrossEntropyLoss(), call=pyg_call,
        ...               example=batch)
        >>> out, losses = d(batch)
        >>> sorted(losses)
        ['kd', 'sp[convs.0:mean_pool]', 'task']
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
        tcall = teacher_call or self.student_call
        if isinstance(teacher, nn.Module):
            given = [Teacher(teacher, tuple(matches))]
        else:
            given = list(teacher)
            if not given or not all(isinstance(t, Teacher) for t in given):
                raise TypeError("teacher must be an nn.Module or a non-empty list of Teacher.")
            if matches:
                raise ValueError("with several teachers, give each Teacher its own matches= "
                                 "instead of the Distiller's matches=.")
        single = len(given) == 1
        teachers = [Teacher(t.model, tuple(t.matches), t.weight, t.call or tcall,
                            t.name or f"t{i}", t.logits) for i, t in enumerate(given)]
        #: how messages name each teacher: what the user wrote
        self._labels = [f"teacher {t.name!r}" if t.name else
                        ("teacher" if single else f"teacher[{i}]") for i, t in enumerate(given)]
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
        if isinstance(self.logits_loss, DistillLoss) and self.logits_loss.needs_dims:
            raise ValueError("the logits method must not need widths; use a Match instead.")
        self.logits_name = None if logits is None else _method_name(logits)
        self.logits_weight = float(logits_weight)
        self.task_loss = task_loss
        self.task_weight = float(task_weight)
        self.target = target
        self.context = context
        self.check_optimizer = True
        self._prefix = ["" if single else f"{t.name}/" for t in teachers]
        self._specs: list[_Spec] = []
        for ti, t in enumerate(teachers):
            for m in t.matches:
                if not isinstance(m, Match):
                    raise TypeError(f"matches must be Match objects, got {type(m).__name__}.")
                spec = _spec(ti, m)
                spec.key = self._key(spec)
                self._specs.append(spec)
        self._check_keys()
        self.match_losses = nn.ModuleList()
        self._student_hooks: FeatureHooks | None = None
        self._teacher_hooks: list[FeatureHooks] = []
        self._setup_params: list[nn.Parameter] = []
        self._checked_optimizers: weakref.WeakSet = weakref.WeakSet()
        self._guard = None
        self.is_setup = False
        #: Teacher-output source replacing the teacher forward outside setup's dry run:
        #: ``source(data) -> (t_outs, t_feats)`` (one entry per teacher), e.g. the offline
        #: cache of :func:`graphkd.teacher_cache.cache_teacher`; ``None``: run the teachers.
        self.teacher_source: Callable[[Any], tuple[list, list]] | None = None
        if example is not None:
            self.setup(example)

    def _key(self, spec: _Spec, pooled: Sequence[str | None] | None = None) -> str:
        """``"{method}[{student paths}]"`` (``":mean_pool"`` on pooled paths), or the name."""
        m = spec.match
        if m.name is None:
            pooled = pooled or spec.s_pools
            paths = [split_path(p)[0] + (f":{how}" if how else "")
                     for p, how in zip(m.student_paths, pooled)]
            key = f"{_method_name(spec.method)}[{','.join(paths)}]"
        else:
            key = m.name
        return self._prefix[spec.teacher] + key

    def _check_keys(self) -> None:
        seen: set[str] = set()
        for spec in self._specs:
            if spec.key in seen:
                raise ValueError(f"two matches are named {spec.key!r}; give one a name= .")
            seen.add(spec.key)

    # ------------------------------------------------------------------ module plumbing
    @property
    def teachers(self) -> list[nn.Module]:
        """The teacher models (frozen in offline mode; the peer in mutual mode)."""
        return [t.model for t in self._teachers]

    @property
    def frozen(self) -> bool:
        return self.mode == "offline"

    def train(self, mode: bool = True) -> Distiller:
        """Set the student (and heads, and a mutual peer) to ``mode``; teachers stay eval."""
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
    def _run(self, data: Any, *, student: bool = True, dry: bool = False,
             ) -> tuple[Any, dict, list, list]:
        """Run the student and every teacher; return outputs and hooked features."""
        s_out, s_feats = None, {}
        if student:
            s_out = call_model(self.student_call, self.student, data, "student", dry)
            s_feats = self._student_hooks.pop() if self._student_hooks is not None else {}
        # ---- hook point: cached teacher outputs (graphkd.teacher_cache) -------------------
        if self.teacher_source is not None and not dry:
            t_outs, t_feats = self.teacher_source(data)
            return s_out, s_feats, list(t_outs), list(t_feats)
        # ---- end of hook point -------------------------------------------------------------
        t_outs, t_feats = [], []
        grad = nullcontext() if not self.frozen else torch.no_grad()
        for i, t in enumerate(self._teachers):
            if self.frozen and t.model.training:
                t.model.eval()
            with grad:
                t_outs.append(call_model(t.call, t.model, data, self._labels[i], dry))
            t_feats.append(self._teacher_hooks[i].pop() if self._teacher_hooks else {})
        return s_out, s_feats, t_outs, t_feats

    def _side(self, spec: _Spec, feats: dict, role: str, ctx: dict) -> list[Tensor]:
        """One side's features of a match (pooled per graph where asked or at batch level)."""
        m, who = spec.match, (role if role == "student" else self._labels[spec.teacher])
        paths = m.student_paths if role == "student" else m.teacher_paths
        return [layer_features(feats, p, ctx, level=spec.level, key=spec.key, who=who)
                for p in paths]

    def _kwargs(self, spec: _Spec, ctx: dict) -> dict[str, Any]:
        """The context keywords a method gets (none after pooling to one row per graph)."""
        if spec.level == "batch" or any(spec.s_pools + spec.t_pools):
            return {}
        return {k: ctx[k] for k in spec.context if ctx.get(k) is not None}

    def _inputs(self, spec: _Spec, s_feats: dict, t_feats: dict, ctx: dict,
                ) -> tuple[Any, Any, dict]:
        f_s = self._side(spec, s_feats, "student", ctx)
        f_t = self._side(spec, t_feats, "teacher", ctx)
        if not self.frozen:
            f_t = [f.detach() for f in f_t]
        if spec.match.multi_layer:
            return tuple(f_s), tuple(f_t), self._kwargs(spec, ctx)
        return f_s[0], f_t[0], self._kwargs(spec, ctx)

    # ------------------------------------------------------------------ setup
    def setup(self, example: Any) -> Distiller:
        """Dry run on ``example``: validate calls and paths, build heads, check every method.

        Call before creating the optimizer (or pass ``example=`` to the constructor). Runs every
        model once in eval mode under ``torch.no_grad()`` (no BatchNorm statistics change).

        Raises:
            ValueError: a wrong module path (the message lists the valid ones), a method that
                fails on these features (naming the match and the widths), or student and
                teacher logits of different shapes.
            TypeError, AttributeError: a call that does not fit a model (naming the helper).
        """
        if self.is_setup:
            return self
        first = next(self.student.parameters(), None)
        device = None if first is None else first.device
        dtype = first.dtype if first is not None and first.is_floating_point() else None
        if device is not None:
            example = to_device(example, device)
        s_paths = [split_path(p)[0] for s in self._specs for p in s.match.student_paths]
        self._student_hooks = FeatureHooks(self.student, s_paths, "student")
        self._teacher_hooks = [
            FeatureHooks(t.model, [split_path(p)[0] for s in self._specs if s.teacher == i
                                   for p in s.match.teacher_paths], self._labels[i])
            for i, t in enumerate(self._teachers)
        ]
        modes = [(m, m.training) for m in [self.student, *self.teachers]]
        built: list[nn.Module] = []
        try:
            for m, _ in modes:
                m.eval()
            with torch.no_grad():
                s_out, s_feats, t_outs, t_feats = self._run(example, dry=True)
                ctx = self.context(example)
                self._check_logits(s_out, t_outs)
                for spec in self._specs:
                    spec.key = self._key(spec, self._shown_pools(spec, s_feats, ctx))
                self._check_keys()
                if len(self.match_losses) != len(self._specs):  # not built yet
                    built = [self._build(spec, s_feats, t_feats[spec.teacher], ctx, device,
                                         dtype) for spec in self._specs]
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
            self._guard = install_optimizer_guard(self)
        self.is_setup = True
        return self

    @staticmethod
    def _shown_pools(spec: _Spec, s_feats: dict, ctx: dict) -> list[str | None]:
        """Pooling per student path for the key: explicit, or automatic at batch level."""
        shown = list(spec.s_pools)
        if spec.level == "batch" and ctx.get("batch") is not None \
                and ctx["num_nodes"] != ctx["num_graphs"]:
            for i, p in enumerate(spec.match.student_paths):
                f = s_feats.get(split_path(p)[0])
                if shown[i] is None and isinstance(f, Tensor) and f.dim() \
                        and f.shape[0] == ctx["num_nodes"]:
                    shown[i] = "mean_pool"
        return shown

    def _check_logits(self, s_out: Any, t_outs: list) -> None:
        if self.logits_loss is None:
            return
        z_s = logits_of(s_out)
        for i, (t, out) in enumerate(zip(self._teachers, t_outs)):
            if not t.logits:
                continue
            z_t = logits_of(out)
            if z_s.shape != z_t.shape:
                raise ValueError(
                    f"student logits {tuple(z_s.shape)} and {self._labels[i]} logits "
                    f"{tuple(z_t.shape)} differ in shape; both must predict the same classes "
                    "(or set Teacher(logits=False) / logits=None)."
                )

    def _build(self, spec: _Spec, s_feats: dict, t_feats: dict, ctx: dict,
               device: torch.device | None, dtype: torch.dtype | None) -> nn.Module:
        m = spec.match
        f_s, f_t, kwargs = self._inputs(spec, s_feats, t_feats, ctx)
        fs, ft = (f_s, f_t) if m.multi_layer else ((f_s,), (f_t,))
        ds, dt = tuple(f.shape[-1] for f in fs), tuple(f.shape[-1] for f in ft)
        if not m.multi_layer:
            ds, dt = ds[0], dt[0]
        widths = f"student width(s) {ds}, teacher width(s) {dt}"
        if spec.needs_dims:
            loss = get_loss(spec.method, student_dim=ds, teacher_dim=dt, **m.params)
        else:
            loss = get_loss(spec.method, **m.params)
        check_context_signature(loss, spec.key)
        if device is not None:
            loss = loss.to(device=device, dtype=dtype)  # heads follow the student
        was = loss.training
        loss.eval()
        try:
            if loss.requires_pretraining and not loss.pretrained:
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
        input_graphs: dict[tuple, EdgeSet] = {}  # built once per batch, shared by matches
        for spec, loss in zip(self._specs, self.match_losses):
            f_s, f_t, kwargs = self._inputs(spec, s_feats, t_feats[spec.teacher], ctx)
            if kwargs.get("edge_index") is not None and getattr(loss, "takes_input_edges",
                                                                False):
                kwargs["edges"] = _input_graph(input_graphs, kwargs, f_t)
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
                if m.requires_pretraining]

    def needs_pretraining(self) -> bool:
        """Whether a method still waits for its stage-1 pre-training (e.g. MHGD's heads)."""
        return any(not m.pretrained for _, m in self._pretrainable())

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
            if not loss.pretrained:
                f_t = self._side(spec, t_feats[spec.teacher], "teacher", ctx)
                f_t = tuple(f_t) if spec.match.multi_layer else f_t[0]
                out[f"{spec.key}/pretrain"] = loss.pretrain_loss(f_t, **self._kwargs(spec, ctx))
        return out

    def finish_pretraining(self) -> None:
        """End stage 1 of every two-stage method (freezes their stage-1 modules)."""
        for _, m in self._pretrainable():
            m.finish_pretraining()
