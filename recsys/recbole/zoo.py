"""Build a RecBole recommender (general, sequential, traditional: :data:`MODEL_TYPES`) by name
with its own hyperparameters; save and load model state files that load with
``torch.load(..., weights_only=True)``.

A *sub-model config* is the experiment's RecBole ``Config`` (data fields, device, ...) overlaid
with the model's own YAML defaults shipped in RecBole (``recbole/properties/model/<Name>.yaml``)
and then with the caller's overrides (e.g. ``{"embedding_size": 20}``). Teacher and student thus
share one dataset and one data pipeline but keep separate hyperparameters.

State file format (``STATE_FORMAT``), tensors and plain values only::

    {"format": "graphkd.recbole.model/1", "model": "BPR", "model_config": {...},
     "dataset": "ml-100k", "n_users": 944, "n_items": 1683, "item_hash": "...",
     "state_dict": {...}}
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphkd.fileio import atomic_torch_save
from recsys.recbole.compat import load_recbole_checkpoint

__all__ = [
    "STATE_FORMAT",
    "MODEL_TYPES",
    "TEACHER_ONLY_TYPES",
    "model_class",
    "check_student",
    "model_type_name",
    "recbole_model_names",
    "did_you_mean",
    "model_defaults",
    "model_config",
    "build_recbole_model",
    "dataset_fingerprint",
    "save_model_state",
    "load_model",
    "file_digest",
]

STATE_FORMAT = "graphkd.recbole.model/1"


#: RecBole model types (``ModelType`` member names) that teacher and student may have, each with
#: the one-line description used in error messages. The data pipeline of a run is the student's
#: type's (:mod:`recsys.recbole.runner` dispatches on it); ``TRADITIONAL`` models (Pop, ItemKNN)
#: score every item but learn no parameters by gradient, so they may only be teachers.
MODEL_TYPES: dict[str, str] = {
    "GENERAL": "general recommenders (BPR, NeuMF, LightGCN, ...)",
    "SEQUENTIAL": "sequential recommenders (SASRec, GRU4Rec, BERT4Rec, NARM, ...)",
    "TRADITIONAL": "traditional recommenders (Pop, ItemKNN; teacher only)",
    "CONTEXT": "context-aware CTR models (FM, DeepFM, WideDeep, DCN, xDeepFM, AutoInt, ...)",
    "KNOWLEDGE": "knowledge-aware recommenders (KGAT, CKE; teacher only, recsys.recbole.kg)",
}
#: model types that cannot be a student (nothing to train by gradient)
TEACHER_ONLY_TYPES: frozenset[str] = frozenset({"TRADITIONAL", "KNOWLEDGE"})


def recbole_model_names() -> list[str]:
    """Every model RecBole ships (the names of its ``properties/model/<Name>.yaml`` files)."""
    import recbole

    folder = Path(recbole.__file__).parent / "properties" / "model"
    return sorted(p.stem for p in folder.glob("*.yaml"))


def did_you_mean(name: str, choices: list[str] | None = None) -> str:
    """`` (did you mean 'MultiVAE'?)`` for the closest RecBole model names to ``name``
    (case-insensitive :func:`difflib.get_close_matches`), or ``""`` when none is close.

    Example:
        >>> did_you_mean("MultVAE")
        " (did you mean 'MultiVAE' or 'MultiDAE'?)"
    """
    import difflib

    choices = recbole_model_names() if choices is None else choices
    lower = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(str(name).lower(), list(lower), n=3, cutoff=0.6)
    if not hits:
        return ""
    return " (did you mean " + " or ".join(repr(lower[h]) for h in hits) + "?)"


def model_type_name(cls: type) -> str:
    """The ``ModelType`` member name of a RecBole model class (``"GENERAL"``, ...; ``"?"``)."""
    kind = getattr(cls, "type", None)
    return str(getattr(kind, "name", "?"))


def model_class(name: str) -> type:
    """The RecBole model class called ``name`` (e.g. ``"BPR"``, ``"LightGCN"``, ``"SASRec"``).

    Accepted: the model types of :data:`MODEL_TYPES` (general and sequential recommenders, and
    traditional ones such as Pop / ItemKNN, which only :func:`check_student` refuses).

    Raises:
        ValueError: unknown name (with the closest RecBole names: ``MultVAE`` -> ``MultiVAE``),
            or a model type no data pipeline here serves (decision-tree models, ...).
    """
    from recbole.utils import get_model

    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    try:
        cls = get_model(name)
    except (ValueError, AttributeError, ImportError) as exc:
        raise ValueError(f"unknown RecBole model {name!r}{did_you_mean(name)}: use a RecBole "
                         "model name such as 'BPR', 'LightGCN', 'SASRec', 'GRU4Rec'") from exc
    kind = model_type_name(cls)
    if kind not in MODEL_TYPES:
        raise ValueError(f"{name} is a {kind} model; teacher and student must be RecBole "
                         + ", ".join(MODEL_TYPES.values()))
    return cls


def check_student(name: str) -> type:
    """:func:`model_class` for a student: also refuses teacher-only types (Pop, ItemKNN).

    Raises:
        ValueError: as :func:`model_class`, or a model with nothing to train by gradient.
    """
    cls = model_class(name)
    if model_type_name(cls) in TEACHER_ONLY_TYPES:
        raise ValueError(f"{name} is a {model_type_name(cls)} model "
                         f"({MODEL_TYPES[model_type_name(cls)]}): it can be a teacher, not a "
                         "student")
    return cls


#: RecBole's float resolver (``Config._build_yaml_loader``): YAML 1.1 floats plus exponent
#: floats without a dot (``1e-05``), which ``yaml.safe_load`` would leave as strings.
_RECBOLE_FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)

_SAFE_LOADER: type | None = None


def _yaml_loader() -> type:
    """``yaml.SafeLoader`` plus RecBole's float resolver (no Python tags, ``1e-05`` a float)."""
    global _SAFE_LOADER
    if _SAFE_LOADER is None:
        import yaml

        class RecBoleSafeLoader(yaml.SafeLoader):
            pass

        # on the subclass only: yaml copies the resolver table, SafeLoader is unchanged
        RecBoleSafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _RECBOLE_FLOAT,
                                                list("-+0123456789."))
        _SAFE_LOADER = RecBoleSafeLoader
    return _SAFE_LOADER


def model_defaults(name: str) -> dict[str, Any]:
    """The hyperparameter defaults RecBole ships for model ``name`` (empty when none).

    Read with a safe YAML loader that parses floats the way RecBole does (``1e-05`` -> 1e-05).

    Raises:
        ValueError: ``name`` is not a plain model name (a checkpoint's ``config["model"]``
            reaches here, so it must not name a file elsewhere).
    """
    import recbole
    import yaml

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"model name {name!r} is not a RecBole model name (a Python "
                         "identifier such as 'BPR' or 'LightGCN')")
    path = Path(recbole.__file__).parent / "properties" / "model" / f"{name}.yaml"
    if not path.is_file():
        return {}
    return dict(yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader()) or {})


def model_config(config: Any, name: str, overrides: dict[str, Any] | None = None) -> Any:
    """A copy of ``config`` for model ``name``: ``config`` < RecBole's model YAML < ``overrides``.

    The copy is independent: changing it does not change ``config``.
    """
    sub = copy.copy(config)
    final = dict(config.final_config_dict)
    final.update(model_defaults(name))
    final.update(overrides or {})
    final["model"] = name
    sub.final_config_dict = final
    return sub


def build_recbole_model(name: str, config: Any, dataset: Any,
                        overrides: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate RecBole model ``name`` on ``dataset`` with its own hyperparameters.

    Args:
        name: RecBole general recommender name.
        config: the experiment's RecBole ``Config``.
        dataset: the training ``Dataset`` (``train_data.dataset``).
        overrides: the model's hyperparameters (e.g. ``{"embedding_size": 20}``).

    Returns:
        The model on ``config["device"]``.
    """
    cls = model_class(name)
    sub = model_config(config, name, overrides)
    return cls(sub, dataset).to(config["device"])


def build_model(name: str, config: Any, dataset: Any,
                overrides: dict[str, Any] | None = None) -> nn.Module:
    """Deprecated alias of :func:`build_recbole_model`."""
    warnings.warn("recsys.recbole.zoo.build_model is deprecated: use build_recbole_model "
                  "(graphkd.models.build_model builds graphkd's own models).",
                  DeprecationWarning, stacklevel=2)
    return build_recbole_model(name, config, dataset, overrides)


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """``{"dataset", "n_users", "n_items", "item_hash"}``: what a model's item ids depend on."""
    iid = dataset.iid_field
    tokens = dataset.field2id_token[iid]
    digest = hashlib.sha256("\n".join(map(str, tokens)).encode()).hexdigest()[:16]
    return {"dataset": str(dataset.dataset_name), "n_users": int(dataset.user_num),
            "n_items": int(dataset.item_num), "item_hash": digest}


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def save_model_state(model: nn.Module, path: str | os.PathLike, *, name: str, config: Any,
                     dataset: Any, overrides: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a state file (loadable with ``weights_only=True``).

    ``model_config`` holds the model's RecBole YAML keys and ``overrides``, read from the
    sub-model config actually used, so that :func:`load_model` rebuilds the same architecture.
    """
    sub = model_config(config, name, overrides)
    keys = set(model_defaults(name)) | set(overrides or {})
    state = {
        "format": STATE_FORMAT,
        "model": name,
        "model_config": {k: _plain(sub[k]) for k in sorted(keys)},
        **dataset_fingerprint(dataset),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    other = _tensor_others(model)
    if other:
        state["other_parameter"] = other
    return atomic_torch_save(state, path)


def _tensor_others(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors among RecBole's ``other_parameter()`` (Pop's item counts): state that is not
    in ``state_dict``. Other entries (ItemKNN's scipy similarity matrix) are rebuilt from the
    dataset by the model's constructor, so they are not saved."""
    other = model.other_parameter() if hasattr(model, "other_parameter") else {}
    return {str(k): v.detach().cpu() for k, v in (other or {}).items()
            if isinstance(v, torch.Tensor)}


def file_digest(path: str | os.PathLike) -> str:
    """First 16 hex digits of the file's SHA-256 (cache keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).splitlines()), "")


def _read_checkpoint(path: Path) -> tuple[str, dict[str, Any], dict[str, Any], dict, dict]:
    """(model name, model overrides, fingerprint, state_dict, tensor other_parameter) from
    either file format."""
    try:
        with warnings.catch_warnings():  # a RecBole checkpoint is expected to fail here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        try:
            ck = load_recbole_checkpoint(path)
        except Exception as exc2:
            # exc is torch's generic weights_only message (it even suggests weights_only=False)
            raise ValueError(f"{path} is neither a graphkd model state file nor a RecBole "
                             f"checkpoint (weights-only load: {type(exc).__name__}; RecBole "
                             f"load: {type(exc2).__name__}: {_first_line(exc2)})") from exc2
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise ValueError(f"{path} holds no 'state_dict': pass a file written by "
                         "recsys.recbole (save_model_state / a trainer checkpoint) or a RecBole "
                         "checkpoint (saved/<Model>-<time>.pth)")
    if ck.get("format") == STATE_FORMAT:
        fp = {k: ck[k] for k in ("dataset", "n_users", "n_items", "item_hash")}
        others = dict(ck.get("other_parameter") or {})
        return ck["model"], dict(ck["model_config"]), fp, ck["state_dict"], others
    cfg = ck.get("config")
    try:
        name = cfg["model"] if cfg is not None and "model" in cfg else None
    except (TypeError, KeyError):
        name = None
    if not isinstance(name, str):
        raise ValueError(f"{path} has a 'state_dict' but no model name: a student checkpoint "
                         "of a distillation run is loaded with recsys.recbole.load_student, "
                         "teachers must be RecBole checkpoints or save_model_state files")
    overrides = {k: cfg[k] for k in model_defaults(name) if k in cfg}
    others = {k: v for k, v in (ck.get("other_parameter") or {}).items()
              if isinstance(v, torch.Tensor)}
    return name, overrides, {"dataset": cfg["dataset"]}, ck["state_dict"], others


def load_model(path: str | os.PathLike, config: Any, dataset: Any) -> tuple[nn.Module, str]:
    """Rebuild a model from a state file or a RecBole checkpoint on ``dataset``.

    Returns:
        ``(model, name)``; the model is on ``config["device"]``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, or a model trained on a dataset with other users/items.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no teacher checkpoint at {path}: train one with "
                                "recsys.recbole.train_model / `recsys-distill train-teacher`, "
                                "or pass teacher_checkpoint=<RecBole saved/*.pth>")
    name, overrides, fp, state, others = _read_checkpoint(path)
    here = dataset_fingerprint(dataset)
    if "n_items" in fp and (fp["n_items"], fp["n_users"]) != (here["n_items"], here["n_users"]):
        raise ValueError(
            f"the model in {path} was trained on dataset {fp['dataset']!r} with "
            f"{fp['n_users']} users / {fp['n_items']} items, but dataset {here['dataset']!r} has "
            f"{here['n_users']} users / {here['n_items']} items: train the teacher on this "
            "dataset (same filtering config) or pass the matching dataset")
    if "item_hash" in fp and fp["item_hash"] != here["item_hash"]:
        raise ValueError(f"the model in {path} was trained with another item id mapping than "
                         f"dataset {here['dataset']!r} (item tokens differ): use the same "
                         "dataset files and filtering config as for the teacher")
    model = build_recbole_model(name, config, dataset, overrides)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"the {name} weights in {path} do not fit dataset {here['dataset']!r} "
            f"({here['n_users']} users / {here['n_items']} items; checkpoint from dataset "
            f"{fp.get('dataset')!r}): {str(exc).splitlines()[-1].strip()}. Train the teacher "
            "on this dataset or pass its own dataset") from exc
    if others:  # Pop's item counts (not in state_dict)
        model.load_other_parameter({k: v.to(config["device"]) for k, v in others.items()})
    return model, name
