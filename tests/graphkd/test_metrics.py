"""The one metric table: known values, shapes, NaN labels, names and the deprecated spelling."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from graphkd.metrics import METRICS, Metric, compute_metric, get_metric, metric_names


def test_metrics_known_numbers():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert compute_metric("accuracy", logits, y) == 0.75
    # class 0: P=1/2, R=1 -> F1=2/3; class 1: P=1, R=2/3 -> F1=0.8
    assert math.isclose(compute_metric("macro_f1", logits, y), (2 / 3 + 0.8) / 2)
    s = torch.tensor([0.1, 0.4, 0.35, 0.8])
    yb = torch.tensor([0, 0, 1, 1])
    assert compute_metric("roc_auc", s[:, None], yb[:, None]) == 0.75  # one logit column
    two = torch.stack([torch.zeros(4), s], 1)
    assert compute_metric("roc_auc", two, yb) == 0.75  # log-odds z1 - z0 of two columns
    assert compute_metric("accuracy", s[:, None] - 0.3, yb[:, None].float()) == 0.75
    # multi-task with a missing label (NaN), OGB-style mean over tasks
    scores = torch.tensor([[0.1, 0.9], [0.4, 0.5], [0.35, 0.2], [0.8, 0.3]])
    labels = torch.tensor([[0.0, 1.0], [1.0, math.nan], [1.0, 0.0], [0.0, 1.0]])
    assert compute_metric("roc_auc", scores, labels) == 0.75  # task 0: 0.5, task 1: 1.0
    three = torch.eye(3).repeat(2, 1) * 5
    assert compute_metric("roc_auc", three, torch.tensor([0, 1, 2, 0, 1, 2])) == 1.0
    with pytest.raises(ValueError, match=r"unknown metric 'auc'.*valid"):
        compute_metric("auc", logits, y)


def test_accuracy_is_the_exact_fraction():
    logits = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 44)
    y = torch.zeros(49, dtype=torch.long)
    assert compute_metric("accuracy", logits, y) == 5 / 49  # not a float32 rounding


def test_roc_auc_nan_labels_and_undefined_splits():
    # one logit column, labels [N, 1] with a NaN: scores 0,1,1,5 vs labels 0,0,1,1
    yb = torch.tensor([[0.0], [0.0], [1.0], [1.0], [float("nan")]])
    sb = torch.tensor([[0.0], [1.0], [1.0], [5.0], [9.0]])
    assert compute_metric("roc_auc", sb, yb) == pytest.approx(0.875)
    # two class logits with float labels holding a NaN: the log-odds, NaN dropped
    two = torch.cat([torch.zeros(5, 1), sb], 1)
    assert compute_metric("roc_auc", two, yb) == pytest.approx(0.875)
    # saturated softmax probabilities would tie; the log-odds keep the order
    big = torch.tensor([[0.0, 40.0], [0.0, 50.0], [0.0, 60.0]])
    assert compute_metric("roc_auc", big, torch.tensor([0, 0, 1])) == 1.0
    # a single class among the labels: undefined, nan (model selection skips it)
    assert math.isnan(compute_metric("roc_auc", sb[:2], yb[:2]))


def test_names_are_normalised_and_rocauc_is_deprecated():
    assert metric_names() == ["accuracy", "macro_f1", "roc_auc"]
    assert get_metric("ROC-AUC") is METRICS["roc_auc"] and get_metric("Macro-F1").name == "macro_f1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # canonical spellings do not warn
        get_metric("roc_auc")
    with pytest.warns(DeprecationWarning, match="'rocauc' is deprecated; write 'roc_auc'"):
        assert get_metric("rocauc") is METRICS["roc_auc"]
    m = METRICS["roc_auc"]
    assert (m.label, m.higher_is_better, m.percent) == ("ROC-AUC", True, True)
    assert get_metric(m) is m


def test_better_skips_non_finite_values_and_follows_the_direction():
    up = METRICS["accuracy"]
    assert up.better(0.5, float("nan")) and not up.better(float("nan"), 0.5)
    assert up.better(0.6, 0.5) and not up.better(0.5, 0.5)  # ties keep the first epoch
    down = Metric("loss", lambda z, y: 0.0, higher_is_better=False)
    assert down.better(0.4, 0.5) and not down.better(0.6, 0.5)
