"""Sharded, memory-mapped teacher top-K: equal to the in-memory extraction, ranks, completeness."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.softlabels import (
    IncompleteTopKError,
    history_from_interactions,
    load_topk_mmap,
    rank_user_range,
    teacher_topk,
    teacher_topk_to_disk,
)

NU, NI, K = 53, 31, 6


def _table(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # float32, rounded: many exact ties, also across the top-k boundary
    return (torch.randn(NU, NI, generator=g) * 3).round() / 2


def _hist():
    g = torch.Generator().manual_seed(1)
    u, i = torch.randint(0, NU, (150,), generator=g), torch.randint(0, NI, (150,), generator=g)
    return history_from_interactions(u, i, NU, NI)


def _score_fn(table):
    return lambda u: table[u]


def _dense_reference(table, users, hist):
    """Independent: mask on the full matrix, stable descending sort."""
    m = table.clone()
    m[hist.row, hist.col] = -torch.inf
    m[:, 0] = -torch.inf
    v, i = m[users].sort(dim=1, descending=True, stable=True)
    return i[:, :K], v[:, :K]


def _assert_equal(top, ref):
    assert torch.equal(top.indices, ref.indices)
    assert torch.equal(top.scores, ref.scores)
    assert torch.equal(top.users, ref.users)
    assert top.num_items == ref.num_items


@pytest.mark.parametrize("shard_users", [1, 7, 16, 53, 1000])
@pytest.mark.parametrize("chunk_size", [3, 64])
def test_disk_equals_in_memory(tmp_path, shard_users, chunk_size):
    table, hist = _table(), _hist()
    users = torch.randperm(NU, generator=torch.Generator().manual_seed(2))
    ref = teacher_topk(_score_fn(table), users, NI, K, exclude=hist, chunk_size=5)
    out = teacher_topk_to_disk(_score_fn(table), users, NI, K, tmp_path / "t", exclude=hist,
                               chunk_size=chunk_size, shard_users=shard_users)
    top = load_topk_mmap(out)
    _assert_equal(top, ref)
    di, dv = _dense_reference(table, users, hist)
    assert torch.equal(top.indices, di) and torch.equal(top.scores, dv)
    assert top.indices.dtype == torch.int64 and top.scores.dtype == torch.float32
    # the raw files hold exactly these arrays (C order, native dtypes)
    raw = np.fromfile(out / "indices.int64", dtype=np.int64).reshape(NU, K)
    assert np.array_equal(raw, ref.indices.numpy())


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_fill_one_file(tmp_path, world_size):
    table, hist = _table(3), _hist()
    ref = teacher_topk(_score_fn(table), NU, NI, K, exclude=hist)
    ranges = [rank_user_range(NU, r, world_size) for r in range(world_size)]
    for r in reversed(range(world_size)):  # any order; sequential stand-ins for ranks
        if r < world_size - 1:
            with pytest.raises(IncompleteTopKError, match="incomplete"):
                load_topk_mmap(tmp_path)
        teacher_topk_to_disk(_score_fn(table), NU, NI, K, tmp_path, exclude=hist,
                             shard_users=4, user_range=ranges[r], fingerprint="abc")
    _assert_equal(load_topk_mmap(tmp_path, fingerprint="abc"), ref)
    with pytest.raises(IncompleteTopKError, match="stale"):
        load_topk_mmap(tmp_path, fingerprint="other")


def test_rank_user_range_partitions():
    for n in (0, 1, 5, 53, 100):
        for w in (1, 2, 3, 7, 8):
            rs = [rank_user_range(n, r, w) for r in range(w)]
            assert rs[0][0] == 0 and rs[-1][1] == n
            assert all(rs[i][1] == rs[i + 1][0] for i in range(w - 1))
            sizes = [b - a for a, b in rs]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        rank_user_range(10, 2, 2)


def test_missing_range_and_corruption_raise(tmp_path):
    table = _table()
    fn = _score_fn(table)
    with pytest.raises(IncompleteTopKError, match="no layout.json"):
        load_topk_mmap(tmp_path / "nothing")
    teacher_topk_to_disk(fn, NU, NI, K, tmp_path, user_range=(0, 20))
    teacher_topk_to_disk(fn, NU, NI, K, tmp_path, user_range=(40, NU))
    with pytest.raises(IncompleteTopKError, match=r"\(20, 40\)"):
        load_topk_mmap(tmp_path)
    teacher_topk_to_disk(fn, NU, NI, K, tmp_path, user_range=(20, 40))
    ref = teacher_topk(fn, NU, NI, K)
    _assert_equal(load_topk_mmap(tmp_path), ref)
    # a truncated data file
    with open(tmp_path / "scores.bin", "r+b") as f:
        f.truncate(8)
    with pytest.raises(IncompleteTopKError, match="bytes"):
        load_topk_mmap(tmp_path)
    # a marker of another extraction
    marker = next(tmp_path.glob("done-*.json"))
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "k": K + 1}))
    with pytest.raises(IncompleteTopKError, match="another extraction"):
        load_topk_mmap(tmp_path)
    # a rank of another extraction cannot write into this directory
    with pytest.raises(ValueError, match="another extraction"):
        teacher_topk_to_disk(fn, NU, NI, K + 1, tmp_path, user_range=(0, 10))
    # a full rewrite (user_range=None) discards the old content
    teacher_topk_to_disk(fn, NU, NI, K + 1, tmp_path)
    _assert_equal(load_topk_mmap(tmp_path), teacher_topk(fn, NU, NI, K + 1))


def test_failed_shard_leaves_range_incomplete(tmp_path):
    table = _table()
    table[30, 5] = torch.nan
    with pytest.raises(ValueError, match="NaN"):
        teacher_topk_to_disk(_score_fn(table), NU, NI, K, tmp_path, shard_users=8)
    assert not list(tmp_path.glob("done-*.json"))
    with pytest.raises(IncompleteTopKError, match="incomplete"):
        load_topk_mmap(tmp_path)


def _mapped_files() -> list[tuple[int, int, str]]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5]))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_load_is_zero_copy(tmp_path):
    table = _table()
    teacher_topk_to_disk(_score_fn(table), NU, NI, K, tmp_path, scores_dtype=torch.float64)
    top = load_topk_mmap(tmp_path)
    assert top.scores.dtype == torch.float64
    maps = _mapped_files()
    for t, name in ((top.indices, "indices.int64"), (top.scores, "scores.bin"),
                    (top.users, "users.int64")):
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        owners = [f for a, b, f in maps if a <= lo and hi <= b]
        assert owners == [str((tmp_path / name).resolve())], (name, owners)
    # copy-on-write: changing the tensor never changes the file
    top.indices[0, 0] = -1
    assert load_topk_mmap(tmp_path).indices[0, 0] != -1


# --------------------------------------------------------------------------- shared_teacher_topk
def _shared_rank(folder: str) -> None:
    import torch.distributed as dist

    from recsys.softlabels import shared_teacher_topk

    g = torch.Generator().manual_seed(0)
    user_emb, item_emb = torch.randn(23, 4, generator=g), torch.randn(17, 4, generator=g)
    scored: list[int] = []

    def score(u):
        scored.extend(u.tolist())
        return user_emb[u] @ item_emb.T

    state = {"U": user_emb, "V": item_emb}
    first = shared_teacher_topk(folder, state, score, 23, 17, 4, chunk_size=5)
    n_first = len(scored)
    again = shared_teacher_topk(folder, state, score, 23, 17, 4, chunk_size=5)
    out = {"scored": scored[:n_first], "rescored": len(scored) - n_first,
           "indices": first.indices.tolist(), "same": torch.equal(again.indices, first.indices)}
    Path(folder, f"rank{dist.get_rank()}.json").write_text(json.dumps(out))


def test_shared_teacher_topk_scores_each_user_once_over_ranks(tmp_path):
    from graphkd.distributed import launch

    os.environ.pop("WORLD_SIZE", None)
    launch(_shared_rank, 2, str(tmp_path), backend="gloo")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sorted(ranks[0]["scored"] + ranks[1]["scored"]) == list(range(23))  # once each
    assert ranks[0]["scored"] == list(range(*rank_user_range(23, 0, 2)))
    assert all(r["rescored"] == 0 and r["same"] for r in ranks)  # the second call maps the file
    g = torch.Generator().manual_seed(0)
    user_emb, item_emb = torch.randn(23, 4, generator=g), torch.randn(17, 4, generator=g)
    ref = teacher_topk(lambda u: user_emb[u] @ item_emb.T, 23, 17, 4)
    assert ranks[0]["indices"] == ranks[1]["indices"] == ref.indices.tolist()


def test_shared_teacher_topk_one_process_reuses_and_keys_by_k(tmp_path):
    from recsys.softlabels import shared_teacher_topk

    user_emb, item_emb = torch.randn(9, 3), torch.randn(12, 3)
    calls = []

    def score(u):
        calls.append(u.numel())
        return user_emb[u] @ item_emb.T

    state = {"U": user_emb}
    a = shared_teacher_topk(tmp_path, state, score, 9, 12, 3)
    b = shared_teacher_topk(tmp_path, state, score, 9, 12, 3)
    assert sum(calls) == 9 and torch.equal(a.scores, b.scores)
    c = shared_teacher_topk(tmp_path, state, score, 9, 12, 5)  # another K: another extraction
    assert sum(calls) == 18 and c.k == 5
    assert len(list(tmp_path.glob("topk-mmap-*"))) == 2
