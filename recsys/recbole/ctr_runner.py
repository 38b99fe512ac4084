"""``run_ctr_distillation``: the CTR methods of :mod:`recsys.recbole.ctr` the RecBole way.

:func:`recsys.recbole.runner.run_distillation` hands a run over to this module when the student
is a RecBole context-aware model (:func:`ctr_route`). Steps:

1. the config: RecBole's defaults < ``defaults.yaml`` < ``ctr_defaults.yaml`` (RecBole's own
   context-aware setting: ``threshold: {rating: 4}`` click labels, random 80/10/10 split,
   labelled evaluation, ``metrics: [AUC, LogLoss]``, ``valid_metric: AUC``) < the user's files
   < ``config_dict``; the feature columns (``load_col``) of ``ml-100k`` / ``ml-1m`` come from
   :data:`CTR_FIELDS` unless the user sets ``load_col``;
2. pretrained teachers (``pfd``, ``ensemble_kd``): each trained once by RecBole's trainer on
   every field and saved under ``run_dir/teachers`` (:func:`~recsys.recbole.runner.ensure_teacher`,
   reused by later runs), or read from ``teacher_checkpoint``;
3. the method's model (a RecBole model class), trained and early-stopped on the validation AUC
   of the student by a :class:`~recsys.recbole.trainer.SafeTrainer`;
4. RecBole's evaluator (AUC, LogLoss) on the test split for the student (``test_result``) and
   for every other network the model can serve (``served``: the booster, the teacher(s), the
   ensemble), all at the student's best-validation checkpoint.

Example:
    >>> from recsys.recbole import run_distillation
    >>> res = run_distillation(teacher="DCN,xDeepFM,DeepFM,AutoInt", student="WideDeep",
    ...                        method="ensemble_kd", dataset="ml-100k")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from recsys.recbole.ctr import CTR_METHODS, FieldView, _plain_list, ctr_method_class
from recsys.recbole.zoo import build_recbole_model, model_class, model_type_name

__all__ = ["CTR_DEFAULTS_YAML", "CTR_FIELDS", "CTR_MODEL_TYPE", "is_ctr_model", "ctr_route",
           "ctr_config", "run_ctr_distillation", "load_ctr_student"]

CTR_DEFAULTS_YAML = Path(__file__).resolve().parent / "ctr_defaults.yaml"
#: the RecBole model type the CTR methods take (``ModelType`` member name)
CTR_MODEL_TYPE = "CONTEXT"

_ML_USER = ["user_id", "age", "gender", "occupation", "zip_code"]
#: feature columns per shipped dataset: the users' profile and the items' year and genres
CTR_FIELDS: dict[str, dict[str, list[str]]] = {
    "ml-100k": {"inter": ["user_id", "item_id", "rating"], "user": _ML_USER,
                "item": ["item_id", "release_year", "class"]},
    "ml-1m": {"inter": ["user_id", "item_id", "rating"], "user": _ML_USER,
              "item": ["item_id", "release_year", "genre"]},
}


def is_ctr_model(name: str) -> bool:
    """Whether ``name`` is a RecBole context-aware model (validates the name)."""
    return model_type_name(model_class(name)) == CTR_MODEL_TYPE


def ctr_route(student: str, method: str, teacher: Any = None) -> Callable[..., Any] | None:
    """:func:`run_ctr_distillation` when ``student`` is context-aware, None for the ranking
    runner; a model/method mismatch raises one line.

    Raises:
        ValueError: a CTR method with a non-context student, a ranking method with a
            context-aware student, or a teacher of the other family.
    """
    key = str(method).lower()
    is_ctr_method = CTR_METHODS.find(key) is not None
    if not is_ctr_model(student):
        if is_ctr_method and key != "none":
            raise ValueError(f"method {method!r} is a CTR method for RecBole context-aware "
                             f"models (FM, DeepFM, DCN, ...); {student} is not one: use a "
                             "ranking method (recsys-distill methods)")
        return None
    if not is_ctr_method:
        raise ValueError(f"method {method!r} does not apply to the context-aware model "
                         f"{student}: CTR methods are {', '.join(CTR_METHODS.names())}")
    for name in _plain_list(teacher) if key != "none" else []:
        if not is_ctr_model(name):
            raise ValueError(f"teacher {name} is not a context-aware model but the student "
                             f"{student} is: CTR methods need context-aware teachers")
    return run_ctr_distillation


def _sets(key: str, config_dict: dict[str, Any], files: list[str]) -> bool:
    import yaml

    if key in config_dict:
        return True
    for f in files:
        try:
            data = yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and key in data:
            return True
    return False


def ctr_config(dataset: str, config_file_list: list[str] | None,
               config_dict: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """``(config files, config_dict)`` of a CTR run: ``ctr_defaults.yaml`` first among the files,
    and :data:`CTR_FIELDS` ``load_col`` for a shipped dataset unless the user sets one."""
    files = [str(f) for f in config_file_list or []]
    cdict = dict(config_dict or {})
    if dataset in CTR_FIELDS and not _sets("load_col", cdict, files):
        cdict["load_col"] = {k: list(v) for k, v in CTR_FIELDS[dataset].items()}
    return [str(CTR_DEFAULTS_YAML), *files], cdict


def _per_teacher(names: list[str], teacher_config: dict[str, Any] | None) -> list[dict]:
    """Each teacher's hyperparameters: ``{name: {...}}`` per teacher, else one shared dict."""
    cfg = dict(teacher_config or {})
    if cfg and set(cfg) <= set(names) and all(isinstance(v, dict) for v in cfg.values()):
        return [dict(cfg.get(n) or {}) for n in names]
    return [cfg for _ in names]


def run_ctr_distillation(teacher: Any = None, student: str = "WideDeep", method: str = "none",
                         dataset: str = "ml-100k", *,
                         teacher_config: dict[str, Any] | None = None,
                         student_config: dict[str, Any] | None = None,
                         teacher_checkpoint: Any = None,
                         config_file_list: list[str] | None = None,
                         config_dict: dict[str, Any] | None = None,
                         run_dir: str | os.PathLike = "runs/recbole", saved: bool = True,
                         verbose: bool = False, nproc: int = 1,
                         world_size: int = -1) -> dict[str, Any]:
    """Train the CTR method ``method`` with context-aware ``student`` (and ``teacher``) on
    ``dataset``; RecBole's AUC / LogLoss on the test split.

    Args:
        teacher: model name(s), a list or a comma-separated string: the booster (``rocket``),
            the jointly trained teacher (``pfd_sync``), the teacher(s) trained first and frozen
            (``pfd``: one; ``ensemble_kd``: several); ignored by ``none``.
        student: RecBole context-aware model name.
        method: a name of :data:`~recsys.recbole.ctr.CTR_METHODS`.
        teacher_config: teacher hyperparameters, shared, or ``{teacher name: {...}}``.
        teacher_checkpoint: state file(s) of pretrained teachers (skips their training).
        config_dict: RecBole config, with ``distill_params`` (the method's hyperparameters).
        run_dir: where teachers and checkpoints go.

    Returns:
        RecBole-style ``{"best_valid_score", "best_valid_result", "test_result", ...}`` of the
        student plus ``served`` (``{network: test result}``), ``method``, ``student`` and
        ``teacher`` (``{"model", "checkpoint", "result"}``; for several teachers the names and
        files joined by commas and ``members``, each one's entry).
    """
    from recbole.utils import init_seed

    from recsys.recbole.runner import (
        _fit_and_test,
        build_config,
        check_dataset_name,
        ensure_teacher,
        prepare_data,
    )
    from recsys.recbole.trainer import SafeTrainer

    check_dataset_name(dataset)
    if nproc > 1 or world_size > 0:
        raise ValueError("the CTR methods run in one process (nproc=1): RecBole's "
                         "multi-process mode is wired for the ranking methods only")
    cls = ctr_method_class(method)
    files, cdict = ctr_config(dataset, config_file_list, config_dict)
    cdict.setdefault("checkpoint_dir", str(Path(run_dir) / "checkpoints"))
    names = _plain_list(teacher) if cls.pretrained_teachers or cls.joint_teacher else []
    info: list[dict[str, Any]] = []
    if cls.pretrained_teachers:
        paths = _plain_list(teacher_checkpoint)
        if paths:
            info = [{"model": None, "checkpoint": p, "result": None} for p in paths]
        else:
            if not names:
                raise ValueError(f"CTR method {cls.name!r} needs pretrained teacher(s): pass "
                                 "teacher=<model name(s)> or teacher_checkpoint=<file(s)>")
            for name, tcfg in zip(names, _per_teacher(names, teacher_config)):
                path, res = ensure_teacher(name, dataset, teacher_config=tcfg,
                                           config_file_list=files, config_dict=cdict,
                                           run_dir=run_dir, verbose=verbose)
                info.append({"model": name, "checkpoint": str(path), "result": res})
        cdict["teacher_checkpoint"] = [i["checkpoint"] for i in info]
    elif cls.joint_teacher:
        if len(names) != 1:
            raise ValueError(f"CTR method {cls.name!r} trains one teacher with the student: "
                             f"pass teacher=<one context-aware model name>, got {names}")
        cdict.update({"teacher": names[0], "teacher_config": dict(teacher_config or {})})
        info = [{"model": names[0], "checkpoint": None, "result": None}]
    cdict.update({"student": student, "student_config": dict(student_config or {}),
                  "distill_method": cls.name})
    cfg = build_config(cls, dataset, config_file_list=files, config_dict=cdict)
    data = prepare_data(cfg)
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = cls(cfg, data[0].dataset)
    trainer = SafeTrainer(cfg, model)
    result = _fit_and_test(cfg, model, trainer, data, saved, verbose)
    served: dict[str, Any] = {}
    for name in model.servable:
        if name != "student":
            model.serve = name
            served[name] = dict(trainer.evaluate(data[2], load_best_model=False,
                                                 show_progress=False) or {})
    model.serve = "student"
    return {**result, "served": served, "method": cls.name, "student": student,
            "teacher": _teacher_entry(info)}


def _teacher_entry(info: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One teacher's ``{"model", "checkpoint", "result"}``; several: the same keys joined by
    commas (``result`` None) plus ``members``, the list of each one's entry."""
    if len(info) <= 1:
        return info[0] if info else None
    return {"model": ",".join(str(i["model"]) for i in info),
            "checkpoint": ",".join(str(i["checkpoint"]) for i in info), "result": None,
            "members": info}


def load_ctr_student(checkpoint: str | os.PathLike, config: Any, dataset: Any) -> nn.Module:
    """The plain RecBole student of a CTR run's checkpoint (``checkpoint`` of the result).

    Rebuilt without the fields it never saw (PFD's ``privileged_fields``, ``none``'s
    ``exclude_fields``); loaded with ``weights_only=True``.

    Args:
        checkpoint: the trainer checkpoint of :func:`run_ctr_distillation`.
        config: a RecBole config of the same dataset and data settings.
        dataset: the training dataset (``train_data.dataset``).

    Raises:
        ValueError: not a checkpoint of a CTR method.
    """
    from recsys.recbole.trainer import load_trainer_checkpoint

    ck = load_trainer_checkpoint(checkpoint)
    if "student" not in ck or CTR_METHODS.find(str(ck.get("distill_method"))) is None:
        raise ValueError(f"{checkpoint} is not a checkpoint of a CTR method (no 'student' / "
                         f"CTR 'distill_method' entry; CTR methods: {CTR_METHODS.names()})")
    params = dict(ck.get("distill_params") or {})
    hidden = _plain_list(params.get("privileged_fields") or params.get("exclude_fields"))
    view = FieldView(dataset, hidden) if hidden else dataset
    model = build_recbole_model(str(ck["student"]), config, view, dict(ck["student_config"]))
    model.load_state_dict({k[len("student."):]: v for k, v in ck["state_dict"].items()
                           if k.startswith("student.")})
    return model
