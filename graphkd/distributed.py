r"""Multi-process training with ``torch.distributed``: global-batch relation graphs + DDP.

Batch-level relation methods (SP, RKD, PKT, CC, HKD) and G-CRD compare every sample with every
other one, so with ``W`` processes each holding a local batch of ``B_r`` samples they must build
their graphs over the *global* batch of ``B = sum_r B_r`` samples, as one process would. Which
methods those are is read from each method's class attributes (:func:`wants_global_batch`:
no graph ``context``, and ``level == "batch"`` or ``global_batch``), never from a list of
names. This module gathers the features across ranks before those methods run:

* teacher features: ``all_gather`` (no gradient, the teacher is frozen);
* student features: :func:`gather_with_grad`, whose backward sums the gradient of the gathered
  tensor over ranks (``all_reduce``) and returns the rows of the local samples.

**Gradient scaling.** Every rank computes the same global loss ``L`` (the same gathered batch).
The backward of :func:`gather_with_grad` gives rank ``r`` the gradient
``sum_{r'} dL_{r'}/dx_r = W * dL/dx_r`` for its local features ``x_r``; DDP then *averages*
the parameter gradients over the ``W`` ranks, so the student receives
``(1/W) * sum_r W * dL/dx_r * dx_r/dtheta = dL/dtheta``: exactly the single-process gradient on
the global batch. Per-sample terms (the task loss, KD) keep their local mean, which DDP's
average turns into the global mean when every rank holds the same number of samples (use
``DistributedSampler(drop_last=True)`` or equal-size batches for an exact match). The
tests check both against one process on the concatenated batch (2 gloo processes on CPU).

Typical use (the same script runs under ``torchrun --nproc-per-node N`` or
:func:`launch`)::

    from graphkd import distributed as gd

    def main():
        gd.init_distributed()                          # reads torchrun's env vars
        distiller = Distiller(teacher, student, matches, ..., example=batch)
        model = gd.wrap(distiller)                     # global-batch methods + DDP
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for data in loader:                            # DistributedSampler shards the data
            _, losses = model(data)
            opt.zero_grad(); sum(losses.values()).backward(); opt.step()

    gd.launch(main, nproc=2)      # or: torchrun --nproc-per-node 2 script.py

Outside ``torch.distributed`` (not initialised, or one process) every function here is the
identity, so single-process code needs no branch.

Layering: the process information (:func:`rank`, :func:`world_size`, ...) and the gathers
(:func:`gather`, :func:`gather_with_grad`) are defined in :mod:`graphkd._collectives` and
re-exported here; :mod:`graphkd.sync_batchnorm` uses them from there, and this module imports
``sync_batchnorm`` for :func:`wrap`, so ``distributed -> sync_batchnorm -> _collectives`` has
no cycle.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from graphkd._collectives import (
    gather,
    gather_with_grad,
    is_distributed,
    is_main_process,
    rank,
    world_size,
)
from graphkd.losses.base import DistillLoss
from graphkd.sync_batchnorm import convert_sync_batchnorm

__all__ = [
    "wants_global_batch",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "gather",
    "gather_with_grad",
    "GlobalBatch",
    "make_global",
    "globalize",
    "wrap",
    "init_distributed",
    "free_port",
    "launch",
]


def __getattr__(name: str) -> Any:
    """``GLOBAL_METHODS`` (deprecated): the registered names whose class sets ``global_batch``."""
    if name == "GLOBAL_METHODS":
        import warnings

        from graphkd.losses import LOSSES

        warnings.warn("graphkd.distributed.GLOBAL_METHODS is deprecated: read the method's "
                      "`global_batch` class attribute (or call wants_global_batch(loss)).",
                      DeprecationWarning, stacklevel=2)
        return frozenset(n for n, cls in LOSSES.items() if cls.global_batch)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- losses
def _gather_pair(f_s: Any, f_t: Any, group: Any) -> tuple[Any, Any]:
    if isinstance(f_s, (tuple, list)):  # multi-layer methods (IRG): gather every layer
        return (tuple(gather_with_grad(f, group=group) for f in f_s),
                tuple(gather(f, group=group) for f in f_t))
    return gather_with_grad(f_s, group=group), gather(f_t, group=group)


class GlobalBatch(DistillLoss):
    """Wrap a batch-level method so that it runs on the global batch of all ranks.

    ``forward(f_s, f_t)`` gathers the student's features with :func:`gather_with_grad` and the
    teacher's with :func:`gather`, then calls the wrapped loss. The wrapped module is kept as
    ``self.loss`` (its heads are in this module's parameters).

    Args:
        loss: a :class:`~graphkd.losses.base.DistillLoss` instance without graph context
            (SP, RKD, PKT, CC, HKD, G-CRD, GKD, IRG).
        group: the process group (default: the world).

    A :class:`~graphkd.distill.Distiller` treats a ``GlobalBatch`` match as ``level="batch"``
    (node features are mean-pooled per graph first); inside a Distiller prefer
    :func:`globalize` / :func:`wrap`, which keep each method's own level (G-CRD stays
    node-level) and its ``state_dict`` keys.

    Raises:
        ValueError: the method takes graph context (LSP, ...): its graphs live inside each
            input graph, which no rank splits, so it needs no gathering.

    Example:
        >>> loss = GlobalBatch(RKD())
        >>> loss(f_s, f_t)       # on 1 process: exactly RKD()(f_s, f_t)
    """

    global_batch = True

    def __init__(self, loss: nn.Module, *, group: Any = None) -> None:
        super().__init__()
        _check_globalizable(loss)
        self.loss = loss
        self.group = group
        self.level = _flags(loss).level
        self.family = _flags(loss).family

    def forward(self, f_s: Any, f_t: Any, **context: Any) -> Tensor:
        f_s, f_t = _gather_pair(f_s, f_t, self.group)
        return self.loss(f_s, f_t)


def _flags(loss: nn.Module | type[DistillLoss]) -> DistillLoss | type[DistillLoss]:
    """Where the capability flags of ``loss`` are read: the loss (or loss class) itself, or the
    :class:`~graphkd.losses.base.DistillLoss` defaults for a plain ``nn.Module`` used as a
    method (no context, ``level="batch"``, ``global_batch=False``)."""
    if isinstance(loss, DistillLoss) or (isinstance(loss, type) and issubclass(loss, DistillLoss)):
        return loss
    return DistillLoss


def wants_global_batch(loss: nn.Module | type[DistillLoss]) -> bool:
    """Whether the DDP layer gathers ``loss``'s features over ranks (:func:`globalize`).

    ``loss`` is a method instance or class (a plain ``nn.Module`` has the base defaults).

    Read from the method's class attributes, so a newly registered method needs nothing here:
    a method is gathered when it reads no graph context (``context == ()``: relations inside
    each input graph never span ranks) and either compares per-sample embeddings
    (``level == "batch"``) or declares ``global_batch = True`` (a node-level method whose
    relations span the whole batch, e.g. G-CRD).
    """
    flags = _flags(loss)
    return not flags.context and (flags.level == "batch" or flags.global_batch)


def _check_globalizable(loss: nn.Module) -> None:
    ctx = tuple(_flags(loss).context)
    if ctx:
        raise ValueError(
            f"{type(loss).__name__} reads graph context {ctx}: its relation graphs live inside "
            "each input graph, which DDP never splits across ranks, so it needs no global "
            "batch. Only batch-level methods (SP, RKD, PKT, CC, HKD, G-CRD, GKD, IRG) are "
            "gathered."
        )


def make_global(loss: nn.Module, *, group: Any = None) -> Any:
    """Make ``loss`` gather its inputs over ranks in place (a forward pre-hook).

    Unlike :class:`GlobalBatch` the module keeps its identity and ``state_dict`` keys (so
    checkpoints load in a single process). Returns the hook handle (``.remove()`` undoes it).
    """
    _check_globalizable(loss)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        f_s, f_t = _gather_pair(args[0], args[1], group)
        return (f_s, f_t, *args[2:]), kwargs

    return loss.register_forward_pre_hook(hook, with_kwargs=True)


def _wants_global(loss: nn.Module, methods: Iterable[str] | None) -> bool:
    if methods is not None:
        return _flags(loss).name in set(methods)
    return wants_global_batch(loss)


def globalize(distiller: nn.Module, *, methods: Iterable[str] | None = None,
              group: Any = None) -> list[Any]:
    """Make a set-up Distiller's relation methods run on the global batch (see module docs).

    Args:
        distiller: a :class:`~graphkd.distill.Distiller` after :meth:`~Distiller.setup`.
        methods: registered names to gather (default: every method for which
            :func:`wants_global_batch` holds: no graph context, and ``level == "batch"`` or
            ``global_batch``, e.g. SP, RKD, PKT, CC, IRG, GKD, HKD, MHGD and node-level G-CRD).
        group: the process group.

    Returns:
        the hook handles (remove them to go back to local batches).
    """
    if not getattr(distiller, "is_setup", False):
        raise RuntimeError("globalize() needs a set-up Distiller: pass example= to Distiller "
                           "(or call distiller.setup(batch)) first, so that its heads exist.")
    return [make_global(m, group=group) for m in distiller.match_losses
            if _wants_global(m, methods)]


def wrap(distiller: nn.Module, *, methods: Iterable[str] | None = None, group: Any = None,
         sync_batchnorm: bool = False, **ddp_kwargs: Any) -> nn.Module:
    """Globalize a set-up Distiller's relation methods and wrap it in DDP.

    DDP wraps the whole Distiller, so the student *and* the methods' trainable heads are
    synchronised; the frozen teacher is outside ``parameters()`` and is simply replicated
    (each rank builds or loads the same teacher). Outside ``torch.distributed`` returns the
    Distiller unchanged. ``ddp_kwargs`` go to ``DistributedDataParallel`` (``device_ids`` is set
    to the student's CUDA device when it has one); pass ``find_unused_parameters=True`` when some
    trainable parameter gets no gradient in a step (e.g. a two-stage method's stage-1 heads).
    The student's BatchNorm layers use per-rank statistics unless ``sync_batchnorm=True``,
    which converts them (:func:`graphkd.sync_batchnorm.convert_sync_batchnorm`, in place,
    keeping parameters, buffers and hooks) to :class:`graphkd.sync_batchnorm.SyncBatchNorm`:
    statistics and their gradients over the global batch of ``group``, on CPU (gloo) as on
    CUDA, so the student's forward and backward equal one process on the concatenated batch.
    """
    if not is_distributed():
        return distiller
    if sync_batchnorm:
        distiller.student = convert_sync_batchnorm(distiller.student, process_group=group)
    globalize(distiller, methods=methods, group=group)
    first = next(distiller.parameters(), None)
    if first is not None and first.device.type == "cuda" and "device_ids" not in ddp_kwargs:
        ddp_kwargs["device_ids"] = [first.device]
    return nn.parallel.DistributedDataParallel(distiller, process_group=group, **ddp_kwargs)


# --------------------------------------------------------------------------- processes
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_distributed(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (and ``LOCAL_RANK``, which
    selects the CUDA device). ``backend`` defaults to ``"nccl"`` with CUDA, else ``"gloo"``.
    Returns ``False`` (and does nothing) when ``WORLD_SIZE`` is unset or 1, or when a group is
    already initialised.
    """
    if dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE is set but {key} is not; start the processes with "
                               "torchrun or graphkd.distributed.launch().")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _worker(local_rank: int, fn: Callable[..., Any], nproc: int, port: int,
            backend: str | None, args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank),
                      WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed(backend)
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable[..., Any], nproc: int, *args: Any, backend: str | None = None) -> None:
    """Run ``fn(*args)`` in ``nproc`` processes with an initialised process group.

    * ``nproc == 1``: calls ``fn(*args)`` here, without ``torch.distributed``.
    * Already under torchrun (``WORLD_SIZE`` set): initialises from its environment and calls
      ``fn`` once in this process (torchrun started the others); ``nproc`` must match.
    * Otherwise: spawns ``nproc`` processes (``torch.multiprocessing.spawn``) on one machine,
      rendezvous on a free port of 127.0.0.1; an exception in any of them is re-raised here.

    ``fn`` and ``args`` must be picklable (a module-level function). ``backend`` defaults to
    NCCL with CUDA (one GPU per rank, ``LOCAL_RANK``) and gloo on CPU.
    """
    if nproc < 1:
        raise ValueError(f"`nproc` must be >= 1, got {nproc}.")
    env_world = int(os.environ.get("WORLD_SIZE", "0") or 0)
    if env_world > 1:
        if env_world != nproc:
            raise ValueError(f"running under torchrun with WORLD_SIZE={env_world} but "
                             f"nproc={nproc}; drop --nproc or make them agree.")
        started = init_distributed(backend)
        try:
            fn(*args)
        finally:
            if started:
                dist.destroy_process_group()
        return
    if nproc == 1:
        fn(*args)
        return
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(fn, nproc, free_port(), backend, args), nprocs=nproc, join=True)
