"""Distillation losses: pure functions plus thin ``nn.Module`` wrappers, resolvable by name.

Families (one module each): ``output`` (KD), ``feature`` (FitNet, AT, VID, AB), ``relation``
(SP, RKD, PKT, CC, IRG), ``graph`` (LSP, GSP, GKD, G-CRD), ``gnn`` (HKD, MHGD).
Importing this package registers every method under its name.
"""

from graphkd.losses import feature, gnn, graph, output, relation  # noqa: F401  (registers)
from graphkd.losses.base import LOSSES, DistillLoss, get_loss, loss_names, register

__all__ = ["LOSSES", "DistillLoss", "get_loss", "loss_names", "register"]
