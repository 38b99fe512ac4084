r"""Loss-weight diagnostics: each term's gradient norm on the student, against the task term's.

A Distiller's objective is a sum of weighted terms, ``L = sum_k L_k`` (``"task"``, ``"kd"``,
``"lsp[convs.1]"``, ...; :mod:`graphkd.distill`). Their raw scales differ by orders of magnitude
(a KL summed over a kNN row, an InfoNCE of ``log M``, RKD's distance + angle terms with their
factors 25 and 50, a cross-entropy of at most ``ln C``), so a weight that looks moderate can make
one term's gradient drown every other one. What the optimizer sees is the gradient, hence the
check compares gradients, not values::

    g_k = || d L_k / d theta_student ||_2        (over every trainable student tensor)
    r_k = g_k / g_task

measured on the first ``steps`` training steps of :func:`graphkd.train.fit` (mean over them).
After those steps one ``LossWeightWarning`` per offending term names it, its ratio and a weight
that would give it the task term's gradient norm (``weight / r_k``):

* ``r_k > high`` (default 100): the term dominates the task term;
* ``r_k < low`` (default 1e-3): the term barely trains the student;
* ``|L_k| / w_k <= zero`` and ``g_k / w_k <= zero`` (default 1e-7; ``w_k`` the term's weight,
  so that a tiny weight is not mistaken for a dead term) on every measured step: the term is ~0
  from the start (e.g. near-collinear or constant teacher embeddings, a student already equal to
  the teacher) and teaches nothing.

Terms that do not depend on the student's parameters (a mutual peer's own ``"peer/..."`` terms)
are recorded as ``nan`` and not judged. Without a ``"task"`` term only the ``~0`` check runs.

Cost and guarantees: one extra ``torch.autograd.grad`` per term on the measured steps only
(``retain_graph=True``, so the step's own ``backward`` still runs on the same graph). It reads
gradients without accumulating them into ``.grad`` and draws no random numbers, so training is
unchanged bit for bit (tested). Under DDP (several processes) :func:`graphkd.train.fit` skips the
check: a per-term ``autograd.grad`` through DDP's reducer hooks would be unsafe, and the
single-process check on the same configuration gives the same diagnosis.

Example:
    >>> check = WeightCheck(steps=1)
    >>> out, losses = distiller(batch)
    >>> check.measure(losses, distiller.student.parameters())
    >>> norms = check.finish(term_weights(distiller))   # warns; {"task": 0.8, "kd": 0.3, ...}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["LossWeightWarning", "WeightCheck", "term_grad_norms", "term_weights",
           "GRADNORM_PREFIX"]

#: Prefix of the gradient-norm columns in ``fit``'s history and ``log.csv``.
GRADNORM_PREFIX = "gradnorm/"


class LossWeightWarning(UserWarning):
    """A loss term's gradient dominates, vanishes against, or is ~0 next to the task term's."""


def term_grad_norms(losses: Mapping[str, Tensor], params: Iterable[Tensor]) -> dict[str, Tensor]:
    r"""The L2 norm of each term's gradient over ``params``, without touching ``.grad``.

    ``g_k = sqrt(sum_p ||d L_k / d p||^2)``, computed with ``torch.autograd.grad(L_k, params,
    retain_graph=True, allow_unused=True)`` (the graph stays usable for the step's backward).

    Args:
        losses: name -> scalar term (e.g. a Distiller's loss dict).
        params: the tensors to differentiate against (e.g. the student's parameters); those
            without ``requires_grad`` are ignored.

    Returns:
        name -> 0-dim float tensor; ``nan`` for a term that does not depend on ``params``.

    Raises:
        ValueError: no parameter requires grad, or a term is not a scalar.

    Example:
        >>> norms = term_grad_norms({"a": (w ** 2).sum()}, [w])   # = 2 ||w||
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("term_grad_norms: no parameter requires grad.")
    out: dict[str, Tensor] = {}
    for name, value in losses.items():
        if value.numel() != 1:
            raise ValueError(f"term_grad_norms: {name!r} is not a scalar "
                             f"(shape {tuple(value.shape)}).")
        grads = []
        if value.requires_grad:
            grads = [g for g in torch.autograd.grad(value, params, retain_graph=True,
                                                    allow_unused=True) if g is not None]
        if not grads:
            out[name] = torch.tensor(float("nan"))
            continue
        sq = torch.stack([g.detach().double().pow(2).sum() for g in grads]).sum()
        out[name] = sq.sqrt()
    return out


def term_weights(distiller: nn.Module) -> dict[str, float]:
    """The user-set weight behind each loss key of a Distiller (for suggested weights).

    ``"task"`` -> ``task_weight``, the logits key(s) -> ``logits_weight``, a match's key ->
    its ``Match.weight`` (a ``Teacher.weight`` multiplies both and is left as it is).

    Example:
        >>> term_weights(distiller)
        {'task': 0.1, 'kd': 0.9, 'lsp[convs.1]': 10.0}
    """
    weights: dict[str, float] = {}
    if getattr(distiller, "task_loss", None) is not None:
        weights["task"] = float(distiller.task_weight)
    prefixes = getattr(distiller, "_prefix", [""])
    if getattr(distiller, "logits_name", None):
        for p in prefixes:
            weights[p + distiller.logits_name] = float(distiller.logits_weight)
    for spec in getattr(distiller, "_specs", []):
        weights[spec.key] = float(spec.match.weight)
    return weights


def _fmt(x: float) -> str:
    return f"{x:.3g}"


@dataclass
class WeightCheck:
    """Measure the terms' gradient norms on the first ``steps`` steps, then warn once per term.

    Attributes:
        steps: how many training steps to measure (0 turns the check off).
        high: warn when a term's gradient norm exceeds ``high`` x the task term's.
        low: warn when it is below ``low`` x the task term's.
        zero: a term whose unweighted value and gradient norm stay ``<= zero`` is reported as
            ~0 (unweighted: divided by its weight when :meth:`diagnose` gets the weights).
        reference: the key every term is compared with.
    """

    steps: int = 3
    high: float = 100.0
    low: float = 1e-3
    zero: float = 1e-7
    reference: str = "task"
    _norms: list[dict[str, Tensor]] = field(default_factory=list, repr=False, init=False)
    _values: list[dict[str, Tensor]] = field(default_factory=list, repr=False, init=False)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"WeightCheck.steps must be >= 0, got {self.steps}.")
        if not (0 < self.low < 1 < self.high) or not math.isfinite(self.high):
            raise ValueError(f"WeightCheck needs 0 < low < 1 < high < inf, got low={self.low}, "
                             f"high={self.high}.")

    @property
    def active(self) -> bool:
        """Whether the next step is still to be measured."""
        return len(self._norms) < self.steps

    def measure(self, losses: Mapping[str, Tensor], params: Iterable[Tensor]) -> None:
        """Record one step's per-term gradient norms (call before the step's ``backward``)."""
        self._norms.append(term_grad_norms(losses, params))
        self._values.append({k: v.detach().double().reshape(()) for k, v in losses.items()})

    def norms(self) -> dict[str, float]:
        """Mean gradient norm per term over the measured steps (``nan``: not a function of the
        student's parameters)."""
        keys = list(dict.fromkeys(k for step in self._norms for k in step))
        return {k: float(torch.stack([s[k].cpu() for s in self._norms if k in s]).mean())
                for k in keys}

    def diagnose(self, weights: Mapping[str, float] | None = None) -> dict[str, str]:
        """A message per offending term (none when all are balanced); see the module docstring.

        Args:
            weights: the user-set weight of each key (:func:`term_weights`), for the
                suggested weight in the messages.
        """
        weights = weights or {}
        norms = self.norms()
        ref = norms.get(self.reference, float("nan"))
        msgs: dict[str, str] = {}
        for key, g in norms.items():
            if key == self.reference or math.isnan(g):
                continue
            w = weights.get(key)
            scale = abs(w) if w else 1.0  # judge the unweighted term: a tiny weight is not ~0
            value = max((abs(float(s[key])) for s in self._values if key in s), default=0.0)
            if value / scale <= self.zero and g / scale <= self.zero:
                msgs[key] = (f"loss term {key!r} is ~0 from the start (unweighted |value| <= "
                             f"{_fmt(value / scale)}, gradient norm {_fmt(g / scale)} on the "
                             "student): it teaches nothing; check its layers (e.g. near-"
                             "collinear or constant teacher embeddings, a student equal to the "
                             "teacher).")
                continue
            if not math.isfinite(ref) or ref <= 0:
                continue
            ratio = g / ref
            if ratio > self.high:
                how = f"dominates the {self.reference!r} term's by {_fmt(ratio)}x"
            elif ratio < self.low:
                how = f"is {_fmt(ratio)}x the {self.reference!r} term's (it barely trains)"
            else:
                continue
            if ratio == 0:
                hint = "no weight helps: it is constant in the student's parameters"
            elif w:
                hint = (f"weight {_fmt(w)} -> ~{_fmt(w / ratio)} gives it the "
                        f"{self.reference!r} term's gradient norm")
            else:
                hint = (f"scale its weight by ~{_fmt(1 / ratio)} to match the "
                        f"{self.reference!r} term")
            msgs[key] = (f"loss term {key!r}: its gradient norm on the student ({_fmt(g)}) "
                         f"{how} ({_fmt(ref)}); {hint}. Loss values are not comparable across "
                         "methods (sums vs means); see docs/loss_weights.md.")
        return msgs

    def finish(self, weights: Mapping[str, float] | None = None, *,
               stacklevel: int = 2) -> dict[str, float]:
        """Warn once per offending term (:class:`LossWeightWarning`); return :meth:`norms`."""
        for msg in self.diagnose(weights).values():
            warnings.warn(msg, LossWeightWarning, stacklevel=stacklevel + 1)
        return self.norms()
