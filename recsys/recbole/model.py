"""``DistillRecommender``: a RecBole general recommender that distils a frozen teacher into any
RecBole general recommender (the student).

``calculate_loss = student.calculate_loss + distill_weight * method(batch)``;
``predict`` / ``full_sort_predict`` delegate to the student. The teacher is held outside the module
tree (not in ``state_dict()``, not in ``parameters()`` hence not in the optimizer), stays in eval
mode whatever ``train()`` is called with, has ``requires_grad=False`` and follows ``.to(device)``.

Config keys (defaults in ``recsys/recbole/defaults.yaml`` and ``<method>.yaml``):

* ``student`` (str) and ``student_config`` (dict): the student's RecBole model name and its own
  hyperparameters (e.g. ``{"embedding_size": 20}``) over RecBole's YAML defaults for it.
* ``teacher_checkpoint`` (str): a state file (:func:`recsys.recbole.zoo.save_model_state`) or a
  RecBole checkpoint; or pass ``teacher=`` to the constructor.
* ``distill_method`` (str), ``distill_weight`` (float, the lambda), ``distill_params`` (dict of the
  method's hyperparameters), ``softlabel_k`` (int or None: the method's own default),
  ``softlabel_cache_dir`` (str or None), ``softlabel_chunk_size`` (int), ``softlabel_mmap``
  (bool: keep the soft labels in memory-mapped files, computed once and shared by all processes;
  always on in RecBole's multi-process mode).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType
from torch import Tensor, nn

from recsys.recbole.context import DistillContext
from recsys.recbole.methods import build_method
from recsys.recbole.zoo import build_recbole_model, load_model, model_class

__all__ = ["DistillRecommender", "FrozenTeacherWrapper", "distill_model_class"]

log = logging.getLogger(__name__)


class FrozenTeacherWrapper:
    """What every distillation wrapper shares (mixed in before the RecBole base class).

    The wrapper holds ``self.student`` (trainable), ``self._frozen = (teacher,)`` (outside the
    module tree), ``self.distill`` (the method), ``self.distill_weight`` and ``self.ctx`` (with
    the run's ``config``); subclasses give :meth:`distill_term` (the method's loss on a batch).
    """

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (not part of this module's state or parameters)."""
        return self._frozen[0]

    def train(self, mode: bool = True) -> Any:
        super().train(mode)
        self.teacher.eval()
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_frozen"):
            self.teacher._apply(fn, *args, **kwargs)
        return self

    @property
    def prepared(self) -> bool:
        return self._prepared

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch resampling / schedules of the method (called by the trainer)."""
        self.distill.on_epoch_start(epoch)

    def checkpoint_extras(self) -> dict[str, Any]:
        """Entries added to the trainer's checkpoint (what ``load_student`` needs)."""
        from recsys.recbole.zoo import _plain

        cfg = self.ctx.config
        return {"student": str(cfg["student"]),
                "student_config": _plain(dict(cfg["student_config"] or {})),
                "distill_method": self.distill.name}

    def distill_term(self, interaction: Any) -> Tensor:  # pragma: no cover - abstract
        """The method's (unweighted) distillation loss on a training batch."""
        raise NotImplementedError

    # ------------------------------------------------------------------ RecBole API
    def calculate_loss(self, interaction: Any) -> tuple[Tensor, Tensor]:
        """``(student loss, distill_weight * distillation loss)`` (RecBole sums the tuple)."""
        own = self.student.calculate_loss(interaction)
        if isinstance(own, tuple):
            own = sum(own)
        if self.distill_weight == 0.0:
            return own, own.new_zeros(())
        return own, self.distill_weight * self.distill_term(interaction)

    def predict(self, interaction: Any) -> Tensor:
        return self.student.predict(interaction)

    def full_sort_predict(self, interaction: Any) -> Tensor:
        return self.student.full_sort_predict(interaction)

    def other_parameter(self) -> Any:
        return self.student.other_parameter()

    def load_other_parameter(self, para: Any) -> None:
        self.student.load_other_parameter(para)


class DistillRecommender(FrozenTeacherWrapper, GeneralRecommender):
    """Student + frozen teacher + one distillation method, as a RecBole model.

    Args:
        config: the experiment's RecBole ``Config`` (see the module docstring for the keys).
        dataset: the training dataset (``train_data.dataset``).
        teacher: a trained RecBole model on the same dataset; default: loaded from
            ``config["teacher_checkpoint"]``.

    Attributes:
        student: the trainable RecBole model (its parameters are this module's ``student.*``).
        distill: the method module (``distill.*``; some methods have trainable parts, e.g. DE).
        softlabel_seconds: wall time of the teacher top-K extraction (0 when loaded from cache).
    """

    input_type = InputType.PAIRWISE
    type = ModelType.GENERAL

    def __init__(self, config: Any, dataset: Any, teacher: nn.Module | None = None) -> None:
        super().__init__(config, dataset)
        student_name = config["student"]
        if not student_name:
            raise ValueError("config['student'] is not set: name the student RecBole model, "
                             "e.g. config_dict={'student': 'BPR', 'student_config': "
                             "{'embedding_size': 20}}")
        self.student = build_recbole_model(student_name, config, dataset,
                                           config["student_config"] or {})
        if teacher is None:
            path = config["teacher_checkpoint"]
            if not path:
                raise ValueError("no teacher: pass teacher=<model> or set "
                                 "config['teacher_checkpoint'] to a teacher state file or a "
                                 "RecBole checkpoint")
            teacher, _ = load_model(path, config, dataset)
        if getattr(teacher, "n_items", self.n_items) != self.n_items or getattr(
                teacher, "n_users", self.n_users) != self.n_users:
            raise ValueError(
                f"the teacher has {teacher.n_users} users / {teacher.n_items} items but the "
                f"dataset has {self.n_users} / {self.n_items}: train the teacher on this dataset")
        teacher = teacher.to(self.device)
        teacher.eval()
        teacher.requires_grad_(False)
        self._frozen = (teacher,)  # a tuple: not a registered submodule

        from recsys.softlabels import as_history

        inter = dataset.inter_matrix(form="csr")
        history = as_history(inter, self.n_items).to(self.device)
        popularity = torch.from_numpy(
            (inter > 0).sum(axis=0).A1.astype("float32")).to(self.device)
        self.ctx = DistillContext(
            student=self.student, teacher=teacher, user_field=self.USER_ID,
            item_field=self.ITEM_ID, neg_item_field=self.NEG_ITEM_ID, n_users=self.n_users,
            n_items=self.n_items, history=history, item_popularity=popularity,
            epochs=int(config["epochs"]), config=config)
        self.distill = build_method(config["distill_method"], self.ctx,
                                    config["distill_params"] or {})
        self.distill_weight = float(config["distill_weight"])
        self.softlabel_seconds = 0.0
        self._prepared = False

    # ------------------------------------------------------------------ device
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DistillRecommender:
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_frozen"):
            self.ctx.item_popularity = fn(self.ctx.item_popularity)
            self.ctx.history = self.ctx.history.to(self.ctx.item_popularity.device)
            if self.ctx.soft_labels is not None:
                self.ctx.soft_labels = self.ctx.soft_labels.to(self.ctx.item_popularity.device)
        return self

    # ------------------------------------------------------------------ soft labels
    def prepare(self, cache_dir: str | None = None) -> None:
        """Run the teacher once: its top-K soft labels (computed, or loaded from ``cache_dir``)
        when the method needs them, then the method's own teacher-side setup
        (:meth:`~recsys.recbole.methods.DistillMethod.on_soft_labels`). Row ``u`` of the soft
        labels is user id ``u`` (row 0 is RecBole's padding user). The wall time is
        ``softlabel_seconds``.
        """
        if self._prepared:
            return
        t0 = time.perf_counter()
        top = self._soft_labels(cache_dir) if self.distill.topk > 0 else None
        self.ctx.soft_labels = top
        with torch.no_grad():
            self.distill.on_soft_labels(top)
        self.softlabel_seconds = time.perf_counter() - t0
        self._prepared = True

    def _soft_labels(self, cache_dir: str | None) -> Any:
        from recsys.softlabels import (
            ExtractionSettings,
            cached_teacher_topk,
            score_fn_key,
            shared_teacher_topk,
            teacher_topk,
        )

        hist = self.ctx.history
        longest = int(hist.counts.max()) if self.distill.mask_history else 0
        k = min(self.distill.topk, self.n_items - 1 - longest)
        if k < self.distill.topk:
            log.warning("soft-label K reduced from %d to %d: a user has %d training items of %d",
                        self.distill.topk, k, longest, self.n_items - 1)
        if k < 1:
            raise ValueError("no unobserved items left for some user: the dataset is too small "
                             "for ranking distillation")
        cfg = self.ctx.config
        cache = cache_dir or cfg["softlabel_cache_dir"]
        users = torch.arange(self.n_users, device=self.device)
        score_fn = self.ctx.teacher_full_scores
        # the scores are the teacher class's full_sort_predict through DistillContext.full_scores:
        # key the cache on both classes' code (the weights are keyed separately)
        score_key = "recbole-full-sort|" + score_fn_key(
            (score_fn, type(self.ctx).full_scores, type(self.teacher)))
        settings = ExtractionSettings(
            k=k, exclude=hist if self.distill.mask_history else None,
            chunk_size=int(cfg["softlabel_chunk_size"] or 1024), device=self.device,
            score_key=score_key)
        shared = not cfg["single_spec"] or bool(cfg["softlabel_mmap"])
        with torch.no_grad():
            if shared:  # computed once over the ranks, mapped zero-copy by each
                directory = cache or str(Path(cfg["checkpoint_dir"]) / "softlabels")
                top = shared_teacher_topk(directory, self.teacher, score_fn, users,
                                          self.n_items, settings=settings)
                return top.to(self.device)  # no copy on CPU: the maps stay zero-copy
            if cache:
                return cached_teacher_topk(cache, self.teacher, score_fn, users, self.n_items,
                                           settings=settings)
            return teacher_topk(score_fn, users, self.n_items, settings=settings)

    def distill_term(self, interaction: Any) -> Tensor:
        return self.distill(interaction)


def distill_model_class(student: str) -> type[DistillRecommender]:
    """The ``DistillRecommender`` class to give RecBole's ``Config`` for ``student``.

    RecBole's data loaders depend on the model's ``input_type`` (pairwise for BPR-style models,
    pointwise with labels for NeuMF/DMF-style ones): the returned subclass copies the student's.
    """
    cls = model_class(student)
    if cls.input_type == DistillRecommender.input_type:
        return DistillRecommender
    return type("DistillRecommender", (DistillRecommender,), {
        "input_type": cls.input_type, "__module__": __name__,
        "__doc__": DistillRecommender.__doc__})
