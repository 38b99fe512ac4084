"""ADER's loss, adaptive weight, herding, exemplar budget and period split, against
independent formulas and brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from recsys.losses import ADERKD, ader_kd_loss, ader_weight, get_ranking_loss
from recsys.recbole.ader import (
    build_rows,
    exemplar_counts,
    herding,
    known_items,
    split_periods,
)


def _ce_reference(s: torch.Tensor, t: torch.Tensor, known: list[bool]) -> list[float]:
    """-sum_i p_t(i) log p_s(i) over the known columns, explicit exp / sum per row."""
    out = []
    for sb, tb in zip(s.double().tolist(), t.double().tolist(), strict=True):
        cols = [j for j, k in enumerate(known) if k]
        zs = sum(math.exp(sb[j]) for j in cols)
        zt = sum(math.exp(tb[j]) for j in cols)
        out.append(-sum(math.exp(tb[j]) / zt * math.log(math.exp(sb[j]) / zs) for j in cols))
    return out


def test_kd_loss_matches_cross_entropy_over_known_items():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g) * 2
    known = [True, False, True, True, False, True, True]
    mask = torch.tensor(known)
    ref = _ce_reference(s, t, known)
    assert float(ader_kd_loss(s, t, mask)) == pytest.approx(sum(ref) / 6, rel=1e-5)
    assert float(ader_kd_loss(s, t, mask, reduction="sum")) == pytest.approx(sum(ref), rel=1e-5)
    none = ader_kd_loss(s, t, mask, reduction="none")
    assert none.tolist() == pytest.approx(ref, rel=1e-5)
    full = _ce_reference(s, t, [True] * 7)
    assert float(ader_kd_loss(s, t)) == pytest.approx(sum(full) / 6, rel=1e-5)


def test_kd_gradient_is_softmax_difference_on_known_items_only():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, True, False, True, False])
    ader_kd_loss(s, t, mask).backward()
    cols = mask.nonzero().squeeze(1)
    expect = torch.zeros(4, 5, dtype=torch.float64)
    expect[:, cols] = (torch.softmax(s.detach()[:, cols], 1)
                       - torch.softmax(t.detach()[:, cols], 1)) / 4
    assert torch.allclose(s.grad, expect, atol=1e-12)
    assert t.grad is None  # the previous model's logits are constants


def test_kd_module_is_registered_and_checks_inputs():
    loss = get_ranking_loss("ader", lambda_base=0.5)
    assert isinstance(loss, ADERKD) and loss.lambda_base == 0.5
    with pytest.raises(ValueError, match="NaN"):
        ader_kd_loss(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="bool mask"):
        ader_kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="no item"):
        ader_kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        ader_kd_loss(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="lambda_base"):
        ADERKD(lambda_base=-1.0)


def test_adaptive_weight_formula():
    # lambda_base * sqrt(|I_{t-1}| / |I_t| * |E| / |D_t|)
    assert ader_weight(0.8, 3000, 12000, 1500, 1600) == pytest.approx(
        0.8 * math.sqrt(1500 / 1600 * 3000 / 12000))
    assert ader_weight(1.0, 0, 10, 5, 5) == 0.0
    # more old data, or fewer new items, weigh the old knowledge more
    assert ader_weight(1.0, 200, 100, 5, 5) > ader_weight(1.0, 100, 100, 5, 5)
    assert ader_weight(1.0, 100, 100, 5, 5) > ader_weight(1.0, 100, 100, 5, 8)
    with pytest.raises(ValueError):
        ader_weight(0.8, 10, 0, 5, 5)
    with pytest.raises(ValueError):
        ader_weight(float("nan"), 10, 10, 5, 5)


def _herding_brute_force(x: list[list[float]], m: int) -> list[int]:
    """Greedy mean matching in plain Python: at step k try every unselected row."""
    phi = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x]
    d = len(phi[0])
    mu = [sum(row[j] for row in phi) / len(phi) for j in range(d)]
    chosen: list[int] = []
    for k in range(1, min(m, len(phi)) + 1):
        best, best_dist = -1, math.inf
        for i in range(len(phi)):
            if i in chosen:
                continue
            mean = [(sum(phi[c][j] for c in chosen) + phi[i][j]) / k for j in range(d)]
            dist = sum((mu[j] - mean[j]) ** 2 for j in range(d))
            if dist < best_dist:
                best, best_dist = i, dist
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed,n,d,m", [(0, 12, 4, 5), (1, 7, 3, 7), (2, 30, 6, 9), (3, 5, 2, 9)])
def test_herding_matches_brute_force_greedy(seed, n, d, m):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert herding(x, m).tolist() == _herding_brute_force(x.tolist(), m)


def test_herding_first_pick_is_closest_to_the_mean_and_edges():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.1]])
    phi = x / x.norm(dim=1, keepdim=True)
    first = int(((phi - phi.mean(0)) ** 2).sum(1).argmin())
    assert herding(x, 1).tolist() == [first]
    assert herding(x, 0).numel() == 0
    assert sorted(herding(x, 10).tolist()) == [0, 1, 2, 3]  # capped at n, no repeats
    with pytest.raises(ValueError, match="NaN"):
        herding(torch.tensor([[float("nan"), 1.0]]), 1)


def test_exemplar_counts_follow_item_frequency():
    targets = torch.tensor([1] * 600 + [2] * 300 + [3] * 100)
    c = exemplar_counts(targets, 5, 100_000, torch.Generator().manual_seed(0))
    assert c.tolist() == [0, 600, 300, 100, 0]  # capped at each item's rows
    c = exemplar_counts(targets, 5, 500, torch.Generator().manual_seed(0))
    assert int(c.sum()) == 500 and int(c[0]) == 0 and int(c[4]) == 0
    assert c[1] / 500 == pytest.approx(0.6, abs=0.08) and c[3] / 500 == pytest.approx(0.1, abs=0.05)
    again = exemplar_counts(targets, 5, 500, torch.Generator().manual_seed(0))
    assert torch.equal(c, again)
    assert int(exemplar_counts(targets, 5, 0).sum()) == 0


def test_split_periods_equal_consecutive_blocks():
    g = torch.Generator().manual_seed(0)
    ts = torch.rand(103, generator=g, dtype=torch.float64)
    block = split_periods(ts, 5)
    sizes = torch.bincount(block, minlength=5)
    assert int(sizes.max() - sizes.min()) <= 1 and int(sizes.sum()) == 103
    for a, b in itertools.combinations(range(5), 2):  # every earlier block is older
        assert float(ts[block == a].max()) <= float(ts[block == b].min())
    with pytest.raises(ValueError):
        split_periods(ts, 1)
    with pytest.raises(ValueError, match="NaN"):
        split_periods(torch.tensor([0.0, float("nan")]), 2)


def test_build_rows_against_per_user_histories():
    users = torch.tensor([2, 1, 2, 1, 2, 1, 3])
    items = torch.tensor([10, 20, 11, 21, 12, 22, 30])
    times = torch.tensor([5.0, 1.0, 6.0, 2.0, 4.0, 3.0, 0.0])
    rows, index = build_rows(users, items, times, max_len=2)
    got = sorted((int(i), r.tolist(), int(n), int(tg)) for i, r, n, tg in
                 zip(index, rows.seq, rows.length, rows.target, strict=True))
    # user 1: 20, 21, 22 (times 1, 2, 3); user 2: 12, 10, 11 (times 4, 5, 6); user 3: one item
    assert got == sorted([(3, [20, 0], 1, 21), (5, [20, 21], 2, 22),
                          (0, [12, 0], 1, 10), (2, [12, 10], 2, 11)])


def test_known_items_grow_with_the_periods():
    items = torch.tensor([1, 2, 1, 3, 4])
    block = torch.tensor([0, 0, 1, 1, 2])
    known = known_items(items, block, 3, 6)
    assert known.tolist() == [[False, True, True, False, False, False],
                              [False, True, True, True, False, False],
                              [False, True, True, True, True, False]]
