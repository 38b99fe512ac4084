"""The loss-weight check: per-term gradient norms on the student, warnings, no effect on training.

Real models (MLPs on a real tensor dataset) and real methods (KD, RKD, SP, G-CRD) through the
Distiller and ``fit``; the norms are checked against a direct ``torch.autograd.grad``.
"""

from __future__ import annotations

import copy
import csv
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graphkd.distill import Distiller, Match
from graphkd.train import fit, loss_columns
from graphkd.weights_check import (
    LossWeightWarning,
    WeightCheck,
    term_grad_norms,
    term_weights,
)


def _data(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 2))


def _loader() -> DataLoader:
    return DataLoader(_data(), batch_size=32, shuffle=False)


def _distiller(matches, *, student=None, teacher=None, **kw) -> Distiller:
    torch.manual_seed(0)
    teacher = teacher if teacher is not None else _mlp(16).eval()
    student = student if student is not None else _mlp(8)
    return Distiller(teacher, student, matches, task_loss=nn.CrossEntropyLoss(),
                     example=next(iter(_loader())), **kw)


def _fit(d: Distiller, **kw):
    return fit(d, _loader(), epochs=1, lr=0.01, progress=False, seed=0, restore_best=False,
               **kw)


def _direct(losses: dict, params: list) -> dict[str, float]:
    """Independent formula: sqrt of the summed squares of every gradient entry, in float64."""
    out = {}
    for k, v in losses.items():
        grads = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([g.reshape(-1).double() for g in grads if g is not None])
        out[k] = float(torch.linalg.vector_norm(flat))
    return out


def _weight_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, LossWeightWarning)]


def test_term_grad_norms_known_formula_and_grad_untouched():
    w = torch.tensor([3.0, -4.0], requires_grad=True)
    v = torch.ones(3, requires_grad=True)
    norms = term_grad_norms({"sq": (w ** 2).sum(), "lin": 2 * v.sum(), "const": w.sum() * 0},
                            [w, v])
    assert float(norms["sq"]) == pytest.approx(10.0)        # ||2 w|| = 2 * 5
    assert float(norms["lin"]) == pytest.approx(2 * math.sqrt(3))
    assert float(norms["const"]) == 0.0
    assert w.grad is None and v.grad is None                # nothing accumulated
    other = torch.ones(2, requires_grad=True)
    assert math.isnan(float(term_grad_norms({"x": other.sum()}, [w])["x"]))  # not connected
    with pytest.raises(ValueError, match="no parameter requires grad"):
        term_grad_norms({"sq": (w ** 2).sum()}, [torch.ones(2)])


def test_diagnose_a_constant_term_and_a_missing_task_term():
    w = torch.tensor([3.0, -4.0], requires_grad=True)
    check = WeightCheck(steps=1)
    check.measure({"task": (w ** 2).sum(), "const": w.sum() * 0 + 1.0}, [w])
    msgs = check.diagnose({"task": 1.0, "const": 2.0})
    assert list(msgs) == ["const"] and "is 0x" in msgs["const"] and "no weight helps" in msgs[
        "const"]
    alone = WeightCheck(steps=1)  # no task term: only the ~0 check runs
    alone.measure({"a": (w ** 2).sum() * 1e3, "zero": w.sum() * 0}, [w])
    assert list(alone.diagnose()) == ["zero"]


def test_fit_norms_equal_a_direct_autograd_computation(tmp_path):
    matches = [Match("3", "3", "rkd", weight=0.1), Match("1", "1", "fitnet")]
    d = _distiller(matches, logits="kd")
    res = _fit(d, check_weights=1, out_dir=tmp_path)
    ref = _distiller(matches, logits="kd")  # same seed: the weights fit started from
    ref.train()
    torch.manual_seed(0)
    _, losses = ref(next(iter(_loader())))
    direct = _direct(losses, [p for p in ref.student.parameters() if p.requires_grad])
    assert set(res.grad_norms) == {"task", "kd", "rkd[3]", "fitnet[1]"}
    for k, v in direct.items():
        assert res.grad_norms[k] == pytest.approx(v, rel=1e-6), k
    row = res.history[0]
    assert row["gradnorm/task"] == res.grad_norms["task"]
    assert "gradnorm/task" not in loss_columns(row)          # not a loss
    with open(tmp_path / "log.csv") as fh:
        header = next(csv.reader(fh))
    assert "gradnorm/rkd[3]" in header


def test_check_does_not_change_training():
    """The extra autograd.grad calls touch neither .grad nor any RNG: identical weights."""
    matches = [Match("3", "3", "gcrd", params={"proj_dim": 4, "seed": 0}),
               Match("3", "3", "rkd")]
    states = []
    for steps in (0, 3):
        d = _distiller(matches, logits="kd")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LossWeightWarning)
            fit(d, _loader(), epochs=2, lr=0.01, progress=False, seed=0, check_weights=steps)
        states.append(d.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())


def test_warns_once_for_a_dominating_term():
    d = _distiller([Match("3", "3", "rkd", weight=1e4)], logits="kd")
    with pytest.warns(LossWeightWarning) as record:
        res = _fit(d, check_weights=2)
    msgs = _weight_warnings(record)
    assert len(msgs) == 1 and "'rkd[3]'" in msgs[0] and "dominates" in msgs[0]
    ratio = res.grad_norms["rkd[3]"] / res.grad_norms["task"]
    assert ratio > 100
    suggested = float(msgs[0].split("-> ~")[1].split()[0])
    assert suggested == pytest.approx(1e4 / ratio, rel=2e-3)  # equal norms with the task


def test_warns_for_a_vanishing_term():
    d = _distiller([Match("1", "1", "fitnet", weight=1e-7)])
    with pytest.warns(LossWeightWarning) as record:
        _fit(d)
    msgs = _weight_warnings(record)
    assert len(msgs) == 1 and "'fitnet[1]'" in msgs[0] and "barely trains" in msgs[0]


def test_warns_for_a_term_that_is_zero_from_the_start():
    """A student equal to the teacher (no dropout, no BatchNorm): SP's graphs coincide."""
    torch.manual_seed(1)
    teacher = _mlp(8).eval()
    d = _distiller([Match("3", "3", "sp")], teacher=teacher, student=copy.deepcopy(teacher))
    with pytest.warns(LossWeightWarning) as record:
        res = _fit(d, check_weights=1)
    msgs = _weight_warnings(record)
    assert len(msgs) == 1 and "'sp[3]'" in msgs[0] and "~0 from the start" in msgs[0]
    assert res.grad_norms["sp[3]"] == 0.0


def test_balanced_weights_do_not_warn():
    d = _distiller([Match("3", "3", "rkd", weight=0.1), Match("1", "1", "fitnet")],
                   logits="kd")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossWeightWarning)
        res = _fit(d)
    ratios = {k: v / res.grad_norms["task"] for k, v in res.grad_norms.items()}
    assert all(1e-3 < r < 100 for r in ratios.values()), ratios


def test_term_weights_and_bad_thresholds():
    d = _distiller([Match("3", "3", "rkd", weight=0.5)], logits="kd", logits_weight=0.9,
                   task_weight=0.1)
    assert term_weights(d) == {"task": 0.1, "kd": 0.9, "rkd[3]": 0.5}
    with pytest.raises(ValueError, match="low < 1 < high"):
        WeightCheck(high=0.5)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        WeightCheck(steps=-1)


def test_configured_thresholds_flag_exactly_the_terms_beyond_them():
    check = WeightCheck(steps=2, high=1.5, low=0.5)
    d = _distiller([Match("3", "3", "rkd", weight=0.1), Match("1", "1", "fitnet")], logits="kd")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = _fit(d, check_weights=check)
    ratios = {k: v / res.grad_norms["task"] for k, v in res.grad_norms.items() if k != "task"}
    expected = {k for k, r in ratios.items() if r > 1.5 or r < 0.5}
    warned = {k for k in ratios for m in _weight_warnings(record) if f"'{k}'" in m}
    assert expected and warned == expected, ratios
    assert check.norms() == {}  # fit measured on its own copy


def test_a_resumed_run_reads_the_norms_back_and_does_not_measure_again(tmp_path):
    first = _fit(_distiller([Match("1", "1", "fitnet")], logits="kd"), out_dir=tmp_path)
    d = _distiller([Match("1", "1", "fitnet")], logits="kd")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossWeightWarning)
        res = fit(d, _loader(), epochs=2, lr=0.01, progress=False, seed=0, out_dir=tmp_path,
                  resume=True, check_weights=WeightCheck(steps=1, high=1.0 + 1e-9,
                                                         low=1.0 - 1e-9))  # would warn
    assert res.grad_norms == first.grad_norms and len(res.history) == 2
    assert not any(k.startswith("gradnorm/") for k in res.history[1])
