"""The teacher of an experiment: trained once, cached on disk, reused by every student.

The checkpoint ``<output_dir>/<name>/teacher-<hash>.pt`` (:func:`teacher_path`) is keyed by a
hash of everything that determines the teacher (data and teacher configs, ``teacher_seed``,
metric) and holds tensors and plain numbers only (``torch.load(weights_only=True)``): its
``state_dict`` and its record (best-validation epoch, validation/test metrics there, epoch
times). A corrupt or stale cache file is retrained with a warning. Run folders are confined to
``output_dir`` (:func:`run_dir`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphkd.config import ExperimentConfig, config_hash, to_dict
from graphkd.fileio import atomic_torch_save
from graphkd.metrics import get_metric
from graphkd.pipeline.data import DataBundle, load_data
from graphkd.pipeline.training import apply_threads, model_from_config, resolve_device, train_on
from graphkd.train import seed_everything

__all__ = ["run_dir", "teacher_path", "train_teacher"]

log = logging.getLogger(__name__)

#: Metric spellings of the cache key: ``roc_auc`` keeps the key of its former spelling, so
#: that teachers cached before the rename stay valid.
_CACHE_METRIC = {"roc_auc": "rocauc"}


def run_dir(cfg: ExperimentConfig) -> Path:
    """``<output_dir>/<name>``, confined to ``output_dir``.

    Raises:
        ValueError: ``cfg.name`` is absolute, ``..`` or contains a path separator, or the folder
            resolves outside ``output_dir`` (a symlink).
    """
    from graphkd.fileio import safe_child

    return safe_child(cfg.output_dir, cfg.name, what="run name (config.name)")


def teacher_path(cfg: ExperimentConfig) -> Path:
    """Checkpoint path of the teacher, keyed by a hash of everything that determines it
    (inside :func:`run_dir`)."""
    from graphkd.fileio import safe_child

    metric = get_metric(cfg.metric).name
    key = config_hash({"data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher),
                       "seed": cfg.teacher_seed, "metric": _CACHE_METRIC.get(metric, metric)})
    return safe_child(run_dir(cfg), f"teacher-{key}.pt", what="teacher checkpoint")


def train_teacher(
    cfg: ExperimentConfig, data: DataBundle | None = None, *, force: bool = False,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the teacher (or load it from the cache) and return ``(model, record)``.

    The teacher is seeded with ``cfg.teacher_seed``, trained in this process alone (also under
    ``torch.distributed``, where rank 0 trains it and the others load the cache) and ends with
    its best-validation weights, in ``eval()`` mode. The record holds the teacher's
    best-validation epoch (from 0), its validation/test metrics there, its median epoch time,
    its number of parameters and whether it came from the cache.
    """
    apply_threads(cfg)
    data = load_data(cfg.data) if data is None else data
    device = resolve_device(cfg.device)
    metric = get_metric(cfg.metric)
    path = teacher_path(cfg)
    seed_everything(cfg.teacher_seed)
    model = model_from_config(cfg.teacher.model, data).to(device)
    if path.is_file() and not force:
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(ckpt["state_dict"])
        except Exception as exc:  # noqa: BLE001 - a corrupt/stale cache is retrained
            log.warning("teacher cache %s unusable (%s); retraining.", path, exc)
        else:
            model.eval()
            rec = dict(ckpt["record"], cached=True, path=str(path))
            log.info("loaded teacher from %s", path)
            return model, rec
    hist = train_on(model, data, cfg.teacher.train, metric=metric, device=device,
                    seed=cfg.teacher_seed, num_workers=cfg.data.num_workers, progress=progress,
                    desc="teacher", restore_best=True)
    model.eval()
    rec = {k: hist[k] for k in ("best_epoch", "best_val", "test_at_best", "epoch_time_median",
                                "val", "test", "epoch_time")}
    rec["num_params"] = sum(p.numel() for p in model.parameters())
    atomic_torch_save({"state_dict": model.state_dict(), "record": rec}, path)
    return model, dict(rec, cached=False, path=str(path))
