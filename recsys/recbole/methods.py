"""Distillation methods as small adapters between a RecBole batch and the pure losses of
:mod:`recsys.losses`.

An adapter is an ``nn.Module`` (trainable parts such as DE's experts are saved with the student)
that:

* declares ``topk``: the length of the teacher's top-K soft-label list it needs (0: none);
* receives the soft labels once (:meth:`DistillMethod.on_soft_labels`) and may resample per epoch
  (:meth:`DistillMethod.on_epoch_start`: RRD, CD, DCD, UnKD draw new items each epoch; DE anneals
  its temperature);
* maps a batch interaction to a scalar loss (:meth:`DistillMethod.forward`), calling the pure loss
  function.

Methods are registered by name (:func:`register`) and built by :func:`build_method`, which lists
the valid names when a name is wrong. Adding a method is one decorated class.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from graphkd.registry import Registry
from recsys.losses import CD, DCD, DE, FTD, HTD, RD, RRD, UnKD
from recsys.recbole.context import DistillContext, entity_embeddings
from recsys.samplers import (
    discrepancy_sample,
    group_topk,
    pair_sample,
    popularity_groups,
    rank_aware_sample,
    student_ranks,
    tournament_sample,
    uniform_items,
)

__all__ = ["DistillMethod", "METHODS", "register", "build_method", "available_methods"]

#: name -> adapter class
METHODS: Registry[type[DistillMethod]] = Registry("distillation method")
register = METHODS.register
available_methods = METHODS.names


def build_method(name: str, ctx: DistillContext, params: dict[str, Any]) -> DistillMethod:
    """Instantiate method ``name`` with hyperparameters ``params``.

    Raises:
        ValueError: unknown method name (the message lists the valid ones) or an unknown
            hyperparameter for that method.
    """
    cls = METHODS.get(name)
    key = cls.name
    unknown = set(params) - set(cls.defaults)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for method {key!r}; "
                         f"valid: {sorted(cls.defaults)}")
    return cls(ctx, {**cls.defaults, **params})


class DistillMethod(nn.Module):
    """Base adapter. Subclasses set ``defaults`` and implement :meth:`forward`.

    Args:
        ctx: the run's :class:`~recsys.recbole.context.DistillContext`.
        params: the method's hyperparameters (``defaults`` overridden by the user).
    """

    name: ClassVar[str] = ""
    #: hyperparameter defaults (also the set of accepted keys)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        super().__init__()
        object.__setattr__(self, "ctx", ctx)  # plain attribute: not a submodule
        self.params = dict(params)
        seed = ctx.config["seed"] if ctx.config is not None else 0
        self.generator = torch.Generator().manual_seed(int(seed or 0))

    @property
    def topk(self) -> int:
        """Soft-label list length needed from the teacher (0: none)."""
        return 0

    @property
    def mask_history(self) -> bool:
        """Whether the soft labels exclude each user's training items."""
        return True

    def on_soft_labels(self, topk: Any) -> None:
        """Called once with the teacher's :class:`~recsys.softlabels.TopK` (rows = user ids)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (resampling, schedules)."""

    def forward(self, interaction: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@register("none")
class NoDistill(DistillMethod):
    """No distillation term (the student trained alone inside the wrapper)."""

    def forward(self, interaction: Any) -> Tensor:
        return torch.zeros((), device=self.ctx.device)


# ============================================================================ helpers
def loss_defaults(loss_cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Constructor defaults of a :mod:`recsys.losses` module (its accepted hyperparameters)."""
    sig = inspect.signature(loss_cls.__init__)
    return {n: p.default for n, p in sig.parameters.items()
            if n != "self" and n not in skip and p.default is not inspect.Parameter.empty}


def _split(params: dict[str, Any], loss_cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    keys = set(loss_defaults(loss_cls, skip))
    return {k: v for k, v in params.items() if k in keys}


class _LossAdapter(DistillMethod):
    """An adapter around one :mod:`recsys.losses` module (``loss_cls``).

    ``defaults`` = the loss's constructor defaults (``reduction`` defaults to ``"mean"`` over
    users here: RecBole's own losses are batch means, so a sum would scale with the batch)
    + ``extra_defaults`` (sampling parameters read by the adapter).
    """

    loss_cls: ClassVar[type] = nn.Module
    loss_skip: ClassVar[tuple[str, ...]] = ()
    extra_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.loss_cls is not nn.Module:
            cls.defaults = {**loss_defaults(cls.loss_cls, cls.loss_skip), "reduction": "mean",
                            **cls.extra_defaults}

    def __init__(self, ctx: DistillContext, params: dict[str, Any], **loss_kwargs: Any) -> None:
        super().__init__(ctx, params)
        self.loss = self.loss_cls(**_split(self.params, self.loss_cls, self.loss_skip),
                                  **loss_kwargs)

    def on_epoch_start(self, epoch: int) -> None:
        self.loss.set_epoch(epoch, self.ctx.epochs)

    def top_items(self, users: Tensor, k: int | None = None) -> Tensor:
        """``[B, k]`` the teacher's top-``k`` unobserved items of ``users`` (rank order)."""
        top = self.ctx.require_soft_labels()
        idx = top.indices[users]
        return idx if k is None else idx[:, :k]


class _EmbeddingAdapter(_LossAdapter):
    """Adapters of the embedding-level methods (DE, FTD, HTD): unique batch entities.

    ``max_entities`` (default None: all, as the references) caps each kind of entity (users,
    positive items, negative items) per batch by uniform subsampling: the cost of DE's experts
    and of the dense topology graphs grows with the entity count (quadratically for FTD/HTD),
    and RecBole's 2048-interaction batches hold ~2,600 unique entities on ml-100k.
    """

    extra_defaults: ClassVar[dict[str, Any]] = {"max_entities": None}

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        with torch.no_grad():  # also checks, before training, that both models have embeddings
            s_u, _ = entity_embeddings(ctx.student)
            t_u, _ = entity_embeddings(ctx.teacher)
        # trainable experts (DE, HTD; ``needs_dims``) are built for the two widths
        kw = ({"student_dim": s_u.shape[1], "teacher_dim": t_u.shape[1]}
              if self.loss_cls.needs_dims else {})
        super().__init__(ctx, params, **kw)
        self._teacher_cache: tuple[Tensor, Tensor] | None = None

    def teacher_embeddings(self) -> tuple[Tensor, Tensor]:
        """The frozen teacher's embeddings, computed once (it never changes)."""
        cache = self._teacher_cache
        if cache is None or cache[0].device != self.ctx.device:
            with torch.no_grad():
                u, i = entity_embeddings(self.ctx.teacher)
            cache = self._teacher_cache = (u.detach().to(self.ctx.device),
                                           i.detach().to(self.ctx.device))
        return cache

    def subsample(self, ids: Tensor) -> Tensor:
        """At most ``max_entities`` of ``ids``, uniformly without replacement (seeded); all of
        them when ``max_entities`` is None (the references)."""
        cap = self.params.get("max_entities")
        if cap is None or ids.numel() <= int(cap):
            return ids
        keep = torch.randperm(ids.numel(), generator=self.generator)[:int(cap)]
        return ids[keep.to(ids.device)].sort().values

    def entities(self, interaction: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        """Unique users, unique positive items, unique negative items (None if pointwise),
        each capped at ``max_entities``."""
        c = self.ctx
        users = self.subsample(torch.unique(interaction[c.user_field]))
        pos = self.subsample(torch.unique(interaction[c.item_field]))
        neg = (self.subsample(torch.unique(interaction[c.neg_item_field]))
               if c.neg_item_field in interaction.interaction else None)
        return users, pos, neg


# ============================================================================ embedding level
@register("de")
class DEAdapter(_EmbeddingAdapter):
    """DE (distillation experts): users, positive and negative items of the batch.

    Pointwise students (no negative-item field): the batch's items count as positives and the
    negative term is dropped.
    """

    loss_cls = DE

    def forward(self, interaction: Any) -> Tensor:
        users, pos, neg = self.entities(interaction)
        s_u, s_i = entity_embeddings(self.ctx.student)
        t_u, t_i = self.teacher_embeddings()
        if neg is None:
            return self.loss.assignment_loss(s_u[users], t_u[users], s_i[pos], t_i[pos])
        return self.loss(s_u[users], t_u[users], s_i[pos], t_i[pos], s_i[neg], t_i[neg])


class _TopologyAdapter(_EmbeddingAdapter):
    def forward(self, interaction: Any) -> Tensor:
        users, pos, neg = self.entities(interaction)
        items = pos if neg is None else torch.unique(torch.cat([pos, neg]))
        s_u, s_i = entity_embeddings(self.ctx.student)
        t_u, t_i = self.teacher_embeddings()
        return self.loss(s_u[users], t_u[users], s_i[items], t_i[items])


@register("ftd")
class FTDAdapter(_TopologyAdapter):
    """FTD (full topology distillation) on the batch's unique users and items."""

    loss_cls = FTD


@register("htd")
class HTDAdapter(_TopologyAdapter):
    """HTD (hierarchical topology distillation) on the batch's unique users and items:
    ``alpha * htd_loss + (1 - alpha) * (group assignment of users + of items)``, both terms
    reduced by ``reduction`` (a mean over entities by default, as for DE).
    """

    loss_cls = HTD


# ============================================================================ list level
@register("rd")
class RDAdapter(_LossAdapter):
    """RD: the student's scores on the teacher's top-K of each batch user; from
    ``dynamic_start_epoch`` on, ``num_dynamic_samples`` uniform items per user (redrawn each
    epoch) estimate the student's ranks for the discrepancy weights.

    ``variant="original"`` does not mask the training history in the top-K (the KDD 2018 code);
    ``"cf"`` does (CF-style ports).
    """

    loss_cls = RD
    loss_skip = ("num_items",)

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        super().__init__(ctx, params, num_items=ctx.n_items)
        self.sampled: Tensor | None = None

    @property
    def topk(self) -> int:
        return int(self.loss.k)

    @property
    def mask_history(self) -> bool:
        return self.loss.variant != "original"

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.sampled = None
        if self.loss.dynamic:
            c = self.ctx
            self.sampled = torch.randint(1, c.n_items, (c.n_users, self.loss.num_dynamic_samples),
                                         generator=self.generator).to(c.device)

    def forward(self, interaction: Any) -> Tensor:
        users = self.ctx.batch_users(interaction)
        scores = self.ctx.student_scores(users, self.top_items(users, self.loss.k))
        sampled = None
        if self.loss.dynamic:
            if self.sampled is None:
                self.on_epoch_start(self.loss.epoch)
            with torch.no_grad():
                sampled = self.ctx.student_scores(users, self.sampled[users])
        return self.loss(scores, sampled)


class _SampledListAdapter(_LossAdapter):
    """Adapters whose per-epoch samples are ``[n_users, n]`` item tables, looked up per batch."""

    def __init__(self, ctx: DistillContext, params: dict[str, Any], **loss_kwargs: Any) -> None:
        super().__init__(ctx, params, **loss_kwargs)
        self.tables: tuple[Tensor, ...] = ()
        self._epoch = -1

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        with torch.no_grad():
            self.tables = tuple(t.to(self.ctx.device) for t in self.resample())
        self._epoch = epoch

    def resample(self) -> tuple[Tensor, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch_tables(self, interaction: Any) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The batch's unique users and their rows of every sample table."""
        if not self.tables:
            self.on_epoch_start(max(self._epoch, 0))
        users = self.ctx.batch_users(interaction)
        return users, tuple(t[users] for t in self.tables)

    def scores(self, users: Tensor, *lists: Tensor) -> tuple[Tensor, ...]:
        """Student scores of several ``[B, n_i]`` item lists in one ``predict`` call."""
        out = self.ctx.student_scores(users, torch.cat(lists, dim=1))
        return tuple(out.split([x.shape[1] for x in lists], dim=1))

    @property
    def all_users(self) -> Tensor:
        return torch.arange(self.ctx.n_users, device=self.ctx.device)

    def soft_labels(self, n: int, lists: int = 1) -> tuple[Any, int]:
        """The resample preamble of the soft-label samplers (RRD, CD, DCD): the teacher's
        soft labels ``top`` and the per-user sample count ``min(n, top.k // lists)`` (``lists``
        lists of ``n`` distinct positions are drawn from the top-K)."""
        top = self.ctx.require_soft_labels()
        return top, min(n, top.k // lists)

    @staticmethod
    def at_positions(top: Any, *positions: Tensor, scores: bool = False) -> tuple[Tensor, ...]:
        """The teacher's items at each ``[n_users, n]`` position table (each followed by the
        teacher's scores of those items when ``scores``)."""
        out: list[Tensor] = []
        for pos in positions:
            pos = pos.to(top.device)
            out.append(top.indices.gather(1, pos))
            if scores:
                out.append(top.scores.gather(1, pos))
        return tuple(out)


@register("rrd")
class RRDAdapter(_SampledListAdapter):
    """RRD: per epoch, ``k`` interesting items from the teacher's top-``m`` (rank-aware,
    ``temperature=None``: uniform) and ``l`` uninteresting items uniformly outside the top-``m``
    and the history; per batch, the relaxed Plackett-Luce loss of the batch users' lists."""

    loss_cls = RRD

    @property
    def topk(self) -> int:
        return int(self.loss.m)

    def resample(self) -> tuple[Tensor, ...]:
        top, k = self.soft_labels(self.loss.k)
        m = top.k
        pos = rank_aware_sample(self.ctx.n_users, m, k, temperature=self.loss.temperature,
                                generator=self.generator)
        (interesting,) = self.at_positions(top, pos)
        # items left outside the top-m and the history (padding excluded), for the worst user
        free = self.ctx.n_items - 1 - m - int(self.ctx.history.counts.max())
        if free < 1:
            raise ValueError(f"RRD: no item is left outside the teacher's top-{m} and the "
                             "history for some user: lower distill_params.m")
        boring = uniform_items(self.all_users, self.ctx.n_items, min(self.loss.l, free),
                               history=self.ctx.history, exclude_topk=top.indices,
                               generator=self.generator)
        return interesting, boring

    def forward(self, interaction: Any) -> Tensor:
        users, (interesting, boring) = self.batch_tables(interaction)
        return self.loss(*self.scores(users, interesting, boring))


@register("cd")
class CDAdapter(_SampledListAdapter):
    """CD: per epoch, ``n_distill`` unobserved items per user by rank-aware tournament over the
    teacher's top-``sample_num``; per batch, BCE of the student on the teacher's soft labels
    ``sigmoid((t + t2) / t1)`` of those items (teacher scores from the soft labels)."""

    loss_cls = CD

    @property
    def topk(self) -> int:
        return int(self.loss.sample_num)

    def resample(self) -> tuple[Tensor, ...]:
        top, n = self.soft_labels(self.loss.n_distill)
        pos = tournament_sample(self.ctx.n_users, top.k, n, temperature=self.loss.temperature,
                                generator=self.generator)
        return self.at_positions(top, pos, scores=True)

    def forward(self, interaction: Any) -> Tensor:
        users, (items, teacher) = self.batch_tables(interaction)
        (student,) = self.scores(users, items)
        return self.loss(student, teacher)


@register("dcd")
class DCDAdapter(_SampledListAdapter):
    """DCD: per epoch, the student's exact ranks of the teacher's top-``m`` give under- and
    over-estimated items (``k`` each, ``discrepancy_sample``); per batch, the relaxed
    Plackett-Luce loss of the under-estimated list above the over-estimated one."""

    loss_cls = DCD

    @property
    def topk(self) -> int:
        return int(self.loss.m)

    def resample(self) -> tuple[Tensor, ...]:
        top, k = self.soft_labels(self.loss.k, lists=2)
        ranks = student_ranks(self.ctx.student_full_scores, self.all_users, top.indices,
                              self.ctx.n_items,
                              chunk_size=int(self.ctx.config["softlabel_chunk_size"] or 1024))
        under, over = discrepancy_sample(ranks, k, temperature=self.loss.temperature,
                                         generator=self.generator)
        return self.at_positions(top, under, over)

    def forward(self, interaction: Any) -> Tensor:
        users, (under, over) = self.batch_tables(interaction)
        return self.loss(*self.scores(users, under, over))


@register("unkd")
class UnKDAdapter(_SampledListAdapter):
    """UnKD: items split into ``num_groups`` popularity groups of equal interaction mass; the
    teacher's top-``m`` unobserved items of each user *within each group* (once); per epoch,
    ``n_distill`` rank-aware pairs per user and group; per batch, ``-log sigmoid(s_i - s_j)``."""

    loss_cls = UnKD
    extra_defaults = {"m": 100}

    def on_soft_labels(self, topk: Any) -> None:
        c = self.ctx
        groups = popularity_groups(c.item_popularity, self.loss.num_groups)
        chunk = int(c.config["softlabel_chunk_size"] or 1024) if c.config is not None else 1024
        self.group_lists = []
        for g in range(self.loss.num_groups):
            top, lengths = group_topk(c.teacher_full_scores, c.n_users, c.n_items,
                                      int(self.params["m"]), groups.to(c.device), g,
                                      exclude=c.history, chunk_size=chunk, device=c.device)
            self.group_lists.append((top.indices, lengths))

    def resample(self) -> tuple[Tensor, ...]:
        items_i, items_j, valid = [], [], []
        for indices, lengths in self.group_lists:
            pi, pj, ok = pair_sample(lengths, self.loss.n_distill,
                                     temperature=self.loss.temperature, generator=self.generator)
            items_i.append(indices.gather(1, pi.to(indices.device)))
            items_j.append(indices.gather(1, pj.to(indices.device)))
            valid.append(ok)
        return torch.cat(items_i, 1), torch.cat(items_j, 1), torch.cat(valid, 1)

    def forward(self, interaction: Any) -> Tensor:
        users, (items_i, items_j, valid) = self.batch_tables(interaction)
        s_i, s_j = self.scores(users, items_i, items_j)
        return self.loss(s_i, s_j, valid=valid)


# ============================================================================ combinations
class _Combined(DistillMethod):
    """A weighted sum of registered methods: ``sum_m weight_m * method_m(batch)``.

    Subclasses set ``parts`` (method names); ``params`` holds ``{name: {"weight": w, ...the
    method's hyperparameters}}`` (each part's defaults filled in).
    """

    parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        super().__init__(ctx, params)
        self.methods = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name in self.parts:
            sub = dict(params.get(name) or {})
            self.weights[name] = float(sub.pop("weight", 1.0))
            self.methods[name] = build_method(name, ctx, sub)

    @property
    def topk(self) -> int:
        return max(m.topk for m in self.methods.values())

    @property
    def mask_history(self) -> bool:
        return all(m.mask_history for m in self.methods.values())

    def on_soft_labels(self, topk: Any) -> None:
        for m in self.methods.values():
            m.on_soft_labels(topk)

    def on_epoch_start(self, epoch: int) -> None:
        for m in self.methods.values():
            m.on_epoch_start(epoch)

    def forward(self, interaction: Any) -> Tensor:
        return sum(self.weights[n] * m(interaction) for n, m in self.methods.items())


@register("de_rrd")
class DERRD(_Combined):
    """DE + RRD (the DE-RRD paper's combination): ``w_de * DE + w_rrd * RRD``."""

    parts = ("de", "rrd")
    defaults = {"de": {}, "rrd": {}}
