"""The experiment pipeline shared by the CLI and the quality benchmarks.

One :class:`~graphkd.config.ExperimentConfig` in, one results dict out::

    teacher = train_teacher(cfg)                 # cached in <output_dir>/<name>/teacher-<hash>.pt
    results = run_experiment(cfg, methods=["student", "kd", "lsp"], seeds=[0, 1, 2])
    write_report(results, "runs/pointcloud_digits")   # report.md + report.png + results.json

Protocol (the same for every method, so that rows of a table compare):

* The teacher is trained once (seed ``teacher_seed``) and cached by a hash of the data and
  teacher configs; later runs reuse the checkpoint.
* For each seed and each method (seeds outer, methods inner, so that machine-load drifts spread
  over all methods), the student is initialised with that seed and trained for
  ``student.train.epochs`` epochs. After every epoch the validation and test metrics are
  measured; the reported test metric is the one at the **epoch with the best validation
  metric** (first such epoch on ties).
* Epoch time is the wall-clock time of the training part of an epoch (data loading, teacher
  forward for distilled methods, student forward/backward, optimizer step), evaluation
  excluded. The per-run value is the median over epochs (robust to a busy machine); tables
  report the mean over seeds, and the ratio to the student trained alone and to plain KD.
* :func:`step_times` measures one training step of every method *interleaved* (round-robin on
  the same batches), which keeps the ratios meaningful on a shared, noisy machine.
* **A final training batch of one sample** (``len(train) % batch_size == 1``, e.g. 100 clouds
  with ``batch_size: 33``) is dropped every epoch (``drop_last``), with one warning, for every
  method alike (teacher, students, stage 1, step timing): BatchNorm in training mode and the
  batch-relation methods need at least two samples, and every row of a table must see the same
  batches. Validation and test loaders keep every sample.

Datasets and models are resolved by name through small registries (:func:`register_dataset`,
:func:`register_model`). The built-in datasets (``digits``, ``modelnet40``, ``chembl``,
``ogbg-molhiv``) are registered by :mod:`graphkd.experiment_data` on first use; model names not
registered here go to :func:`graphkd.models.build_model` (presets and architectures).

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

Why not :func:`graphkd.train.fit`: the tables need the *test* metric at the best validation
epoch for every epoch's candidate, learning-rate schedules, and an epoch time that excludes
evaluation; this loop records exactly those (the Distiller does the distillation itself).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from graphkd import distributed as gd
from graphkd.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    config_hash,
    to_dict,
)
from graphkd.fileio import atomic_torch_save
from graphkd.sync_batchnorm import convert_sync_batchnorm

__all__ = [
    "DataBundle",
    "Metric",
    "METRICS",
    "register_dataset",
    "register_model",
    "load_data",
    "build_model",
    "resolve_device",
    "train_teacher",
    "run_method",
    "run_experiment",
    "check_methods",
    "step_times",
    "summarize",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """An evaluation metric and the task loss that goes with it.

    Attributes:
        name: metric name as written in tables.
        fn: ``fn(logits, y) -> float`` on the concatenated outputs of a split.
        higher_is_better: direction used for best-validation-epoch selection.
        task_loss: factory of the training loss ``loss(logits, y)``.
    """

    name: str
    fn: Callable[[Tensor, Tensor], float]
    higher_is_better: bool
    task_loss: Callable[[], Callable[[Tensor, Tensor], Tensor]]


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y.view(-1)).float().mean())


def _binary_score(logits: Tensor) -> Tensor:
    """Score of the positive class: ``z[:, 1] - z[:, 0]`` for two logits (the log-odds of the
    softmax), the logit itself for one."""
    z = logits.reshape(len(logits), -1)
    return (z[:, 1] - z[:, 0]) if z.shape[1] == 2 else z[:, -1]


def _rocauc(logits: Tensor, y: Tensor) -> float:
    """ROC-AUC of a binary task (OGB-style labels ``[N]`` or ``[N, 1]``; NaN labels skipped)."""
    from sklearn.metrics import roc_auc_score

    score = _binary_score(logits).double()
    target = y.reshape(len(y), -1)[:, -1].double()
    keep = ~torch.isnan(target)
    target, score = target[keep], score[keep]
    if target.unique().numel() < 2:
        return float("nan")
    return float(roc_auc_score(target.numpy(), score.numpy()))


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


#: metric name -> :class:`Metric`.
METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", _accuracy, True, TaskLoss),
    "rocauc": Metric("ROC-AUC", _rocauc, True, TaskLoss),
}


# ----------------------------------------------------------------------------- data
@dataclass
class DataBundle:
    """Train/validation/test splits of a graph dataset (sequences of PyG ``Data``).

    Attributes:
        train, val, test: the splits.
        num_features: input feature width of a node/point.
        num_classes: number of outputs of the model's head.
        metric: default metric name for this dataset (``accuracy``/``rocauc``).
        info: free-form description (source, sizes) for reports.
        model_kwargs: constructor arguments every model needs for this data (e.g.
            ``{"in_channels": 2}`` for 2-D clouds; ``{}`` for OGB integer atom features,
            which the graph models embed themselves).
    """

    train: Sequence[Any]
    val: Sequence[Any]
    test: Sequence[Any]
    num_features: int
    num_classes: int
    metric: str = "accuracy"
    info: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)


_DATASETS: dict[str, Callable[[DataConfig], DataBundle]] = {}
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_dataset(name: str, loader: Callable[[DataConfig], DataBundle]) -> None:
    """Register a dataset loader ``loader(data_cfg) -> DataBundle`` under ``name``."""
    _DATASETS[name] = loader


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Register ``factory(num_features=, num_classes=, **kwargs) -> nn.Module`` as a preset."""
    _MODELS[name] = factory


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the dataset named ``cfg.name`` (built-ins live in :mod:`graphkd.experiment_data`).

    Raises:
        ConfigError: an unknown name (the message lists the registered ones).
    """
    if cfg.name not in _DATASETS:
        import graphkd.experiment_data  # noqa: F401  (registers the built-in datasets)
    if cfg.name not in _DATASETS:
        raise ConfigError(f"data.name: unknown dataset {cfg.name!r}; registered: "
                          f"{sorted(_DATASETS)}.")
    data = _DATASETS[cfg.name](cfg)
    for split in ("train", "val", "test"):
        if len(getattr(data, split)) == 0:
            raise ConfigError(f"data {cfg.name!r}: the {split} split is empty; check "
                              "data.kwargs (fractions, limit).")
    return data


def build_model(cfg: ModelConfig, data: DataBundle) -> nn.Module:
    """Instantiate model ``cfg.preset`` for ``data`` (this module's registry first, then
    :func:`graphkd.models.build_model`'s presets and architectures)."""
    if cfg.preset in _MODELS:
        return _MODELS[cfg.preset](num_features=data.num_features,
                                   num_classes=data.num_classes, **cfg.kwargs)
    from graphkd.models import build_model as _build

    kwargs = {**data.model_kwargs, **cfg.kwargs}
    try:
        return _build(cfg.preset, num_classes=data.num_classes, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model {cfg.preset!r} with {kwargs}: {exc}") from exc


# ----------------------------------------------------------------------------- loops
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _loader(dataset: Sequence[Any], batch_size: int, shuffle: bool, seed: int,
            num_workers: int = 0, *, drop_last: bool = False):
    from torch_geometric.loader import DataLoader

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      num_workers=num_workers, drop_last=drop_last)


_TAIL_WARNED: set[tuple[int, int]] = set()


def _drop_tail(num_samples: int, batch_size: int) -> bool:
    """Whether a training loader over ``num_samples`` must drop its last batch (``drop_last``).

    True when that batch would hold a single sample and at least one full batch remains:
    BatchNorm in training mode and batch-relation methods need two samples. Warns once per
    process for each ``(num_samples, batch_size)``.
    """
    if batch_size < 2 or num_samples <= batch_size or num_samples % batch_size != 1:
        return False
    if (num_samples, batch_size) not in _TAIL_WARNED:
        _TAIL_WARNED.add((num_samples, batch_size))
        warnings.warn(
            f"training split: {num_samples} samples in batches of {batch_size} leave a final "
            "batch of 1 sample; it is dropped every epoch (drop_last) because BatchNorm and "
            "relation losses need >= 2 samples. Change batch_size to use it.",
            UserWarning, stacklevel=3)
    return True


def _train_loader(dataset: Sequence[Any], batch_size: int, seed: int, num_workers: int = 0,
                  distributed: bool = False):
    """The shuffled training loader; under ``distributed`` this rank's shard of every epoch.

    Sharded: ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` (every rank gets the
    same number of samples, so DDP's gradient average is exact) and ``batch_size / W`` samples
    per rank and step, i.e. ``batch_size`` stays the global batch. Call
    ``loader.sampler.set_epoch(epoch)`` before each epoch.

    A final batch of one sample (per rank when sharded) is dropped with one warning
    (:func:`_drop_tail`).

    Raises:
        ConfigError: ``batch_size`` is not a multiple of the number of processes.
    """
    if not distributed:
        return _loader(dataset, batch_size, True, seed, num_workers,
                       drop_last=_drop_tail(len(dataset), batch_size))
    from torch.utils.data.distributed import DistributedSampler
    from torch_geometric.loader import DataLoader

    w = gd.world_size()
    if batch_size % w:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must be a "
                          f"multiple of the number of processes ({w}).")
    sampler = DistributedSampler(dataset, num_replicas=w, rank=gd.rank(), shuffle=True,
                                 seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=batch_size // w, sampler=sampler,
                      num_workers=num_workers,
                      drop_last=_drop_tail(len(dataset) // w, batch_size // w))


def _optimizer(params, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    o = cfg.optimizer
    params = [p for p in params if p.requires_grad]
    if o.name == "adam":
        opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.name == "adamw":
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = None
    if o.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    elif o.scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=0.5)
    return opt, sched


@torch.no_grad()
def evaluate(model: nn.Module, loader, metric: Metric, device: torch.device) -> float:
    """Metric of ``model`` over all batches of ``loader`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    outs, ys = [], []
    for batch in loader:
        batch = batch.to(device)
        outs.append(model(batch).float().cpu())
        ys.append(batch.y.cpu())
    model.train(was_training)
    return metric.fn(torch.cat(outs), torch.cat(ys))


def _best_epoch(values: Sequence[float], higher_is_better: bool) -> int:
    """Index of the best finite value (first on ties); 0 if none is finite."""
    best, best_i = None, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        if best is None or (v > best if higher_is_better else v < best):
            best, best_i = v, i
    return best_i


StepFn = Callable[[Any], dict[str, Tensor]]


def fit(
    module: nn.Module, step: StepFn, eval_model: nn.Module, data: DataBundle, cfg: TrainConfig,
    metric: Metric, device: torch.device, *, seed: int, num_workers: int = 0,
    progress: bool = False, desc: str = "", distributed: bool = False,
) -> dict[str, Any]:
    """Train ``module`` with ``step(batch) -> {name: loss}`` and evaluate ``eval_model`` per epoch.

    With ``distributed=True`` (``torch.distributed`` initialised; ``step`` must run the model
    through DistributedDataParallel, see :func:`_make_student`) every rank trains on its shard of
    each epoch (:func:`_train_loader`, ``cfg.batch_size`` is the global batch), validation and
    test run on rank 0 only and their values are broadcast (every rank selects the same epoch),
    and the per-epoch loss means are averaged over ranks.

    Returns:
        ``{"val": [...], "test": [...], "epoch_time": [...], "losses": [{name: mean}...],
        "best_epoch": i, "best_val": v, "test_at_best": t, "epoch_time_median": s,
        "state_dict": best eval_model state}``.
    """
    distributed = distributed and gd.is_distributed()
    main = gd.is_main_process()
    train_loader = _train_loader(data.train, cfg.batch_size, seed, num_workers, distributed)
    ebs = cfg.eval_batch_size or cfg.batch_size
    val_loader = _loader(data.val, ebs, False, seed, num_workers)
    test_loader = _loader(data.test, ebs, False, seed, num_workers)
    opt, sched = _optimizer(module.parameters(), cfg)
    hist: dict[str, list] = {"val": [], "test": [], "epoch_time": [], "losses": []}
    best_state, best_val = None, None
    epochs = range(cfg.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=desc, leave=False)
    for epoch in epochs:
        if distributed:
            train_loader.sampler.set_epoch(epoch)
        module.train()
        sums: dict[str, float] = {}
        n = 0
        t0 = time.perf_counter()
        for batch in train_loader:
            batch = batch.to(device)
            losses = step(batch)
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"{desc}: non-finite loss {({k: float(v) for k, v in losses.items()})}; "
                    "lower the learning rate or the method's weight."
                )
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        hist["epoch_time"].append(time.perf_counter() - t0)
        if sched is not None:
            sched.step()
        means = {k: v / max(n, 1) for k, v in sums.items()}
        if distributed:
            v, t = _rank0_eval(eval_model, val_loader, test_loader, metric, device, main)
            means = _mean_over_ranks(means, device)
        else:
            v = evaluate(eval_model, val_loader, metric, device)
            t = evaluate(eval_model, test_loader, metric, device)
        hist["losses"].append(means)
        hist["val"].append(v)
        hist["test"].append(t)
        if math.isfinite(v) and (best_val is None or
                                 (v > best_val if metric.higher_is_better else v < best_val)):
            best_val = v
            best_state = {k: t.detach().cpu().clone() for k, t in eval_model.state_dict().items()}
        if progress:
            epochs.set_postfix(val=f"{v:.4f}")
    i = _best_epoch(hist["val"], metric.higher_is_better)
    hist.update(best_epoch=i, best_val=hist["val"][i], test_at_best=hist["test"][i],
                epoch_time_median=statistics.median(hist["epoch_time"]),
                state_dict=best_state)
    return hist


def _rank0_eval(model: nn.Module, val_loader, test_loader, metric: Metric, device: torch.device,
                main: bool) -> tuple[float, float]:
    """Validation and test metrics measured on rank 0 and broadcast to every rank."""
    import torch.distributed as dist

    vals = [float("nan"), float("nan")]
    if main:
        vals = [evaluate(model, val_loader, metric, device),
                evaluate(model, test_loader, metric, device)]
    buf = torch.tensor(vals, dtype=torch.float64, device=device)
    dist.broadcast(buf, 0)
    return float(buf[0]), float(buf[1])


def _mean_over_ranks(means: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average per-rank loss means over ranks (equal local batch counts under drop_last)."""
    import torch.distributed as dist

    keys = sorted(means)
    buf = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    buf /= gd.world_size()
    return {k: float(buf[i]) for i, k in enumerate(keys)}


def _ddp(model: nn.Module, device: torch.device, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` (``device_ids`` set on CUDA)."""
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device])
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def _metric_for(cfg: ExperimentConfig) -> Metric:
    return METRICS[cfg.metric]


# ----------------------------------------------------------------------------- teacher
def run_dir(cfg: ExperimentConfig) -> Path:
    """``<output_dir>/<name>``, confined to ``output_dir``.

    Raises:
        ValueError: ``cfg.name`` is absolute, ``..`` or contains a path separator, or the folder
            resolves outside ``output_dir`` (a symlink).
    """
    from graphkd.fileio import safe_child

    return safe_child(cfg.output_dir, cfg.name, what="run name (config.name)")


def teacher_path(cfg: ExperimentConfig) -> Path:
    """Checkpoint path of the teacher, keyed by a hash of everything that determines it
    (inside :func:`run_dir`)."""
    from graphkd.fileio import safe_child

    key = config_hash({"data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher),
                       "seed": cfg.teacher_seed, "metric": cfg.metric})
    return safe_child(run_dir(cfg), f"teacher-{key}.pt", what="teacher checkpoint")


def _apply_threads(cfg: ExperimentConfig) -> None:
    """``torch.set_num_threads(cfg.threads)`` when set (1 is fastest on a shared machine:
    OpenMP threads spin-wait for busy cores)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)


def train_teacher(
    cfg: ExperimentConfig, data: DataBundle | None = None, *, force: bool = False,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the teacher (or load it from the cache) and return ``(model, record)``.

    The record holds the teacher's best-validation epoch, its validation/test metrics there,
    its median epoch time and whether it came from the cache. The checkpoint (tensors and
    plain numbers only, loadable with ``weights_only=True``) is written to
    :func:`teacher_path`.
    """
    _apply_threads(cfg)
    data = load_data(cfg.data) if data is None else data
    device = resolve_device(cfg.device)
    metric = _metric_for(cfg)
    path = teacher_path(cfg)
    _seed_all(cfg.teacher_seed)
    model = build_model(cfg.teacher.model, data).to(device)
    if path.is_file() and not force:
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(ckpt["state_dict"])
        except Exception as exc:  # noqa: BLE001 - a corrupt/stale cache is retrained
            log.warning("teacher cache %s unusable (%s); retraining.", path, exc)
        else:
            model.eval()
            rec = dict(ckpt["record"], cached=True, path=str(path))
            log.info("loaded teacher from %s", path)
            return model, rec
    crit = metric.task_loss()

    def step(batch):
        return {"task": crit(model(batch), batch.y)}

    hist = fit(model, step, model, data, cfg.teacher.train, metric, device,
               seed=cfg.teacher_seed, num_workers=cfg.data.num_workers, progress=progress,
               desc="teacher")
    if hist["state_dict"] is not None:
        model.load_state_dict(hist["state_dict"])
    model.eval()
    rec = {k: hist[k] for k in ("best_epoch", "best_val", "test_at_best", "epoch_time_median",
                                "val", "test", "epoch_time")}
    rec["num_params"] = sum(p.numel() for p in model.parameters())
    atomic_torch_save({"state_dict": model.state_dict(), "record": rec}, path)
    return model, dict(rec, cached=False, path=str(path))


# ----------------------------------------------------------------------------- students
def _build_distiller(teacher: nn.Module, student: nn.Module, method: MethodConfig,
                     metric: Metric, example: Any, call: Any = None) -> nn.Module:
    """A :class:`graphkd.distill.Distiller` for ``method``, set up on the batch ``example``
    (so that trainable heads exist before the optimizer is built)."""
    from graphkd.distill import Distiller, Match

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
                     logits_weight=method.logits_weight, task_loss=metric.task_loss(),
                     task_weight=task_weight, call=call, example=example)


def _pretrain(distiller: nn.Module, data: DataBundle, cfg: TrainConfig, device: torch.device,
              seed: int, epochs: int) -> float:
    """Stage 1 of two-stage methods (MHGD): train their heads on the teacher's features for
    ``epochs`` epochs; returns the seconds it took (0 when no method needs it)."""
    needs = [m for m in getattr(distiller, "match_losses", [])
             if getattr(m, "requires_pretraining", False)]
    if not needs:
        return 0.0
    from graphkd import train as gtrain

    t0 = time.perf_counter()
    loader = _loader(data.train, cfg.batch_size, True, seed,
                     drop_last=_drop_tail(len(data.train), cfg.batch_size))
    gtrain.pretrain(distiller, loader, epochs=epochs, lr=cfg.optimizer.lr, device=device,
                    progress=False)
    return time.perf_counter() - t0


def _make_student(
    cfg: ExperimentConfig, method_name: str, seed: int, teacher: nn.Module | None,
    data: DataBundle, device: torch.device, *, distributed: bool = False,
) -> tuple[nn.Module, nn.Module, StepFn, float]:
    """Seeded student (+ Distiller when the method uses the teacher, stage 1 done).

    With ``distributed=True`` (``torch.distributed`` initialised) ``step`` runs the model through
    DistributedDataParallel: a Distiller via :func:`graphkd.distributed.wrap` (relation methods
    on the global batch, student and heads synchronised, teacher replicated and frozen), a
    student alone via plain DDP. Every rank builds the same seeded student and heads (and runs
    stage 1 on the full training set with the same seed); DDP broadcasts rank 0's state anyway.
    With ``cfg.sync_batchnorm`` the student's BatchNorm layers are converted in place to
    :class:`graphkd.sync_batchnorm.SyncBatchNorm` before DDP (``gd.wrap(...,
    sync_batchnorm=True)`` for a Distiller), so they normalise with global-batch statistics.

    Returns ``(student, trained module, step, stage-1 seconds)``; ``step(batch)`` returns the
    (weighted) loss dict.
    """
    if method_name not in cfg.methods:
        raise ConfigError(f"unknown method {method_name!r}; the config defines "
                          f"{list(cfg.methods)}.")
    method = cfg.methods[method_name]
    metric = _metric_for(cfg)
    _seed_all(seed)
    student = build_model(cfg.student.model, data).to(device)
    if not method.uses_teacher:
        crit = metric.task_loss()
        runner = student
        if distributed:
            if cfg.sync_batchnorm:  # in place: `student` keeps its parameters and buffers
                student = convert_sync_batchnorm(student)
            runner = _ddp(student, device)

        def plain_step(batch):
            return {"task": crit(runner(batch), batch.y)}

        return student, student, plain_step, 0.0
    if teacher is None:
        raise ValueError(f"method {method_name!r} needs a teacher.")
    example = next(iter(_loader(data.train, cfg.student.train.batch_size, True, seed)))
    module = _build_distiller(teacher, student, method, metric, example.to(device)).to(device)
    pretrain_s = _pretrain(module, data, cfg.student.train, device, seed, method.pretrain_epochs)
    wrapped = module
    if distributed:
        two_stage = any(getattr(m, "requires_pretraining", False)
                        for m in getattr(module, "match_losses", []))
        wrapped = gd.wrap(module, find_unused_parameters=two_stage,
                          sync_batchnorm=cfg.sync_batchnorm)

    def distill_step(batch):
        return wrapped(batch)[1]

    return student, module, distill_step, pretrain_s


def run_method(
    cfg: ExperimentConfig, method_name: str, seed: int, teacher: nn.Module | None,
    data: DataBundle, *, progress: bool = False,
) -> dict[str, Any]:
    """Train one student with one method and one seed; return its record.

    The record: ``method``, ``seed``, ``best_epoch``, ``val`` and ``test`` (at the best
    validation epoch), ``epoch_time`` (median seconds), per-epoch ``history`` and the number of
    trainable parameters (student + adapters/heads). Under ``torch.distributed`` the student
    is trained with DDP on the global batch (see the module docstring).
    """
    device = resolve_device(cfg.device)
    distributed = gd.is_distributed()
    student, module, step, pretrain_s = _make_student(cfg, method_name, seed, teacher, data,
                                                      device, distributed=distributed)
    hist = fit(module, step, student, data, cfg.student.train, _metric_for(cfg), device,
               seed=seed, num_workers=cfg.data.num_workers,
               progress=progress and gd.is_main_process(), desc=f"{method_name} seed {seed}",
               distributed=distributed)
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
    _apply_threads(cfg)
    methods = list(cfg.methods) if methods is None else list(methods)
    data = load_data(cfg.data) if data is None else data
    device = resolve_device(cfg.device)
    teacher = None
    if any(cfg.methods[m].uses_teacher for m in methods):
        teacher, _ = train_teacher(cfg, data)
    bs = cfg.student.train.batch_size
    loader = _loader(data.train, bs, True, seed, drop_last=_drop_tail(len(data.train), bs))
    batches = [b.to(device) for _, b in zip(range(rounds + warmup), loader)]
    runners = {}
    for m in methods:
        _, module, step, _ = _make_student(cfg, m, seed, teacher, data, device)
        opt, _ = _optimizer(module.parameters(), cfg.student.train)
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
    metric = _metric_for(cfg)
    example = next(iter(_loader(data.train, cfg.student.train.batch_size, False, 0)))
    example = example.to(device)
    teacher = None
    for m in methods:
        method = cfg.methods[m]
        try:
            student = build_model(cfg.student.model, data).to(device)
            if method.uses_teacher:
                if teacher is None:
                    teacher = build_model(cfg.teacher.model, data).to(device).eval()
                _build_distiller(teacher, student, method, metric, example)
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
        data: pre-loaded data (default: :func:`load_data`).
        progress: tqdm bars.
        on_record: called after every finished run (e.g. to save partial results).
        force_teacher: retrain the teacher even if cached.

    Under ``torch.distributed`` (several processes, every one calling this function) the
    students train with DDP on the global batch; use rank 0's return value (see the module
    docstring).

    Returns:
        ``{"name", "metric", "higher_is_better", "config", "data", "teacher", "runs": [...],
        "methods", "seeds"}``; :func:`summarize` turns it into table rows.
    """
    _apply_threads(cfg)
    methods = list(cfg.methods) if methods is None else list(methods)
    for m in methods:
        if m not in cfg.methods:
            raise ConfigError(f"unknown method {m!r}; the config defines {list(cfg.methods)}.")
    seeds = list(cfg.seeds if seeds is None else seeds)
    data = load_data(cfg.data) if data is None else data
    metric = _metric_for(cfg)
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
        "metric": metric.name,
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


# ----------------------------------------------------------------------------- summary
def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(results: dict[str, Any], *, student: str = "student",
              kd: str = "kd") -> list[dict[str, Any]]:
    """One row per method: mean ± std of the test metric at the best validation epoch, epoch
    time, and epoch-time ratios to the student alone (``student``) and to plain KD (``kd``).

    Ratios are of mean epoch times over seeds; ``None`` when the reference did not run.
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        by.setdefault(r["method"], []).append(r)
    times = {m: statistics.fmean(r["epoch_time"] for r in rs) for m, rs in by.items()}
    rows = []
    for m in results.get("methods") or list(by):
        rs = by.get(m)
        if not rs:
            continue
        test_m, test_s = _mean_std([r["test"] for r in rs])
        val_m, val_s = _mean_std([r["val"] for r in rs])
        t = times[m]
        rows.append({
            "method": m,
            "n": len(rs),
            "test_mean": test_m,
            "test_std": test_s,
            "val_mean": val_m,
            "val_std": val_s,
            "epoch_time": t,
            "epoch_time_std": _mean_std([r["epoch_time"] for r in rs])[1],
            "vs_student": t / times[student] if student in times else None,
            "vs_kd": t / times[kd] if kd in times else None,
            "num_params": rs[0].get("num_params"),
        })
    return rows
