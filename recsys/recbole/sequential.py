r"""Ranking distillation for RecBole's sequential (next-item) recommenders.

Any RecBole ``SequentialRecommender`` (SASRec, GRU4Rec, NARM, BERT4Rec, ...) can be teacher and
student. The data pipeline, trainer and evaluator are RecBole's own for sequential models: one
training row per sequence prefix (``item_id_list``, ``item_length`` -> target ``item_id``),
leave-one-out split by time, full-sort ranking; the student trains with its own loss (``CE`` or
``BPR``, as configured: ``loss_type``).

Per training row (prefix) ``b`` of a batch, with the frozen teacher ``T`` and the student ``S``:

* the teacher's representation ``h^T_b`` of every training row is computed once per run and
  cached (:class:`TeacherRowCache`; ``seq_teacher_cache``, on by default for teachers whose
  scores are ``h^T E_T^T (+ bias)``): the training rows are fixed prefixes and the teacher is
  frozen in eval mode, so ``h^T_b`` never changes. Each row carries its position in the
  training data as an int64 column :data:`ROW_ID_FIELD` (added to the training dataset's
  ``inter_feat``, not a registered field: no model reads it, validation and test data do not
  have it); a batch gathers its rows from the cache after checking that their prefixes are the
  cached ones. Memory ``N_rows x d_t x 4`` bytes (ml-100k, ``MAX_ITEM_LIST_LENGTH`` 10: 97,171
  rows x 64 -> 24 MiB, built in 6-9 s on one CPU thread, which then saves ~10 s of teacher
  forwards per epoch), built in ``softlabel_chunk_size`` rows without gradients, by each
  process of a multi-process run; over :data:`TEACHER_CACHE_MAX_BYTES` (2 GiB), or for a
  teacher without a dot-product scorer, the teacher runs on every batch instead (the
  pre-cache path, exact as well);
* the teacher's soft labels are its top-K next items for that prefix: the rows of
  ``h^T_b E_T^T (+ bias)`` (its ``full_sort_predict``), padding item masked, computed for each
  batch from the (cached) ``h^T_b`` by :func:`recsys.softlabels.teacher_topk`, streamed over
  ``softlabel_chunk_size`` rows (memory ``chunk x n_items``);
* the student's scores of listed items are ``h^S_b . e^S_i (+ bias_i)`` from its sequence
  representation ``h^S_b`` and the gathered item embeddings (no ``batch x n_items`` matrix); the
  first batch checks this against the model's own ``full_sort_predict`` and falls back to
  gathering from it for models where it differs (:class:`SequenceScorer`);
* a method (:data:`SEQUENTIAL_METHODS`) turns these into a loss:

  ==========  ======================================================================
  ``rd``      RD on the student's scores of each prefix's teacher top-K (position
              weights; rank-discrepancy weights from ``dynamic_start_epoch`` with
              items sampled uniformly) -- :class:`recsys.losses.RD`
  ``rrd``     RRD: ``k`` interesting items of the teacher's top-``m`` (rank-aware)
              above ``l`` uniform items outside it -- :class:`recsys.losses.RRD`
  ``kd``      softmax KD (``tau``) over the top-``k`` plus ``num_samples`` items
              sampled outside it -- :class:`recsys.losses.SampledKD`
  ``hidden``  projector ``d_s -> d_t`` + squared error on the sequence
              representation -- :class:`recsys.losses.HiddenStateKD`
  ``de``      DE's experts (Gumbel-selected) on the sequence representation --
              :class:`recsys.losses.DistillationExperts`
  ``none``    no distillation term
  ==========  ======================================================================

Total loss: ``student loss + distill_weight * method loss``; every method reduces over the
batch's rows by a mean (RecBole's sequential losses are batch means). Defaults:
``recsys/recbole/seq_<method>.yaml``.

Example:
    >>> from recsys.recbole import run_distillation
    >>> res = run_distillation(teacher="SASRec", student="SASRec", method="kd",
    ...                        dataset="ml-100k", teacher_config={"hidden_size": 64},
    ...                        student_config={"hidden_size": 16, "inner_size": 64,
    ...                                        "n_layers": 1})  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import ModelType
from torch import Tensor, nn

from graphkd.registry import Registry
from recsys.losses import RD, RRD, DistillationExperts, HiddenStateKD, SampledKD
from recsys.recbole.methods import _split, loss_defaults
from recsys.recbole.model import FrozenTeacherWrapper
from recsys.recbole.zoo import (
    build_recbole_model,
    load_model,
    model_class,
    model_defaults,
    model_type_name,
)
from recsys.samplers import rank_aware_sample, uniform_items

__all__ = [
    "SEQUENTIAL_METHODS",
    "SEQUENCE_ENCODERS",
    "sequence_output",
    "item_table",
    "SequenceScorer",
    "ROW_ID_FIELD",
    "TEACHER_CACHE_MAX_BYTES",
    "add_row_ids",
    "TeacherRowCache",
    "SequentialContext",
    "SequentialBatch",
    "SequentialMethod",
    "build_sequential_method",
    "SequentialDistillRecommender",
    "sequential_model_class",
    "sequential_config",
    "student_loss_type",
]

log = logging.getLogger(__name__)

#: name -> sequential method adapter class
SEQUENTIAL_METHODS: Registry[type[SequentialMethod]] = Registry(
    "sequential distillation method")
register = SEQUENTIAL_METHODS.register


# ============================================================================ representations
def _forward_output(model: nn.Module, interaction: Any) -> Tensor:
    """``model.forward(item_seq, item_seq_len)``: the ``[B, d]`` representation that SASRec,
    GRU4Rec, NARM, Caser, ... multiply with their item embeddings in ``full_sort_predict``."""
    return model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])


def _bert4rec_output(model: nn.Module, interaction: Any) -> Tensor:
    """BERT4Rec's ``full_sort_predict`` representation: the mask token appended after the
    prefix, the transformer output at its position."""
    seq, length = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    seq = model.reconstruct_test_data(seq, length)
    return model.gather_indexes(model.forward(seq), length - 1)


def _embedding_items(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(item_embedding.weight[:n_items], None)``: the item side of the dot product."""
    return model.item_embedding.weight[:model.n_items], None


def _bert4rec_items(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """BERT4Rec: item embeddings without the mask token, plus its ``output_bias``."""
    return model.item_embedding.weight[:model.n_items], model.output_bias


#: model class name -> (sequence representation ``[B, d]``, item table ``([n_items, d], bias)``)
#: when it differs from the default (``forward(item_seq, item_seq_len)`` and
#: ``item_embedding``). :class:`SequenceScorer` checks the pair against ``full_sort_predict``.
SEQUENCE_ENCODERS: dict[str, tuple[Callable[[nn.Module, Any], Tensor],
                                   Callable[[nn.Module], tuple[Tensor, Tensor | None]]]] = {
    "BERT4Rec": (_bert4rec_output, _bert4rec_items),
}


def sequence_output(model: nn.Module, interaction: Any) -> Tensor:
    """``[B, d]``: the sequence representation ``h_b`` of each prefix (the hidden state that
    scores the next item), from :data:`SEQUENCE_ENCODERS` or ``model.forward``."""
    encoder = SEQUENCE_ENCODERS.get(type(model).__name__, (_forward_output, None))[0]
    out = encoder(model, interaction)
    if out.dim() != 2:
        raise TypeError(f"{type(model).__name__}'s sequence representation has shape "
                        f"{tuple(out.shape)}, not [batch, d]: add it to SEQUENCE_ENCODERS")
    return out


def item_table(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``([n_items, d] item embeddings, [n_items] bias or None)`` of ``model``'s scores.

    Raises:
        TypeError: the model has no ``item_embedding`` table (its scores come only from
            ``full_sort_predict``, see :class:`SequenceScorer`).
    """
    table = SEQUENCE_ENCODERS.get(type(model).__name__, (None, _embedding_items))[1]
    if not isinstance(getattr(model, "item_embedding", None), nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no `item_embedding` table")
    return table(model)


class SequenceScorer:
    """Scores of a sequential model for listed items, ``s_{b,i} = h_b . e_i (+ bias_i)``.

    The first call of :meth:`check` compares ``h E^T + bias`` with the model's own
    ``full_sort_predict`` on a few rows (eval mode, no gradients); where they differ (or the
    model has no item table) every score is gathered from ``full_sort_predict`` instead
    (exact, but ``[B, n_items]`` per batch).

    Args:
        model: a RecBole sequential model.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.exact: bool | None = None  # unknown until check()

    @torch.no_grad()
    def check(self, interaction: Any, rows: int = 64) -> bool:
        """Whether the dot-product scores equal ``full_sort_predict`` (checked once)."""
        if self.exact is not None:
            return self.exact
        model, was_training = self.model, self.model.training
        model.eval()
        try:
            sub = interaction[torch.arange(min(rows, len(interaction)))]
            full = model.full_sort_predict(sub).reshape(len(sub), -1)
            try:
                mine = self.all_scores(sequence_output(model, sub))
                self.exact = bool(mine.shape == full.shape and torch.allclose(
                    mine, full.to(mine.dtype), rtol=1e-4, atol=1e-5))
            except (TypeError, AttributeError, RuntimeError) as exc:
                log.info("%s: no dot-product scorer (%s)", type(model).__name__, exc)
                self.exact = False
        finally:
            model.train(was_training)
        if not self.exact:
            log.warning("%s: scores are gathered from full_sort_predict (batch x n_items per "
                        "batch): its representation . item embeddings differs from it",
                        type(model).__name__)
        return self.exact

    def all_scores(self, hidden: Tensor) -> Tensor:
        """``[B, n_items]`` = ``hidden @ E^T (+ bias)`` (for the teacher's top-K extraction)."""
        items, bias = item_table(self.model)
        out = hidden @ items.T
        return out if bias is None else out + bias

    def scores(self, hidden: Tensor | None, interaction: Any, items: Tensor) -> Tensor:
        """``[B, n]`` scores of ``items [B, n]``, with gradients when the model has them.

        Args:
            hidden: ``[B, d]`` the batch's representations (from :func:`sequence_output`;
                unused when the scorer is not exact).
            interaction: the batch.
            items: ``[B, n]`` item ids.
        """
        if not self.exact:
            return self.model.full_sort_predict(interaction).reshape(
                items.shape[0], -1).gather(1, items)
        table, bias = item_table(self.model)
        out = torch.bmm(table[items], hidden.unsqueeze(2)).squeeze(2)
        return out if bias is None else out + bias[items]


# ============================================================================ teacher cache
#: int64 column of the training dataset's ``inter_feat`` (and so of every training batch): the
#: row's position in the training data, the row id of :class:`TeacherRowCache`.
ROW_ID_FIELD = "__row_id__"
#: the largest :class:`TeacherRowCache` built (bytes); above it the teacher runs per batch.
TEACHER_CACHE_MAX_BYTES = 2 * 1024 ** 3


def add_row_ids(dataset: Any) -> None:
    """Number the rows of a RecBole training dataset: ``inter_feat[ROW_ID_FIELD] = 0..N-1``.

    RecBole's sequential rows (one per prefix, built once by its data augmentation) are fixed;
    the training loader gathers ``dataset[index]`` per batch, so each batch carries the ids of
    its rows whatever the shuffling (rows repeated for several negatives repeat their id). The
    column is not registered in ``dataset.field2type``: no model embeds it, and the validation
    and test datasets (split before) do not have it.

    Args:
        dataset: the training dataset (``train_data.dataset``), ``N`` rows.

    Example:
        >>> add_row_ids(train_data.dataset)  # doctest: +SKIP
        >>> next(iter(train_data))[ROW_ID_FIELD][:3]  # doctest: +SKIP
        tensor([ 812, 40312,  9])
    """
    feat = dataset.inter_feat
    feat[ROW_ID_FIELD] = torch.arange(len(feat), dtype=torch.long)


@dataclass
class TeacherRowCache:
    """The frozen teacher's sequence representation of every training row.

    ``hidden[r] = h^T_r`` (:func:`sequence_output` of the teacher, eval mode, no gradients) for
    the row with ``ROW_ID_FIELD == r``. A batch's rows are gathered by their ids after checking
    that their prefixes (``item_seq``, ``item_len``) are the ones the cache was built from
    (e.g. a RecBole ``transform`` that crops or reorders sequences, or a batch of another
    dataset, is refused: :meth:`gather` returns None and the caller runs the teacher).

    Memory: ``N x d_t x 4`` bytes for ``hidden`` (float32); the prefixes are the dataset's own
    tensors on CPU (``N x (L + 1) x 8`` bytes more when the cache lives on an accelerator).

    Attributes:
        hidden: ``[N, d_t]`` teacher representations.
        item_seq: ``[N, L]`` the rows' item sequences (``teacher.ITEM_SEQ``).
        item_len: ``[N]`` their lengths (``teacher.ITEM_SEQ_LEN``).
        seconds: build time.
        hits, misses: batches gathered from the cache / refused by the prefix check.

    Example:
        >>> cache = TeacherRowCache.build(teacher, train.dataset, 1024, "cpu")  # doctest: +SKIP
        >>> h = cache.gather(batch)  # [B, d_t] == sequence_output(teacher, batch)  # doctest: +SKIP
    """

    hidden: Tensor
    item_seq: Tensor
    item_len: Tensor
    seq_field: str
    len_field: str
    seconds: float = 0.0
    hits: int = 0
    misses: int = 0

    @staticmethod
    def nbytes(n_rows: int, dim: int, seq_len: int, device: torch.device | str,
               itemsize: int = 4) -> int:
        """Bytes of a cache of ``n_rows`` rows of width ``dim`` (``itemsize`` bytes each) on
        ``device``: ``n_rows * dim * itemsize``, plus the prefixes off the CPU."""
        extra = 0 if torch.device(device).type == "cpu" else n_rows * (seq_len + 1) * 8
        return n_rows * dim * itemsize + extra

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, dataset: Any, chunk_size: int,
              device: torch.device | str) -> TeacherRowCache:
        """Run ``teacher`` (eval mode) over every row of ``dataset`` in ``chunk_size`` rows.

        Args:
            teacher: the frozen RecBole sequential teacher.
            dataset: the training dataset (rows in ``ROW_ID_FIELD`` order: its positions).
            chunk_size: rows per teacher forward.
            device: where the representations are computed and kept.
        """
        t0 = time.perf_counter()
        was_training = teacher.training
        teacher.eval()
        feat = dataset.inter_feat
        n, parts = len(feat), []
        try:
            for start in range(0, n, max(1, int(chunk_size))):
                rows = dataset[start:start + max(1, int(chunk_size))].to(device)
                parts.append(sequence_output(teacher, rows))
        finally:
            teacher.train(was_training)
        hidden = torch.cat(parts) if parts else torch.zeros(0, 0, device=device)
        seq_field, len_field = teacher.ITEM_SEQ, teacher.ITEM_SEQ_LEN
        return cls(hidden, feat[seq_field].to(device), feat[len_field].to(device), seq_field,
                   len_field, seconds=time.perf_counter() - t0)

    def gather(self, interaction: Any) -> Tensor | None:
        """``[B, d_t]`` the cached representations of the batch's rows, or None when the
        batch has no row ids or its prefixes are not the cached rows'."""
        if ROW_ID_FIELD not in interaction:
            return None
        ids = interaction[ROW_ID_FIELD].to(self.hidden.device)
        n = self.hidden.shape[0]
        ok = ids.numel() == 0 or (int(ids.min()) >= 0 and int(ids.max()) < n)
        if ok:
            seq = interaction[self.seq_field].to(self.hidden.device)
            length = interaction[self.len_field].to(self.hidden.device)
            ok = torch.equal(self.item_seq[ids], seq) and torch.equal(self.item_len[ids], length)
        if not ok:
            self.misses += 1
            return None
        self.hits += 1
        return self.hidden[ids].to(interaction[self.seq_field].device)


# ============================================================================ context
@dataclass
class SequentialContext:
    """What a sequential method may read: the models, their scorers, the item count, the
    config, and per-batch values (:class:`SequentialBatch`).

    Attributes:
        student, teacher: the trainable and the frozen RecBole sequential model.
        n_items: item ids ``0..n_items-1`` (0 is RecBole's padding item, never a soft label).
        epochs: the planned number of epochs (schedules).
        config: the experiment's RecBole config (read-only; ``seq_teacher_cache`` (bool,
            default True) turns :class:`TeacherRowCache` on or off).
        cache_max_bytes: the largest teacher cache built (default
            :data:`TEACHER_CACHE_MAX_BYTES`).
        teacher_seconds: wall time spent on the teacher so far (cache build, per-batch
            representations and top-K).
    """

    student: nn.Module
    teacher: nn.Module
    n_items: int
    epochs: int = 1
    config: Any = None

    cache_max_bytes: int = TEACHER_CACHE_MAX_BYTES

    def __post_init__(self) -> None:
        self.student_scorer = SequenceScorer(self.student)
        self.teacher_scorer = SequenceScorer(self.teacher)
        self.teacher_seconds = 0.0
        self.row_cache: TeacherRowCache | None = None
        self._rows: Any = None  # the training dataset, once its rows carry ids
        self._cache_done = False  # built, or decided against

    @property
    def cache_enabled(self) -> bool:
        """``seq_teacher_cache`` of the config (True when unset)."""
        flag = self.config["seq_teacher_cache"] if self.config is not None else None
        return True if flag is None else bool(flag)

    def attach_rows(self, dataset: Any) -> None:
        """Give the training rows ids (:func:`add_row_ids`) for the teacher cache (nothing
        when ``seq_teacher_cache`` is off)."""
        if self.cache_enabled:
            add_row_ids(dataset)
            self._rows = dataset

    def build_cache(self, probe: Any = None) -> TeacherRowCache | None:
        """Build the :class:`TeacherRowCache` once (timed in ``teacher_seconds``).

        Nothing is built when the cache is off, no training rows are attached, the teacher's
        scores are not ``h E^T (+ bias)`` (checked on ``probe``, default the first rows), or
        the cache would exceed ``cache_max_bytes`` (one warning): the teacher then runs on
        every batch.
        """
        if self._cache_done:
            return self.row_cache
        if self._rows is None:
            self._cache_done = True
            return None
        t0 = time.perf_counter()
        rows = self._rows
        if self.teacher_scorer.exact is None:
            self.teacher_scorer.check(probe if probe is not None
                                      else rows[0:64].to(self.device))
        self._cache_done = True
        if self.teacher_scorer.exact:
            n = len(rows.inter_feat)
            table = item_table(self.teacher)[0]
            dim = int(table.shape[1])
            seq_len = int(rows.inter_feat[self.teacher.ITEM_SEQ].shape[1])
            need = TeacherRowCache.nbytes(n, dim, seq_len, self.device, table.element_size())
            if need > self.cache_max_bytes:
                warnings.warn(f"the teacher cache would take {need / 2 ** 20:.0f} MiB "
                              f"({n} rows x {dim}) > {self.cache_max_bytes / 2 ** 20:.0f} MiB: "
                              "the teacher runs on every batch instead", stacklevel=2)
            else:
                self.row_cache = TeacherRowCache.build(self.teacher, rows, self.chunk_size,
                                                       self.device)
                log.info("teacher cache: %d rows x %d (%.1f MiB) in %.1f s", n, dim,
                         need / 2 ** 20, self.row_cache.seconds)
        self.teacher_seconds += time.perf_counter() - t0
        return self.row_cache

    def teacher_hidden(self, interaction: Any) -> Tensor:
        """``[B, d_t]`` the teacher's representations of the batch's rows: gathered from the
        cache when it has them, else a forward of the teacher (no gradients)."""
        cache = self.build_cache(interaction)
        hidden = cache.gather(interaction) if cache is not None else None
        if hidden is None:
            if cache is not None and cache.misses == 1:
                log.warning("a training batch's rows are not the cached teacher rows (ids or "
                            "prefixes differ): the teacher runs on such batches")
            with torch.no_grad():
                hidden = sequence_output(self.teacher, interaction)
        return hidden

    @property
    def chunk_size(self) -> int:
        """Rows per block of the teacher's top-K extraction (``softlabel_chunk_size``)."""
        cfg = self.config
        return int((cfg["softlabel_chunk_size"] if cfg is not None else None) or 1024)

    def teacher_topk(self, interaction: Any, hidden: Tensor | None, k: int) -> Any:
        """The teacher's top-``k`` next items of each row (:class:`recsys.softlabels.TopK`,
        rows = batch rows), padding item masked, streamed over ``chunk_size`` rows."""
        from recsys.softlabels import teacher_topk

        scorer = self.teacher_scorer
        if scorer.exact:
            def score_fn(rows: Tensor) -> Tensor:
                return scorer.all_scores(hidden[rows])
        else:
            def score_fn(rows: Tensor) -> Tensor:
                return self.teacher.full_sort_predict(interaction[rows]).reshape(rows.numel(), -1)
        rows = torch.arange(len(interaction), device=self.device)
        return teacher_topk(score_fn, rows, self.n_items, min(k, self.n_items - 1),
                            exclude=None, padding_item=0, chunk_size=self.chunk_size,
                            device=self.device)

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    def batch(self, interaction: Any, topk: int) -> SequentialBatch:
        """The per-batch values of ``interaction``: both representations and (``topk > 0``)
        the teacher's top-``topk`` of each row (the teacher's representations from the
        :class:`TeacherRowCache` when there is one, built on the first call if
        :meth:`build_cache` was not called before)."""
        self.student_scorer.check(interaction)
        self.teacher_scorer.check(interaction)
        if self.teacher_scorer.exact and not self._cache_done:
            self.build_cache(interaction)  # timed in teacher_seconds
        t0 = time.perf_counter()
        with torch.no_grad():
            t_hidden = self.teacher_hidden(interaction) if (
                self.teacher_scorer.exact) else None
            top = self.teacher_topk(interaction, t_hidden, topk) if topk > 0 else None
        self.teacher_seconds += time.perf_counter() - t0
        s_hidden = sequence_output(self.student, interaction) if (
            self.student_scorer.exact) else None
        return SequentialBatch(self, interaction, s_hidden, t_hidden, top)


@dataclass
class SequentialBatch:
    """One training batch as the methods see it.

    Attributes:
        ctx: the run's :class:`SequentialContext`.
        interaction: the RecBole batch (``B`` prefixes).
        student_hidden: ``[B, d_s]`` student representations (with gradients; None when the
            student's scores come from ``full_sort_predict``).
        teacher_hidden: ``[B, d_t]`` teacher representations (no gradients; None when the
            teacher's scores come from ``full_sort_predict``).
        top: the teacher's top-K (``indices``/``scores`` ``[B, K]``) or None.
    """

    ctx: SequentialContext
    interaction: Any
    student_hidden: Tensor | None
    teacher_hidden: Tensor | None
    top: Any

    @property
    def rows(self) -> int:
        return len(self.interaction)

    def student_scores(self, items: Tensor) -> Tensor:
        """``[B, n]`` student scores of ``items`` (with gradients)."""
        return self.ctx.student_scorer.scores(self.student_hidden, self.interaction, items)

    @torch.no_grad()
    def teacher_scores(self, items: Tensor) -> Tensor:
        """``[B, n]`` teacher scores of ``items`` (no gradients)."""
        return self.ctx.teacher_scorer.scores(self.teacher_hidden, self.interaction, items)

    def require_hidden(self, method: str) -> tuple[Tensor, Tensor]:
        """``(student_hidden, teacher_hidden)``, for the hidden-state methods.

        Raises:
            TypeError: a model whose ``representation . item embeddings`` is not its score
                (:class:`SequenceScorer`): its hidden state is not known here.
        """
        for model, hidden in ((self.ctx.student, self.student_hidden),
                              (self.ctx.teacher, self.teacher_hidden)):
            if hidden is None:
                raise TypeError(f"{method} needs the sequence representation of "
                                f"{type(model).__name__}, which has none usable (add it to "
                                "recsys.recbole.sequential.SEQUENCE_ENCODERS)")
        return self.student_hidden, self.teacher_hidden


# ============================================================================ methods
def build_sequential_method(name: str, ctx: SequentialContext,
                            params: dict[str, Any]) -> SequentialMethod:
    """Instantiate sequential method ``name`` with hyperparameters ``params``.

    Raises:
        ValueError: unknown method (the message lists the valid ones) or hyperparameter.
    """
    cls = SEQUENTIAL_METHODS.get(name)
    unknown = set(params) - set(cls.defaults)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for sequential method "
                         f"{cls.name!r}; valid: {sorted(cls.defaults)}")
    return cls(ctx, {**cls.defaults, **params})


class SequentialMethod(nn.Module):
    """Base adapter of a sequential method: ``loss_cls`` (a :mod:`recsys.losses` module) built
    from ``params``; ``defaults`` = the loss's constructor defaults (``reduction="mean"``) +
    ``extra_defaults``.

    Args:
        ctx: the run's :class:`SequentialContext`.
        params: the method's hyperparameters (``defaults`` overridden by the user).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    loss_cls: ClassVar[type] = nn.Module
    loss_skip: ClassVar[tuple[str, ...]] = ()
    extra_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.loss_cls is not nn.Module:
            cls.defaults = {**loss_defaults(cls.loss_cls, cls.loss_skip), "reduction": "mean",
                            **cls.extra_defaults}

    def __init__(self, ctx: SequentialContext, params: dict[str, Any],
                 **loss_kwargs: Any) -> None:
        super().__init__()
        object.__setattr__(self, "ctx", ctx)  # plain attribute: not a submodule
        self.params = dict(params)
        seed = ctx.config["seed"] if ctx.config is not None else 0
        self.generator = torch.Generator().manual_seed(int(seed or 0))
        self.epoch = 0
        if self.loss_cls is not nn.Module:
            self.loss = self.loss_cls(**_split(self.params, self.loss_cls, self.loss_skip),
                                      **loss_kwargs)

    @property
    def topk(self) -> int:
        """Teacher top-K length needed per row (0: none)."""
        return 0

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (schedules)."""
        self.epoch = epoch
        if hasattr(self, "loss") and hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch, self.ctx.epochs)

    def sample_items(self, batch: SequentialBatch, n: int, *, replacement: bool = False,
                     exclude_top: bool = True) -> Tensor:
        """``[B, n]`` items per row, uniform over the non-padding items (outside the row's
        teacher top-K when ``exclude_top``), drawn with this method's seeded generator."""
        rows = torch.arange(batch.rows, device=self.ctx.device)
        excl = batch.top.indices if exclude_top and batch.top is not None else None
        return uniform_items(rows, self.ctx.n_items, n, exclude_topk=excl,
                             replacement=replacement, generator=self.generator)

    def forward(self, batch: SequentialBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@register("none")
class SeqNone(SequentialMethod):
    """No distillation term (the student trained alone inside the wrapper)."""

    def forward(self, batch: SequentialBatch) -> Tensor:
        return torch.zeros((), device=self.ctx.device)


@register("rd")
class SeqRD(SequentialMethod):
    """RD per prefix: ``-log sigmoid`` of the student's scores of the teacher's top-``k``,
    position weights; from ``dynamic_start_epoch`` on, rank-discrepancy weights estimated from
    ``num_dynamic_samples`` items per row sampled uniformly (with replacement)."""

    loss_cls = RD
    loss_skip = ("num_items",)

    def __init__(self, ctx: SequentialContext, params: dict[str, Any]) -> None:
        super().__init__(ctx, params, num_items=ctx.n_items)

    @property
    def topk(self) -> int:
        return int(self.loss.k)

    def forward(self, batch: SequentialBatch) -> Tensor:
        scores = batch.student_scores(batch.top.indices)
        sampled = None
        if self.loss.dynamic:
            items = self.sample_items(batch, int(self.loss.num_dynamic_samples),
                                      replacement=True, exclude_top=False)
            with torch.no_grad():
                sampled = batch.student_scores(items)
        return self.loss(scores, sampled)


@register("rrd")
class SeqRRD(SequentialMethod):
    """RRD per prefix: ``k`` interesting items from the teacher's top-``m`` (rank-aware,
    ``temperature=None``: uniform; kept in teacher order) above ``l`` items uniform outside the
    top-``m``: relaxed Plackett-Luce, mean over the rows."""

    loss_cls = RRD

    @property
    def topk(self) -> int:
        return int(self.loss.m)

    def forward(self, batch: SequentialBatch) -> Tensor:
        top = batch.top
        k = min(int(self.loss.k), top.k)
        pos = rank_aware_sample(batch.rows, top.k, k, temperature=self.loss.temperature,
                                generator=self.generator)
        interesting = top.indices.gather(1, pos.to(top.indices.device))
        boring = self.sample_items(batch, int(self.loss.l))
        scores = batch.student_scores(torch.cat([interesting, boring], 1))
        return self.loss(*scores.split([k, boring.shape[1]], dim=1))


@register("kd")
class SeqKD(SequentialMethod):
    """Softmax KD per prefix over the teacher's top-``k`` and ``num_samples`` items sampled
    uniformly outside it, temperature ``tau`` (:class:`recsys.losses.SampledKD`)."""

    loss_cls = SampledKD

    @property
    def topk(self) -> int:
        return int(self.loss.k)

    def forward(self, batch: SequentialBatch) -> Tensor:
        top, n = batch.top, int(self.loss.num_samples)
        if n == 0:
            return self.loss(batch.student_scores(top.indices), top.scores)
        sampled = self.sample_items(batch, n)
        s = batch.student_scores(torch.cat([top.indices, sampled], 1))
        return self.loss(s[:, :top.k], top.scores, s[:, top.k:], batch.teacher_scores(sampled))


class _HiddenAdapter(SequentialMethod):
    """Adapters on the sequence representations: built for the two widths."""

    def __init__(self, ctx: SequentialContext, params: dict[str, Any]) -> None:
        dims = _hidden_dims(ctx)
        super().__init__(ctx, params, student_dim=dims[0], teacher_dim=dims[1])


def _hidden_dims(ctx: SequentialContext) -> tuple[int, int]:
    """(student, teacher) width of the sequence representation (from the item tables)."""
    out = []
    for model in (ctx.student, ctx.teacher):
        try:
            out.append(int(item_table(model)[0].shape[1]))
        except TypeError as exc:
            raise TypeError(f"hidden-state distillation needs the representation width: {exc}"
                            ) from None
    return out[0], out[1]


@register("hidden")
class SeqHidden(_HiddenAdapter):
    """Hidden-state distillation: a trainable projector ``d_s -> d_t`` and the squared error
    to the teacher's sequence representation, mean over the rows
    (:class:`recsys.losses.HiddenStateKD`)."""

    loss_cls = HiddenStateKD
    loss_skip = ("student_dim", "teacher_dim")

    def forward(self, batch: SequentialBatch) -> Tensor:
        return self.loss(*batch.require_hidden("hidden"))


@register("de")
class SeqDE(_HiddenAdapter):
    """DE on the sequence representations: ``num_experts`` experts ``d_s -> d_t`` selected per
    row by a Gumbel-softmax on the teacher's representation, temperature annealed from
    ``t_start`` to ``t_end`` over ``anneal_epochs`` (None: the run's epochs); mean over rows
    (:class:`recsys.losses.DistillationExperts`)."""

    loss_cls = DistillationExperts
    loss_skip = ("student_dim", "teacher_dim", "hidden_dim")
    extra_defaults = {"anneal_epochs": None}

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        horizon = self.params.get("anneal_epochs") or self.ctx.epochs
        self.loss.set_epoch(epoch, int(horizon))

    def forward(self, batch: SequentialBatch) -> Tensor:
        return self.loss(*batch.require_hidden("de"), generator=self.generator,
                         reduction=self.params["reduction"])


# ============================================================================ the RecBole model
def student_loss_type(student: str, student_config: dict[str, Any] | None) -> str:
    """The student's ``loss_type`` (``student_config`` over RecBole's YAML; ``CE`` if none)."""
    cfg = student_config or {}
    return str(cfg.get("loss_type") or model_defaults(student).get("loss_type") or "CE")


def sequential_config(student: str, student_config: dict[str, Any],
                      config_dict: dict[str, Any]) -> dict[str, Any]:
    """``config_dict`` with the wrapper's ``loss_type`` = the student's: RecBole's ``Config``
    and data loaders read it to choose the training rows' negatives (none for ``CE``)."""
    return {**config_dict, "loss_type": student_loss_type(student, student_config)}


class SequentialDistillRecommender(FrozenTeacherWrapper, SequentialRecommender):
    """Student + frozen teacher + one sequential method, as a RecBole sequential model.

    ``calculate_loss = student.calculate_loss + distill_weight * method(batch)``;
    ``predict`` / ``full_sort_predict`` delegate to the student. The teacher is held outside the
    module tree (not in ``state_dict()`` or ``parameters()``), in eval mode, without gradients.

    Config keys: as :class:`~recsys.recbole.model.DistillRecommender` (``student``,
    ``student_config``, ``teacher_checkpoint``, ``distill_method``, ``distill_weight``,
    ``distill_params``, ``softlabel_chunk_size``), plus ``loss_type`` = the student's
    (:func:`sequential_config` sets it) and ``seq_teacher_cache`` (bool, default True: the
    teacher's representation of every training row computed once, :class:`TeacherRowCache`;
    ``dataset`` -- RecBole's ``train_data.dataset`` -- gets the :data:`ROW_ID_FIELD` column).

    Attributes:
        student: the trainable RecBole sequential model (``student.*`` in the state).
        distill: the method (``distill.*``; the hidden-state projectors are trainable).
        softlabel_seconds: wall time spent in the teacher (cache build, representations,
            top-K) so far.
    """

    type = ModelType.SEQUENTIAL

    def __init__(self, config: Any, dataset: Any, teacher: nn.Module | None = None) -> None:
        super().__init__(config, dataset)
        student_name = config["student"]
        if not student_name:
            raise ValueError("config['student'] is not set: name the student RecBole model, "
                             "e.g. config_dict={'student': 'SASRec', 'student_config': "
                             "{'hidden_size': 16}}")
        student_config = dict(config["student_config"] or {})
        loss = student_loss_type(student_name, student_config)
        if str(config["loss_type"]) != loss:
            raise ValueError(f"config['loss_type']={config['loss_type']!r} but the student "
                             f"{student_name} trains with {loss!r}: build the config with "
                             "recsys.recbole.sequential.sequential_config")
        self.student = build_recbole_model(student_name, config, dataset, student_config)
        if teacher is None:
            path = config["teacher_checkpoint"]
            if not path:
                raise ValueError("no teacher: pass teacher=<model> or set "
                                 "config['teacher_checkpoint'] to a teacher state file")
            teacher, _ = load_model(path, config, dataset)
        if model_type_name(type(teacher)) != "SEQUENTIAL":
            raise ValueError(f"the teacher {type(teacher).__name__} is not a sequential model: "
                             "a sequential student needs a sequential teacher")
        if teacher.n_items != self.n_items:
            raise ValueError(f"the teacher has {teacher.n_items} items but the dataset has "
                             f"{self.n_items}: train the teacher on this dataset")
        teacher = teacher.to(self.device)
        teacher.eval()
        teacher.requires_grad_(False)
        self._frozen = (teacher,)  # a tuple: not a registered submodule
        self.ctx = SequentialContext(student=self.student, teacher=teacher,
                                     n_items=self.n_items, epochs=int(config["epochs"]),
                                     config=config)
        self.distill = build_sequential_method(config["distill_method"], self.ctx,
                                               config["distill_params"] or {})
        self.distill_weight = float(config["distill_weight"])
        if self.distill_weight != 0.0:
            self.ctx.attach_rows(dataset)  # after the models: none of them sees the column
        self._prepared = False

    @property
    def softlabel_seconds(self) -> float:
        return self.ctx.teacher_seconds

    def prepare(self, cache_dir: str | None = None) -> None:
        """Build the teacher's per-row cache (:meth:`SequentialContext.build_cache`; in
        memory, ``cache_dir`` is unused); its top-K is computed per batch from it."""
        if not self._prepared and self.distill_weight != 0.0:
            self.ctx.build_cache()
        self._prepared = True

    def distill_term(self, interaction: Any) -> Tensor:
        return self.distill(self.ctx.batch(interaction, self.distill.topk))


def sequential_model_class(student: str) -> type[SequentialDistillRecommender]:
    """The wrapper class to give RecBole's ``Config`` for a sequential ``student``.

    Raises:
        ValueError: ``student`` is not a RecBole sequential recommender.
    """
    cls = model_class(student)
    if model_type_name(cls) != "SEQUENTIAL":
        raise ValueError(f"{student} is a {model_type_name(cls)} model, not a sequential "
                         "recommender")
    return SequentialDistillRecommender
