"""ogbg-molhiv in the setting of Joshi et al. 2022 (TNNLS), Table 2: GIN-E 5-layer teacher ->
GCN 2-layer student (``configs/molecules_molhiv.yaml``); student alone, KD, FitNet, AT, LSP, GSP,
G-CRD, HKD, RKD; test ROC-AUC at the best validation epoch, seeds 0 1 2; the published numbers
beside ours; relation diagnostics (CKA, kNN overlap) of student / KD / LSP / GSP / G-CRD.

Resumable (``benchmarks._grid``): every finished (method, seed) is a JSON under
``benchmarks/results/molhiv/runs/molhiv/``, a rerun skips it; the teacher checkpoints every
epoch and resumes exactly. One teacher (``teacher_seed`` 0) for every student seed. Students
read the teacher from the offline cache (no augmentation on molecules)::

    python -m benchmarks.molhiv --teacher-only --progress    # the teacher (resumes)
    python -m benchmarks.molhiv --budget-minutes 300         # the grid (resumes)
    python -m benchmarks.molhiv --relations                  # CKA / kNN overlap of the runs
    python -m benchmarks.molhiv --measure 20                 # epoch cost: live vs cached teacher
    python -m benchmarks.molhiv --render                     # results/molhiv.{json,md,png}
"""

from __future__ import annotations

import sys

from benchmarks._grid import Grid, Table, main

#: Joshi et al. 2022, Table 2 (ogbg-molhiv, 8 seeds): test ROC-AUC (%) mean and std.
PUBLISHED = {"teacher": (77.69, 1.61), "student": (73.02, 1.46), "kd": (74.08, 1.03),
             "fitnet": (73.62, 1.05), "at": (73.85, 0.85), "lsp": (73.58, 1.29),
             "gsp": (72.83, 1.30), "gcrd": (74.34, 1.44)}

GRID = Grid(
    name="molhiv",
    title="ogbg-molhiv: GIN-E teacher -> GCN student (Joshi et al. 2022 setting)",
    tables=(Table(
        key="molhiv", config="molecules_molhiv.yaml",
        label="ogbg-molhiv, GIN-E 5L/300 -> GCN 2L/48, scaffold split",
        methods=("student", "kd", "fitnet", "at", "lsp", "gsp", "gcrd", "hkd", "rkd"),
        cache=True, published=PUBLISHED,
        published_source="Joshi et al. 2022 (TNNLS), Table 2, 8 seeds, GIN-E 5L 3.3M "
                         "teacher (virtual node), GCN 2L ~15K student",
        relation_pairs=(("convs.4", "convs.1"), ("pool", "pool")),
        relation_methods=("student", "kd", "lsp", "gsp", "gcrd")),),
    seeds=(0, 1, 2),
    notes=("One teacher (teacher_seed 0) for all student seeds; the paper's teacher std "
           "suggests one teacher per seed, which costs a teacher training per seed.",
           "Our teacher has no virtual node (1.89M parameters vs the paper's 3.3M).",),
)

if __name__ == "__main__":
    sys.exit(main(GRID, __doc__))
