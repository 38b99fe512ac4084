"""RecBole trainers with checkpoints that work on torch >= 2.6, and the distillation trainer.

:class:`SafeCheckpointMixin` replaces RecBole's checkpoint format (a pickled ``Config``, refused by
``torch.load`` on torch >= 2.6) with tensors and numbers only, so that
``Trainer.evaluate(load_best_model=True)``, ``resume_checkpoint`` and users' own
``torch.load(path, weights_only=True)`` all work. For a :class:`DistillRecommender` the state is the
student's (``student.*``) plus trainable method parts (``distill.*``); the teacher is never saved.

Checkpoint format (``CHECKPOINT_FORMAT``)::

    {"format", "model", "epoch", "cur_step", "best_valid_score", "state_dict",
     "other_parameter", "optimizer"}

:class:`DistillTrainer` adds, around RecBole's own ``fit`` loop: the teacher's soft labels before
the first epoch and ``model.on_epoch_start(epoch)`` before each epoch (resampling, temperature
annealing). Both record each epoch's training wall time in ``epoch_seconds`` and its CPU time
(this process, all threads) in ``epoch_cpu_seconds`` (less sensitive to other jobs on a shared
machine).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from recbole.trainer import Trainer
from recbole.utils import get_trainer

from graphkd.fileio import atomic_torch_save
from recsys.recbole.compat import tensorboard_redirect
from recsys.recbole.distributed import GlobalEvaluator, broadcast_object, sampler_indices

__all__ = ["CHECKPOINT_FORMAT", "SafeCheckpointMixin", "SafeTrainer", "DistillTrainer",
           "safe_trainer_class", "load_trainer_checkpoint"]

CHECKPOINT_FORMAT = "graphkd.recbole.checkpoint/1"


def _number(x: Any) -> float | int:
    if isinstance(x, torch.Tensor):
        return x.item()
    return int(x) if isinstance(x, int) else float(x)


def _loadable_others(other: Any) -> Any:
    """RecBole's ``other_parameter()`` without what ``weights_only`` loading refuses: tensors
    and plain values are kept (Pop's item counts); others (ItemKNN's scipy similarity
    matrices) are left out -- the model's constructor rebuilds them from the dataset."""
    if not isinstance(other, dict):
        return other
    plain = (torch.Tensor, bool, int, float, str, type(None))
    return {k: v for k, v in other.items() if isinstance(v, plain)}


def load_trainer_checkpoint(path: str | os.PathLike,
                            map_location: Any = "cpu") -> dict[str, Any]:
    """Load a RecBole trainer checkpoint written by :class:`SafeCheckpointMixin`
    (``weights_only=True``). Not :func:`graphkd.train.load_checkpoint`, which reads graphkd's
    own training checkpoints.

    Raises:
        FileNotFoundError: no file.
        ValueError: not such a checkpoint (e.g. a RecBole one: see
            :func:`recsys.recbole.compat.load_recbole_checkpoint`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported with the fix
        raise ValueError(f"{path} is not a graphkd checkpoint loadable with weights_only=True "
                         f"({type(exc).__name__}); RecBole's own checkpoints load with "
                         "recsys.recbole.compat.load_recbole_checkpoint") from exc
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return ck


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Deprecated alias of :func:`load_trainer_checkpoint`."""
    warnings.warn("recsys.recbole.trainer.load_checkpoint is deprecated: use "
                  "load_trainer_checkpoint (graphkd.train.load_checkpoint is another format).",
                  DeprecationWarning, stacklevel=2)
    return load_trainer_checkpoint(path, map_location)


class SafeCheckpointMixin:
    """Mix into any RecBole ``Trainer`` subclass: torch >= 2.6-safe checkpoints, no
    ``./log_tensorboard`` unless ``config["tensorboard_dir"]`` is set, per-epoch timing."""

    _count = 0

    def __init__(self, config: Any, model: Any) -> None:
        # RecBole's ensure_dir (exists-then-makedirs) races when several ranks start together
        Path(config["checkpoint_dir"]).mkdir(parents=True, exist_ok=True)
        with tensorboard_redirect(config["tensorboard_dir"]):
            super().__init__(config, model)
        # RecBole names checkpoints by the second: make the name unique per trainer
        SafeCheckpointMixin._count += 1
        stem = Path(self.saved_model_file).stem
        self.saved_model_file = str(Path(self.checkpoint_dir) / (
            f"{stem}-{os.getpid()}-{SafeCheckpointMixin._count}.pth"))
        if self.distributed:  # rank 0 writes it, every rank reads it back
            self.saved_model_file = broadcast_object(self.saved_model_file)
            self.evaluator = GlobalEvaluator(self.evaluator)
        self.epoch_seconds: list[float] = []
        self.epoch_cpu_seconds: list[float] = []
        #: one ``{"epoch", "score", "result"}`` per validation (the validation curve)
        self.valid_curve: list[dict[str, Any]] = []

    def _train_epoch(self, train_data: Any, epoch_idx: int, loss_func: Any = None,
                     show_progress: bool = False) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        self._before_epoch(epoch_idx)
        out = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                   show_progress=show_progress)
        self.epoch_seconds.append(time.perf_counter() - t0)
        self.epoch_cpu_seconds.append(time.process_time() - c0)
        return out

    def _before_epoch(self, epoch_idx: int) -> None:
        """Hook run before each training epoch, inside the timed span."""

    def _valid_epoch(self, valid_data: Any, *args: Any, **kwargs: Any) -> Any:
        """RecBole's validation, recorded in ``valid_curve`` (epoch = epochs trained - 1)."""
        score, result = super()._valid_epoch(valid_data, *args, **kwargs)
        self.valid_curve.append({"epoch": len(self.epoch_seconds) - 1, "score": float(score),
                                 "result": {k: float(v) for k, v in dict(result).items()}})
        return score, result

    @property
    def distributed(self) -> bool:
        """Whether this trainer runs in RecBole's multi-process mode."""
        return not self.config["single_spec"]

    def _save_checkpoint(self, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        if self.distributed and self.config["local_rank"] != 0:
            return
        path = Path(kwargs.pop("saved_model_file", self.saved_model_file))
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": str(self.config["model"]),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": _number(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": _loadable_others(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
        }
        extras = getattr(self.model, "checkpoint_extras", None)
        if extras is not None:
            state.update(extras())
        atomic_torch_save(state, path)  # unique temp file + fsync + os.replace
        if verbose:
            self.logger.info(f"Saving current: {path}")

    def resume_checkpoint(self, resume_file: str | os.PathLike) -> None:
        ck = load_trainer_checkpoint(resume_file, map_location=self.device)
        self.saved_model_file = str(resume_file)
        self.start_epoch = ck["epoch"] + 1
        self.cur_step = ck["cur_step"]
        self.best_valid_score = ck["best_valid_score"]
        self.model.load_state_dict(ck["state_dict"])
        self.model.load_other_parameter(ck.get("other_parameter"))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_best(self, model_file: str | os.PathLike | None = None) -> None:
        """Load the saved (best) weights into the model."""
        ck = load_trainer_checkpoint(model_file or self.saved_model_file, map_location=self.device)
        self.model.load_state_dict(ck["state_dict"])
        self.model.load_other_parameter(ck.get("other_parameter"))

    def evaluate(self, eval_data: Any, load_best_model: bool = True, model_file: Any = None,
                 show_progress: bool = False) -> Any:
        """RecBole's evaluate; ``load_best_model=True`` loads our checkpoint safely first.

        In multi-process mode the checkpoint is read after every rank arrives (rank 0 wrote
        it), and full-sort metrics are computed once over all ranks' users
        (:class:`~recsys.recbole.distributed.GlobalEvaluator`): equal to one process.
        """
        if not eval_data:
            return None
        if load_best_model:
            if self.distributed:
                torch.distributed.barrier()
            self.load_best(model_file)
        if self.distributed:
            self.evaluator.indices = sampler_indices(eval_data)
            self.evaluator.total = int(eval_data.sample_size)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _map_reduce(self, result: Any, num_sample: int) -> Any:
        if isinstance(self.evaluator, GlobalEvaluator) and self.evaluator.gathered:
            return result  # already over every rank's users
        return super()._map_reduce(result, num_sample)


class SafeTrainer(SafeCheckpointMixin, Trainer):
    """RecBole's basic ``Trainer`` with safe checkpoints."""


def safe_trainer_class(model_name: str, model_type: Any) -> type:
    """RecBole's trainer for ``model_name`` (``get_trainer``) with safe checkpoints mixed in."""
    base = get_trainer(model_type, model_name)
    if issubclass(base, SafeCheckpointMixin):
        return base
    if base is Trainer:
        return SafeTrainer
    return type(f"Safe{base.__name__}", (SafeCheckpointMixin, base), {})


class DistillTrainer(SafeTrainer):
    """Trainer of a :class:`~recsys.recbole.model.DistillRecommender`.

    Before the first epoch it makes sure the teacher's soft labels exist
    (``model.prepare()``); before each epoch it calls ``model.on_epoch_start(epoch)``.
    """

    def fit(self, train_data: Any, valid_data: Any = None, verbose: bool = True,
            saved: bool = True, show_progress: bool = False, callback_fn: Any = None) -> Any:
        self.model.prepare()
        return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                           show_progress=show_progress, callback_fn=callback_fn)

    def _before_epoch(self, epoch_idx: int) -> None:
        self.model.on_epoch_start(epoch_idx)
