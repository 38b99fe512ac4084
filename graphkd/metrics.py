"""The one metric table: metric name -> function of (logits, labels) + direction.

Every evaluation in graphkd goes through it: :func:`graphkd.train.evaluate` and the model
selection of :func:`graphkd.train.fit`, the experiment pipeline (a config's ``metric:``) and the
reports. Names are looked up like every name in graphkd (:class:`graphkd.registry.Registry`:
case-insensitive, ``-``/``_`` ignored, so ``"ROC-AUC"`` works); the canonical spellings are

=============  ======================================================  ========  ===========
name           what                                                    better    table label
=============  ======================================================  ========  ===========
``accuracy``   fraction of correct predictions                         higher    accuracy
``macro_f1``   unweighted mean of the per-class F1 scores              higher    macro-F1
``roc_auc``    area under the ROC curve (binary, one-vs-rest, tasks)   higher    ROC-AUC
=============  ======================================================  ========  ===========

The spelling ``"rocauc"`` (older configs) is still accepted and warns (``DeprecationWarning``).

**Shapes.** ``fn(logits, y)`` takes the concatenated outputs of a split:

* class labels: logits ``[B, C>1]`` with ``y`` of ``B`` entries (``[B]`` or ``[B, 1]``):
  prediction ``argmax``; ROC-AUC of two classes on the log-odds ``z_1 - z_0`` (no softmax
  saturation ties), of more classes one-vs-rest on the softmax;
* one logit per task: logits ``[B]``, ``[B, 1]`` or ``[B, T]`` with as many labels: prediction
  ``logit > 0``; ROC-AUC per task, averaged over the tasks whose labels hold both classes.

NaN labels (OGB's missing values) are ignored by ROC-AUC. ROC-AUC is undefined (``nan``, which
model selection skips) when no task has both classes among its labels.

Example:
    >>> compute_metric("roc_auc", torch.tensor([[0.1], [0.9]]), torch.tensor([[0.0], [1.0]]))
    1.0
    >>> get_metric("accuracy").higher_is_better
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from graphkd.registry import Registry

__all__ = ["Metric", "METRICS", "get_metric", "compute_metric", "register_metric",
           "metric_names"]

#: Spellings still accepted with a DeprecationWarning -> canonical name.
DEPRECATED = {"rocauc": "roc_auc"}


@dataclass(frozen=True)
class Metric:
    """A metric of the table.

    Attributes:
        name: canonical name (``"roc_auc"``).
        fn: ``fn(logits, y) -> float`` on CPU float32 logits and CPU labels.
        higher_is_better: direction of model selection.
        label: how tables and results write it (``"ROC-AUC"``).
        percent: tables show it in percent (a fraction in ``[0, 1]``).
    """

    name: str
    fn: Callable[[Tensor, Tensor], float]
    higher_is_better: bool = True
    label: str = ""
    percent: bool = False

    def __call__(self, logits: Tensor, y: Tensor) -> float:
        """The metric of ``logits`` for ``y`` (moved to the CPU, logits as float32)."""
        return float(self.fn(logits.detach().float().cpu(), y.detach().cpu()))

    def better(self, value: float, best: float) -> bool:
        """Whether ``value`` improves on ``best`` (a non-finite ``best`` is beaten by any
        finite value; a non-finite ``value`` never improves; ties do not improve)."""
        if not math.isfinite(value):
            return False
        if not math.isfinite(best):
            return True
        return value > best if self.higher_is_better else value < best


#: name -> :class:`Metric`.
METRICS: Registry[Metric] = Registry("metric")
metric_names = METRICS.names


def register_metric(name: str, fn: Callable[[Tensor, Tensor], float], *,
                    higher_is_better: bool = True, label: str | None = None,
                    percent: bool = False) -> Metric:
    """Add a metric to the table (usable as ``metric=name`` in ``fit`` and in configs)."""
    return METRICS.add(name, Metric(name, fn, higher_is_better, label or name, percent))


def get_metric(metric: str | Metric) -> Metric:
    """The :class:`Metric` named ``metric`` (an instance is passed through).

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str) and metric.lower() in DEPRECATED:
        new = DEPRECATED[metric.lower()]
        warnings.warn(f"metric {metric!r} is deprecated; write {new!r}.", DeprecationWarning,
                      stacklevel=3)
        metric = new
    return METRICS.get(metric)


def compute_metric(metric: str | Metric, logits: Tensor, y: Tensor) -> float:
    """``metric`` of predictions ``logits`` (``[B, C]``, ``[B, 1]`` or ``[B, T]``) for ``y``.

    Raises:
        ValueError: an unknown metric (listing the valid ones).
    """
    return get_metric(metric)(logits, y)


# --------------------------------------------------------------------------- the functions
def _class_labels(logits: Tensor, y: Tensor) -> bool:
    """Whether ``y`` holds one class label per row of multi-class ``logits``."""
    return logits.dim() == 2 and logits.shape[1] > 1 and y.numel() == logits.shape[0]


def _predictions(logits: Tensor, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if _class_labels(logits, y):
        return logits.argmax(1).numpy(), y.reshape(-1).long().numpy()
    return (logits.reshape(y.shape) > 0).long().numpy().ravel(), y.long().numpy().ravel()


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of correct predictions (``argmax`` of class logits, ``logit > 0`` per task)."""
    from sklearn.metrics import accuracy_score

    pred, true = _predictions(logits, y)
    return float(accuracy_score(true, pred))


def macro_f1(logits: Tensor, y: Tensor) -> float:
    """Unweighted mean over classes of the F1 score."""
    from sklearn.metrics import f1_score

    pred, true = _predictions(logits, y)
    return float(f1_score(true, pred, average="macro"))


def _binary_auc(score: Tensor, true: Tensor) -> float:
    """ROC-AUC of ``score`` for 0/1 labels ``true`` (NaN labels dropped; ``nan`` when the kept
    labels hold a single class)."""
    from sklearn.metrics import roc_auc_score

    true, score = true.double(), score.double()
    keep = ~torch.isnan(true)
    true, score = true[keep], score[keep]
    if true.unique().numel() < 2:
        return float("nan")
    return float(roc_auc_score(true.numpy(), score.numpy()))


def roc_auc(logits: Tensor, y: Tensor) -> float:
    """ROC-AUC: binary (two class logits: on ``z_1 - z_0``; one logit), one-vs-rest over
    ``C > 2`` classes, or the mean over tasks of ``[B, T]`` logits; NaN labels ignored."""
    if _class_labels(logits, y):
        if logits.shape[1] == 2:
            return _binary_auc(logits[:, 1] - logits[:, 0], y.reshape(-1))
        from sklearn.metrics import roc_auc_score

        true = y.reshape(-1)
        if true.is_floating_point():
            keep = ~torch.isnan(true)
            true, logits = true[keep], logits[keep]
        prob = torch.softmax(logits, 1).numpy()
        return float(roc_auc_score(true.long().numpy(), prob, multi_class="ovr",
                                   labels=list(range(logits.shape[1]))))
    score = logits.reshape(y.shape).reshape(y.shape[0], -1)
    true = y.reshape(y.shape[0], -1)
    aucs = [a for a in (_binary_auc(score[:, t], true[:, t]) for t in range(true.shape[1]))
            if math.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


register_metric("accuracy", accuracy, label="accuracy", percent=True)
register_metric("macro_f1", macro_f1, label="macro-F1", percent=True)
register_metric("roc_auc", roc_auc, label="ROC-AUC", percent=True)
