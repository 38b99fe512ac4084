"""Fast paths of the soft-label extraction: equal to the straightforward computation."""

from __future__ import annotations

import pytest
import torch

import recsys.softlabels.topk as topk_mod
from recsys.softlabels.topk import chunk_topk


def _scores() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 40, generator=g)
    x[0, :12] = 1.0  # a tie across every boundary
    x[1, 5:] = -torch.inf  # masked tail
    x[2, :3], x[2, 3:6] = -0.0, 0.0  # signed zeros compare equal: ties by column
    x[3, 7] = torch.nan  # NaN sorts first
    x[4] = x[4].round(decimals=1)  # many ties
    return x


@pytest.mark.parametrize("k", [1, 3, 12, 15, 16, 30, 39, 40])
def test_chunk_topk_both_paths_equal_a_stable_sort(monkeypatch, k):
    """The top-k path and the whole-row sort path (``FULL_SORT_FRACTION``) both return the
    prefix of a stable descending sort (ties by increasing column)."""
    x = _scores()
    ref_v, ref_i = x.sort(dim=1, descending=True, stable=True)
    ref_v, ref_i = ref_v[:, :k], ref_i[:, :k]
    for fraction in (0.0, 2.0):  # every k sorts whole rows / every k takes topk(k + 1)
        monkeypatch.setattr(topk_mod, "FULL_SORT_FRACTION", fraction)
        v, i = chunk_topk(x.clone(), k)
        assert torch.equal(i, ref_i)
        assert torch.equal(v.nan_to_num(), ref_v.nan_to_num())
        assert v.is_contiguous() and i.is_contiguous() and v.shape == (60, k)


def test_teacher_topk_same_with_either_path(monkeypatch):
    from recsys.softlabels import history_from_interactions, teacher_topk

    g = torch.Generator().manual_seed(1)
    table = torch.randn(30, 50, generator=g)
    hist = history_from_interactions(torch.tensor([0, 0, 5, 29]), torch.tensor([3, 9, 1, 49]),
                                     30, 50)
    outs = []
    for fraction in (0.0, 2.0):
        monkeypatch.setattr(topk_mod, "FULL_SORT_FRACTION", fraction)
        top = teacher_topk(lambda u: table[u], 30, 50, 40, exclude=hist, chunk_size=7)
        outs.append((top.indices, top.scores))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_stable_sort_prefix_equals_a_stable_sort(dtype):
    from recsys.softlabels.topk import stable_sort_prefix

    x = _scores().to(dtype)
    x[5, :20] = -torch.inf  # the -inf padding reaches into the prefix
    x[6] = 0.25  # a constant row
    ref_v, ref_i = x.sort(dim=1, descending=True, stable=True)
    for k in (1, 10, 20, 21, 39, 40):
        v, i = stable_sort_prefix(x, k)
        assert torch.equal(i, ref_i[:, :k]), k
        assert torch.equal(v.nan_to_num(), ref_v[:, :k].nan_to_num())
