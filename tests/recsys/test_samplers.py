"""Samplers: distributions checked statistically (fixed seeds), constraints, errors.

Statistical tolerance: chi-square goodness-of-fit tests must not reject at level 1e-3, and
frequency checks must lie within 5 binomial standard deviations of the exact probability.
With fixed seeds the outcome is deterministic; these bounds say how far from the target
distribution a sampler may be before a test fails.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from recsys.samplers import (
    ForbiddenItems,
    discrepancy_sample,
    group_topk,
    gumbel_topk,
    pair_sample,
    popularity_groups,
    rank_aware_sample,
    sorted_rows,
    student_ranks,
    tournament_sample,
    uniform_items,
)
from recsys.softlabels import history_from_interactions

ALPHA = 1e-3


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _chi2_ok(samples: torch.Tensor, probs: torch.Tensor) -> bool:
    n = samples.numel()
    obs = torch.bincount(samples.reshape(-1), minlength=probs.numel()).double()
    exp = probs.double() / probs.sum() * n
    pos = exp > 0
    if bool((obs[~pos] > 0).any()):  # a sample where the probability is 0
        return False
    return chisquare(obs[pos].numpy(), exp[pos].numpy()).pvalue > ALPHA


# ----------------------------------------------------------------------------- rank-aware
def test_rank_aware_single_draw_distribution():
    m, t = 20, 5.0
    pos = rank_aware_sample(20000, m, 1, temperature=t, generator=_gen())
    p = torch.exp(-torch.arange(m, dtype=torch.float64) / t)
    assert _chi2_ok(pos, p)


def test_rank_aware_uniform_variant():
    pos = rank_aware_sample(5000, 30, 1, temperature=None, generator=_gen(1))
    assert _chi2_ok(pos, torch.ones(30))


def test_rank_aware_without_replacement_inclusion_probabilities():
    m, k, t, n = 5, 2, 1.5, 40000
    p = torch.softmax(-torch.arange(m, dtype=torch.float64) / t, 0)
    # exact inclusion probability of successive sampling without replacement (k = 2)
    incl = torch.tensor([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(m) if j != i)
                         for i in range(m)])
    pos = rank_aware_sample(n, m, k, temperature=t, generator=_gen(2))
    freq = torch.bincount(pos.reshape(-1), minlength=m).double() / n
    sd = (incl * (1 - incl) / n).sqrt()
    assert bool(((freq - incl).abs() < 5 * sd).all())
    # distinct and sorted (teacher order)
    assert bool((pos[:, 1] > pos[:, 0]).all())


def test_rank_aware_seeded_and_errors():
    a = rank_aware_sample(4, 500, 40, generator=_gen(3))
    b = rank_aware_sample(4, 500, 40, generator=_gen(3))
    assert torch.equal(a, b) and a.shape == (4, 40)
    assert bool((a[:, 1:] > a[:, :-1]).all()) and int(a.max()) < 500
    with pytest.raises(ValueError, match="k"):
        rank_aware_sample(4, 10, 11)
    with pytest.raises(ValueError, match="temperature"):
        rank_aware_sample(4, 10, 2, temperature=0.0)


def test_gumbel_topk_respects_minus_inf():
    logw = torch.zeros(1000, 6, dtype=torch.float64)
    logw[:, [1, 4]] = -torch.inf
    idx = gumbel_topk(logw, 4, generator=_gen(4))
    assert not bool(((idx == 1) | (idx == 4)).any())


# ----------------------------------------------------------------------------- tournament
def test_tournament_winner_distribution():
    m, t = 10, 0.05
    pos = tournament_sample(20000, m, 1, temperature=t, generator=_gen(5))
    r = torch.arange(1, m + 1, dtype=torch.float64)
    p = torch.exp(-r / (m * t))
    p = p / p.sum()
    tail = p.flip(0).cumsum(0).flip(0) - p  # sum over r' > r
    assert _chi2_ok(pos, p * p + 2 * p * tail)


def test_tournament_distinct_sorted():
    pos = tournament_sample(300, 3000, 5, generator=_gen(6))
    assert pos.shape == (300, 5)
    assert bool((pos[:, 1:] > pos[:, :-1]).all()) and int(pos.max()) < 3000
    small = tournament_sample(50, 3, 3, generator=_gen(7))  # every position needed
    assert torch.equal(small, torch.arange(3).expand(50, 3))


# ----------------------------------------------------------------------------- uniform items
NU, NI = 6, 30


def _hist():
    users = torch.tensor([0, 0, 0, 1, 2, 2, 4, 4, 4, 4])
    items = torch.tensor([3, 4, 5, 9, 1, 2, 10, 11, 12, 13])
    return history_from_interactions(users, items, NU, NI)  # users 3 and 5: empty rows


@pytest.mark.parametrize("max_rounds", [4, 0])  # 0: only the exact masked fallback
def test_uniform_items_constraints_and_uniformity(max_rounds):
    h = _hist()
    reps = 800
    users = torch.tensor([0, 3]).repeat(reps)
    top = torch.tensor([[6, 7, 8], [20, 21, 22]]).repeat(reps, 1)
    out = uniform_items(users, NI, 5, history=h, exclude_topk=top, generator=_gen(8),
                        max_rounds=max_rounds)
    assert out.shape == (2 * reps, 5)
    # distinct per row
    assert bool((out.sort(1).values[:, 1:] != out.sort(1).values[:, :-1]).all())
    for row, forbidden in [(0, {0, 3, 4, 5, 6, 7, 8}), (1, {0, 20, 21, 22})]:
        got = out[row::2]
        assert not set(got.reshape(-1).tolist()) & forbidden
        allowed = torch.ones(NI)
        allowed[list(forbidden)] = 0
        assert _chi2_ok(got, allowed)


def test_uniform_items_with_replacement_and_device(device):
    h = _hist()
    users = torch.tensor([4, 5], device=device).repeat(500)
    out = uniform_items(users, NI, 8, history=h, replacement=True, generator=_gen(9))
    assert out.device.type == device.type
    got = out[0::2].cpu()
    allowed = torch.ones(NI)
    allowed[[0, 10, 11, 12, 13]] = 0
    assert _chi2_ok(got, allowed)


def test_uniform_items_seeded_and_errors():
    h = _hist()
    a = uniform_items(torch.arange(NU), NI, 4, history=h, generator=_gen(10))
    b = uniform_items(torch.arange(NU), NI, 4, history=h, generator=_gen(10))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"e.g. \[0\].*only \[26\].*lower n"):
        uniform_items(torch.tensor([0]), NI, 27, history=h)
    with pytest.raises(ValueError, match="history has only"):
        uniform_items(torch.tensor([NU]), NI, 2, history=h)
    with pytest.raises(ValueError, match="exclude_topk"):
        uniform_items(torch.arange(2), NI, 2, exclude_topk=torch.zeros(3, 2, dtype=torch.long))
    # exactly the allowed count: every allowed item once
    out = uniform_items(torch.tensor([0]), NI, NI - 4, history=h, generator=_gen(11))
    assert sorted(out[0].tolist()) == sorted(set(range(NI)) - {0, 3, 4, 5})


# ----------------------------------------------------------------------------- DCD
def test_student_ranks_match_dense():
    g = _gen(12)
    full = torch.randn(7, 40, generator=g, dtype=torch.float64)
    items = torch.randint(0, 40, (7, 9), generator=g)
    ranks = student_ranks(lambda u: full[u], torch.arange(7), items, 40, chunk_size=3)
    ref = torch.stack([(full[u][None, :] > full[u, items[u]][:, None]).sum(1)
                       for u in range(7)])
    assert torch.equal(ranks, ref)


def test_discrepancy_sample_distribution():
    m, t, n = 6, 10.0, 20000
    r_s = torch.tensor([30.0, 0.0, 2.0, 50.0, 4.0, 1.0], dtype=torch.float64)
    under, over = discrepancy_sample(r_s.expand(n, m), 1, temperature=t, generator=_gen(13))
    d = (r_s - torch.arange(m)) / t
    w_u = torch.tanh(d.clamp_min(0)).clamp_min(1e-5)
    w_o = torch.tanh((-d).clamp_min(0)).clamp_min(1e-5)
    assert _chi2_ok(under, w_u)
    # over: most weights sit at the 1e-5 floor (tiny expected counts): 5-sigma check per item
    p_o = w_o / w_o.sum()
    freq = torch.bincount(over.reshape(-1), minlength=m).double() / n
    assert bool(((freq - p_o).abs() < 5 * (p_o * (1 - p_o) / n).sqrt() + 1 / n).all())
    u2, o2 = discrepancy_sample(r_s.expand(3, m), 3, generator=_gen(14))
    assert bool((u2[:, 1:] > u2[:, :-1]).all()) and bool((o2[:, 1:] > o2[:, :-1]).all())


# ----------------------------------------------------------------------------- UnKD
def test_popularity_groups_equal_mass():
    g = _gen(15)
    counts = torch.randint(0, 50, (200,), generator=g) ** 2
    grp = popularity_groups(counts, 4)
    total = counts.sum().item()
    mass = torch.zeros(4, dtype=torch.long).index_add(0, grp, counts)
    assert int((mass - total / 4).abs().max()) <= int(counts.max())
    order = torch.sort(-counts.double(), stable=True).indices
    assert bool((grp[order][1:] >= grp[order][:-1]).all())  # contiguous popularity bands
    assert popularity_groups(torch.tensor([1, 1, 4, 1, 1]), 2).tolist() == [1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="num_groups"):
        popularity_groups(counts, 0)
    with pytest.raises(ValueError, match="sums to 0"):
        popularity_groups(torch.zeros(5), 2)


def test_pair_sample_distribution_and_validity():
    m, t, n = 5, 2.0, 20000
    lengths = torch.tensor([m, 1, 3])
    pi, pj, valid = pair_sample(lengths.repeat_interleave(torch.tensor([n // 5, 1, 1])), 5,
                                temperature=t, generator=_gen(16))
    assert bool((pi < pj)[valid].all())
    assert not bool(valid[n // 5].any()) and bool(valid[-1].all())
    assert int(pj[-1].max()) < 3
    a, b = pi[: n // 5].reshape(-1), pj[: n // 5].reshape(-1)
    p = torch.softmax(-(torch.arange(m, dtype=torch.float64) + 1) / t, 0)
    pairs = [(x, y) for x in range(m) for y in range(x + 1, m)]
    probs = torch.tensor([2 * p[x] * p[y] for x, y in pairs])
    codes = {xy: c for c, xy in enumerate(pairs)}
    got = torch.tensor([codes[(x, y)] for x, y in zip(a.tolist(), b.tolist())])
    assert _chi2_ok(got, probs)


def test_group_topk_matches_dense():
    g = _gen(17)
    full = torch.randn(NU, NI, generator=g, dtype=torch.float64)
    groups = torch.arange(NI) % 3
    h = _hist()
    top, lengths = group_topk(lambda u: full[u], NU, NI, 50, groups, 1, exclude=h)
    masked = full.clone()
    masked[:, groups != 1] = -torch.inf
    masked[:, 0] = -torch.inf
    masked[h.row, h.col] = -torch.inf
    v, i = masked.sort(dim=1, descending=True, stable=True)
    assert top.k == 10  # min(m, group size)
    assert torch.equal(top.indices, i[:, :10])
    assert torch.equal(lengths, torch.isfinite(v[:, :10]).sum(1))
    assert lengths.tolist() == [9, 10, 9, 10, 8, 10]  # history in group 1: items 4; 1; 10, 13
    assert math.isinf(top.scores[4, -1].item())


def test_uniform_items_with_replacement_more_draws_than_items():
    """n > 4 * num_items + 8 with replacement (RD on a tiny catalogue) used to crash."""
    from recsys.samplers import uniform_items

    g = torch.Generator().manual_seed(0)
    history = (torch.tensor([0, 0, 2]), torch.tensor([1, 2]))  # CSR: user 1 saw items 1, 2
    out = uniform_items(torch.tensor([0, 1]), 5, 100, history=history, replacement=True,
                        generator=g)
    assert out.shape == (2, 100)
    assert set(out[0].tolist()) <= {1, 2, 3, 4} and set(out[1].tolist()) <= {3, 4}
    assert set(out[1].tolist()) == {3, 4}


# ----------------------------------------------------------------------------- forbidden sets
@pytest.mark.parametrize("replacement", [False, True])
@pytest.mark.parametrize("max_rounds", [4, 0])
def test_uniform_items_forbidden_cache_draws_exactly_the_same(monkeypatch, replacement,
                                                             max_rounds):
    """A prebuilt ForbiddenItems (dense mask or sorted keys) gives the very draws of the
    straightforward call (keys built inside and searched, the behaviour before the cache)."""
    import recsys.samplers as smp

    h = _hist()
    users = torch.arange(NU).repeat(40)
    top = torch.randint(1, NI, (users.numel(), 3), generator=_gen(20))
    kw = {"replacement": replacement, "max_rounds": max_rounds}
    monkeypatch.setattr(smp, "DENSE_FORBIDDEN_BUDGET", 0)  # keys only: the old lookup
    plain = uniform_items(users, NI, 6, history=h, exclude_topk=top, generator=_gen(21), **kw)
    keys_only = smp.ForbiddenItems(users, NI, history=h, exclude_topk=top)
    assert keys_only.mask is None
    monkeypatch.setattr(smp, "DENSE_FORBIDDEN_BUDGET", 1 << 26)
    dense = smp.ForbiddenItems(users, NI, history=h, exclude_topk=top)
    assert dense.mask is not None and torch.equal(dense.keys, keys_only.keys)
    for forbidden in (keys_only, dense, dense):  # reused across calls, like epochs
        again = uniform_items(users, NI, 6, forbidden=forbidden, generator=_gen(21), **kw)
        assert torch.equal(again, plain)


def test_forbidden_items_membership_matches_sets():
    h = _hist()
    users = torch.tensor([4, 0, 3])
    top = torch.tensor([[1, 2], [6, 7], [8, 9]])
    f = ForbiddenItems(users, NI, history=h, exclude_topk=top)
    hist_sets = {0: {3, 4, 5}, 3: set(), 4: {10, 11, 12, 13}}
    rows = torch.arange(3).unsqueeze(1).expand(3, NI)
    items = torch.arange(NI).expand(3, NI)
    got = f.contains(rows, items)
    for r, u in enumerate(users.tolist()):
        want = hist_sets[u] | set(top[r].tolist()) | {0}
        assert {i for i in range(NI) if got[r, i]} == want
        assert int(f.counts[r]) == len(want)
    f.mask = None  # the sorted-keys lookup says the same
    assert torch.equal(f.contains(rows, items), got)


def test_uniform_items_forbidden_errors():
    h = _hist()
    f = ForbiddenItems(torch.arange(3), NI, history=h)
    with pytest.raises(ValueError, match="other users"):
        uniform_items(torch.arange(4), NI, 2, forbidden=f)
    with pytest.raises(ValueError, match="other users"):
        uniform_items(torch.arange(3), NI + 1, 2, forbidden=f)
    with pytest.raises(ValueError, match="not both"):
        uniform_items(torch.arange(3), NI, 2, forbidden=f, history=h)
    with pytest.raises(ValueError, match="1-D integer"):
        ForbiddenItems(torch.zeros(2, 2, dtype=torch.long), NI)


def test_sorted_rows_equal_torch_sort_values():
    g = _gen(22)
    x = torch.randn(50, 300, generator=g)
    x[0, :10] = 0.5  # ties
    x[1, :5] = -torch.inf
    x[2, :4], x[2, 4:8] = -0.0, 0.0
    for t in (x, x.double()):
        assert torch.equal(sorted_rows(t), t.sort(dim=1).values)
    half = x.half()  # not NumPy's: torch.sort
    assert torch.equal(sorted_rows(half), half.sort(dim=1).values)
