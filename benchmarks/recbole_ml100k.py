"""Ranking distillation on ml-100k with the RecBole plugin: quality and cost per method.

Teacher BPR d=200 (and LightGCN d=64) -> student BPR d=20 on the ml-100k copy shipped in
RecBole, RecBole's default split (random 0.8/0.1/0.1 per user) and full-sort evaluation; test
metrics at the best-validation epoch (NDCG@10). Each seed gets its own split, so each seed trains
its own teacher (a teacher trained on another seed's split would have seen that seed's test
items).

Usage::

    python -m benchmarks.recbole_ml100k                       # full grid (resumable)
    python -m benchmarks.recbole_ml100k --teachers bpr --seeds 0,1,2 --methods none,rrd,de
    python -m benchmarks.recbole_ml100k --render               # tables + plot from the JSON

Raw per-seed results accumulate in ``benchmarks/results/recbole_ml100k.json`` (written after
every run, so an interrupted run resumes where it stopped); the markdown table and the plot are
generated from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks._util import RESULTS_DIR, machine_info, machine_markdown, markdown_table
from graphkd.fileio import atomic_write, atomic_write_text, file_lock

NAME = "recbole_ml100k"
JSON_PATH = RESULTS_DIR / f"{NAME}.json"
METHODS = ("none", "rd", "cd", "rrd", "de", "de_rrd", "ftd", "htd", "unkd", "dcd")
LABELS = {"none": "student alone", "rd": "RD", "cd": "CD", "rrd": "RRD", "de": "DE",
          "de_rrd": "DE+RRD", "ftd": "FTD", "htd": "HTD", "unkd": "UnKD", "dcd": "DCD"}
#: methods that use the teacher's embeddings, not its top-K lists
EMBEDDING_METHODS = ("de", "ftd", "htd")
TEACHERS = {"bpr": ("BPR", {"embedding_size": 200}), "lightgcn": ("LightGCN",
                                                                 {"embedding_size": 64})}
STUDENT = ("BPR", {"embedding_size": 20})
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def _load() -> dict[str, Any]:
    if JSON_PATH.is_file():
        return json.loads(JSON_PATH.read_text())
    return {"runs": [], "teachers": []}


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """An exclusive lock on the results file (several seeds may run as parallel processes)."""
    with file_lock(JSON_PATH):  # recbole_ml100k.json.lock
        yield


def _save(data: dict[str, Any]) -> None:
    atomic_write_text(JSON_PATH, json.dumps(data, indent=1, default=str) + "\n")


def _update(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read the results file, apply ``fn`` to it and write it back, under the lock."""
    with _locked():
        data = _load()
        fn(data)
        _save(data)
    return data


def _done(data: dict[str, Any], teacher: str | None, method: str, seed: int) -> bool:
    return any(r["teacher"] == teacher and r["method"] == method and r["seed"] == seed
               for r in data["runs"])


def _run(args: argparse.Namespace) -> None:
    from recsys.recbole import ensure_teacher, run_distillation

    torch.set_num_threads(args.threads)
    setup = {
        "dataset": "ml-100k (RecBole's shipped copy)",
        "split": "RecBole default: RS 0.8/0.1/0.1 per user, random order; full-sort ranking",
        "student": f"{STUDENT[0]} {STUDENT[1]}",
        "teachers": {k: f"{v[0]} {v[1]}" for k, v in TEACHERS.items()},
        "config": _config(args, 0),
        "teacher_config": _teacher_config(args, 0),
        "hyperparameters": "each method's shipped YAML defaults (recsys/recbole/<method>.yaml);"
                           " not tuned (no validation sweep was run)",
        "machine": machine_info("cpu"),
    }
    data = _update(lambda d: d.update(setup=setup))
    for tkey in args.teachers:
        tname, tcfg = TEACHERS[tkey]
        for seed in args.seeds:
            cfg = _config(args, seed)
            if not any(t["teacher"] == tkey and t["seed"] == seed for t in data["teachers"]):
                t0 = time.perf_counter()
                path, res = ensure_teacher(tname, "ml-100k", teacher_config=tcfg,
                                           config_dict=_teacher_config(args, seed),
                                           run_dir=args.run_dir)
                entry = {"teacher": tkey, "seed": seed, "checkpoint": str(path),
                         "train_seconds": time.perf_counter() - t0}
                if res is not None:
                    entry.update({k: res[k] for k in ("test_result", "best_valid_result",
                                                      "best_epoch", "epochs_run")})
                    entry["epoch_seconds_mean"] = statistics.fmean(res["epoch_seconds"])
                data = _update(lambda d, e=entry: d["teachers"].append(e))
            path = next(t["checkpoint"] for t in data["teachers"]
                        if t["teacher"] == tkey and t["seed"] == seed)
            for method in args.methods:
                owner = None if method == "none" else tkey
                if _done(_load(), owner, method, seed):
                    continue
                t0 = time.perf_counter()
                res = run_distillation(
                    teacher=tname, student=STUDENT[0], method=method, dataset="ml-100k",
                    teacher_config=tcfg, student_config=STUDENT[1], teacher_checkpoint=path,
                    config_dict={**cfg, "softlabel_cache_dir": None}, run_dir=args.run_dir)
                entry = {"teacher": owner, "method": method, "seed": seed,
                         "wall_seconds": time.perf_counter() - t0,
                         **{k: res[k] for k in ("test_result", "best_valid_result",
                                                "best_epoch", "epochs_run",
                                                "softlabel_seconds")},
                         "epoch_seconds": res["epoch_seconds"],
                         "epoch_cpu_seconds": res["epoch_cpu_seconds"],
                         "epoch_seconds_mean": statistics.fmean(res["epoch_seconds"])}
                data = _update(lambda d, e=entry: d["runs"].append(e))
                print(f"{tkey} seed {seed} {method:7s} ndcg@10 "
                      f"{res['test_result']['ndcg@10']:.4f} epochs {res['epochs_run']} "
                      f"{entry['epoch_seconds_mean']:.2f} s/epoch", flush=True)
    with _locked():
        render(_load())


def _timing(args: argparse.Namespace) -> None:
    """Controlled epoch-time measurement: ``--timing-epochs`` epochs of every method on seed 0,
    back to back, recording wall and CPU time per epoch (CPU time of this single-threaded
    process is far less sensitive to other jobs on a shared machine than wall time)."""
    from recsys.recbole import run_distillation

    torch.set_num_threads(args.threads)
    data = _load()
    for tkey in args.teachers:
        tname, tcfg = TEACHERS[tkey]
        path = next((t["checkpoint"] for t in data["teachers"]
                     if t["teacher"] == tkey and t["seed"] == 0), None)
        if path is None:
            raise SystemExit(f"train the {tkey} teacher (seed 0) first: run the grid")
        cfg = {**_config(args, 0), "epochs": args.timing_epochs, "eval_step": 1000,
               "softlabel_cache_dir": None}
        for method in args.methods:
            res = run_distillation(teacher=tname, student=STUDENT[0], method=method,
                                   dataset="ml-100k", teacher_config=tcfg,
                                   student_config=STUDENT[1], teacher_checkpoint=path,
                                   config_dict=cfg, run_dir=args.run_dir, saved=False)
            entry = {"wall": res["epoch_seconds"], "cpu": res["epoch_cpu_seconds"],
                     "softlabel_seconds": res["softlabel_seconds"]}
            data = _update(lambda d, t=tkey, m=method, e=entry:
                           d.setdefault("timing", {}).setdefault(t, {}).update({m: e}))
            print(f"timing {tkey} {method:7s} cpu {statistics.median(res['epoch_cpu_seconds']):.2f}"
                  f" s/epoch wall {statistics.median(res['epoch_seconds']):.2f}", flush=True)
    render(_load())


def _config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Student runs (every method and the student alone)."""
    return {"epochs": args.epochs, "stopping_step": args.stopping_step,
            "learning_rate": args.lr, "seed": seed, "eval_batch_size": 4096}


def _teacher_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Teacher training: RecBole's defaults (lr 1e-3, stopping_step 10) under an epoch cap."""
    return {"epochs": args.teacher_epochs, "stopping_step": 10, "learning_rate": 0.001,
            "seed": seed, "eval_batch_size": 4096}


# ----------------------------------------------------------------------------- report
def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float]) -> str:
    m, s = _mean_std(values)
    return "—" if math.isnan(m) else f"{m:.4f} ± {s:.4f}"


def summarize(data: dict[str, Any], teacher: str) -> list[dict[str, Any]]:
    """Per method: metrics over seeds, epoch-time ratio to the student alone (same seed)."""
    alone = {r["seed"]: r for r in data["runs"] if r["method"] == "none"}
    rows = []
    for method in METHODS:
        runs, seen = [], set()
        for r in data["runs"]:  # first run per seed (parallel workers may repeat one)
            if r["method"] == method and (r["teacher"] == teacher or method == "none") \
                    and r["seed"] not in seen:
                seen.add(r["seed"])
                runs.append(r)
        if not runs:
            continue
        runs.sort(key=lambda r: r["seed"])
        timing = data.get("timing", {}).get(teacher, {})
        if method in timing and "none" in timing:
            ratios = [statistics.median(timing[method]["cpu"])
                      / statistics.median(timing["none"]["cpu"])]
        else:
            ratios = [r["epoch_seconds_mean"] / alone[r["seed"]]["epoch_seconds_mean"]
                      for r in runs if r["seed"] in alone]
        rows.append({
            "method": method, "seeds": [r["seed"] for r in runs],
            **{m: [r["test_result"][m] for r in runs] for m in METRICS},
            "epoch_ratio": ratios,
            "softlabel_seconds": [r["softlabel_seconds"] for r in runs],
            "best_epoch": [r["best_epoch"] for r in runs],
            "epoch_seconds": [r["epoch_seconds_mean"] for r in runs],
        })
    return rows


def render(data: dict[str, Any] | None = None) -> str:
    """Write the markdown table and the plot from the JSON; return the markdown."""
    data = data or _load()
    setup = data.get("setup", {})
    lines = [f"# RecBole ranking distillation on ml-100k ({NAME})", ""]
    if setup:
        lines += [f"Student {setup['student']}; {setup['split']}. Student runs: "
                  f"`{json.dumps(setup['config'])}`; teachers: "
                  f"`{json.dumps(setup.get('teacher_config', {}))}` (epoch caps, early stopping "
                  "on valid NDCG@10; the seed changes the split, so the teacher is retrained "
                  "per seed). "
                  f"Hyperparameters: {setup['hyperparameters']}.", "",
                  machine_markdown(setup["machine"]), ""]
    for tkey in TEACHERS:
        rows = summarize(data, tkey)
        teachers = [t for t in data["teachers"] if t["teacher"] == tkey and "test_result" in t]
        if not any(r["method"] != "none" for r in rows):
            continue
        lines += [f"## Teacher {setup.get('teachers', {}).get(tkey, tkey)}", ""]
        table = []
        if teachers:
            table.append([f"teacher ({len(teachers)} seeds)",
                          *[_fmt([t["test_result"][m] for t in teachers]) for m in METRICS],
                          "—", "—", "—"])
        base = next((r for r in rows if r["method"] == "none"), None)
        verdicts = []
        for r in rows:
            n = len(r["seeds"])
            sl = statistics.fmean(r["softlabel_seconds"]) if r["method"] != "none" else None
            sl = None if r["method"] in EMBEDDING_METHODS else sl
            table.append([
                f"{LABELS[r['method']]} ({n} seed{'s' if n > 1 else ''})",
                *[_fmt(r[m]) for m in METRICS],
                _fmt_ratio(r["epoch_ratio"]),
                "—" if sl is None else f"{sl:.2f} s",
                " ".join(str(e) for e in r["best_epoch"]),
            ])
            if base is not None and r["method"] != "none":
                alone = dict(zip(base["seeds"], base["ndcg@10"]))
                diffs = [v - alone[sd] for sd, v in zip(r["seeds"], r["ndcg@10"])
                         if sd in alone]
                if diffs:
                    verdicts.append((LABELS[r["method"]], diffs))
        lines.append(markdown_table(
            ["model", "Recall@10", "Recall@20", "NDCG@10", "NDCG@20",
             "epoch time / student alone", "teacher top-K extraction", "best epochs"], table))
        lines.append("")
        if verdicts:
            def cell(name: str, diffs: list[float]) -> str:
                m, sd = _mean_std(diffs)
                wins = sum(d > 0 for d in diffs)
                return f"{name} ({m:+.4f} ± {sd:.4f}, better on {wins}/{len(diffs)} seeds)"

            clear = [cell(n, d) for n, d in verdicts if len(d) > 1 and all(x > 0 for x in d)]
            mixed = [cell(n, d) for n, d in verdicts if len(d) > 1 and not all(x > 0 for x in d)
                     and statistics.fmean(d) > 0]
            worse = [cell(n, d) for n, d in verdicts if statistics.fmean(d) <= 0]
            single = [cell(n, d) for n, d in verdicts if len(d) == 1 and d[0] > 0]
            lines.append(
                "Test NDCG@10 minus the student alone's on the same seed (same split), mean ± std "
                "over seeds. **Better than the student on every seed**: "
                f"{'; '.join(clear) or 'none'}. **Better on average but not on every seed (not a "
                f"clear win)**: {'; '.join(mixed) or 'none'}. **Does not beat the student**: "
                f"{'; '.join(worse) or 'none'}."
                + (f" One seed only so far: {'; '.join(single)}." if single else ""))
            lines.append("")
    for note in data.get("notes", []):
        lines += [f"Note: {note}", ""]
    lines += ["Epoch time / student alone: where a controlled timing pass exists (`--timing`: "
              "every method trained a few epochs back to back on seed 0, one torch thread), the "
              "ratio of median per-epoch **CPU** time of the training epoch (resampling "
              "included, evaluation excluded) to the student alone's; otherwise the ratio of "
              "mean wall times per seed from the grid runs, which other jobs on the shared "
              "machine make noisy. Target <= 1.5. Teacher top-K extraction: wall time of the "
              "teacher's masked top-K (K = the method's list length) for all users.", ""]
    md = "\n".join(lines)
    atomic_write_text(RESULTS_DIR / f"{NAME}.md", md + "\n")
    _plot(data)
    return md


def _fmt_ratio(values: list[float]) -> str:
    if not values:
        return "—"
    m = statistics.fmean(values)
    return f"{m:.2f} {'✅' if m <= 1.5 else '❌'}"


def _plot(data: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plot is optional
        return
    groups = [(t, summarize(data, t)) for t in TEACHERS]
    groups = [(t, rows) for t, rows in groups if any(r["method"] != "none" for r in rows)]
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (tkey, rows) in zip(axes[0], groups):
        names = [f"{LABELS[r['method']]} ({len(r['seeds'])})" for r in rows]
        means = [_mean_std(r["ndcg@10"])[0] for r in rows]
        stds = [_mean_std(r["ndcg@10"])[1] for r in rows]
        colors = ["tab:gray" if r["method"] == "none" else "tab:blue" for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, color=colors, capsize=3)
        base = next((m for r, m in zip(rows, means) if r["method"] == "none"), None)
        if base is not None:
            ax.axhline(base, color="tab:gray", ls="--", lw=1, label="student alone")
        teachers = [t["test_result"]["ndcg@10"] for t in data["teachers"]
                    if t["teacher"] == tkey and "test_result" in t]
        if teachers:
            ax.axhline(statistics.fmean(teachers), color="tab:red", ls=":", lw=1,
                       label="teacher")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
        lo = min(m - s for m, s in zip(means, stds) if not math.isnan(m))
        ax.set_ylim(max(0.0, lo - 0.02), None)
        ax.set_ylabel("test NDCG@10 (mean ± std over (n) seeds)")
        ax.set_title(f"teacher {TEACHERS[tkey][0]} {TEACHERS[tkey][1]['embedding_size']}"
                     f" -> BPR 20, ml-100k")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(RESULTS_DIR / f"{NAME}.png", lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", default="bpr,lightgcn")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=40, help="epoch cap")
    p.add_argument("--teacher-epochs", type=int, default=150, help="teacher epoch cap")
    p.add_argument("--stopping-step", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--run-dir", default="runs/recbole")
    p.add_argument("--render", action="store_true", help="only regenerate table and plot")
    p.add_argument("--timing", action="store_true",
                   help="only the controlled epoch-time measurement (after the grid)")
    p.add_argument("--timing-epochs", type=int, default=4)
    args = p.parse_args(argv)
    if args.render:
        print(render())
        return
    args.teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    unknown = set(args.teachers) - set(TEACHERS) | set(args.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown teacher/method {sorted(unknown)}; teachers: "
                         f"{sorted(TEACHERS)}, methods: {list(METHODS)}")
    (_timing if args.timing else _run)(args)


if __name__ == "__main__":
    main()
