"""Distillation losses: pure functions plus thin ``nn.Module`` wrappers, resolvable by name.

Families (one module each): ``output`` (KD), ``feature`` (FitNet, AT, VID, AB), ``relation``
(SP, RKD, PKT, CC, IRG), ``graph`` (LSP, GSP, GKD, G-CRD).
"""

from graphkd.losses.base import LOSSES, DistillLoss, get_loss, loss_names, register

__all__ = ["LOSSES", "DistillLoss", "get_loss", "loss_names", "register"]
