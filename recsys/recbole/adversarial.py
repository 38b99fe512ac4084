"""``adkd``: adversarial list distillation (after Chen et al., TOIS 2018) as a method adapter.

Per batch, for the batch's unique users ``u``:

1. the teacher's list ``L^T_u``: its top-``k`` unobserved items (the soft labels, rank order);
2. the student's list ``L^S_u``: ``k`` distinct unobserved items drawn without replacement from
   ``softmax(s_u / tau)`` over the items outside ``u``'s training history (Gumbel top-``k``,
   i.e. Plackett-Luce sampling; seeded by the run's seed);
3. ``L_D + L_G`` of :class:`~recsys.losses.adversarial.ADKD`: the discriminator (trainable, saved
   with the student as ``distill.loss.discriminator.*``) learns to tell ``L^T`` from ``L^S``;
   the student gets the REINFORCE gradient of ``log pi(L^S_u)`` weighted by the discriminator's
   (detached) reward -- through its own scores only.

Both players take one simultaneous step per batch with the run's optimizer (the discriminator's
step scaled by ``distill_weight * disc_weight``); the student also keeps its own loss (BPR).

Choices the paper leaves open for this setting (it distils review-based rating predictors, with
an adversarial adaption on the model outputs; see the README's method table): lists instead of
ratings, the list discriminator's architecture (DCG-pooled item embeddings with the user
embedding, an MLP), REINFORCE with a batch-mean baseline for the discrete lists, simultaneous
instead of alternating updates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recsys.losses.adversarial import ADKD
from recsys.recbole.context import DistillContext
from recsys.recbole.methods import _LossAdapter, register
from recsys.softlabels.topk import mask_chunk

__all__ = ["ADKDAdapter", "allowed_scores"]


def allowed_scores(ctx: DistillContext, scores: Tensor, users: Tensor) -> Tensor:
    """``scores`` with the padding item and each user's training items set to ``-inf`` (not in
    place; gradients of the other entries kept)."""
    with torch.no_grad():
        blocked = mask_chunk(torch.zeros(scores.shape, device=scores.device), users,
                             history=ctx.history)
    return scores.masked_fill(torch.isinf(blocked), float("-inf"))


@register("adkd")
class ADKDAdapter(_LossAdapter):
    """Adversarial distillation of the teacher's top-``k`` lists (module docstring)."""

    loss_cls = ADKD
    loss_skip = ("n_users", "n_items")

    def __init__(self, ctx: DistillContext, params: dict[str, Any]) -> None:
        super().__init__(ctx, params, n_users=ctx.n_users, n_items=ctx.n_items)

    @property
    def topk(self) -> int:
        return int(self.loss.k)

    def sample_student_lists(self, scores: Tensor, k: int) -> Tensor:
        """``[B, k]`` items drawn without replacement from ``softmax(scores / tau)`` (rank
        order; ``-inf`` entries never drawn): the Gumbel top-``k`` trick in float32 (as
        :func:`recsys.samplers.gumbel_topk`, ~3x cheaper than its float64 keys), drawn with
        the method's seeded generator."""
        with torch.no_grad():
            u = torch.rand(scores.shape, generator=self.generator).to(scores.device)
            u = u.clamp(torch.finfo(u.dtype).tiny, 1.0 - torch.finfo(u.dtype).eps)
            keys = scores.detach() / self.loss.tau - torch.log(-torch.log(u))
            return keys.topk(k, dim=1).indices

    def forward(self, interaction: Any) -> Tensor:
        users = self.ctx.batch_users(interaction)
        teacher_lists = self.top_items(users, self.loss.k).to(users.device)
        scores = allowed_scores(self.ctx, self.ctx.full_scores(self.ctx.student, users), users)
        student_lists = self.sample_student_lists(scores, teacher_lists.shape[1])
        return self.loss(users, teacher_lists, student_lists, scores)
