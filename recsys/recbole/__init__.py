"""RecBole plugin for ranking distillation.

Importing this package applies the RecBole 1.2.1 compatibility workarounds
(:mod:`recsys.recbole.compat`). It never imports ``recbole.quick_start`` (which imports ray).

Example:
    >>> from recsys.recbole import run_distillation
    >>> res = run_distillation(teacher="BPR", student="BPR", method="rrd", dataset="ml-100k",
    ...                        teacher_config={"embedding_size": 200},
    ...                        student_config={"embedding_size": 20})  # doctest: +SKIP

Several processes (RecBole's multi-process mode; DDP, soft labels computed once and
memory-mapped, exact distributed evaluation): ``run_distillation(..., nproc=2)``.
"""

from recsys.recbole.compat import apply_patches

apply_patches()

from recsys.recbole.methods import METHODS, available_methods, build_method, register  # noqa: E402
from recsys.recbole.model import DistillRecommender, distill_model_class  # noqa: E402
from recsys.recbole.runner import (  # noqa: E402
    build_config,
    ensure_teacher,
    load_student,
    prepare_data,
    run_distillation,
    train_model,
)
from recsys.recbole.trainer import (  # noqa: E402
    DistillTrainer,
    SafeTrainer,
    load_trainer_checkpoint,
    safe_trainer_class,
)
from recsys.recbole.zoo import (  # noqa: E402
    build_recbole_model,
    load_model,
    save_model_state,
)

__all__ = [
    "METHODS",
    "available_methods",
    "build_method",
    "register",
    "DistillRecommender",
    "distill_model_class",
    "DistillTrainer",
    "SafeTrainer",
    "safe_trainer_class",
    "load_trainer_checkpoint",
    "build_config",
    "prepare_data",
    "train_model",
    "ensure_teacher",
    "run_distillation",
    "load_student",
    "build_recbole_model",
    "load_model",
    "save_model_state",
]

#: deprecated name -> the module defining it (an alias that warns when called)
_DEPRECATED = {"load_checkpoint": "recsys.recbole.trainer", "build_model": "recsys.recbole.zoo"}


def __getattr__(name: str) -> object:
    """The deprecated aliases (``load_checkpoint``, ``build_model``): importable, not in
    ``__all__``."""
    if name in _DEPRECATED:
        import importlib

        return getattr(importlib.import_module(_DEPRECATED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
