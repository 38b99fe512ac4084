"""The softlabels package's settings object, chunk helpers and one store interface."""

from __future__ import annotations

import json

import pytest
import torch

from recsys.softlabels import (
    FORMAT_VERSION,
    CacheError,
    ExtractionSettings,
    IncompleteTopKError,
    TopK,
    cached_teacher_topk,
    chunk_topk,
    history_entries,
    history_from_interactions,
    load_topk,
    load_topk_mmap,
    mask_chunk,
    save_topk,
    shared_teacher_topk,
    teacher_topk,
    teacher_topk_to_disk,
    topk_fingerprint,
)

NU, NI, K = 29, 17, 4


def _table(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(NU, NI, generator=g) * 3).round() / 2  # many ties


def _hist():
    g = torch.Generator().manual_seed(1)
    u, i = torch.randint(0, NU, (70,), generator=g), torch.randint(0, NI, (70,), generator=g)
    return u, i, history_from_interactions(u, i, NU, NI)


def _same(a: TopK, b: TopK) -> bool:
    return (torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
            and torch.equal(a.users, b.users) and a.num_items == b.num_items)


# --------------------------------------------------------------------------- settings
def test_settings_equal_keywords_in_all_four_functions(tmp_path):
    table = _table()
    _, _, hist = _hist()
    fn = lambda u: table[u]  # noqa: E731
    kw = dict(exclude=hist, padding_item=3, chunk_size=5)
    s = ExtractionSettings(k=K, **kw)
    ref = teacher_topk(fn, NU, NI, K, **kw)
    assert _same(teacher_topk(fn, NU, NI, settings=s), ref)
    teacher = {"t": table}
    a = cached_teacher_topk(tmp_path / "a", teacher, fn, NU, NI, K, **kw)
    b = cached_teacher_topk(tmp_path / "a", teacher, fn, NU, NI, settings=s)
    assert _same(a, ref) and _same(b, ref)
    assert len(list((tmp_path / "a").glob("*.pt"))) == 1  # the same key, one file
    teacher_topk_to_disk(fn, NU, NI, path=tmp_path / "d", settings=s.replace(shard_users=6))
    teacher_topk_to_disk(fn, NU, NI, K, tmp_path / "e", shard_users=6, **kw)
    for d in ("d", "e"):
        assert _same(load_topk_mmap(tmp_path / d), ref)
    top = shared_teacher_topk(tmp_path / "s", teacher, fn, NU, NI, settings=s)
    assert _same(top, ref)
    users = torch.arange(NU)
    assert (topk_fingerprint(teacher, k=K, num_items=NI, users=users, exclude=hist,
                             padding_item=3, score_fn=fn)
            == topk_fingerprint(teacher, num_items=NI, users=users, settings=s, score_fn=fn))


def test_keywords_override_settings_and_settings_are_frozen():
    table = _table()
    fn = lambda u: table[u]  # noqa: E731
    s = ExtractionSettings(k=K, padding_item=None, chunk_size=1000)
    got = teacher_topk(fn, NU, NI, 2, settings=s, padding_item=0)
    assert _same(got, teacher_topk(fn, NU, NI, 2, padding_item=0))
    assert s.k == K and s.padding_item is None  # unchanged
    with pytest.raises(AttributeError):
        s.k = 3  # type: ignore[misc]


def test_settings_validate_and_name_the_fix():
    with pytest.raises(ValueError, match="`k` must be a positive int"):
        ExtractionSettings(k=0)
    with pytest.raises(ValueError, match="`chunk_size` must be >= 1"):
        ExtractionSettings(k=1, chunk_size=0)
    with pytest.raises(ValueError, match="`shard_users` must be >= 1"):
        ExtractionSettings(k=1, shard_users=0)
    with pytest.raises(ValueError, match="`scores_dtype` must be one of"):
        ExtractionSettings(k=1, scores_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="missing `k`"):
        teacher_topk(lambda u: _table()[u], NU, NI)
    with pytest.raises(TypeError, match="must be an ExtractionSettings"):
        teacher_topk(lambda u: _table()[u], NU, NI, settings={"k": 2})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="output directory"):
        teacher_topk_to_disk(lambda u: _table()[u], NU, NI, K)


def test_scores_dtype_setting_casts_and_keys_the_cache(tmp_path):
    table = _table().double()
    fn = lambda u: table[u]  # noqa: E731
    top = teacher_topk(fn, NU, NI, settings=ExtractionSettings(k=K, scores_dtype=torch.float16))
    ref = teacher_topk(fn, NU, NI, K)
    assert top.scores.dtype == torch.float16 and torch.equal(top.indices, ref.indices)
    assert torch.equal(top.scores, ref.scores.half())
    users = torch.arange(NU)
    assert (topk_fingerprint({}, k=K, num_items=NI, users=users, scores_dtype=torch.float16)
            != topk_fingerprint({}, k=K, num_items=NI, users=users))


# --------------------------------------------------------------------------- chunk helpers
def test_chunk_helpers_equal_a_dense_masked_stable_sort():
    table = _table()
    hu, hi, hist = _hist()
    users = torch.tensor([5, 0, 28, 3, 5])
    ref = table.clone()
    ref[hu, hi] = -torch.inf
    ref[:, 2] = -torch.inf
    rv, ri = ref[users].sort(dim=1, descending=True, stable=True)
    chunk = table[users]
    assert mask_chunk(chunk, users, history=hist, padding_item=2) is chunk  # in place
    assert torch.equal(chunk, ref[users])
    v, i = chunk_topk(chunk, K)
    assert torch.equal(v, rv[:, :K]) and torch.equal(i, ri[:, :K])
    r, c = history_entries(hist, users)
    want = sorted((j, int(item)) for j, u in enumerate(users.tolist())
                  for item in hi[hu == u].unique().tolist())
    assert sorted(zip(r.tolist(), c.tolist())) == want


# --------------------------------------------------------------------------- store interface
@pytest.mark.parametrize("fmt", ["pt", "mmap"])
def test_save_load_one_interface_both_formats(tmp_path, fmt):
    top = teacher_topk(lambda u: _table()[u], NU, NI, K)
    path = tmp_path / ("t.pt" if fmt == "pt" else "t")
    fp = "cd" * 32
    assert save_topk(path, top, fp, format=fmt) == path
    assert _same(load_topk(path, fp), top)  # format detected: a directory is "mmap"
    assert _same(load_topk(path, fp, format=fmt), top)
    with pytest.raises(CacheError, match="stale"):
        load_topk(path, "00" * 32)
    if fmt == "pt":
        assert int(torch.load(path, weights_only=True)["version"]) == FORMAT_VERSION
    else:
        assert json.loads((path / "layout.json").read_text())["version"] == FORMAT_VERSION


def test_store_errors_and_version_one_pt_files(tmp_path):
    top = teacher_topk(lambda u: _table()[u], NU, NI, K)
    with pytest.raises(ValueError, match="unknown top-K format"):
        save_topk(tmp_path / "x", top, "ab" * 32, format="csv")
    with pytest.raises(IncompleteTopKError, match="no layout.json"):
        load_topk(tmp_path)  # an empty directory
    # a version-1 .pt file (same entries) is still read
    path = save_topk(tmp_path / "v1.pt", top, "ab" * 32)
    state = torch.load(path, weights_only=True)
    state["version"] = torch.tensor(1)
    torch.save(state, path)
    assert _same(load_topk(path, "ab" * 32), top)
    state["version"] = torch.tensor(FORMAT_VERSION + 1)
    torch.save(state, path)
    with pytest.raises(CacheError, match="format version"):
        load_topk(path)
