"""Relation diagnostics: linear CKA and kNN overlap against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphkd.diagnostics import (
    RelationReport,
    _Reservoir,
    knn_overlap,
    linear_cka,
    plot_relation_heatmap,
    relation_report,
    relation_table,
)


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference: HSIC with linear kernels and the centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize("n, d1, d2", [(50, 8, 5), (12, 40, 30)])  # feature and Gram branches
def test_linear_cka_matches_the_hsic_formula(n, d1, d2):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d1, generator=g) + 3.0
    y = x[:, :min(d1, d2)].repeat(1, 2)[:, :d2] + 0.7 * torch.randn(n, d2, generator=g)
    ref = _cka_hsic(x.double().numpy(), y.double().numpy())
    assert 0.05 < ref < 0.99
    assert linear_cka(x, y) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(y, x) == pytest.approx(ref, rel=1e-10)


def test_linear_cka_invariances_and_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 16, generator=g, dtype=torch.float64)  # float64: exact transforms
    y = torch.randn(80, 10, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-9)          # orthogonal
    assert linear_cka(7.5 * x + 2.0, 0.1 * y) == pytest.approx(base, rel=1e-9)  # scale+shift
    aniso = x * torch.linspace(0.1, 10, 16, dtype=torch.float64)
    assert abs(linear_cka(aniso, y) - base) > 1e-3                       # not any linear map
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= base < 0.5


def test_linear_cka_errors():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="same rows"):
        linear_cka(x, torch.randn(9, 3))
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(x, torch.ones(10, 2))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError):
        linear_cka(bad, x)


def _brute_overlap(x: np.ndarray, y: np.ndarray, k: int, batch: np.ndarray | None = None):
    out = []
    for i in range(len(x)):
        same = np.arange(len(x)) if batch is None else np.flatnonzero(batch == batch[i])
        cand = same[same != i]
        nx = cand[np.argsort(((x[cand] - x[i]) ** 2).sum(1))[:k]]
        ny = cand[np.argsort(((y[cand] - y[i]) ** 2).sum(1))[:k]]
        out.append(len(set(nx) & set(ny)) / k)
    return np.array(out)


def test_knn_overlap_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 6, generator=g)
    y = torch.cat([x[:, :3], torch.randn(120, 4, generator=g)], 1)  # partly related
    ref = _brute_overlap(x.double().numpy(), y.double().numpy(), 7)
    assert 0.1 < ref.mean() < 0.9
    assert knn_overlap(x, y, 7) == pytest.approx(ref.mean(), abs=1e-12)
    np.testing.assert_allclose(knn_overlap(x, y, 7, reduction="none").numpy(), ref)
    batch = torch.arange(120) // 40
    ref_b = _brute_overlap(x.double().numpy(), y.double().numpy(), 5, batch.numpy())
    assert knn_overlap(x, y, 5, batch=batch) == pytest.approx(ref_b.mean(), abs=1e-12)
    assert knn_overlap(x, 2 * x + 1, 5) == 1.0
    with pytest.raises(ValueError, match="k < n"):
        knn_overlap(x[:5], y[:5], 5)


def test_reservoir_keeps_paired_uniform_rows_in_bounded_memory():
    res = _Reservoir(30, torch.Generator().manual_seed(0))
    for start in range(0, 200, 17):
        ids = torch.arange(start, min(start + 17, 200)).float()[:, None]
        res.add({"t": ids, "s": 2 * ids})
        assert res.keys.numel() <= 30
    torch.testing.assert_close(res.feats["s"], 2 * res.feats["t"])
    kept = res.feats["t"].view(-1).long()
    assert kept.unique().numel() == 30 and kept.max() > 100  # from the whole stream
    with pytest.raises(ValueError, match="different row counts"):
        res.add({"t": torch.zeros(3, 1), "s": torch.zeros(4, 1)})


@pytest.fixture(scope="module")
def molecules() -> list:
    pytest.importorskip("rdkit")
    from torch_geometric.data import Data

    from graphkd.datasets.molecules import _chembl_files, smiles_to_graphs

    smi, _ = _chembl_files()
    smiles = [ln.split()[0] for ln in smi.read_text().splitlines() if ln.strip()][:48]
    graphs, _ = smiles_to_graphs(smiles)
    return [Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr, y=torch.tensor([0]))
            for g in graphs]


def _models():
    from graphkd.models import build_model

    torch.manual_seed(0)
    return (build_model("gin", num_classes=2, hidden=32, num_layers=3),
            build_model("gcn", num_classes=2, hidden=16, num_layers=2))


def test_relation_report_equals_the_measures_on_hand_collected_features(molecules):
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import global_mean_pool

    teacher, student = _models()
    loader = DataLoader(molecules, batch_size=16)
    pairs = [("convs.2", "convs.1"), ("pool", "pool")]
    rep = relation_report(teacher, student, loader, pairs, k=5, level="graph")
    node = relation_report(teacher, student, loader, [("convs.2", "convs.1")], k=5,
                           level="node", max_samples=10_000)
    assert teacher.training and student.training  # modes restored
    full = next(iter(DataLoader(molecules, batch_size=len(molecules))))
    seen = {}
    hooks = [m.get_submodule(p).register_forward_hook(
        lambda mod, a, o, key=(tag, p): seen.__setitem__(key, o))
        for tag, m in (("t", teacher), ("s", student)) for p in ("convs.2", "convs.1", "pool")
        if p in dict(m.named_modules())]
    teacher.eval(), student.eval()
    with torch.no_grad():
        teacher(full), student(full)
    for h in hooks:
        h.remove()
    ft = global_mean_pool(seen[("t", "convs.2")], full.batch)
    fs = global_mean_pool(seen[("s", "convs.1")], full.batch)
    r0, r1 = rep.rows
    assert r0["n"] == len(molecules) and r0["level"] == "graph"
    assert r0["cka"] == pytest.approx(linear_cka(ft, fs), rel=1e-6)
    assert r0["knn_overlap"] == pytest.approx(knn_overlap(ft, fs, 5), abs=1e-9)
    assert r1["cka"] == pytest.approx(linear_cka(seen[("t", "pool")], seen[("s", "pool")]),
                                      rel=1e-6)
    nt, ns = seen[("t", "convs.2")], seen[("s", "convs.1")]
    assert node.rows[0]["n"] == nt.shape[0]
    assert node.rows[0]["cka"] == pytest.approx(linear_cka(nt, ns), rel=1e-6)
    assert node.rows[0]["knn_overlap"] == pytest.approx(knn_overlap(nt, ns, 5), abs=1e-9)
    small = relation_report(teacher, student, loader, [("convs.2", "convs.1")], k=5,
                            level="node", max_samples=60, seed=3)
    assert small.rows[0]["n"] == 60
    same = relation_report(teacher, teacher, loader, [("convs.1", "convs.1")], k=5,
                           level="node", max_samples=200)
    assert same.rows[0]["cka"] == pytest.approx(1.0) and same.rows[0]["knn_overlap"] == 1.0
    with pytest.raises(ValueError, match="level"):
        relation_report(teacher, student, loader, pairs, level="edge")
    with pytest.raises(ValueError, match="no module at path"):
        relation_report(teacher, student, loader, [("convs.9", "convs.1")])


def test_table_and_heatmap(tmp_path):
    a = RelationReport([{"teacher": "convs.4", "student": "convs.1", "level": "node", "n": 500,
                         "k": 10, "cka": 0.42, "knn_overlap": 0.137}], "node", 10)
    b = RelationReport([{**a.rows[0], "cka": 0.81, "knn_overlap": 0.52}], "node", 10)
    table = relation_table({"student": a, "lsp": b})
    assert "| student | `convs.4` | `convs.1` | node | 500 | 0.420 | 0.137 (k=10) |" in table
    assert "| lsp |" in table and "| `convs.4` |" in a.markdown()
    out = plot_relation_heatmap({"student": a, "lsp": b}, tmp_path / "sub" / "rel.png",
                                title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
