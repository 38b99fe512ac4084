"""Ranking distillation on ml-100k with the RecBole plugin, under the fair protocol of
:mod:`benchmarks.recbole_grid` (validation-selected lr and lambda, the same budget and early
stopping for every model, 3 seeds, paired differences to the student alone).

Teacher BPR d=200 -> student BPR d=20 on the ml-100k copy shipped inside RecBole.

Usage::

    python -m benchmarks.recbole_ml100k                        # grid, then seeds 0-2 (resumable)
    python -m benchmarks.recbole_ml100k --phase grid --methods none,rd,cd
    python -m benchmarks.recbole_ml100k --phase final
    python -m benchmarks.recbole_ml100k --render               # tables + plot from the runs
    python -m benchmarks.recbole_ml100k --timing               # controlled epoch times

Run files: ``benchmarks/results/recbole_ml100k/runs/``; report:
``benchmarks/results/recbole_ml100k.{md,json,png}``.
"""

from __future__ import annotations

from benchmarks.recbole_grid import Bench
from benchmarks.recbole_grid import main as _main

BENCH = Bench(name="recbole_ml100k", dataset="ml-100k", title="ml-100k (RecBole's shipped copy)")


def main(argv: list[str] | None = None) -> None:
    _main(BENCH, argv)


if __name__ == "__main__":
    main()
