"""The offline teacher cache: exact equality with the live teacher, keys, safety, integrity."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("rdkit")
from torch_geometric.loader import DataLoader  # noqa: E402

from graphkd import Distiller, Match  # noqa: E402
from graphkd.datasets import Compose, Jitter  # noqa: E402
from graphkd.datasets.molecules import _chembl_files, smiles_to_graphs  # noqa: E402
from graphkd.models import build_model  # noqa: E402
from graphkd.teacher_cache import (  # noqa: E402
    CachedTeachers,
    TeacherCache,
    TeacherCacheError,
    cache_teacher,
    check_cacheable,
    index_samples,
)

N_MOL = 40


@pytest.fixture(scope="module")
def molecules() -> list:
    """The first 40 molecules of the embedded ChEMBL series (real OGB-featurised graphs)."""
    from torch_geometric.data import Data

    smi, _ = _chembl_files()
    smiles = [ln.split()[0] for ln in smi.read_text().splitlines() if ln.strip()][:N_MOL]
    graphs, _ = smiles_to_graphs(smiles)
    return [Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr,
                 y=torch.tensor([i % 2])) for i, g in enumerate(graphs)]


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    teacher = build_model("gin", num_classes=2, hidden=32, num_layers=3, dropout=0.3)
    student = build_model("gcn", num_classes=2, hidden=16, num_layers=2, dropout=0.3)
    return teacher, student


MATCHES = [Match("convs.2", "convs.1", "lsp", weight=2.0, params={"graph": "input"}),
           Match("pool", "pool", "rkd", weight=0.5),
           Match("convs.2", "convs.1", "gcrd", params={"proj_dim": 8})]


def _distiller(teacher: nn.Module, student: nn.Module, example) -> Distiller:
    return Distiller(teacher, student, MATCHES, logits="kd", logits_weight=0.7,
                     task_loss=nn.CrossEntropyLoss(), task_weight=0.3, example=example)


def _step(d: Distiller, batch, seed: int) -> tuple[dict, dict]:
    d.train()
    d.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the student's dropout and G-CRD's sampling draw the same
    _, losses = d(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_float32_cache_gives_the_live_teachers_losses_and_gradients(molecules, tmp_path):
    data = index_samples(molecules)
    teacher, student = _models()
    loader = DataLoader(data, batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    d = _distiller(teacher, student, next(iter(loader)))
    caches = cache_teacher(d, data, tmp_path, batch_size=16)
    assert caches[0].has_logits and caches[0].layers == ["convs.2", "pool"]
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    for epoch in range(2):  # shuffled: other batch compositions each epoch
        for step, batch in enumerate(loader):
            d.teacher_source = None
            live = _step(d, batch, seed=100 * epoch + step)
            n_live = len(calls)
            d.teacher_source = CachedTeachers(caches)
            cached = _step(d, batch, seed=100 * epoch + step)
            assert len(calls) == n_live  # the teacher did not run
            assert live[0].keys() == cached[0].keys() == {
                "task", "kd", "lsp[convs.1]", "rkd[pool]", "gcrd[convs.1]"}
            for k in live[0]:
                torch.testing.assert_close(cached[0][k], live[0][k], rtol=1e-6, atol=1e-7)
            assert live[1].keys() == cached[1].keys() and len(live[1]) > 5
            for k in live[1]:
                torch.testing.assert_close(cached[1][k], live[1][k], rtol=1e-5, atol=1e-7)


def test_node_and_graph_rows_follow_the_batch_order(molecules, tmp_path):
    data = index_samples(molecules)
    teacher, _ = _models()
    cache = TeacherCache.build(teacher, data, tmp_path, ["convs.1", "pool:mean_pool"],
                               logits=True, batch_size=7)
    assert {a["name"]: a["level"] for a in cache.manifest["arrays"]} == {
        "convs.1": "node", "pool": "graph", "@logits": "graph"}
    order = [17, 3, 29, 0, 11]
    batch = next(iter(DataLoader([data[i] for i in order], batch_size=5)))
    z, feats = cache.lookup(batch)
    seen = {}
    h = teacher.get_submodule("convs.1").register_forward_hook(
        lambda m, a, o: seen.__setitem__("h", o))
    teacher.eval()
    with torch.no_grad():
        ref = [(teacher(data[i]), seen["h"]) for i in order]  # one molecule at a time
    h.remove()
    torch.testing.assert_close(z, torch.cat([r[0] for r in ref]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats["convs.1"], torch.cat([r[1] for r in ref]),
                               rtol=1e-5, atol=1e-6)
    assert feats["pool"].shape == (5, 32)


def test_key_changes_with_teacher_weights_and_reuses_otherwise(molecules, tmp_path):
    data = index_samples(molecules)
    teacher, _ = _models()
    a = TeacherCache.build(teacher, data, tmp_path, ["convs.2"], batch_size=16)
    calls = []
    hook = teacher.register_forward_hook(lambda *x: calls.append(1))
    b = TeacherCache.build(teacher, data, tmp_path, ["convs.2"], batch_size=16)
    assert b.path == a.path and not calls  # reused: the teacher did not run
    with torch.no_grad():
        teacher.head.weight[0, 0] += 1e-3
    c = TeacherCache.build(teacher, data, tmp_path, ["convs.2"], batch_size=16)
    assert c.path != a.path and c.key != a.key and calls
    hook.remove()
    with pytest.raises(TeacherCacheError, match="stale"):
        TeacherCache(a.path, key=c.key)
    # other layers, other data: other keys too
    assert TeacherCache.build(teacher, data, tmp_path, ["convs.1"]).key != c.key
    assert TeacherCache.build(teacher, data[:-1], tmp_path, ["convs.2"]).key != c.key


def test_float16_is_checked_against_max_rel_error(molecules, tmp_path):
    data = index_samples(molecules)
    teacher, _ = _models()
    ref = TeacherCache.build(teacher, data, tmp_path, ["convs.2"], logits=True)
    half = TeacherCache.build(teacher, data, tmp_path, ["convs.2"], logits=True,
                              dtype="float16")
    assert half.path != ref.path
    for a in half.manifest["arrays"]:
        assert 0 < a["max_rel_error"] <= 2.0 ** -11 + 1e-7
    batch = next(iter(DataLoader(data[:6], batch_size=6)))
    z32, f32 = ref.lookup(batch)
    z16, f16 = half.lookup(batch)
    assert f16["convs.2"].dtype == torch.float32  # handed back in the teacher's dtype
    err = (f16["convs.2"] - f32["convs.2"]).abs().max() / f32["convs.2"].abs().max()
    assert 0 < err <= 2.0 ** -11
    with pytest.raises(TeacherCacheError, match="max_rel_error"):
        TeacherCache.build(teacher, data, tmp_path / "tight", ["convs.2"], dtype="float16",
                           max_rel_error=1e-6)


def test_random_augmentation_is_refused_and_other_transforms_warn(molecules):
    class WithTransform(list):
        def __init__(self, items, transform):
            super().__init__(items)
            self.transform = transform

        def __getitem__(self, i):
            item = super().__getitem__(i)
            return self.transform(item) if callable(self.transform) else item

    with pytest.raises(TeacherCacheError, match="Jitter is a random augmentation"):
        check_cacheable(WithTransform(molecules, Compose([Jitter()])))

    class Noisy(list):
        def __getitem__(self, i):
            d = copy.copy(super().__getitem__(i))
            d.x = d.x + torch.randint(0, 2, d.x.shape)
            return d

    with pytest.raises(TeacherCacheError, match="differs between two reads"):
        check_cacheable(Noisy(molecules))
    with pytest.warns(UserWarning, match="assumes it is deterministic"):
        check_cacheable(WithTransform(molecules, lambda d: d))


def test_damaged_cache_is_detected_and_rebuilt(molecules, tmp_path):
    data = index_samples(molecules)
    teacher, _ = _models()
    cache = TeacherCache.build(teacher, data, tmp_path, ["convs.2"])
    man = json.loads((cache.path / "manifest.json").read_text())
    fname = man["arrays"][0]["file"]
    raw = bytearray((cache.path / fname).read_bytes())
    raw[100] ^= 0xFF
    (cache.path / fname).write_bytes(bytes(raw))
    with pytest.raises(TeacherCacheError, match="digest"):
        TeacherCache(cache.path)
    with pytest.warns(UserWarning, match="rebuilding"):
        again = TeacherCache.build(teacher, data, tmp_path, ["convs.2"])
    TeacherCache(again.path)  # verifies
    (again.path / fname).write_bytes(b"short")
    with pytest.raises(TeacherCacheError, match="bytes"):
        TeacherCache(again.path, verify=False)


def test_unknown_ids_missing_ids_and_duplicates(molecules, tmp_path):
    data = index_samples(molecules)
    teacher, _ = _models()
    cache = TeacherCache.build(teacher, data[:20], tmp_path, ["convs.2"])
    batch = next(iter(DataLoader(data[18:24], batch_size=6)))
    with pytest.raises(TeacherCacheError, match=r"sample id\(s\) \[20, 21, 22, 23\]"):
        cache.lookup(batch)
    plain = next(iter(DataLoader(molecules[:4], batch_size=4)))
    with pytest.raises(TeacherCacheError, match="index_samples"):
        cache.lookup(plain)
    swapped = index_samples(molecules[1:5])  # ids 0..3 on other molecules
    with pytest.raises(TeacherCacheError, match="node counts differ"):
        cache.lookup(next(iter(DataLoader(swapped, batch_size=4))))
    dup = data[:4] + data[:1]
    with pytest.raises(TeacherCacheError, match="duplicate sample ids"):
        TeacherCache.build(teacher, dup, tmp_path / "dup", ["convs.2"])
    assert not any(p.name.startswith(".") for p in (tmp_path / "dup").iterdir()
                   if p.is_dir())  # the temporary directory was removed


def test_key_function_and_mutual_refused(molecules, tmp_path):
    data = [copy.copy(d) for d in molecules]
    for i, d in enumerate(data):
        d.mol_id = 1000 + i
    teacher, student = _models()
    cache = TeacherCache.build(teacher, data, tmp_path, ["pool"], key=lambda b: b.mol_id)
    batch = next(iter(DataLoader(data[5:9], batch_size=4)))
    np.testing.assert_array_equal(cache.rows_of(np.array([1005, 1006])), [5, 6])
    assert cache.lookup(batch)[1]["pool"].shape == (4, 32)
    with pytest.raises(TeacherCacheError, match="key=fn"):
        TeacherCache(cache.path)
    d = Distiller(teacher, student, logits="kd", task_loss=nn.CrossEntropyLoss(),
                  mode="mutual", example=batch)
    with pytest.raises(ValueError, match="frozen teacher"):
        cache_teacher(d, data, tmp_path)
