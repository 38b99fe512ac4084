"""Quality benchmark on point clouds: every distillation method, DGCNN teacher -> student.

``python -m benchmarks.pointcloud`` runs the embedded digits point clouds
(``configs/pointcloud_digits.yaml``) and, when the ModelNet40 HDF5 files are in the data root,
ModelNet40 (``configs/pointcloud_modelnet40.yaml``). Test accuracy at the best validation
epoch, mean ± std over seeds (default 0 1 2), epoch time relative to the student alone and to
plain KD. Writes ``benchmarks/results/pointcloud.{json,md,png}``.
"""

from __future__ import annotations

import sys

from benchmarks._quality import main


def _modelnet40_missing() -> str | None:
    from graphkd.datasets import data_root
    from graphkd.datasets.pointclouds import MODELNET40_DIR

    d = data_root() / MODELNET40_DIR
    if not any(d.glob("ply_data_train*.h5")):
        return f"no {d}/ply_data_train*.h5 in the data root"
    return None


DATASETS = {
    "digits": ("pointcloud_digits.yaml", None),
    "modelnet40": ("pointcloud_modelnet40.yaml", _modelnet40_missing),
}

if __name__ == "__main__":
    sys.exit(main("pointcloud", __doc__, DATASETS))
