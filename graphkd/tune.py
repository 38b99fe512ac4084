r"""Validation-only loss-weight selection: a small grid of scales per method, within a budget.

For every distilled method of an experiment config, :func:`tune_weights` trains the student
with the method's distillation terms scaled by each ``lambda`` of a grid (default
``{0.1, 1, 10}`` x the config's weights), on the validation split only, and keeps the scale
with the best validation metric. **The test split is never read**: trials call
:func:`graphkd.train.fit` without a test loader (a test checks this with a test split that
raises when touched). The teacher is the experiment's cached teacher
(:func:`graphkd.pipeline.teachers.train_teacher`, shared with ``graphkd distill``; train it
first with ``graphkd train-teacher`` -- its own record reports its test metric, which plays no
part here).

**Scaling.** ``lambda`` multiplies every distillation term relative to the task term::

    s = lambda * alpha + t                      (s = 1 without a logits term)
    task' = t / s,  alpha' = lambda * alpha / s,  w_m' = lambda * w_m / s

with ``alpha`` the logits (KD) weight, ``t`` the task weight (default ``1 - alpha``) and ``w_m``
the match weights: ``lambda = 1`` is the config itself (unchanged), and ``task' + alpha'``
stays 1 when it was 1 (KD's usual parameterisation, ``alpha'`` in ``[0, 1]``).

**Selection.** Per scale, the mean over ``seeds`` of the best validation metric within the
``epochs`` budget; the best mean wins (ties, within 1e-9 relative: the scale nearest 1x, then
the smaller one);
undefined (NaN) values and diverged trials (a non-finite training loss or NaN features,
recorded with the error) never win. Every method is first built once on a training batch
(:func:`graphkd.pipeline.runs.check_methods`), so configuration errors still fail at once.

**Files** under ``out_dir`` (default ``<output_dir>/<name>/tune``, confined there):
``trials/<method>/x<lambda>-seed<seed>.json`` (one per finished trial, written atomically with
a key of everything that determines it; a rerun skips trials whose file and key match, so an
interrupted or budget-limited run resumes) and ``tuned_weights.json`` (the grid, every trial's
validation value and the chosen weights per method; ``tuning.md``: the same as a markdown
table), which :func:`apply_tuned` (and ``graphkd distill --tuned FILE``) turns into the config
that benchmark tables then report.

Example:
    >>> cfg = load_config("configs/molecules_chembl.yaml")
    >>> tuned = tune_weights(cfg, methods=["lsp", "rkd"], epochs=5, seeds=[0])
    >>> print(format_tuning(tuned))        # the grid and the choice
    >>> cfg = apply_tuned(cfg, tuned)      # the chosen weights, for graphkd distill
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from graphkd.config import (
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    config_hash,
    from_dict,
    to_dict,
)
from graphkd.distill import Distiller
from graphkd.fileio import atomic_write_json, atomic_write_text, safe_child
from graphkd.metrics import get_metric
from graphkd.pipeline.data import DataBundle, load_data, make_loader, train_loader
from graphkd.pipeline.runs import _make_student, check_methods
from graphkd.pipeline.teachers import run_dir, train_teacher
from graphkd.pipeline.training import (
    TaskLoss,
    apply_threads,
    build_optimizer,
    build_scheduler,
    resolve_device,
)
from graphkd.train import fit
from graphkd.weights_check import LossWeightWarning

__all__ = ["DEFAULT_GRID", "scale_method", "tune_weights", "apply_tuned", "format_tuning",
           "TUNED_FILE"]

log = logging.getLogger(__name__)

#: Default multipliers of a method's configured weights.
DEFAULT_GRID: tuple[float, ...] = (0.1, 1.0, 10.0)
#: Name of the summary file under the tuning folder.
TUNED_FILE = "tuned_weights.json"


def scale_method(method: MethodConfig, scale: float) -> MethodConfig:
    """``method`` with its distillation terms scaled by ``scale`` against the task term.

    See the module docstring for the formula (``scale = 1`` returns equal weights).

    Raises:
        ValueError: ``scale`` not finite and > 0.

    Example:
        >>> m = scale_method(MethodConfig(logits_weight=0.9), 10.0)
        >>> round(m.logits_weight, 4), round(m.task_weight, 4)
        (0.989, 0.011)
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"a weight scale must be finite and > 0, got {scale}.")
    if scale == 1.0:  # exactly the configured method (the baseline run of the tables)
        return copy.deepcopy(method)
    alpha = method.logits_weight
    task = 1.0 - alpha if method.task_weight is None else method.task_weight
    s = scale * alpha + task if alpha > 0 else 1.0
    if s <= 0:
        raise ValueError("the method has neither a task term nor a logits term to scale.")
    matches = [dataclasses.replace(m, weight=scale * m.weight / s) for m in method.matches]
    return dataclasses.replace(method, matches=matches, logits_weight=scale * alpha / s,
                               task_weight=task / s)


def _weights(method: MethodConfig) -> dict[str, float]:
    """The weights a scaled method ends up with (for tables): task, kd, one per match."""
    out = {"task": 1.0 - method.logits_weight if method.task_weight is None
           else method.task_weight}
    if method.logits_weight > 0:
        out["kd"] = method.logits_weight
    for i, m in enumerate(method.matches):
        out[f"{m.method}[{i}]"] = m.weight
    return out


def _scale_name(scale: float) -> str:
    return f"x{scale:g}"


def _trial_key(cfg: ExperimentConfig, method: MethodConfig, seed: int, epochs: int) -> str:
    """Hash of everything that determines a trial (a changed config reruns it)."""
    return config_hash({"data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher),
                        "teacher_seed": cfg.teacher_seed, "student": to_dict(cfg.student),
                        "method": to_dict(method), "seed": seed, "epochs": epochs,
                        "metric": get_metric(cfg.metric).name})


def _run_trial(cfg: ExperimentConfig, name: str, method: MethodConfig, seed: int, epochs: int,
               teacher: torch.nn.Module, data: DataBundle) -> dict[str, Any]:
    """Train one student on train, select on validation; the test split is not touched."""
    train_cfg = dataclasses.replace(cfg.student.train, epochs=epochs)
    trial_cfg = dataclasses.replace(cfg, methods={name: method},
                                    student=dataclasses.replace(cfg.student, train=train_cfg))
    device = resolve_device(cfg.device)
    metric = get_metric(cfg.metric)
    t0 = time.perf_counter()
    _, module, _, _ = _make_student(trial_cfg, name, seed, teacher, data, device)
    nw = cfg.data.num_workers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LossWeightWarning)
        res = fit(module, train_loader(data.train, train_cfg.batch_size, seed, nw),
                  make_loader(data.val, train_cfg.eval_batch_size or train_cfg.batch_size,
                              False, seed, nw),
                  epochs=epochs, metric=metric, grad_clip=train_cfg.grad_clip,
                  optimizer=lambda params: build_optimizer(params, train_cfg),
                  scheduler=lambda opt: build_scheduler(opt, train_cfg),
                  loss_fn=None if isinstance(module, Distiller) else TaskLoss(),
                  progress=False, restore_best=False, device=device)
    notes = []
    for w in caught:  # weight warnings go into the trial's record; others pass through
        if issubclass(w.category, LossWeightWarning):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return {"val": res.best_metric, "best_epoch": res.best_epoch,
            "val_curve": [r[f"val_{metric.name}"] for r in res.history],
            "grad_norms": res.grad_norms, "weight_warnings": notes,
            "seconds": round(time.perf_counter() - t0, 3)}


def _choose(scales: Sequence[float], means: dict[float, float], higher: bool) -> float | None:
    ok = [s for s in scales if math.isfinite(means.get(s, float("nan")))]
    if not ok:
        return None
    best = max(means[s] for s in ok) if higher else min(means[s] for s in ok)
    tied = [s for s in ok if abs(means[s] - best) <= 1e-9 * max(1.0, abs(best))]  # float noise
    return min(tied, key=lambda s: (abs(math.log(s)), s))


def tune_weights(
    cfg: ExperimentConfig, methods: Sequence[str] | None = None, *,
    grid: Sequence[float] = DEFAULT_GRID, epochs: int | None = None,
    seeds: Sequence[int] = (0,), max_trials: int | None = None,
    out_dir: str | Path | None = None, data: DataBundle | None = None,
    teacher: torch.nn.Module | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Choose each method's weight scale on the validation split (see the module docstring).

    Args:
        cfg: the experiment (the same configs as ``graphkd distill``).
        methods: methods of ``cfg.methods`` to tune (default: every one that uses the
            teacher; the student alone has no weight and is skipped).
        grid: multipliers of the configured weights (each > 0).
        epochs: epochs per trial (default ``cfg.student.train.epochs``).
        seeds: student seeds per scale; selection uses their mean validation metric.
        max_trials: train at most this many new trials in this call (the budget); the others
            stay for a rerun, and the summary says ``"complete": false``.
        out_dir: tuning folder (default ``<output_dir>/<name>/tune``).
        data: pre-loaded splits (default: ``load_data(cfg.data)``); only ``train`` and ``val``
            are read.
        teacher: a trained teacher (default: the experiment's cached one).
        progress: a tqdm bar over the trials.

    Returns:
        the summary also written to ``<out_dir>/tuned_weights.json``: ``name``, ``metric``,
        ``higher_is_better``, ``grid``, ``epochs``, ``seeds``, ``complete``,
        ``methods: {name: {"default", "trials": [{scale, val, vals, weights}], "chosen_scale",
        "val", "chosen", "weights"}}``.

    Raises:
        ConfigError: an unknown method, a method without teacher terms, a bad grid or budget.
    """
    apply_threads(cfg)
    grid = [float(s) for s in grid]
    if not grid or any(not (math.isfinite(s) and s > 0) for s in grid):
        raise ConfigError(f"tune: the grid must hold finite scales > 0, got {grid}.")
    epochs = cfg.student.train.epochs if epochs is None else int(epochs)
    if epochs < 1 or (max_trials is not None and max_trials < 0) or not seeds:
        raise ConfigError(f"tune: epochs >= 1, max_trials >= 0 and one seed at least "
                          f"(got epochs={epochs}, max_trials={max_trials}, seeds={seeds}).")
    names = [m for m in cfg.methods if cfg.methods[m].uses_teacher] if methods is None \
        else list(methods)
    for m in names:
        if m not in cfg.methods:
            raise ConfigError(f"tune: unknown method {m!r}; the config defines "
                              f"{list(cfg.methods)}.")
        if not cfg.methods[m].uses_teacher:
            raise ConfigError(f"tune: method {m!r} has no distillation term to weigh.")
    out = Path(out_dir) if out_dir is not None else safe_child(run_dir(cfg), "tune")
    data = load_data(cfg.data) if data is None else data
    check_methods(cfg, names, data)  # wrong paths/widths fail here, in seconds (train split)
    if teacher is None and names:
        teacher, _ = train_teacher(cfg, data)
    metric = get_metric(cfg.metric)
    plan = [(m, s, seed) for m in names for s in grid for seed in seeds]
    trials: dict[tuple[str, float, int], dict[str, Any]] = {}
    budget = max_trials
    from tqdm.auto import tqdm

    for m, s, seed in tqdm(plan, desc="tune", disable=not progress):
        method = scale_method(cfg.methods[m], s)
        key = _trial_key(cfg, method, seed, epochs)
        path = safe_child(out, "trials", m, f"{_scale_name(s)}-seed{seed}.json",
                          what="method name")
        if path.is_file():
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                rec = {}
            if rec.get("key") == key:
                trials[(m, s, seed)] = rec
                continue
        if budget is not None and budget <= 0:
            continue
        try:
            rec = _run_trial(cfg, m, method, seed, epochs, teacher, data)
        except (FloatingPointError, ValueError) as exc:
            # this scale diverged (a non-finite loss, then NaN features): a result, not a
            # crash; configuration errors were ruled out by the dry run above
            log.warning("tune %s %s seed %d diverged: %s", m, _scale_name(s), seed, exc)
            rec = {"val": float("nan"), "error": f"{type(exc).__name__}: {exc}"}
        rec.update(method=m, scale=s, seed=seed, key=key, weights=_weights(method))
        atomic_write_json(path, rec, indent=1)
        trials[(m, s, seed)] = rec
        log.info("tune %s %s seed %d: val %s %.4f", m, _scale_name(s), seed, metric.name,
                 rec["val"])
        if budget is not None:
            budget -= 1
    summary: dict[str, Any] = {
        "name": cfg.name, "metric": metric.name, "higher_is_better": metric.higher_is_better,
        "selection": "validation only (best validation metric within the epoch budget)",
        "grid": grid, "epochs": epochs, "seeds": list(seeds),
        "complete": len(trials) == len(plan), "methods": {},
    }
    for m in names:
        rows, means = [], {}
        for s in grid:
            vals = [trials[(m, s, seed)]["val"] for seed in seeds if (m, s, seed) in trials]
            mean = sum(vals) / len(vals) if len(vals) == len(seeds) else float("nan")
            means[s] = mean
            rows.append({"scale": s, "val": mean, "vals": vals,
                         "weights": _weights(scale_method(cfg.methods[m], s))})
        chosen = _choose(grid, means, metric.higher_is_better)
        entry: dict[str, Any] = {"default": to_dict(cfg.methods[m]), "trials": rows,
                                 "chosen_scale": chosen,
                                 "val": means[chosen] if chosen is not None else float("nan")}
        if chosen is not None:
            best = scale_method(cfg.methods[m], chosen)
            entry.update(chosen=to_dict(best), weights=_weights(best))
        summary["methods"][m] = entry
    atomic_write_json(out / TUNED_FILE, summary, indent=1)
    atomic_write_text(out / "tuning.md", format_tuning(summary) + "\n")
    return summary


def apply_tuned(cfg: ExperimentConfig, tuned: dict[str, Any] | str | Path) -> ExperimentConfig:
    """``cfg`` with each tuned method's chosen weights (methods without a choice unchanged).

    Args:
        cfg: the experiment config.
        tuned: a :func:`tune_weights` summary or the path of its ``tuned_weights.json``.

    Raises:
        ConfigError: the file is not a tuning summary, or it tunes a method ``cfg`` lacks.
    """
    if not isinstance(tuned, dict):
        p = Path(tuned)
        try:
            tuned = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--tuned {p}: not a readable tuning summary ({exc}).") from None
    if not isinstance(tuned.get("methods"), dict):
        raise ConfigError("a tuning summary needs a 'methods' mapping (tuned_weights.json).")
    methods = dict(cfg.methods)
    for m, entry in tuned["methods"].items():
        if m not in methods:
            raise ConfigError(f"the tuning summary tunes {m!r}, which the config lacks "
                              f"(it defines {list(methods)}).")
        if entry.get("chosen") is not None:
            methods[m] = from_dict(MethodConfig, entry["chosen"], f"tuned.methods.{m}")
            methods[m].validate(f"tuned.methods.{m}")
    return dataclasses.replace(cfg, methods=methods)


def format_tuning(tuned: dict[str, Any]) -> str:
    """A markdown table of the grid (validation metric per scale) and the choice per method
    (marked ``(grid edge)`` when it is the grid's smallest or largest scale: widen the grid)."""
    grid = tuned["grid"]
    head = ["method", *(_scale_name(s) for s in grid), "chosen", "weights"]
    lines = [f"Weight selection on validation {tuned['metric']} (epochs {tuned['epochs']}, "
             f"seeds {tuned['seeds']}; test split not used"
             + ("" if tuned.get("complete", True) else "; INCOMPLETE, rerun to finish") + ")",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, e in tuned["methods"].items():
        vals = [("—" if not math.isfinite(r["val"]) else f"{r['val']:.4f}")
                for r in e["trials"]]
        c = e["chosen_scale"]
        chosen = "—" if c is None else _scale_name(c) + (
            " (grid edge)" if len(grid) > 1 and c in (min(grid), max(grid)) else "")
        weights = ", ".join(f"{k} {v:.3g}" for k, v in e.get("weights", {}).items())
        lines.append("| " + " | ".join([m, *vals, chosen, weights or "—"]) + " |")
    return "\n".join(lines)
