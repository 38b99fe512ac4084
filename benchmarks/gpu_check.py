r"""GPU readiness check: the CUDA test cases, and the core benchmark on GPU vs CPU.

Run on a machine with an NVIDIA GPU and a CUDA build of torch::

    python -m benchmarks.gpu_check                  # tests + quick core benchmark, ~ a few min
    python -m benchmarks.gpu_check --skip-bench     # only the CUDA test cases
    python -m benchmarks.gpu_check --out report.json

Steps:

1. **Tests**: ``pytest -k cuda`` over the test suite (every test that takes the ``device``
   fixture has a ``[cuda]`` case, skipped on CPU-only machines), with a JUnit XML report parsed
   into counts and the failing test ids.
2. **Host syncs on CUDA**: the core hot path (segment ops on regular and irregular EdgeSets,
   kernels with ``check=False``, divergences, LSP / SP / RKD computations, forward and
   backward) runs under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any
   synchronising CUDA call; each piece is reported ``ok`` or with the error.
3. **Benchmark**: the quick cases of :mod:`benchmarks.core` (SP, PKT, RKD, CC, LSP, kNN, G-CRD,
   GSP), forward + backward, timed in a fresh process on CPU and on CUDA (same code, same sizes,
   :func:`benchmarks._util.measure_many_isolated`); the report gives the median times and the
   CPU/GPU speed-up of the project's implementation (and of the public reference).

Writes ``benchmarks/results/gpu_check.json``. Without CUDA it prints why and exits with status 2
(nothing is written). Exit status 1 if a CUDA test failed or a hot-path piece synchronised.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._util import RESULTS_DIR, machine_info
from graphkd.fileio import atomic_write_text

__all__ = ["main", "build_parser", "cuda_status", "pytest_command", "parse_junit",
           "compare_timings", "build_report", "write_report", "NO_CUDA_EXIT"]

NO_CUDA_EXIT = 2
DEFAULT_OUT = RESULTS_DIR / "gpu_check.json"
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- environment
def cuda_status() -> tuple[bool, str]:
    """``(available, description)`` of the CUDA device torch sees."""
    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = ("this torch is a CPU-only build" if build is None
               else f"torch was built with CUDA {build} but sees no GPU (driver, "
                    "CUDA_VISIBLE_DEVICES?)")
        return False, f"CUDA is not available: {why} (torch {torch.__version__})."
    name = torch.cuda.get_device_name(0)
    return True, f"{name} (CUDA {torch.version.cuda}, torch {torch.__version__})"


# ----------------------------------------------------------------------------- tests
def pytest_command(junit: str | Path, paths: Sequence[str] = ("tests",),
                   keyword: str = "cuda", extra: Sequence[str] = ()) -> list[str]:
    """The pytest command line selecting the CUDA cases (``-k cuda``) with a JUnit report."""
    return [sys.executable, "-m", "pytest", "-q", "-k", keyword, "-p", "no:cacheprovider",
            f"--junitxml={junit}", *extra, *paths]


def parse_junit(path: str | Path) -> dict[str, Any]:
    """Counts and failing ids from a pytest JUnit XML file.

    Returns:
        ``{"tests", "passed", "failed", "errors", "skipped", "failures": [ids]}``, where an id is
        ``"classname::name"``.
    """
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    for suite in suites:
        for case in suite.iter("testcase"):
            counts["tests"] += 1
            tid = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None:
                counts["failed"] += 1
                failures.append(tid)
            elif case.find("error") is not None:
                counts["errors"] += 1
                failures.append(tid)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return {**counts, "failures": failures}


def run_tests(paths: Sequence[str], keyword: str, timeout: float) -> dict[str, Any]:
    """Run the CUDA test cases; returns the parsed JUnit counts, exit code and duration."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = pytest_command(junit, paths, keyword)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"command": cmd, "error": f"timeout after {timeout:.0f} s"}
        out: dict[str, Any] = {"command": cmd, "returncode": proc.returncode,
                               "seconds": round(time.perf_counter() - t0, 1)}
        if junit.is_file():
            out.update(parse_junit(junit))
        else:
            out["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return out


# ----------------------------------------------------------------------------- host syncs
def _hot_path_pieces(device: torch.device) -> dict[str, Callable[[], Any]]:
    """The core's hot path on ``device``: each piece runs forward + backward."""
    from graphkd import ops
    from graphkd.divergences import edge_mse, info_nce, row_kl
    from graphkd.graphs import EdgeSet
    from graphkd.kernels import KERNELS, edge_kernel
    from graphkd.losses import graph, relation

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g).to(device)
    batch = torch.arange(4).repeat_interleave(16).to(device)
    regular = EdgeSet.knn(x, 5, batch=batch)
    src = torch.randint(0, 64, (200,), generator=g).to(device)
    dst = torch.randint(0, 64, (200,), generator=g).to(device)
    irregular = EdgeSet.from_edge_index(torch.stack([src, dst]), 64, batch=batch)
    for e in (regular, irregular):
        e.row, e.col  # noqa: B018  (materialise before the guarded region)
    f_s = torch.randn(64, 4, generator=g).to(device).requires_grad_(True)
    f_t = torch.randn(64, 8, generator=g).to(device)

    def segment(e: EdgeSet) -> Callable[[], Any]:
        def fn() -> Any:
            v = torch.randn(e.num_edges, device=device, requires_grad=True)
            outs = [ops.row_sum(v, e), ops.row_mean(v, e), ops.row_logsumexp(v, e),
                    ops.row_softmax(v, e), ops.row_log_softmax(v, e)]
            sum(torch.nan_to_num(o, neginf=0.0).sum() for o in outs).backward()
        return fn

    def kernels(e: EdgeSet) -> Callable[[], Any]:
        def fn() -> Any:
            xs = x.clone().requires_grad_(True)
            sum(edge_kernel(xs, e, k, check=False).sum() for k in KERNELS).backward()
        return fn

    def divergences(e: EdgeSet) -> Callable[[], Any]:
        def fn() -> Any:
            w_s = torch.randn(e.num_edges, device=device, requires_grad=True)
            w_t = torch.randn(e.num_edges, device=device)
            (row_kl(w_s, w_t, e) + row_kl(w_s, w_t, e, reduction="graph")
             + edge_mse(w_s, w_t, e, reduction="graph")).backward()
        return fn

    def methods() -> Any:
        loss = graph._lsp(f_s, f_t, regular, "rbf", "mean", 1.0, False, {})
        loss = loss + relation.edge_mse(relation.sp_similarity(f_s).reshape(-1),
                                        relation.sp_similarity(f_t).reshape(-1))
        loss = loss + relation._rkd_distance(f_s, f_t[:, :4], 1.0, 1e-12)
        loss = loss + relation._rkd_angle(f_s, f_t, 1.0, 16, 1e-12)
        loss = loss + info_nce(f_s, f_t[:, :4])
        loss.backward()

    return {
        "segment_ops[regular]": segment(regular), "segment_ops[irregular]": segment(irregular),
        "row_logcumsumexp[regular]": lambda: ops.row_logcumsumexp(
            torch.randn(regular.num_edges, device=device), regular),
        "row_logcumsumexp[irregular]": lambda: ops.row_logcumsumexp(
            torch.randn(irregular.num_edges, device=device), irregular),
        "kernels[regular]": kernels(regular), "kernels[irregular]": kernels(irregular),
        "divergences[regular]": divergences(regular),
        "divergences[irregular]": divergences(irregular),
        "lsp+sp+rkd+info_nce": methods,
    }


def check_host_syncs(device: str = "cuda") -> dict[str, str]:
    """Run each hot-path piece under ``torch.cuda.set_sync_debug_mode("error")``.

    Returns ``{piece: "ok" | "<error>"}``.
    """
    dev = torch.device(device)
    pieces = _hot_path_pieces(dev)
    out: dict[str, str] = {}
    for name, fn in pieces.items():
        fn()  # warm-up (lazy init may synchronise once)
        torch.cuda.synchronize(dev)
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            out[name] = "ok"
        except RuntimeError as err:
            out[name] = str(err).strip().splitlines()[0][:300]
        finally:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize(dev)
    return out


# ----------------------------------------------------------------------------- benchmark
def time_core(device: str, quick: bool = True, repeats: int = 5,
              only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The core benchmark's cases on ``device`` in one fresh process: per case the label, size
    and per implementation the median wall time and peak memory."""
    from benchmarks._util import measure_many_isolated
    from benchmarks.core import cases

    todo = [c for c in cases(quick) if only is None or c["method"] in only]
    results = measure_many_isolated(
        "benchmarks.core:build", [{"method": c["method"], **c["params"]} for c in todo],
        device=device, repeats=repeats, warmup=2, max_seconds=5.0, timeout=900,
        threads=None)
    rows = []
    for c, res in zip(todo, results):
        row: dict[str, Any] = {"method": c["method"], "label": c["label"], "size": c["size"]}
        for impl, r in res.items():
            if not isinstance(r, dict) or impl.startswith("_"):
                continue
            row[impl] = ({"error": r["error"]} if "error" in r else
                         {"time_median": r.get("time_median"), "peak_bytes": r.get("peak_bytes")})
        rows.append(row)
    return rows


def compare_timings(cpu: list[dict[str, Any]], gpu: list[dict[str, Any]]) -> list[dict]:
    """Pair the CPU and CUDA rows by (method, size): median times and CPU/GPU speed-ups."""
    by_key = {(r["method"], r["size"]): r for r in gpu}
    out = []
    for c in cpu:
        g = by_key.get((c["method"], c["size"]), {})
        row: dict[str, Any] = {"method": c["method"], "label": c["label"], "size": c["size"]}
        for impl in ("ours", "reference", "bare"):
            tc = (c.get(impl) or {}).get("time_median")
            tg = (g.get(impl) or {}).get("time_median")
            if tc is None and tg is None:
                continue
            row[impl] = {"cpu_s": tc, "cuda_s": tg,
                         "speedup": (tc / tg) if tc and tg else None,
                         "cuda_peak_bytes": (g.get(impl) or {}).get("peak_bytes")}
        out.append(row)
    return out


# ----------------------------------------------------------------------------- report
def build_report(device: str, tests: dict | None, syncs: dict | None,
                 timings: list[dict] | None, seconds: float) -> dict[str, Any]:
    """The JSON report; ``ok`` is False if a test failed/errored or a piece synchronised."""
    failed = bool(tests) and (tests.get("failed", 0) + tests.get("errors", 0) > 0
                              or "error" in tests)
    synced = sorted(k for k, v in (syncs or {}).items() if v != "ok")
    return {"device": device, "ok": not failed and not synced, "tests": tests,
            "host_syncs": syncs, "host_sync_failures": synced, "timings": timings,
            "seconds": round(seconds, 1)}


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON report path")
    p.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    p.add_argument("--skip-tests", action="store_true", help="do not run pytest -k cuda")
    p.add_argument("--skip-syncs", action="store_true", help="do not run the host-sync check")
    p.add_argument("--skip-bench", action="store_true", help="do not time the core benchmark")
    p.add_argument("--full", action="store_true",
                   help="the full core benchmark sizes instead of the quick ones")
    p.add_argument("--only", default=None, help="comma-separated core methods (e.g. sp,lsp)")
    p.add_argument("--tests", nargs="+", default=["tests"], help="test paths")
    p.add_argument("--keyword", default="cuda", help="pytest -k expression (default: cuda)")
    p.add_argument("--test-timeout", type=float, default=1800.0, help="seconds for pytest")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ok, text = cuda_status()
    if not ok:
        print(f"gpu_check: {text} Run it on a machine with an NVIDIA GPU and a CUDA build of "
              "torch; nothing was written.", file=sys.stderr)
        return NO_CUDA_EXIT
    print(f"gpu_check on {text}", file=sys.stderr, flush=True)
    os.environ.setdefault("CUDA_LAUNCH_BLOCKING", "0")
    t0 = time.perf_counter()
    tests = syncs = timings = None
    if not args.skip_tests:
        print("running pytest -k cuda ...", file=sys.stderr, flush=True)
        tests = run_tests(args.tests, args.keyword, args.test_timeout)
        print(f"  {json.dumps({k: v for k, v in tests.items() if k != 'command'})}",
              file=sys.stderr, flush=True)
    if not args.skip_syncs:
        print("checking the hot path for host syncs ...", file=sys.stderr, flush=True)
        syncs = check_host_syncs(args.device)
    if not args.skip_bench:
        only = None if args.only is None else [m.strip() for m in args.only.split(",")]
        print("timing the core benchmark on cpu and cuda ...", file=sys.stderr, flush=True)
        cpu = time_core("cpu", quick=not args.full, only=only)
        gpu = time_core(args.device, quick=not args.full, only=only)
        timings = compare_timings(cpu, gpu)
    report = build_report(args.device, tests, syncs, timings, time.perf_counter() - t0)
    report["machine"] = machine_info(args.device)
    path = write_report(report, args.out)
    print(json.dumps({k: report[k] for k in ("ok", "host_sync_failures")}), file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
