"""Teacher top-K soft labels: against a dense masked stable sort, chunking, errors, cache."""

from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch

from graphkd.graphs import EdgeSet
from recsys.softlabels import (
    CacheError,
    TopK,
    cached_teacher_topk,
    history_from_interactions,
    load_topk,
    save_topk,
    teacher_topk,
    topk_fingerprint,
)

NU, NI = 37, 23


def _scores(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # rounded to one decimal: many exact ties, also across the top-k boundary
    return (torch.randn(NU, NI, generator=g, dtype=torch.float64) * 3).round(decimals=0) / 2


def _history(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, NU, (120,), generator=g)
    items = torch.randint(0, NI, (120,), generator=g)
    keep = users != 3  # user 3 has an empty history row
    return users[keep], items[keep]


def _reference(full, users, k, hist_pairs, padding_item):
    """Dense: mask history and padding on the full matrix, stable descending sort."""
    m = full.clone()
    if hist_pairs is not None:
        m[hist_pairs[0], hist_pairs[1]] = -torch.inf
    if padding_item is not None:
        m[:, padding_item] = -torch.inf
    v, i = m[users].sort(dim=1, descending=True, stable=True)
    return i[:, :k], v[:, :k]


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 37, 1000])
@pytest.mark.parametrize("padding_item", [0, None, 7])
def test_matches_dense_reference_across_chunks(chunk_size, padding_item):
    full = _scores()
    hu, hi = _history()
    hist = history_from_interactions(hu, hi, NU, NI)
    calls = []

    def score_fn(u):
        calls.append(u.numel())
        return full[u]

    top = teacher_topk(score_fn, NU, NI, 6, exclude=hist, padding_item=padding_item,
                       chunk_size=chunk_size)
    ri, rv = _reference(full, torch.arange(NU), 6, (hu, hi), padding_item)
    assert torch.equal(top.indices, ri)
    assert torch.equal(top.scores, rv)
    assert max(calls) <= chunk_size and sum(calls) == NU
    assert top.indices.dtype == torch.int64
    assert torch.equal(top.users, torch.arange(NU))


def test_ties_are_ordered_by_item_index():
    full = torch.zeros(4, 10, dtype=torch.float64)
    full[:, 9] = 1.0
    top = teacher_topk(lambda u: full[u], 4, 10, 4, padding_item=0, chunk_size=3)
    assert top.indices.tolist() == [[9, 1, 2, 3]] * 4


def test_user_subset_order_device_and_history_forms(device):
    full = _scores().to(device)
    hu, hi = _history()
    users = torch.tensor([5, 2, 36, 3, 2], device=device)
    ref_i, ref_v = _reference(full, users, 5, (hu.to(device), hi.to(device)), 0)
    csr = sp.csr_matrix((torch.ones(hu.numel()).numpy(), (hu.numpy(), hi.numpy())),
                        shape=(NU, NI))
    h = history_from_interactions(hu, hi, NU, NI)
    forms = [h, (h.ptr, h.col), csr]
    for form in forms:
        top = teacher_topk(lambda u: full[u], users, NI, 5, exclude=form, chunk_size=2)
        assert top.indices.device.type == device.type
        assert torch.equal(top.indices, ref_i) and torch.equal(top.scores, ref_v)
        assert torch.equal(top.users, users)


def test_empty_history_row_masks_nothing_but_padding():
    full = _scores()
    hu, hi = _history()
    h = history_from_interactions(hu, hi, NU, NI)
    assert int(h.counts[3]) == 0
    top = teacher_topk(lambda u: full[u], torch.tensor([3]), NI, NI - 1, exclude=h)
    assert sorted(top.indices[0].tolist()) == list(range(1, NI))  # all but padding item 0


def test_history_never_in_topk_and_to_edgeset():
    full = _scores()
    hu, hi = _history()
    h = history_from_interactions(hu, hi, NU, NI)
    top = teacher_topk(lambda u: full[u], NU, NI, 4, exclude=h)
    hist_keys = set((hu * NI + hi).tolist())
    got = (torch.arange(NU).unsqueeze(1) * NI + top.indices).reshape(-1).tolist()
    assert not hist_keys & set(got)
    assert not bool((top.indices == 0).any())
    e = top.to_edgeset()
    assert isinstance(e, EdgeSet) and e.degree == 4 and e.num_cols == NI
    assert torch.equal(e.col, top.indices.reshape(-1))
    assert torch.equal(e.row, torch.arange(NU).repeat_interleave(4))
    # scores are non-increasing along each row
    assert bool((top.scores[:, 1:] <= top.scores[:, :-1]).all())


def test_score_fn_output_is_not_modified():
    full = _scores()
    before = full.clone()
    hu, hi = _history()
    h = history_from_interactions(hu, hi, NU, NI)
    # score_fn hands out the caller's own tensor (no copy): masking must not write into it
    teacher_topk(lambda u: full, NU, NI, 3, exclude=h, chunk_size=NU)
    assert torch.equal(full, before)


def test_view_of_callers_tensor_is_not_modified():
    full = _scores()
    before = full.clone()
    hu, hi = _history()
    h = history_from_interactions(hu, hi, NU, NI)
    # basic slicing returns a view of the caller's matrix (a fresh Python object with a _base)
    top = teacher_topk(lambda u: full[int(u[0]):int(u[-1]) + 1], NU, NI, 4, exclude=h,
                       chunk_size=8)
    assert torch.equal(full, before)
    ri, _ = _reference(full, torch.arange(NU), 4, (hu, hi), 0)
    assert torch.equal(top.indices, ri)


def test_mf_teacher_float64_matches_dense():
    g = torch.Generator().manual_seed(3)
    uu, vv = torch.randn(50, 8, generator=g, dtype=torch.float64), torch.randn(
        40, 8, generator=g, dtype=torch.float64)
    top = teacher_topk(lambda u: uu[u] @ vv.T, 50, 40, 7, chunk_size=9)
    full = uu @ vv.T
    full[:, 0] = -torch.inf
    # MF scores are (almost surely) distinct: compare the sets and the order by score
    ref = full.topk(7, dim=1).indices
    assert torch.equal(top.indices, ref)


# ----------------------------------------------------------------------------- errors
def _fn(u):
    return _scores()[u]


@pytest.mark.parametrize("k", [0, NI, NI + 5])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match="k"):
        teacher_topk(_fn, NU, NI, k)


def test_k_larger_than_a_users_unobserved_items():
    h = history_from_interactions(torch.zeros(20, dtype=torch.long), torch.arange(1, 21), NU, NI)
    with pytest.raises(ValueError, match=r"users \[0\].*Lower k"):
        teacher_topk(_fn, NU, NI, 3, exclude=h)
    teacher_topk(_fn, NU, NI, 2, exclude=h)  # 23 - 20 - padding = 2 is fine


def test_users_out_of_range():
    h = history_from_interactions(torch.tensor([0]), torch.tensor([1]), 10, NI)
    with pytest.raises(ValueError, match="history `exclude` has only 10"):
        teacher_topk(_fn, torch.tensor([0, 12]), NI, 3, exclude=h)
    with pytest.raises(ValueError, match="negative"):
        teacher_topk(_fn, torch.tensor([-1, 2]), NI, 3)
    with pytest.raises(TypeError, match="integer"):
        teacher_topk(_fn, torch.tensor([1.0]), NI, 3)
    with pytest.raises(ValueError, match="empty"):
        teacher_topk(_fn, torch.tensor([], dtype=torch.long), NI, 3)


def test_nan_scores_name_the_users():
    full = _scores()
    full[4, 7] = float("nan")
    with pytest.raises(ValueError, match=r"NaN for 1 user\(s\) \(e.g. \[4\]\)"):
        teacher_topk(lambda u: full[u], NU, NI, 3, chunk_size=4)


def test_bad_shapes_and_arguments():
    with pytest.raises(ValueError, match="shape"):
        teacher_topk(lambda u: _scores()[u][:, :5], NU, NI, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        teacher_topk(_fn, NU, NI, 3, chunk_size=0)
    with pytest.raises(ValueError, match="padding_item"):
        teacher_topk(_fn, NU, NI, 3, padding_item=NI)
    with pytest.raises(TypeError, match="history_from_interactions"):
        teacher_topk(_fn, NU, NI, 3, exclude=[1, 2])
    h = history_from_interactions(torch.tensor([0]), torch.tensor([1]), NU, NI + 1)
    with pytest.raises(ValueError, match="item columns"):
        teacher_topk(_fn, NU, NI, 3, exclude=h)


def test_too_many_minus_inf_scores():
    full = _scores()
    full[2, 3:] = -torch.inf
    with pytest.raises(ValueError, match=r"finite score.*\[2\]"):
        teacher_topk(lambda u: full[u], NU, NI, 5)


# ----------------------------------------------------------------------------- cache
class _MF(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.u = torch.nn.Parameter(torch.randn(NU, 4, generator=g, dtype=torch.float64))
        self.v = torch.nn.Parameter(torch.randn(NI, 4, generator=g, dtype=torch.float64))

    def scores(self, users):
        return self.u[users] @ self.v.T


def test_cache_reuses_rebuilds_and_loads_weights_only(tmp_path):
    mf = _MF()
    calls = []

    def fn(u):
        calls.append(1)
        return mf.scores(u)

    h = history_from_interactions(*_history(), NU, NI)
    a = cached_teacher_topk(tmp_path, mf, fn, NU, NI, 5, exclude=h, chunk_size=10)
    n_first = len(calls)
    assert n_first == 4
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    raw = torch.load(files[0], weights_only=True)
    assert set(raw) >= {"indices", "scores", "users", "fingerprint", "checksum"}
    b = cached_teacher_topk(tmp_path, mf, fn, NU, NI, 5, exclude=h, chunk_size=10)
    assert len(calls) == n_first  # loaded, not recomputed
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
    # other weights, another k or another history -> another key -> recomputed
    with torch.no_grad():
        mf.u[0, 0] += 1.0
    cached_teacher_topk(tmp_path, mf, fn, NU, NI, 5, exclude=h, chunk_size=10)
    cached_teacher_topk(tmp_path, mf, fn, NU, NI, 4, exclude=h, chunk_size=10)
    cached_teacher_topk(tmp_path, mf, fn, NU, NI, 4, exclude=None, chunk_size=10)
    assert len(calls) == 4 * n_first
    assert len(list(tmp_path.glob("*.pt"))) == 4


def test_fingerprint_covers_inputs():
    mf = _MF()
    users = torch.arange(NU)
    h = history_from_interactions(*_history(), NU, NI)
    base = topk_fingerprint(mf, k=5, num_items=NI, users=users, exclude=h)
    assert base == topk_fingerprint(mf.state_dict(), k=5, num_items=NI, users=users, exclude=h)
    others = [
        topk_fingerprint(_MF(1), k=5, num_items=NI, users=users, exclude=h),
        topk_fingerprint(mf, k=6, num_items=NI, users=users, exclude=h),
        topk_fingerprint(mf, k=5, num_items=NI, users=users[:-1], exclude=h),
        topk_fingerprint(mf, k=5, num_items=NI, users=users, exclude=None),
        topk_fingerprint(mf, k=5, num_items=NI, users=users, exclude=h, padding_item=None),
    ]
    assert len({base, *others}) == 6


def test_corrupt_and_stale_cache_are_rebuilt(tmp_path):
    mf = _MF()
    path = tmp_path / "top.pt"
    path.write_bytes(b"not a torch file")
    calls = []

    def fn(u):
        calls.append(1)
        return mf.scores(u)

    a = cached_teacher_topk(path, mf, fn, NU, NI, 5)
    assert calls  # recomputed
    assert torch.equal(load_topk(path).indices, a.indices)  # and the file is now valid
    # stale: a valid file for another teacher at the same explicit path
    other = _MF(5)
    fp_other = topk_fingerprint(other, k=5, num_items=NI, users=torch.arange(NU))
    save_topk(path, teacher_topk(other.scores, NU, NI, 5), fp_other)
    calls.clear()
    b = cached_teacher_topk(path, mf, fn, NU, NI, 5)
    assert calls and torch.equal(b.indices, a.indices)


def test_load_topk_detects_tampering_and_staleness(tmp_path):
    mf = _MF()
    top = teacher_topk(mf.scores, NU, NI, 5)
    fp = topk_fingerprint(mf, k=5, num_items=NI, users=torch.arange(NU))
    path = save_topk(tmp_path / "t.pt", top, fp)
    assert torch.equal(load_topk(path, fp).indices, top.indices)
    with pytest.raises(CacheError, match="stale"):
        load_topk(path, "0" * 64)
    state = torch.load(path, weights_only=True)
    state["indices"][0, 0] += 1
    torch.save(state, path)
    with pytest.raises(CacheError, match="corrupt"):
        load_topk(path, fp)
    del state["checksum"]
    torch.save(state, path)
    with pytest.raises(CacheError, match="incomplete"):
        load_topk(path)


def test_topk_state_roundtrip():
    top = TopK(torch.tensor([[2, 0]]), torch.tensor([[0.9, 0.1]]), 3, torch.tensor([5]))
    back = TopK.from_state_dict(top.state_dict())
    assert torch.equal(back.indices, top.indices) and back.num_items == 3
    with pytest.raises(ValueError, match="inconsistent"):
        TopK.from_state_dict({**top.state_dict(), "scores": torch.zeros(2, 2)})
