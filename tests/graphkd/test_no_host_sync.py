"""The core's hot path never synchronises the host with the device.

On a GPU a host synchronisation (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``, a
data-dependent output shape such as ``nonzero`` / boolean indexing / ``unique`` / ``bincount`` /
``repeat_interleave`` without ``output_size``) stalls the launch queue. The guard below detects
all of them on CPU: a ``TorchDispatchMode`` sees every ATen op (also those called from C++ and in
backward) and raises on the syncing ones, and the Python-level exits that bypass the dispatcher
(``tolist``, ``numpy``, ``cpu``) are patched to raise.

What is checked: the segment ops on prebuilt dense, regular and irregular EdgeSets, the kernels
(``check=False``), the divergences, and the methods' loss computations (forward and backward).
Input validation (``graphkd._checks.check_finite``: one documented sync per loss call, on the
inputs) is the only sync the public loss functions make; the tests prove it by disabling it.
Graph *construction* (``EdgeSet.knn``, ``from_edge_index``) happens once per batch, outside the
guarded region.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from graphkd import ops
from graphkd.divergences import edge_huber, edge_mse, info_nce, reduce, row_kl
from graphkd.graphs import EdgeSet
from graphkd.kernels import KERNELS, edge_kernel
from graphkd.losses import graph as graph_losses
from graphkd.losses import relation

#: ATen ops that read device memory back to the host (or whose output shape depends on data).
SYNC_OPS = (
    "aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "aten.allclose",
    "aten.nonzero", "aten.argwhere", "aten.masked_select", "aten.unique", "aten._unique",
    "aten._unique2", "aten.unique_dim", "aten.unique_consecutive", "aten.bincount",
    "aten.repeat_interleave.Tensor", "aten._assert_async", "aten.where.default",
)


class HostSync(AssertionError):
    """Raised when guarded code synchronises the host."""


class _SyncGuard(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith(SYNC_OPS):
            if name.startswith("aten.repeat_interleave.Tensor") and kwargs.get(
                    "output_size") is not None:
                return func(*args, **kwargs)
            raise HostSync(f"host synchronisation in the hot path: {name}")
        if name.startswith("aten.index.Tensor"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype == torch.bool for i in indices):
                raise HostSync("host synchronisation in the hot path: boolean-mask indexing")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_sync():
    """Raise :class:`HostSync` on any host synchronisation inside the block."""

    def refuse(name):
        def method(self, *a, **k):
            raise HostSync(f"host synchronisation in the hot path: Tensor.{name}()")
        return method

    patched = {n: getattr(torch.Tensor, n) for n in ("tolist", "numpy", "cpu")}
    try:
        for n in patched:
            setattr(torch.Tensor, n, refuse(n))
        with _SyncGuard():
            yield
    finally:
        for n, f in patched.items():
            setattr(torch.Tensor, n, f)


# --------------------------------------------------------------------------- the guard itself
@pytest.mark.parametrize("bad", [
    lambda t: t.sum().item(), lambda t: bool(t.sum() > 0), lambda t: int(t.sum()),
    lambda t: float(t.sum()), lambda t: t.tolist(), lambda t: t[t > 0],
    lambda t: t.nonzero(), lambda t: torch.unique(t), lambda t: t.numpy(),
    lambda t: torch.bincount(t.long().abs()),
    lambda t: torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3])),
    lambda t: t[: t.shape[0] // 2][t.sum().long()],
])
def test_guard_catches_syncs(bad):
    t = torch.randn(6)
    with pytest.raises(HostSync), no_host_sync():
        bad(t)
    assert isinstance(t.tolist(), list)  # restored afterwards


def test_guard_allows_plain_tensor_code():
    t = torch.randn(6, requires_grad=True)
    with no_host_sync():
        y = torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]), output_size=6)
        (t.softmax(0) * y).sum().backward()
    assert t.grad is not None


# --------------------------------------------------------------------------- graphs
def _graphs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    batch = torch.tensor([0] * 5 + [1] * 7)
    regular = EdgeSet.knn(x, 3, batch=batch)
    ei = torch.tensor([[1, 2, 3, 0, 5, 6, 7, 8, 9, 10, 11, 9, 1],
                       [0, 0, 0, 1, 4, 4, 4, 4, 8, 8, 8, 10, 2]])  # empty rows 3, 5, 6, 7, 9
    irregular = EdgeSet.from_edge_index(ei, 12, batch=batch)
    dense = EdgeSet.dense(12, loop=False)
    for e in (regular, irregular, dense):  # materialise lazily built fields before the guard
        e.row, e.col, e.counts  # noqa: B018
    return x, {"regular": regular, "irregular": irregular, "dense": dense}


X, GRAPHS = _graphs()


@pytest.mark.parametrize("layout", ["regular", "irregular", "dense"])
def test_segment_ops_do_not_sync(layout):
    e = GRAPHS[layout]
    v = torch.randn(e.num_edges, dtype=torch.float64, requires_grad=True)
    vh = torch.randn(e.num_edges, 2, dtype=torch.float64, requires_grad=True)
    with no_host_sync():
        outs = [ops.row_sum(v, e), ops.row_mean(v, e), ops.row_max(v, e),
                ops.row_logsumexp(v, e), ops.row_softmax(v, e), ops.row_log_softmax(v, e),
                ops.gather_rows(ops.row_sum(vh, e), e), ops.row_softmax(vh, e)]
        total = sum(torch.where(torch.isfinite(o), o, 0.0).sum() for o in outs)
        total.backward()
    assert v.grad is not None and vh.grad is not None


@pytest.mark.parametrize("layout", [
    "regular", "dense", "irregular",
])
def test_row_logcumsumexp_does_not_sync(layout):
    e = GRAPHS[layout]
    v = torch.randn(e.num_edges, dtype=torch.float64, requires_grad=True)
    with no_host_sync():
        out = ops.row_logcumsumexp(v, e)
        out.sum().backward()
    assert v.grad is not None


@pytest.mark.parametrize("layout", ["regular", "irregular", "dense"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_edge_kernels_do_not_sync(layout, kernel):
    e = GRAPHS[layout]
    x = X.clone().requires_grad_(True)
    with no_host_sync():
        w = edge_kernel(x, e, kernel, check=False)
        w.sum().backward()
    assert w.shape == (e.num_edges,) and x.grad is not None


@pytest.mark.parametrize("layout", ["regular", "irregular", "dense"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "graph", "none"])
def test_divergences_do_not_sync(layout, reduction):
    e = GRAPHS[layout]
    if reduction == "graph" and e.batch is None:
        e = e.with_batch(torch.tensor([0] * 5 + [1] * 7), 2)
    w_s = torch.randn(e.num_edges, dtype=torch.float64, requires_grad=True)
    w_t = torch.randn(e.num_edges, dtype=torch.float64)
    with no_host_sync():
        outs = [row_kl(w_s, w_t, e, tau=2.0, reduction=reduction),
                edge_mse(w_s, w_t, e, reduction=reduction),
                edge_huber(w_s, w_t, e, reduction=reduction)]
        sum(o.sum() for o in outs).backward()
    assert w_s.grad is not None


def test_info_nce_and_reduce_do_not_sync():
    z_s = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(12, 4, dtype=torch.float64)
    batch = GRAPHS["regular"].batch
    with no_host_sync():
        loss = info_nce(z_s, z_t, tau=0.5)
        loss = loss + reduce(z_s.sum(1), "graph", group=batch, num_groups=2,
                             valid=z_s.sum(1) > 0)
        loss.backward()
    assert z_s.grad is not None


def test_info_nce_with_negatives_does_not_sync():
    z_s = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(12, 4, dtype=torch.float64)
    with no_host_sync():
        info_nce(z_s, z_t, negatives=GRAPHS["regular"]).backward()
    assert z_s.grad is not None


# --------------------------------------------------------------------------- methods
def _features():
    g = torch.Generator().manual_seed(1)
    f_s = torch.randn(12, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    f_t = torch.randn(12, 7, generator=g, dtype=torch.float64)
    return f_s, f_t


@pytest.mark.parametrize("layout", ["regular", "irregular"])
@pytest.mark.parametrize("kernel", ["rbf", "gaussian_l1", "dot", "cosine", "poly"])
def test_lsp_hot_path_does_not_sync(layout, kernel):
    f_s, f_t = _features()
    e = GRAPHS[layout]
    with no_host_sync():
        loss = graph_losses._lsp(f_s, f_t, e, kernel, "mean", 1.0, False, {})
        loss.backward()
    torch.testing.assert_close(loss, graph_losses.lsp_loss(f_s, f_t, e, kernel))


def test_relation_hot_paths_do_not_sync():
    f_s, f_t = _features()
    with no_host_sync():
        sp = relation.edge_mse(relation.sp_similarity(f_s).reshape(-1),
                               relation.sp_similarity(f_t).reshape(-1))
        rkd = 25 * relation._rkd_distance(f_s, f_t, 1.0, 1e-12) + 50 * relation._rkd_angle(
            f_s, f_t, 1.0, 5, 1e-12)
        p_s = relation._pkt_conditional(f_s, 1e-7)
        p_t = relation._pkt_conditional(f_t, 1e-7)
        pkt = (p_t * (torch.log(p_t + 1e-7) - torch.log(p_s + 1e-7))).mean()
        cc = torch.linalg.vector_norm(relation.cc_kernel(f_s) - relation.cc_kernel(f_t[:, :4]))
        (sp + rkd + pkt + cc).backward()
    torch.testing.assert_close(sp, relation.sp_loss(f_s, f_t))
    torch.testing.assert_close(rkd, relation.rkd_loss(f_s, f_t, chunk_size=5))
    torch.testing.assert_close(pkt, relation.pkt_loss(f_s, f_t))


@pytest.mark.parametrize("layout", ["regular", "irregular"])
def test_hkd_hot_path_does_not_sync(layout):
    from graphkd.losses import gnn

    e = GRAPHS[layout]
    f_s, f_t = _features()
    weight = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    with no_host_sync():
        e_s = torch.nn.functional.normalize(f_s, dim=-1)
        e_t = torch.nn.functional.normalize(f_t[:, :4], dim=-1)
        g_s = torch.nn.functional.normalize(gnn.tag_conv(e_s, e, weight), dim=-1)
        g_t = torch.nn.functional.normalize(gnn.tag_conv(e_t, e, weight), dim=-1)
        loss = gnn.hkd_loss(e_s, e_t, g_s, g_t, tau=0.5)
        loss.backward()
    assert f_s.grad is not None and weight.grad is not None


@pytest.fixture
def no_validation(monkeypatch):
    """Disable the input NaN/inf scan (the one documented sync of a public loss call)."""
    monkeypatch.setattr("graphkd._checks.check_finite", lambda x, name: None)


@pytest.mark.usefixtures("no_validation")
def test_public_losses_sync_only_in_validation():
    f_s, f_t = _features()
    z_t = torch.randn(12, 4, dtype=torch.float64)
    e = GRAPHS["irregular"]
    with no_host_sync():
        losses = [
            graph_losses.lsp_loss(f_s, f_t, e),
            graph_losses.lsp_loss(f_s, f_t, GRAPHS["regular"], "gaussian_l1"),
            graph_losses.gcrd_loss(f_s, z_t),
            graph_losses.gsp_loss(f_s, f_t, "rbf"),
            relation.sp_loss(f_s, f_t),
            relation.rkd_loss(f_s, f_t),
            relation.pkt_loss(f_s, f_t),
            relation.cc_loss(f_s, f_t, normalize=True),
        ]
        sum(losses).backward()
    assert f_s.grad is not None and all(torch.isfinite(v) for v in losses)


def test_public_loss_sync_is_the_validation():
    """With validation on, the guard fires, and it fires in graphkd._checks (nowhere else)."""
    f_s, f_t = _features()
    with pytest.raises(HostSync) as info, no_host_sync():
        relation.sp_loss(f_s, f_t)
    frames = [f.name for f in info.traceback]
    assert "check_finite" in frames


# --------------------------------------------------------------------------- benchmarks/gpu_check
# The GPU readiness script (issue 7.4): its CPU-side logic. The CUDA parts run on a GPU machine.
def test_gpu_check_exits_clearly_without_cuda(tmp_path, monkeypatch, capsys):
    from benchmarks import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == gpu_check.NO_CUDA_EXIT == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "nothing was written" in err
    assert not out.exists()


def test_gpu_check_parses_junit_and_writes_report(tmp_path):
    from benchmarks import gpu_check

    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="4">'
        '<testcase classname="tests.a" name="t[cuda]"/>'
        '<testcase classname="tests.a" name="u[cuda]"><failure message="x"/></testcase>'
        '<testcase classname="tests.b" name="v[cuda]"><skipped message="s"/></testcase>'
        '<testcase classname="tests.b" name="w[cuda]"><error message="e"/></testcase>'
        '</testsuite></testsuites>')
    parsed = gpu_check.parse_junit(xml)
    assert parsed == {"tests": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1,
                      "failures": ["tests.a::u[cuda]", "tests.b::w[cuda]"]}
    cmd = gpu_check.pytest_command(xml, ["tests/graphkd"])
    assert cmd[cmd.index("-k") + 1] == "cuda" and f"--junitxml={xml}" in cmd
    assert cmd[-1] == "tests/graphkd"
    cpu = [{"method": "sp", "label": "SP", "size": "B=8", "ours": {"time_median": 0.4},
            "reference": {"time_median": 1.0}}]
    gpu = [{"method": "sp", "label": "SP", "size": "B=8",
            "ours": {"time_median": 0.1, "peak_bytes": 10}, "reference": {"error": "OOM"}}]
    rows = gpu_check.compare_timings(cpu, gpu)
    assert rows[0]["ours"] == {"cpu_s": 0.4, "cuda_s": 0.1, "speedup": 4.0,
                               "cuda_peak_bytes": 10}
    assert rows[0]["reference"]["speedup"] is None and "bare" not in rows[0]
    bad = gpu_check.build_report("cuda", parsed, {"a": "ok", "b": "RuntimeError: sync"}, rows,
                                 1.23)
    assert bad["ok"] is False and bad["host_sync_failures"] == ["b"]
    good = gpu_check.build_report("cuda", {**parsed, "failed": 0, "errors": 0}, {"a": "ok"},
                                  rows, 1.0)
    assert good["ok"] is True
    path = gpu_check.write_report(good, tmp_path / "sub" / "r.json")
    import json

    assert json.loads(path.read_text())["timings"][0]["ours"]["speedup"] == 4.0


def test_gpu_check_runs_the_device_cases_of_a_suite(tmp_path):
    from benchmarks import gpu_check

    (tmp_path / "test_fake.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('device', ['cpu', 'cuda'])\n"
        "def test_dev(device):\n"
        "    assert device == 'cpu'\n")
    res = gpu_check.run_tests([str(tmp_path / "test_fake.py")], "cuda", timeout=120)
    assert res["tests"] == 1 and res["failed"] == 1 and res["returncode"] == 1
    assert res["failures"][0].endswith("test_dev[cuda]")


def test_gpu_check_hot_path_pieces_run_on_cpu():
    from benchmarks import gpu_check

    pieces = gpu_check._hot_path_pieces(torch.device("cpu"))
    assert {"segment_ops[irregular]", "kernels[regular]", "lsp+sp+rkd+info_nce"} <= set(pieces)
    for fn in pieces.values():
        fn()
    with no_host_sync():
        for fn in pieces.values():
            fn()
