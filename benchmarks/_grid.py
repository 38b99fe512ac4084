r"""Resumable benchmark grids: one JSON per (dataset, method, seed), tables rendered from them.

The harness of ``benchmarks.molhiv``, ``benchmarks.mnist_clouds`` and ``benchmarks.moleculenet``
(``benchmarks._quality`` is the older one-JSON harness of ``benchmarks.molecules`` /
``benchmarks.pointcloud``). A :class:`Grid` names its tables (:class:`Table`: a dataset key, a
config under ``configs/``, overrides); for every table:

* **Teacher**: one per table (``teacher_seed`` of the config), trained by
  :func:`ensure_teacher` with :func:`graphkd.train.fit` ``(out_dir=..., resume=True)``: a
  checkpoint after every epoch and an exact resume, so a long teacher (ogbg-molhiv on a CPU)
  continues across sessions. The final weights go to the pipeline's teacher cache
  (:func:`graphkd.pipeline.teacher_path`), which ``graphkd distill`` and
  :func:`graphkd.tune.tune_weights` then load.
* **Runs**: seeds outer, methods inner; each finished (method, seed) writes
  ``<results>/<name>/runs/<key>/<method>-s<seed>-<fp>.json`` atomically, where ``fp`` =
  :func:`fingerprint`, a hash of everything that determines the run (data, teacher, student,
  the method's weights, metric, seed). A rerun skips a run whose file holds the same
  fingerprint; a changed setting gives another file name, so results of different settings
  never mix in a table (the renderer reads only files of the current fingerprints). The student's
  best-validation ``state_dict`` goes beside it (``.pt``, git-ignored) for the relation
  diagnostics.
* **Teacher cache** (``Table.cache``): molecules have no random augmentation, so the frozen
  teacher's matched layers are computed once (:func:`graphkd.teacher_cache.cache_teacher`) and a
  distillation epoch costs about a student epoch.
* **Render** (``--render``): ``<results>/<name>.{json,md,png}`` from the run files only: per
  method mean ± std over seeds, the **paired per-seed difference** to the student alone and to
  KD (:func:`paired_difference`), epoch times, the validation-tuned weights (``tune/<key>/``,
  :func:`graphkd.tune.format_tuning`), the published numbers next to ours, the relation
  diagnostics.

Paired difference of method ``A`` to reference ``B`` over the seeds ``S`` both finished:

.. math::  d_s = m_A(s) - m_B(s),\quad \bar d = \frac1{|S|}\sum_s d_s,\quad
           \mathrm{sd}(d) = \sqrt{\tfrac{1}{|S|-1}\textstyle\sum_s (d_s-\bar d)^2}

(the same seed gives both runs the same initialisation and batches, so the paired spread is
usually far smaller than either method's own std).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS_DIR, machine_info, write_block
from graphkd.fileio import atomic_write_json, atomic_write_text, check_name

__all__ = ["Table", "Grid", "fingerprint", "run_file", "finished", "pending", "load_runs",
           "paired_difference", "mean_std", "summarize_table", "cost_estimate", "render",
           "summary_lines", "main"]

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# ============================================================================ specification
@dataclass(frozen=True)
class Table:
    """One table of a grid: a dataset key, its config and what the renderer adds.

    Attributes:
        key: plain name of the table (folder under ``runs/``).
        config: file under ``configs/``.
        label: heading of the table.
        overrides: ``key.path=value`` config overrides (e.g. another student).
        methods: methods of the table, in order (default: every method of the config).
        cache: read the teacher from the offline cache (no random augmentation only).
        published: ``{method or "teacher": (mean, std)}`` of a paper, shown beside ours.
        published_source: citation of ``published``.
        relation_pairs: ``(teacher path, student path)`` pairs of the relation diagnostics.
        relation_methods: methods whose students the diagnostics compare with the teacher.
    """

    key: str
    config: str
    label: str
    overrides: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    cache: bool = False
    published: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    published_source: str = ""
    relation_pairs: tuple[tuple[str, str], ...] = ()
    relation_methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grid:
    """A benchmark: its name (results ``<name>.{json,md,png}``), title, tables, seeds, notes."""

    name: str
    title: str
    tables: tuple[Table, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    notes: tuple[str, ...] = ()


# ============================================================================ run files
def fingerprint(cfg: Any, method: str, seed: int) -> str:
    """Hash (10 hex) of everything that determines one run's numbers.

    Data, teacher (config and ``teacher_seed``), student (model and training), the method's
    config (weights, tau), the metric and the seed. Not the device, threads or the teacher
    cache (float32 cache: the same losses as the live teacher).
    """
    from graphkd.config import config_hash, to_dict

    if method not in cfg.methods:
        raise ValueError(f"unknown method {method!r}; the config defines {list(cfg.methods)}.")
    return config_hash({"data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher),
                        "teacher_seed": cfg.teacher_seed, "student": to_dict(cfg.student),
                        "method": to_dict(cfg.methods[method]), "metric": cfg.metric,
                        "seed": int(seed)}, length=10)


def run_file(runs: Path, key: str, method: str, seed: int, fp: str) -> Path:
    """``runs/<key>/<method>-s<seed>-<fp>.json`` (names checked: no separators, no ``..``)."""
    check_name(key, "table key")
    check_name(method, "method name")
    return Path(runs) / key / f"{method}-s{int(seed)}-{fp}.json"


def teacher_record_file(runs: Path, key: str, cfg: Any) -> Path:
    """``runs/<key>/<teacher checkpoint stem>.json``: the teacher's record, keyed like its
    checkpoint (:func:`graphkd.pipeline.teacher_path`), so another teacher never shows."""
    from graphkd.pipeline import teacher_path

    check_name(key, "table key")
    return Path(runs) / key / f"{teacher_path(cfg).stem}.json"


def finished(path: Path, fp: str) -> dict[str, Any] | None:
    """The record in ``path`` when it is a finished run of fingerprint ``fp``, else ``None``
    (missing, unreadable, another fingerprint, or no test value)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("fingerprint") != fp or "test" not in rec:
        return None
    return rec


def pending(cfg: Any, runs: Path, key: str, methods: Sequence[str], seeds: Sequence[int]
            ) -> list[tuple[str, int, str, Path]]:
    """The runs still to do, in order (seeds outer, methods inner): ``(method, seed,
    fingerprint, run file)`` for each one without a finished file of its fingerprint."""
    todo = []
    for seed in seeds:
        for m in methods:
            fp = fingerprint(cfg, m, seed)
            path = run_file(runs, key, m, seed, fp)
            if finished(path, fp) is None:
                todo.append((m, int(seed), fp, path))
    return todo


def load_runs(runs: Path, key: str, plan: Mapping[tuple[str, int], str]
              ) -> tuple[dict[tuple[str, int], dict[str, Any]], int]:
    """Finished records of ``plan`` (``{(method, seed): fingerprint}``) and the number of other
    run files in ``runs/<key>/`` (other settings: ignored, never mixed in)."""
    found = {}
    for (m, s), fp in plan.items():
        rec = finished(run_file(runs, key, m, s, fp), fp)
        if rec is not None:
            found[(m, s)] = rec
    d = Path(runs) / key
    total = len([p for p in d.glob("*.json") if not p.name.startswith("teacher")]) \
        if d.is_dir() else 0
    return found, total - len(found)


# ============================================================================ statistics
def mean_std(xs: Iterable[float]) -> tuple[float, float, int]:
    """``(mean, sample std, n)`` of the finite values; std is NaN for fewer than 2 values."""
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan"), 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else float("nan")), len(v)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    """Per-seed differences ``a[s] - b[s]`` over the seeds in both: mean, sample std, n, and
    the number of seeds where ``a`` is higher (``wins``).

    Example:
        >>> d = paired_difference({0: 0.75, 1: 0.70}, {0: 0.73, 1: 0.71, 2: 0.5})
        >>> round(d["mean"], 4), d["n"], d["wins"]
        (0.005, 2, 1)
    """
    seeds = sorted(set(a) & set(b))
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    m, sd, n = mean_std(diffs)
    return {"mean": m, "std": sd, "n": n, "seeds": seeds, "diffs": diffs,
            "wins": sum(d > 0 for d in diffs)}


def summarize_table(records: Mapping[tuple[str, int], Mapping[str, Any]],
                    methods: Sequence[str], *, student: str = "student",
                    kd: str = "kd") -> list[dict[str, Any]]:
    """One row per method with runs: test/val mean ± std, paired differences to ``student``
    and ``kd``, epoch time (median per run, mean over seeds) and its ratio to the student's."""
    by = {m: {s: r for (mm, s), r in records.items() if mm == m} for m in methods}
    test = {m: {s: r["test"] for s, r in runs.items()} for m, runs in by.items()}
    et = {m: mean_std(r["epoch_time"] for r in runs.values())[0] for m, runs in by.items()}
    rows = []
    for m in methods:
        if not by[m]:
            continue
        tm, ts, n = mean_std(test[m].values())
        vm, vs, _ = mean_std(r["val"] for r in by[m].values())
        row = {"method": m, "n": n, "seeds": sorted(by[m]), "test_mean": tm, "test_std": ts,
               "val_mean": vm, "val_std": vs, "epoch_time": et[m],
               "best_epochs": [by[m][s].get("best_epoch") for s in sorted(by[m])],
               "teacher_cache": any(r.get("teacher_cache") for r in by[m].values()),
               "vs_student": None, "vs_kd": None, "time_vs_student": None}
        if m != student and test.get(student):
            row["vs_student"] = paired_difference(test[m], test[student])
        if m not in (student, kd) and test.get(kd):
            row["vs_kd"] = paired_difference(test[m], test[kd])
        if et.get(student) and math.isfinite(et[student]) and et[student] > 0:
            row["time_vs_student"] = et[m] / et[student]
        rows.append(row)
    return rows


# ============================================================================ config
def table_config(table: Table, sets: Sequence[str] = (), tune_dir: Path | None = None,
                 use_tuned: bool = True) -> tuple[Any, dict[str, Any] | None]:
    """The table's config (overrides, then ``--set``), with the validation-tuned weights of
    ``tune_dir/tuned_weights.json`` applied when that tuning is complete; returns
    ``(cfg, tuning summary or None)``."""
    from graphkd.config import load_config
    from graphkd.tune import TUNED_FILE, apply_tuned

    cfg = load_config(CONFIGS / table.config, [*table.overrides, *sets])
    tuned = None
    if tune_dir is not None and (tune_dir / TUNED_FILE).is_file():
        tuned = json.loads((tune_dir / TUNED_FILE).read_text())
        if use_tuned and tuned.get("complete"):
            cfg = apply_tuned(cfg, tuned)
    return cfg, tuned


def table_methods(table: Table, cfg: Any, only: Sequence[str] | None = None) -> list[str]:
    """The table's methods in order (default: every method of the config), restricted to
    ``only`` when given (``--methods``)."""
    methods = list(table.methods or cfg.methods)
    return [m for m in methods if only is None or m in only]


# ============================================================================ training
def ensure_teacher(cfg: Any, data: Any, *, progress: bool = False) -> tuple[Any, dict]:
    """The table's teacher: loaded from the pipeline's cache, else trained with an exact
    per-epoch resume (``<teacher checkpoint>.fit/last.pt``), then saved to the cache.

    The same protocol as :func:`graphkd.pipeline.train_teacher` (seeded with
    ``cfg.teacher_seed``, best-validation weights, ``eval()``), so the cache is shared with
    ``graphkd distill`` and :func:`graphkd.tune.tune_weights`.
    """
    from graphkd.fileio import atomic_torch_save
    from graphkd.metrics import get_metric
    from graphkd.pipeline import (
        TaskLoss,
        build_optimizer,
        build_scheduler,
        make_loader,
        model_from_config,
        resolve_device,
        teacher_path,
        train_loader,
        train_teacher,
    )
    from graphkd.train import fit, seed_everything

    path = teacher_path(cfg)
    if path.is_file():
        return train_teacher(cfg, data)
    device, metric, t = resolve_device(cfg.device), get_metric(cfg.metric), cfg.teacher.train
    seed_everything(cfg.teacher_seed)
    model = model_from_config(cfg.teacher.model, data).to(device)
    ebs, nw = t.eval_batch_size or t.batch_size, cfg.data.num_workers
    res = fit(model, train_loader(data.train, t.batch_size, cfg.teacher_seed, nw),
              make_loader(data.val, ebs, False, cfg.teacher_seed, nw),
              test_loader=make_loader(data.test, ebs, False, cfg.teacher_seed, nw),
              epochs=t.epochs, metric=metric, grad_clip=t.grad_clip,
              optimizer=lambda p: build_optimizer(p, t), scheduler=lambda o: build_scheduler(o, t),
              loss_fn=TaskLoss(), progress=progress, desc="teacher", restore_best=True,
              select=t.select,
              device=device, out_dir=path.with_suffix(".fit"), resume=True)
    model.eval()
    rows = res.history
    rec = {"val": [r[f"val_{metric.name}"] for r in rows],
           "test": [r[f"test_{metric.name}"] for r in rows],
           "epoch_time": [r["time_s"] for r in rows],
           "best_epoch": res.best_epoch - 1, "best_val": res.best_metric,
           "test_at_best": res.test}
    rec["epoch_time_median"] = statistics.median(rec["epoch_time"])
    rec["num_params"] = sum(p.numel() for p in model.parameters())
    atomic_torch_save({"state_dict": model.state_dict(), "record": rec}, path)
    return model, dict(rec, cached=False, path=str(path))


def _load_data(cfg: Any, cache: bool) -> Any:
    from graphkd.pipeline import load_data
    from graphkd.teacher_cache import index_samples

    data = load_data(cfg.data)
    if cache:  # every training sample carries its id (batch.idx) for the cache's lookup
        data = dataclasses.replace(data, train=index_samples(data.train))
    return data


def _student(cfg: Any, method: str, seed: int, teacher: Any, data: Any, device: Any,
             cache_root: Path | None) -> tuple[Any, Any, float, bool]:
    """Seeded student and its trained module; with ``cache_root`` the Distiller reads the
    teacher from the offline cache. Returns ``(student, module, cache seconds, cached)``."""
    from graphkd.distill import Distiller
    from graphkd.pipeline.runs import _make_student
    from graphkd.teacher_cache import cache_teacher

    student, module, _, _ = _make_student(cfg, method, seed, teacher, data, device)
    if cache_root is None or not isinstance(module, Distiller):
        return student, module, 0.0, False
    t0 = time.perf_counter()
    cache_teacher(module, data.train, cache_root)
    return student, module, time.perf_counter() - t0, True


def run_one(cfg: Any, method: str, seed: int, teacher: Any, data: Any, *,
            cache_root: Path | None, state_path: Path | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Train one student (the pipeline's protocol: test metric at the best validation epoch,
    median epoch time without evaluation) and return its record; the best-validation
    ``state_dict`` of the student goes to ``state_path``."""
    from graphkd.config import to_dict
    from graphkd.fileio import atomic_torch_save
    from graphkd.metrics import get_metric
    from graphkd.pipeline import resolve_device, train_on

    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    student, module, cache_s, cached = _student(cfg, method, seed, teacher, data, device,
                                                cache_root)
    hist = train_on(module, data, cfg.student.train, metric=get_metric(cfg.metric),
                    device=device, seed=seed, num_workers=cfg.data.num_workers,
                    progress=progress, desc=f"{method} seed {seed}", restore_best=True)
    if state_path is not None:
        atomic_torch_save({k: v.detach().cpu() for k, v in student.state_dict().items()},
                          state_path)
    return {"method": method, "seed": seed, "val": hist["best_val"],
            "test": hist["test_at_best"], "best_epoch": hist["best_epoch"],
            "epoch_time": hist["epoch_time_median"], "teacher_cache": cached,
            "cache_seconds": round(cache_s, 3),
            "num_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "student_params": sum(p.numel() for p in student.parameters()),
            "method_config": to_dict(cfg.methods[method]),
            "history": {k: hist[k] for k in ("val", "test", "epoch_time", "losses")},
            "wall_time": round(time.perf_counter() - t0, 3), "device": str(device),
            "load_average": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def measure_costs(cfg: Any, data: Any, teacher: Any, methods: Sequence[str], *,
                  steps: int = 20, warmup: int = 2, cache_root: Path | None = None,
                  with_teacher: bool = True) -> dict[str, Any]:
    """Interleaved training-step times (round-robin on the same batches, so machine load hits
    every variant alike): the teacher's own training step, the student alone, and every
    distilled method with the live teacher and (``cache_root``) with the cached teacher.

    Returns ``{"median": {variant: s/step}, "epoch_estimate": {variant: s}, "steps_per_epoch",
    "cache_seconds": {method: s to build/open its cache}, ...}``; an epoch estimate is the
    median step times the number of steps of an epoch (data loading and evaluation excluded).
    """
    import torch

    from graphkd.distill import Distiller
    from graphkd.pipeline import (
        TaskLoss,
        build_optimizer,
        model_from_config,
        resolve_device,
        train_loader,
    )

    device = resolve_device(cfg.device)
    bs = cfg.student.train.batch_size
    batches = [b.to(device) for _, b in zip(range(steps + warmup),
                                              train_loader(data.train, bs, 0))]
    crit = TaskLoss()
    runners: dict[str, Any] = {}
    cache_s: dict[str, float] = {}

    def plain(model: Any, tcfg: Any) -> Any:
        opt = build_optimizer(model.parameters(), tcfg)
        model.train()
        return lambda b: (crit(model(b), b.y), opt)

    if with_teacher:
        runners["teacher"] = plain(model_from_config(cfg.teacher.model, data).to(device),
                                   cfg.teacher.train)
    for m in ["student", *methods]:
        variants = [("live", None)]
        if m != "student" and cache_root is not None:
            variants.append(("cached", cache_root))
        for tag, root in variants:
            t = copy.deepcopy(teacher) if teacher is not None else None
            _, module, cs, _ = _student(cfg, m, 0, t, data, device, root)
            name = m if not isinstance(module, Distiller) else f"{m}/{tag}"
            if tag == "cached":
                cache_s[m] = round(cs, 3)
            if not isinstance(module, Distiller):
                runners[name] = plain(module, cfg.student.train)
                continue
            opt = build_optimizer(module.parameters(), cfg.student.train)
            module.train()
            runners[name] = (lambda mod, o: (lambda b: (sum(mod(b)[1].values()), o)))(module,
                                                                                      opt)
    times: dict[str, list[float]] = {n: [] for n in runners}
    for r in range(steps + warmup):
        b = batches[r % len(batches)]
        for n, step in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            loss, opt = step(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    spe = len(data.train) // bs + (len(data.train) % bs > 1)
    tspe = len(data.train) // cfg.teacher.train.batch_size
    med = {n: statistics.median(v) for n, v in times.items()}
    est = {n: v * (tspe if n == "teacher" else spe) for n, v in med.items()}
    return {"steps": steps, "batch_size": bs, "steps_per_epoch": spe,
            "teacher_steps_per_epoch": tspe, "median": med, "epoch_estimate": est,
            "cache_seconds": cache_s, "device": str(device), "machine": machine_info(device),
            "load_average": list(os.getloadavg())}


def relations(cfg: Any, table: Table, data: Any, teacher: Any, runs: Path,
              records: Mapping[tuple[str, int], Mapping[str, Any]]) -> dict[str, Any]:
    """Relation diagnostics (linear CKA, kNN overlap; :func:`graphkd.diagnostics.
    relation_report`, graph level, test split) of each finished run of
    ``table.relation_methods`` whose student ``state_dict`` was kept."""
    import torch

    from graphkd.diagnostics import relation_report
    from graphkd.pipeline import make_loader, model_from_config, resolve_device

    device = resolve_device(cfg.device)
    loader = make_loader(data.test, 256, False, 0)
    out: dict[str, Any] = {}
    for (m, s), rec in sorted(records.items()):
        if m not in table.relation_methods:
            continue
        pt = run_file(runs, table.key, m, s, rec["fingerprint"]).with_suffix(".pt")
        if not pt.is_file():
            continue
        student = model_from_config(cfg.student.model, data).to(device)
        student.load_state_dict(torch.load(pt, map_location=device, weights_only=True))
        rep = relation_report(teacher, student, loader, list(table.relation_pairs), k=10,
                              level="graph", max_samples=2000, device=device)
        out[f"{m}-s{s}-{rec['fingerprint']}"] = {"method": m, "seed": s, **rep.as_dict()}
    return out


# ============================================================================ render
def _pct(x: float | None, scale: float, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x * scale:.{digits}f}"


def _pm(m: float, s: float, scale: float) -> str:
    if not math.isfinite(m):
        return "—"
    return f"{m * scale:.2f}" + (f" ± {s * scale:.2f}" if math.isfinite(s) else "")


def _diff(d: Mapping[str, Any] | None, scale: float) -> str:
    if not d or not d["n"]:
        return "—"
    sd = f" ± {d['std'] * scale:.2f}" if math.isfinite(d["std"]) else ""
    return f"{d['mean'] * scale:+.2f}{sd} ({d['wins']}/{d['n']})"


def _fmt_s(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.3g} s" if x >= 0.01 else f"{x * 1e3:.3g} ms"


def table_markdown(t: Mapping[str, Any]) -> str:
    """The markdown section of one rendered table (see :func:`render`)."""
    scale = 100.0 if t["metric"] in ("roc_auc", "accuracy") else 1.0
    pub = t.get("published") or {}
    lines = [f"## {t['label']}", "", t["setup"], ""]
    head = ["method", "seeds", f"test {t['metric']}", "Δ vs student (paired)",
            "Δ vs KD (paired)", "val", "best epoch", "s / epoch", "× student"]
    if pub:
        head.append("published")
    te = t.get("teacher")
    if not t["rows"] and not te:
        lines += ["**Not run yet.**", ""]
        if pub:
            lines += [f"Published ({t['published_source']}): "
                      + ", ".join(f"{m} {_pm(*v, 1.0)}" for m, v in pub.items()) + ".", ""]
    else:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if te:
        row = ["teacher", "1 (teacher seed)", _pct(te.get("test_at_best"), scale), "", "",
               _pct(te.get("best_val"), scale), str(te.get("best_epoch", "—")),
               _fmt_s(te.get("epoch_time_median")), ""]
        if pub:
            row.append(_pm(*pub["teacher"], 1.0) if "teacher" in pub else "—")
        lines.append("| " + " | ".join(row) + " |")
    for r in t["rows"]:
        row = [r["method"] + (" ᶜ" if r["teacher_cache"] else ""), str(r["n"]),
               _pm(r["test_mean"], r["test_std"], scale), _diff(r["vs_student"], scale),
               _diff(r["vs_kd"], scale), _pm(r["val_mean"], r["val_std"], scale),
               ", ".join(str(e) for e in r.get("best_epochs", [])) or "—",
               _fmt_s(r["epoch_time"]),
               "—" if r["time_vs_student"] is None else f"{r['time_vs_student']:.2f}"]
        if pub:
            row.append(_pm(*pub[r["method"]], 1.0) if r["method"] in pub else "—")
        lines.append("| " + " | ".join(row) + " |")
    if t["rows"] or te:
        lines += ["", "Δ: mean ± std over seeds of the per-seed difference (same seed: same "
                  "initialisation and batches), in points; (w/n): seeds where the method is "
                  "higher. ᶜ: the teacher read from the offline cache (float32, the same losses "
                  "as the live teacher). best epoch: per seed, from 0."
                  + (f" Published: {t['published_source']}." if pub else ""), ""]
    elif t.get("missing"):
        t = {**t, "missing": []}
    if t.get("missing"):
        lines += [f"**Incomplete**: {len(t['missing'])} of {t['planned']} runs not done yet: "
                  + ", ".join(t["missing"][:40]) + (" …" if len(t["missing"]) > 40 else "")
                  + ".", ""]
    if t.get("stale"):
        lines += [f"({t['stale']} run files of other settings in runs/{t['key']}/ ignored.)", ""]
    cost = t.get("costs")
    if cost:
        est = cost["epoch_estimate"]
        lines += [f"**Epoch cost** (interleaved training steps, {cost['steps']} rounds, batch "
                  f"{cost['batch_size']}, x {cost['steps_per_epoch']} steps/epoch; "
                  f"{cost['device']}, load average {cost['load_average'][0]:.1f}):", "",
                  "| variant | s / step | s / epoch (estimate) | × student |",
                  "|---|---|---|---|"]
        base = est.get("student")
        for n, v in est.items():
            lines.append(f"| {n} | {_fmt_s(cost['median'][n])} | {_fmt_s(v)} | "
                         + (f"{v / base:.2f}" if base else "—") + " |")
        if cost.get("cache_seconds"):
            lines += ["", "Cache build/open per method (once per teacher; later runs open it): "
                      + ", ".join(f"{m} {_fmt_s(s)}" for m, s in cost["cache_seconds"].items())
                      + "."]
        lines += [""]
    if t.get("tuning"):
        from graphkd.tune import format_tuning

        lines += [format_tuning(t["tuning"]), "",
                  "Applied to the runs above: " + ("yes" if t.get("tuned_applied") else
                                                   "no (tuning incomplete)") + ".", ""]
    else:
        lines += ["Weights: the config's (not tuned on validation for this table).", ""]
    rel = t.get("relations_mean")
    if rel:
        lines += ["**Relation diagnostics** (teacher vs student on the test split, graph level, "
                  "linear CKA and kNN overlap@10, mean over seeds):", "",
                  "| method | pair | CKA | kNN overlap |", "|---|---|---|---|"]
        for m, pairs in rel.items():
            for p, v in pairs.items():
                lines.append(f"| {m} | `{p}` | {v['cka']:.3f} | {v['knn_overlap']:.3f} |")
        lines += [""]
    return "\n".join(lines)


def _relations_mean(rel: Mapping[str, Any], keep: set[str]) -> dict[str, Any]:
    acc: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, r in rel.items():
        if name not in keep:
            continue
        for row in r["rows"]:
            acc.setdefault(r["method"], {}).setdefault(
                f"{row['teacher']} → {row['student']}", []).append((row["cka"],
                                                                     row["knn_overlap"]))
    return {m: {p: {"cka": statistics.fmean(c for c, _ in v),
                    "knn_overlap": statistics.fmean(k for _, k in v), "n": len(v)}
                for p, v in pairs.items()} for m, pairs in acc.items()}


def collect_table(grid: Grid, table: Table, results: Path, *, seeds: Sequence[int],
                  sets: Sequence[str] = ()) -> dict[str, Any]:
    """Everything the renderer shows of one table, read from the result files only."""
    base = results / grid.name
    cfg, tuned = table_config(table, sets, base / "tune" / table.key)
    methods = table_methods(table, cfg)
    plan = {(m, s): fingerprint(cfg, m, s) for s in seeds for m in methods}
    records, stale = load_runs(base / "runs", table.key, plan)
    teacher = None
    tj = teacher_record_file(base / "runs", table.key, cfg)
    if tj.is_file():
        teacher = json.loads(tj.read_text())
    st, te = cfg.student, cfg.teacher
    def kw(d: Mapping[str, Any]) -> str:
        return f" {dict(d)}" if d else ""

    setup = (f"Data `{cfg.data.name}`{kw(cfg.data.kwargs)}; teacher "
             f"`{te.model.preset}`{kw(te.model.kwargs)}"
             + (f" ({teacher['num_params']:,} parameters)" if teacher else "")
             + f", {te.train.epochs} epochs"
             + (" (its last epoch: `teacher.train.select: last`)" if te.train.select == "last"
                else "")
             + f"; student `{st.model.preset}`"
             f"{kw(st.model.kwargs)}"
             + (f" ({next(iter(records.values()))['student_params']:,} parameters)"
                if records else "")
             + f", {st.train.epochs} epochs, batch {st.train.batch_size}, Adam lr "
             f"{st.train.optimizer.lr}. Test {cfg.metric} at the best validation epoch; "
             f"config `configs/{table.config}`"
             + (f" with `{' '.join(table.overrides)}`" if table.overrides else "") + ".")
    out: dict[str, Any] = {
        "key": table.key, "label": table.label, "config": table.config,
        "overrides": list(table.overrides) + list(sets), "metric": cfg.metric, "setup": setup,
        "methods": methods, "seeds": list(seeds), "teacher": teacher,
        "rows": summarize_table(records, methods),
        "runs": {f"{m}-s{s}": {k: r[k] for k in ("test", "val", "best_epoch", "epoch_time",
                                                  "fingerprint", "teacher_cache")}
                 for (m, s), r in sorted(records.items())},
        "planned": len(plan), "stale": stale,
        "missing": [f"{m} s{s}" for (m, s) in plan if (m, s) not in records],
        "published": {k: list(v) for k, v in table.published.items()},
        "published_source": table.published_source,
        "tuning": tuned, "tuned_applied": bool(tuned and tuned.get("complete")),
    }
    cj = base / "timing" / f"{table.key}.json"
    if cj.is_file():
        out["costs"] = json.loads(cj.read_text())
    rj = base / "relations" / f"{table.key}.json"
    if rj.is_file():
        keep = {f"{m}-s{s}-{r['fingerprint']}" for (m, s), r in records.items()}
        out["relations_mean"] = _relations_mean(json.loads(rj.read_text()), keep)
    return out


def _plot(tables: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    tables = [t for t in tables if t["rows"]]
    if not tables:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from graphkd.fileio import atomic_write_bytes

    n = max(len(t["rows"]) for t in tables)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 0.38 * n + 1.9),
                             squeeze=False)
    for ax, t in zip(axes[0], tables):
        scale = 100.0 if t["metric"] in ("roc_auc", "accuracy") else 1.0
        rows = t["rows"]
        y = list(range(len(rows)))
        for yi, r in zip(y, rows):
            c = "tab:gray" if r["method"] in ("student", "kd") else "tab:blue"
            sd = r["test_std"] * scale if math.isfinite(r["test_std"]) else 0.0
            ax.errorbar(r["test_mean"] * scale, yi, xerr=sd, fmt="o", color=c, capsize=3,
                        label="ours" if yi == 0 else None)
            pub = t.get("published", {}).get(r["method"])
            if pub:
                ax.errorbar(pub[0], yi + 0.25, xerr=pub[1], fmt="s", color="tab:red",
                            capsize=2, ms=4, label="published" if yi == 0 else None)
        te = t.get("teacher")
        if te and te.get("test_at_best") is not None:
            ax.axvline(te["test_at_best"] * scale, color="k", lw=1, label="teacher")
        ax.set_yticks(y, [r["method"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"test {t['metric']}" + (" (%)" if scale == 100 else ""))
        ax.set_title(t["label"], fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _epoch_of(est: Mapping[str, float], method: str, tag: str) -> float:
    """Epoch estimate of ``method`` (``tag``: live/cached), falling back to the live one."""
    for k in (method, f"{method}/{tag}", f"{method}/live"):
        if k in est:
            return est[k]
    return float("nan")


def _ratios(est: Mapping[str, float]) -> str:
    """`` Epoch / student alone: kd 1.8x live, 0.9x cached; ...`` of the measured variants."""
    base = est.get("student")
    if not base:
        return ""
    by: dict[str, list[str]] = {}
    for k, v in est.items():
        if "/" in k:
            m, tag = k.split("/", 1)
            by.setdefault(m, []).append(f"{v / base:.2f}x {tag}")
    if not by:
        return ""
    return " Epoch / student alone: " + "; ".join(f"{m} {', '.join(v)}"
                                                  for m, v in by.items()) + "."


def cost_estimate(grid: Grid, results: Path = RESULTS_DIR, *,
                  seeds: Sequence[int] | None = None) -> list[str]:
    """Markdown lines: the cost of each full table from its measured step times
    (``timing/<key>.json``, :func:`measure_costs`) and its config.

    ``teacher = teacher epochs x teacher epoch``; ``students = sum over methods of seeds x
    student epochs x epoch`` with the cached teacher where the table uses the cache (and, for
    comparison, with the live teacher). Evaluation and data loading are not included.
    """
    seeds = list(grid.seeds if seeds is None else seeds)
    lines = []
    for t in grid.tables:
        cj = results / grid.name / "timing" / f"{t.key}.json"
        if not cj.is_file():
            lines.append(f"- `{grid.name}/{t.key}`: not measured (run `python -m "
                         f"benchmarks.{grid.name} --tables {t.key} --measure 20`).")
            continue
        cost = json.loads(cj.read_text())
        est = cost["epoch_estimate"]
        cfg, _ = table_config(t)
        methods = table_methods(t, cfg)
        te = cfg.teacher.train.epochs * est["teacher"] if "teacher" in est else float("nan")
        n, se = len(seeds), cfg.student.train.epochs

        tag = "cached" if t.cache else "live"
        have = [m for m in methods if m in est or f"{m}/live" in est]
        cached = sum(n * se * _epoch_of(est, m, tag) for m in have)
        live = sum(n * se * _epoch_of(est, m, "live") for m in have)
        part = "" if len(have) == len(methods) else \
            f" (only the measured methods {have}; the others are not counted)"
        if t.cache and any(m != "student" and f"{m}/cached" not in est for m in have):
            part += " (cached variants not measured: live times used, an upper bound)"
        lines.append(
            f"- `{grid.name}/{t.key}` ({cost['device']}, load average "
            f"{cost['load_average'][0]:.1f} when measured): teacher {cfg.teacher.train.epochs} "
            f"epochs x {_fmt_s(est.get('teacher'))} = {te / 3600:.2f} h; students "
            f"{len(have)} methods x {n} seeds x {se} epochs = {cached / 3600:.2f} h"
            + (f" with the cached teacher ({live / 3600:.2f} h with the live one)"
               if t.cache else " (live teacher)") + part + "." + _ratios(est))
    return lines


def render(grid: Grid, results: Path = RESULTS_DIR, *, seeds: Sequence[int] | None = None,
           sets: Sequence[str] = ()) -> list[Path]:
    """Write ``<results>/<name>.{json,md,png}`` from the run files of ``<results>/<name>/``."""
    seeds = list(grid.seeds if seeds is None else seeds)
    tables = [collect_table(grid, t, results, seeds=seeds, sets=sets) for t in grid.tables]
    blob = {"title": grid.title, "rendered": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "notes": list(grid.notes), "tables": tables}
    paths = [results / f"{grid.name}.json"]
    atomic_write_json(paths[0], blob, indent=1, default=str)
    png = _plot(tables, results / f"{grid.name}.png")
    parts = [f"# {grid.title}", "",
             f"Generated by `python -m benchmarks.{grid.name} --render` from the run files in "
             f"`benchmarks/results/{grid.name}/runs/` (never edited by hand).", ""]
    parts += [f"- {n}" for n in grid.notes] + [""]
    parts += ["**Cost of the full tables** (measured step times x steps; evaluation and data "
              "loading excluded):", "", *cost_estimate(grid, results, seeds=seeds), ""]
    for t in tables:
        parts += [table_markdown(t), ""]
    if png is not None:
        parts += [f"![{grid.name}]({png.name})", ""]
        paths.append(png)
    md = results / f"{grid.name}.md"
    atomic_write_text(md, "\n".join(parts).rstrip() + "\n")
    paths.append(md)
    return paths


# ============================================================================ CLI
def _parser(grid: Grid, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{grid.name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=None,
                   help=f"subset of {[t.key for t in grid.tables]}")
    p.add_argument("--seeds", nargs="+", type=int, default=list(grid.seeds))
    p.add_argument("--methods", nargs="+", default=None, help="default: the table's methods")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (changes the fingerprint: a separate set of runs)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    p.add_argument("--render", action="store_true", help="only regenerate the tables")
    p.add_argument("--teacher-only", action="store_true",
                   help="train (or resume) the teachers, nothing else")
    p.add_argument("--measure", type=int, default=0, metavar="STEPS",
                   help="interleaved step timing (teacher, student, live/cached teacher) over "
                        "STEPS rounds with an untrained teacher, into timing/<key>.json")
    p.add_argument("--tune", type=int, default=0, metavar="EPOCHS",
                   help="only the validation-only weight tuning (graphkd.tune), EPOCHS per "
                        "trial; later grid runs use a complete tuning's choice")
    p.add_argument("--tune-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--tune-grid", nargs="+", type=float, default=[0.1, 1.0, 10.0])
    p.add_argument("--max-trials", type=int, default=None)
    p.add_argument("--relations", action="store_true",
                   help="relation diagnostics of the finished runs (needs the teacher)")
    p.add_argument("--no-cache", action="store_true", help="live teacher even where cached")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="start no new run after this many minutes")
    p.add_argument("--progress", action="store_true")
    return p


def _ensure_gitignore(base: Path) -> None:
    gi = base / ".gitignore"
    if not gi.is_file():
        atomic_write_text(gi, "# student weights of the runs (for the relation diagnostics)\n"
                              "runs/**/*.pt\n")


def main(grid: Grid, doc: str, argv: Sequence[str] | None = None) -> int:
    """The runner of ``grid`` (see the module docstring and ``--help``)."""
    args = _parser(grid, doc).parse_args(argv)
    results = Path(args.out)
    base = results / grid.name
    tables = [t for t in grid.tables if args.tables is None or t.key in args.tables]
    if args.render:
        for p in render(grid, results, seeds=args.seeds, sets=args.set):
            print(p)
        return 0
    base.mkdir(parents=True, exist_ok=True)
    _ensure_gitignore(base)
    start = time.monotonic()
    for table in tables:
        tune_dir = base / "tune" / table.key
        cfg, _ = table_config(table, args.set, tune_dir)
        from graphkd.pipeline.training import apply_threads

        apply_threads(cfg)
        cache = table.cache and not args.no_cache
        cache_root = Path(cfg.output_dir) / "teacher_cache" if cache else None
        methods = table_methods(table, cfg, args.methods)
        data = _load_data(cfg, cache)
        print(f"[{grid.name}] {table.key}: {len(data.train)}/{len(data.val)}/{len(data.test)} "
              f"graphs; methods {methods}", flush=True)
        if args.measure:
            from graphkd.pipeline import model_from_config, resolve_device

            t = model_from_config(cfg.teacher.model, data).to(resolve_device(cfg.device)).eval()
            with_cache = cache_root / "measure" if cache_root is not None else None
            cost = measure_costs(cfg, data, t, [m for m in methods if m != "student"],
                                 steps=args.measure, cache_root=with_cache)
            atomic_write_json(base / "timing" / f"{table.key}.json", cost, indent=1)
            print(json.dumps(cost["epoch_estimate"], indent=1), flush=True)
            continue
        teacher, trec = ensure_teacher(cfg, data, progress=args.progress)
        trec_file = teacher_record_file(base / "runs", table.key, cfg)
        if not (trec.get("cached") and trec_file.is_file()):  # written when trained
            atomic_write_json(trec_file, {k: v for k, v in trec.items() if k != "path"},
                              indent=1)
        print(f"[{grid.name}] {table.key} teacher: test {trec['test_at_best']:.4f} "
              f"(val {trec['best_val']:.4f}, epoch {trec['best_epoch']})", flush=True)
        if args.teacher_only:
            continue
        if args.tune:
            from graphkd.tune import format_tuning, tune_weights

            tm = [m for m in methods if cfg.methods[m].uses_teacher]
            raw, _ = table_config(table, args.set, None)
            tuned = tune_weights(raw, tm, epochs=args.tune, seeds=args.tune_seeds,
                                 grid=args.tune_grid, max_trials=args.max_trials,
                                 out_dir=tune_dir, data=data, teacher=teacher,
                                 progress=args.progress)
            print(format_tuning(tuned), flush=True)
            continue  # tuning only: the next run of the grid uses a complete tuning's choice
        if args.relations:
            plan = {(m, s): fingerprint(cfg, m, s) for s in args.seeds for m in methods}
            records, _ = load_runs(base / "runs", table.key, plan)
            for rec in records.values():
                rec.setdefault("fingerprint", plan[(rec["method"], rec["seed"])])
            rel = relations(cfg, table, data, teacher, base / "runs", records)
            path = base / "relations" / f"{table.key}.json"
            old = json.loads(path.read_text()) if path.is_file() else {}
            atomic_write_json(path, {**old, **rel}, indent=1)
            continue
        for m, seed, fp, path in pending(cfg, base / "runs", table.key, methods, args.seeds):
            if args.budget_minutes is not None and \
                    time.monotonic() - start > 60 * args.budget_minutes:
                print(f"[{grid.name}] budget of {args.budget_minutes} min spent; rerun the "
                      "same command to continue.", flush=True)
                for p in render(grid, results, seeds=args.seeds, sets=args.set):
                    print(p)
                return 0
            rec = run_one(cfg, m, seed, teacher, data, cache_root=cache_root,
                          state_path=path.with_suffix(".pt"), progress=args.progress)
            rec.update(fingerprint=fp, table=table.key, config=table.config,
                       overrides=list(table.overrides) + list(args.set))
            atomic_write_json(path, rec, indent=1, default=str)
            print(f"[{grid.name}] {table.key} {m:8s} seed {seed}: test {rec['test']:.4f} "
                  f"val {rec['val']:.4f} (epoch {rec['best_epoch']}), "
                  f"{rec['epoch_time']:.3f} s/epoch"
                  + (" [cached teacher]" if rec["teacher_cache"] else ""), flush=True)
    for p in render(grid, results, seeds=args.seeds, sets=args.set):
        print(p)
    return 0


COSTS_START, COSTS_END = "<!-- costs:start -->", "<!-- costs:end -->"
SUMMARY_START, SUMMARY_END = "<!-- graph-benchmarks:start -->", "<!-- graph-benchmarks:end -->"


def _beats(rows: Sequence[Mapping[str, Any]], ref: str, scale: float) -> str:
    key = "vs_student" if ref == "student" else "vs_kd"
    out = []
    for r in rows:
        d = r.get(key)
        if d and d["n"] and d["mean"] > 0:
            noise = " (within noise)" if not (math.isfinite(d["std"])
                                               and d["mean"] > d["std"]) else ""
            out.append(f"{r['method']} {_diff(d, scale)}{noise}")
    return "; ".join(out) if out else "none"


def summary_lines(grid: Grid, results: Path = RESULTS_DIR) -> list[str]:
    """Markdown bullets of a rendered grid (``<name>.json``): per table what beats the student
    alone and KD (paired per-seed Δ in points, ± std, (wins/seeds)), and whether the table is
    complete."""
    path = results / f"{grid.name}.json"
    if not path.is_file():
        return [f"- {grid.title}: not rendered yet."]
    lines = []
    for t in json.loads(path.read_text())["tables"]:
        scale = 100.0 if t["metric"] in ("roc_auc", "accuracy") else 1.0
        done = t["planned"] - len(t["missing"])
        state = "complete" if not t["missing"] else f"**incomplete, {done}/{t['planned']} runs**"
        if not t["rows"]:
            lines.append(f"- {t['label']}: **not run yet** (0/{t['planned']} runs).")
            continue
        rows = {r["method"]: r for r in t["rows"]}
        st = rows.get("student")
        head = f"- {t['label']} ({state}, test {t['metric']}"
        if st:
            head += f"; student alone {_pm(st['test_mean'], st['test_std'], scale)}"
        if t.get("teacher"):
            head += f", teacher {_pct(t['teacher'].get('test_at_best'), scale)}"
        lines.append(head + f"): higher than the student alone: "
                     f"{_beats(t['rows'], 'student', scale)}. Higher than KD: "
                     f"{_beats(t['rows'], 'kd', scale)}.")
    return lines


def write_cost_block(doc: Path, grids: Sequence[Grid], results: Path = RESULTS_DIR) -> str:
    """Replace the text between ``<!-- costs:start -->`` and ``<!-- costs:end -->`` in ``doc``
    with :func:`cost_estimate` of every grid (generated, never typed); returns the block."""
    block = "\n".join(line for g in grids for line in cost_estimate(g, results))
    write_block(doc, COSTS_START, COSTS_END, block)
    return block


if __name__ == "__main__":  # pragma: no cover
    # python -m benchmarks._grid costs docs/graph_benchmarks.md: regenerate the cost block;
    # python -m benchmarks._grid summary README.md: the README's summary of the tables
    from benchmarks import mnist_clouds, moleculenet, molhiv

    _grids = [molhiv.GRID, moleculenet.GRID, mnist_clouds.GRID]
    if len(sys.argv) == 3 and sys.argv[1] == "costs":
        print(write_cost_block(Path(sys.argv[2]), _grids))
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "summary":
        _block = "\n".join(line for g in _grids for line in summary_lines(g))
        write_block(Path(sys.argv[2]), SUMMARY_START, SUMMARY_END, _block)
        print(_block)
        sys.exit(0)
    sys.exit("usage: python -m benchmarks._grid costs|summary FILE (the runners: python -m "
             "benchmarks.molhiv / mnist_clouds / moleculenet)")
