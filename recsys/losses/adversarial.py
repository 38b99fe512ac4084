r"""Adversarial list distillation (after Chen et al., TOIS 2018, "Adversarial Distillation for
Efficient Recommendation with External Knowledge"): a discriminator tells the teacher's top-K
lists from lists drawn from the student, and the student (the generator) learns to make its
lists indistinguishable.

Pieces (all pure functions; :class:`ADKD` holds the hyperparameters):

* :class:`ListDiscriminator` ``D(u, L)``: a logit that list ``L = (i_1..i_K)`` of user ``u`` is
  the teacher's. Own user/item embeddings ``e``; the list is pooled with DCG position weights
  ``w_k = 1/log2(k+1)`` (``k = 1..K``), :math:`h = \sum_k w_k e_{i_k} / \sum_k w_k`, and
  ``D = MLP([e_u, h, e_u * h])``.
* :func:`discriminator_loss`: :math:`L_D = -\log\sigma(D(u, L^T_u)) - \log\sigma(-D(u, L^S_u))`
  per user (``logsigmoid``), reduced over users.
* :func:`plackett_luce_log_prob`: the log-probability of an ordered list drawn without
  replacement from ``softmax(s / tau)`` over the allowed items,
  :math:`\log\pi(L) = \sum_k [s_{i_k}/\tau - \log \sum_{j \in A \setminus \{i_1..i_{k-1}\}}
  e^{s_j/\tau}]`.
* :func:`generator_loss` (REINFORCE, the student's only adversarial gradient):
  :math:`L_G = -\frac{1}{U}\sum_u (r_u - \bar r)\,\log\pi(L^S_u)` with the non-saturating reward
  :math:`r_u = \log\sigma(D(u, L^S_u))` (detached) and the batch-mean baseline
  :math:`\bar r`. Gradients reach the student through its scores ``s`` only.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphkd._checks import check_nonempty, full_precision
from recsys.losses._base import ROW_REDUCTIONS, RankingLoss, check_lists, reduce_rows, register

__all__ = ["ListDiscriminator", "dcg_weights", "discriminator_loss", "plackett_luce_log_prob",
           "generator_loss", "ADKD"]


def dcg_weights(k: int, device: torch.device | str | None = None) -> Tensor:
    """``[k]`` DCG position weights ``1 / log2(r + 1)``, ``r = 1..k``."""
    r = torch.arange(1, k + 1, dtype=torch.float32, device=device)
    return 1.0 / torch.log2(r + 1.0)


class ListDiscriminator(nn.Module):
    """``D(u, L)``: logit that the ordered item list ``L`` of user ``u`` is the teacher's.

    Args:
        n_users, n_items: id ranges.
        dim: embedding width ``d``; the MLP is ``3d -> d -> 1`` (ReLU).

    Example:
        >>> d = ListDiscriminator(5, 10, dim=4)
        >>> d(torch.tensor([1, 2]), torch.tensor([[1, 2, 3], [4, 5, 6]])).shape
        torch.Size([2])
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 32) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def forward(self, users: Tensor, lists: Tensor) -> Tensor:
        """``users [U]``, ``lists [U, K]`` -> ``[U]`` logits."""
        w = dcg_weights(lists.shape[1], lists.device)
        h = (self.item(lists) * w[:, None]).sum(1) / w.sum()
        u = self.user(users)
        return self.mlp(torch.cat([u, h, u * h], dim=1)).squeeze(1)


@full_precision
def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, *,
                       reduction: str = "mean") -> Tensor:
    """``-log sigmoid(real) - log sigmoid(-fake)`` per user, reduced over users.

    Args:
        real_logits: ``[U]`` ``D`` of the teacher's lists.
        fake_logits: ``[U]`` ``D`` of the student's lists.
    """
    check_nonempty("adkd", real_logits, fake_logits)
    if real_logits.shape != fake_logits.shape or real_logits.dim() != 1:
        raise ValueError(f"real_logits {tuple(real_logits.shape)} and fake_logits "
                         f"{tuple(fake_logits.shape)} must be two [U] vectors.")
    per_row = -F.logsigmoid(real_logits) - F.logsigmoid(-fake_logits)
    return reduce_rows(per_row, reduction)


@full_precision
def plackett_luce_log_prob(scores: Tensor, lists: Tensor, *, tau: float = 1.0) -> Tensor:
    """``[U]`` log-probability of each ordered list under Plackett-Luce sampling without
    replacement from ``softmax(scores / tau)``; items with score ``-inf`` are not allowed.

    Args:
        scores: ``[U, I]`` (the student's, with gradients; masked entries ``-inf``).
        lists: ``[U, K]`` item ids, distinct per row, all allowed.
    """
    check_lists(scores, "scores", finite=False)
    if lists.dim() != 2 or lists.shape[0] != scores.shape[0]:
        raise ValueError(f"lists {tuple(lists.shape)} must be [U, K] with U={scores.shape[0]}")
    z = scores / tau
    picked = z.gather(1, lists)  # [U, K]
    if not bool(torch.isfinite(picked).all()):
        raise ValueError("a listed item has score -inf/NaN (masked items cannot be drawn)")
    # log of the mass left at step k = logaddexp(log-mass of the unlisted items, log-mass of
    # picks k..K-1): sums of positive terms only. (``total - cumsum(picked so far)`` cancels
    # catastrophically once the first picks hold nearly all the mass -- a peaked student or a
    # small tau -- and gave log-probabilities above 0 in float32.)
    floor = torch.finfo(z.dtype).min / 4  # finite stand-in for -inf: no NaN gradient when
    unlisted = z.scatter(1, lists, float("-inf")).clamp_min(floor)  # every item is listed
    log_rest = torch.logsumexp(unlisted, dim=1, keepdim=True)  # [U, 1]
    log_tail = torch.logcumsumexp(picked.flip(1), dim=1).flip(1)  # [U, K]: picks k..K-1
    return (picked - torch.logaddexp(log_tail, log_rest)).sum(1)


@full_precision
def generator_loss(log_prob: Tensor, fake_logits: Tensor, *, baseline: bool = True,
                   reduction: str = "mean") -> Tensor:
    """REINFORCE: ``-(r - mean(r)) * log_prob`` per user, ``r = log sigmoid(D)`` (detached).

    Args:
        log_prob: ``[U]`` :func:`plackett_luce_log_prob` of the student's sampled lists.
        fake_logits: ``[U]`` ``D`` of those lists (only their values are used).
        baseline: subtract the batch-mean reward (variance reduction; unbiased).
    """
    check_nonempty("adkd", log_prob, fake_logits)
    if log_prob.shape != fake_logits.shape or log_prob.dim() != 1:
        raise ValueError(f"log_prob {tuple(log_prob.shape)} and fake_logits "
                         f"{tuple(fake_logits.shape)} must be two [U] vectors.")
    reward = F.logsigmoid(fake_logits.detach())
    if baseline:
        reward = reward - reward.mean()
    return reduce_rows(-reward * log_prob, reduction)


@register("adkd")
class ADKD(RankingLoss):
    """``forward(users, teacher_lists, student_lists, student_scores)`` ->
    ``L_G + disc_weight * L_D`` (see the module docstring).

    Args:
        n_users, n_items: id ranges (the discriminator's embeddings).
        k: list length (the teacher's top-``k``; the student draws ``k`` items).
        dim: discriminator width.
        tau: the student's sampling temperature.
        disc_weight: weight of ``L_D`` (the discriminator's step size relative to the student's
            adversarial step; both are multiplied by ``distill_weight`` in the wrapper).
        baseline: batch-mean reward baseline.
        reduction: over users.
    """

    inputs: ClassVar[str] = "users, teacher lists, student lists and student full scores"

    def __init__(self, n_users: int, n_items: int, k: int = 10, dim: int = 32,
                 tau: float = 1.0, disc_weight: float = 1.0, baseline: bool = True,
                 reduction: str = "mean") -> None:
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not float(tau) > 0 or not math.isfinite(float(tau)):
            raise ValueError(f"tau must be a positive number, got {tau}")
        if reduction not in ROW_REDUCTIONS:
            raise ValueError(f"reduction must be one of {ROW_REDUCTIONS}, got {reduction!r}")
        self.k, self.tau, self.disc_weight = int(k), float(tau), float(disc_weight)
        self.baseline, self.reduction = bool(baseline), reduction
        self.discriminator = ListDiscriminator(n_users, n_items, int(dim))

    def forward(self, users: Tensor, teacher_lists: Tensor, student_lists: Tensor,
                student_scores: Tensor) -> Tensor:
        d = self.discriminator
        real = d(users, teacher_lists)
        fake = d(users, student_lists)
        l_d = discriminator_loss(real, fake, reduction=self.reduction)
        log_prob = plackett_luce_log_prob(student_scores, student_lists, tau=self.tau)
        l_g = generator_loss(log_prob, fake, baseline=self.baseline, reduction=self.reduction)
        return l_g + self.disc_weight * l_d
