"""MNIST point clouds: DGCNN teacher -> small DGCNN and PointNet students
(``configs/mnist_clouds.yaml``, ``configs/mnist_clouds_pointnet.yaml``); student alone, KD, LSP,
GSP, G-CRD, RKD, HKD; test accuracy at the best validation epoch, seeds 0 1 2.

Resumable (``benchmarks._grid``): one JSON per (student, method, seed) under
``benchmarks/results/mnist_clouds/runs/<dgcnn|pointnet>/``; one teacher for both tables (same
data and teacher sections). The clouds have no random augmentation, so the students read the
teacher from the offline cache (per-point ``convs.3`` features: 128 x 128 float32 per cloud,
330 MB for the 5,000-cloud subset, 3.3 GB for the full 50k)::

    python -m benchmarks.mnist_clouds --budget-minutes 60    # the grid (resumes)
    python -m benchmarks.mnist_clouds --measure 20           # epoch cost
    python -m benchmarks.mnist_clouds --render               # results/mnist_clouds.{json,md,png}
"""

from __future__ import annotations

import sys

from benchmarks._grid import Grid, Table, main

_METHODS = ("student", "kd", "lsp", "gsp", "gcrd", "rkd", "hkd")

GRID = Grid(
    name="mnist_clouds",
    title="MNIST point clouds: DGCNN teacher -> small DGCNN and PointNet students",
    tables=(
        Table(key="dgcnn", config="mnist_clouds.yaml", methods=_METHODS, cache=True,
              label="MNIST clouds (128 points), DGCNN -> DGCNN k10 16-32"),
        Table(key="pointnet", config="mnist_clouds_pointnet.yaml", methods=_METHODS, cache=True,
              label="MNIST clouds (128 points), DGCNN -> PointNet 32-64"),
    ),
    seeds=(0, 1, 2),
    notes=("One teacher (teacher_seed 0) for both students and all seeds.",
           "Class-balanced subset: data.kwargs.limit clouds per split (stratified; see the "
           "config), not the full 50k/10k/10k: CPU budget (docs/graph_benchmarks.md).",),
)

if __name__ == "__main__":
    sys.exit(main(GRID, __doc__))
