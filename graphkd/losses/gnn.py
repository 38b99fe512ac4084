r"""GNN-based distillers: HKD (kNN instance graph + GNN + InfoNCE) and MHGD (attention graphs).

Both compare samples across the batch (``level = "batch"``; node features are mean-pooled per
graph by the Distiller) and own trainable modules built from the feature widths
(``needs_dims``).

**HKD** (Zhou et al. 2021, holistic KD; ref ``wyc-ruiker/HKD:distiller_zoo/GNN.py``). Embed
each side with a linear head + L2 norm, ``e = unit(W f + b)``; build a kNN instance graph over
the batch from the *teacher* features (``k = 8``, shared by both sides); aggregate each side's
embeddings with one TAGConv hop (:func:`tag_conv`, ``K = 1``) and L2-normalise,
``g = unit(W_g [e, Â e] + b_g)``; contrast student and teacher with InfoNCE (``τ = 0.07``)::

    L = nce(e_s, e_t) + nce(e_t, e_s) + nce(g_s, g_t) + nce(g_t, g_s)

(``symmetric=False`` keeps the student-anchored terms only). Differences from the reference:
negatives are the other samples of the batch instead of a 16384-entry memory bank with
momentum-smoothed positives; one kNN graph from the teacher's features (the reference builds
one per side from the softmaxed logits). As in the reference, the graph terms are skipped when
the batch has too few samples for ``k`` neighbours, and a sample is its own nearest neighbour
(``loop=True``; the reference sets its self-distance to -1).

**MHGD** (Lee & Song, BMVC 2019; ref ``sseung0703/KD_methods_with_TF:nets/Relation.py``).
For consecutive layers ``l-1, l`` (a ``Match`` with a tuple of >= 2 paths) and row-normalised
features ``v_l = unit(f_l)``, attention head ``h`` forms a ``B x B`` graph::

    G^h = BN(W_s v_l)_h · BN(W_r v_{l-1})_hᵀ          (H heads of width (d_l + d_{l-1}) // 2)

Stage 1 (teacher only, :meth:`MHGD.pretrain_loss`) trains the heads with an estimator that must
predict ``v_l`` from ``v_{l-1}`` through the attention::

    x = ReLU(BN(W_0 v_{l-1})),  x̂ = unit(W_1 concat_h(drop_h(softmax_row(G^h)) x)),
    L_1 = Σ_l mean_i (1 - x̂_i · v_{l,i})

(``drop_h`` zeroes a random half of the heads per sample, as in the reference). Stage 2
(:meth:`MHGD.forward`) freezes the heads (BatchNorm in eval mode, no gradient to them), maps the
student's features to the teacher's widths with trainable adapters (identity for equal
widths; the reference aligns widths by SVD instead) and matches the attention distributions::

    L_2 = Σ_l mean_{h,i} KL( softmax_j(tanh G_S^h)_i ‖ softmax_j(tanh G_T^h)_i )

``reduction="sum"`` sums over heads and rows, as the reference's ``reduce_sum``. The row
normalisations ``unit`` first divide huge features by a power of two (exact, so ``v`` of features
of ``~1e30`` no longer collapses to 0). The reference's
fully connected layers apply a ReLU by default (TF-slim); ``reference_relu=True`` reproduces it
in the attention projections, the default follows the paper's formula above.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphkd._checks import check_nonempty, full_precision
from graphkd.divergences import info_nce
from graphkd.graphs import EdgeSet
from graphkd.losses._scale import rescale_pow2
from graphkd.losses.base import DistillLoss, register
from graphkd.losses.heads import build_head
from graphkd.ops import row_sum

__all__ = [
    "tag_propagate", "tag_conv", "TAGConv1", "hkd_loss", "HKD",
    "AttentionGraph", "AttentionEstimator", "mhgd_kl", "MHGD",
]


# --------------------------------------------------------------------------- HKD
def tag_propagate(x: Tensor, edges: EdgeSet) -> Tensor:
    r"""One normalised propagation :math:`\hat A x`, :math:`\hat A = D^{-1/2} A D^{-1/2}`.

    .. math:: (\hat A x)_v = \sum_{u \in N(v)} \frac{x_u}{\sqrt{d_u d_v}}

    with ``N(v)`` the columns of row ``v`` and ``d`` the in-degree (row length, clamped at 1),
    as DGL's ``TAGConv`` (PyG's equals it when every node has an in-edge; it gives a source
    without in-edges weight 0). In a kNN graph every ``d`` is ``k``: ``(Â x)_v`` is the mean
    of the ``k`` neighbours. Shapes: ``x [N, D]``, ``edges`` ``N x N`` -> ``[N, D]``.
    """
    norm = edges.counts.clamp_min(1).to(x.dtype).rsqrt().unsqueeze(-1)
    msg = (x * norm).index_select(0, edges.col)
    return row_sum(msg, edges) * norm


def tag_conv(x: Tensor, edges: EdgeSet, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""TAGConv with one hop: :math:`W [x, \hat A x] + b` (``weight`` ``[D_out, 2 D]``)."""
    return F.linear(torch.cat([x, tag_propagate(x, edges)], dim=-1), weight, bias)


class TAGConv1(nn.Module):
    r"""One-hop TAGConv layer :math:`W [x, \hat A x] + b`; see :func:`tag_conv`."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * in_dim, out_dim)

    def forward(self, x: Tensor, edges: EdgeSet) -> Tensor:
        return tag_conv(x, edges, self.linear.weight, self.linear.bias)


@full_precision
def hkd_loss(
    e_s: Tensor, e_t: Tensor, g_s: Tensor | None = None, g_t: Tensor | None = None, *,
    tau: float = 0.07, symmetric: bool = True,
) -> Tensor:
    r"""HKD objective on embeddings: :math:`\mathrm{nce}(e_s, e_t) + \mathrm{nce}(g_s, g_t)`.

    ``nce(a, b)`` is :func:`~graphkd.divergences.info_nce` (positives on the diagonal, the rest
    of the batch as negatives, mean over anchors) plus ``nce(b, a)`` when ``symmetric``.

    The teacher's embeddings ``e_t``, ``g_t`` are constants here (detached), as every teacher
    input of a pure loss; the :class:`HKD` module, whose teacher-side heads are trainable (as
    in the reference), runs the same computation on embeddings of the *detached* teacher
    features without detaching them, so those heads still learn.

    Args:
        e_s, e_t: ``[B, D]`` normalised raw embeddings of student / teacher.
        g_s, g_t: ``[B, D]`` normalised aggregated embeddings, or ``None`` (no graph term).
        tau: temperature.
        symmetric: add the teacher-anchored terms.
    """
    return _hkd(e_s, e_t.detach(), g_s, None if g_t is None else g_t.detach(), tau, symmetric)


def _hkd(e_s: Tensor, e_t: Tensor, g_s: Tensor | None, g_t: Tensor | None, tau: float,
         symmetric: bool) -> Tensor:
    """:func:`hkd_loss` with gradients to both sides' embeddings (the module's heads)."""
    check_nonempty("hkd", e_s, e_t)

    def nce(a: Tensor, b: Tensor) -> Tensor:
        out = info_nce(a, b, tau=tau)
        return out + info_nce(b, a, tau=tau) if symmetric else out

    loss = nce(e_s, e_t)
    if g_s is not None and g_t is not None:
        loss = loss + nce(g_s, g_t)
    return loss


@register("hkd")
class HKD(DistillLoss):
    """Holistic KD: kNN instance graph, TAGConv aggregation and InfoNCE (see module docs).

    Args:
        student_dim, teacher_dim: feature widths (given by the Distiller).
        feat_dim: embedding width of the heads (128 as the reference).
        k: neighbours in the teacher's kNN instance graph (8).
        tau: InfoNCE temperature (0.07).
        metric: kNN metric on the teacher features, ``"cosine"`` or ``"l2"``.
        loop: a sample counts as its own neighbour (reference behaviour).
        symmetric: also contrast teacher anchors against student keys (reference behaviour).

    Shapes: ``f_s [B, d_s]``, ``f_t [B, d_t]`` -> scalar.

    Example:
        >>> loss = HKD(student_dim=64, teacher_dim=300)
        >>> loss(torch.randn(32, 64), torch.randn(32, 300))
    """

    needs_dims: ClassVar[bool] = True
    level: ClassVar[str] = "batch"
    family = "gnn"
    global_batch = True

    def __init__(
        self, student_dim: int, teacher_dim: int, *, feat_dim: int = 128, k: int = 8,
        tau: float = 0.07, metric: str = "cosine", loop: bool = True, symmetric: bool = True,
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        if metric not in ("cosine", "l2"):
            raise ValueError(f"unknown metric {metric!r}; valid: 'cosine', 'l2'.")
        self.embed_s = build_head("normalized", student_dim, feat_dim)
        self.embed_t = build_head("normalized", teacher_dim, feat_dim)
        self.gnn_s = TAGConv1(feat_dim, feat_dim)
        self.gnn_t = TAGConv1(feat_dim, feat_dim)
        self.k, self.tau, self.metric, self.loop, self.symmetric = k, tau, metric, loop, symmetric

    def instance_graph(self, f_t: Tensor) -> EdgeSet | None:
        """The teacher's kNN graph over the batch, or ``None`` if the batch is too small."""
        if f_t.shape[0] < (self.k if self.loop else self.k + 1):
            return None
        return EdgeSet.knn(f_t.detach(), self.k, metric=self.metric, loop=self.loop)

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        if f_s.dim() != 2 or f_t.dim() != 2 or f_s.shape[0] != f_t.shape[0]:
            raise ValueError(
                f"HKD takes [B, d] features with the same B, got {tuple(f_s.shape)} and "
                f"{tuple(f_t.shape)}; flatten or pool them first."
            )
        check_nonempty("hkd", f_s, f_t)
        f_t = f_t.detach()  # the teacher's features are constants; its heads still train
        e_s, e_t = self.embed_s(f_s), self.embed_t(f_t)
        edges = self.instance_graph(f_t)
        if edges is None:
            return _hkd(e_s, e_t, None, None, self.tau, self.symmetric)
        g_s = F.normalize(self.gnn_s(e_s, edges), dim=-1)
        g_t = F.normalize(self.gnn_t(e_t, edges), dim=-1)
        return _hkd(e_s, e_t, g_s, g_t, self.tau, self.symmetric)


# --------------------------------------------------------------------------- MHGD
class AttentionGraph(nn.Module):
    r"""Multi-head attention graph :math:`G^h = BN(W_s k)_h \, BN(W_r q)_h^\top`.

    Args:
        key_dim: width of the sender features ``k`` (layer ``l``).
        query_dim: width of the receiver features ``q`` (layer ``l - 1``).
        head_dim: width of each head.
        num_heads: ``H``.
        relu: apply a ReLU before the BatchNorm (the reference's TF-slim default).

    Shapes: ``k [B, key_dim]``, ``q [B, query_dim]`` -> ``[H, B, B]``.
    """

    def __init__(self, key_dim: int, query_dim: int, head_dim: int, num_heads: int,
                 relu: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.relu = num_heads, head_dim, relu
        self.sender = nn.Linear(key_dim, head_dim * num_heads)
        self.sender_bn = nn.BatchNorm1d(head_dim * num_heads)
        self.receiver = nn.Linear(query_dim, head_dim * num_heads)
        self.receiver_bn = nn.BatchNorm1d(head_dim * num_heads)

    def _project(self, x: Tensor, fc: nn.Linear, bn: nn.BatchNorm1d) -> Tensor:
        h = fc(x)
        h = bn(F.relu(h) if self.relu else h)
        return h.view(x.shape[0], self.num_heads, self.head_dim).transpose(0, 1)  # [H, B, d]

    def forward(self, k: Tensor, q: Tensor) -> Tensor:
        s = self._project(k, self.sender, self.sender_bn)
        r = self._project(q, self.receiver, self.receiver_bn)
        return s @ r.transpose(1, 2)


class AttentionEstimator(nn.Module):
    r"""Stage-1 estimator: predicts layer ``l`` from layer ``l - 1`` through the attention.

    :math:`\hat x = \mathrm{unit}(W_1 \mathrm{concat}_h(M^h \odot \mathrm{softmax}(G^h)\,
    \mathrm{ReLU}(BN(W_0 x))))` with ``M`` an optional ``[H, B, 1]`` head mask.
    Shapes: ``x [B, in_dim]``, ``g [H, B, B]`` -> ``[B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int) -> None:
        super().__init__()
        hidden = (in_dim + out_dim) // 2
        self.fc0 = nn.Linear(in_dim, hidden)
        self.bn0 = nn.BatchNorm1d(hidden)
        self.fc1 = nn.Linear(hidden * num_heads, out_dim)

    def forward(self, x: Tensor, g: Tensor, mask: Tensor | None = None) -> Tensor:
        a = torch.softmax(g, dim=-1)
        if mask is not None:
            a = a * mask
        h = a @ F.relu(self.bn0(self.fc0(x)))  # [H, B, hidden]
        h = h.transpose(0, 1).reshape(x.shape[0], -1)
        return F.normalize(self.fc1(h), dim=-1)


@full_precision
def mhgd_kl(g_s: Tensor, g_t: Tensor, reduction: str = "mean") -> Tensor:
    r"""KL between attention rows: :math:`\sum_j p^S_{hij}(\log p^S_{hij} - \log p^T_{hij})`,
    :math:`p = \mathrm{softmax}_j(\tanh G)`; mean (or sum) over heads and rows.

    Shapes: ``g_s``, ``g_t`` ``[H, B, B]`` -> scalar. The teacher's graphs ``g_t`` are
    constants (detached).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; valid: 'mean', 'sum'.")
    check_nonempty("mhgd", g_s.movedim(-2, 0))  # rows (axis -2) are the batch's samples
    log_s = torch.log_softmax(torch.tanh(g_s), dim=-1)
    log_t = torch.log_softmax(torch.tanh(g_t.detach()), dim=-1)
    per_row = (log_s.exp() * (log_s - log_t)).sum(-1)
    return per_row.mean() if reduction == "mean" else per_row.sum()


def _unit(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm, any magnitude (exact power-of-two rescale first, so the
    norm of features of ``~1e30`` does not overflow to ``inf`` and turn the rows into 0)."""
    return F.normalize(rescale_pow2(x), dim=-1)


def _dims(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, int) or len(value) < 2:
        raise ValueError(
            f"MHGD compares consecutive layers: `{name}` must list >= 2 widths. Give the Match "
            "tuples of paths, e.g. Match(teacher=('convs.1', 'convs.2'), "
            "student=('convs.0', 'convs.1'), method='mhgd')."
        )
    return tuple(int(v) for v in value)


@register("mhgd")
class MHGD(DistillLoss):
    """Multi-head graph distillation, two stages (see the module docs).

    Args:
        student_dim, teacher_dim: widths of the ``L >= 2`` consecutive layers (tuples).
        num_heads: attention heads per layer pair (8).
        drop_head: randomly drop heads in stage 1 (reference behaviour).
        reduction: ``"mean"`` over heads and rows, or ``"sum"`` (reference).
        reference_relu: ReLU inside the attention projections (reference TF-slim default).

    Shapes: ``forward(f_s, f_t)`` with tuples of ``L`` tensors ``[B, d_l]`` -> scalar.

    Stage protocol (used by :class:`~graphkd.distill.Distiller` and
    :func:`graphkd.train.pretrain`): ``requires_pretraining``; ``pretrain_loss(f_t)`` (stage 1);
    ``pretrain_parameters()``; ``finish_pretraining()`` freezes the heads (saved in the
    state dict, restored by ``load_state_dict``).

    Example:
        >>> loss = MHGD(student_dim=(32, 32), teacher_dim=(64, 64))
        >>> l1 = loss.pretrain_loss((t1, t2)); ...; loss.finish_pretraining()
        >>> l2 = loss((s1, s2), (t1, t2))
    """

    needs_dims: ClassVar[bool] = True
    level: ClassVar[str] = "batch"
    requires_pretraining: ClassVar[bool] = True
    family = "gnn"
    global_batch = True  # B x B attention graphs over the batch's samples

    def __init__(
        self, student_dim: Sequence[int], teacher_dim: Sequence[int], *, num_heads: int = 8,
        drop_head: bool = True, reduction: str = "mean", reference_relu: bool = False,
    ) -> None:
        super().__init__()
        ds, dt = _dims(student_dim, "student_dim"), _dims(teacher_dim, "teacher_dim")
        if len(ds) != len(dt):
            raise ValueError(f"{len(ds)} student layers but {len(dt)} teacher layers.")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"unknown reduction {reduction!r}; valid: 'mean', 'sum'.")
        self.num_heads, self.drop_head, self.reduction = num_heads, drop_head, reduction
        self.adapters = nn.ModuleList(build_head("auto", s, t) for s, t in zip(ds, dt))
        self.heads = nn.ModuleList(
            AttentionGraph(dt[i], dt[i - 1], (dt[i] + dt[i - 1]) // 2, num_heads,
                           relu=reference_relu)
            for i in range(1, len(dt))
        )
        self.estimators = nn.ModuleList(
            AttentionEstimator(dt[i - 1], dt[i], num_heads) for i in range(1, len(dt)))
        self.register_buffer("pretrained_flag", torch.zeros((), dtype=torch.bool))
        self.pretrained = False
        self.register_load_state_dict_post_hook(MHGD._after_load)

    # ---------------------------------------------------------------- stages
    def pretrain_parameters(self) -> Iterator[nn.Parameter]:
        """Stage-1 parameters: attention heads and estimators."""
        yield from self.heads.parameters()
        yield from self.estimators.parameters()

    def finish_pretraining(self) -> None:
        """End stage 1: freeze the heads (eval BatchNorm, no gradients) for stage 2."""
        self.pretrained = True
        self.pretrained_flag.fill_(True)
        for p in self.pretrain_parameters():
            p.requires_grad_(False)
        self.heads.eval()
        self.estimators.eval()

    @staticmethod
    def _after_load(module: MHGD, incompatible: object) -> None:
        if bool(module.pretrained_flag) and not module.pretrained:
            module.finish_pretraining()

    def train(self, mode: bool = True) -> MHGD:
        super().train(mode)
        if self.pretrained:
            self.heads.eval()
            self.estimators.eval()
        return self

    def head_mask(self, batch_size: int, device: torch.device) -> Tensor:
        """Random ``[H, B, 1]`` mask keeping the heads whose noise exceeds the head mean."""
        noise = torch.randn(self.num_heads, batch_size, 1, device=device)
        return (noise - noise.mean(0, keepdim=True) > 0).to(noise.dtype)

    @staticmethod
    def _check(feats: Sequence[Tensor], n: int, name: str) -> list[Tensor]:
        if isinstance(feats, Tensor) or len(feats) != n:
            raise ValueError(f"MHGD expects a tuple of {n} `{name}` layers (one per path).")
        return list(feats)

    def pretrain_loss(self, f_t: Sequence[Tensor]) -> Tensor:
        """Stage-1 objective on the teacher's layers (trains heads + estimators)."""
        f_t = self._check(f_t, len(self.adapters), "f_t")
        v = [_unit(f.detach()) for f in f_t]
        total = v[0].new_zeros(())
        for i, (head, est) in enumerate(zip(self.heads, self.estimators), start=1):
            g = head(v[i], v[i - 1])
            mask = self.head_mask(v[i].shape[0], v[i].device) if self.drop_head else None
            pred = est(v[i - 1], g, mask)
            total = total + (1.0 - (pred * v[i]).sum(-1)).mean()
        return total

    def forward(self, f_s: Sequence[Tensor], f_t: Sequence[Tensor]) -> Tensor:
        if not self.pretrained:
            raise RuntimeError(
                "MHGD's attention heads are not trained yet: run stage 1 first, e.g. "
                "graphkd.train.fit(..., pretrain_epochs=N) or graphkd.train.pretrain(distiller, "
                "loader); call finish_pretraining() to skip it on purpose."
            )
        n = len(self.adapters)
        f_s, f_t = self._check(f_s, n, "f_s"), self._check(f_t, n, "f_t")
        v_s = [_unit(a(f)) for a, f in zip(self.adapters, f_s)]
        with torch.no_grad():
            v_t = [_unit(f) for f in f_t]
            g_t = [head(v_t[i], v_t[i - 1]) for i, head in enumerate(self.heads, start=1)]
        total = v_s[0].new_zeros(())
        for i, head in enumerate(self.heads, start=1):
            total = total + mhgd_kl(head(v_s[i], v_s[i - 1]), g_t[i - 1], self.reduction)
        return total
