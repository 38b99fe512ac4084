"""Shared harness of the quality benchmarks (``benchmarks.pointcloud``, ``benchmarks.molecules``).

For each dataset config: teacher once, then every (seed, method) student through
:func:`graphkd.pipeline.run_experiment` (test metric at the best validation epoch, median
epoch time). Raw per-seed records go to ``benchmarks/results/<name>.json`` after *every* run, so
an interrupted benchmark still leaves what it measured; the markdown table and the plot are
always regenerated from that JSON (``--report-only`` does only that).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS_DIR, machine_info, machine_markdown
from graphkd.fileio import atomic_write_text

__all__ = ["main", "write_outputs"]

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=None, help="default: all in the config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every dataset (e.g. student.train.epochs=5)")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="subset of the dataset keys (default: all available)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    p.add_argument("--report-only", action="store_true",
                   help="regenerate the markdown and the plot from the JSON only")
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("--timing-rounds", type=int, default=20,
                   help="rounds of the interleaved step timing (0: skip it)")
    p.add_argument("--timing-only", action="store_true",
                   help="only (re)measure the interleaved step times into the existing JSON")
    p.add_argument("--note", action="append", default=[],
                   help="a line added to the notes of the report (repeatable)")
    return p


def write_outputs(name: str, blob: dict[str, Any], out: Path) -> list[Path]:
    """Write ``<name>.json`` (raw), ``<name>.md`` (tables) and ``<name>[_<key>].png``."""
    from graphkd.report import markdown_report, plot_results

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json"]
    atomic_write_text(paths[0], json.dumps(blob, indent=1, default=str) + "\n")
    parts = [f"# {blob.get('title', name)}", ""]
    if blob.get("machine"):
        parts += [f"Machine: {machine_markdown(blob['machine'])}", ""]
    if blob.get("command"):
        parts += [f"Command: `{blob['command'].strip()}`", ""]
    if blob.get("load_average_start") is not None:
        la = [f"{x:.1f}" for x in blob["load_average_start"]]
        parts += [f"Load average (1/5/15 min) when the run started: {' / '.join(la)}"
                  + (f"; at the end: {' / '.join(f'{x:.1f}' for x in blob['load_average_end'])}"
                     if blob.get("load_average_end") else "") + ".", ""]
    for line in blob.get("notes", []):
        parts += [f"- {line}"]
    parts += [""]
    for i, (key, res) in enumerate(blob["datasets"].items()):
        if not res.get("runs"):
            continue
        png = out / (f"{name}.png" if i == 0 else f"{name}_{key}.png")
        plot_results(res, png)
        paths.append(png)
        body = markdown_report(res, title=key, plot_name=png.name)
        parts += ["#" + body if body.startswith("# ") else body, ""]
        done = {(r["method"], r["seed"]) for r in res["runs"]}
        missing = [f"{m} (seed {s})" for s in res.get("seeds", []) for m in res.get("methods", [])
                   if (m, s) not in done]
        if missing:
            parts += [f"**Incomplete**: not run (time budget): {', '.join(missing)}.", ""]
    md = out / f"{name}.md"
    atomic_write_text(md, "\n".join(parts).rstrip() + "\n")
    paths.append(md)
    return paths


def main(name: str, doc: str, datasets: dict[str, tuple[str, Any]],
         argv: Sequence[str] | None = None) -> int:
    """Run the benchmark ``name`` over ``datasets``: key -> (config file, availability check).

    ``availability check`` is ``None`` (always run) or a callable returning ``None`` when the
    data is present, else the reason it is skipped (recorded in the notes).
    """
    import sys

    from graphkd.config import load_config
    from graphkd.pipeline import run_experiment, step_times

    args = _parser(name, doc).parse_args(argv)
    out = Path(args.out)
    jpath = out / f"{name}.json"
    if args.report_only or args.timing_only:
        blob = json.loads(jpath.read_text())
        blob.setdefault("notes", []).extend(n for n in args.note if n not in blob["notes"])
        if args.timing_only:
            for key, res in blob["datasets"].items():
                cfg = load_config(CONFIGS / datasets[key][0],
                                  [f"seeds={res['seeds']}", *args.set])
                res["step_times"] = step_times(cfg, res["methods"], rounds=args.timing_rounds)
                res["step_times"]["load_average"] = os.getloadavg()
                atomic_write_text(jpath, json.dumps(blob, indent=1, default=str) + "\n")
        for p in write_outputs(name, blob, out):
            print(p)
        return 0
    blob: dict[str, Any] = {
        "title": doc.splitlines()[0],
        "machine": machine_info("cpu"),
        "command": "python -m benchmarks." + name + " " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv),
        "notes": list(args.note),
        "datasets": {},
        "load_average_start": os.getloadavg(),
    }
    keys = args.datasets or list(datasets)
    for key in keys:
        cfg_file, check = datasets[key]
        reason = check() if check is not None else None
        if reason:
            blob["notes"].append(f"{key}: skipped ({reason}).")
            print(f"[{name}] {key}: skipped ({reason})", flush=True)
            continue
        cfg = load_config(CONFIGS / cfg_file, [f"seeds={list(args.seeds)}", *args.set])
        t0 = time.perf_counter()

        def save(partial: dict[str, Any], key: str = key, t0: float = t0) -> None:
            blob["datasets"][key] = partial
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(jpath, json.dumps(blob, indent=1, default=str) + "\n")
            r = partial["runs"][-1]
            print(f"[{name}] {key} {r['method']:8s} seed {r['seed']}: test {r['test']:.4f} "
                  f"(epoch {r['best_epoch']}), {r['epoch_time']:.3f} s/epoch "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)

        res = run_experiment(cfg, args.methods, progress=args.progress, on_record=save)
        if args.timing_rounds > 0:
            res["step_times"] = step_times(cfg, res["methods"], rounds=args.timing_rounds)
        blob["datasets"][key] = res
    blob["load_average_end"] = os.getloadavg()
    for p in write_outputs(name, blob, out):
        print(p)
    return 0
