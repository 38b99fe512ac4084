"""The README's ranking-distillation table, generated from the run files of both datasets.

``python -m benchmarks.recbole_readme README.md`` replaces the text between
``<!-- ranking-benchmarks:start -->`` and ``<!-- ranking-benchmarks:end -->`` with one table:
a row per method, for ml-100k and ml-1m the test NDCG@10 (mean ± std over the finished seeds),
the paired per-seed difference to the student alone and on how many seeds the method is better,
or, while a method's grid or seeds are unfinished, how far it got. Numbers come only from
:func:`benchmarks.recbole_grid.summarize` (the same run files as ``--render``); nothing is typed
by hand. ``--print`` writes the section to stdout instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks import recbole_ml1m, recbole_ml100k
from benchmarks._util import markdown_table, write_block
from benchmarks.recbole_grid import (
    GRID_SEED,
    LABELS,
    METHODS,
    _fmt,
    _num,
    grid_points,
    parse_args,
    summarize,
)

__all__ = ["section", "update_readme"]

START, END = "<!-- ranking-benchmarks:start -->", "<!-- ranking-benchmarks:end -->"
BENCHES = (recbole_ml100k.BENCH, recbole_ml1m.BENCH)
SHORT = {"recbole_ml100k": "ml-100k", "recbole_ml1m": "ml-1m"}


def _progress(method: str, tsum: dict[str, Any], args: argparse.Namespace) -> str:
    """``grid 2/6`` while the grid is unfinished, ``seeds 1/3`` while the final seeds are."""
    cells = tsum["grid"].get(method, {}).get("cells", {})
    points = grid_points(method, args)
    done = sum(f"{_num(lr)}|{'-' if m is None else _num(m)}" in cells for lr, m in points)
    if done < len(points):
        return f"grid {done}/{len(points)}" if done else "not run"
    return "grid done"


def _value(values: list[float], signed: bool = False) -> str:
    """mean ± std, or the single value (no "± 0") for one seed."""
    if len(values) == 1:
        return f"{values[0]:+.4f}" if signed else f"{values[0]:.4f}"
    return _fmt(values, signed=signed)


def _cells(method: str, tsum: dict[str, Any], args: argparse.Namespace) -> list[str]:
    row = next((r for r in tsum["rows"] if r["method"] == method), None)
    if row is None:
        return [_progress(method, tsum, args), "", ""]
    n = len(row["seeds"])
    value = f"{_value(row['ndcg@10'])} ({n} seed{'s' if n > 1 else ''})"
    if method == "none":
        return [value, "—", "—"]
    diffs = row.get("diff_ndcg@10", [])
    better = f"{sum(d > 0 for d in diffs)}/{len(diffs)}" if diffs else "—"
    return [value, _value(diffs, signed=True) if diffs else "—", better]


def _choice(method: str, tsum: dict[str, Any]) -> str:
    """``0.001, 10×``: the chosen values; ``0.001, 10× ⁺`` while the point past the λ grid's
    edge (or the seeds at its choice) is pending and the row shows the grid's own choice."""
    g = tsum["grid"].get(method, {})
    shown = g.get("shown", g.get("chosen"))
    if shown is None:
        return "…"
    lr, mult = shown
    return (f"{_num(lr)}" + ("" if mult is None else f", {_num(mult)}×")
            + (" ⁺" if g.get("pending") else ""))


def section(benches=BENCHES, argv: list[str] | None = None) -> str:
    """The markdown between the markers (table + run counts)."""
    per = []
    for bench in benches:
        args = parse_args(bench, list(argv or []))
        summary = summarize(bench, args)
        per.append((bench, args, summary, summary["teachers"][args.teachers[0]]))
    head = ["model"]
    for bench, *_ in per:
        name = SHORT.get(bench.name, bench.name)
        head += [f"{name} test NDCG@10", f"{name} Δ vs alone", f"{name} better on",
                 f"{name} lr, λ×"]
    rows = []
    teacher_cells = ["teacher"]
    for _, _, _, tsum in per:
        teach = tsum["teacher_runs"]
        teacher_cells += ([f"{_value([t['test_result']['ndcg@10'] for t in teach])} "
                           f"({len(teach)} seed{'s' if len(teach) > 1 else ''})"]
                          if teach else ["not run"]) + ["—", "—", "—"]
    rows.append(teacher_cells)
    for method in METHODS:
        cells = [LABELS[method]]
        for _, args, _, tsum in per:
            cells += _cells(method, tsum, args) + [_choice(method, tsum)]
        rows.append(cells)
    notes = []
    for bench, _args, summary, _ in per:
        notes.append(f"{SHORT.get(bench.name, bench.name)}: {summary['runs']} student runs of "
                     f"the protocol ({summary['runs_at_cap']} stopped at the epoch cap), "
                     f"[{bench.name}.md](benchmarks/results/{bench.name}.md)")
    unfinished = [f"{SHORT.get(b.name, b.name)} {LABELS[m]}" for b, a, _, t in per
                  for m in METHODS if not any(r["method"] == m and len(r["seeds"]) >= 3
                                              for r in t["rows"])]
    text = [markdown_table(head, rows), "",
            "Δ: test NDCG@10 minus the student alone's on the same seed, mean ± std; better on: "
            "seeds with Δ > 0; lr, λ×: the values chosen on seed "
            f"{GRID_SEED}'s validation NDCG@10 (λ as a multiple of the method's reference); "
            "`grid k/n`: grid runs finished so far (the method's row appears once its grid is "
            "complete); ⁺: chosen at an edge of the λ grid, the run one step past that edge "
            "(or the seeds at its choice) still pending. " + "; ".join(notes) + "."]
    if unfinished:
        text += ["", "**Unfinished** (fewer than 3 seeds): " + ", ".join(unfinished)
                 + ". Continue with `python -m benchmarks.recbole_ml1m` / "
                 "`python -m benchmarks.recbole_ml100k` (resumable; commands to split the work "
                 "in [docs/recbole_benchmarks.md](docs/recbole_benchmarks.md))."]
    return "\n".join(text)


def update_readme(path: Path, text: str) -> None:
    """Replace the marked section of ``path`` with ``text`` (atomic)."""
    try:
        write_block(path, START, END, text)
    except ValueError:
        raise SystemExit(f"{path}: no '{START}' ... '{END}' markers") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recbole_readme",
                                description=__doc__.splitlines()[0])
    p.add_argument("readme", nargs="?", default="README.md")
    p.add_argument("--print", action="store_true", help="print the section, change nothing")
    args = p.parse_args(argv)
    text = section()
    if args.print:
        print(text)
    else:
        update_readme(Path(args.readme), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

