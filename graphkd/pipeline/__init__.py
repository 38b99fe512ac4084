"""Config-driven experiments: the pipeline behind the ``graphkd`` CLI and the quality benchmarks.

One :class:`~graphkd.config.ExperimentConfig` in, one results dict out::

    from graphkd.pipeline import run_experiment, train_teacher
    teacher, record = train_teacher(cfg)          # cached in <output_dir>/<name>/teacher-<hash>.pt
    results = run_experiment(cfg, methods=["student", "kd", "lsp"], seeds=[0, 1, 2])
    graphkd.report.write_report(results, "runs/pointcloud_digits")

Every model (teacher and students) is trained by the one loop, :func:`graphkd.train.fit`.

============================  ===================================================================
module                        job
============================  ===================================================================
:mod:`.data`                  :class:`DataBundle`, the dataset registry and built-in datasets,
                              the seeded loaders (a final batch of one sample dropped)
:mod:`.training`              models by name (:func:`register_model`,
                              :func:`model_from_config`), task loss, optimizer and schedule,
                              :func:`train_on` (the call of ``fit`` with the tables' protocol)
:mod:`.teachers`              the teacher, trained once and cached (:func:`train_teacher`)
:mod:`.runs`                  every (seed, method) student (:func:`run_experiment`), the
                              interleaved step timing (:func:`step_times`), dry runs
============================  ===================================================================

Dependency direction: ``data <- training <- teachers <- runs``; the package imports
:mod:`graphkd.train` and below, never :mod:`graphkd.cli` or :mod:`graphkd.report`.
"""

from graphkd.pipeline.data import (
    DATASETS,
    DataBundle,
    load_data,
    make_loader,
    register_dataset,
    train_loader,
)
from graphkd.pipeline.runs import check_methods, run_experiment, run_method, step_times
from graphkd.pipeline.teachers import run_dir, teacher_path, train_teacher
from graphkd.pipeline.training import (
    MODEL_FACTORIES,
    TaskLoss,
    build_optimizer,
    build_scheduler,
    model_from_config,
    register_model,
    resolve_device,
    train_on,
)

__all__ = [
    "DATASETS",
    "DataBundle",
    "MODEL_FACTORIES",
    "TaskLoss",
    "build_optimizer",
    "build_scheduler",
    "check_methods",
    "load_data",
    "make_loader",
    "model_from_config",
    "register_dataset",
    "register_model",
    "resolve_device",
    "run_dir",
    "run_experiment",
    "run_method",
    "step_times",
    "teacher_path",
    "train_loader",
    "train_on",
    "train_teacher",
]
