"""The base class and the name registry of distillation losses.

Every method is a pure function (the maths) plus a thin :class:`DistillLoss` module that holds
hyperparameters (and trainable heads, if any) and calls it. Modules register under a short name
so that configs and the Distiller can say ``method="lsp"``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from graphkd._checks import checked_call
from graphkd.registry import Registry

__all__ = ["DistillLoss", "LOSSES", "register", "get_loss", "loss_names"]

#: name -> loss class; filled by :func:`register`.
LOSSES: Registry[type[DistillLoss]] = Registry("distillation method")


class DistillLoss(nn.Module):
    """Base of every distillation loss: ``forward(f_s, f_t, **context) -> scalar``.

    Class attributes tell the caller (the Distiller) how to drive the loss:

    * ``context``: names of graph-context keyword arguments ``forward`` accepts, among
      ``"batch"`` (``[N]`` graph id of each node), ``"edge_index"`` (``[2, E]``), ``"pos"``.
      The Distiller passes exactly these, read from the PyG/DGL input.
    * ``needs_dims``: the constructor takes ``student_dim`` and ``teacher_dim`` (feature
      widths) to build trainable heads/adapters; the Distiller supplies them after its first
      forward pass.
    * ``level``: ``"logits"`` (class scores), ``"batch"`` (one embedding per sample, relation
      across the batch) or ``"node"`` (node/point features, relations inside each graph).
    * ``requires_pretraining``: a two-stage method (MHGD) whose heads are first trained on the
      teacher alone; it then provides ``pretrain_loss(f_t, **context)``,
      ``pretrain_parameters()``, ``finish_pretraining()`` and a ``pretrained`` flag, and
      :func:`graphkd.train.fit` runs that stage before distillation.

    * ``family``: ``"output"``, ``"feature"``, ``"relation"``, ``"graph"`` or ``"gnn"`` (how
      reports group methods; a user's own loss defaults to ``"custom"``).
    * ``global_batch``: the loss relates samples across the batch (SP, RKD, G-CRD, ...), so
      under DDP it must see the global batch: features are gathered over ranks with gradients.

    A match over a tuple of layer paths (IRG, MHGD) receives tuples of tensors, and for
    ``needs_dims`` methods tuples of widths.

    Calling a loss (``loss(f_s, f_t, ...)``) goes through one boundary shared by every method
    (:func:`graphkd._checks.checked_call`):

    * the teacher's features ``f_t`` are detached (constants: trainable teacher-side heads,
      G-CRD's or HKD's, still train, on the detached features);
    * an empty batch raises ``ValueError("<name>: got an empty batch (0 samples); ...")``;
    * float16 / bfloat16 features are computed in float32 with autocast off (heads run in their
      float32 parameters), and the loss is returned in the features' dtype;
    * a non-finite loss from finite features raises ``FloatingPointError`` naming the method
      and the features' scale (one host synchronisation per call).
    """

    name: ClassVar[str] = ""
    context: ClassVar[tuple[str, ...]] = ()
    needs_dims: ClassVar[bool] = False
    level: ClassVar[str] = "batch"
    requires_pretraining: ClassVar[bool] = False
    family: ClassVar[str] = "custom"
    global_batch: ClassVar[bool] = False

    def forward(self, f_s: Tensor, f_t: Tensor, **context) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 1:
            args = (args[0], _detached(args[1]), *args[2:])
        elif "f_t" in kwargs:
            kwargs = {**kwargs, "f_t": _detached(kwargs["f_t"])}
        return checked_call(self.name or type(self).__name__, super().__call__, args, kwargs,
                            module=self)


def _detached(x: Any) -> Any:
    """``x.detach()`` for a tensor, element-wise for a layer list/tuple."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(v) for v in x) if type(x) in (list, tuple) else x
    return x


register = LOSSES.register
loss_names = LOSSES.names


def get_loss(
    method: str | DistillLoss, *, student_dim: int | None = None, teacher_dim: int | None = None,
    **kwargs,
) -> DistillLoss:
    """Resolve a loss from a name (with hyperparameters) or pass an instance through.

    Args:
        method: a registered name (case-insensitive, e.g. ``"lsp"``) or a ``DistillLoss``.
        student_dim, teacher_dim: feature widths, forwarded to losses with ``needs_dims``.
        **kwargs: hyperparameters of the loss's constructor.

    Raises:
        ValueError: unknown name (the message lists the valid ones), or a loss with trainable
            heads asked for without widths.
    """
    return LOSSES.build(method, instance_of=nn.Module, student_dim=student_dim,
                        teacher_dim=teacher_dim, **kwargs)
