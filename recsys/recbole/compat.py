"""Every workaround for RecBole 1.2.1 on the project's pinned stack, in one place.

Each function names the upstream problem it works around. :func:`apply_patches` is called once when
:mod:`recsys.recbole` is imported; it is idempotent and changes nothing where the upstream code
already works.

* scipy >= 1.13 removed ``dok_matrix._update``, which RecBole's LightGCN, NGCF, GCMC, NCL and
  SpectralCF call to fill their adjacency matrix (RUCAIBox/RecBole#2034, #2090):
  :func:`patch_scipy_dok_update` puts a faithful ``_update`` back.
* torch >= 2.6 loads with ``weights_only=True`` by default, which refuses RecBole's checkpoints
  (a pickled ``Config`` at ``pickle_protocol=4``), so ``Trainer.evaluate(load_best_model=True)``
  and ``resume_checkpoint`` crash (RUCAIBox/RecBole#2155, #2212). Our trainers write checkpoints
  of tensors and numbers only (see :mod:`recsys.recbole.trainer`); to *read* a checkpoint that
  RecBole itself wrote, :func:`load_recbole_checkpoint` unpickles it with an allow-list of exact
  ``(module, name)`` pairs (tensors, RecBole's ``Config`` and enums, the model class reference;
  no dotted names, no calls of ``Config`` or of class references) instead of
  ``weights_only=False``.
* pandas 2.2 warns about chained in-place ``fillna`` in ``recbole/data/dataset/dataset.py``
  (the copy-on-write warning of pandas-dev/pandas#53779; the code still works on pandas < 3, which
  the ``recbole`` extra pins) and torch warns that ``torch.cuda.amp.GradScaler`` is deprecated
  (``recbole/trainer/trainer.py``), and that ``torch.sparse.FloatTensor`` is deprecated
  (LightGCN/NGCF ``get_norm_adj_mat``): :func:`silence_known_warnings` filters exactly these
  messages, raised from those modules.
* ``Config`` parses ``sys.argv`` for ``--key=value`` pairs, so a host program's own options leak
  into RecBole's config: :func:`make_config` builds a ``Config`` with ``sys.argv`` hidden.
* RecBole's multi-process mode (``run(..., nproc=N)``: ``local_rank`` / ``world_size`` / ``ip`` /
  ``port`` / ``offset`` in the config) hard-codes NCCL and CUDA: ``Config._init_device`` calls
  ``init_process_group(backend="nccl")`` and ``torch.cuda.set_device``, and
  ``AbstractTrainer.__init__`` passes ``device_ids=[local_rank]`` to ``DistributedDataParallel``
  and converts BatchNorm to ``torch.nn.SyncBatchNorm`` (CUDA only), so it cannot run on CPU, and
  a second ``Config`` in the same process fails ("default process group twice").
  :func:`patch_distributed_device` keeps RecBole's behaviour on CUDA and uses gloo on CPU
  (``device_ids=None``, :class:`graphkd.sync_batchnorm.SyncBatchNorm`), initialising the group
  once.
* ``Trainer.__init__`` always creates ``./log_tensorboard/<name>`` in the current directory
  (``recbole.utils.get_tensorboard`` has a hard-coded base path): :func:`tensorboard_redirect`
  writes there only when asked, into a chosen directory, and uses a no-op writer otherwise.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from graphkd.safe_pickle import AllowListUnpickler

__all__ = [
    "apply_patches",
    "patch_scipy_dok_update",
    "silence_known_warnings",
    "make_config",
    "load_recbole_checkpoint",
    "patch_distributed_device",
    "tensorboard_redirect",
    "NullWriter",
]

def _dok_update(self: Any, data: dict) -> None:
    """``dok_matrix._update`` as scipy < 1.13 had it: bulk-insert ``{(row, col): value}``."""
    store = getattr(self, "_dict", None)
    if store is not None:  # scipy >= 1.13: the dict is an attribute
        store.update(data)
    else:  # scipy < 1.13: dok_matrix *is* a dict
        dict.update(self, data)


def patch_scipy_dok_update() -> bool:
    """Restore ``scipy.sparse.dok_matrix._update`` where scipy >= 1.13 removed it.

    Works around RUCAIBox/RecBole#2034 (``AttributeError: 'dok_matrix' object has no attribute
    '_update'`` in LightGCN/NGCF/GCMC/NCL/SpectralCF ``get_norm_adj_mat``).

    Returns:
        True when the patch was installed, False when scipy already has the method.
    """
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return False
    sp.dok_matrix._update = _dok_update  # type: ignore[attr-defined]
    return True


def silence_known_warnings() -> None:
    """Filter the harmless upstream deprecation warnings RecBole 1.2.1 raises on every run.

    Only these exact messages from these modules are filtered; everything else still shows.
    """
    # pandas-dev/pandas#53779 (CoW chained-assignment warning) from recbole.data.dataset.dataset
    warnings.filterwarnings(
        "ignore", message=r"A value is trying to be set on a copy of a DataFrame or Series "
        r"through chained assignment", category=FutureWarning, module=r"recbole\.data\.dataset")
    # torch.cuda.amp.GradScaler deprecation from recbole.trainer.trainer (_train_epoch)
    warnings.filterwarnings(
        "ignore", message=r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
        category=FutureWarning, module=r"recbole\.trainer")
    # pandas' Series.agg(len) deprecation from Dataset._split_seq (token_seq fields such as
    # the context-aware models' genres)
    warnings.filterwarnings(
        "ignore", message=r"using <built-in function len> in Series\.agg cannot aggregate",
        category=FutureWarning, module=r"recbole\.data\.dataset")
    # torch.sparse.FloatTensor deprecation from LightGCN/NGCF get_norm_adj_mat
    warnings.filterwarnings(
        "ignore", message=r"torch\.sparse\.SparseTensor\(indices, values, shape",
        category=UserWarning, module=r"recbole\.model")


def apply_patches() -> None:
    """Install every workaround of this module (idempotent: ``warnings.filterwarnings`` drops
    duplicates, so calling it again re-installs filters that a ``catch_warnings`` block reset)."""
    patch_scipy_dok_update()
    silence_known_warnings()
    patch_distributed_device()


# ----------------------------------------------------------------------------- distributed
def _uses_cuda(gpu_id: str) -> bool:
    return len(gpu_id) > 0 and torch.cuda.is_available()


def _init_device(self: Any) -> None:
    """``Config._init_device`` of RecBole 1.2.1, with gloo on CPU in multi-process mode and a
    process group initialised at most once per process."""
    import torch.distributed as dist

    cfg = self.final_config_dict
    gpu_id = cfg["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
    cfg["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    cuda = _uses_cuda(gpu_id)
    if "local_rank" not in cfg:
        cfg["single_spec"] = True
        cfg["local_rank"] = 0
        cfg["device"] = torch.device("cuda") if cuda else torch.device("cpu")
        return
    if cuda and len(gpu_id.split(",")) < cfg["nproc"]:
        raise ValueError(f"nproc={cfg['nproc']} needs one GPU per process but gpu_id is "
                         f"{gpu_id!r}")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=cfg["local_rank"] + cfg["offset"], world_size=cfg["world_size"],
            init_method=f"tcp://{cfg['ip']}:{cfg['port']}")
    cfg["single_spec"] = False
    if cuda:
        cfg["device"] = torch.device("cuda", cfg["local_rank"])
        torch.cuda.set_device(cfg["local_rank"])
    else:
        cfg["device"] = torch.device("cpu")
    if cfg["local_rank"] != 0:
        cfg["state"] = "error"
        cfg["show_progress"] = False
        cfg["verbose"] = False


def _trainer_init(self: Any, config: Any, model: Any) -> None:
    """``AbstractTrainer.__init__`` of RecBole 1.2.1 that also runs DDP on CPU."""
    from torch.nn.parallel import DistributedDataParallel

    self.config = config
    self.model = model
    if not config["single_spec"]:
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                     for m in model.modules())
        device_ids: list[int] | None = None
        if config["device"].type == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            device_ids = [config["local_rank"]]
        elif has_bn:
            from graphkd.sync_batchnorm import convert_sync_batchnorm

            self.model = convert_sync_batchnorm(model)
        self.distributed_model = DistributedDataParallel(self.model, device_ids=device_ids)


def patch_distributed_device() -> bool:
    """Let RecBole's multi-process mode run on CPU (gloo) as well as on CUDA (nccl).

    Returns:
        True when the patch was installed now, False when it already was.
    """
    from recbole.config import Config
    from recbole.trainer.trainer import AbstractTrainer

    if getattr(Config._init_device, "_graphkd", False):
        return False
    _init_device._graphkd = True  # type: ignore[attr-defined]
    Config._init_device = _init_device
    AbstractTrainer.__init__ = _trainer_init
    return True


# ----------------------------------------------------------------------------- config
def make_config(model: Any, dataset: str, config_file_list: list[str] | None = None,
                config_dict: dict[str, Any] | None = None) -> Any:
    """``recbole.config.Config(...)`` without reading the host program's ``sys.argv``.

    RecBole's ``Config`` treats every ``--key=value`` in ``sys.argv`` as a config entry (with the
    highest priority); a CLI or pytest that has its own options would silently change the
    experiment. The original ``sys.argv`` is restored afterwards.
    """
    from recbole.config import Config

    saved = sys.argv
    sys.argv = saved[:1] if saved else ["recsys"]
    try:
        return Config(model=model, dataset=dataset, config_file_list=config_file_list,
                      config_dict=dict(config_dict) if config_dict else None)
    finally:
        sys.argv = saved


# ----------------------------------------------------------------------------- checkpoints
# What a RecBole 1.2.1 checkpoint pickles besides tensors (found by unpickling the files RecBole's
# own Trainer writes), as exact (module, name) pairs. Nothing else is ever resolved: no prefix
# matches, and no dotted names (pickle protocol 4 resolves "a.b" attribute chains, so a name like
# "torch.os.system" in an allowed module would reach any function).
#
# Globals the file may *call* (REDUCE/NEWOBJ): harmless with any arguments.
_CALLABLE_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("collections", "OrderedDict"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),  # numpy >= 2 writes these names
    ("numpy._core.multiarray", "_reconstruct"),
    ("recbole.utils.enum_type", "ModelType"),
    ("recbole.utils.enum_type", "InputType"),
    ("recbole.utils.enum_type", "EvaluatorType"),
    ("recbole.utils.enum_type", "FeatureType"),
    ("recbole.utils.enum_type", "FeatureSource"),
})
# Class references that a Config stores and never calls (Config.yaml_loader; Config.model_class
# is any RecBole model class, matched exactly): they stand as inert placeholders while the file is
# unpickled, so that the file cannot call them, and are put back afterwards.
_REFERENCE_GLOBALS: frozenset[tuple[str, str]] = frozenset({("yaml.loader", "FullLoader")})
# RecBole's Config is rebuilt field by field (NEWOBJ + BUILD) into a subclass whose constructor
# refuses (Config(...) reads files, sets CUDA_VISIBLE_DEVICES and may join a process group), then
# given back its own class.
_CONFIG_GLOBAL = ("recbole.config.configurator", "Config")


def _refuse(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(
        f"refusing to load {what} from a RecBole checkpoint: only tensors, RecBole's Config, "
        "its enums and RecBole model class references are allowed. Load the file with "
        "torch.load(path, weights_only=False) yourself only if you trust it.")


class _Reference:
    """An inert stand-in for a class reference while a checkpoint is unpickled."""

    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        self.target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse(f"a call of {self.target.__module__}.{self.target.__qualname__}")

    def __setstate__(self, state: Any) -> None:  # BUILD must not retarget a placeholder
        raise _refuse("state for a class reference")


_CONFIG_SHELL: type | None = None


def _config_shell() -> type:
    """``recbole.config.Config`` with a constructor that refuses (built once, lazily)."""
    global _CONFIG_SHELL
    if _CONFIG_SHELL is None:
        from recbole.config import Config

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            raise _refuse("a call of recbole.config.Config(...)")

        _CONFIG_SHELL = type("Config", (Config,), {"__init__": __init__,
                                                   "__module__": __name__})
    return _CONFIG_SHELL


def _model_class(module: str, name: str) -> type | None:
    """The RecBole model class ``module.name`` if that is exactly one, else None."""
    if not (module.startswith("recbole.model.") and name.isidentifier()
            and not name.startswith("_")):
        return None
    from recbole.model.abstract_recommender import AbstractRecommender
    from recbole.utils import get_model

    try:
        cls = get_model(name)  # imports recbole.model.<kind>.<name.lower()> only
    except (ValueError, ImportError, AttributeError):
        return None
    if (isinstance(cls, type) and issubclass(cls, AbstractRecommender)
            and (cls.__module__, cls.__name__) == (module, name)):
        return cls
    return None


class _RecBoleUnpickler(AllowListUnpickler):
    """An unpickler that resolves only the exact globals of :data:`_CALLABLE_GLOBALS`, RecBole's
    ``Config`` (as a shell that cannot be constructed by a call) and inert class references
    (the exact allow-list and the dotted-name refusal: :class:`graphkd.safe_pickle.
    AllowListUnpickler`)."""

    allowed = _CALLABLE_GLOBALS

    def refuse(self, what: str) -> pickle.UnpicklingError:
        return _refuse(what)

    def resolve(self, module: str, name: str) -> Any:
        key = (module, name)
        if key == _CONFIG_GLOBAL:
            return _config_shell()
        if key in _REFERENCE_GLOBALS:
            return _Reference(self.lookup(module, name))
        cls = _model_class(module, name)
        if cls is not None:
            return _Reference(cls)
        raise _refuse(f"{module}.{name}")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RecBoleUnpickler(file, **kwargs).load()


# The ``pickle_module`` torch.load gets: every unpickling goes through _RecBoleUnpickler (torch's
# legacy, non-zip format calls ``pickle_module.load`` directly, so ``load`` is restricted too).
_restricted_pickle = types.ModuleType("_recbole_restricted_pickle")
_restricted_pickle.Unpickler = _RecBoleUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
_restricted_pickle.__name__ = "_recbole_restricted_pickle"


def _restore(obj: Any, seen: set[int]) -> Any:
    """Put the real classes back: placeholders -> their targets, Config shells -> Config."""
    if isinstance(obj, _Reference):
        return obj.target
    if id(obj) in seen:
        return obj
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in list(obj.items()):
            obj[k] = _restore(v, seen)
    elif isinstance(obj, list):
        seen.add(id(obj))
        obj[:] = [_restore(v, seen) for v in obj]
    elif type(obj) is tuple:
        return tuple(_restore(v, seen) for v in obj)
    elif _CONFIG_SHELL is not None and type(obj) is _CONFIG_SHELL:
        seen.add(id(obj))
        obj.__class__ = _CONFIG_SHELL.__mro__[1]
        _restore(obj.__dict__, seen)
    return obj


def load_recbole_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by RecBole's own ``Trainer._save_checkpoint``.

    torch >= 2.6 refuses these files with ``weights_only=True`` (RUCAIBox/RecBole#2155): they
    pickle RecBole's ``Config`` with protocol 4, which torch's weights-only unpickler cannot
    read at all (so ``torch.serialization.safe_globals`` cannot help). Instead of
    ``weights_only=False`` (arbitrary code execution), they are unpickled by an unpickler that
    resolves only the exact ``(module, name)`` pairs such a file contains (tensors, numbers,
    ``Config`` and its enums, the model class and YAML loader references) and never lets the
    file call ``Config`` or a class reference.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        pickle.UnpicklingError: the file needs a global outside the allow-list, or is not a
            readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    importlib.import_module("recbole.config")  # the allowed classes must be importable
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False,
                        pickle_module=_restricted_pickle)
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # a malformed file: same error type as a refused one
        raise pickle.UnpicklingError(f"{path} is not a readable RecBole checkpoint: "
                                     f"{type(exc).__name__}: {exc}") from exc
    return _restore(ck, set())


# ----------------------------------------------------------------------------- tensorboard
class NullWriter:
    """A stand-in for ``SummaryWriter`` that records nothing (every method is a no-op)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def tensorboard_redirect(log_dir: str | os.PathLike | None) -> Iterator[None]:
    """While active, RecBole trainers get a ``SummaryWriter`` in ``log_dir`` or, when ``log_dir``
    is None, a :class:`NullWriter` (so nothing is written into the current directory)."""
    import recbole.trainer.trainer as rt

    original = rt.get_tensorboard

    def _writer(logger: Any) -> Any:
        if log_dir is None:
            return NullWriter()
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(log_dir))

    rt.get_tensorboard = _writer
    try:
        yield
    finally:
        rt.get_tensorboard = original
