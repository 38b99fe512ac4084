"""``graphkd``: train teachers, distil students, write reports.

Subcommands::

    graphkd train-teacher --config configs/pointcloud_digits.yaml
    graphkd distill --config configs/pointcloud_digits.yaml --method kd lsp gcrd --seeds 0 1 2
    graphkd quickstart                 # the main job (`make demo`): digits clouds, DGCNN teacher
    graphkd report runs/quickstart/results.json
    graphkd methods                    # registered distillation losses
    graphkd tune --config configs/molecules_chembl.yaml --method lsp rkd --epochs 5
    graphkd distill --config configs/molecules_chembl.yaml --tuned <its tuned_weights.json>

Any config entry can be overridden with ``--set key.path=value`` (value parsed as YAML), e.g.
``--set student.train.epochs=2 --set seeds=[0]``. Results go to ``<output_dir>/<name>/``:
the cached teacher checkpoint, ``results.json`` (raw per-seed values), ``report.md`` and
``report.png``. ``name`` must be a plain folder name (no ``..``, no ``/``, not absolute).

``graphkd tune`` chooses each method's loss-weight scale from a grid (default 0.1x, 1x, 10x the
config's weights) on the validation split only (:mod:`graphkd.tune`), resumable, and writes
``<output_dir>/<name>/tune/tuned_weights.json``; ``--tuned FILE`` makes ``distill`` and
``quickstart`` use the chosen weights (so its results.json and report carry them).

Errors (a bad config entry, a missing file, ``--device cuda`` without CUDA, a missing optional
extra) print one line ``graphkd: error: <message>`` and exit with status 2; ``--debug`` or
``GRAPHKD_DEBUG=1`` shows the traceback instead.

Several processes: ``graphkd distill --nproc N ...`` (or ``torchrun --nproc-per-node N -m
graphkd.cli distill ...``) trains every student with DistributedDataParallel, relation methods
on the global batch (:mod:`graphkd.distributed`; gloo on CPU, NCCL with one GPU per process).
``student.train.batch_size`` stays the *global* batch (``batch_size / N`` samples per process and
step; it must divide). ``--sync-bn`` (config ``sync_batchnorm: true``) synchronises the student's
BatchNorm statistics over the processes. The teacher is trained once (in the launching process,
or on rank 0 under torchrun) and loaded, frozen, by every process; only rank 0 prints and writes
files.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "QUICKSTART_CONFIG"]

#: Config of ``graphkd quickstart`` (looked up in the working directory, then the repository).
QUICKSTART_CONFIG = "configs/quickstart.yaml"


def _find_config(path: str) -> Path:
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    repo = Path(__file__).resolve().parents[1] / path
    return repo if repo.is_file() else p


def check_device(name: str) -> None:
    """Refuse a device this machine cannot use, with the fix, before any work is done.

    Raises:
        ConfigError: not a device name, or CUDA/MPS asked for but not available.
    """
    import torch

    from graphkd.config import ConfigError

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {name!r} is not a device name: use cpu, cuda, "
                          "cuda:<index> or auto.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise ConfigError(f"device {name!r}: CUDA is not available ({why}); use "
                              "--device cpu (or --device auto to take a GPU when there is one).")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {name!r}: only {count} CUDA device(s) visible "
                              f"(cuda:0..cuda:{count - 1}).")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {name!r}: MPS is not available; use --device cpu.")


def _load(args: argparse.Namespace):
    from graphkd.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "sync_bn", False):
        overrides.append("sync_batchnorm=true")
    cfg = load_config(_find_config(args.config), overrides)
    check_device(cfg.device)
    if getattr(args, "tuned", None):  # graphkd tune's chosen weights (graphkd.tune)
        from graphkd.tune import apply_tuned

        cfg = apply_tuned(cfg, args.tuned)
    return cfg


def _print_table(results: dict) -> None:
    from graphkd.report import kd_comparison, results_table

    print(results_table(results))
    for line in kd_comparison(results):
        print("  " + line)


def _run_and_report(cfg, methods: Sequence[str] | None, seeds: Sequence[int] | None,
                    args: argparse.Namespace) -> int:
    from graphkd import distributed as gd
    from graphkd.pipeline import run_dir, run_experiment
    from graphkd.report import write_report

    out = run_dir(cfg)
    t0 = time.perf_counter()

    def save(partial: dict) -> None:  # keep partial results if a long run is interrupted
        if not gd.is_main_process():
            return
        out.mkdir(parents=True, exist_ok=True)
        write_report(partial, out, plot=False)
        if not args.quiet:
            t = partial.get("teacher")
            if t and len(partial["runs"]) == 1:
                print(f"  {'teacher':>8s} {'(cached)' if t['cached'] else 'trained'}: test "
                      f"{partial['metric']} {t['test_at_best']:.4f}, "
                      f"{t['epoch_time_median']:.2f} s/epoch", flush=True)
            r = partial["runs"][-1]
            print(f"  {r['method']:>8s} seed {r['seed']}: test {partial['metric']} "
                  f"{r['test']:.4f} (best validation epoch {r['best_epoch'] + 1}), "
                  f"{r['epoch_time']:.2f} s/epoch  [{time.perf_counter() - t0:.0f} s]",
                  flush=True)

    results = run_experiment(cfg, methods, seeds, progress=not args.quiet, on_record=save,
                             force_teacher=getattr(args, "force_teacher", False))
    results["total_time_s"] = round(time.perf_counter() - t0, 1)
    if not gd.is_main_process():  # other ranks trained their shards; rank 0 reports
        return 0
    paths = write_report(results, out, plot=not args.no_plot)
    _print_table(results)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())} "
          f"({results['total_time_s']:.0f} s)")
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    """Train (or load from the cache) the config's teacher and print its metrics."""
    from graphkd.pipeline import train_teacher

    cfg = _load(args)
    _, rec = train_teacher(cfg, force=args.force, progress=not args.quiet)
    state = "loaded from cache" if rec["cached"] else "trained"
    print(f"teacher {state}: {rec['path']}")
    print(f"best validation epoch {rec['best_epoch']}: val {rec['best_val']:.4f}, "
          f"test {rec['test_at_best']:.4f}, {rec['epoch_time_median']:.3f} s/epoch")
    return 0


def _env_world() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _distill_rank(args: argparse.Namespace) -> int:
    """One process of ``--nproc N`` / torchrun (module level, so ``spawn`` can pickle it)."""
    from graphkd import distributed as gd

    import_plugins(getattr(args, "imports", None))  # spawned processes register them too
    if not gd.is_main_process():
        args.quiet, args.no_plot = True, True
    return _run_and_report(_load(args), args.method or None, args.seeds, args)


def _run_distributed(cfg, args: argparse.Namespace) -> int:
    """Run :func:`_distill_rank` in ``--nproc`` spawned processes or in this torchrun process.

    Spawning: the launching process first checks the methods and trains (or loads) the teacher,
    so that every rank finds it cached. Under torchrun rank 0 does it while the others wait.
    """
    from graphkd.config import ConfigError
    from graphkd.distributed import launch
    from graphkd.pipeline import resolve_device

    world = _env_world()
    if world > 1 and args.nproc not in (1, world):
        raise ConfigError(f"--nproc {args.nproc} but torchrun started WORLD_SIZE={world} "
                          "processes; drop --nproc under torchrun.")
    nproc = max(args.nproc, world)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world <= 1 and nproc > _cuda_count():
        raise ConfigError(f"--nproc {nproc} needs one GPU per process; "
                          f"{_cuda_count()} visible.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world <= 1:
        from graphkd.pipeline import check_methods, load_data, train_teacher

        methods = args.method or list(cfg.methods)
        if any(cfg.methods[m].uses_teacher for m in methods):
            data = load_data(cfg.data)
            check_methods(cfg, methods, data)
            train_teacher(cfg, data, force=args.force_teacher, progress=not args.quiet)
            args.force_teacher = False  # trained here; the ranks load the checkpoint
    launch(_distill_rank, nproc, args, backend=backend)
    return 0


def _cuda_count() -> int:
    """Number of visible CUDA devices."""
    import torch

    return torch.cuda.device_count()


def _check_methods_exist(cfg, args: argparse.Namespace) -> None:
    methods = args.method or None
    if methods:
        missing = [m for m in methods if m not in cfg.methods]
        if missing:
            from graphkd.config import ConfigError

            raise ConfigError(f"method(s) {missing} not in {args.config}; it defines "
                              f"{list(cfg.methods)} (add an entry under `methods:`).")
    if getattr(args, "nproc", 1) < 1:
        from graphkd.config import ConfigError

        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}.")


def cmd_distill(args: argparse.Namespace) -> int:
    """Train the student with each requested method (teacher trained or loaded first).

    With ``--nproc N > 1`` or under torchrun, every student trains with DDP over the processes
    (see the module docstring).
    """
    cfg = _load(args)
    _check_methods_exist(cfg, args)
    if args.nproc > 1 or _env_world() > 1:
        return _run_distributed(cfg, args)
    return _run_and_report(cfg, args.method or None, args.seeds, args)


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The main job: teacher, student alone, KD and the graph methods; table + report."""
    if args.config is None:
        args.config = QUICKSTART_CONFIG
    cfg = _load(args)
    _check_methods_exist(cfg, args)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(f"graphkd quickstart: {cfg.name} ({cfg.data.name}), teacher "
              f"{cfg.teacher.model.preset}, student {cfg.student.model.preset}, methods "
              f"{list(cfg.methods)}, seeds {cfg.seeds}; output {cfg.output_dir}/{cfg.name}/",
              flush=True)
    if args.nproc > 1 or _env_world() > 1:
        return _run_distributed(cfg, args)
    return _run_and_report(cfg, args.method or None, args.seeds, args)


def cmd_report(args: argparse.Namespace) -> int:
    """Regenerate report.md / report.png from a results.json."""
    import json

    from graphkd.report import write_report

    path = Path(args.results)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (graphkd distill writes results.json).")
    results = json.loads(path.read_text())
    out = Path(args.out) if args.out else path.parent
    paths = write_report(results, out, json_name=path.name if out == path.parent
                         else "results.json", plot=not args.no_plot)
    _print_table(results)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Choose each method's weight scale on the validation split (:mod:`graphkd.tune`)."""
    from graphkd.pipeline import run_dir
    from graphkd.tune import TUNED_FILE, format_tuning, tune_weights

    cfg = _load(args)
    _check_methods_exist(cfg, args)
    tuned = tune_weights(cfg, args.method or None, grid=args.grid, epochs=args.epochs,
                         seeds=args.seeds, max_trials=args.max_trials, progress=not args.quiet)
    print(format_tuning(tuned))
    print(f"\nwrote {run_dir(cfg) / 'tune' / TUNED_FILE} (use it: graphkd distill --config "
          f"{args.config} --tuned <that file>)")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """Print the registered distillation losses."""
    from graphkd.losses import LOSSES

    for name in sorted(LOSSES):
        doc = (LOSSES[name].__doc__ or "").strip().splitlines()
        print(f"{name:10s} {doc[0] if doc else ''}")
    return 0


def _add_debug(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error (also: GRAPHKD_DEBUG=1)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   default=[] if default is False else argparse.SUPPRESS,
                   help="import this Python module first, e.g. one that registers your own "
                        "loss with @graphkd.register('name') (repeatable); configs never "
                        "import code themselves")


def import_plugins(modules: Sequence[str] | None) -> None:
    """Import the modules named by ``--import`` (they register losses, models, datasets).

    Only the command line can name code to run; a config file cannot.

    Raises:
        ImportError: a module cannot be imported (the message names it).
    """
    for name in modules or ():
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"--import {name}: {exc}") from exc


def _common(p: argparse.ArgumentParser, *, config_required: bool) -> None:
    p.add_argument("--config", required=config_required, default=None,
                   help="YAML experiment config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set student.train.epochs=2 (repeatable)")
    p.add_argument("--output-dir", default=None, help="override output_dir of the config")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log every finished run")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one subparser per command)."""
    parser = argparse.ArgumentParser(
        prog="graphkd", description="Graph-representation knowledge distillation.")
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train (or load) the config's teacher")
    _common(p, config_required=True)
    p.add_argument("--force", action="store_true", help="retrain even if a cached one exists")
    p.set_defaults(func=cmd_train_teacher)

    for name, func, req, helptext in (
        ("distill", cmd_distill, True, "distil the student with one or more methods"),
        ("quickstart", cmd_quickstart, False,
         "the main job on the embedded digits point clouds (make demo)"),
    ):
        p = sub.add_parser(name, help=helptext)
        _common(p, config_required=req)
        p.add_argument("--method", "--methods", nargs="+", default=None,
                       help="method names from the config's `methods:` (default: all)")
        p.add_argument("--seeds", nargs="+", type=int, default=None,
                       help="student seeds (default: the config's)")
        p.add_argument("--no-plot", action="store_true", help="skip the matplotlib plot")
        p.add_argument("--force-teacher", action="store_true", help="retrain the teacher")
        p.add_argument("--nproc", type=int, default=1,
                       help="training processes (DistributedDataParallel; gloo on CPU, NCCL "
                            "with one GPU per process); batch_size stays the global batch. "
                            "Under torchrun, leave it at 1.")
        p.add_argument("--sync-bn", action="store_true",
                       help="synchronise the student's BatchNorm statistics over the processes "
                            "(graphkd.sync_batchnorm, CPU and CUDA); only meaningful with "
                            "--nproc > 1 or torchrun")
        p.add_argument("--tuned", default=None, metavar="FILE",
                       help="use the weights chosen by `graphkd tune` (its tuned_weights.json)")
        p.set_defaults(func=func)

    p = sub.add_parser("tune", help="choose loss weights on the validation split (grid x "
                                    "the config's weights)")
    _common(p, config_required=True)
    p.add_argument("--method", "--methods", nargs="+", default=None,
                   help="methods to tune (default: every method that uses the teacher)")
    p.add_argument("--grid", nargs="+", type=float, default=[0.1, 1.0, 10.0],
                   help="multipliers of the config's weights (default: 0.1 1 10)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per trial (default: student.train.epochs)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="student seeds per grid point; selection on their mean (default: 0)")
    p.add_argument("--max-trials", type=int, default=None,
                   help="train at most this many new trials now; rerun to continue")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="regenerate report.md/.png from results.json")
    p.add_argument("results", help="path to results.json")
    p.add_argument("--out", default=None, help="output folder (default: beside the JSON)")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=cmd_report, quiet=True, verbose=False)

    p = sub.add_parser("methods", help="list the registered distillation losses")
    p.set_defaults(func=cmd_methods, quiet=True, verbose=False)
    for p in sub.choices.values():  # `graphkd distill ... --debug` as well as `graphkd --debug`
        _add_debug(p, argparse.SUPPRESS)
    return parser


#: What a command line can get wrong: these end in one ``graphkd: error: ...`` line, status 2.
#: (ConfigError is a ValueError; RuntimeError covers an unusable device, ImportError a missing
#: optional extra, OSError unreadable/unwritable paths.)
USER_ERRORS = (ValueError, KeyError, RuntimeError, ImportError, OSError)


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` on the command line or ``GRAPHKD_DEBUG`` set to a true value."""
    env = os.environ.get("GRAPHKD_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no", "off")


def error_line(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's key without the quotes of repr);
    unexpected kinds (RuntimeError, KeyError) say how to see the traceback."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if isinstance(exc, (RuntimeError, KeyError)):
        text += " (rerun with --debug for the traceback)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphkd`` command; returns the exit status.

    Configuration errors, missing files, unknown names, an unusable ``--device`` and a missing
    optional extra print one line ``graphkd: error: <message>`` on stderr and exit with status 2
    (no traceback); ``--debug`` or ``GRAPHKD_DEBUG=1`` re-raises instead.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        import_plugins(getattr(args, "imports", None))
        return func(args)
    except USER_ERRORS as exc:
        if debug_requested(args):
            raise
        print(f"graphkd: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
