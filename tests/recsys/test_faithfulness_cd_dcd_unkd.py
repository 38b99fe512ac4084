"""Issue 13 (items 3, 4, 6): CD's student guide, DCD's item side, UnKD's reference defaults.

Every check runs the RecBole adapters on toy models whose score matrices are known densely
(``U @ V.T``, float64), against independent dense computations: transpose, mask, sort, rank,
Gumbel-top-k with the same seeded generator, relaxed Plackett-Luce / pairwise losses.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

pytest.importorskip("recbole")

from recsys.recbole.context import DistillContext  # noqa: E402
from recsys.recbole.methods import METHODS, build_method  # noqa: E402
from recsys.softlabels import history_from_interactions, teacher_topk  # noqa: E402

YAML_DIR = Path(__file__).resolve().parents[2] / "recsys" / "recbole"
D = torch.float64


class BPR(nn.Module):
    """A toy embedding recommender named like RecBole's BPR (the dot-product scoring path)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding.from_pretrained(users.clone(), freeze=False)
        self.item_embedding = nn.Embedding.from_pretrained(items.clone(), freeze=False)

    def dense(self) -> torch.Tensor:
        return (self.user_embedding.weight @ self.item_embedding.weight.T).detach()

    def predict(self, inter):
        u = self.user_embedding(inter["user_id"])
        return (u * self.item_embedding(inter["item_id"])).sum(-1)

    def full_sort_predict(self, inter):
        return self.user_embedding(inter["user_id"]) @ self.item_embedding.weight.T


class ToyMF(BPR):
    """The same model under another name: scored through ``predict`` (the generic path)."""


def _ctx(student, teacher, users, items, n_users, n_items, chunk=3):
    hist = history_from_interactions(torch.tensor(users), torch.tensor(items), n_users, n_items)
    pop = torch.zeros(n_items).index_add_(0, torch.tensor(items), torch.ones(len(items)))
    return DistillContext(student=student, teacher=teacher, user_field="user_id",
                          item_field="item_id", neg_item_field="neg_item_id", n_users=n_users,
                          n_items=n_items, history=hist, item_popularity=pop,
                          config={"seed": 0, "softlabel_chunk_size": chunk})


def _batch(users, items):
    from recbole.data.interaction import Interaction

    users, items = torch.tensor(users), torch.tensor(items)
    return Interaction({"user_id": users, "item_id": items, "neg_item_id": items.flip(0)})


def _hist_sets(ctx):
    h = ctx.history
    return [set(h.col[h.ptr[u]:h.ptr[u + 1]].tolist()) for u in range(ctx.n_users)]


def _relaxed_pl(s, n):
    """Independent relaxed Plackett-Luce: sum_k [log(sum_{l>=k} e^s_l + sum_j e^n_j) - s_k]."""
    return sum(torch.logsumexp(torch.cat([s[k:], n]), 0) - s[k] for k in range(len(s)))


def _gumbel_topk(logw, k, g):
    """Gumbel-top-k with the samplers' noise convention (float64 uniforms, clamped)."""
    u = torch.rand(tuple(logw.shape), generator=g, dtype=D)
    u = u.clamp(torch.finfo(D).tiny, 1.0 - torch.finfo(D).eps)
    return (logw + -torch.log(-torch.log(u))).topk(k, dim=1).indices.sort(dim=1).values


def _yaml(name):
    return yaml.safe_load((YAML_DIR / f"{name}.yaml").read_text())


# ============================================================================ DCD (item 3)
NU, NI, DIM = 13, 17, 4


def _dcd_setup(model_cls=BPR, **params):
    g = torch.Generator().manual_seed(0)
    s_u, s_i, t_u, t_i = (torch.randn(n, DIM, generator=g, dtype=D) for n in (NU, NI, NU, NI))
    users, items = [], []
    for u in range(1, NU):  # item 1 is popular: only 3 candidate users remain for it
        for i in {1 if u < NU - 3 else 2, 1 + (3 * u) % (NI - 1), 1 + (5 * u + 2) % (NI - 1)}:
            users.append(u)
            items.append(i)
    ctx = _ctx(model_cls(s_u, s_i), model_cls(t_u, t_i), users, items, NU, NI)
    params = {"k": 3, "m": 8, "item_k": 4, "item_m": 6, "temperature": 2.0, **params}
    ad = build_method("dcd", ctx, params)
    ctx.soft_labels = teacher_topk(ctx.teacher_full_scores, NU, NI, 8, exclude=ctx.history)
    ad.on_soft_labels(ctx.soft_labels)
    return ctx, ad


def _dense_item_side(ctx, seed, m, k, temperature):
    """Item-side samples from the dense matrices: the teacher's top-m users of each item
    outside its history (and user 0), the student's ranks of them among all users, and
    under/over-estimated positions drawn by Gumbel-top-k with generator ``seed``."""
    t = ctx.teacher.dense().T.clone()  # [items, users]
    s = ctx.student.dense().T
    h = ctx.history
    t[h.col, h.row] = -math.inf
    t[:, 0] = -math.inf
    vals, order = t.sort(dim=1, descending=True, stable=True)
    top, lengths = order[:, :m], torch.isfinite(vals[:, :m]).sum(1)
    ranks = (s.unsqueeze(1) > s.gather(1, top).unsqueeze(2)).sum(2)  # [I, m]
    diff = (ranks.to(D) - torch.arange(m, dtype=D)) / temperature
    invalid = torch.arange(m).unsqueeze(0) >= lengths.unsqueeze(1)
    w_u = torch.tanh(diff.clamp_min(0)).clamp_min(1e-5).log().masked_fill(invalid, -math.inf)
    w_o = torch.tanh((-diff).clamp_min(0)).clamp_min(1e-5).log().masked_fill(invalid, -math.inf)
    g = torch.Generator().manual_seed(seed)
    pos_u, pos_o = _gumbel_topk(w_u, k, g), _gumbel_topk(w_o, k, g)
    n = lengths.unsqueeze(1)
    return top.gather(1, pos_u), top.gather(1, pos_o), pos_u < n, pos_o < n


@pytest.mark.parametrize("model_cls", [BPR, ToyMF])
def test_dcd_item_side_equals_dense_reference(model_cls):
    ctx, ad = _dcd_setup(model_cls, user_weight=0.0, item_weight=1.0)
    ad.generator.manual_seed(5)
    got = ad.resample_items()
    ref = _dense_item_side(ctx, 5, m=6, k=4, temperature=2.0)
    assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])
    assert int((~ref[2][1]).sum()) > 0  # the popular item has masked (invalid) entries
    for a, b, v in ((got[0], ref[0], ref[2]), (got[1], ref[1], ref[3])):
        assert torch.equal(a[v], b[v])
    hist = _hist_sets(ctx)
    for i in range(1, NI):  # sampled users never interacted with the item
        assert all(i not in hist[u] and u != 0 for u in got[0][i][got[2][i]].tolist())
    # the loss of a batch (default reduction "per_interaction"): the sum over the batch's
    # unique items of each item's relaxed PL over users, divided by the batch's 5 interactions
    ad.item_tables = got
    ad.tables = ad.at_positions(ctx.soft_labels, *(torch.zeros(NU, 3, dtype=torch.long),) * 2)
    batch = _batch([1, 2, 3, 4, 5], [1, 4, 4, 9, 16])
    s = ctx.student.dense()
    parts = []
    for i in (1, 4, 9, 16):
        under, over = ref[0][i][ref[2][i]], ref[1][i][ref[3][i]]
        parts.append(_relaxed_pl(s[under, i], s[over, i]))
    expected = torch.stack(parts).sum() / 5
    torch.testing.assert_close(ad(batch), expected, rtol=1e-12, atol=1e-12)


def test_dcd_total_is_the_weighted_sum_of_its_parts():
    ctx, ad = _dcd_setup(user_weight=0.3, item_weight=0.7)
    ad.on_epoch_start(0)
    batch = _batch([1, 2, 2, 7], [3, 5, 6, 1])
    users, items = torch.tensor([1, 2, 7]), torch.tensor([1, 3, 5, 6])
    s = ctx.student.dense()
    under, over = ad.tables
    b = 4  # interactions: each side's sum over its rows / b ("per_interaction")
    user_part = torch.stack([_relaxed_pl(s[u, under[u]], s[u, over[u]]) for u in users]).sum() / b
    iu, io, vu, vo = ad.item_tables
    item_part = torch.stack([_relaxed_pl(s[iu[i][vu[i]], i], s[io[i][vo[i]], i])
                             for i in items]).sum() / b
    torch.testing.assert_close(ad(batch), 0.3 * user_part + 0.7 * item_part,
                               rtol=1e-12, atol=1e-12)
    # the module's parts, and the user-only variant
    assert ad.loss.sides == "both" and ad.loss.reduction == "per_interaction"
    means = build_method("dcd", ctx, {**ad.params, "reduction": "mean"})
    means.tables, means.item_tables = ad.tables, ad.item_tables
    torch.testing.assert_close(means(batch), 0.3 * user_part * b / 3 + 0.7 * item_part * b / 4,
                               rtol=1e-12, atol=1e-12)
    _, user_only = _dcd_setup(sides="user")
    user_only.on_epoch_start(0)
    torch.testing.assert_close(user_only(batch), user_part, rtol=1e-12, atol=1e-12)
    assert not user_only.item_tables


def test_dcd_item_side_gradients_reach_the_users_embeddings():
    ctx, ad = _dcd_setup(user_weight=0.0, item_weight=1.0)
    ad.on_epoch_start(0)
    batch = _batch([1, 2, 3], [4, 9, 4])
    ad(batch).backward()
    iu, io, vu, vo = ad.item_tables
    sampled = set()
    for i in (4, 9):
        sampled |= set(iu[i][vu[i]].tolist()) | set(io[i][vo[i]].tolist())
    grad_u = ctx.student.user_embedding.weight.grad.abs().sum(1)
    assert sampled and all(grad_u[u] > 0 for u in sampled)
    assert all(grad_u[u] == 0 for u in set(range(NU)) - sampled)
    grad_i = ctx.student.item_embedding.weight.grad.abs().sum(1)
    assert grad_i[4] > 0 and grad_i[9] > 0 and grad_i[1] == 0


def test_dcd_defaults_documented():
    from recsys.losses import DCD

    d = DCD()
    assert (d.k, d.m, d.temperature, d.item_k, d.item_m, d.sides) == (100, 500, 10.0, 20, 100,
                                                                      "both")
    assert (d.user_weight, d.item_weight) == (1.0, 1.0)
    shipped = _yaml("dcd")["distill_params"]
    assert shipped["sides"] == "both" and shipped["item_m"] == 100 and shipped["item_k"] == 20
    assert set(shipped) <= set(METHODS["dcd"].defaults)


# ============================================================================ UnKD (item 4)
def test_unkd_defaults_are_the_reference_ones():
    from recsys.losses import UnKD

    u = UnKD()
    assert (u.num_groups, u.n_distill, u.m, u.temperature, u.reduction) == (2, 30, 1000, 20.0,
                                                                             "mean")
    shipped = _yaml("unkd")
    assert shipped["distill_weight"] == 1.0  # kd_weight
    p = shipped["distill_params"]
    assert (p["num_groups"], p["n_distill"], p["m"], p["reduction"]) == (2, 30, 1000, "mean")
    assert METHODS["unkd"].defaults["m"] == 1000
    import recsys.losses.unkd as module

    assert "sum over users, as in the reference" not in module.__doc__
    assert "mean over the batch's interaction rows" in module.__doc__


def test_split_pair_counts_largest_remainder():
    from recsys.samplers import split_pair_counts

    out = split_pair_counts(torch.tensor([[7, 3], [3, 7], [1, 2], [0, 0], [1, 1]]), 30)
    assert out.tolist() == [[21, 9], [9, 21], [10, 20], [15, 15], [15, 15]]
    out = split_pair_counts(torch.tensor([[1, 1, 1, 1], [1, 2, 3, 4], [5, 0, 0, 1]]), 30)
    assert out.tolist() == [[8, 8, 7, 7], [3, 6, 9, 12], [25, 0, 0, 5]]
    assert bool((out.sum(1) == 30).all())


def _unkd_setup(**params):
    """Items 1-10 popular (~9 users each), 11-60 rare (~2 each): two groups of equal mass.
    User 1 has 7 popular and 3 rare interactions (shares 0.7 / 0.3)."""
    n_users, n_items = 31, 61
    users, items = [1] * 10, list(range(1, 8)) + [11, 12, 13]
    for u in range(2, n_users):
        for j in range(3):
            users += [u, u]
            items += [1 + (u + j) % 10, 11 + (3 * u + j) % 50]
    g = torch.Generator().manual_seed(1)
    mk = lambda n: torch.randn(n, 5, generator=g, dtype=D)  # noqa: E731
    ctx = _ctx(BPR(mk(n_users), mk(n_items)), BPR(mk(n_users), mk(n_items)), users, items,
               n_users, n_items)
    ad = build_method("unkd", ctx, params)
    ad.on_soft_labels(None)
    return ctx, ad


def test_unkd_pairs_split_by_interaction_share():
    from recsys.samplers import popularity_groups

    ctx, ad = _unkd_setup(pair_split="user_share")
    groups = popularity_groups(ctx.item_popularity, 2)
    assert bool((groups[1:11] == 0).all()) and bool((groups[11:] == 1).all())
    assert ad.pair_counts[1].tolist() == [21, 9]
    assert bool((ad.pair_counts.sum(1) == 30).all())
    ad.on_epoch_start(0)
    items_i, items_j, valid = ad.tables
    assert items_i.shape == (ctx.n_users, 30)
    gi = groups[items_i[1][valid[1]]]
    assert bool((gi == groups[items_j[1][valid[1]]]).all())  # pairs within one group
    assert (int((gi == 0).sum()), int((gi == 1).sum())) == (21, 9)
    # the default "equal": 15 + 15 whatever the shares (the reference code at its lamda=0)
    _, eq = _unkd_setup()
    assert eq.loss.pair_split == "equal"
    assert eq.pair_counts[1].tolist() == [15, 15]


def test_unkd_reduction_is_the_mean_over_the_batch_interactions():
    ctx, ad = _unkd_setup()
    ad.on_epoch_start(0)
    batch_users = [1, 1, 1, 2, 5, 5, 9]
    batch = _batch(batch_users, [1, 2, 3, 4, 5, 6, 7])
    items_i, items_j, valid = ad.tables
    s = ctx.student.dense()
    loss = {}
    for u in set(batch_users):
        v = valid[u]
        loss[u] = -F.logsigmoid(s[u, items_i[u][v]] - s[u, items_j[u][v]]).mean()
    # L = (1/B) sum_b l_{u_b} = sum_u n_u l_u / sum_u n_u
    expected = sum(loss[u] for u in batch_users) / len(batch_users)
    unique_mean = sum(loss.values()) / len(loss)
    assert not torch.isclose(expected, unique_mean)
    torch.testing.assert_close(ad(batch), expected, rtol=1e-12, atol=1e-12)


# ============================================================================ CD (item 6)
def _cd_setup(n_users=41, **params):
    """The teacher ranks every user's items in the reverse order of the student."""
    n_items = 31
    g = torch.Generator().manual_seed(2)
    s_u, s_i = torch.randn(n_users, 6, generator=g, dtype=D), torch.randn(n_items, 6,
                                                                          generator=g, dtype=D)
    users = [u for u in range(1, n_users) for _ in range(3)]
    items = [1 + (7 * u + 5 * j) % (n_items - 1) for u in range(1, n_users) for j in range(3)]
    ctx = _ctx(BPR(s_u, s_i), BPR(-s_u, s_i), users, items, n_users, n_items)
    params = {"sample_num": 5, "n_distill": 2, **params}
    ad = build_method("cd", ctx, params)
    if ad.topk:
        ctx.soft_labels = teacher_topk(ctx.teacher_full_scores, n_users, n_items, ad.topk,
                                       exclude=ctx.history)
    ad.on_soft_labels(ctx.soft_labels)
    return ctx, ad


def _ranked_unobserved(ctx, scores):
    out = scores.clone()
    h = ctx.history
    out[h.row, h.col] = -math.inf
    out[:, 0] = -math.inf
    return out.sort(dim=1, descending=True, stable=True).indices


def test_cd_guide_default_is_the_student():
    from recsys.losses import CD

    assert CD().guide == "student"
    assert METHODS["cd"].defaults["guide"] == "student"
    assert _yaml("cd")["distill_params"]["guide"] == "student"
    _, ad = _cd_setup()
    assert ad.topk == 0  # no teacher soft labels needed


def test_cd_student_guide_samples_the_students_top_items_rank_aware():
    ctx, ad = _cd_setup(n_users=401, sample_num=10)
    ad.on_epoch_start(0)
    items, teacher = ad.tables
    order = _ranked_unobserved(ctx, ctx.student.dense())
    pos = torch.stack([torch.tensor([order[u].tolist().index(i) for i in items[u].tolist()])
                       for u in range(1, ctx.n_users)])
    assert bool((pos < 10).all())  # within the student's top-10 unobserved items
    assert bool((pos[:, 0] != pos[:, 1]).all())
    # rank-aware (tournament): the better half is drawn ~3x as often as the worse half
    top_half = float((pos < 5).double().mean())
    assert top_half > 0.65, top_half
    # labels: the teacher's scores of those items
    t = ctx.teacher.dense()
    torch.testing.assert_close(teacher, t.gather(1, items), rtol=1e-12, atol=1e-12)


def test_cd_student_and_teacher_guides_differ_and_student_refreshes():
    ctx, ad = _cd_setup()
    ad.on_epoch_start(0)
    student_items = ad.tables[0].clone()
    s_top = _ranked_unobserved(ctx, ctx.student.dense())[:, :5]
    t_top = _ranked_unobserved(ctx, ctx.teacher.dense())[:, :5]
    ctx_t, ad_t = _cd_setup(guide="teacher")
    ad_t.on_epoch_start(0)
    teacher_items = ad_t.tables[0]
    for u in range(1, ctx.n_users):
        assert set(student_items[u].tolist()) <= set(s_top[u].tolist())
        assert set(teacher_items[u].tolist()) <= set(t_top[u].tolist())
        assert set(student_items[u].tolist()).isdisjoint(teacher_items[u].tolist())
    # the student changes (its ranking reverses): the next epoch samples its new top items
    with torch.no_grad():
        ctx.student.user_embedding.weight.neg_()
    ad.on_epoch_start(1)
    new_top = _ranked_unobserved(ctx, ctx.student.dense())[:, :5]
    for u in range(1, ctx.n_users):
        assert set(ad.tables[0][u].tolist()) <= set(new_top[u].tolist())
        assert set(ad.tables[0][u].tolist()).isdisjoint(student_items[u].tolist())
