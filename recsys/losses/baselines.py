r"""Simple baselines: pointwise score KD on the teacher's top-K, and embedding hints (FitNet).

* ``score_kd_loss``: :math:`\sum_{u}\sum_{r \le K} (\hat s_{u,\pi_r} - s^T_{u,\pi_r})^2`, the
  student regresses the teacher's scores of its top-K items (``edge_mse`` on the top-K graph).
* ``listwise_kd_loss``: Hinton KD restricted to the top-K list,
  :math:`\tau^2 \sum_u KL(\mathrm{softmax}(s^T_u/\tau) \| \mathrm{softmax}(\hat s_u/\tau))`
  (``row_kl`` on the top-K graph; the woriazzc/KDs ``KD`` baseline without the ``tau**2``).
* ``hint_loss``: :math:`\sum_b \|A s_b - t_b\|^2` with a trainable linear adapter ``A``
  (:class:`EmbeddingHint`; apply to users and items of the batch).
"""

from __future__ import annotations

from torch import Tensor, nn

from graphkd._checks import check_nonempty, full_precision
from graphkd.divergences import edge_mse, row_kl
from recsys.losses._base import (
    RankingLoss,
    check_embeddings,
    check_lists,
    list_graph,
    reduce_rows,
    register,
)

__all__ = ["score_kd_loss", "listwise_kd_loss", "hint_loss", "ScoreKD", "ListwiseKD",
           "EmbeddingHint"]


def _same(a: Tensor, b: Tensor, na: str, nb: str) -> None:
    check_lists(a, na)
    check_lists(b, nb, rows=a.shape[0])
    if a.shape != b.shape:
        raise ValueError(f"`{na}` {tuple(a.shape)} and `{nb}` {tuple(b.shape)} must match.")


@full_precision
def score_kd_loss(student_scores: Tensor, teacher_scores: Tensor, *,
                  reduction: str = "mean") -> Tensor:
    """Squared error of student vs teacher scores on the top-K edges.

    Args:
        student_scores, teacher_scores: ``[U, K]`` scores of the teacher's top-K items.
        reduction: over the ``U*K`` edges: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """
    check_nonempty("score_kd", student_scores, teacher_scores)
    _same(student_scores, teacher_scores, "student_scores", "teacher_scores")
    u, k = student_scores.shape
    return edge_mse(student_scores.reshape(-1), teacher_scores.detach().reshape(-1),
                    list_graph(u, k, student_scores.device), reduction=reduction)


@full_precision
def listwise_kd_loss(student_scores: Tensor, teacher_scores: Tensor, *, tau: float = 1.0,
                     reduction: str = "sum") -> Tensor:
    """``tau**2 * KL`` between the teacher's and the student's softmax over the top-K list."""
    check_nonempty("listwise_kd", student_scores, teacher_scores)
    _same(student_scores, teacher_scores, "student_scores", "teacher_scores")
    u, k = student_scores.shape
    per_row = row_kl(student_scores.reshape(-1), teacher_scores.detach().reshape(-1),
                     list_graph(u, k, student_scores.device), tau=tau, reduction="none")
    return reduce_rows(per_row * tau**2, reduction)


@full_precision
def hint_loss(s_projected: Tensor, t: Tensor, *, reduction: str = "sum") -> Tensor:
    """FitNet hint :math:`\\sum_b \\|s'_b - t_b\\|^2` on already projected student embeddings."""
    check_embeddings(s_projected, t, "hint", ("s_projected", "t"))
    if s_projected.shape != t.shape:
        raise ValueError(
            f"projected student width {s_projected.shape[1]} != teacher width {t.shape[1]}; "
            "project with EmbeddingHint (a linear adapter) first."
        )
    return reduce_rows(((s_projected - t.detach()) ** 2).sum(-1), reduction)


@register("score_kd")
class ScoreKD(RankingLoss):
    """``forward(student_scores [U,K], teacher_scores [U,K])`` on the teacher's top-K."""

    inputs = "student_scores [U,K], teacher_scores [U,K] on the teacher's top-K"

    def __init__(self, k: int = 10, reduction: str = "mean") -> None:
        super().__init__()
        self.k, self.reduction = k, reduction

    def forward(self, student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
        return score_kd_loss(student_scores, teacher_scores, reduction=self.reduction)


@register("listwise_kd")
class ListwiseKD(RankingLoss):
    """``forward(student_scores [U,K], teacher_scores [U,K])``: softmax KD on the top-K."""

    inputs = "student_scores [U,K], teacher_scores [U,K] on the teacher's top-K"

    def __init__(self, k: int = 10, tau: float = 1.0, reduction: str = "sum") -> None:
        super().__init__()
        self.k, self.tau, self.reduction = k, tau, reduction

    def forward(self, student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
        return listwise_kd_loss(student_scores, teacher_scores, tau=self.tau,
                                reduction=self.reduction)


@register("hint")
class EmbeddingHint(RankingLoss):
    """FitNet-style hint with linear adapters for users and items.

    ``forward(s_users, t_users, s_items, t_items)`` = hint(users) + hint(items).
    """

    inputs = "s_users [Bu,d_s], t_users [Bu,d_t], s_items [Bi,d_s], t_items [Bi,d_t]"
    needs_dims = True

    def __init__(self, student_dim: int, teacher_dim: int, bias: bool = False,
                 reduction: str = "sum") -> None:
        super().__init__()
        self.user_adapter = nn.Linear(student_dim, teacher_dim, bias=bias)
        self.item_adapter = nn.Linear(student_dim, teacher_dim, bias=bias)
        self.reduction = reduction

    def forward(self, s_users: Tensor, t_users: Tensor, s_items: Tensor,
                t_items: Tensor) -> Tensor:
        return (hint_loss(self.user_adapter(s_users), t_users, reduction=self.reduction)
                + hint_loss(self.item_adapter(s_items), t_items, reduction=self.reduction))
