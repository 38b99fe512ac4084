r"""Ranking-distillation losses for recommenders, on the graphkd core.

Each method is a pure function on explicit score/embedding tensors plus a thin
:class:`RankingLoss` module (registered by name; :func:`get_ranking_loss`). Score lists
``[U, K]`` are per-user rows of a regular bipartite relation graph (``EdgeSet`` with
``degree=K``) and reduce with graphkd's segment ops; topology losses use graphkd kernels and
``edge_mse``. Default reductions follow the references (sums over users); scale with the
reference ``lambda`` in the trainer.

Reductions and the effective ``lambda``: the references (DE-RRD, TD, DCD) add
``lambda * sum_u L_u`` (a sum over the batch's *unique* users, or entities for DE / HTD / FTD)
to a *batch-sum* BPR, ``BPR_sum + lambda * sum_u L_u``. Next to a batch-*mean* base loss
(RecBole's BPR: ``BPR_sum / B`` over the ``B`` interactions of the batch) use
``reduction="per_interaction"`` with ``num_interactions=B``
(:func:`recsys.losses._base.reduce_rows`, accepted by ``rrd_loss`` / ``RRD``, ``dcd_loss`` /
``DCD``, ``de_loss`` / ``DE``, ``htd_loss`` / ``HTD``, ``ftd_loss`` / ``FTD``): the loss is
``sum_u L_u / B``, so
``BPR_mean + lambda * sum_u L_u / B = (BPR_sum + lambda * sum_u L_u) / B`` -- the reference's
objective up to the constant ``1 / B``, and

    lambda_eff = lambda                  (per_interaction),
    lambda_eff = lambda * B / U_b        (mean over the U_b unique users / entities of the batch),
    lambda_eff = lambda * B              (sum next to a mean base loss),

measured against the reference's ``lambda`` (``B / U_b ~ 3`` on ml-100k: 676 unique users per
2,048-interaction batch). The RecBole adapters pass ``B`` and default to ``per_interaction`` for
RRD, DCD, DE and HTD (:mod:`recsys.recbole.methods`); DE's adapter also rescales a kind's sum over
``max_entities`` subsampled entities by ``unique / kept`` (an unbiased estimate of the full sum).

How a trainer drives each method (``s(u, i)`` = student score, ``t(u, i)`` = teacher score;
``top = recsys.softlabels.teacher_topk(...)`` once before training, masking the history;
samplers in :mod:`recsys.samplers`; "batch users" = the unique users of the batch):

===========  ============================================  =========================================
method       once / per epoch                              per batch (``forward`` arguments)
===========  ============================================  =========================================
``rd``       top-K (K=10; ``exclude=None`` for the          ``topk_scores = s(u, top.indices[u])``;
             ``"original"`` variant); per epoch from        ``sampled_scores = s(u, eps items)``
             ``dynamic_start_epoch``: ``eps=100`` items     (only when ``loss.dynamic``; detached).
             per user, uniform outside the history,        Total ``L_base + 1.0 * L``.
             with replacement (``uniform_items``).
``cd``       per epoch the guide's top ``sample_num=3000``  ``s(u, items)``, ``t(u, items)`` of the
             unobserved items (``guide="student"``: the     user's sampled items. Total
             student's, re-extracted each epoch;           ``L_base + lambda * L``.
             ``"teacher"``: the soft labels) ->
             ``tournament_sample`` -> ``n_distill=2``
             items per user.
``rrd``      top ``M=500``; per epoch                       ``s(u, interesting)`` (teacher order),
             ``rank_aware_sample(K=40, T=10)`` (or          ``s(u, uninteresting)``. Total
             ``temperature=None``: uniform) and             ``L_base + 0.001 * L``.
             ``uniform_items(L=40, exclude_topk=M)``.
``dcd``      user side: top ``M=500``; item side: each      ``s(u, under)``, ``s(u, over)``; item
             item's teacher top-``item_m=100`` users        side: ``s(v, i)`` of the users sampled
             (``teacher_topk`` on the transposed scores);   for the batch's items (+ masks).
             per epoch exact student ranks                 Total ``L_base + lambda * (L_user +
             (``student_ranks``) -> ``discrepancy_sample``  L_item)``.
             (``K=100`` / ``item_k=20``, ``T=10``).
``unkd``     ``popularity_groups`` (2 groups, equal mass);  ``s(u, items_i)``, ``s(u, items_j)``,
             per group the teacher's in-group top-1000     ``valid`` and the users' interaction
             (``group_topk``); per epoch ``pair_sample``,   counts in the batch (``weights``).
             30 pairs per user split over the groups by    Total ``L_base + 1.0 * L``.
             interaction share (``split_pair_counts``).
``de``       ``set_epoch(epoch, num_epochs)`` anneals tau   student/teacher embeddings of unique
             over ``anneal_epochs=1000`` (the reference's  batch users, pos items, neg items.
             ``max_epoch``; ``None``: ``num_epochs``).      Total ``L_base + 0.01 * L``.
             Its experts are trainable: add
             ``loss.parameters()`` to the optimizer.
``ftd``      nothing.                                       embeddings of unique batch users and
                                                            items (pos + neg). ``L_base + 1e-3 L``.
``htd``      ``set_epoch`` anneals tau over                 as ``ftd``. ``L_base + 1e-3 * L``.
             ``anneal_epochs=100``; trainable experts.
``score_kd`` top-K.                                         ``s(u, top[u])``, ``top.scores[u]``.
``listwise_kd`` top-K.                                      ``s(u, top[u])``, ``top.scores[u]``.
``hint``     trainable adapters.                            embeddings of unique users and items.
===========  ============================================  =========================================

Sequential recommenders (one row per training sequence prefix, :mod:`recsys.recbole.sequential`):
``sampled_kd`` takes the student's and teacher's logits of each prefix's teacher top-K (+ items
sampled outside it); ``hidden_state`` the student's and teacher's sequence representations
``[B, d]`` (trainable projector). RD and RRD take the same per-prefix score lists as above.

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
from recsys.losses.ader import ADERKD, ader_kd_loss, ader_weight
from recsys.losses.adversarial import (
    ADKD,
    ListDiscriminator,
    dcg_weights,
    discriminator_loss,
    generator_loss,
    plackett_luce_log_prob,
)
from recsys.losses.aekd import AEKD, AEKD_FORMS, aekd_loss
from recsys.losses.baselines import (
    EmbeddingHint,
    ListwiseKD,
    ScoreKD,
    hint_loss,
    listwise_kd_loss,
    score_kd_loss,
)
from recsys.losses.cd import CD, CD_GUIDES, cd_loss, cd_soft_labels
from recsys.losses.ctr import (
    CTR_LOSSES,
    LogitHint,
    SoftLabelBCE,
    get_ctr_loss,
    logit_hint,
    soft_label_bce,
)
from recsys.losses.dcd import DCD, DCD_SIDES, dcd_loss
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
from recsys.losses.rrd import RRD, plackett_luce_denominators, rrd_loss
from recsys.losses.sequential import (
    HiddenStateKD,
    SampledKD,
    hidden_state_loss,
    sampled_kd_loss,
)
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
    "CD", "CD_GUIDES", "cd_loss", "cd_soft_labels",
    "RRD", "rrd_loss", "plackett_luce_denominators", "DCD", "DCD_SIDES", "dcd_loss",
    "DE", "DistillationExperts", "ExpertPair", "de_loss", "experts_forward", "gumbel_selection",
    "gumbel_noise", "anneal_temperature",
    "FTD", "HTD", "ftd_loss", "htd_loss", "group_relation_graph", "group_prototypes",
    "UnKD", "unkd_loss",
    "ScoreKD", "ListwiseKD", "EmbeddingHint", "score_kd_loss", "listwise_kd_loss", "hint_loss",
    "SampledKD", "HiddenStateKD", "sampled_kd_loss", "hidden_state_loss",
    "CTR_LOSSES", "SoftLabelBCE", "LogitHint", "soft_label_bce", "logit_hint", "get_ctr_loss",
    "AEKD", "AEKD_FORMS", "aekd_loss",
    "ADKD", "ListDiscriminator", "dcg_weights", "discriminator_loss", "generator_loss",
    "plackett_luce_log_prob",
    "ADERKD", "ader_kd_loss", "ader_weight",
]
