"""No silent wrong answers from numerics (issue 11, part 2).

* float16 / bfloat16 (and autocast) inputs are computed in float32: kNN graphs equal the float32
  graphs of the same rounded values, every registered loss equals its float32 value up to the
  rounding of the result to the caller's dtype.
* A non-finite loss from finite inputs is never returned: it is made finite by a stable
  formulation (CC's Frobenius norm) or raises ``FloatingPointError`` naming the method and the
  inputs' scale.
* An empty batch raises one ``ValueError`` naming the method and the batch size, for every loss.
* The teacher side of every loss is a constant: no gradient reaches the teacher's tensors, while
  trainable teacher-side heads (G-CRD, HKD) still learn.
* Scale-invariant losses (SP, AT, PKT, GKD, GSP, MHGD) give the same value for huge features as
  for ordinary ones (exact power-of-two rescaling), instead of a silent 0.
"""

from __future__ import annotations

import re

import pytest
import torch

from graphkd._checks import as_compute_dtype, full_precision, result_dtype
from graphkd.graphs import EdgeSet
from graphkd.losses import feature, get_loss, gnn, graph, loss_names, output, relation
from graphkd.losses._scale import rescale_pow2
from recsys import losses as rl

LOW = [torch.float16, torch.bfloat16]
#: The library's own methods (other test modules register test-only losses in the same registry).
NAMES = [n for n in loss_names()
         if get_loss.__globals__["LOSSES"].get(n).__module__.startswith("graphkd.losses")]
B, DS, DT = 16, 6, 10


# --------------------------------------------------------------------------- registry fixtures
def _build(name: str, **kwargs):
    """A registered loss with small hyperparameters (heads for B x DS -> B x DT features)."""
    if name == "lsp":
        return get_loss("lsp", graph=kwargs.pop("graph", "knn"), k=4, **kwargs)
    if name == "mhgd":
        loss = get_loss(name, student_dim=(DS, DS), teacher_dim=(DT, DT), num_heads=2)
        loss.finish_pretraining()
        return loss
    if name == "irg":
        return get_loss(name)
    if get_loss.__globals__["LOSSES"].get(name).needs_dims:
        return get_loss(name, student_dim=DS, teacher_dim=DT)
    return get_loss(name, **kwargs)


def _inputs(name: str, n: int = B, scale: float = 1.0, dtype=torch.float32, seed: int = 0):
    """``(f_s, f_t)`` for ``name`` (layer lists for IRG / MHGD, logits for KD)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    if name == "kd":
        return r(n, 5), r(n, 5)
    if name == "irg":
        return [r(n, 8), r(n, 8), r(n, 5)], [r(n, 8), r(n, 8), r(n, 5)]
    if name == "mhgd":
        return (r(n, DS), r(n, DS)), (r(n, DT), r(n, DT))
    return r(n, DS), r(n, DT)


def _map(x, fn):
    return type(x)(fn(v) for v in x) if isinstance(x, (list, tuple)) else fn(x)


def _leaves(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _run(name, f_s, f_t, seed=0, **kwargs):
    torch.manual_seed(seed)  # heads are initialised alike for both precisions
    device = _leaves(f_s)[0].device
    return _build(name, **kwargs).to(device)(f_s, f_t)


# --------------------------------------------------------------------------- helpers
def test_compute_dtype_helpers_keep_float32_and_float64():
    h = torch.ones(3, dtype=torch.float16)
    d = torch.ones(3, dtype=torch.float64)
    f = torch.ones(3)
    assert as_compute_dtype(h).dtype == torch.float32
    assert as_compute_dtype(d) is d and as_compute_dtype(f) is f  # never downcast or copied
    a, b, c = as_compute_dtype(h, [h, d], None)
    assert a.dtype == torch.float32 and [t.dtype for t in b] == [torch.float32, torch.float64]
    assert c is None
    assert result_dtype(h, h) == torch.float16 and result_dtype(h, f) == torch.float32

    @full_precision
    def fn(x):
        return x, x.dtype

    out, inner = fn(torch.ones(2, dtype=torch.bfloat16))
    assert inner == torch.float32 and out.dtype == torch.bfloat16
    assert fn(d)[0] is d


# --------------------------------------------------------------------------- 1. low precision
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("kwargs", [
    {}, {"metric": "cosine"}, {"loop": True}, {"chunk_size": 37},
    {"batch": torch.arange(4).repeat_interleave(64)},                  # equal-size graphs
    {"batch": torch.tensor([0] * 100 + [1] * 156)},                      # per-graph loop
])
def test_knn_low_precision_equals_float32_graph(dtype, kwargs, device):
    """The issue's case: (randn(256, 16) * 100).half() agreed with float32 on 0% of rows."""
    x = (torch.randn(256, 16, generator=torch.Generator().manual_seed(0)) * 100).to(device, dtype)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    got = EdgeSet.knn(x, 8, **kwargs)
    want = EdgeSet.knn(x.float(), 8, **kwargs)  # the same (rounded) values in float32
    assert torch.equal(got.col.view(256, 8).sort(1).values, want.col.view(256, 8).sort(1).values)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_every_loss_low_precision_equals_float32(name, dtype, scale, device):
    """fp16 / bf16 features give the float32 loss of the same values, rounded to their dtype
    (within 1e-2 relative; in fact within one ulp), or a FloatingPointError when that value
    does not fit the dtype. Old code: NaN (LSP, SP, AT, CC, IRG at x100 in fp16), a crash in
    ``cdist`` (RKD), dtype errors in every loss with a head."""
    f_s, f_t = _inputs(name, scale=scale, dtype=dtype)
    f_s, f_t = _map(f_s, lambda v: v.to(device)), _map(f_t, lambda v: v.to(device))
    s = _map(f_s, lambda v: v.clone().requires_grad_(True))
    s32 = _map(f_s, lambda v: v.float().requires_grad_(True))
    ref = _run(name, s32, _map(f_t, torch.Tensor.float))
    assert torch.isfinite(ref)
    if ref.abs() > torch.finfo(dtype).max:
        with pytest.raises(FloatingPointError, match=f"^{name}: .*does not fit"):
            _run(name, s, f_t)
        return
    got = _run(name, s, f_t)
    assert got.dtype == dtype
    rel = float((got.detach().float() - ref.detach()).abs() / ref.detach().abs().clamp_min(1e-12))
    assert rel <= 1e-2
    torch.testing.assert_close(got, ref.to(dtype), rtol=torch.finfo(dtype).eps, atol=0)
    got.float().backward()
    ref.backward()
    for a, b in zip(_leaves(s), _leaves(s32), strict=True):
        assert a.grad.dtype == dtype and torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, b.grad.to(dtype), rtol=torch.finfo(dtype).eps,
                                   atol=float(b.grad.abs().max()) * torch.finfo(dtype).eps)


def _autocast_dtype(device):
    return torch.bfloat16 if device.type == "cpu" else torch.float16


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_under_autocast_computes_in_float32(name, device):
    """Under ``torch.autocast`` the matmuls of a loss would run in bfloat16 / float16 (errors
    ~1e-2); the loss switches autocast off and returns the float32 value."""
    f_s, f_t = _inputs(name, scale=3.0)
    f_s, f_t = _map(f_s, lambda v: v.to(device)), _map(f_t, lambda v: v.to(device))
    ref = _run(name, f_s, f_t)
    with torch.autocast(device.type, dtype=_autocast_dtype(device)):
        got = _run(name, f_s, f_t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6 if device.type == "cpu" else 1e-5, atol=0)


def test_knn_under_autocast_equals_float32_graph(device):
    x = (torch.randn(256, 16, generator=torch.Generator().manual_seed(1)) * 100).to(device)
    want = EdgeSet.knn(x, 8)
    with torch.autocast(device.type, dtype=_autocast_dtype(device)):
        got = EdgeSet.knn(x, 8)
    assert torch.equal(got.col, want.col)


@pytest.mark.parametrize("dtype", LOW)
def test_core_ops_low_precision(dtype):
    """Kernels, segment ops and divergences compute in float32 and return the caller's dtype."""
    from graphkd import ops
    from graphkd.divergences import row_kl
    from graphkd.kernels import edge_kernel

    x = (torch.randn(64, 8, generator=torch.Generator().manual_seed(2)) * 20).to(dtype)
    e = EdgeSet.knn(x, 5)
    w = edge_kernel(x, e, "l2sq")
    assert w.dtype == dtype
    torch.testing.assert_close(w, edge_kernel(x.float(), e, "l2sq").to(dtype), rtol=0, atol=0)
    v = -w / 1000
    torch.testing.assert_close(ops.row_softmax(v, e),
                               ops.row_softmax(v.float(), e).to(dtype), rtol=0, atol=0)
    kl = row_kl(v, v.flip(0), e)
    assert kl.dtype == dtype and torch.isfinite(kl)


# --------------------------------------------------------------------------- 2. non-finite
def test_cc_large_norm_is_finite_with_gradient():
    """CC of embeddings of norm ~1e8 was ``inf`` with a zero gradient."""
    g = torch.Generator().manual_seed(3)
    f_s = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1) * 1e8
    f_t = torch.nn.functional.normalize(torch.randn(16, 12, generator=g), dim=1) * 1e8
    s = f_s.clone().requires_grad_(True)
    loss = relation.cc_loss(s, f_t)
    want = relation.cc_loss(f_s.double(), f_t.double())
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=0)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    mod = get_loss("cc")(f_s, f_t)
    assert torch.isfinite(mod)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1e8, 1e19, 1e30])
def test_overflowing_loss_is_finite_or_raises(name, scale):
    """Finite inputs whose loss overflows: a finite value, or FloatingPointError that names the
    method and the inputs' scale. Old code returned inf/NaN (AB, AT, CC, FitNet, IRG, LSP, RKD,
    SP, VID at 1e19; CC already at 1e8)."""
    f_s, f_t = _inputs(name, scale=scale)
    try:
        out = _run(name, f_s, f_t)
    except FloatingPointError as err:
        msg = str(err)
        assert msg.startswith(f"{name}: the loss is not finite") and "largest |x|" in msg
        top = max(float(t.abs().max()) for t in _leaves(f_s) + _leaves(f_t))
        assert f"{top:.4g}" in msg
        return
    assert torch.isfinite(out).all()


def test_low_precision_result_that_does_not_fit_raises():
    """A float32 loss larger than float16's range is not returned as ``inf``."""
    z_s = torch.tensor([[3e4, 0.0, -3e4]] * 8, dtype=torch.float16)
    z_t = torch.tensor([[-3e4, 0.0, 3e4]] * 8, dtype=torch.float16)
    with pytest.raises(FloatingPointError, match=r"^kd: the loss .* does not fit .*float16"):
        get_loss("kd", tau=1.0, reduction="sum")(z_s, z_t)
    assert torch.isfinite(get_loss("kd", tau=1.0, reduction="sum")(z_s.float(), z_t.float()))


def test_nonfinite_input_reported_as_input_error():
    """A module without its own input scan (MHGD) names the bad input instead of returning NaN
    (old code) or blaming an overflow."""
    f_s, f_t = _inputs("mhgd")
    f_t[1][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`mhgd: f_t\[1\]` contains 1 NaN"):
        _run("mhgd", f_s, f_t)


@pytest.mark.parametrize("name", sorted(rl.RANKING_LOSSES.names()))
def test_ranking_losses_overflow_is_finite_or_raises(name):
    """The recsys base class checks its output the same way."""
    g = torch.Generator().manual_seed(4)
    big = 1e20

    def r(*shape):
        return torch.randn(*shape, generator=g) * big

    args = {
        "rd": (r(4, 10),), "cd": (r(4, 3), r(4, 3)), "rrd": (r(4, 5), r(4, 6)),
        "dcd": (r(4, 5), r(4, 5)), "unkd": (r(4, 5), r(4, 5)),
        "score_kd": (r(4, 10), r(4, 10)), "listwise_kd": (r(4, 10), r(4, 10)),
        "de": (r(4, 6), r(4, 10), r(5, 6), r(5, 10), r(5, 6), r(5, 10)),
        "ftd": (r(4, 6), r(4, 10), r(5, 6), r(5, 10)), "htd": (r(4, 6), r(4, 10), r(5, 6),
                                                          r(5, 10)),
        "hint": (r(4, 6), r(4, 10), r(5, 6), r(5, 10)),
        "hidden_state": (r(4, 6), r(4, 10)),
        "sampled_kd": (r(4, 5), r(4, 5), r(4, 7), r(4, 7)),
        "ader": (r(4, 10), r(4, 10)), "aekd": (r(4, 10), r(4, 10)),
        # users, teacher lists, student lists (ids), the student's full scores over 10 items
        "adkd": (torch.arange(4), torch.randint(10, (4, 3), generator=g),
                 torch.stack([torch.randperm(10, generator=g)[:3] for _ in range(4)]),
                 r(4, 10)),
    }[name]
    kw = ({"student_dim": 6, "teacher_dim": 10} if name in ("de", "htd", "hint", "hidden_state")
          else {"n_users": 4, "n_items": 10, "k": 3} if name == "adkd" else {})
    if name in ("de", "htd"):
        kw["num_experts"] = 3
    loss = rl.get_ranking_loss(name, **kw)
    try:
        out = loss(*args)
    except FloatingPointError as err:
        assert str(err).startswith(f"{name}: ") and "largest |x|" in str(err)
        return
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- 2b. huge scales
#: Losses invariant to the features' scale (they normalise rows / maps).
SCALE_FREE = ["sp", "at", "pkt", "gkd", "gsp", "mhgd"]


def _scale_free(name: str):
    torch.manual_seed(0)
    loss = _build(name)
    if name == "mhgd":  # the adapters' bias is the one scale-dependent part: zero it
        for adapter in loss.adapters:
            torch.nn.init.zeros_(adapter.bias)
    return loss


def _grads(name, f_s, f_t):
    s = _map(f_s, lambda v: v.clone().requires_grad_(True))
    loss = _scale_free(name).to(_leaves(f_s)[0].device)(s, f_t)
    loss.backward()
    return loss.detach(), [v.grad for v in _leaves(s)]


@pytest.mark.parametrize("name", SCALE_FREE)
@pytest.mark.parametrize("scale", [1e12, 1e30])
def test_scale_invariant_losses_do_not_vanish_for_huge_features(name, scale, device):
    """Old code: SP and AT returned exactly 0 for features of ~1e12, PKT, GKD, GSP and MHGD for
    ~1e30 (an overflowing row norm turned every relation into 0). Now the loss equals the loss
    at scale 1 and the gradient is the scale-1 gradient divided by the scale."""
    f_s, f_t = _inputs(name)
    g_s, g_t = _inputs(name, scale=scale)
    to = lambda x: _map(x, lambda v: v.to(device))  # noqa: E731
    ref, ref_grads = _grads(name, to(f_s), to(f_t))
    got, got_grads = _grads(name, to(g_s), to(g_t))
    assert ref > 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a * scale, b, rtol=1e-3, atol=float(b.abs().max()) * 1e-4)


@pytest.mark.parametrize("name", SCALE_FREE)
def test_scale_invariant_losses_are_exact_under_powers_of_two(name):
    """Features 2**40 and 2**90 times the same values: bit-identical losses, gradients exactly
    2**-50 apart (the rescaling is exact)."""
    f_s, f_t = _inputs(name)
    lo = _grads(name, _map(f_s, lambda v: v * 2.0**40), _map(f_t, lambda v: v * 2.0**40))
    hi = _grads(name, _map(f_s, lambda v: v * 2.0**90), _map(f_t, lambda v: v * 2.0**90))
    assert torch.equal(lo[0], hi[0])
    for a, b in zip(lo[1], hi[1], strict=True):
        assert torch.equal(a, b * 2.0**50)


@pytest.mark.parametrize("kernel", ["cosine", "poly"])
@pytest.mark.parametrize("scale", [1e12, 1e30])
def test_scale_invariant_pure_functions_for_huge_features(kernel, scale):
    g = torch.Generator().manual_seed(8)
    f_s, f_t = torch.randn(12, 6, generator=g), torch.rand(12, 9, generator=g)
    pairs = [
        (relation.sp_loss, {}), (relation.pkt_loss, {}), (feature.at_loss, {}),
        (graph.gkd_loss, {"k": 3, "power": 2}), (graph.gsp_loss, {"kernel": kernel}),
    ]
    for fn, kw in pairs:
        ref = fn(f_s, f_t, **kw)
        torch.testing.assert_close(fn(f_s * scale, f_t * scale, **kw), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(relation.sp_similarity(f_s * scale), relation.sp_similarity(f_s),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(graph.gkd_adjacency(f_t * scale), graph.gkd_adjacency(f_t),
                               rtol=1e-5, atol=1e-7)


def test_rescale_pow2_is_exact_and_a_no_op_for_ordinary_features():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 1000
    for v in (x, x.float(), x.half(), torch.zeros(3, 2), torch.zeros(0, 4)):
        assert torch.equal(rescale_pow2(v), v)  # max |x| < 2**16: values unchanged
    for dtype in (torch.float32, torch.float64):
        big = (x * 2.0**80).to(dtype).requires_grad_(True)
        y = rescale_pow2(big)
        assert 0.5 <= float(y.detach().abs().max()) < 1.0
        ratio = big.detach() / y.detach()
        assert torch.equal(ratio, ratio.flatten()[0].expand_as(ratio))  # one factor
        assert float(torch.frexp(ratio.flatten()[0]).mantissa) == 0.5  # a power of two
        y.sum().backward()
        assert torch.equal(big.grad, (1 / ratio).to(dtype))
    top = torch.tensor([3.0e38, -1.0])  # float32's top binade: factor 2**-128
    assert torch.equal(rescale_pow2(top), top * 2.0**-128)


# --------------------------------------------------------------------------- 3. empty batch
def _empty_message(name):
    return f"^{re.escape(name)}: got an empty batch \\(0 samples\\)"


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_refuses_an_empty_batch(name):
    """Old code: NaN (KD, GSP, G-CRD), reshape / amin / BatchNorm errors (LSP, RKD, HKD...)."""
    f_s, f_t = _inputs(name, n=0)
    with pytest.raises(ValueError, match=_empty_message(name)):
        _run(name, f_s, f_t)


def test_lsp_input_graph_refuses_an_empty_batch():
    with pytest.raises(ValueError, match=_empty_message("lsp")):
        _build("lsp", graph="input")(torch.randn(0, 4), torch.randn(0, 6),
                                     edge_index=torch.zeros(2, 0, dtype=torch.long))


def _e(*shape):
    return torch.randn(*shape)


PURE_EMPTY = {
    "kd": lambda: output.kd_loss(_e(0, 5), _e(0, 5)),
    "fitnet": lambda: feature.fitnet_loss(_e(0, 4), _e(0, 4)),
    "at": lambda: feature.at_loss(_e(0, 4), _e(0, 6)),
    "vid": lambda: feature.vid_loss(_e(0, 4), _e(0, 4), torch.ones(4)),
    "ab": lambda: feature.ab_loss(_e(0, 4), _e(0, 4)),
    "sp": lambda: relation.sp_loss(_e(0, 4), _e(0, 6)),
    "rkd": lambda: relation.rkd_loss(_e(0, 4), _e(0, 6)),
    "pkt": lambda: relation.pkt_loss(_e(0, 4), _e(0, 6)),
    "cc": lambda: relation.cc_loss(_e(0, 4), _e(0, 6)),
    "irg": lambda: relation.irg_loss([_e(0, 4), _e(0, 3)], [_e(0, 4), _e(0, 3)]),
    "lsp": lambda: graph.lsp_loss(_e(0, 4), _e(0, 6), EdgeSet.from_edge_index(
        torch.zeros(2, 0, dtype=torch.long), 0)),
    "gsp": lambda: graph.gsp_loss(_e(0, 4), _e(0, 6)),
    "gkd": lambda: graph.gkd_loss(_e(0, 4), _e(0, 6)),
    "gcrd": lambda: graph.gcrd_loss(_e(0, 4), _e(0, 4)),
    "hkd": lambda: gnn.hkd_loss(_e(0, 4), _e(0, 4)),
    "mhgd": lambda: gnn.mhgd_kl(_e(2, 0, 0), _e(2, 0, 0)),
    "rd": lambda: rl.rd_loss(_e(0, 10), rl.rd_position_weights(10)),
    "cd": lambda: rl.cd_loss(_e(0, 3), _e(0, 3)),
    "rrd": lambda: rl.rrd_loss(_e(0, 5), _e(0, 6)),
    "dcd": lambda: rl.dcd_loss(_e(0, 5), _e(0, 5)),
    "unkd": lambda: rl.unkd_loss(_e(0, 5), _e(0, 5)),
    "score_kd": lambda: rl.score_kd_loss(_e(0, 10), _e(0, 10)),
    "listwise_kd": lambda: rl.listwise_kd_loss(_e(0, 10), _e(0, 10)),
    "hint": lambda: rl.hint_loss(_e(0, 4), _e(0, 4)),
    "ftd": lambda: rl.ftd_loss(_e(0, 4), _e(0, 6)),
    "htd": lambda: rl.htd_loss(_e(0, 4), _e(0, 6), torch.zeros(0, dtype=torch.long)),
    "de": lambda: rl.de_loss(_e(0, 4), _e(0, 6), _e(2, 4, 5), _e(2, 5), _e(2, 5, 6), _e(2, 6),
                             _e(0, 2), 1.0),
}


@pytest.mark.parametrize("name", sorted(PURE_EMPTY))
def test_pure_losses_refuse_an_empty_batch(name):
    """The pure functions (graphkd and recsys) say the same. Old code: rrd_loss crashed in
    ``amin``, score_kd_loss returned NaN, rd/cd/unkd returned a silent 0."""
    with pytest.raises(ValueError, match=_empty_message(name)):
        PURE_EMPTY[name]()


@pytest.mark.parametrize("name", ["rd", "cd", "rrd", "dcd", "unkd", "score_kd", "listwise_kd"])
def test_ranking_modules_refuse_an_empty_batch(name):
    loss = rl.get_ranking_loss(name)
    args = (_e(0, 5), _e(0, 5))[: 1 if name == "rd" else 2]
    with pytest.raises(ValueError, match=_empty_message(name)):
        loss(*args)


# --------------------------------------------------------------------------- 4. teacher detached
PURE_GRAD = {
    "kd": lambda s, t: output.kd_loss(s, t),
    "fitnet": lambda s, t: feature.fitnet_loss(s, t[:, :6]),
    "at": lambda s, t: feature.at_loss(s, t),
    "vid": lambda s, t: feature.vid_loss(s, t[:, :6], torch.ones(6)),
    "ab": lambda s, t: feature.ab_loss(s, t[:, :6]),
    "sp": lambda s, t: relation.sp_loss(s, t),
    "rkd": lambda s, t: relation.rkd_loss(s, t),
    "rkd_distance": lambda s, t: relation.rkd_distance_loss(s, t),
    "rkd_angle": lambda s, t: relation.rkd_angle_loss(s, t),
    "pkt": lambda s, t: relation.pkt_loss(s, t),
    "cc": lambda s, t: relation.cc_loss(s, t),
    "irg": lambda s, t: relation.irg_loss([s, s * 2, s[:, :3]], [t[:, :6], t[:, 1:7], t[:, :3]]),
    "lsp": lambda s, t: graph.lsp_loss(s, t, EdgeSet.knn(t.detach(), 3)),
    "gsp": lambda s, t: graph.gsp_loss(s, t),
    "gkd": lambda s, t: graph.gkd_loss(s, t, k=3, power=2),
    "gcrd": lambda s, t: graph.gcrd_loss(s, t[:, :6]),
    "hkd": lambda s, t: gnn.hkd_loss(s, t[:, :6], s * 2, t[:, 1:7]),
    "mhgd": lambda s, t: gnn.mhgd_kl((s @ s.T)[None], (t @ t.T)[None]),
}


@pytest.mark.parametrize("name", sorted(PURE_GRAD))
def test_pure_losses_send_no_gradient_to_the_teacher(name):
    """``ft.requires_grad_(); sp_loss(fs, ft).backward()`` gave ``ft.grad != 0`` (old code, for
    KD, LSP, SP, RKD, PKT, GSP, GKD, CC, AT, G-CRD, and FitNet, VID, IRG, HKD, MHGD)."""
    g = torch.Generator().manual_seed(5)
    f_s = torch.randn(12, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    f_t = torch.rand(12, 10, generator=g, dtype=torch.float64).requires_grad_(True)
    if name == "kd":
        f_t = torch.randn(12, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    PURE_GRAD[name](f_s, f_t).backward()
    assert f_t.grad is None or not f_t.grad.any()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_modules_send_no_gradient_to_the_teacher_but_train_their_heads(name):
    f_s, f_t = _inputs(name, dtype=torch.float64, seed=6)
    f_s = _map(f_s, lambda v: v.requires_grad_(True))
    f_t = _map(f_t, lambda v: v.requires_grad_(True))
    torch.manual_seed(0)
    loss = _build(name).double()
    loss(f_s, f_t).backward()
    for t in _leaves(f_t):
        assert t.grad is None or not t.grad.any()
    assert any(s.grad is not None and s.grad.abs().sum() > 0 for s in _leaves(f_s))
    teacher_heads = {"gcrd": ["head_t"], "hkd": ["embed_t", "gnn_t"]}.get(name, [])
    for head in teacher_heads:  # detach the teacher's features, not its trainable heads
        params = list(getattr(loss, head).parameters())
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_two_sided_internal_paths_stay_exact_in_float64():
    """The public functions detach the teacher; the internals the modules use for trainable
    teacher-side heads (G-CRD, HKD) and RKD's hand-written teacher backward keep exact float64
    gradients on both sides, and the public student gradients stay exact."""
    g = torch.Generator().manual_seed(7)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: relation._rkd_angle(a, b, 1.0, 2, 1e-12), (s, t))
    assert torch.autograd.gradcheck(
        lambda a, b: graph._gcrd(a, b, 0.5, 8192, None, "mean"), (s, z))
    assert torch.autograd.gradcheck(lambda a, b: gnn._hkd(a, b, None, None, 0.5, True), (s, z))
    edges = EdgeSet.knn(t.detach(), 2)
    for fn in (lambda a: graph.lsp_loss(a, t, edges), lambda a: relation.rkd_loss(a, t),
               lambda a: relation.cc_loss(a, t), lambda a: output.kd_loss(a, z, 2.0)):
        assert torch.autograd.gradcheck(fn, (s,))
