"""The one training loop: :func:`fit` / :func:`evaluate` for a plain model or a Distiller.

.. code-block:: python

    result = fit(distiller, train_loader, val_loader, epochs=100, metric="roc_auc",
                 out_dir="runs/gin_to_gcn", seed=0)
    test = evaluate(distiller, test_loader, metric="roc_auc")   # the best-validation student

Used directly (the README) and by the experiment pipeline (:mod:`graphkd.pipeline`, the
``graphkd`` CLI), which calls it with ``test_loader=``, a ``scheduler=`` and ``restore_best``.
The loop with its hooks, its short-batch rule and its multi-process path is one job, hence a
module of about 700 lines (above the usual ~450); what it keeps on disk (checkpoints,
``log.csv``, RNG states) lives in :mod:`graphkd.checkpoints`, the metrics in
:mod:`graphkd.metrics`.

* **Objective.** A Distiller's objective is ``sum(losses.values())`` (its dict is already
  weighted); a plain model's is ``loss_fn(logits, target)`` (default cross-entropy).
* **Model selection** on ``val_loader`` by ``metric`` (its direction from the metric table):
  the first epoch with the best finite validation value; its weights are saved to ``best.pt``
  and, with ``restore_best=True``, loaded back at the end. With ``test_loader`` the test metric
  is measured after every epoch too and ``result.test`` is the one at the selected epoch.
* **Metrics** (:mod:`graphkd.metrics`): ``"accuracy"``, ``"macro_f1"``, ``"roc_auc"`` (binary
  from one logit column or the log-odds of two; multi-class one-vs-rest; multi-task ``[B, T]``
  targets: mean over tasks with both classes present, NaN labels ignored, as OGB).
* **Schedules**: ``scheduler=`` (an ``LRScheduler`` of the given optimizer, or a factory
  ``optimizer -> scheduler``) is stepped once per epoch, after validation
  (``ReduceLROnPlateau`` gets the validation value); ``grad_clip=`` clips the gradient norm.
* **Epoch time** (``time_s`` in the history and ``log.csv``) is the training part of an epoch:
  data loading, forward, backward and optimizer steps (CUDA synchronised), evaluation and
  checkpoints excluded.
* **Checkpoints** are ``state_dict``\\ s of plain tensors and numbers:
  ``torch.load(path, weights_only=True)`` reads them. For a Distiller they hold the student,
  the methods' heads/adapters (and a mutual peer), never a frozen teacher. ``last.pt`` also
  holds the optimizer, the scheduler, the epoch, the best-so-far, the history and **every RNG
  state the run owns**, so ``resume=True`` continues an interrupted run exactly (same batches,
  same result, bit for bit; see :func:`fit`, "Exact resume"). Files are written atomically: a
  kill never leaves half a checkpoint.
* **A final training batch of one sample** (e.g. 100 samples, ``batch_size=33``) is skipped,
  with one warning, when the model trains BatchNorm layers or a batch-relation method
  (``level == "batch"``: RKD, GKD, SP, ...): both need at least two samples; the run then equals
  a run without that sample. It is only skipped after a larger first batch in the same epoch
  (one graph per step is kept); ``drop_last=True`` on the DataLoader drops it silently. Other
  models train on it as before.
* **Non-finite training losses** raise ``FloatingPointError`` at the end of the epoch (the
  epoch's loss means are checked; no host synchronisation per step).
* **Logs**: ``log.csv`` (one row per epoch: epoch, loss, each named loss, the validation and
  test metrics, the learning rate with a scheduler, seconds), ``logging`` messages, tqdm bars
  (``progress=False`` turns them off).
* **Two-stage methods** (MHGD): with ``pretrain_epochs > 0``, :func:`pretrain` runs stage 1
  before the main loop.
* **Several processes** (``torch.distributed`` initialised with more than one process, e.g.
  under ``torchrun`` or :func:`graphkd.distributed.launch`): a Distiller is trained through
  :func:`graphkd.distributed.wrap` (relation methods on the global batch, student and heads in
  DDP, the frozen teacher replicated), a plain model through DDP (``sync_batchnorm=True``
  converts the student's BatchNorm layers to :class:`graphkd.sync_batchnorm.SyncBatchNorm`
  first). Give every rank its shard: ``DataLoader(ds, batch_size=B_global // W,
  sampler=DistributedSampler(ds, drop_last=True))`` (``fit`` calls ``sampler.set_epoch(e)``
  with ``e = 0, 1, ...``; ``drop_last`` keeps the local batches equal, so DDP's gradient average
  equals one process's gradient on the global batch). Validation and test run on rank 0 and
  their values are broadcast (every rank keeps the same best epoch); the logged losses are
  averaged over ranks; only rank 0 writes checkpoints and ``log.csv`` and shows progress bars,
  the others wait at a barrier after every epoch. A custom ``call`` must run the model by
  calling it (``model(...)``, then the DDP wrapper). ``distributed=False`` trains in this
  process alone even inside a process group.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from graphkd import distributed as gd
from graphkd.checkpoints import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_log,
)
from graphkd.distill import Distiller
from graphkd.inputs import default_call, default_target, logits_of, prepare_target, to_device
from graphkd.metrics import METRICS, Metric, compute_metric, get_metric
from graphkd.weights_check import GRADNORM_PREFIX, WeightCheck, term_weights

__all__ = ["METRICS", "FitResult", "seed_everything", "compute_metric", "evaluate", "pretrain",
           "fit", "load_checkpoint", "loss_columns"]

log = logging.getLogger(__name__)

OptimizerSpec = torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
#: An LR scheduler of fit's optimizer, or a factory ``optimizer -> scheduler`` (or ``None``).
SchedulerSpec = Any


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG third-party code uses
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- evaluation
def _bar(iterable: Iterable, progress: bool, desc: str) -> Iterable:
    """The training loader itself, or wrapped in a tqdm bar (``tqdm.std``).

    Not ``tqdm.auto``: its asyncio class calls ``iter(iterable)`` when it is built (even
    disabled), i.e. an extra DataLoader iterator per epoch (worker start-up, and a draw from
    the loader's generator or the global RNG). :func:`evaluate` and :func:`pretrain` still use
    ``tqdm.auto``: their RNG consumption is kept as it was, so published runs reproduce.
    """
    if not progress:
        return iterable
    from tqdm.std import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _predict(model: nn.Module, data: Any, call: Callable) -> Tensor:
    if isinstance(model, Distiller):
        return logits_of(model.predict(data))
    return logits_of(call(model, data))


def _call_target(model: nn.Module, call: Callable | None, target: Callable | None):
    if isinstance(model, Distiller):
        return model.student_call, model.target
    return call or default_call, target or default_target


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, *, metric: str | Metric = "accuracy",
    call: Callable | None = None, target: Callable | None = None,
    device: torch.device | str | None = None, progress: bool = False,
) -> dict[str, float]:
    """Evaluate a model (a Distiller: its student) on ``loader``.

    Args:
        model: a plain model or a Distiller.
        loader: batches.
        metric: a name of :data:`graphkd.metrics.METRICS` (or a ``Metric``).
        call, target: how to run the model / read labels (a Distiller uses its own).
        device: where to run (default: the model's).
        progress: show a tqdm bar.

    Returns:
        ``{metric's canonical name: value, "num_samples": n}``.
    """
    from tqdm.auto import tqdm

    m = get_metric(metric)
    call, target = _call_target(model, call, target)
    device = torch.device(device) if device is not None else _device_of(model)
    was = model.training
    model.eval()
    outs, ys = [], []
    try:
        for data in tqdm(loader, desc="eval", leave=False, disable=not progress):
            data = to_device(data, device)
            outs.append(_predict(model, data, call))
            ys.append(target(data))
    finally:
        model.train(was)
    if not outs:
        raise ValueError("the evaluation loader is empty.")
    logits, y = torch.cat(outs).cpu(), torch.cat(ys).cpu()  # one transfer, not one per batch
    return {m.name: m(logits, y), "num_samples": int(y.shape[0])}


# --------------------------------------------------------------------------- stage 1
def pretrain(
    distiller: Distiller, loader: Iterable, *, epochs: int, lr: float = 1e-3,
    progress: bool = True, device: torch.device | str | None = None,
) -> list[float]:
    """Stage 1 of two-stage methods (MHGD): train their stage-1 modules on the teacher.

    Optimises ``sum(distiller.pretrain_losses(batch).values())`` with Adam over
    ``distiller.pretrain_parameters()`` (the student is not run and not changed), then calls
    ``distiller.finish_pretraining()``. Returns the mean stage-1 loss per epoch. A final batch
    of one sample is skipped as in :func:`fit`.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else _device_of(distiller)
    if not distiller.is_setup:
        distiller.setup(to_device(next(iter(loader)), device))
    params = distiller.pretrain_parameters()
    if not params:
        distiller.finish_pretraining()
        return []
    opt = torch.optim.Adam(params, lr=lr)
    distiller.train()
    history = []
    tail = _TailSkipper()
    for epoch in range(1, epochs + 1):
        total, n = torch.zeros((), device=device), 0
        tail.new_epoch(distiller)
        for data in tqdm(loader, desc=f"pretrain {epoch}", leave=False, disable=not progress):
            if tail.skip(data):
                continue
            data = to_device(data, device)
            loss = sum(distiller.pretrain_losses(data).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.detach(), n + 1
        history.append(float(total) / max(n, 1))
        log.info("pretrain epoch %d: loss %.4f", epoch, history[-1])
    distiller.finish_pretraining()
    return history


# --------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch: ``epoch`` (from 1), ``loss``, the named losses
            (:func:`loss_columns`), ``val_<metric>``, ``test_<metric>`` (with a test loader),
            ``lr`` (with a scheduler), ``time_s`` (training part of the epoch).
        best_epoch: the epoch selected on the validation split (the last one without it).
        best_metric: its validation metric (``nan`` without a validation loader).
        test: the test metric at ``best_epoch`` (``nan`` without a test loader).
        metric: the metric's canonical name.
        out_dir: where checkpoints and logs went, if anywhere.
        grad_norms: a Distiller's per-term gradient norms on the student, mean over the first
            steps (:mod:`graphkd.weights_check`; also the ``gradnorm/<term>`` columns of the
            first epoch's row); empty for a plain model or with ``check_weights=0``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("nan")
    test: float = float("nan")
    metric: str = "accuracy"
    out_dir: Path | None = None
    grad_norms: dict[str, float] = field(default_factory=dict)


_NOT_LOSSES = ("epoch", "loss", "lr", "time_s")

#: How :func:`fit` picks the epoch it reports (see its ``select`` argument).
SELECTIONS = ("best", "last")


def loss_columns(row: dict[str, float]) -> dict[str, float]:
    """The named losses of a history row (``task``, ``kd``, ``lsp[convs.1]``, ...): every
    entry but ``epoch``, ``loss`` (their sum), ``lr``, ``time_s``, the ``val_``/``test_``
    metrics and the ``gradnorm/`` diagnostics."""
    return {k: v for k, v in row.items()
            if k not in _NOT_LOSSES and not k.startswith(("val_", "test_", GRADNORM_PREFIX))}


# --------------------------------------------------------------------------- optimisation
def _build_optimizer(model: nn.Module, optimizer: OptimizerSpec | None, lr: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters.")
    if optimizer is None:
        return torch.optim.Adam(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [p for p in params if id(p) not in held]
        if missing:
            raise ValueError(
                f"the optimizer misses {len(missing)} trainable parameter tensors of the model "
                "(a Distiller's heads are created at setup): build it after "
                "distiller.setup(example), or pass optimizer=lambda params: "
                "torch.optim.Adam(params, lr=...)."
            )
        if isinstance(model, Distiller):
            model._checked_optimizers.add(optimizer)
        return optimizer
    return optimizer(params)


def _build_scheduler(scheduler: SchedulerSpec, opt: torch.optim.Optimizer) -> Any:
    """``None``, the given scheduler (it must drive ``opt``) or ``scheduler(opt)``."""
    if scheduler is None:
        return None
    if hasattr(scheduler, "step") and hasattr(scheduler, "state_dict"):
        if getattr(scheduler, "optimizer", None) is not opt:
            raise ValueError("the scheduler drives another optimizer than the one fit trains "
                             "with; pass scheduler=lambda opt: <scheduler of opt> (or the "
                             "optimizer it was built on as optimizer=).")
        return scheduler
    if not callable(scheduler):
        raise TypeError(f"scheduler must be an LR scheduler or a factory optimizer -> "
                        f"scheduler, got {type(scheduler).__name__}.")
    return scheduler(opt)


def _step_scheduler(sched: Any, value: float) -> None:
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(value)
    else:
        sched.step()


# --------------------------------------------------------------------------- short batches
_SKIP_WARNING = ("skipped a final training batch of 1 sample: BatchNorm/relation losses need "
                 ">= 2 (pass drop_last=True to the DataLoader to drop it yourself)")


def _num_samples(data: Any) -> int | None:
    """Samples in a batch: graphs of a PyG ``Batch``/DGL batched graph, rows of a tensor or of
    the first element of a tuple/list/dict; ``None`` when unknown."""
    for attr in ("num_graphs", "batch_size"):  # PyG Batch, DGL batched graph
        n = getattr(data, attr, None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    if isinstance(data, Tensor):
        return int(data.shape[0]) if data.dim() else None
    if isinstance(data, (tuple, list)) and data:
        return _num_samples(data[0])
    if isinstance(data, dict) and data:
        return _num_samples(next(iter(data.values())))
    return None


def _needs_two_samples(model: nn.Module) -> bool:
    """Whether a training step of ``model`` (as it is now, train/eval modes included) needs a
    batch of at least two samples: a BatchNorm layer in training mode, or a method that compares
    samples across the batch (``level == "batch"``: RKD, GKD, SP, ...)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from graphkd.losses.base import DistillLoss

    return any((isinstance(m, _BatchNorm) and m.training)
               or (isinstance(m, DistillLoss) and m.level == "batch")
               for m in model.modules())


class _TailSkipper:
    """Decides, batch by batch, whether to skip a trailing training batch of one sample.

    A batch is skipped when it holds one sample, the epoch's first batch held more (so it is
    the ragged tail of a batched epoch, not a one-graph-per-step setting) and the model needs
    two samples (:func:`_needs_two_samples`). The first skip warns (once per skipper).
    """

    def __init__(self) -> None:
        self.warned = False
        self.needed = False
        self.first: int | None = None

    def new_epoch(self, model: nn.Module) -> None:
        self.needed, self.first = _needs_two_samples(model), None

    def skip(self, data: Any) -> bool:
        n = _num_samples(data)
        if self.first is None:
            self.first = n
            return False
        if not (self.needed and n == 1 and self.first is not None and self.first > 1):
            return False
        if not self.warned:
            self.warned = True
            warnings.warn(_SKIP_WARNING, UserWarning, stacklevel=3)
        return True


# --------------------------------------------------------------------------- processes
def _ddp_runner(model: nn.Module, distiller: Distiller | None, device: torch.device, *,
                sync_batchnorm: bool = False) -> nn.Module:
    """The module the training step calls under ``torch.distributed`` (DDP around ``model``).

    A Distiller goes through :func:`graphkd.distributed.wrap` (``find_unused_parameters`` for
    two-stage methods, whose stage-1 heads get no gradient); a plain model through DDP, its
    BatchNorm layers converted in place to SyncBatchNorm first with ``sync_batchnorm``.
    """
    if distiller is not None:
        two_stage = any(m.requires_pretraining for m in distiller.match_losses)
        return gd.wrap(distiller, find_unused_parameters=two_stage,
                       sync_batchnorm=sync_batchnorm)
    if sync_batchnorm:
        from graphkd.sync_batchnorm import convert_sync_batchnorm

        if convert_sync_batchnorm(model) is not model:
            raise ValueError("sync_batchnorm=True converts the model's BatchNorm layers in "
                             "place; a model that is one BatchNorm layer cannot be.")
    kwargs: dict[str, Any] = {"device_ids": [device]} if device.type == "cuda" else {}
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def _check_sharded(loader: Iterable) -> Any:
    """The loader's ``DistributedSampler`` (``None`` with a warning when it has none)."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        if not sampler.drop_last:
            log.warning("DistributedSampler(drop_last=False) pads the shards with repeated "
                        "samples; pass drop_last=True for the single-process gradient.")
        return sampler
    log.warning("fit under torch.distributed: the training loader has no DistributedSampler, "
                "so every rank sees the same data; pass DataLoader(ds, sampler="
                "DistributedSampler(ds, drop_last=True), batch_size=global_batch // world).")
    return None


def _mean_over_ranks(values: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Every value averaged over ranks (one all_reduce; the keys are the same on all ranks)."""
    import torch.distributed as dist

    keys = sorted(values)
    buf = torch.stack([values[k].detach().to(device, torch.float64).reshape(()) for k in keys])
    dist.all_reduce(buf)
    buf /= gd.world_size()
    return {k: buf[i] for i, k in enumerate(keys)}


def _broadcast_floats(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every rank."""
    import torch.distributed as dist

    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(buf, 0)
    return [float(v) for v in buf]


# --------------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int,
    optimizer: OptimizerSpec | None = None,
    lr: float = 1e-3,
    scheduler: SchedulerSpec = None,
    metric: str | Metric = "accuracy",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    call: Callable | None = None,
    target: Callable | None = None,
    test_loader: Iterable | None = None,
    grad_clip: float | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "",
    seed: int | None = None,
    pretrain_epochs: int = 0,
    pretrain_lr: float = 1e-3,
    restore_best: bool = True,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
    sync_batchnorm: bool = False,
    check_weights: int | WeightCheck = 3,
    select: str = "best",
) -> FitResult:
    """Train a plain model or a Distiller for ``epochs`` epochs, selecting on validation.

    Args:
        model: a plain model or a :class:`~graphkd.distill.Distiller`.
        train_loader, val_loader: batches (PyG loaders, ``(x, y)`` tuples, ...).
        epochs: total number of epochs (a resumed run continues up to it).
        optimizer: ``None`` (Adam with ``lr``), a factory ``params -> Optimizer`` or an
            optimizer holding every trainable parameter (build it after ``setup``).
        lr: learning rate of the default Adam.
        scheduler: ``None``, a factory ``optimizer -> LR scheduler`` (may return ``None``) or
            a scheduler of ``optimizer``; stepped once per epoch, after validation.
        metric: validation (and test) metric, a name of :data:`graphkd.metrics.METRICS`.
        loss_fn: task loss of a plain model (default cross-entropy).
        call, target: how to run a plain model / read labels (a Distiller has its own).
        test_loader: also measure the test metric after every epoch (``result.test``: the
            value at the selected epoch).
        grad_clip: clip the norm of the trainable parameters' gradients to this value.
        out_dir: where ``last.pt``, ``best.pt`` and ``log.csv`` go (``None``: nowhere).
        resume: continue from ``out_dir/last.pt`` if it exists (exactly; see below).
        progress: tqdm bars; ``desc`` prefixes their label.
        seed: seed everything first (see :func:`seed_everything`).
        pretrain_epochs: stage-1 epochs for two-stage methods (required > 0 when one needs it).
        pretrain_lr: their learning rate.
        restore_best: load the best-validation weights into ``model`` at the end.
        device: where to train (default: the model's device).
        distributed: ``None``: DDP whenever ``torch.distributed`` runs several processes;
            ``False``: train in this process alone.
        sync_batchnorm: under DDP, synchronise the student's BatchNorm statistics.
        check_weights: a Distiller's loss-weight check (:mod:`graphkd.weights_check`): the
            number of first steps on which every term's gradient norm on the student is
            measured (0: off), or a configured :class:`~graphkd.weights_check.WeightCheck`.
            One ``LossWeightWarning`` per term whose gradient dominates the task term's by more
            than 100x, is below 1e-3x of it, or is ~0 from the start; the norms go to
            ``result.grad_norms`` and the ``gradnorm/<term>`` columns of epoch 1. Training is
            unchanged (``.grad`` is not touched). Skipped under DDP and on resume.
        select: which epoch is the result: ``"best"`` -- the first epoch with the best
            validation metric (ties keep the earlier one); ``"last"`` -- the final epoch, as
            Hu et al. (2020, pretrain-gnns) report on MoleculeNet, for validation sets too small
            to rank epochs (BBBP's 204 molecules give a ROC-AUC that the epoch-0 model already
            ties). The validation metric is still measured and logged either way.

    **Exact resume.** ``out_dir/last.pt`` is written at the end of every epoch, after
    validation (the start of the next epoch), with every RNG state the run owns (the global
    ones, the loaders' generators -- of ``train_loader``, ``val_loader`` and ``test_loader`` --
    and any generator held by a module, e.g. G-CRD's; see :mod:`graphkd.checkpoints`).
    ``resume=True`` loads them and **restarts the interrupted epoch from its first batch**, so
    the final weights equal those of an uninterrupted run bit for bit (same hardware and
    library versions); at most one epoch of work is lost. Build the loaders and the model as in
    the interrupted run (a generator that cannot be matched by name is reported).

    The final batch of one sample, DDP and the logs: see the module docstring.

    Returns:
        a :class:`FitResult`.

    Raises:
        FloatingPointError: a non-finite training loss (mean over an epoch).

    Example:
        >>> res = fit(model, train_loader, val_loader, epochs=5, progress=False)
        >>> res.best_epoch, res.best_metric
    """
    m = get_metric(metric)
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    if select not in SELECTIONS:
        raise ValueError(f"`select` must be one of {SELECTIONS}, got {select!r}.")
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir= of the interrupted run.")
    distributed = gd.is_distributed() and distributed is not False
    main = gd.is_main_process() or not distributed
    progress = progress and main
    if seed is not None:
        seed_everything(seed)
    device = torch.device(device) if device is not None else _device_of(model)
    model.to(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    distiller = model if isinstance(model, Distiller) else None
    call_, target_ = _call_target(model, call, target)
    if distiller is None:
        loss_fn = loss_fn or nn.CrossEntropyLoss()
    elif not distiller.is_setup:
        distiller.setup(to_device(next(iter(train_loader)), device))

    ck = None
    if resume and (out / "last.pt").is_file():
        ck = load_checkpoint(out / "last.pt", map_location=device)
        model.load_state_dict(ck["model"])
        log.info("resuming from %s (epoch %d)", out / "last.pt", ck["epoch"])
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", out)
    if distiller is not None and distiller.needs_pretraining():
        if pretrain_epochs < 1:
            raise ValueError("a method needs stage-1 pre-training (e.g. MHGD): pass "
                             "pretrain_epochs=N to fit, or run graphkd.train.pretrain first.")
        pretrain(distiller, train_loader, epochs=pretrain_epochs, lr=pretrain_lr,
                 progress=progress, device=device)
    runner: nn.Module = model
    sampler = None
    if distributed:
        import torch.distributed as dist

        runner = _ddp_runner(model, distiller, device, sync_batchnorm=sync_batchnorm)
        sampler = _check_sharded(train_loader)
    opt = _build_optimizer(model, optimizer, lr)
    sched = _build_scheduler(scheduler, opt)
    clipped = [p for p in model.parameters() if p.requires_grad] if grad_clip else []

    loaders = {"train_loader": train_loader, "val_loader": val_loader}
    if test_loader is not None:
        loaders["test_loader"] = test_loader
    result = FitResult(out_dir=out, metric=m.name)
    start = 1
    best_state = None
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and "scheduler" in ck:
            sched.load_state_dict(ck["scheduler"])
        if "rng_states" in ck:
            set_rng_state(ck["rng_states"], model, loaders)
        else:  # a checkpoint of an older graphkd: the global torch RNG only
            log.warning("resume: %s holds torch's global RNG state only; the loaders' and "
                        "losses' generators restart from their seeds (not an exact resume).",
                        out / "last.pt")
            torch.set_rng_state(ck["rng"].cpu())
        start = int(ck["epoch"]) + 1
        result.history = list(ck["history"])
        result.best_epoch, result.best_metric = int(ck["best_epoch"]), float(ck["best_metric"])
        if restore_best and (out / "best.pt").is_file():
            best = load_checkpoint(out / "best.pt", map_location=device)
            # best.pt is written before last.pt: after a kill between the two it belongs to
            # the epoch being replayed, which will write it again.
            if int(best.get("epoch", result.best_epoch)) == result.best_epoch:
                best_state = best["model"]

    # --- loss-weight check (graphkd.weights_check): gradient norms of the first steps
    wcheck = None
    if distiller is not None and not distributed and ck is None:
        wcheck = (dataclasses.replace(check_weights)  # a fresh copy: nothing measured yet
                  if isinstance(check_weights, WeightCheck)
                  else WeightCheck(steps=int(check_weights)))
        wcheck = wcheck if wcheck.steps > 0 else None
        student_params = [p for p in distiller.student.parameters() if p.requires_grad]
    elif result.history:  # resumed: the norms measured in epoch 1
        result.grad_norms = {k[len(GRADNORM_PREFIX):]: v for k, v in result.history[0].items()
                             if k.startswith(GRADNORM_PREFIX)}
    # --- end of the loss-weight check's setup

    # losses are summed on the device in float64 (float32 on MPS): no host sync per step
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    tail = _TailSkipper()
    warned_nan = False
    for epoch in range(start, epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch - 1)
        model.train()
        tail.new_epoch(model)
        sums: dict[str, Tensor] = {}
        n = 0
        bar = _bar(train_loader, progress, desc=f"{desc + ' ' if desc else ''}epoch "
                                                f"{epoch}/{epochs}")
        t0 = time.perf_counter()
        for data in bar:
            if tail.skip(data):
                continue
            data = to_device(data, device)
            if distiller is not None:
                _, losses = runner(data)
                if wcheck is not None and wcheck.active:  # loss-weight check: norms only
                    wcheck.measure(losses, student_params)
            else:
                logits = logits_of(call_(runner, data))
                losses = {"task": loss_fn(logits, prepare_target(logits, target_(data)))}
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(clipped, grad_clip)
            opt.step()
            for k, v in [("loss", loss), *losses.items()]:
                v = v.detach().to(acc_dtype)
                sums[k] = sums[k] + v if k in sums else v
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.perf_counter() - t0
        if n == 0:
            raise ValueError("the training loader is empty.")
        means = {k: v / n for k, v in sums.items()}
        if distributed:  # rank means (equal local batch counts under drop_last)
            means = _mean_over_ranks(means, device)
        row: dict[str, float] = {"epoch": epoch}
        row.update({k: float(v) for k, v in means.items()})
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(
                f"{desc or 'fit'}: non-finite training loss in epoch {epoch} ({bad}); lower "
                "the learning rate or the method's weight.")
        if wcheck is not None:  # loss-weight check: warn once per term, log the norms
            result.grad_norms = wcheck.finish(term_weights(distiller), stacklevel=2)
            row.update({GRADNORM_PREFIX + k: v for k, v in result.grad_norms.items()})
            wcheck = None
        value = test_value = float("nan")
        if val_loader is not None or test_loader is not None:
            if main:
                if val_loader is not None:
                    value = evaluate(model, val_loader, metric=m, call=call_, target=target_,
                                     device=device)[m.name]
                if test_loader is not None:
                    test_value = evaluate(model, test_loader, metric=m, call=call_,
                                          target=target_, device=device)[m.name]
            if distributed:
                value, test_value = _broadcast_floats([value, test_value], device)
        if val_loader is not None:
            row[f"val_{m.name}"] = value
            if not math.isfinite(value) and not warned_nan:
                warned_nan = True
                log.warning("validation %s is %s in epoch %d (undefined on this split?); "
                            "model selection skips such epochs.", m.name, value, epoch)
        if test_loader is not None:
            row[f"test_{m.name}"] = test_value
        if sched is not None:
            row["lr"] = float(opt.param_groups[0]["lr"])
            _step_scheduler(sched, value)
        row["time_s"] = train_s
        result.history.append(row)
        if (val_loader is None or select == "last" or not result.best_epoch
                or m.better(value, result.best_metric)):
            result.best_epoch, result.best_metric = epoch, value
            best_state = copy.deepcopy(model.state_dict())
            if out is not None and main:
                save_checkpoint({"model": best_state, "epoch": epoch, "metric": value},
                                out / "best.pt")
        if main:
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                       if k != "epoch"))
        if out is not None and main:
            # the RNG states here are those at the start of epoch + 1: a resumed run replays
            # the next epoch from its first batch (see "Exact resume" in the docstring)
            state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "best_epoch": result.best_epoch, "best_metric": result.best_metric,
                "history": result.history, "rng": torch.get_rng_state(),
                "rng_states": rng_state(model, loaders),
            }
            if sched is not None:
                state["scheduler"] = sched.state_dict()
            save_checkpoint(state, out / "last.pt")
            write_log(out / "log.csv", result.history)
        if distributed:
            dist.barrier()  # rank 0's files are complete before any rank goes on
    result.test = next((r.get(f"test_{m.name}", float("nan")) for r in result.history
                        if r["epoch"] == result.best_epoch), float("nan"))
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return result
