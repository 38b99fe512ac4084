"""Issue 17 benchmark: RKD at small batches, LSP edge-kernel memory, input graphs built once.

Every row times *ours* (graphkd now), *today* (the implementation this issue replaces, kept
reachable in the code or rebuilt here) and the public *reference* round-robin in one process
(one call of each per round), on one torch thread; the ratios are per-round ratios of process
CPU time, reported as median [first quartile, third quartile]. Peak memory is the growth of the
process's peak RSS during one call (:func:`benchmarks._util.peak_memory`, glibc returning every
buffer >= 64 KiB to the OS), as in :mod:`benchmarks.core`.

Run: ``python -m benchmarks.perf_limits [--quick]``; writes ``results/perf_limits.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks._util import (
    _malloc_caching_mode,
    _malloc_release_mode,
    fmt_bytes,
    fmt_time,
    machine_info,
    machine_markdown,
    markdown_table,
    peak_memory,
    write_results,
)
from benchmarks.references import ref_rkd


def _quartiles(x: list[float]) -> tuple[float, float, float]:
    if len(x) < 2:
        return x[0], x[0], x[0]
    q = statistics.quantiles(x, n=4, method="inclusive")
    return q[0], statistics.median(x), q[2]


def round_robin(fns: dict[str, Callable[[], Any]], rounds: int, max_seconds: float,
                warmup: int = 2) -> dict[str, list[float]]:
    """Per-round process CPU times of each fn (one call of each per round, order rotated)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            c0 = time.process_time()
            fns[n]()
            times[n].append(time.process_time() - c0)
        if time.perf_counter() - t_start > max_seconds and r >= 4:
            break
    return times


def ratio_stats(times: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    r = [x / y for x, y in zip(times[a], times[b]) if y > 0]
    q1, med, q3 = _quartiles(r)
    return {"median": med, "q1": q1, "q3": q3, "rounds": len(r)}


def peaks(fns: dict[str, Callable[[], Any]]) -> dict[str, int]:
    _malloc_release_mode()
    out = {}
    for n, fn in fns.items():
        gc.collect()
        out[n] = min(peak_memory(fn)["peak_bytes"] for _ in range(3))
    _malloc_caching_mode()
    return out


def _step(loss_fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], Any]:
    def fn() -> torch.Tensor:
        for t in leaves:
            t.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    return fn


# ============================================================================ item 1: RKD
def rkd_today(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The RKD loss before issue 17: the direct-difference angle path for every batch."""
    from graphkd.losses.rkd import _rkd_chunk, _rkd_distance, _RKDAngleSum

    b = f_s.shape[0]
    chunk = _rkd_chunk(b, max(f_s.shape[1], f_t.shape[1]), None)
    return (25.0 * _rkd_distance(f_s, f_t, 1.0, 1e-12)
            + 50.0 * _RKDAngleSum.apply(f_s, f_t, chunk, 1.0, 1e-12) / b**3)


def rkd_bare(f_s: torch.Tensor) -> Callable[[], Any]:
    """benchmarks.core's RKD floor: Gram matmul fwd+bwd and one pass over the B^3 angles."""
    from benchmarks.core import _rkd_bare

    return _rkd_bare(f_s, f_s)


def bench_rkd(b: int, d: int, rounds: int, max_seconds: float) -> dict[str, Any]:
    from graphkd.losses import get_loss

    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(b, d, generator=g).requires_grad_(True)
    f_t = torch.randn(b, d, generator=g)
    ours = get_loss("rkd")
    fns = {
        "ours": _step(lambda: ours(f_s, f_t), [f_s]),
        "today": _step(lambda: rkd_today(f_s, f_t), [f_s]),
        "reference": _step(lambda: ref_rkd(f_s, f_t), [f_s]),
        "bare": rkd_bare(f_s),
    }
    vals = {n: float(fns[n]()) for n in ("ours", "today", "reference")}
    times = round_robin(fns, rounds, max_seconds)
    return {
        "item": 1, "case": f"RKD B={b} D={d}",
        "median_s": {n: statistics.median(t) for n, t in times.items()},
        "ours/ref": ratio_stats(times, "ours", "reference"),
        "ours/today": ratio_stats(times, "ours", "today"),
        "ours/bare": ratio_stats(times, "ours", "bare"),
        "peak_bytes": peaks({n: fns[n] for n in ("ours", "today", "reference")}),
        "loss_rel_diff_ref": abs(vals["ours"] - vals["reference"]) / abs(vals["reference"]),
    }


# ============================================================================ item 2: LSP
def _lsp_graph(n: int, k: int, seed: int = 1, regular: bool = True) -> torch.Tensor:
    """``k`` in-edges per node (``regular``) or ``n * k`` uniformly random edges."""
    g = torch.Generator().manual_seed(seed)
    dst = (torch.arange(n).repeat_interleave(k) if regular
           else torch.randint(0, n, (n * k,), generator=g))
    src = torch.randint(0, n, (n * k,), generator=g)
    perm = torch.randperm(n * k, generator=g)  # edges in no particular order, as in a dataset
    return torch.stack([src[perm], dst[perm]])


def lsp_today(f_s: torch.Tensor, f_t: torch.Tensor, edges: Any, kernel: str,
              **params) -> torch.Tensor:
    """LSP before issue 17: logits from the unfused gathers ``k.edge(x[row], x[col])``."""
    from graphkd.divergences import row_kl
    from graphkd.kernels import KERNELS

    signs = {"gaussian_l1": ("l1", -1.0 / params.get("scale", 100.0)),
             "rbf": ("l2sq", -params.get("gamma", 0.5))}
    name, factor = signs[kernel]

    def logits(x: torch.Tensor) -> torch.Tensor:
        a = x.index_select(0, edges.row)
        b = x.index_select(0, edges.col)
        return KERNELS[name].edge(a, b) * factor

    return row_kl(logits(f_s), logits(f_t.detach()), edges)


def lsp_dgl(n: int, edge_index: torch.Tensor, kernel: str, **params) -> Callable[..., Any]:
    """DistillGCN.PyTorch ``local_structure.py`` with DGL: ``apply_edges(fn.u_sub_v)``, the
    kernel on the ``[E, D]`` difference, ``edge_softmax``, the KL summed per node with
    ``update_all`` and averaged over nodes. As in benchmarks.references, the logit is the log
    of the kernel (the reference softmaxes the kernel value itself) so that it computes the same
    loss as ours."""
    import dgl
    import dgl.function as fn
    from dgl.nn.functional import edge_softmax

    graph = dgl.graph((edge_index[0], edge_index[1]), num_nodes=n)

    def structure(feat: torch.Tensor) -> torch.Tensor:
        graph.ndata["h"] = feat
        graph.apply_edges(fn.u_sub_v("h", "h", "diff"))
        e = graph.edata.pop("diff")
        if kernel == "gaussian_l1":
            e = torch.sum(torch.abs(e), dim=1) * (-1.0 / params.get("scale", 100.0))
        else:
            e = torch.sum(e * e, dim=1) * (-params.get("gamma", 0.5))
        graph.ndata.pop("h")
        return edge_softmax(graph, e)

    def loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        p_s = structure(f_s)
        with torch.no_grad():
            p_t = structure(f_t)
        graph.edata["kl"] = p_t * (torch.log(p_t) - torch.log(p_s))
        graph.update_all(fn.copy_e("kl", "m"), fn.sum("m", "kl_node"))
        graph.edata.pop("kl")
        return graph.ndata.pop("kl_node").mean()

    return loss


def bench_lsp(n: int, k: int, d_s: int, d_t: int, kernel: str, rounds: int,
              max_seconds: float, regular: bool = True) -> dict[str, Any]:
    from graphkd.graphs import EdgeSet
    from graphkd.losses import get_loss

    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(n, d_s, generator=g).requires_grad_(True)
    f_t = torch.randn(n, d_t, generator=g)
    edge_index = _lsp_graph(n, k, regular=regular)
    edges = EdgeSet.from_edge_index(edge_index, n)
    ours = get_loss("lsp", graph="input", kernel=kernel)
    dgl_loss = lsp_dgl(n, edge_index, kernel)
    fns = {
        "ours": _step(lambda: ours(f_s, f_t, edge_index=edge_index), [f_s]),
        "today": _step(lambda: lsp_today(f_s, f_t, edges, kernel), [f_s]),
        "reference": _step(lambda: dgl_loss(f_s, f_t), [f_s]),
    }
    vals = {name: float(fn()) for name, fn in fns.items()}
    times = round_robin(fns, rounds, max_seconds)
    pk = peaks(fns)
    return {
        "item": 2, "case": (f"LSP {kernel} N={n} K={k} D_s={d_s} D_t={d_t}" if regular else
                            f"LSP {kernel} N={n} E={n * k} random D_s={d_s} D_t={d_t}"),
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "ours/ref": ratio_stats(times, "ours", "reference"),
        "ours/today": ratio_stats(times, "ours", "today"),
        "peak_bytes": pk,
        "peak_ours/ref": pk["ours"] / pk["reference"],
        "loss_rel_diff_ref": abs(vals["ours"] - vals["reference"]) / abs(vals["reference"]),
        "loss_rel_diff_today": abs(vals["ours"] - vals["today"]) / abs(vals["today"]),
    }


# ============================================================================ item 3: graphs
def bench_input_graph(n: int, k: int, d_s: int, d_t: int, rounds: int,
                      max_seconds: float) -> dict[str, Any]:
    """Two ``LSP(graph="input")`` matches on one batch, forward + backward: *ours* builds the
    EdgeSet once (as the Distiller now does, with the range check skipped for an edge_index
    already validated), *today* builds it in each match."""
    from graphkd.graphs import EdgeSet
    from graphkd.losses import get_loss

    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(n, d_s, generator=g).requires_grad_(True)
    f_t = torch.randn(n, d_t, generator=g)
    edge_index = _lsp_graph(n, k)
    a = get_loss("lsp", graph="input", kernel="rbf")
    b = get_loss("lsp", graph="input", kernel="gaussian_l1")

    def ours() -> torch.Tensor:
        edges = EdgeSet.from_edge_index(edge_index, n)
        return (a(f_s, f_t, edge_index=edge_index, edges=edges)
                + b(f_s, f_t, edge_index=edge_index, edges=edges))

    def today() -> torch.Tensor:
        return a(f_s, f_t, edge_index=edge_index) + b(f_s, f_t, edge_index=edge_index)

    fns = {"ours": _step(ours, [f_s]), "today": _step(today, [f_s]),
           "build": lambda: EdgeSet.from_edge_index(edge_index.clone(), n)}
    same = float(fns["ours"]()) == float(fns["today"]())
    times = round_robin(fns, rounds, max_seconds)
    return {
        "item": 3, "case": f"2x LSP(input) N={n} K={k} D_s={d_s} D_t={d_t}",
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "ours/today": ratio_stats(times, "ours", "today"),
        "build/today": ratio_stats(times, "build", "today"),
        "equal_loss": same,
    }


# ============================================================================ report
def _r(st: dict[str, float] | None, target: float | None = None) -> str:
    if st is None:
        return "—"
    text = f"{st['median']:.3f} [{st['q1']:.3f}, {st['q3']:.3f}]"
    if target is not None:
        text += " ✅" if st["q3"] <= target else (" ❌" if st["median"] > target else " ≈")
    return text


def render(data: dict[str, Any]) -> str:
    out = ["# Issue 17 performance limits: RKD small batches, LSP edge memory, shared input "
           "graphs", "", f"Mode: {data['mode']}. {machine_markdown(data['machine'])}", "",
           "Ratios are per-round ratios of process CPU time (one call of each implementation "
           "per round, round-robin, one torch thread, on a machine shared with other "
           "benchmark processes): median [first quartile, third quartile]. ✅: the third "
           "quartile meets the target; ≈: the median meets it but not the third quartile; ❌: "
           "the median misses it. Peak memory: growth of the process's peak RSS in one call "
           "(min of 3), glibc returning every buffer ≥ 64 KiB to the OS.", ""]
    rkd = [r for r in data["rows"] if r["item"] == 1]
    out += ["## 1. RKD (angles from the B×B Gram)", "",
            "*ours* = `rkd_loss` now; *today* = the direct-difference angle path "
            "(`_RKDAngleSum`, the implementation before this issue); *reference* = RepDistiller "
            "`RKD.py` (benchmarks.references); *bare* = benchmarks.core's floor (Gram matmul "
            "fwd+bwd and one autograd pass over the B³ angles). Forward + backward w.r.t. the "
            "student, float32, D=128. Targets: ours/ref ≤ 1.0 at every B; ours/bare ≤ 1.3 at "
            "B=256; peak ≤ today's.", ""]
    rows = []
    for r in rkd:
        m, pk = r["median_s"], r["peak_bytes"]
        b = int(r["case"].split("B=")[1].split()[0])
        rows.append([r["case"], fmt_time(m["ours"]), fmt_time(m["reference"]),
                     fmt_time(m["today"]), _r(r["ours/ref"], 1.0), _r(r["ours/today"]),
                     _r(r["ours/bare"], 1.3 if b == 256 else None), fmt_bytes(pk["ours"]),
                     fmt_bytes(pk["today"]), fmt_bytes(pk["reference"]),
                     "✅" if pk["ours"] <= pk["today"] else "❌",
                     f"{r['loss_rel_diff_ref']:.1e}"])
    out += [markdown_table(["case", "ours", "ref", "today", "ours/ref", "ours/today",
                            "ours/bare", "ours peak", "today peak", "ref peak",
                            "peak ≤ today", "loss Δ vs ref"], rows), ""]
    lsp = [r for r in data["rows"] if r["item"] == 2]
    out += ["## 2. LSP edge kernels (fused, chunked over edges)", "",
            "*ours* = `LSP(graph='input')` now (no [E, D] temporary); *today* = the unfused "
            "gathers `k.edge(x[row], x[col])` of before; *reference* = DistillGCN.PyTorch's DGL "
            "path (`apply_edges(fn.u_sub_v)`, `edge_softmax`, `update_all`), logit = log of "
            "the kernel so that both compute the same loss. Forward + backward w.r.t. the "
            "student. Targets: peak ≤ the DGL reference; time not worse than today's.", ""]
    rows = []
    for r in lsp:
        m, pk = r["median_s"], r["peak_bytes"]
        rows.append([r["case"], fmt_time(m["ours"]), fmt_time(m["reference"]),
                     fmt_time(m["today"]), _r(r["ours/ref"]), _r(r["ours/today"], 1.0),
                     fmt_bytes(pk["ours"]), fmt_bytes(pk["reference"]), fmt_bytes(pk["today"]),
                     f"{r['peak_ours/ref']:.2f} {'✅' if r['peak_ours/ref'] <= 1 else '❌'}",
                     f"{r['loss_rel_diff_ref']:.1e}"])
    out += [markdown_table(["case", "ours", "DGL ref", "today", "ours/ref time",
                            "ours/today time", "ours peak", "DGL peak", "today peak",
                            "ours/ref peak", "loss Δ vs ref"], rows), ""]
    ig = [r for r in data["rows"] if r["item"] == 3]
    out += ["## 3. Input graph built once per batch", "",
            "Two `LSP(graph='input')` matches on one batch, forward + backward: *ours* builds "
            "the EdgeSet once and passes it to both (what the Distiller does now; the range "
            "check of an already validated `edge_index` is skipped); *today* builds it in each "
            "match. *build* = one `EdgeSet.from_edge_index` of a fresh (unvalidated) tensor.",
            ""]
    rows = [[r["case"], fmt_time(r["median_s"]["ours"]), fmt_time(r["median_s"]["today"]),
             fmt_time(r["median_s"]["build"]), _r(r["ours/today"], 1.0),
             _r(r["build/today"]), "yes" if r["equal_loss"] else "no"] for r in ig]
    out += [markdown_table(["case", "ours", "today", "one build", "ours/today",
                            "build/today", "equal loss"], rows), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and sizes")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _malloc_caching_mode()
    quick = args.quick
    rows: list[dict[str, Any]] = []
    for b in ([32, 64] if quick else [32, 64, 128, 256, 512]):
        rounds = 40 if b <= 128 else (15 if b == 256 else 7)
        rows.append(bench_rkd(b, 128, 5 if quick else rounds, 60.0))
        print(rows[-1]["case"], rows[-1]["ours/ref"], flush=True)
    n = 2000 if quick else 10_000
    for kernel, regular in (("gaussian_l1", True), ("rbf", True), ("gaussian_l1", False)):
        rows.append(bench_lsp(n, 10, 32, 64, kernel, 5 if quick else 30, 60.0, regular))
        print(rows[-1]["case"], rows[-1]["peak_ours/ref"], rows[-1]["ours/today"], flush=True)
    rows.append(bench_input_graph(n, 10, 32, 64, 5 if quick else 30, 60.0))
    print(rows[-1]["case"], rows[-1]["ours/today"], flush=True)
    data = {"mode": "quick" if quick else "full", "machine": machine_info("cpu"), "rows": rows}
    if quick:
        print(render(data))
        return 0
    write_results("perf_limits", data, render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
