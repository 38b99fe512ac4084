"""Experiment configs: YAML files validated into typed dataclasses, with errors that name the fix.

A config describes one distillation experiment: the data, a teacher and a student (model preset +
training schedule), and the methods to compare, each a list of layer :class:`MatchConfig`
(teacher layer path, student layer path, loss name, weight, hyperparameters) plus an optional
logit-level KD term. Example (``configs/pointcloud_digits.yaml``)::

    name: pointcloud_digits
    data: {name: digits, kwargs: {num_points: 64}}
    teacher:
      model: {preset: dgcnn_teacher}
      train: {epochs: 20, batch_size: 32, optimizer: {name: adam, lr: 0.001}}
    student:
      model: {preset: dgcnn_student}
      train: {epochs: 20, batch_size: 32}
    methods:
      student: {}                          # the student alone (cross-entropy only)
      kd: {logits_weight: 0.9, tau: 4.0}
      lsp:
        matches:
          - {teacher: convs.2, student: convs.1, method: lsp, weight: 100.0}

Loading is strict: an unknown key, a value of the wrong type, a negative learning rate or an
unknown loss name raises :class:`ConfigError` whose message gives the dotted path of the bad
entry (``teacher.train.epochs``), what was expected and, for typos, the closest valid key.

Size: one cohesive job (the schema of every config section and its validation with path-naming
errors) keeps this module above the project's ~450-line guide.

Example:
    >>> cfg = load_config("configs/pointcloud_digits.yaml")      # doctest: +SKIP
    >>> cfg.teacher.train.epochs, [m for m in cfg.methods]       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

__all__ = [
    "ConfigError",
    "OptimizerConfig",
    "TrainConfig",
    "ModelConfig",
    "RoleConfig",
    "DataConfig",
    "MatchConfig",
    "MethodConfig",
    "ExperimentConfig",
    "from_dict",
    "to_dict",
    "load_config",
    "config_hash",
    "apply_overrides",
]

T = TypeVar("T")

#: Optimizer names accepted by :class:`OptimizerConfig` (built by
#: :func:`graphkd.pipeline.training.build_optimizer`).
OPTIMIZERS = ("adam", "adamw", "sgd")
#: Learning-rate schedules accepted by :class:`OptimizerConfig`.
SCHEDULERS = ("none", "cosine", "step")
#: Field-metadata key: leave the field out of :func:`to_dict` while it holds its default.
OMIT_IF_DEFAULT = "omit_if_default"


class ConfigError(ValueError):
    """A config entry is missing, unknown, of the wrong type or out of range."""


# ----------------------------------------------------------------------------- dataclasses
@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        name: one of ``adam``, ``adamw``, ``sgd``.
        lr: learning rate (> 0).
        weight_decay: L2 penalty (>= 0).
        momentum: SGD momentum (ignored by Adam).
        scheduler: ``none``, ``cosine`` (to 0 over the epochs) or ``step`` (x0.5 every
            ``step_size`` epochs).
        step_size: epochs between decays of the ``step`` schedule.
    """

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "none"
    step_size: int = 20

    def validate(self, path: str) -> None:
        _choice(self.name, OPTIMIZERS, f"{path}.name")
        _choice(self.scheduler, SCHEDULERS, f"{path}.scheduler")
        _positive(self.lr, f"{path}.lr")
        _non_negative(self.weight_decay, f"{path}.weight_decay")
        _positive(self.step_size, f"{path}.step_size")


@dataclass
class TrainConfig:
    """Training schedule of one model.

    Attributes:
        epochs: number of epochs (> 0); the reported test metric is the one at the epoch with
            the best validation metric.
        batch_size: graphs per batch (> 0).
        eval_batch_size: graphs per batch at evaluation (default: ``batch_size``).
        optimizer: see :class:`OptimizerConfig`.
        grad_clip: max gradient norm, ``None`` for no clipping.
        select: the reported epoch: ``best`` (validation; the default) or ``last`` (for
            validation splits too small to rank epochs; see :func:`graphkd.train.fit`).
    """

    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    grad_clip: float | None = None
    select: str = field(default="best", metadata={OMIT_IF_DEFAULT: True})

    def validate(self, path: str) -> None:
        _positive(self.epochs, f"{path}.epochs")
        _positive(self.batch_size, f"{path}.batch_size")
        if self.eval_batch_size is not None:
            _positive(self.eval_batch_size, f"{path}.eval_batch_size")
        if self.grad_clip is not None:
            _positive(self.grad_clip, f"{path}.grad_clip")
        self.optimizer.validate(f"{path}.optimizer")
        if self.select not in ("best", "last"):
            raise ConfigError(f"{path}.select: 'best' or 'last', got {self.select!r}.")


@dataclass
class ModelConfig:
    """A model: a preset name of ``graphkd.models`` plus keyword overrides.

    Attributes:
        preset: registered preset (e.g. ``dgcnn_teacher``) or architecture name.
        kwargs: constructor overrides (``hidden``, ``num_layers``, ``k`` ...). Input width and
            number of classes come from the dataset.
    """

    preset: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        if not self.preset:
            raise ConfigError(f"{path}.preset: required (a model preset name, e.g. 'dgcnn').")


@dataclass
class RoleConfig:
    """The teacher or the student: which model, how it is trained."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, path: str) -> None:
        self.model.validate(f"{path}.model")
        self.train.validate(f"{path}.train")


@dataclass
class DataConfig:
    """The dataset.

    Attributes:
        name: dataset name in ``graphkd.datasets`` (e.g. ``digits``, ``modelnet40``, ``chembl``,
            ``ogbg-molhiv``).
        root: data root (default: the library's default, ``datasets/``).
        kwargs: loader options (``num_points``, split fractions, ...).
        num_workers: DataLoader workers.
    """

    name: str = ""
    root: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0

    def validate(self, path: str) -> None:
        if not self.name:
            raise ConfigError(f"{path}.name: required (a dataset name, e.g. 'digits').")
        _non_negative(self.num_workers, f"{path}.num_workers")


@dataclass
class MatchConfig:
    """One distilled layer pair.

    Attributes:
        teacher: dotted module path in the teacher (``convs.2``), or a list of paths for
            multi-layer methods (IRG: ``[pool, head]``; MHGD: consecutive layers).
        student: the matching student path(s), as many as ``teacher``.
        method: registered loss name (``lsp``, ``gcrd``, ...; see ``graphkd.losses.loss_names``).
        weight: multiplier of this loss in the total (>= 0).
        kwargs: hyperparameters of the loss's constructor.
    """

    teacher: str | list[str] = ""
    student: str | list[str] = ""
    method: str = ""
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        for key in ("teacher", "student", "method"):
            if not getattr(self, key):
                raise ConfigError(f"{path}.{key}: required.")
        if isinstance(self.teacher, list) != isinstance(self.student, list) or (
                isinstance(self.teacher, list) and len(self.teacher) != len(self.student)):
            raise ConfigError(f"{path}: teacher {self.teacher!r} and student {self.student!r} "
                              "must both be one path or lists of the same length.")
        _non_negative(self.weight, f"{path}.weight")


@dataclass
class MethodConfig:
    """A distillation method to compare: layer matches plus an optional logit KD term.

    The student's loss is ``(1 - logits_weight) * CE + logits_weight * KD_tau
    + sum_m weight_m * L_m`` (with ``logits_weight = 0`` no teacher logits are used).
    An empty method (no matches, ``logits_weight = 0``) is the student trained alone.

    Attributes:
        matches: layer pairs and their losses.
        logits_weight: α of the logit KD term, in ``[0, 1]``.
        tau: temperature of the logit KD term.
        task_weight: multiplier of the cross-entropy term; default ``1 - logits_weight``.
        pretrain_epochs: stage-1 epochs of two-stage methods (MHGD); ignored by the others.
    """

    matches: list[MatchConfig] = field(default_factory=list)
    logits_weight: float = 0.0
    tau: float = 4.0
    task_weight: float | None = None
    pretrain_epochs: int = 2

    @property
    def uses_teacher(self) -> bool:
        """Whether this method needs the teacher at all."""
        return bool(self.matches) or self.logits_weight > 0

    def validate(self, path: str) -> None:
        if not 0.0 <= self.logits_weight <= 1.0:
            raise ConfigError(f"{path}.logits_weight: must be in [0, 1], got {self.logits_weight}.")
        _positive(self.tau, f"{path}.tau")
        _positive(self.pretrain_epochs, f"{path}.pretrain_epochs")
        if self.task_weight is not None:
            _non_negative(self.task_weight, f"{path}.task_weight")
        for i, m in enumerate(self.matches):
            m.validate(f"{path}.matches[{i}]")


@dataclass
class ExperimentConfig:
    """A whole experiment: data, teacher, student, methods, seeds, where to write.

    Attributes:
        name: experiment name (used for run directories and report titles): a plain folder
            name, created under ``output_dir`` (no ``..``, no path separator, not absolute).
        data: see :class:`DataConfig`.
        teacher: see :class:`RoleConfig`.
        student: see :class:`RoleConfig`.
        methods: method name -> :class:`MethodConfig`, in the order of the report.
        seeds: student seeds (the teacher is trained once, with ``teacher_seed``).
        teacher_seed: seed of the teacher's training.
        metric: a name of the metric table :mod:`graphkd.metrics`: ``accuracy``,
            ``macro_f1`` or ``roc_auc`` (binary, OGB-style); stored in its canonical spelling
            (``rocauc`` is accepted with a ``DeprecationWarning``).
        device: ``cpu``, ``cuda``, ``cuda:1`` ... or ``auto``.
        sync_batchnorm: with several processes (``graphkd distill --nproc N``, torchrun),
            convert the student's BatchNorm layers to
            :class:`graphkd.sync_batchnorm.SyncBatchNorm` (statistics over the global batch,
            CPU and CUDA) before DDP; CLI ``--sync-bn``. No effect in a single process, on the
            teacher, or on the cached teacher checkpoint.
        output_dir: directory for checkpoints, logs and reports.
        threads: ``torch.set_num_threads`` (``None``: torch's default).
    """

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: RoleConfig = field(default_factory=RoleConfig)
    student: RoleConfig = field(default_factory=RoleConfig)
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    teacher_seed: int = 0
    metric: str = "accuracy"
    device: str = "cpu"
    sync_batchnorm: bool = False
    output_dir: str = "runs"
    threads: int | None = None

    def validate(self, path: str = "config", *, check_registry: bool = True) -> None:
        """Check ranges and names; raise :class:`ConfigError` naming the bad entry.

        Args:
            path: prefix of the dotted paths in error messages.
            check_registry: also check every match's ``method`` against the loss registry.
        """
        _plain_name(self.name, f"{path}.name")
        self.data.validate(f"{path}.data")
        self.teacher.validate(f"{path}.teacher")
        self.student.validate(f"{path}.student")
        self.metric = _metric_name(self.metric, f"{path}.metric")
        if not self.methods:
            raise ConfigError(f"{path}.methods: at least one method is required (e.g. 'kd').")
        if not self.seeds:
            raise ConfigError(f"{path}.seeds: at least one seed is required.")
        if self.threads is not None:
            _positive(self.threads, f"{path}.threads")
        for name, method in self.methods.items():
            method.validate(f"{path}.methods.{name}")
        if check_registry:
            from graphkd.losses import LOSSES

            names = LOSSES.names()
            for mname, method in self.methods.items():
                for i, m in enumerate(method.matches):
                    if LOSSES.find(m.method) is None:
                        raise ConfigError(
                            f"{path}.methods.{mname}.matches[{i}].method: unknown loss "
                            f"{m.method!r}{_suggest(m.method, names)}; valid names: {names}."
                        )


# ----------------------------------------------------------------------------- conversion
def _suggest(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plain_name(value: str, path: str) -> None:
    """``value`` must be a plain file-name component: it names a folder under ``output_dir``."""
    from graphkd.fileio import check_name

    try:
        check_name(value, path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _metric_name(value: str, path: str) -> str:
    """The canonical name of metric ``value`` (:mod:`graphkd.metrics`); the deprecated
    spelling ``rocauc`` warns."""
    import warnings

    from graphkd.metrics import DEPRECATED, METRICS

    name = METRICS.find(value) if isinstance(value, str) else None
    if name is None:
        names = METRICS.names()
        raise ConfigError(f"{path}: {value!r} is not one of {names}{_suggest(str(value), names)}.")
    if value.lower() in DEPRECATED:
        warnings.warn(f"{path}: {value!r} is deprecated; write {name!r}.", DeprecationWarning,
                      stacklevel=4)
    return name


def _positive(value: float, path: str) -> None:
    if not value > 0:
        raise ConfigError(f"{path}: must be > 0, got {value!r}.")


def _non_negative(value: float, path: str) -> None:
    if not value >= 0:
        raise ConfigError(f"{path}: must be >= 0, got {value!r}.")


def _choice(value: str, options: typing.Sequence[str], path: str) -> None:
    if value not in options:
        raise ConfigError(
            f"{path}: {value!r} is not one of {list(options)}{_suggest(value, options)}."
        )


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError with ``path``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: required, got null.")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{path}: expected {_type_name(tp)}, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}.")
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp) or (str, Any)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}.")
        return {str(k): _convert(v, item, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}.")
        return value
    return value  # pragma: no cover - no other annotation is used


def from_dict(cls: type[T], data: Any, path: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Args:
        cls: a dataclass type of this module.
        data: a mapping (``None`` means all defaults).
        path: dotted path of ``data`` for error messages.

    Raises:
        ConfigError: an unknown key (with the closest valid one), a wrong type, a missing
            required value.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__} {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"{path}: unknown key {key!r}{_suggest(str(key), names)}; valid keys: {names}."
            )
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-serialisable) dict of a config dataclass.

    A field added after results were keyed on these dicts carries
    ``metadata={OMIT_IF_DEFAULT: True}`` and is left out while it holds its default, so the
    teacher cache keys and run fingerprints (:func:`config_hash`) of configs that do not use it
    stay what they were.
    """
    return _plain(cfg)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get(OMIT_IF_DEFAULT) and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return copy.deepcopy(obj)


def config_hash(obj: Any, length: int = 12) -> str:
    """A short stable hash of a config (dataclass or plain data), for cache keys."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config mapping.

    Example:
        >>> apply_overrides({"teacher": {"train": {"epochs": 20}}}, ["teacher.train.epochs=2"])
        {'teacher': {'train': {'epochs': 2}}}
    """
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. seeds=[0,1].")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a mapping.")
            node = nxt
        node[parts[-1]] = _parse_scalar(text)
    return out


def load_config(
    source: str | Path | dict[str, Any], overrides: typing.Sequence[str] = (),
    *, check_registry: bool = True,
) -> ExperimentConfig:
    """Read a YAML file (or a mapping), apply overrides, validate, return the dataclass.

    Args:
        source: path to a YAML file, or an already-parsed mapping.
        overrides: ``key.path=value`` strings applied before validation.
        check_registry: check loss names against ``graphkd.losses``.

    Raises:
        ConfigError: a missing file, invalid YAML, or an invalid entry (message names it).
    """
    if isinstance(source, dict):
        data, where = source, None
    else:
        import yaml

        p = Path(source)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist (see configs/*.yaml).")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        where = p.name
    if overrides:
        data = apply_overrides(data or {}, overrides)
    try:
        cfg = from_dict(ExperimentConfig, data, "config")
        cfg.validate(check_registry=check_registry)
    except ConfigError as exc:
        if where is None:
            raise
        raise ConfigError(f"{where}: {exc}") from None
    return cfg
