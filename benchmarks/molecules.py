"""Quality benchmark on molecules: every distillation method, GIN-E teacher -> GCN student.

``python -m benchmarks.molecules`` runs the embedded RDKit ChEMBL series
(``configs/molecules_chembl.yaml``, scaffold split, ROC-AUC) and, when ogbg-molhiv is in the data
root, ogbg-molhiv (``configs/molecules_molhiv.yaml``, official scaffold split). Test ROC-AUC at
the best validation epoch, mean ± std over seeds (default 0 1 2), epoch time relative to the
student alone and to plain KD. Writes ``benchmarks/results/molecules.{json,md,png}``.
"""

from __future__ import annotations

import sys

from benchmarks._quality import main


def _molhiv_missing() -> str | None:
    from graphkd.datasets import data_root

    d = data_root() / "ogbg_molhiv"
    if not (d / "raw").is_dir() and not (d / "mapping" / "mol.csv.gz").is_file():
        return f"no {d}/raw or {d}/mapping/mol.csv.gz in the data root"
    if not (d / "split" / "scaffold").is_dir():
        return f"no official split in {d}/split/scaffold"
    return None


DATASETS = {
    "chembl": ("molecules_chembl.yaml", None),
    "ogbg-molhiv": ("molecules_molhiv.yaml", _molhiv_missing),
}

if __name__ == "__main__":
    sys.exit(main("molecules", __doc__, DATASETS))
