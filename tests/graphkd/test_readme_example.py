"""The README's "Distilling a GNN in a few lines" example trains a working student.

The Distiller statement is taken from README.md itself (so the README cannot drift from what is
tested) and run as written: the ``gin_teacher`` / ``gcn_student`` presets on RDKit's embedded
ChEMBL molecules (a small scaffold-split subset, to stay fast), the teacher trained briefly.
The student must learn from the labels: its cross-entropy (the task term divided by its
weight) falls below ln 2 by a margin -- the README's former weights (task 0.1, KD 0.9, LSP 10)
kept it at ln 2 in every epoch and fail this test -- its validation ROC-AUC is high, and fit's
loss-weight check raises no warning.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_distiller_statement(path: Path = README) -> ast.Assign:
    """The ``distiller = Distiller(...)`` statement of the README's GNN example."""
    text = path.read_text(encoding="utf-8")
    section = text.split("## Distilling a GNN in a few lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "distiller":
            return node
    raise AssertionError("the README example has no `distiller = Distiller(...)` statement")


def _loaders(n_train: int, n_teacher: int):
    """Loaders of a seeded subset of the scaffold split's train part (the teacher's is the
    first ``n_teacher`` of the student's) and of the whole validation part."""
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader

    from graphkd.datasets import load_chembl_series, scaffold_split

    graphs = load_chembl_series()
    tr, va, _ = scaffold_split([g.smiles for g in graphs])
    data = [Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr, y=g.y.reshape(-1))
            for g in graphs]
    pick = torch.Generator().manual_seed(0)
    train = [data[int(i)] for i in tr[torch.randperm(len(tr), generator=pick)[:n_train]]]
    val = [data[int(i)] for i in va]

    def loader(items):
        return DataLoader(items, batch_size=32, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    return loader(train), loader(train[:n_teacher]), DataLoader(val, batch_size=256)


def run_readme_example(path: Path = README, *, n_train: int = 320, n_teacher: int = 160,
                       teacher_epochs: int = 2, epochs: int = 4):
    """Train the README's teacher briefly, then its Distiller; return ``(result, distiller)``."""
    from graphkd import Distiller, Match, fit
    from graphkd.models import build_model

    torch.manual_seed(0)
    train_loader, teacher_loader, val_loader = _loaders(n_train, n_teacher)
    teacher = build_model("gin_teacher", num_classes=2)
    fit(teacher, teacher_loader, epochs=teacher_epochs, progress=False, seed=0)
    torch.manual_seed(0)
    student = build_model("gcn_student", num_classes=2)
    scope = {"Distiller": Distiller, "Match": Match, "nn": nn, "teacher": teacher,
             "student": student, "train_loader": train_loader}
    stmt = ast.Module(body=[readme_distiller_statement(path)], type_ignores=[])
    exec(compile(stmt, str(path), "exec"), scope)  # noqa: S102 - the README's own code
    distiller = scope["distiller"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fit(distiller, train_loader, val_loader, epochs=epochs, metric="roc_auc",
                  progress=False, seed=0)
    res.weight_warnings = [str(w.message) for w in caught if "loss term" in str(w.message)]
    return res, distiller


@pytest.mark.slow
def test_readme_gnn_example_trains_a_working_student():
    res, distiller = run_readme_example()
    ce = [row["task"] / distiller.task_weight for row in res.history]
    # measured (seed 0): new weights 0.683 -> 0.628, validation 0.935; the former weights
    # 0.697 -> 0.693 (flat at ln 2), validation 0.853, LSP 1,400x and RKD 130x the task's norm
    assert ce[-1] < math.log(2) - 0.05, ce          # learns from the labels
    assert ce[-1] < ce[0] - 0.03, ce                 # and keeps learning
    assert res.best_metric > 0.9, res.best_metric    # chance is 0.5
    assert not res.weight_warnings, res.weight_warnings  # no term drowns the task term
