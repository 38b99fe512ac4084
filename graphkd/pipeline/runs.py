"""Runs of an experiment: every (seed, method) student, the interleaved step timing, dry runs.

One :class:`~graphkd.config.ExperimentConfig` in, one results dict out::

    results = run_experiment(cfg, methods=["student", "kd", "lsp"], seeds=[0, 1, 2])
    write_report(results, "runs/pointcloud_digits")   # graphkd.report

Protocol (the same for every method, so that rows of a table compare):

* :func:`check_methods` first builds every method around an untrained teacher (wrong layer
  paths fail in seconds), then the teacher is trained once or loaded from its cache
  (:func:`graphkd.pipeline.teachers.train_teacher`).
* For each seed and each method (seeds outer, methods inner, so that machine-load drifts spread
  over all methods), the student is initialised with that seed
  (:func:`graphkd.train.seed_everything`), wrapped in a :class:`~graphkd.distill.Distiller`
  when the method uses the teacher (stage 1 of two-stage methods run first), and trained for
  ``student.train.epochs`` epochs by :func:`graphkd.train.fit`
  (:func:`graphkd.pipeline.training.train_on`): the validation and test metrics after every
  epoch; the reported test metric is the one at the
  **epoch with the best validation metric** (first such epoch on ties); the student keeps its
  last weights.
* Epoch time is the wall-clock time of the training part of an epoch (data loading, teacher
  forward for distilled methods, student forward/backward, optimizer step), evaluation
  excluded. The per-run value is the median over epochs (robust to a busy machine); tables
  report the mean over seeds, and the ratio to the student trained alone and to plain KD.
* :func:`step_times` measures one training step of every method *interleaved* (round-robin on
  the same batches), which keeps the ratios meaningful on a shared, noisy machine.

**Several processes** (``graphkd distill --nproc N``, ``torchrun``, or any caller that
initialised ``torch.distributed`` with more than one process): :func:`run_experiment` trains every
student with DistributedDataParallel (relation methods on the global batch, see
:mod:`graphkd.distributed`). ``student.train.batch_size`` stays the **global** batch: each of the
``W`` ranks loads ``batch_size / W`` samples per step (it must divide), from its shard of the
epoch (``DistributedSampler(shuffle=True, drop_last=True)``, seeded by the run's seed), so that
DDP's gradient average equals one process's gradient on the same global batch. Rank 0 trains
(or loads) the teacher first, the others wait at a barrier and load the cached checkpoint (a
frozen replica per rank); validation and test run on rank 0 and their values are broadcast, so
every rank selects the same epoch; the loss logs are averaged over ranks. Only rank 0's results
should be reported (the CLI writes files and prints on rank 0 only). Epoch times are rank 0's.
The student's BatchNorm layers use per-rank statistics unless ``sync_batchnorm: true`` (CLI
``--sync-bn``) converts them to :class:`graphkd.sync_batchnorm.SyncBatchNorm` (global-batch
statistics, DGCNN's EdgeConv included).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from graphkd import distributed as gd
from graphkd.config import ConfigError, ExperimentConfig, MethodConfig, TrainConfig, to_dict
from graphkd.distill import Distiller, Match
from graphkd.metrics import get_metric
from graphkd.pipeline.data import DataBundle, load_data, make_loader, train_loader
from graphkd.pipeline.teachers import train_teacher
from graphkd.pipeline.training import (
    TaskLoss,
    apply_threads,
    build_optimizer,
    model_from_config,
    resolve_device,
    train_on,
)
from graphkd.train import pretrain, seed_everything

__all__ = ["run_method", "run_experiment", "check_methods", "step_times"]

log = logging.getLogger(__name__)

StepFn = Callable[[Any], dict[str, Tensor]]


def _build_distiller(teacher: nn.Module, student: nn.Module, method: MethodConfig,
                     example: Any) -> Distiller:
    """A Distiller for ``method``, set up on the batch ``example`` (so that trainable heads
    exist before the optimizer is built)."""

    def paths(p: str | list[str]) -> str | tuple[str, ...]:
        return p if isinstance(p, str) else tuple(p)

    matches = [Match(teacher=paths(m.teacher), student=paths(m.student), method=m.method,
                     weight=m.weight, params=dict(m.kwargs)) for m in method.matches]
    task_weight = (1.0 - method.logits_weight if method.task_weight is None
                   else method.task_weight)
    logits = None
    if method.logits_weight > 0:
        from graphkd.losses import get_loss

        logits = get_loss("kd", tau=method.tau)
    return Distiller(teacher, student, matches=matches, logits=logits,
                     logits_weight=method.logits_weight, task_loss=TaskLoss(),
                     task_weight=task_weight, example=example)


def _pretrain(distiller: Distiller, data: DataBundle, cfg: TrainConfig, device: torch.device,
              seed: int, epochs: int) -> float:
    """Stage 1 of two-stage methods (MHGD): train their heads on the teacher's features for
    ``epochs`` epochs; returns the seconds it took (0 when no method needs it)."""
    if not any(m.requires_pretraining for m in distiller.match_losses):
        return 0.0
    t0 = time.perf_counter()
    pretrain(distiller, train_loader(data.train, cfg.batch_size, seed), epochs=epochs,
             lr=cfg.optimizer.lr, device=device, progress=False)
    return time.perf_counter() - t0


def _make_student(
    cfg: ExperimentConfig, method_name: str, seed: int, teacher: nn.Module | None,
    data: DataBundle, device: torch.device,
) -> tuple[nn.Module, nn.Module, StepFn, float]:
    """Seeded student (+ Distiller when the method uses the teacher, stage 1 done).

    Returns ``(student, trained module, step, stage-1 seconds)``; ``step(batch)`` returns the
    (weighted) loss dict of one forward pass (used by :func:`step_times`).
    """
    if method_name not in cfg.methods:
        raise ConfigError(f"unknown method {method_name!r}; the config defines "
                          f"{list(cfg.methods)}.")
    method = cfg.methods[method_name]
    seed_everything(seed)
    student = model_from_config(cfg.student.model, data).to(device)
    if not method.uses_teacher:
        crit = TaskLoss()

        def plain_step(batch):
            return {"task": crit(student(batch), batch.y)}

        return student, student, plain_step, 0.0
    if teacher is None:
        raise ValueError(f"method {method_name!r} needs a teacher.")
    example = next(iter(make_loader(data.train, cfg.student.train.batch_size, True, seed)))
    module = _build_distiller(teacher, student, method, example.to(device)).to(device)
    pretrain_s = _pretrain(module, data, cfg.student.train, device, seed, method.pretrain_epochs)

    def distill_step(batch):
        return module(batch)[1]

    return student, module, distill_step, pretrain_s


def run_method(
    cfg: ExperimentConfig, method_name: str, seed: int, teacher: nn.Module | None,
    data: DataBundle, *, progress: bool = False,
) -> dict[str, Any]:
    """Train one student with one method and one seed; return its record.

    The record: ``method``, ``seed``, ``best_epoch`` (from 0), ``val`` and ``test`` (at the best
    validation epoch), ``epoch_time`` (median seconds), per-epoch ``history`` (``val``,
    ``test``, ``epoch_time``, ``losses``), the number of trainable parameters (student +
    adapters/heads) and the seconds of stage 1. Under ``torch.distributed`` the student is
    trained with DDP on the global batch (see the module docstring).
    """
    device = resolve_device(cfg.device)
    _, module, _, pretrain_s = _make_student(cfg, method_name, seed, teacher, data, device)
    hist = train_on(module, data, cfg.student.train, metric=get_metric(cfg.metric),
                    device=device, seed=seed, num_workers=cfg.data.num_workers,
                    progress=progress and gd.is_main_process(),
                    desc=f"{method_name} seed {seed}", distributed=gd.is_distributed(),
                    sync_batchnorm=cfg.sync_batchnorm)
    return {
        "method": method_name,
        "seed": seed,
        "best_epoch": hist["best_epoch"],
        "val": hist["best_val"],
        "test": hist["test_at_best"],
        "epoch_time": hist["epoch_time_median"],
        "num_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "pretrain_time": pretrain_s,
        "history": {k: hist[k] for k in ("val", "test", "epoch_time", "losses")},
    }


def step_times(
    cfg: ExperimentConfig, methods: Sequence[str] | None = None, *,
    data: DataBundle | None = None, rounds: int = 20, warmup: int = 2, seed: int = 0,
) -> dict[str, Any]:
    """Interleaved timing of one training step per method (robust on a shared machine).

    Every method gets its seeded student (and Distiller); then, for ``warmup + rounds`` rounds,
    each method in turn runs one full training step (forward of teacher and student, losses,
    backward, optimizer step) on the same pre-collated batch. Interleaving puts every method
    under the same machine load, so the ratios are far less noisy than epoch times measured
    one method after another. Data loading and evaluation are excluded.

    Returns:
        ``{"rounds", "batch_size", "times": {method: [seconds per round]},
        "median": {method: s}}``.
    """
    apply_threads(cfg)
    methods = list(cfg.methods) if methods is None else list(methods)
    data = load_data(cfg.data) if data is None else data
    device = resolve_device(cfg.device)
    teacher = None
    if any(cfg.methods[m].uses_teacher for m in methods):
        teacher, _ = train_teacher(cfg, data)
    bs = cfg.student.train.batch_size
    batches = [b.to(device) for _, b in zip(range(rounds + warmup),
                                              train_loader(data.train, bs, seed))]
    runners = {}
    for m in methods:
        _, module, step, _ = _make_student(cfg, m, seed, teacher, data, device)
        opt = build_optimizer(module.parameters(), cfg.student.train)
        module.train()
        runners[m] = (step, opt)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(warmup + rounds):
        batch = batches[r % len(batches)]
        for m, (step, opt) in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            total = sum(step(batch).values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r >= warmup:
                times[m].append(time.perf_counter() - t0)
    return {"rounds": rounds, "batch_size": bs, "times": times,
            "median": {m: statistics.median(t) for m, t in times.items()}}


def check_methods(cfg: ExperimentConfig, methods: Sequence[str], data: DataBundle) -> None:
    """Dry run of every method before any training: build the student, and for distilled
    methods a Distiller around an *untrained* teacher, set up on one batch (module paths,
    widths, loss construction). Fails in seconds instead of after the teacher's training.

    Raises:
        ConfigError: naming the method and the underlying error (e.g. a wrong layer path,
            with the valid paths listed by the Distiller).
    """
    device = resolve_device(cfg.device)
    example = next(iter(make_loader(data.train, cfg.student.train.batch_size, False, 0)))
    example = example.to(device)
    teacher = None
    for m in methods:
        method = cfg.methods[m]
        try:
            student = model_from_config(cfg.student.model, data).to(device)
            if method.uses_teacher:
                if teacher is None:
                    teacher = model_from_config(cfg.teacher.model, data).to(device).eval()
                _build_distiller(teacher, student, method, example)
        except ConfigError:
            raise
        except (ValueError, TypeError, RuntimeError, AttributeError) as exc:
            raise ConfigError(f"methods.{m}: {type(exc).__name__}: {exc}") from exc


def run_experiment(
    cfg: ExperimentConfig, methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None, *, data: DataBundle | None = None,
    progress: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None,
    force_teacher: bool = False,
) -> dict[str, Any]:
    """Teacher once, then every (seed, method) student; return the raw results dict.

    Args:
        cfg: the experiment.
        methods: subset of ``cfg.methods`` (default: all, in config order).
        seeds: default ``cfg.seeds``.
        data: pre-loaded data (default: :func:`graphkd.pipeline.data.load_data`).
        progress: tqdm bars.
        on_record: called after every finished run (e.g. to save partial results).
        force_teacher: retrain the teacher even if cached.

    Under ``torch.distributed`` (several processes, every one calling this function) the
    students train with DDP on the global batch; use rank 0's return value (see the module
    docstring).

    Returns:
        ``{"name", "metric" (its table label), "higher_is_better", "config", "data", "teacher",
        "runs": [...], "methods", "seeds", "world_size"}``; :func:`graphkd.report.summarize`
        turns it into table rows.
    """
    apply_threads(cfg)
    methods = list(cfg.methods) if methods is None else list(methods)
    for m in methods:
        if m not in cfg.methods:
            raise ConfigError(f"unknown method {m!r}; the config defines {list(cfg.methods)}.")
    seeds = list(cfg.seeds if seeds is None else seeds)
    data = load_data(cfg.data) if data is None else data
    metric = get_metric(cfg.metric)
    check_methods(cfg, methods, data)
    teacher, trec = (None, None)
    distributed, main = gd.is_distributed(), gd.is_main_process()
    if any(cfg.methods[m].uses_teacher for m in methods):
        # several processes: rank 0 trains (or loads) the teacher, the others then load the
        # cached checkpoint; every rank holds a frozen replica.
        import torch.distributed as dist

        if distributed and not main:
            dist.barrier()
        teacher, trec = train_teacher(cfg, data, force=force_teacher and main,
                                      progress=progress and main)
        if distributed and main:
            dist.barrier()
    results: dict[str, Any] = {
        "name": cfg.name,
        "metric": metric.label,
        "higher_is_better": metric.higher_is_better,
        "config": to_dict(cfg),
        "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                 "num_features": data.num_features, "num_classes": data.num_classes,
                 **data.info},
        "teacher": trec,
        "methods": methods,
        "seeds": seeds,
        "world_size": gd.world_size(),
        "runs": [],
    }
    for seed in seeds:
        for m in methods:
            t0 = time.perf_counter()
            rec = run_method(cfg, m, seed, teacher, data, progress=progress)
            rec["wall_time"] = time.perf_counter() - t0
            log.info("%s seed %d: test %.4f (val %.4f, epoch %d), %.3f s/epoch", m, seed,
                     rec["test"], rec["val"], rec["best_epoch"], rec["epoch_time"])
            results["runs"].append(rec)
            if on_record is not None:
                on_record(results)
    return results
