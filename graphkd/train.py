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
  holds the optimizer, the epoch, the best-so-far, the history and **every RNG state the run
  owns**, so ``resume=True`` continues an interrupted run exactly (same batches, same result,
  bit for bit; see :func:`fit`, "Exact resume"). Files are written atomically
  (:func:`graphkd.fileio.atomic_torch_save`): a kill never leaves half a checkpoint.
* **A final training batch of one sample** (e.g. 100 samples, ``batch_size=33``) is skipped,
  with one warning, when the model trains BatchNorm layers or a batch-relation method (RKD,
  GKD, SP, ...): both need at least two samples. Other models train on it as before.
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
import io
import logging
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
from graphkd.distill import (
    Distiller,
    _to_device,
    default_call,
    default_target,
    logits_of,
    prepare_target,
)
from graphkd.fileio import atomic_torch_save, atomic_write_text

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
    ``distiller.finish_pretraining()``. Returns the mean stage-1 loss per epoch. A final batch
    of one sample is skipped as in :func:`fit`.
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
    tail = _TailSkipper()
    for epoch in range(1, epochs + 1):
        total, n = torch.zeros((), device=device), 0
        tail.new_epoch(distiller)
        for data in tqdm(loader, desc=f"pretrain {epoch}", leave=False, disable=not progress):
            if tail.skip(data):
                continue
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
    """``torch.save`` made atomic: an interruption never leaves half a file."""
    atomic_torch_save(obj, path)


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    """``log.csv`` rewritten (atomically) from the whole history: one row per finished epoch.

    Rewriting rather than appending keeps the file equal to the checkpoint's history, so a run
    killed between two writes and resumed never logs an epoch twice.
    """
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- RNG states
def _attr_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


_LOADER_GENERATORS = ("generator", "sampler.generator", "batch_sampler.sampler.generator")


def _owned_generators(model: nn.Module, loaders: dict[str, Any]) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` the run owns besides the global ones, by a stable name.

    * the loaders': ``loader.generator``, ``loader.sampler.generator`` and
      ``loader.batch_sampler.sampler.generator`` (shuffle order, worker seeds);
    * the modules': any ``torch.Generator`` held as an attribute by a module of ``model``
      (walking ``named_modules``; a Distiller's teachers too), e.g. the ``seed=`` generator of
      G-CRD or GSP.

    The same object reached twice is listed once (under its first name).
    """
    gens: dict[str, torch.Generator] = {}
    seen: set[int] = set()

    def add(name: str, g: Any) -> None:
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            gens[name] = g

    for lname, loader in loaders.items():
        for path in _LOADER_GENERATORS:
            add(f"{lname}.{path}", _attr_path(loader, path))
    roots = [("", model)]
    if isinstance(model, Distiller):
        roots += [(f"<teacher{i}>", t) for i, t in enumerate(model.teachers)]
    for prefix, root in roots:
        for mname, module in root.named_modules(prefix=prefix):
            for attr, value in vars(module).items():
                add(f"{mname}.{attr}" if mname else attr, value)
    return gens


def _rng_state(model: nn.Module, loaders: dict[str, Any]) -> dict[str, Any]:
    """All RNG states of the run as plain tensors/numbers (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "generators": {k: g.get_state() for k, g in _owned_generators(model, loaders).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], model: nn.Module, loaders: dict[str, Any]) -> None:
    """Restore :func:`_rng_state`'s output; warn about RNGs it cannot match (resume inexact)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) != torch.cuda.device_count():
            log.warning("resume: the checkpoint holds the RNG states of %d CUDA devices, this "
                        "machine has %d; restoring the first ones.", len(cuda),
                        torch.cuda.device_count())
        for i, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].cpu().numpy().astype(np.uint32),  # noqa: NPY002
                         int(npst["pos"]), int(npst["has_gauss"]), float(npst["gauss"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()),
                     py["gauss"]))
    saved = dict(state.get("generators", {}))
    unmatched = []
    for name, g in _owned_generators(model, loaders).items():
        if name in saved:
            g.set_state(saved.pop(name).cpu())
        else:
            unmatched.append(name)
    if unmatched or saved:
        log.warning("resume is not exact: RNG generators %s are not in the checkpoint and %s "
                    "of the checkpoint are not in this run (build the loaders and losses as "
                    "in the interrupted run).", sorted(unmatched), sorted(saved))


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
               or (isinstance(m, DistillLoss) and getattr(m, "level", None) == "batch")
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
        resume: continue from ``out_dir/last.pt`` if it exists (exactly; see below).
        progress: tqdm bars.
        seed: seed everything first (see :func:`seed_everything`).
        pretrain_epochs: stage-1 epochs for two-stage methods (required > 0 when one needs it).
        pretrain_lr: their learning rate.
        restore_best: load the best-validation weights into ``model`` at the end.
        device: where to train (default: the model's device).

    **Exact resume.** ``out_dir/last.pt`` is written atomically at the end of every epoch
    (after validation), which is the start of the next one. Besides the weights (student,
    heads, BatchNorm statistics), the optimizer, the history and the best-so-far it holds every
    RNG state the run owns at that point: torch's global RNG, every CUDA device's (when CUDA is
    initialised), NumPy's and Python ``random``'s global RNGs, the DataLoaders' own generators
    (``loader.generator``, ``loader.sampler.generator``,
    ``loader.batch_sampler.sampler.generator``, of ``train_loader`` and ``val_loader``) and
    every ``torch.Generator`` held as an attribute by a module of ``model`` (the ``seed=``
    generators of G-CRD and GSP, found by walking the modules; a Distiller's teachers too).
    ``resume=True`` loads them all and **restarts the interrupted epoch from its first batch**:
    the epoch is replayed with the same shuffle order, dropout masks, node samples and
    augmentation, so the final weights equal those of an uninterrupted run bit for bit (on the
    same hardware and library versions). Work done inside the interrupted epoch is lost (at
    most one epoch). Build the loaders and the model as in the interrupted run; a generator
    that cannot be matched by name is reported with a warning. Under several processes only
    rank 0 writes ``last.pt`` and every rank restores rank 0's states.

    **A final batch of one sample** (``len(dataset) % batch_size == 1``) is skipped, with one
    warning, when the model in training mode has a BatchNorm layer or a batch-relation method
    (``level == "batch"``: RKD, GKD, SP, ...), which need two samples: the run then equals a run
    without that sample. A batch of one is only skipped after a larger first batch in the same
    epoch (one graph per step, as in full-graph training, is kept). To drop it silently pass
    ``drop_last=True`` to the DataLoader.

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

    loaders = {"train_loader": train_loader, "val_loader": val_loader}
    result = FitResult(out_dir=out)
    start = 1
    best_state = None
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        if "rng_states" in ck:
            _set_rng_state(ck["rng_states"], model, loaders)
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

    tail = _TailSkipper()
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        tail.new_epoch(model)
        sums: dict[str, Tensor] = {}
        n = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", leave=False,
                   disable=not progress)
        for data in bar:
            if tail.skip(data):
                continue
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
            # the RNG states here are those at the start of epoch + 1: a resumed run replays
            # the next epoch from its first batch (see "Exact resume" in the docstring)
            _save({
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "best_epoch": result.best_epoch, "best_metric": result.best_metric,
                "history": result.history, "rng": torch.get_rng_state(),
                "rng_states": _rng_state(model, loaders),
            }, out / "last.pt")
            _write_log(out / "log.csv", result.history)
        if distributed:
            dist.barrier()  # rank 0's files are complete before any rank goes on
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return result
