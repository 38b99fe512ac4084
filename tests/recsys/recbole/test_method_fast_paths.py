"""The adapters' per-epoch fast paths (cached forbidden sets, whole-row sorts, NumPy row
sorts) draw exactly what the straightforward computation draws from the same generator state
(real RecBole batch: 40-user slice of ml-100k, BPR student)."""

from __future__ import annotations

import pytest
import torch

import recsys.samplers as smp
import recsys.softlabels.topk as topk_mod
from recsys.samplers import rank_aware_sample, uniform_items

from .conftest import distill_setup

SMALL = {
    "rd": {"k": 5, "dynamic_start_epoch": 0, "num_dynamic_samples": 20},
    "cd": {"sample_num": 50, "n_distill": 3},
    "rrd": {"k": 6, "l": 5, "m": 30},
    "dcd": {"k": 5, "m": 30, "item_k": 4, "item_m": 15},
}


@pytest.fixture(scope="module")
def prepared(base_config, teacher_file, run_dir):
    cache = {}

    def get(method):
        if method not in cache:
            _, _, model, _ = distill_setup(method, base_config, teacher_file, run_dir,
                                           distill_params=SMALL[method])
            model.prepare()
            cache[method] = model
        return cache[method]

    return get


def _tables(fn, generator):
    """``fn()`` twice from the generator's current state (the second call reuses caches)."""
    state = generator.get_state()
    first, second = fn(), fn()
    generator.set_state(state)
    return first, second


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_rrd_resample_with_cached_forbidden_sets_equals_plain_draws(prepared):
    model = prepared("rrd")
    ad, ctx = model.distill, model.ctx
    fast = _tables(ad.resample, ad.generator)

    def plain():
        top, k = ad.soft_labels(ad.loss.k)
        pos = rank_aware_sample(ctx.n_users, top.k, k, temperature=ad.loss.temperature,
                                generator=ad.generator)
        free = ctx.n_items - 1 - top.k - int(ctx.history.counts.max())
        boring = uniform_items(ad.all_users, ctx.n_items, min(ad.loss.l, free),
                               history=ctx.history, exclude_topk=top.indices,
                               generator=ad.generator)
        return top.indices.gather(1, pos), boring

    state = ad.generator.get_state()
    want = (plain(), plain())
    ad.generator.set_state(state)
    assert _equal(fast[0], want[0]) and _equal(fast[1], want[1])
    assert not torch.equal(fast[0][1], fast[1][1])  # fresh draws each epoch


def test_rd_dynamic_samples_with_cached_forbidden_sets_equal_plain_draws(prepared):
    model = prepared("rd")
    ad, ctx = model.distill, model.ctx
    fast = _tables(ad.dynamic_samples, ad.generator)
    users = torch.arange(ctx.n_users)

    def plain():
        return uniform_items(users, ctx.n_items, ad.loss.num_dynamic_samples,
                             history=ctx.history, replacement=True, generator=ad.generator)

    state = ad.generator.get_state()
    want = (plain(), plain())
    ad.generator.set_state(state)
    assert torch.equal(fast[0], want[0]) and torch.equal(fast[1], want[1])


def test_cd_student_guided_resample_same_with_either_topk_path(prepared, monkeypatch):
    model = prepared("cd")
    ad = model.distill
    state = ad.generator.get_state()
    monkeypatch.setattr(topk_mod, "FULL_SORT_FRACTION", 0.0)  # whole-row stable sorts
    fast = ad.resample()
    ad.generator.set_state(state)
    monkeypatch.setattr(topk_mod, "FULL_SORT_FRACTION", 2.0)  # topk(k + 1) + reordering
    plain = ad.resample()
    assert _equal(fast, plain)


def test_dcd_resample_same_with_numpy_or_torch_row_sorts(prepared, monkeypatch):
    model = prepared("dcd")
    ad = model.distill
    state = ad.generator.get_state()
    fast = ad.resample() + tuple(ad.item_tables)
    ad.generator.set_state(state)
    monkeypatch.setattr(smp, "sorted_rows", lambda s: s.sort(dim=1).values)
    plain = ad.resample() + tuple(ad.item_tables)
    assert len(fast) == 6 and _equal(fast, plain)
