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
    ForbiddenItems,
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


def batch_interactions(ctx: DistillContext, interaction: Any) -> int:
    """The number of interactions (rows) of a training batch: the denominator of RecBole's
    batch-mean losses (BPR), passed as ``num_interactions`` to the losses' ``"per_interaction"``
    reduction (their per-user / per-entity sums divided by it keep the references' ratio
    ``lambda * sum / BPR_sum``)."""
    return int(interaction[ctx.user_field].shape[0])


class _LossAdapter(DistillMethod):
    """An adapter around one :mod:`recsys.losses` module (``loss_cls``).

    ``defaults`` = the loss's constructor defaults (``reduction`` defaults to ``"mean"`` over
    users here: RecBole's own losses are batch means, so a sum would scale with the batch)
    + ``extra_defaults`` (sampling parameters read by the adapter; RRD, DE and HTD default to
    ``reduction="per_interaction"``: the references' sums over users / entities divided by
    :func:`batch_interactions`, which keeps the reference's ``lambda``).
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
        idx = top.indices.index_select(0, users.to(top.indices.device))
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
        return self.entities_and_counts(interaction)[0]

    def entities_and_counts(self, interaction: Any) -> tuple[
            tuple[Tensor, Tensor, Tensor | None], tuple[int, int, int | None]]:
        """:meth:`entities` and each kind's unique count before the ``max_entities`` cap."""
        c = self.ctx
        full = [torch.unique(interaction[c.user_field]), torch.unique(interaction[c.item_field]),
                torch.unique(interaction[c.neg_item_field])
                if c.neg_item_field in interaction.interaction else None]
        kept = tuple(None if x is None else self.subsample(x) for x in full)
        return kept, tuple(None if x is None else x.numel() for x in full)


# ============================================================================ embedding level
@register("de")
class DEAdapter(_EmbeddingAdapter):
    """DE (distillation experts): users, positive and negative items of the batch.

    ``reduction="per_interaction"`` (default): each kind's sum over its unique entities divided
    by the batch's interaction count, i.e. the reference's ``lambda_DE`` relative to a
    batch-sum BPR; with ``max_entities`` a kind's sum over its kept entities is scaled by
    ``unique / kept`` (an unbiased estimate of the reference's sum over all of them).
    Pointwise students (no negative-item field): the batch's items count as positives and the
    negative term is dropped.
    """

    loss_cls = DE
    extra_defaults = {**_EmbeddingAdapter.extra_defaults, "reduction": "per_interaction"}

    def forward(self, interaction: Any) -> Tensor:
        (users, pos, neg), counts = self.entities_and_counts(interaction)
        s_u, s_i = entity_embeddings(self.ctx.student)
        t_u, t_i = self.teacher_embeddings()
        b = batch_interactions(self.ctx, interaction)
        if neg is None:
            return self.loss.assignment_loss(s_u[users], t_u[users], s_i[pos], t_i[pos],
                                             num_interactions=b, sampled_from=counts[:2])
        return self.loss(s_u[users], t_u[users], s_i[pos], t_i[pos], s_i[neg], t_i[neg],
                         num_interactions=b, sampled_from=counts)


class _TopologyAdapter(_EmbeddingAdapter):
    def forward(self, interaction: Any) -> Tensor:
        users, pos, neg = self.entities(interaction)
        items = pos if neg is None else torch.unique(torch.cat([pos, neg]))
        s_u, s_i = entity_embeddings(self.ctx.student)
        t_u, t_i = self.teacher_embeddings()
        return self.loss(s_u[users], t_u[users], s_i[items], t_i[items],
                         num_interactions=batch_interactions(self.ctx, interaction))


@register("ftd")
class FTDAdapter(_TopologyAdapter):
    """FTD (full topology distillation) on the batch's unique users and items."""

    loss_cls = FTD


@register("htd")
class HTDAdapter(_TopologyAdapter):
    """HTD (hierarchical topology distillation) on the batch's unique users and items:
    ``alpha * htd_loss + (1 - alpha) * (group assignment of users + of items)``, both terms
    reduced by ``reduction`` (default ``"per_interaction"``: the reference's sums divided by the
    batch's interaction count). With ``max_entities`` both terms cover the kept entities only
    (not rescaled: the topology term's pair sums have no unbiased per-entity rescaling).
    """

    loss_cls = HTD
    extra_defaults = {**_EmbeddingAdapter.extra_defaults, "reduction": "per_interaction"}


# ============================================================================ list level
@register("rd")
class RDAdapter(_LossAdapter):
    """RD: the student's scores on the teacher's top-K of each batch user; from
    ``dynamic_start_epoch`` on, ``num_dynamic_samples`` items per user, uniform over the items
    the user has not interacted with (redrawn each epoch, :meth:`dynamic_samples`), estimate the
    student's ranks for the discrepancy weights.

    ``variant="original"`` does not mask the training history in the top-K (the KDD 2018 code);
    ``"cf"`` does (CF-style ports).
    """

    loss_cls = RD
    loss_skip = ("num_items",)

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        super().__init__(ctx, params, num_items=ctx.n_items)
        self.sampled: Tensor | None = None
        self._forbidden: ForbiddenItems | None = None

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
            self.sampled = self.dynamic_samples()

    def dynamic_samples(self) -> Tensor:
        """``[n_users, num_dynamic_samples]`` items per user, i.i.d. uniform over the items
        outside the user's training history (padding item 0 excluded), drawn with replacement
        as every reference does (graytowne/rank_distill ``_generate_negative_samples``,
        chengang95/UnKD and woriazzc/KDs ``Sample_neg``): vectorised rejection of the few
        history hits (:func:`~recsys.samplers.uniform_items`; the forbidden sets are built
        once per run)."""
        c = self.ctx
        users = torch.arange(c.n_users, device=c.device)
        if self._forbidden is None:
            self._forbidden = ForbiddenItems(users, c.n_items, history=c.history)
        return uniform_items(users, c.n_items, self.loss.num_dynamic_samples,
                             forbidden=self._forbidden, replacement=True,
                             generator=self.generator).to(c.device)

    def forward(self, interaction: Any) -> Tensor:
        users = self.ctx.batch_users(interaction)
        scores = self.ctx.student_scores(users, self.top_items(users, self.loss.k))
        sampled = None
        if self.loss.dynamic:
            if self.sampled is None:
                self.on_epoch_start(self.loss.epoch)
            with torch.no_grad():
                sampled = self.ctx.student_scores(users,
                                                  self.sampled.index_select(0, users))
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
        """The batch's unique users and their rows of every sample table (``index_select``:
        the same rows as ``t[users]``, ~4x faster on CPU)."""
        if not self.tables:
            self.on_epoch_start(max(self._epoch, 0))
        users = self.ctx.batch_users(interaction)
        return users, tuple(t.index_select(0, users) for t in self.tables)

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
    and the history; per batch, the relaxed Plackett-Luce loss of the batch's unique users'
    lists, by default summed over them and divided by the batch's interaction count
    (``reduction="per_interaction"``: the reference's ``lambda``, see
    :func:`batch_interactions`)."""

    loss_cls = RRD
    extra_defaults = {"reduction": "per_interaction"}

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        super().__init__(ctx, params)
        #: (soft labels it was built from, the uninteresting items' forbidden sets): the
        #: history and the teacher's top-M do not change between epochs
        self._forbidden: tuple[Any, ForbiddenItems] | None = None

    @property
    def topk(self) -> int:
        return int(self.loss.m)

    def forbidden(self, top: Any) -> ForbiddenItems:
        """Each user's history, top-``m`` and padding item, built once per soft labels."""
        if self._forbidden is None or self._forbidden[0] is not top:
            self._forbidden = (top, ForbiddenItems(self.all_users, self.ctx.n_items,
                                                   history=self.ctx.history,
                                                   exclude_topk=top.indices))
        return self._forbidden[1]

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
                               forbidden=self.forbidden(top), generator=self.generator)
        return interesting, boring

    def forward(self, interaction: Any) -> Tensor:
        users, (interesting, boring) = self.batch_tables(interaction)
        return self.loss(*self.scores(users, interesting, boring),
                         num_interactions=batch_interactions(self.ctx, interaction))


def _chunk_size(ctx: DistillContext) -> int:
    """Rows per score block of the chunked extractions (``softlabel_chunk_size``, 1024)."""
    cfg = ctx.config
    return int((cfg["softlabel_chunk_size"] if cfg is not None else None) or 1024)


def _unobserved_topk(ctx: DistillContext, score_fn: Any, k: int) -> Any:
    """Every user's top-``k`` unobserved items under ``score_fn`` (``users -> [c, n_items]``),
    chunked over users (memory ``chunk x n_items``), history and padding masked, not cached;
    ``k`` is clamped to the items left to the user with the longest history."""
    from recsys.softlabels import teacher_topk

    k = min(k, ctx.n_items - 1 - int(ctx.history.counts.max()))
    if k < 1:
        raise ValueError("no unobserved items left for some user: the dataset is too small "
                         "for ranking distillation")
    return teacher_topk(score_fn, ctx.n_users, ctx.n_items, k, exclude=ctx.history,
                        chunk_size=_chunk_size(ctx), device=ctx.device)


@register("cd")
class CDAdapter(_SampledListAdapter):
    """CD: per epoch, ``n_distill`` unobserved items per user by rank-aware tournament over the
    guide's top-``sample_num``: ``guide="student"`` (default, the paper's) re-extracts the
    current student's top unobserved items at each epoch start (chunked over users, not
    cached); ``guide="teacher"`` uses the teacher's soft labels. Per batch, BCE of the student
    on the teacher's soft labels ``sigmoid((t + t2) / t1)`` of those items (teacher scores from
    the soft labels, or computed for the student-guided items)."""

    loss_cls = CD

    @property
    def topk(self) -> int:
        return int(self.loss.sample_num) if self.loss.guide == "teacher" else 0

    def resample(self) -> tuple[Tensor, ...]:
        if self.loss.guide == "teacher":
            top, n = self.soft_labels(self.loss.n_distill)
            pos = tournament_sample(self.ctx.n_users, top.k, n,
                                    temperature=self.loss.temperature, generator=self.generator)
            return self.at_positions(top, pos, scores=True)
        top = _unobserved_topk(self.ctx, self.ctx.student_full_scores, int(self.loss.sample_num))
        pos = tournament_sample(self.ctx.n_users, top.k, min(self.loss.n_distill, top.k),
                                temperature=self.loss.temperature, generator=self.generator)
        (items,) = self.at_positions(top, pos)
        return items, self.teacher_scores_of(items)

    def teacher_scores_of(self, items: Tensor) -> Tensor:
        """``[n_users, n]`` teacher scores of each user's row of ``items`` (chunked)."""
        users, chunk = self.all_users, _chunk_size(self.ctx)
        items = items.to(self.ctx.device)
        return torch.cat([self.ctx.teacher_scores(users[s:s + chunk], items[s:s + chunk])
                          for s in range(0, users.numel(), chunk)])

    def forward(self, interaction: Any) -> Tensor:
        users, (items, teacher) = self.batch_tables(interaction)
        (student,) = self.scores(users, items)
        return self.loss(student, teacher)


def _item_history(ctx: DistillContext) -> Any:
    """The training history transposed: an ``n_items x n_users`` EdgeSet (item -> its users)."""
    from recsys.softlabels import history_from_interactions

    h = ctx.history
    return history_from_interactions(h.col, h.row, ctx.n_items, ctx.n_users)


def _item_score_fn(ctx: DistillContext, model: nn.Module) -> Any:
    """``items [c] -> [c, n_users]``: ``model``'s scores of every user for each item (the
    transposed score matrix, one item chunk at a time, memory ``chunk x n_users``), without
    gradients. Dot-product models (:data:`~recsys.recbole.context.DOT_PRODUCT_MODELS`) use
    their final embeddings (propagated once per call of this function); other models score the
    ``n_users x c`` grid with their own ``predict``."""
    from recsys.recbole.context import DOT_PRODUCT_MODELS, pair_scores

    if type(model).__name__ in DOT_PRODUCT_MODELS:
        with torch.no_grad():
            u_emb, i_emb = (t.detach() for t in entity_embeddings(model))
        return lambda items: i_emb[items] @ u_emb.T
    users = torch.arange(ctx.n_users, device=ctx.device)

    def scores(items: Tensor) -> Tensor:
        grid = items.unsqueeze(0).expand(ctx.n_users, -1)
        with torch.no_grad():
            return pair_scores(model, ctx.user_field, ctx.item_field, users, grid).T.contiguous()
    return scores


def _item_list_scores(ctx: DistillContext, model: nn.Module, items: Tensor,
                      users: Tensor) -> Tensor:
    """``[B, K]`` scores ``s(users[b, k], items[b])`` (with gradients): the item side's lists."""
    from recsys.recbole.context import DOT_PRODUCT_MODELS, pair_scores

    if type(model).__name__ in DOT_PRODUCT_MODELS:
        u_emb, i_emb = entity_embeddings(model)
        return torch.bmm(u_emb[users], i_emb[items].unsqueeze(2)).squeeze(2)
    b, k = users.shape
    return pair_scores(model, ctx.user_field, ctx.item_field, users.reshape(-1),
                       items.repeat_interleave(k).view(b * k, 1)).view(b, k)


@register("dcd")
class DCDAdapter(_SampledListAdapter):
    """DCD (Lee & Kim, CIKM 2021): user- and item-side correction.

    * user side: per epoch, the student's exact ranks (over all items) of the teacher's
      top-``m`` unobserved items give ``k`` under- and ``k`` over-estimated items per user
      (``discrepancy_sample``); per batch, the relaxed Plackett-Luce loss of each batch user's
      under-estimated list above its over-estimated items.
    * item side (``sides="both"``): once per run, each item's teacher top-``item_m`` users
      outside its training users (``teacher_topk`` on the transposed scores, streamed over item
      chunks, memory ``chunk x n_users``); per epoch, the student's exact ranks of those users
      among all users give ``item_k`` under- and over-estimated users per item; per batch, the
      same loss over users for each of the batch's unique (positive) items.

    Loss ``user_weight * L_user + item_weight * L_item`` (plus the student's own loss and times
    ``distill_weight`` in :class:`~recsys.recbole.model.DistillRecommender`). Each side is
    reduced over its rows by ``reduction``: by default ``"per_interaction"`` (the sum over the
    batch's users / items divided by the batch's interaction count, as RRD:
    :func:`batch_interactions`); ``"mean"``: over the users / items with a valid list.
    """

    loss_cls = DCD
    extra_defaults = {"reduction": "per_interaction"}

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        super().__init__(ctx, params)
        self.item_lists: tuple[Tensor, Tensor] | None = None
        self.item_tables: tuple[Tensor, ...] = ()

    @property
    def topk(self) -> int:
        return int(self.loss.m)

    def on_soft_labels(self, topk: Any) -> None:
        """The item side's teacher lists: each item's top-``item_m`` users outside its history
        (user 0, RecBole's padding, masked), rows = item ids, with their valid lengths."""
        if not self.loss.item_side:
            return
        from recsys.softlabels import teacher_topk

        c = self.ctx
        m = max(1, min(int(self.loss.item_m), c.n_users - 1))
        top = teacher_topk(_item_score_fn(c, c.teacher), c.n_items, c.n_users, m,
                           exclude=_item_history(c), chunk_size=_chunk_size(c),
                           device=c.device, strict=False)
        self.item_lists = (top.indices, torch.isfinite(top.scores).sum(1))

    def resample(self) -> tuple[Tensor, ...]:
        top, k = self.soft_labels(self.loss.k, lists=2)
        ranks = student_ranks(self.ctx.student_full_scores, self.all_users, top.indices,
                              self.ctx.n_items, chunk_size=_chunk_size(self.ctx))
        under, over = discrepancy_sample(ranks, k, temperature=self.loss.temperature,
                                         generator=self.generator)
        if self.loss.item_side:
            self.item_tables = tuple(t.to(self.ctx.device) for t in self.resample_items())
        return self.at_positions(top, under, over)

    def resample_items(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(under [I, K_i], over [I, K_i], valid_under, valid_over)``: each item's sampled
        users (teacher order) and their masks, from the student's current ranks (drawn with
        ``self.generator``)."""
        c = self.ctx
        if self.item_lists is None:
            self.on_soft_labels(c.soft_labels)
        users, lengths = (t.to(c.device) for t in self.item_lists)
        k = min(int(self.loss.item_k), users.shape[1])
        items = torch.arange(c.n_items, device=users.device)
        ranks = student_ranks(_item_score_fn(c, c.student), items, users, c.n_users,
                              chunk_size=_chunk_size(c))
        under, over = discrepancy_sample(ranks, k, temperature=self.loss.temperature,
                                         generator=self.generator, lengths=lengths)
        under, over = under.to(users.device), over.to(users.device)
        n = lengths.to(users.device).unsqueeze(1)
        return users.gather(1, under), users.gather(1, over), under < n, over < n

    def forward(self, interaction: Any) -> Tensor:
        users, (under, over) = self.batch_tables(interaction)
        s_under, s_over = self.scores(users, under, over)
        n = batch_interactions(self.ctx, interaction)
        if not self.loss.item_side:
            return self.loss(s_under, s_over, num_interactions=n)
        items = torch.unique(interaction[self.ctx.item_field])
        i_under, i_over, v_under, v_over = (t.index_select(0, items) for t in self.item_tables)
        t_under, t_over = _item_list_scores(
            self.ctx, self.ctx.student, items, torch.cat([i_under, i_over], 1)).split(
                [i_under.shape[1], i_over.shape[1]], dim=1)
        return self.loss(s_under, s_over, t_under, t_over, v_under, v_over,
                         num_interactions=n)


@register("unkd")
class UnKDAdapter(_SampledListAdapter):
    """UnKD (chengang95/UnKD defaults): items split into ``num_groups=2`` popularity groups of
    equal interaction mass; the teacher's top-``m=1000`` unobserved items of each user *within
    each group* (once); per epoch, ``n_distill=30`` rank-aware pairs per user in total, split
    equally over the groups (``pair_split="equal"``, the reference code's behaviour;
    ``"user_share"``: by the user's interaction share, largest remainder); per batch,
    ``-log sigmoid(s_i - s_j)`` averaged over each user's pairs, then over the batch's
    interactions (each unique user weighted by its number of interactions in the batch;
    ``reduction="mean"``)."""

    loss_cls = UnKD

    def on_soft_labels(self, topk: Any) -> None:
        from recsys.samplers import group_interactions, split_pair_counts

        c = self.ctx
        groups = popularity_groups(c.item_popularity, self.loss.num_groups).to(c.device)
        self.group_lists = []
        for g in range(self.loss.num_groups):
            top, lengths = group_topk(c.teacher_full_scores, c.n_users, c.n_items,
                                      int(self.loss.m), groups, g, exclude=c.history,
                                      chunk_size=_chunk_size(c), device=c.device)
            self.group_lists.append((top.indices, lengths))
        inter = group_interactions(c.history, groups, self.loss.num_groups)
        weights = inter if self.loss.pair_split == "user_share" else torch.ones_like(inter)
        #: ``[n_users, G]`` pairs per user and group (each row sums to ``n_distill``)
        self.pair_counts = split_pair_counts(weights, int(self.loss.n_distill)).to(c.device)

    def resample(self) -> tuple[Tensor, ...]:
        items_i, items_j, valid = [], [], []
        for g, (indices, lengths) in enumerate(self.group_lists):
            indices, lengths = indices.to(self.ctx.device), lengths.to(self.ctx.device)
            count = self.pair_counts[:, g].to(indices.device)
            n = int(count.max())
            if n == 0:
                continue
            pi, pj, ok = pair_sample(lengths, n, temperature=self.loss.temperature,
                                     generator=self.generator)
            cols = torch.arange(n, device=indices.device)
            items_i.append(indices.gather(1, pi.to(indices.device)))
            items_j.append(indices.gather(1, pj.to(indices.device)))
            valid.append(ok.to(indices.device) & (cols.unsqueeze(0) < count.unsqueeze(1)))
        i, j, ok = torch.cat(items_i, 1), torch.cat(items_j, 1), torch.cat(valid, 1)
        # each user's pairs first (groups in order), in n_distill columns
        order = torch.sort((~ok).to(torch.int8), dim=1, stable=True).indices
        order = order[:, :int(self.loss.n_distill)]
        return i.gather(1, order), j.gather(1, order), ok.gather(1, order)

    def forward(self, interaction: Any) -> Tensor:
        if not self.tables:
            self.on_epoch_start(max(self._epoch, 0))
        users, counts = torch.unique(interaction[self.ctx.user_field], return_counts=True)
        items_i, items_j, valid = (t.index_select(0, users) for t in self.tables)
        s_i, s_j = self.scores(users, items_i, items_j)
        return self.loss(s_i, s_j, valid=valid, weights=counts)


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


# methods defined in their own modules (registered on import; they import this module)
from recsys.recbole import adversarial as _adversarial  # noqa: E402,F401
from recsys.recbole import autoencoder as _autoencoder  # noqa: E402,F401
