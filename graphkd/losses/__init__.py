"""Distillation losses: pure functions plus thin ``nn.Module`` wrappers, resolvable by name.

Families (a module each; a family's long member has its own module, re-exported by the family):
``output`` (KD), ``feature`` (FitNet, AT, VID, AB), ``relation`` (SP, PKT, CC, IRG; RKD in
``rkd``), ``graph`` (GSP, GKD, G-CRD; LSP in ``lsp``), ``gnn`` (HKD, MHGD). ``heads`` is the one
place projection heads / adapters are built. Each method's capability flags (``level``,
``context``, ``needs_dims``, ``global_batch``, ``requires_pretraining``, ``family``) are class
attributes of its :class:`DistillLoss`. Importing this package registers every method under its
name.
"""

from graphkd.losses import (  # noqa: F401  (registers)
    feature,
    gnn,
    graph,
    heads,
    lsp,
    output,
    relation,
    rkd,
)
from graphkd.losses.base import LOSSES, DistillLoss, get_loss, loss_names, register

__all__ = ["LOSSES", "DistillLoss", "get_loss", "loss_names", "register"]
