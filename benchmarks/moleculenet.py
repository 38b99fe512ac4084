"""MoleculeNet BBBP and BACE: GIN-E teacher -> GCN student, scaffold split, >= 5 seeds
(``configs/moleculenet_bbbp.yaml``, ``configs/moleculenet_bace.yaml``); student alone, KD,
LSP, GSP, G-CRD, RKD, HKD (FitNet and AT are configured, not in the default table: CPU
budget); test ROC-AUC at the best validation epoch.

Resumable (``benchmarks._grid``): one JSON per (dataset, method, seed) under
``benchmarks/results/moleculenet/runs/<bbbp|bace>/``; one teacher per dataset; the students read
the teacher from the offline cache::

    python -m benchmarks.moleculenet --budget-minutes 60     # the grid (resumes)
    python -m benchmarks.moleculenet --measure 20            # epoch cost: live vs cached teacher
    python -m benchmarks.moleculenet --tune 20               # weights on validation (graphkd.tune)
    python -m benchmarks.moleculenet --render                # results/moleculenet.{json,md,png}
"""

from __future__ import annotations

import sys

from benchmarks._grid import Grid, Table, main

_METHODS = ("student", "kd", "lsp", "gsp", "gcrd", "rkd", "hkd")

GRID = Grid(
    name="moleculenet",
    title="MoleculeNet BBBP and BACE: GIN-E teacher -> GCN student, scaffold split",
    tables=(
        Table(key="bbbp", config="moleculenet_bbbp.yaml", methods=_METHODS, cache=True,
              label="BBBP (2,039 molecules), GIN-E 3L/128 -> GCN 2L/48"),
        Table(key="bace", config="moleculenet_bace.yaml", methods=_METHODS, cache=True,
              label="BACE (1,513 molecules), GIN-E 3L/128 -> GCN 2L/48"),
    ),
    seeds=(0, 1, 2, 3, 4),
    notes=("One teacher per dataset (teacher_seed 0) for all student seeds.",),
)

if __name__ == "__main__":
    sys.exit(main(GRID, __doc__))
