"""Ranking distillation with the RecBole plugin under one fair protocol (shared by
``benchmarks.recbole_ml100k`` and ``benchmarks.recbole_ml1m``).

Protocol (the same for the student alone and every method):

* Teacher BPR d=200 -> student BPR d=20 (``--teachers lightgcn``: LightGCN d=64), RecBole's
  default split (RS 0.8/0.1/0.1 per user, random order), full-sort ranking over all items; test
  metrics of the best-validation epoch (valid NDCG@10).
* Budget: epoch cap 300 (RecBole's default ``epochs``), early stopping after ``stopping_step``
  10 evaluations without a better valid NDCG@10 (RecBole's default), evaluation every epoch,
  ``train_batch_size`` 2048. Every run records whether it ended at the cap instead of by early
  stopping (``stopped_at_cap``).
* Teacher: one per seed (the seed changes the split, so a teacher of another seed would have seen
  this seed's test items), trained to convergence at RecBole's defaults: lr 0.001, cap 300,
  ``stopping_step`` 10, ``train_batch_size`` 2048.
* Selection on the validation split only: on seed 0, every method runs over lr in {0.001, 0.005}
  x lambda in {0.1, 1, 10} x its reference lambda (``distill_weight`` of
  ``recsys/recbole/<method>.yaml``); the student alone over the lr grid. The (lr, lambda) with
  the best **valid** NDCG@10 of seed 0 is chosen (ties: the reference lambda, then the smaller
  lr); then seeds 0, 1, 2 run at the chosen values (seed 0's run is the grid run itself).
* Reported: test NDCG@10 / Recall@10 mean +- std over seeds, the paired per-seed difference to
  the student alone (mean +- std of the differences), the chosen lr / lambda beside the grid's
  valid scores, how many runs stopped at the cap, run times, machine.

Resumable and splittable: every finished run is one JSON file
``benchmarks/results/<name>/runs/<key>-<fingerprint>.json`` (atomic write); the fingerprint
hashes everything that defines the run besides the key (dataset, models, budget, teacher
settings, the method's YAML), so a changed method YAML or budget makes new runs instead of
mixing old ones in. A rerun skips finished runs; a run another process is working on (a
non-blocking lock under ``<run-dir>/bench-locks/``) is skipped too, so several processes or
sessions can share one grid. ``--render`` regenerates ``benchmarks/results/<name>.{md,json,png}``
from the run files that match the current protocol.

Usage (``python -m benchmarks.recbole_ml100k`` and ``python -m benchmarks.recbole_ml1m`` take
the same options)::

    python -m benchmarks.recbole_ml1m                          # grid, then seeds 0-2 (resumable)
    python -m benchmarks.recbole_ml1m --phase grid --methods none,rd,cd,rrd,de
    python -m benchmarks.recbole_ml1m --phase grid --methods de_rrd,ftd,htd,unkd,dcd
    python -m benchmarks.recbole_ml1m --phase grid --methods htd --only-lrs 0.001
    python -m benchmarks.recbole_ml1m --phase final            # needs every method's grid
    python -m benchmarks.recbole_ml1m --render                 # tables + plot from the runs
    python -m benchmarks.recbole_ml1m --timing                 # controlled epoch-time pass
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks._util import RESULTS_DIR, machine_info, machine_markdown, markdown_table, pyplot
from graphkd.fileio import atomic_write, atomic_write_json, atomic_write_text, file_lock

METHODS = ("none", "rd", "cd", "rrd", "de", "de_rrd", "ftd", "htd", "unkd", "dcd")
LABELS = {"none": "student alone", "rd": "RD", "cd": "CD", "rrd": "RRD", "de": "DE",
          "de_rrd": "DE+RRD", "ftd": "FTD", "htd": "HTD", "unkd": "UnKD", "dcd": "DCD"}
#: methods that use the teacher's embeddings, not its top-K lists (no top-K extraction time)
EMBEDDING_METHODS = ("de", "ftd", "htd")
TEACHERS = {"bpr": ("BPR", {"embedding_size": 200}),
            "lightgcn": ("LightGCN", {"embedding_size": 64})}
STUDENT = ("BPR", {"embedding_size": 20})
LR_GRID = (0.001, 0.005)
WEIGHT_GRID = (0.1, 1.0, 10.0)  # x the method's reference lambda
#: a choice at the edge of the lambda grid extends it once by this factor past that edge
EDGE_STEP = 10.0
EPOCH_CAP = 300  # RecBole's default `epochs`
STOPPING_STEP = 10  # RecBole's default
TRAIN_BATCH = 2048  # RecBole's default
TEACHER_LR = 0.001  # RecBole's default
GRID_SEED = 0
#: full-sort evaluation scores ``eval_batch_size // n_items`` users per batch; RecBole's 4096
#: means 1-2 users per batch on ml-100k/ml-1m (ml-1m: 1.6 s instead of 0.2 s per evaluation).
#: The metrics are the same (checked); it is not part of the teacher cache key.
EVAL_BATCH = 1 << 20
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
_YAML_DIR = Path(__file__).resolve().parents[1] / "recsys" / "recbole"


@dataclass(frozen=True)
class Bench:
    """One dataset's benchmark: results ``<results-dir>/<name>.{md,json,png}`` and the run files
    ``<results-dir>/<name>/runs/``."""

    name: str
    dataset: str
    title: str
    #: the default learning-rate grid of the selection (``--lrs``)
    lrs: tuple[float, ...] = LR_GRID
    #: learning rates run in an earlier, wider grid and dropped from the selection: their
    #: seed-0 cells stay in the grid table (marked ‡) as the evidence for the cut
    probe_lrs: tuple[float, ...] = ()


# ----------------------------------------------------------------------------- protocol
def method_settings(method: str) -> dict[str, Any]:
    """The method's shipped YAML (``recsys/recbole/<method>.yaml``), parsed (comments do not
    count)."""
    path = _YAML_DIR / f"{method}.yaml"
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def reference_weight(method: str) -> float:
    """The method's reference lambda: ``distill_weight`` of its YAML (0 for ``none``)."""
    if method == "none":
        return 0.0
    return float(method_settings(method).get("distill_weight", 1.0))


def _num(x: float) -> str:
    """A float for keys and tables: ``0.001``, ``10``, ``1e-05``."""
    return f"{x:g}"


def weight_value(method: str, mult: float | None) -> float:
    """lambda = ``mult`` x the reference (rounded to 6 significant digits: 0.1 x 0.001 is
    1e-4, not 1.0000000000000002e-4)."""
    if method == "none" or mult is None:
        return 0.0
    return float(f"{mult * reference_weight(method):.6g}")


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """What every student run shares (part of every fingerprint)."""
    return {"student": list(STUDENT), "epochs": args.epochs, "stopping_step": args.stopping_step,
            "train_batch_size": TRAIN_BATCH, "eval_step": 1, "valid_metric": "NDCG@10",
            "split": "RecBole default (RS 0.8/0.1/0.1, RO, per user), full sort"}


def teacher_protocol(args: argparse.Namespace, tkey: str) -> dict[str, Any]:
    """The teacher's model and training settings (part of the fingerprint of runs using it)."""
    return {"teacher": list(TEACHERS[tkey]), "epochs": args.teacher_epochs,
            "stopping_step": STOPPING_STEP, "learning_rate": TEACHER_LR,
            "train_batch_size": TRAIN_BATCH}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def fingerprint(bench: Bench, args: argparse.Namespace, method: str, tkey: str | None) -> str:
    """Hash of everything that defines a run besides its key (lr, lambda multiplier, seed)."""
    obj = {"dataset": bench.dataset, "protocol": protocol(args), "method": method,
           "yaml": method_settings(method)}
    if method != "none":
        obj["teacher"] = teacher_protocol(args, tkey)
    return _hash(obj)


def teacher_fingerprint(bench: Bench, args: argparse.Namespace, tkey: str) -> str:
    return _hash({"dataset": bench.dataset, "teacher": teacher_protocol(args, tkey)})


def run_key(method: str, tkey: str | None, lr: float, mult: float | None, seed: int) -> str:
    """``none-lr0.005-s0``, ``bpr-rrd-lr0.001-x10-s2``."""
    if method == "none":
        return f"none-lr{_num(lr)}-s{seed}"
    return f"{tkey}-{method}-lr{_num(lr)}-x{_num(mult)}-s{seed}"


def grid_points(method: str, args: argparse.Namespace) -> list[tuple[float, float | None]]:
    """The (lr, lambda multiplier) pairs of ``method``'s grid (multiplier None: student alone)."""
    mults: tuple[float | None, ...] = (None,) if method == "none" else tuple(args.weights)
    return [(lr, m) for lr in args.lrs for m in mults]


def student_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {"epochs": args.epochs, "stopping_step": args.stopping_step,
            "train_batch_size": TRAIN_BATCH, "eval_step": 1, "eval_batch_size": EVAL_BATCH,
            "seed": seed, "gpu_id": _gpu(args), "softlabel_cache_dir": None}


def teacher_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {"epochs": args.teacher_epochs, "stopping_step": STOPPING_STEP,
            "learning_rate": TEACHER_LR, "train_batch_size": TRAIN_BATCH, "eval_step": 1,
            "eval_batch_size": EVAL_BATCH, "seed": seed, "gpu_id": _gpu(args)}


def _gpu(args: argparse.Namespace) -> str:
    return "0" if args.device == "cuda" else ""  # "" keeps RecBole on the CPU


def stopped_at_cap(epochs_run: int, best_epoch: int | None, cap: int, stopping_step: int) -> bool:
    """Whether training ended at the epoch cap rather than by early stopping.

    RecBole stops once ``stopping_step + 1`` evaluations in a row did not reach the best score
    (``recbole.utils.early_stopping``: ``cur_step > max_step``), i.e. after epoch index
    ``best_epoch + stopping_step + 1``; a run that ran ``cap`` epochs and stopped earlier than
    that ended at the cap.
    """
    if epochs_run < cap:
        return False
    return best_epoch is None or epochs_run < best_epoch + stopping_step + 2


# ----------------------------------------------------------------------------- run files
def runs_dir(bench: Bench, args: argparse.Namespace) -> Path:
    return Path(args.results_dir) / bench.name / "runs"


def _run_path(bench: Bench, args: argparse.Namespace, key: str, fp: str) -> Path:
    return runs_dir(bench, args) / f"{key}-{fp}.json"


def load_runs(bench: Bench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run file of ``bench`` (any fingerprint), parsed; unreadable files are skipped
    with a message."""
    out = []
    folder = runs_dir(bench, args)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            print(f"skipping unreadable run file {path}: {exc}")
    return out


@contextlib.contextmanager
def claim(args: argparse.Namespace, bench: Bench, name: str) -> Iterator[bool]:
    """A non-blocking exclusive lock on one run (another process working on it: False)."""
    lock = Path(args.run_dir) / "bench-locks" / bench.name / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no sharing between processes
        yield True
        return
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ----------------------------------------------------------------------------- running
def ensure_teacher_run(bench: Bench, args: argparse.Namespace, tkey: str,
                       seed: int) -> Path:
    """The teacher of ``seed`` (trained once per seed, reused from ``--run-dir``); its result is
    recorded in ``runs/teacher-<tkey>-s<seed>-<fp>.json``, and beside the teacher's state file
    (``<state file>.result.json``) so that another results directory reusing the teacher still
    reports it."""
    from recsys.recbole import ensure_teacher

    tname, tcfg = TEACHERS[tkey]
    fp = teacher_fingerprint(bench, args, tkey)
    out = _run_path(bench, args, f"teacher-{tkey}-s{seed}", fp)
    # a blocking lock: a second process needing the same teacher waits and then reuses it
    with file_lock(Path(args.run_dir) / "bench-locks" / bench.name / f"teacher-{tkey}-s{seed}"):
        t0 = time.perf_counter()
        path, res = ensure_teacher(tname, bench.dataset, teacher_config=tcfg,
                                   config_dict=teacher_config(args, seed), run_dir=args.run_dir)
        sidecar = Path(f"{path}.result.json")
        if res is None and out.is_file():
            return path
        entry: dict[str, Any] = {
            "kind": "teacher", "teacher": tkey, "seed": seed, "fingerprint": fp,
            "dataset": bench.dataset, "settings": teacher_protocol(args, tkey),
            "checkpoint": str(path), "machine": machine_info(args.device),
            "git_commit": _git_commit()}
        if res is not None:
            entry.update({k: res[k] for k in ("test_result", "best_valid_result",
                                              "best_valid_score", "best_epoch", "epochs_run")})
            entry.update(wall_seconds=time.perf_counter() - t0,
                         epoch_seconds_mean=statistics.fmean(res["epoch_seconds"]),
                         stopped_at_cap=stopped_at_cap(res["epochs_run"], res["best_epoch"],
                                                       args.teacher_epochs, STOPPING_STEP))
            atomic_write_json(sidecar, entry, indent=1)
            print(f"teacher {tkey} seed {seed}: test ndcg@10 "
                  f"{res['test_result']['ndcg@10']:.4f}, {res['epochs_run']} epochs",
                  flush=True)
        elif sidecar.is_file():  # trained earlier for another results directory
            with contextlib.suppress(OSError, ValueError):
                entry = {**json.loads(sidecar.read_text(encoding="utf-8")), "fingerprint": fp}
        atomic_write_json(out, entry, indent=1)
    return path


def student_run(bench: Bench, args: argparse.Namespace, method: str, tkey: str, lr: float,
                mult: float | None, seed: int, teacher_path: Path | None) -> str:
    """Run one (method, lr, lambda, seed) unless its file exists; returns what happened
    (``done`` / ``ran`` / ``busy``)."""
    from recsys.recbole import run_distillation

    owner = None if method == "none" else tkey
    key = run_key(method, owner, lr, mult, seed)
    fp = fingerprint(bench, args, method, owner)
    out = _run_path(bench, args, key, fp)
    if out.is_file():
        return "done"
    with claim(args, bench, f"{key}-{fp}") as mine:
        if not mine:
            print(f"{key}: running in another process, skipped", flush=True)
            return "busy"
        if out.is_file():  # finished by another process meanwhile
            return "done"
        weight = weight_value(method, mult)
        cfg = {**student_config(args, seed), "learning_rate": lr}
        if method != "none":
            cfg["distill_weight"] = weight
        tname, tcfg = TEACHERS[tkey]
        t0 = time.perf_counter()
        res = run_distillation(
            teacher=tname, student=STUDENT[0], method=method, dataset=bench.dataset,
            teacher_config=tcfg, student_config=STUDENT[1], teacher_checkpoint=teacher_path,
            config_dict=cfg, run_dir=args.run_dir)
        wall = time.perf_counter() - t0
        at_cap = stopped_at_cap(res["epochs_run"], res["best_epoch"], args.epochs,
                                args.stopping_step)
        entry = {
            "kind": "student", "key": key, "fingerprint": fp, "dataset": bench.dataset,
            "method": method, "teacher": owner, "seed": seed, "learning_rate": lr,
            "weight_multiplier": mult, "distill_weight": weight,
            "reference_weight": reference_weight(method),
            "method_yaml": method_settings(method), "protocol": protocol(args),
            **{k: res[k] for k in ("test_result", "best_valid_result", "best_valid_score",
                                   "best_epoch", "epochs_run", "softlabel_seconds")},
            "stopped_at_cap": at_cap, "wall_seconds": wall,
            "epoch_seconds": res["epoch_seconds"], "epoch_cpu_seconds": res["epoch_cpu_seconds"],
            "epoch_seconds_mean": statistics.fmean(res["epoch_seconds"]),
            "machine": machine_info(args.device), "threads": args.threads,
            "git_commit": _git_commit(),
        }
        atomic_write_json(out, entry, indent=1)
        if res.get("checkpoint") and not args.keep_checkpoints:
            with contextlib.suppress(OSError):
                Path(res["checkpoint"]).unlink()
        print(f"{key}: valid ndcg@10 {res['best_valid_score']:.4f} test ndcg@10 "
              f"{res['test_result']['ndcg@10']:.4f}, {res['epochs_run']} epochs"
              f"{' (AT THE CAP)' if at_cap else ''}, {wall:.0f} s", flush=True)
        return "ran"


def _current(bench: Bench, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The run files matching the current protocol, by key."""
    fps: dict[tuple[str, str | None], str] = {}
    out = {}
    for r in load_runs(bench, args):
        if r.get("kind") != "student":
            continue
        ident = (r["method"], r["teacher"])
        if r["method"] not in METHODS or (r["teacher"] is not None
                                          and r["teacher"] not in TEACHERS):
            continue
        if ident not in fps:
            fps[ident] = fingerprint(bench, args, r["method"], r["teacher"])
        if r["fingerprint"] == fps[ident]:
            out[r["key"]] = r
    return out


def _best(runs: dict[str, dict[str, Any]], method: str, owner: str | None,
          points: list[tuple[float, float | None]]) -> tuple[float, float | None] | None:
    """The best of ``points`` on the grid seed's valid NDCG@10 (ties: the reference lambda,
    then the smaller lr); None while one of them has no run."""
    scored = []
    for lr, mult in points:
        r = runs.get(run_key(method, owner, lr, mult, GRID_SEED))
        if r is None:
            return None
        ref_first = 0 if mult in (None, 1.0) else 1
        scored.append((-r["best_valid_score"], ref_first, lr, lr, mult))
    best = min(scored, key=lambda s: s[:3])
    return best[3], best[4]


def edge_extension(method: str, chosen: tuple[float, float | None] | None,
                   args: argparse.Namespace) -> tuple[float, float] | None:
    """The one point past the lambda grid's edge that a choice at that edge asks for: the
    chosen lr with the edge multiplier times (upper edge) or divided by (lower edge)
    :data:`EDGE_STEP`; None for a choice inside the grid, the student alone, or with
    ``--no-extend-edges``. Extended once: a choice at the new point is not extended again."""
    if method == "none" or chosen is None or not args.extend_edges or len(args.weights) < 2:
        return None
    lr, mult = chosen
    if mult == max(args.weights):
        return lr, float(mult) * EDGE_STEP
    if mult == min(args.weights):
        return lr, float(mult) / EDGE_STEP
    return None


def selection(runs: dict[str, dict[str, Any]], method: str, tkey: str,
              args: argparse.Namespace) -> dict[str, Any]:
    """How ``method``'s values are chosen from the grid seed's runs.

    Returns ``{"base": the best point of the grid (None while incomplete), "extension": the
    point past the edge it asks for (or None), "chosen": the best point of the grid plus the
    extension (None while either is incomplete)}``.
    """
    owner = None if method == "none" else tkey
    points = grid_points(method, args)
    base = _best(runs, method, owner, points)
    ext = edge_extension(method, base, args)
    chosen = base if ext is None else _best(runs, method, owner, [*points, ext])
    return {"base": base, "extension": ext, "chosen": chosen}


def select(runs: dict[str, dict[str, Any]], method: str, tkey: str,
           args: argparse.Namespace) -> tuple[float, float | None] | None:
    """The chosen (lr, multiplier) of ``method``: the best valid NDCG@10 on the grid seed over
    the grid and, when the grid's best sits at an edge of the lambda grid, the one point past
    that edge (:func:`edge_extension`); ties: the reference lambda, then the smaller lr. None
    while the grid or the extension is incomplete."""
    return selection(runs, method, tkey, args)["chosen"]


def _run(bench: Bench, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    counts = {"done": 0, "ran": 0, "busy": 0}
    waiting = []
    for tkey in args.teachers:
        if args.phase in ("grid", "all"):
            tpath = None
            if any(m != "none" for m in args.methods):
                tpath = ensure_teacher_run(bench, args, tkey, GRID_SEED)
            for method in args.methods:
                for lr, mult in grid_points(method, args):
                    if (args.only_lrs and lr not in args.only_lrs) or (
                            mult is not None and args.only_weights
                            and mult not in args.only_weights):
                        continue
                    counts[student_run(bench, args, method, tkey, lr, mult, GRID_SEED,
                                       tpath)] += 1
                ext = selection(_current(bench, args), method, tkey, args)["extension"]
                if ext is not None and not (args.only_lrs or args.only_weights):
                    counts[student_run(bench, args, method, tkey, *ext, GRID_SEED, tpath)] += 1
        if args.phase in ("final", "all"):
            runs = _current(bench, args)
            chosen = {m: select(runs, m, tkey, args) for m in args.methods}
            waiting += [f"{tkey}/{m}" for m, c in chosen.items() if c is None]
            for seed in args.seeds:
                todo = [(m, c) for m, c in chosen.items() if c is not None]
                if not todo:
                    break
                tpath = None
                if any(m != "none" for m, _ in todo):
                    tpath = ensure_teacher_run(bench, args, tkey, seed)
                for method, (lr, mult) in todo:
                    counts[student_run(bench, args, method, tkey, lr, mult, seed, tpath)] += 1
    print(f"runs: {counts['ran']} ran, {counts['done']} already done, {counts['busy']} busy "
          "elsewhere", flush=True)
    if waiting:
        print("final phase waits for an incomplete grid (run --phase grid for them): "
              + ", ".join(waiting), flush=True)
    md = render(bench, args)
    if md:
        print(md)


def _timing(bench: Bench, args: argparse.Namespace) -> None:
    """Controlled epoch-time measurement: ``--timing-epochs`` epochs of every method on the grid
    seed, back to back, no evaluation, at the chosen lr/lambda where the grid is complete (else
    the first lr and the reference lambda), recording wall and CPU time per epoch (the CPU time
    of a single-threaded process is far less sensitive to other jobs than wall time)."""
    import torch

    from recsys.recbole import run_distillation

    torch.set_num_threads(args.threads)
    runs = _current(bench, args)
    folder = Path(args.results_dir) / bench.name / "timing"
    for tkey in args.teachers:
        tname, tcfg = TEACHERS[tkey]
        tpath = ensure_teacher_run(bench, args, tkey, GRID_SEED)
        for method in args.methods:
            chosen = select(runs, method, tkey, args)
            lr, mult = chosen or (args.lrs[0], None if method == "none" else 1.0)
            cfg = {**student_config(args, GRID_SEED), "epochs": args.timing_epochs,
                   "eval_step": 1000, "learning_rate": lr}
            if method != "none":
                cfg["distill_weight"] = weight_value(method, mult)
            res = run_distillation(teacher=tname, student=STUDENT[0], method=method,
                                   dataset=bench.dataset, teacher_config=tcfg,
                                   student_config=STUDENT[1], teacher_checkpoint=tpath,
                                   config_dict=cfg, run_dir=args.run_dir, saved=False)
            entry = {"teacher": tkey, "method": method, "learning_rate": lr,
                     "weight_multiplier": mult, "chosen": chosen is not None,
                     "fingerprint": fingerprint(bench, args, method,
                                                None if method == "none" else tkey),
                     "wall": res["epoch_seconds"], "cpu": res["epoch_cpu_seconds"],
                     "softlabel_seconds": res["softlabel_seconds"],
                     "threads": args.threads, "machine": machine_info(args.device)}
            atomic_write_json(folder / f"{tkey}-{method}.json", entry, indent=1)
            print(f"timing {tkey} {method:7s} cpu "
                  f"{statistics.median(res['epoch_cpu_seconds']):.2f} s/epoch wall "
                  f"{statistics.median(res['epoch_seconds']):.2f}", flush=True)
    md = render(bench, args)
    if md:
        print(md)


# ----------------------------------------------------------------------------- report
def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], signed: bool = False) -> str:
    m, s = _mean_std(values)
    if math.isnan(m):
        return "—"
    return f"{m:+.4f} ± {s:.4f}" if signed else f"{m:.4f} ± {s:.4f}"


def _fmt_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _load_timing(bench: Bench, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    folder = Path(args.results_dir) / bench.name / "timing"
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            t = json.loads(path.read_text(encoding="utf-8"))
            out.setdefault(t["teacher"], {})[t["method"]] = t
    return out


def _finals(runs: dict[str, dict[str, Any]], method: str, owner: str | None,
            point: tuple[float, float | None] | None, seeds: list[int]) -> list[dict[str, Any]]:
    """The finished runs of ``seeds`` at ``point`` (none for ``None``)."""
    return [] if point is None else [
        runs[k] for s in seeds if (k := run_key(method, owner, point[0], point[1], s)) in runs]


def summarize(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Everything the report shows, from the run files of the current protocol."""
    runs = _current(bench, args)
    every = load_runs(bench, args)
    teachers_fp = {t: teacher_fingerprint(bench, args, t) for t in TEACHERS}
    teacher_runs = [r for r in every if r.get("kind") == "teacher"
                    and teachers_fp.get(r["teacher"]) == r["fingerprint"]]
    timing = _load_timing(bench, args)
    out: dict[str, Any] = {"teachers": {}, "ignored_run_files": sum(
        1 for r in every if r.get("kind") == "student") - len(runs)}
    for tkey in args.teachers:
        rows, grid = [], {}
        alone_choice = select(runs, "none", tkey, args)
        alone = ({} if alone_choice is None else
                 {s: runs[k] for s in args.seeds
                  if (k := run_key("none", None, alone_choice[0], None, s)) in runs})
        for method in args.methods:
            owner = None if method == "none" else tkey
            cells = {}
            probe = [(lr, m) for lr in bench.probe_lrs if lr not in args.lrs
                     for m in ((None,) if method == "none" else args.weights)]
            sel = selection(runs, method, tkey, args)
            ext = [sel["extension"]] if sel["extension"] is not None else []
            for lr, mult in [*grid_points(method, args), *probe, *ext]:
                r = runs.get(run_key(method, owner, lr, mult, GRID_SEED))
                if r is not None:
                    cells[f"{_num(lr)}|{'-' if mult is None else _num(mult)}"] = {
                        "valid_ndcg@10": r["best_valid_score"],
                        "stopped_at_cap": r["stopped_at_cap"],
                        "epochs_run": r["epochs_run"], "wall_seconds": r["wall_seconds"]}
            # while the edge extension (or the seeds at its choice) is unfinished, the row
            # shows the grid's own choice and says what is pending
            chosen, shown = sel["chosen"], sel["chosen"]
            final = _finals(runs, method, owner, chosen, args.seeds)
            pending = None
            if sel["base"] is not None and chosen != sel["base"]:
                base_final = _finals(runs, method, owner, sel["base"], args.seeds)
                if len(final) < len(base_final):
                    shown, final = sel["base"], base_final
                    pending = (f"{_num(sel['extension'][1])}× past the edge pending"
                               if chosen is None else
                               f"{_num(chosen[1])}× chosen past the edge, its seeds pending")
            grid[method] = {"cells": cells, "chosen": chosen, "shown": shown,
                            "extension": sel["extension"], "pending": pending}
            if shown is None or not final:
                continue
            lr, mult = shown
            row: dict[str, Any] = {
                "pending": pending,
                "method": method, "learning_rate": lr, "weight_multiplier": mult,
                "distill_weight": weight_value(method, mult),
                "reference_weight": reference_weight(method),
                "seeds": [r["seed"] for r in final],
                **{m: [r["test_result"][m] for r in final] for m in METRICS},
                "valid_ndcg@10": [r["best_valid_score"] for r in final],
                "best_epoch": [r["best_epoch"] for r in final],
                "epochs_run": [r["epochs_run"] for r in final],
                "stopped_at_cap": [r["stopped_at_cap"] for r in final],
                "wall_seconds": [r["wall_seconds"] for r in final],
                "epoch_seconds": [r["epoch_seconds_mean"] for r in final],
                "softlabel_seconds": [r["softlabel_seconds"] for r in final],
            }
            if method != "none" and alone:
                paired = [(r, alone[r["seed"]]) for r in final if r["seed"] in alone]
                row["paired_seeds"] = [r["seed"] for r, _ in paired]
                for m in ("ndcg@10", "recall@10"):
                    row[f"diff_{m}"] = [r["test_result"][m] - a["test_result"][m]
                                        for r, a in paired]
            t = timing.get(tkey, {})
            if method in t and "none" in t:
                row["epoch_cpu_ratio"] = (statistics.median(t[method]["cpu"])
                                          / statistics.median(t["none"]["cpu"]))
            rows.append(row)
        teach = sorted((r for r in teacher_runs if r["teacher"] == tkey and "test_result" in r),
                       key=lambda r: r["seed"])
        out["teachers"][tkey] = {"rows": rows, "grid": grid, "teacher_runs": teach}
    all_runs = list(runs.values())
    out["runs"] = len(all_runs)
    out["runs_at_cap"] = sum(r["stopped_at_cap"] for r in all_runs)
    out["run_seconds"] = sum(r["wall_seconds"] for r in all_runs) + sum(
        r.get("wall_seconds", 0.0) for r in teacher_runs)
    out["machines"] = sorted({machine_markdown(r["machine"]).split("; ", 1)[1]
                              for r in all_runs + teacher_runs if "machine" in r})
    return out


def render(bench: Bench, args: argparse.Namespace) -> str | None:
    """Write ``<name>.md``, ``<name>.json`` and ``<name>.png`` from the run files of the current
    protocol; returns the markdown (None, and nothing written, when there are no runs yet)."""
    summary = summarize(bench, args)
    if not summary["runs"]:
        print(f"no finished runs of the current protocol under {runs_dir(bench, args)} "
              f"({summary['ignored_run_files']} of other protocols); nothing rendered")
        return None
    lines = [f"# RecBole ranking distillation on {bench.title} ({bench.name})", "",
             _protocol_text(bench, args), ""]
    lines += ["Machines: " + " | ".join(m.rstrip(".") for m in summary["machines"]) + ".", "",
              f"Runs: {summary['runs']} student runs of this protocol "
              f"({summary['runs_at_cap']} stopped at the {args.epochs}-epoch cap); "
              f"{_fmt_time(summary['run_seconds'])} of training in total"
              + (f"; {summary['ignored_run_files']} run files of other protocols or method "
                 "versions ignored" if summary["ignored_run_files"] else "") + ".", ""]
    for tkey, tsum in summary["teachers"].items():
        lines += _teacher_section(tkey, tsum, args, bench.probe_lrs)
    text = "\n".join(lines).rstrip() + "\n"
    base = Path(args.results_dir)
    atomic_write_text(base / f"{bench.name}.md", text)
    atomic_write_json(base / f"{bench.name}.json",
                      {"benchmark": bench.name, "dataset": bench.dataset,
                       "protocol": protocol(args),
                       "teacher_protocol": {t: teacher_protocol(args, t) for t in args.teachers},
                       "grid": {"learning_rate": list(args.lrs),
                                "weight_multipliers": list(args.weights),
                                "reference_weights": {m: reference_weight(m)
                                                      for m in args.methods},
                                "selection": f"best valid NDCG@10 on seed {GRID_SEED}",
                                "edge_extension": (f"once, x{_num(EDGE_STEP)} past a chosen "
                                                   "edge of the lambda grid"
                                                   if args.extend_edges else None)},
                       "seeds": list(args.seeds), **summary},
                      indent=1, default=str)
    _plot(bench, args, summary)
    return text


def _protocol_text(bench: Bench, args: argparse.Namespace) -> str:
    teachers = ", ".join(f"{TEACHERS[t][0]} d={TEACHERS[t][1]['embedding_size']}"
                         for t in args.teachers)
    return (
        f"Teacher {teachers} -> student {STUDENT[0]} d={STUDENT[1]['embedding_size']} on "
        f"{bench.title}; RecBole's default split (RS 0.8/0.1/0.1 per user, random order), "
        "full-sort ranking over all items; test metrics at the best-validation epoch (valid "
        "NDCG@10). **Same budget for every model** (the student alone and every method): epoch "
        f"cap {args.epochs}, early stopping after {args.stopping_step} evaluations without a "
        f"better valid NDCG@10, evaluation every epoch, train_batch_size {TRAIN_BATCH}. "
        f"Teachers at RecBole's defaults (lr {TEACHER_LR}, cap {args.teacher_epochs}, "
        f"stopping_step {STOPPING_STEP}), one per seed (the seed changes the split). "
        f"**Hyperparameters chosen on validation only**: on seed {GRID_SEED}, lr in "
        f"{{{', '.join(_num(x) for x in args.lrs)}}} x lambda in "
        f"{{{', '.join(_num(x) for x in args.weights)}}} x the method's reference lambda (its "
        "YAML's `distill_weight`), the student alone over the lr grid; the best valid NDCG@10 "
        "wins (ties: the reference lambda, then the smaller lr)"
        + (f"; a best point at an edge of the lambda grid extends it once, one x{_num(EDGE_STEP)} "
           "step past that edge at the chosen lr, and the choice is over both"
           if args.extend_edges else "")
        + "; then seeds "
        f"{', '.join(map(str, args.seeds))} at the chosen values (seed {GRID_SEED}'s run is the "
        "grid run). Differences to the student alone are paired by seed (same split).")


def _probe_sentence(tsum: dict[str, Any], args: argparse.Namespace,
                    probe: list[float]) -> str:
    """Generated: whether every probed cell (an lr outside the selection grid) was below the
    best cell of the grid of the same method."""
    verdicts = []
    for method, g in tsum["grid"].items():
        grid_cells = [c["valid_ndcg@10"] for k, c in g["cells"].items()
                      if float(k.split("|")[0]) in args.lrs]
        probe_cells = [c["valid_ndcg@10"] for k, c in g["cells"].items()
                       if float(k.split("|")[0]) in probe]
        if probe_cells and grid_cells:
            lower = sum(v < max(grid_cells) for v in probe_cells)
            verdicts.append(f"{LABELS[method]} {lower}/{len(probe_cells)}")
    return (f"‡ lr {', '.join(_num(x) for x in probe)}: probed on seed {GRID_SEED} before "
            "this dataset's grid was cut to save CPU time, outside the selection; probed "
            "cells below the best cell of the method's grid: "
            + ("; ".join(verdicts) or "none probed") + ".")


def _teacher_section(tkey: str, tsum: dict[str, Any], args: argparse.Namespace,
                     probe_lrs: tuple[float, ...] = ()) -> list[str]:
    tname, tcfg = TEACHERS[tkey]
    lines = [f"## Teacher {tname} d={tcfg['embedding_size']}", ""]
    table = []
    teach = tsum["teacher_runs"]
    if teach:
        table.append([f"teacher ({len(teach)} seeds)", "—", "—",
                      _fmt([t["test_result"]["ndcg@10"] for t in teach]),
                      _fmt([t["test_result"]["recall@10"] for t in teach]), "—", "—", "—",
                      f"{sum(t.get('stopped_at_cap', False) for t in teach)}/{len(teach)}",
                      " ".join(str(t["best_epoch"]) for t in teach),
                      _fmt_time(statistics.fmean(t.get("wall_seconds", 0.0) for t in teach))])
    for r in tsum["rows"]:
        n = len(r["seeds"])
        lam = "—" if r["method"] == "none" else (
            f"{_num(r['distill_weight'])} ({_num(r['weight_multiplier'])}× ref)"
            + (f"; {r['pending']}" if r.get("pending") else ""))
        wins = ("—" if "diff_ndcg@10" not in r else
                f"{sum(d > 0 for d in r['diff_ndcg@10'])}/{len(r['diff_ndcg@10'])}")
        table.append([
            f"{LABELS[r['method']]} ({n} seed{'s' if n > 1 else ''})", _num(r["learning_rate"]),
            lam, _fmt(r["ndcg@10"]), _fmt(r["recall@10"]),
            _fmt(r.get("diff_ndcg@10", []), signed=True),
            _fmt(r.get("diff_recall@10", []), signed=True), wins,
            f"{sum(r['stopped_at_cap'])}/{n}", " ".join(str(e) for e in r["best_epoch"]),
            _fmt_time(statistics.fmean(r["wall_seconds"]))])
    if table:
        lines.append(markdown_table(
            ["model", "lr", "λ", "test NDCG@10", "test Recall@10", "Δ NDCG@10 vs alone",
             "Δ Recall@10 vs alone", "better on", "stopped at cap", "best epochs",
             "time / run"],
            table))
        lines.append("")
    # the grid beside the table
    probe = [lr for lr in probe_lrs if lr not in args.lrs]
    points = [(lr, m) for lr in [*args.lrs, *probe] for m in args.weights]
    head = ["method (valid NDCG@10, seed 0)"] + [
        f"lr {_num(lr)}, {_num(m)}×λ" + (" ‡" if lr in probe else "") for lr, m in points]
    extended = args.extend_edges and any(g.get("extension") for g in tsum["grid"].values())
    if extended:
        head.append("past the edge")
    grid_rows = []
    for method, g in tsum["grid"].items():
        bold = g["chosen"] if g["chosen"] is not None else g.get("shown")
        cells = []
        for lr, m in points:
            key = f"{_num(lr)}|{'-' if method == 'none' else _num(m)}"
            c = g["cells"].get(key)
            if method == "none" and m != args.weights[0]:
                cells.append("")
                continue
            if c is None:
                cells.append("" if lr in probe else "…")
                continue
            text = _cell_text(c)
            cells.append(f"**{text}**" if bold == (lr, None if method == "none" else m)
                         else text)
        if extended:
            cells.append(_extension_cell(g))
        label = LABELS[method] if method == "none" else (
            f"{LABELS[method]} (ref λ {_num(reference_weight(method))})")
        grid_rows.append([label] + cells)
    lines += [markdown_table(head, grid_rows), "",
              "Grid: valid NDCG@10 of seed 0 at each (lr, λ multiplier); **bold**: chosen; "
              "†: stopped at the epoch cap; …: not run yet (the student alone has no λ: its "
              "row fills the first λ column of each lr)."
              + (" past the edge: the one point beyond the λ grid's edge that a choice at "
                 "that edge adds (lr, λ multiplier)." if extended else "")
              + _past_edge_sentence(tsum), ""]
    if probe:
        lines += [_probe_sentence(tsum, args, probe), ""]
    rows = tsum["rows"]
    if any("diff_ndcg@10" in r for r in rows):
        def cell(r: dict[str, Any]) -> str:
            m, s = _mean_std(r["diff_ndcg@10"])
            return f"{LABELS[r['method']]} ({m:+.4f} ± {s:.4f})"

        diffs = [r for r in rows if r.get("diff_ndcg@10")]
        clear = [cell(r) for r in diffs
                 if len(r["diff_ndcg@10"]) > 1 and all(d > 0 for d in r["diff_ndcg@10"])]
        mixed = [cell(r) for r in diffs if not all(d > 0 for d in r["diff_ndcg@10"])
                 and statistics.fmean(r["diff_ndcg@10"]) > 0]
        worse = [cell(r) for r in diffs if statistics.fmean(r["diff_ndcg@10"]) <= 0]
        lines += ["Test NDCG@10 minus the student alone's on the same seed. **Better on every "
                  f"seed**: {'; '.join(clear) or 'none'}. **Better on average, not on every "
                  f"seed**: {'; '.join(mixed) or 'none'}. **Not better**: "
                  f"{'; '.join(worse) or 'none'}.", ""]
    ratios = [(r["method"], r["epoch_cpu_ratio"]) for r in rows if "epoch_cpu_ratio" in r]
    if ratios:
        lines += ["Epoch CPU time / the student alone's (`--timing`: a few epochs of each "
                  "method back to back on seed 0, no evaluation, median per-epoch CPU time of "
                  "this process): " + ", ".join(f"{LABELS[m]} {x:.2f}" for m, x in ratios)
                  + ".", ""]
    return lines


def _cell_text(c: dict[str, Any]) -> str:
    """A grid cell: ``0.2433``, with `` †`` when that run stopped at the epoch cap."""
    return f"{c['valid_ndcg@10']:.4f}" + (" †" if c["stopped_at_cap"] else "")


def _past_edge_sentence(tsum: dict[str, Any]) -> str:
    """`` Chosen past the edge (...): RRD, HTD.`` -- the methods whose choice is the extension
    point itself, i.e. again at an edge of what was tried (empty when none)."""
    names = [LABELS[m] for m, g in tsum["grid"].items()
             if g.get("extension") is not None and g["chosen"] is not None
             and tuple(g["chosen"]) == tuple(g["extension"])]
    return (" Chosen past the edge, so again at the edge of what was tried (the grid is "
            f"extended once only): {', '.join(names)}." if names else "")


def _extension_cell(g: dict[str, Any]) -> str:
    """``0.2450 (lr 0.005, 100×)`` (bold when chosen), ``… (lr 0.005, 100×)`` while pending,
    empty for a method whose choice is inside the grid."""
    ext = g.get("extension")
    if ext is None:
        return ""
    where = f"(lr {_num(ext[0])}, {_num(ext[1])}×)"
    c = g["cells"].get(f"{_num(ext[0])}|{_num(ext[1])}")
    if c is None:
        return f"… {where}"
    text = _cell_text(c)
    return (f"**{text}**" if g["chosen"] == tuple(ext) else text) + f" {where}"


def _plot(bench: Bench, args: argparse.Namespace, summary: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    groups = [(t, s["rows"], s["teacher_runs"]) for t, s in summary["teachers"].items()
              if s["rows"]]
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4 * len(groups)), squeeze=False)
    for (tkey, rows, teach), (ax, dax) in zip(groups, axes):
        names = [f"{LABELS[r['method']]} ({len(r['seeds'])})" for r in rows]
        ms = [_mean_std(r["ndcg@10"]) for r in rows]
        colors = ["tab:gray" if r["method"] == "none" else "tab:blue" for r in rows]
        ax.bar(range(len(rows)), [m for m, _ in ms], yerr=[s for _, s in ms], color=colors,
               capsize=3)
        if teach:
            ax.axhline(statistics.fmean(t["test_result"]["ndcg@10"] for t in teach),
                       color="tab:red", ls=":", lw=1, label="teacher")
            ax.legend(fontsize=8)
        lo = min(m - s for m, s in ms)
        ax.set_ylim(max(0.0, lo - 0.02), None)
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
        ax.set_ylabel("test NDCG@10 (mean ± std, (n) seeds)")
        tname, tcfg = TEACHERS[tkey]
        ax.set_title(f"{tname} {tcfg['embedding_size']} -> BPR 20, {bench.dataset}")
        drows = [r for r in rows if r.get("diff_ndcg@10")]
        if drows:
            dms = [_mean_std(r["diff_ndcg@10"]) for r in drows]
            dax.bar(range(len(drows)), [m for m, _ in dms], yerr=[s for _, s in dms],
                    color=["tab:green" if m > 0 else "tab:orange" for m, _ in dms], capsize=3)
            dax.axhline(0.0, color="black", lw=0.8)
            dax.set_xticks(range(len(drows)), [LABELS[r["method"]] for r in drows],
                           rotation=45, ha="right")
        dax.set_ylabel("Δ test NDCG@10 vs student alone")
        dax.set_title("paired difference, mean ± std over seeds")
    fig.tight_layout()
    atomic_write(Path(args.results_dir) / f"{bench.name}.png",
                 lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI
def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser(bench: Bench) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{bench.name}",
        description=f"Fair-protocol ranking distillation grid on {bench.title} "
                    "(see benchmarks/recbole_grid.py)")
    p.add_argument("--phase", choices=("grid", "final", "all"), default="all",
                   help="grid: seed 0 over the lr/lambda grid; final: the other seeds at the "
                        "chosen values (needs the method's whole grid); all: both")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset (split a grid across sessions this way)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the final table")
    p.add_argument("--teachers", default="bpr", help=f"comma-separated: {', '.join(TEACHERS)}")
    p.add_argument("--lrs", type=_floats, default=list(bench.lrs),
                   help="the learning-rate grid (selection is over all of it)")
    p.add_argument("--weights", type=_floats, default=list(WEIGHT_GRID),
                   help="the grid of lambda multipliers of the method's reference lambda")
    p.add_argument("--only-lrs", type=_floats, default=[],
                   help="grid phase: run only these grid lrs (to split a grid; selection still "
                        "needs the whole grid)")
    p.add_argument("--only-weights", type=_floats, default=[],
                   help="grid phase: run only these lambda multipliers (to split a grid)")
    p.add_argument("--no-extend-edges", dest="extend_edges", action="store_false",
                   help="do not extend the lambda grid past a chosen edge (see edge_extension)")
    p.add_argument("--epochs", type=int, default=EPOCH_CAP, help="student epoch cap")
    p.add_argument("--stopping-step", type=int, default=STOPPING_STEP)
    p.add_argument("--teacher-epochs", type=int, default=EPOCH_CAP, help="teacher epoch cap")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--results-dir", default=str(RESULTS_DIR),
                   help="where <name>.{md,json,png} and <name>/runs/ go")
    p.add_argument("--run-dir", default="runs/recbole",
                   help="teachers, checkpoints and locks (not results)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's best-validation checkpoint (deleted by default)")
    p.add_argument("--render", action="store_true", help="only regenerate tables and plot")
    p.add_argument("--timing", action="store_true",
                   help="only the controlled epoch-time pass (after the grid)")
    p.add_argument("--timing-epochs", type=int, default=4)
    return p


def parse_args(bench: Bench, argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser(bench)
    args = p.parse_args(argv)
    args.teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    unknown = sorted(set(args.teachers) - set(TEACHERS) | set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown teacher/method {unknown}; teachers: {sorted(TEACHERS)}, methods: "
                f"{list(METHODS)}")
    if not args.lrs or not args.weights or not args.seeds:
        p.error("--lrs, --weights and --seeds need at least one value each")
    if set(args.only_lrs) - set(args.lrs) or set(args.only_weights) - set(args.weights):
        p.error("--only-lrs / --only-weights must be values of --lrs / --weights")
    if args.epochs < 1 or args.teacher_epochs < 1 or args.stopping_step < 0:
        p.error("--epochs and --teacher-epochs must be >= 1, --stopping-step >= 0")
    return args


def main(bench: Bench, argv: list[str] | None = None) -> None:
    args = parse_args(bench, argv)
    if args.render:
        md = render(bench, args)
        if md:
            print(md)
        return
    (_timing if args.timing else _run)(bench, args)
