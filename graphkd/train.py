"""Training and evaluation loops for a plain model or a :class:`~graphkd.distill.Distiller`.

.. code-block:: python

    result = fit(distiller, train_loader, val_loader, epochs=100, metric="roc_auc",
                 out_dir="runs/gin_to_gcn", seed=0)
    test = evaluate(distiller, test_loader, metric="roc_auc")   # the best-validation student

* **Objective.** A Distiller's objective is ``sum(losses.values())`` (its dict is already
  weighted); a plain model's is ``loss_fn(logits, target)`` (default cross-entropy).
* **Model selection** on ``val_loader`` by ``metric`` (higher is better): the best epoch's
  weights are saved to ``best.pt`` and, with ``restore_best=True``, loaded back at the end.
* **Metrics** (scikit-learn): ``"accuracy"``, ``"macro_f1"``, ``"roc_auc"`` (binary from one
  logit column or the second of two; multi-class one-vs-rest; multi-task ``[B, T]`` targets:
  mean over tasks with both classes present, NaN labels ignored, as OGB).
* **Checkpoints** are ``state_dict``\\ s of plain tensors and numbers:
  ``torch.load(path, weights_only=True)`` reads them. For a Distiller they hold the student,
  the methods' heads/adapters (and a mutual peer), never a frozen teacher. ``last.pt`` also
  holds the optimizer, the epoch, the best-so-far, the history and the RNG state, so
  ``resume=True`` continues an interrupted run where it stopped (same batches, same result).
* **Logs**: ``log.csv`` (one row per epoch: epoch, loss, each named loss, the validation
  metric, seconds), ``logging`` messages, tqdm bars (``progress=False`` turns them off).
* **Two-stage methods** (MHGD): with ``pretrain_epochs > 0``, :func:`pretrain` runs stage 1
  before the main loop.
* **Several processes** (``torch.distributed`` initialised with more than one process, e.g.
  under ``torchrun`` or :func:`graphkd.distributed.launch`): a Distiller is trained through
  :func:`graphkd.distributed.wrap` (relation methods on the global batch, student and heads in
  DDP, the frozen teacher replicated), a plain model through DDP. Give every rank its shard:
  ``DataLoader(ds, batch_size=B_global // W, sampler=DistributedSampler(ds, drop_last=True))``
  (``fit`` calls ``sampler.set_epoch(epoch)``; ``drop_last`` keeps the local batches equal, so
  DDP's gradient average equals one process's gradient on the global batch). Validation runs on
  rank 0 and its value is broadcast (every rank keeps the same best epoch); the logged losses
  are averaged over ranks; only rank 0 writes checkpoints and ``log.csv`` and shows progress
  bars, the others wait at a barrier after every epoch.
"""

from __future__ import annotations

import copy
import csv
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from graphkd import distributed as gd
from graphkd.distill import (
    Distiller,
    _to_device,
    default_call,
    default_target,
    logits_of,
    prepare_target,
)

__all__ = ["METRICS", "FitResult", "seed_everything", "compute_metric", "evaluate", "pretrain",
           "fit", "load_checkpoint"]

log = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_f1", "roc_auc")

OptimizerSpec = torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG third-party code uses
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- metrics
def _predictions(logits: Tensor, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if logits.dim() == 2 and logits.shape[1] > 1 and y.numel() == logits.shape[0]:
        return logits.argmax(1).numpy(), y.reshape(-1).long().numpy()
    return (logits.reshape(y.shape) > 0).long().numpy().ravel(), y.long().numpy().ravel()


def compute_metric(metric: str, logits: Tensor, y: Tensor) -> float:
    """``metric`` of predictions ``logits`` (``[B, C]``, ``[B, 1]`` or ``[B, T]``) for ``y``.

    Raises:
        ValueError: an unknown metric (listing the valid ones).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {METRICS}.")
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    logits, y = logits.detach().float().cpu(), y.detach().cpu()
    if metric != "roc_auc":
        pred, true = _predictions(logits, y)
        if metric == "accuracy":
            return float(accuracy_score(true, pred))
        return float(f1_score(true, pred, average="macro"))
    if logits.dim() == 2 and logits.shape[1] > 1 and y.numel() == logits.shape[0]:
        true = y.reshape(-1).long().numpy()
        prob = torch.softmax(logits, 1).numpy()
        if logits.shape[1] == 2:
            return float(roc_auc_score(true, prob[:, 1]))
        return float(roc_auc_score(true, prob, multi_class="ovr",
                                   labels=list(range(logits.shape[1]))))
    score = logits.reshape(y.shape).reshape(y.shape[0], -1).numpy()
    true = y.float().reshape(y.shape[0], -1).numpy()
    aucs = []
    for t in range(true.shape[1]):
        ok = ~np.isnan(true[:, t])
        if len(np.unique(true[ok, t])) == 2:
            aucs.append(roc_auc_score(true[ok, t], score[ok, t]))
    if not aucs:
        raise ValueError("ROC-AUC needs both classes among the labels of at least one task.")
    return float(np.mean(aucs))


# --------------------------------------------------------------------------- helpers
def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _predict(model: nn.Module, data: Any, call: Callable) -> Tensor:
    if isinstance(model, Distiller):
        return logits_of(model.predict(data))
    return logits_of(call(model, data))


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, *, metric: str = "accuracy",
    call: Callable | None = None, target: Callable | None = None,
    device: torch.device | str | None = None, progress: bool = False,
) -> dict[str, float]:
    """Evaluate a model (a Distiller: its student) on ``loader``.

    Args:
        model: a plain model or a Distiller.
        loader: batches.
        metric: one of :data:`METRICS`.
        call, target: how to run the model / read labels (a Distiller uses its own).
        device: where to run (default: the model's).
        progress: show a tqdm bar.

    Returns:
        ``{metric: value, "num_samples": n}``.
    """
    from tqdm.auto import tqdm

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {METRICS}.")
    call, target = _call_target(model, call, target)
    device = torch.device(device) if device is not None else _device_of(model)
    was = model.training
    model.eval()
    outs, ys = [], []
    try:
        for data in tqdm(loader, desc="eval", leave=False, disable=not progress):
            data = _to_device(data, device)
            outs.append(_predict(model, data, call))
            ys.append(target(data))
    finally:
        model.train(was)
    if not outs:
        raise ValueError("the evaluation loader is empty.")
    logits, y = torch.cat(outs).cpu(), torch.cat(ys).cpu()  # one transfer, not one per batch
    return {metric: compute_metric(metric, logits, y), "num_samples": int(y.shape[0])}


def _call_target(model: nn.Module, call: Callable | None, target: Callable | None):
    if isinstance(model, Distiller):
        return model.student_call, model.target
    return call or default_call, target or default_target


def pretrain(
    distiller: Distiller, loader: Iterable, *, epochs: int, lr: float = 1e-3,
    progress: bool = True, device: torch.device | str | None = None,
) -> list[float]:
    """Stage 1 of two-stage methods (MHGD): train their stage-1 modules on the teacher.

    Optimises ``sum(distiller.pretrain_losses(batch).values())`` with Adam over
    ``distiller.pretrain_parameters()`` (the student is not run and not changed), then calls
    ``distiller.finish_pretraining()``. Returns the mean stage-1 loss per epoch.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else _device_of(distiller)
    if not distiller.is_setup:
        distiller.setup(_to_device(next(iter(loader)), device))
    params = distiller.pretrain_parameters()
    if not params:
        distiller.finish_pretraining()
        return []
    opt = torch.optim.Adam(params, lr=lr)
    distiller.train()
    history = []
    for epoch in range(1, epochs + 1):
        total, n = torch.zeros((), device=device), 0
        for data in tqdm(loader, desc=f"pretrain {epoch}", leave=False, disable=not progress):
            data = _to_device(data, device)
            loss = sum(distiller.pretrain_losses(data).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.detach(), n + 1
        history.append(float(total) / max(n, 1))
        log.info("pretrain epoch %d: loss %.4f", epoch, history[-1])
    distiller.finish_pretraining()
    return history


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch (epoch, loss, named losses, ``val_<metric>``, time_s).
        best_epoch: the epoch selected on the validation split (the last one without it).
        best_metric: its validation metric (``nan`` without a validation loader).
        out_dir: where checkpoints and logs went, if anywhere.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("nan")
    out_dir: Path | None = None


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a graphkd checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a corrupt file or not a graphkd checkpoint (no ``"model"`` entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        detail = (str(e).splitlines() or [""])[0][:160]
        raise ValueError(f"checkpoint {path} is corrupt or not a weights-only graphkd "
                         f"checkpoint ({type(e).__name__}: {detail}); delete it or pass "
                         "resume=False.") from e
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError(f"{path} is not a graphkd checkpoint (no 'model' state_dict).")
    return ck


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


def _save(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file, so an interruption never leaves half a file."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _write_csv(path: Path, row: dict[str, float], append: bool) -> None:
    if append and path.is_file():
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), None)
        if header:
            with path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=header, extrasaction="ignore").writerow(row)
            return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)


def _ddp_runner(model: nn.Module, distiller: Distiller | None, device: torch.device) -> nn.Module:
    """The module the training step calls under ``torch.distributed`` (DDP around ``model``)."""
    if distiller is not None:
        two_stage = any(getattr(m, "requires_pretraining", False)
                        for m in distiller.match_losses)
        return gd.wrap(distiller, find_unused_parameters=two_stage)
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


def _mean_over_ranks(sums: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Every value averaged over ranks (one all_reduce; the keys are the same on all ranks)."""
    import torch.distributed as dist

    keys = sorted(sums)
    buf = torch.stack([sums[k].detach().to(device, torch.float64).reshape(()) for k in keys])
    dist.all_reduce(buf)
    buf /= gd.world_size()
    return {k: buf[i] for i, k in enumerate(keys)}


def _broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    buf = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(buf, 0)
    return float(buf[0])


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int,
    optimizer: OptimizerSpec | None = None,
    lr: float = 1e-3,
    metric: str = "accuracy",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    call: Callable | None = None,
    target: Callable | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    seed: int | None = None,
    pretrain_epochs: int = 0,
    pretrain_lr: float = 1e-3,
    restore_best: bool = True,
    device: torch.device | str | None = None,
) -> FitResult:
    """Train a plain model or a Distiller for ``epochs`` epochs, selecting on validation.

    Args:
        model: a plain model or a :class:`~graphkd.distill.Distiller`.
        train_loader, val_loader: batches (PyG loaders, ``(x, y)`` tuples, ...).
        epochs: total number of epochs (a resumed run continues up to it).
        optimizer: ``None`` (Adam with ``lr``), a factory ``params -> Optimizer`` or an
            optimizer holding every trainable parameter (build it after ``setup``).
        lr: learning rate of the default Adam.
        metric: validation metric, one of :data:`METRICS` (higher is better).
        loss_fn: task loss of a plain model (default cross-entropy).
        call, target: how to run a plain model / read labels (a Distiller has its own).
        out_dir: where ``last.pt``, ``best.pt`` and ``log.csv`` go (``None``: nowhere).
        resume: continue from ``out_dir/last.pt`` if it exists.
        progress: tqdm bars.
        seed: seed everything first (see :func:`seed_everything`).
        pretrain_epochs: stage-1 epochs for two-stage methods (required > 0 when one needs it).
        pretrain_lr: their learning rate.
        restore_best: load the best-validation weights into ``model`` at the end.
        device: where to train (default: the model's device).

    Under ``torch.distributed`` (more than one process) the model trains with DDP on the global
    batch; see the module docstring (shard ``train_loader`` with a ``DistributedSampler``; a
    custom ``call`` must run the model by calling it, ``model(...)``, which is then the DDP
    wrapper).

    Returns:
        a :class:`FitResult`.

    Example:
        >>> res = fit(model, train_loader, val_loader, epochs=5, progress=False)
        >>> res.best_epoch, res.best_metric
    """
    from tqdm.auto import tqdm

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {METRICS}.")
    distributed, main = gd.is_distributed(), gd.is_main_process()
    progress = progress and main
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir= of the interrupted run.")
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
        distiller.setup(_to_device(next(iter(train_loader)), device))

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

        runner = _ddp_runner(model, distiller, device)
        sampler = _check_sharded(train_loader)
    opt = _build_optimizer(model, optimizer, lr)

    result = FitResult(out_dir=out)
    start = 1
    best_state = None
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        start = int(ck["epoch"]) + 1
        result.history = list(ck["history"])
        result.best_epoch, result.best_metric = int(ck["best_epoch"]), float(ck["best_metric"])
        if restore_best and (out / "best.pt").is_file():
            best_state = load_checkpoint(out / "best.pt", map_location=device)["model"]

    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, Tensor] = {}
        n = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", leave=False,
                   disable=not progress)
        for data in bar:
            data = _to_device(data, device)
            if distiller is not None:
                _, losses = runner(data)
            else:
                logits = logits_of(call_(runner, data))
                losses = {"task": loss_fn(logits, prepare_target(logits, target_(data)))}
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in [("loss", loss), *losses.items()]:
                sums[k] = sums[k] + v.detach() if k in sums else v.detach()
            n += 1
        if n == 0:
            raise ValueError("the training loader is empty.")
        if distributed:  # rank means (equal local batch counts under drop_last)
            sums = _mean_over_ranks(sums, device)
        row: dict[str, float] = {"epoch": epoch}
        row.update({k: float(v) / n for k, v in sums.items()})
        if val_loader is not None:
            value = float("nan")
            if main:
                value = evaluate(model, val_loader, metric=metric, call=call_, target=target_,
                                 device=device)[metric]
            if distributed:
                value = _broadcast_float(value, device)
            row[f"val_{metric}"] = value
            improved = not result.best_epoch or value > result.best_metric
        else:
            value, improved = float("nan"), True
        row["time_s"] = time.perf_counter() - t0
        result.history.append(row)
        if improved:
            result.best_epoch, result.best_metric = epoch, value
            best_state = copy.deepcopy(model.state_dict())
            if out is not None and main:
                _save({"model": best_state, "epoch": epoch, "metric": value}, out / "best.pt")
        if main:
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                       if k != "epoch"))
        if out is not None and main:
            _write_csv(out / "log.csv", row, append=epoch > 1)
            _save({
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "best_epoch": result.best_epoch, "best_metric": result.best_metric,
                "history": result.history, "rng": torch.get_rng_state(),
            }, out / "last.pt")
        if distributed:
            dist.barrier()  # rank 0's files are complete before any rank goes on
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return result
