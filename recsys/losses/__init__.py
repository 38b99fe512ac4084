r"""Ranking-distillation losses for recommenders, on the graphkd core.

Each method is a pure function on explicit score/embedding tensors plus a thin
:class:`RankingLoss` module (registered by name; :func:`get_ranking_loss`). Score lists
``[U, K]`` are per-user rows of a regular bipartite relation graph (``EdgeSet`` with
``degree=K``) and reduce with graphkd's segment ops; topology losses use graphkd kernels and
``edge_mse``. Default reductions follow the references (sums over users); scale with the
reference ``lambda`` in the trainer.

How a trainer drives each method (``s(u, i)`` = student score, ``t(u, i)`` = teacher score;
``top = recsys.softlabels.teacher_topk(...)`` once before training, masking the history;
samplers in :mod:`recsys.samplers`; "batch users" = the unique users of the batch):

===========  ============================================  =========================================
method       once / per epoch                              per batch (``forward`` arguments)
===========  ============================================  =========================================
``rd``       top-K (K=10; ``exclude=None`` for the          ``topk_scores = s(u, top.indices[u])``;
             ``"original"`` variant); per epoch from        ``sampled_scores = s(u, eps items)``
             ``dynamic_start_epoch``: ``eps=100`` uniform   (only when ``loss.dynamic``; detached).
             items per user (``uniform_items``).            Total ``L_base + 1.0 * L``.
``cd``       top ``sample_num=3000``; per epoch             ``s(u, items)``, ``t(u, items)`` of the
             ``tournament_sample`` -> ``n_distill=2``       user's sampled items. Total
             items per user.                               ``L_base + lambda * L``.
``rrd``      top ``M=500``; per epoch                       ``s(u, interesting)`` (teacher order),
             ``rank_aware_sample(K=40, T=10)`` (or          ``s(u, uninteresting)``. Total
             ``temperature=None``: uniform) and             ``L_base + 0.001 * L``.
             ``uniform_items(L=40, exclude_topk=M)``.
``dcd``      top ``M=500``; per epoch exact student ranks   ``s(u, under)``, ``s(u, over)``.
             of those items (``student_ranks``) ->
             ``discrepancy_sample(K=100, T=10)``.
``unkd``     ``popularity_groups`` (4 groups, equal mass);  ``s(u, items_i)``, ``s(u, items_j)``
             per group the teacher's in-group top list     (and ``valid``). Total
             (``group_topk``); per epoch ``pair_sample``.   ``L_base + lambda * L``.
``de``       ``set_epoch(epoch, num_epochs)`` anneals tau.  student/teacher embeddings of unique
             Its experts are trainable: add                batch users, pos items, neg items.
             ``loss.parameters()`` to the optimizer.        Total ``L_base + 0.01 * L``.
``ftd``      nothing.                                       embeddings of unique batch users and
                                                            items (pos + neg). ``L_base + 1e-3 L``.
``htd``      ``set_epoch`` anneals tau; trainable experts.  as ``ftd``. ``L_base + 1e-3 * L``.
``score_kd`` top-K.                                         ``s(u, top[u])``, ``top.scores[u]``.
``listwise_kd`` top-K.                                      ``s(u, top[u])``, ``top.scores[u]``.
``hint``     trainable adapters.                            embeddings of unique users and items.
===========  ============================================  =========================================

Teacher tensors are treated as constants (detached) by every loss. Numerics, as in graphkd: an
empty batch raises ``ValueError("<method>: got an empty batch (0 samples); ...")``, float16 /
bfloat16 scores are computed in float32 and the loss returned in their dtype, and a module's
non-finite loss from finite inputs raises ``FloatingPointError`` naming the method.
"""

from recsys.losses._base import (
    RANKING_LOSSES,
    RankingLoss,
    get_ranking_loss,
    list_graph,
    ranking_loss_names,
    register,
)
from recsys.losses.baselines import (
    EmbeddingHint,
    ListwiseKD,
    ScoreKD,
    hint_loss,
    listwise_kd_loss,
    score_kd_loss,
)
from recsys.losses.cd import CD, cd_loss, cd_soft_labels
from recsys.losses.de import (
    DE,
    DistillationExperts,
    ExpertPair,
    anneal_temperature,
    de_loss,
    experts_forward,
    gumbel_noise,
    gumbel_selection,
)
from recsys.losses.rd import (
    RD,
    RD_SCHEMES,
    RD_VARIANTS,
    estimate_student_rank,
    rd_discrepancy_weights,
    rd_loss,
    rd_position_weights,
    rd_weights,
)
from recsys.losses.rrd import DCD, RRD, dcd_loss, plackett_luce_denominators, rrd_loss
from recsys.losses.topology import (
    FTD,
    HTD,
    ftd_loss,
    group_prototypes,
    group_relation_graph,
    htd_loss,
)
from recsys.losses.unkd import UnKD, unkd_loss

__all__ = [
    "RANKING_LOSSES", "RankingLoss", "get_ranking_loss", "ranking_loss_names", "register",
    "list_graph",
    "RD", "RD_SCHEMES", "RD_VARIANTS", "rd_loss", "rd_weights", "rd_position_weights",
    "rd_discrepancy_weights", "estimate_student_rank",
    "CD", "cd_loss", "cd_soft_labels",
    "RRD", "rrd_loss", "plackett_luce_denominators", "DCD", "dcd_loss",
    "DE", "DistillationExperts", "ExpertPair", "de_loss", "experts_forward", "gumbel_selection",
    "gumbel_noise", "anneal_temperature",
    "FTD", "HTD", "ftd_loss", "htd_loss", "group_relation_graph", "group_prototypes",
    "UnKD", "unkd_loss",
    "ScoreKD", "ListwiseKD", "EmbeddingHint", "score_kd_loss", "listwise_kd_loss", "hint_loss",
]
