"""How the pipeline builds and trains a model from a config (teacher and students alike).

* **Models** by name: :data:`MODEL_FACTORIES` (``factory(num_features=, num_classes=,
  **kwargs)``, filled by :func:`register_model`) first, then :func:`graphkd.models.build_model`'s
  presets and architectures (:func:`model_from_config`).
* **Task loss** (:class:`TaskLoss`): cross-entropy for class logits, BCE for one logit, NaN
  labels (OGB's missing values) skipped.
* **Optimizer and schedule** from a :class:`~graphkd.config.TrainConfig`
  (:func:`build_optimizer`, :func:`build_scheduler`).
* **Training** (:func:`train_on`): the one loop, :func:`graphkd.train.fit`, with the protocol
  of the tables: loaders of :mod:`graphkd.pipeline.data` seeded with the run's seed, the
  validation *and* test metrics after every epoch, the test metric reported at the epoch with
  the best validation metric (first on ties), epoch times without evaluation (median over
  epochs), DDP on the global batch under ``torch.distributed``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from graphkd.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from graphkd.distill import Distiller
from graphkd.metrics import Metric
from graphkd.pipeline.data import DataBundle, make_loader, train_loader
from graphkd.registry import Registry
from graphkd.train import fit, loss_columns

__all__ = ["MODEL_FACTORIES", "register_model", "model_from_config", "TaskLoss",
           "build_optimizer", "build_scheduler", "resolve_device", "apply_threads", "train_on"]

#: model name -> ``factory(num_features=, num_classes=, **kwargs) -> nn.Module``.
MODEL_FACTORIES: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Register ``factory(num_features=, num_classes=, **kwargs) -> nn.Module`` under ``name``
    (looked up before :func:`graphkd.models.build_model`'s presets).

    Raises:
        ValueError: another factory is registered under ``name``.
    """
    MODEL_FACTORIES.add(name, factory)


def model_from_config(cfg: ModelConfig, data: DataBundle) -> nn.Module:
    """Instantiate model ``cfg.preset`` for ``data``: a :func:`register_model` factory, else
    a preset or architecture of :func:`graphkd.models.build_model` (with ``data.model_kwargs``).

    Raises:
        ConfigError: an unknown name or bad constructor arguments.
    """
    name = MODEL_FACTORIES.find(cfg.preset)
    if name is not None:
        return MODEL_FACTORIES[name](num_features=data.num_features,
                                     num_classes=data.num_classes, **cfg.kwargs)
    from graphkd.models import build_model

    kwargs = {**data.model_kwargs, **cfg.kwargs}
    try:
        return build_model(cfg.preset, num_classes=data.num_classes, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model {cfg.preset!r} with {kwargs}: {exc}") from exc


class TaskLoss(nn.Module):
    """Cross-entropy for ``[N, C>1]`` logits (labels ``[N]``/``[N, 1]``), BCE-with-logits for a
    single logit; NaN labels (OGB's missing values) are skipped."""

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        target = y.reshape(len(y), -1)[:, -1]
        keep = ~torch.isnan(target) if target.is_floating_point() else None
        if logits.dim() == 2 and logits.shape[1] > 1:
            if keep is not None:
                logits, target = logits[keep], target[keep]
            return nn.functional.cross_entropy(logits, target.long())
        score = logits.reshape(-1)
        target = target.to(score.dtype)
        if keep is not None:
            score, target = score[keep], target[keep]
        return nn.functional.binary_cross_entropy_with_logits(score, target)


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer``'s optimizer over the trainable tensors of ``params``."""
    o = cfg.optimizer
    params = [p for p in params if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """``cfg.optimizer.scheduler``'s schedule of ``opt`` (stepped once per epoch), or ``None``:
    ``cosine`` (to 0 over ``cfg.epochs``), ``step`` (x0.5 every ``step_size`` epochs)."""
    o = cfg.optimizer
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=0.5)
    return None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def apply_threads(cfg: ExperimentConfig) -> None:
    """``torch.set_num_threads(cfg.threads)`` when set (1 is fastest on a shared machine:
    OpenMP threads spin-wait for busy cores)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def train_on(
    model: nn.Module, data: DataBundle, cfg: TrainConfig, *, metric: Metric,
    device: torch.device, seed: int, num_workers: int = 0, progress: bool = False,
    desc: str = "", restore_best: bool = False, distributed: bool = False,
    sync_batchnorm: bool = False,
) -> dict[str, Any]:
    """Train ``model`` (plain or a set-up Distiller) on ``data`` with :func:`graphkd.train.fit`.

    Args:
        model: the model; a plain one is trained on :class:`TaskLoss`.
        data: the splits.
        cfg: epochs, batch sizes, optimizer, schedule, gradient clipping.
        metric: validation/test metric.
        device: where to train.
        seed: seed of the loaders' generators (the caller seeds the model's initialisation).
        num_workers: DataLoader workers.
        progress: tqdm bars labelled ``desc``.
        restore_best: end with the best-validation weights (the teacher) or the last ones.
        distributed: train with DDP on the global batch (``torch.distributed`` initialised;
            ``cfg.batch_size`` is the global batch); else in this process alone.
        sync_batchnorm: under DDP, synchronise the student's BatchNorm statistics.

    Returns:
        ``{"val": [...], "test": [...], "epoch_time": [...], "losses": [{name: mean}...],
        "best_epoch": i (from 0), "best_val": v, "test_at_best": t, "epoch_time_median": s}``.
    """
    ebs = cfg.eval_batch_size or cfg.batch_size
    res = fit(
        model, train_loader(data.train, cfg.batch_size, seed, num_workers, distributed),
        make_loader(data.val, ebs, False, seed, num_workers),
        test_loader=make_loader(data.test, ebs, False, seed, num_workers),
        epochs=cfg.epochs, metric=metric, grad_clip=cfg.grad_clip,
        optimizer=lambda params: build_optimizer(params, cfg),
        scheduler=lambda opt: build_scheduler(opt, cfg),
        loss_fn=None if isinstance(model, Distiller) else TaskLoss(),
        progress=progress, desc=desc, restore_best=restore_best, device=device, select=cfg.select,
        distributed=distributed, sync_batchnorm=sync_batchnorm)
    rows = res.history
    hist: dict[str, Any] = {
        "val": [r[f"val_{metric.name}"] for r in rows],
        "test": [r[f"test_{metric.name}"] for r in rows],
        "epoch_time": [r["time_s"] for r in rows],
        "losses": [loss_columns(r) for r in rows],
    }
    hist.update(best_epoch=res.best_epoch - 1, best_val=res.best_metric, test_at_best=res.test,
                epoch_time_median=statistics.median(hist["epoch_time"]))
    return hist
