"""Sequential ranking distillation with the RecBole plugin: SASRec -> SASRec on ml-100k.

Protocol (the same for the student alone and every method):

* Teacher SASRec (hidden 64, inner 256, 2 layers, 2 heads) -> student SASRec (hidden 16,
  inner 64, 1 layer, 2 heads), both with RecBole's SASRec defaults otherwise (CE loss over all
  items, dropout 0.5). RecBole's sequential pipeline on its shipped ml-100k: one training row per
  prefix (``MAX_ITEM_LIST_LENGTH`` = ``--max-len``), leave-one-out split by time (the last item
  of each user is the test item, the one before the validation item), full-sort ranking over
  all items; test NDCG@10 / Recall@10 at the best validation epoch (valid NDCG@10).
* The split is deterministic (by time), so one teacher (trained with seed 0) serves every
  student seed; student seeds change the initialisation, dropout and sampling.
* Budget: ``--epochs`` student epochs and ``--teacher-epochs`` teacher epochs (CPU time on the
  shared 2-core machine is scarce: see the report), lr ``--lr``, ``train_batch_size`` 2048, an
  evaluation every epoch. Method hyperparameters and lambdas are the shipped, untuned
  ``recsys/recbole/seq_<method>.yaml``.

Resumable: every finished run is one JSON file under
``benchmarks/results/recbole_sequential/runs/<key>-<fingerprint>.json`` (atomic write; the
fingerprint hashes the protocol and the method's YAML); a rerun skips finished runs, and a run
another process holds (a lock under ``<run-dir>/bench-locks/``) is skipped. Finally
``benchmarks/results/recbole_sequential.{json,md,png}`` are rendered from the run files of the
current protocol (mean ± std over seeds; the PNG: validation NDCG@10 per epoch, seed 0).

Usage::

    python -m benchmarks.recbole_sequential                       # all methods, seeds 0-2
    python -m benchmarks.recbole_sequential --seeds 0 --methods none,rd,kd
    python -m benchmarks.recbole_sequential --render              # tables + plot only
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._util import RESULTS_DIR, machine_info, machine_markdown, markdown_table
from benchmarks.recbole_grid import (
    Bench,
    _fmt,
    _fmt_time,
    _git_commit,
    _hash,
    _run_path,
    claim,
    load_runs,
)
from graphkd.fileio import atomic_write, atomic_write_json, atomic_write_text, file_lock

BENCH = Bench("recbole_sequential", "ml-100k", "Sequential ranking distillation on ml-100k "
              "(SASRec d=64, 2 layers -> SASRec d=16, 1 layer)")
METHODS = ("none", "rd", "rrd", "kd", "hidden", "de")
LABELS = {"none": "student alone", "rd": "RD", "rrd": "RRD", "kd": "softmax KD (top-K + sampled)",
          "hidden": "hidden-state (projector MSE)", "de": "DE (experts on hidden state)"}
TEACHER = ("SASRec", {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2})
STUDENT = ("SASRec", {"hidden_size": 16, "inner_size": 64, "n_layers": 1, "n_heads": 2})
TRAIN_BATCH = 2048
EVAL_BATCH = 1 << 16
TEACHER_SEED = 0
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
_YAML_DIR = Path(__file__).resolve().parents[1] / "recsys" / "recbole"


def method_settings(method: str) -> dict[str, Any]:
    """The method's shipped YAML (``recsys/recbole/seq_<method>.yaml``), parsed."""
    path = _YAML_DIR / f"seq_{method}.yaml"
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def data_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"MAX_ITEM_LIST_LENGTH": args.max_len, "train_batch_size": TRAIN_BATCH,
            "eval_batch_size": EVAL_BATCH, "eval_step": 1, "stopping_step": 10,
            "learning_rate": args.lr, "gpu_id": "", "valid_metric": "NDCG@10"}


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """What every run shares (part of every fingerprint)."""
    return {"teacher": list(TEACHER), "student": list(STUDENT), "epochs": args.epochs,
            "teacher_epochs": args.teacher_epochs, **data_config(args),
            "split": "RecBole sequential: leave-one-out by time, full sort"}


def fingerprint(args: argparse.Namespace, method: str) -> str:
    return _hash({"dataset": BENCH.dataset, "protocol": protocol(args), "method": method,
                  "yaml": method_settings(method)})


def ensure_teacher_run(args: argparse.Namespace) -> Path:
    """The teacher (trained once, reused from ``--run-dir``); its result in
    ``runs/teacher-<fp>.json``."""
    from recsys.recbole import ensure_teacher

    fp = _hash({"dataset": BENCH.dataset, "teacher": list(TEACHER),
                "epochs": args.teacher_epochs, **data_config(args)})
    out = _run_path(BENCH, args, "teacher", fp)
    with file_lock(Path(args.run_dir) / "bench-locks" / BENCH.name / "teacher"):
        t0 = time.perf_counter()
        cfg = {**data_config(args), "epochs": args.teacher_epochs, "seed": TEACHER_SEED}
        path, res = ensure_teacher(TEACHER[0], BENCH.dataset, teacher_config=TEACHER[1],
                                   config_dict=cfg, run_dir=args.run_dir, verbose=True)
        if res is None and out.is_file():
            return path
        entry: dict[str, Any] = {"kind": "teacher", "fingerprint": fp, "checkpoint": str(path),
                                 "machine": machine_info("cpu"), "git_commit": _git_commit()}
        if res is not None:
            entry.update({k: res[k] for k in ("test_result", "best_valid_result",
                                              "best_valid_score", "best_epoch", "epochs_run",
                                              "valid_curve", "epoch_seconds")})
            entry["wall_seconds"] = time.perf_counter() - t0
            print(f"teacher: test ndcg@10 {res['test_result']['ndcg@10']:.4f}, "
                  f"{res['epochs_run']} epochs, {entry['wall_seconds']:.0f} s", flush=True)
        atomic_write_json(out, entry, indent=1)
    return path


def student_run(args: argparse.Namespace, method: str, seed: int,
                teacher_path: Path | None) -> str:
    """Run one (method, seed) unless its file exists: ``done`` / ``ran`` / ``busy``."""
    from recsys.recbole import run_distillation

    key, fp = f"{method}-s{seed}", fingerprint(args, method)
    out = _run_path(BENCH, args, key, fp)
    if out.is_file():
        return "done"
    with claim(args, BENCH, f"{key}-{fp}") as mine:
        if not mine:
            print(f"{key}: running in another process, skipped", flush=True)
            return "busy"
        if out.is_file():
            return "done"
        cfg = {**data_config(args), "epochs": args.epochs, "seed": seed}
        t0 = time.perf_counter()
        res = run_distillation(teacher=TEACHER[0], student=STUDENT[0], method=method,
                               dataset=BENCH.dataset, teacher_config=TEACHER[1],
                               student_config=STUDENT[1], teacher_checkpoint=teacher_path,
                               config_dict=cfg, run_dir=args.run_dir, verbose=True)
        wall = time.perf_counter() - t0
        entry = {"kind": "student", "key": key, "fingerprint": fp, "method": method,
                 "seed": seed, "method_yaml": method_settings(method),
                 "protocol": protocol(args),
                 **{k: res[k] for k in ("test_result", "best_valid_result", "best_valid_score",
                                        "best_epoch", "epochs_run", "softlabel_seconds",
                                        "epoch_seconds", "valid_curve")},
                 "wall_seconds": wall, "machine": machine_info("cpu"),
                 "threads": args.threads, "git_commit": _git_commit()}
        atomic_write_json(out, entry, indent=1)
        if res.get("checkpoint"):
            Path(res["checkpoint"]).unlink(missing_ok=True)
        print(f"{key}: valid ndcg@10 {res['best_valid_score']:.4f} test ndcg@10 "
              f"{res['test_result']['ndcg@10']:.4f} (best epoch {res['best_epoch']}), "
              f"{wall:.0f} s", flush=True)
        return "ran"


# ----------------------------------------------------------------------------- report
def current_runs(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the teacher's run file, student run files of the current protocol by key)."""
    teacher, students = None, {}
    fps = {m: fingerprint(args, m) for m in METHODS}
    for r in load_runs(BENCH, args):
        if r.get("kind") == "teacher":
            teacher = r
        elif r.get("kind") == "student" and fps.get(r["method"]) == r["fingerprint"]:
            students[r["key"]] = r
    return teacher, students


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    teacher, runs = current_runs(args)
    rows: dict[str, Any] = {}
    for method in METHODS:
        mine = sorted((r for r in runs.values() if r["method"] == method),
                      key=lambda r: r["seed"])
        if not mine:
            continue
        rows[method] = {
            "seeds": [r["seed"] for r in mine],
            **{m: [r["test_result"][m] for r in mine] for m in METRICS},
            "best_epoch": [r["best_epoch"] for r in mine],
            "wall_seconds": [r["wall_seconds"] for r in mine],
            "epoch_seconds_mean": statistics.fmean(
                s for r in mine for s in r["epoch_seconds"]),
            "distill_weight": mine[0]["method_yaml"].get("distill_weight"),
            "valid_curve_seed0": next((r["valid_curve"] for r in mine if r["seed"] == 0), None),
        }
    return {"protocol": protocol(args), "teacher": teacher, "methods": rows,
            "missing": [f"{m}-s{s}" for m in METHODS for s in args.seeds
                        if f"{m}-s{s}" not in runs]}


def render(args: argparse.Namespace) -> str:
    s = summarize(args)
    lines = [f"# {BENCH.title}", "", __doc__.split("Resumable")[0].split("\n\n", 1)[1].strip(),
             ""]
    p = s["protocol"]
    lines += [f"Settings of these runs: MAX_ITEM_LIST_LENGTH {p['MAX_ITEM_LIST_LENGTH']}, "
              f"student epochs {p['epochs']}, teacher epochs {p['teacher_epochs']}, "
              f"lr {p['learning_rate']:g}, train batch {p['train_batch_size']}.", ""]
    t = s["teacher"]
    if t and "test_result" in t:
        lines += [f"Teacher: test NDCG@10 {t['test_result']['ndcg@10']:.4f}, Recall@10 "
                  f"{t['test_result']['recall@10']:.4f} (best epoch {t['best_epoch']} of "
                  f"{t['epochs_run']}, {_fmt_time(t['wall_seconds'])}).", ""]
    header = ["method", "lambda", "seeds", "NDCG@10", "Recall@10", "NDCG@20", "Recall@20",
              "best epoch", "s/epoch"]
    table = []
    for method, r in s["methods"].items():
        table.append([LABELS[method], "" if method == "none" else f"{r['distill_weight']:g}",
                      ",".join(map(str, r["seeds"])), _fmt(r["ndcg@10"]), _fmt(r["recall@10"]),
                      _fmt(r["ndcg@20"]), _fmt(r["recall@20"]),
                      ",".join(str(e) for e in r["best_epoch"]),
                      f"{r['epoch_seconds_mean']:.0f}"])
    lines += ["Test metrics at the best validation epoch, mean ± std over the seeds listed "
              "(std 0 with one seed).", "", markdown_table(header, table), ""]
    if s["missing"]:
        lines += [f"Not run yet ({len(s['missing'])}): {', '.join(s['missing'])}. Continue "
                  "with `python -m benchmarks.recbole_sequential` (resumable).", ""]
    if t:
        lines += [machine_markdown(t["machine"]), ""]
    md = "\n".join(lines)
    results = Path(args.results_dir)
    atomic_write_json(results / f"{BENCH.name}.json", s, indent=1)
    atomic_write_text(results / f"{BENCH.name}.md", md + "\n")
    _plot(s, results / f"{BENCH.name}.png")
    return md


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    t = summary["teacher"]
    if t and t.get("valid_curve"):
        ax.plot([p["epoch"] for p in t["valid_curve"]], [p["score"] for p in t["valid_curve"]],
                "k--", label="teacher")
    for method, r in summary["methods"].items():
        curve = r["valid_curve_seed0"] or []
        ax.plot([p["epoch"] for p in curve], [p["score"] for p in curve], marker="o",
                label=LABELS[method])
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid NDCG@10")
    ax.set_title("SASRec d=64 -> d=16 on ml-100k (seed 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS),
                   type=lambda s: [m.strip() for m in s.split(",") if m.strip()])
    p.add_argument("--seeds", default="0,1,2",
                   type=lambda s: [int(x) for x in s.split(",") if x.strip()])
    p.add_argument("--epochs", type=int, default=5, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--max-len", type=int, default=10, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default="runs/recbole_sequential")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--render", action="store_true", help="only render the report")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; valid: {METHODS}")
    if not args.render:
        import torch

        torch.set_num_threads(args.threads)
        tpath = ensure_teacher_run(args) if any(m != "none" for m in args.methods) else None
        counts = {"done": 0, "ran": 0, "busy": 0}
        for seed in args.seeds:
            for method in args.methods:
                counts[student_run(args, method, seed, tpath)] += 1
        print(f"runs: {counts['ran']} ran, {counts['done']} already done, "
              f"{counts['busy']} busy elsewhere", flush=True)
    print(render(args))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
