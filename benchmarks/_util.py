"""Shared helpers of the speed/memory benchmarks: timing, peak memory, machine info, tables.

A benchmark case is a *builder*: a module-level function ``build(device: str, **kwargs)`` that
allocates the inputs and returns ``{impl_name: fn}``, where each ``fn()`` runs one measured step
(typically forward + backward) and sets the ``.grad`` of its leaves to ``None`` first, so that
every call allocates the same. :func:`measure` times each ``fn`` and measures its peak memory;
:func:`measure_isolated` does the same in a fresh Python process.

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated()`` during one call, minus the memory allocated before
  it (so the inputs do not count).
* CPU: the growth of the process's peak resident set size (``VmHWM`` in ``/proc/self/status``)
  during one call, after resetting the peak with ``echo 5 > /proc/self/clear_refs``, minus the
  resident size before the call, after ``malloc_trim(0)`` has given the heap's free pages back
  to the OS. Before measuring, glibc's mmap threshold is fixed at 64 KiB
  (``mallopt``) and its heap trimmed, so that every large tensor is served by ``mmap`` and
  returned to the OS on free (otherwise freed buffers stay in the heap and a later call reuses
  them without growing the RSS, which would under-report its peak). Timing runs before that,
  in the worker's caching mode (below). Where ``clear_refs`` is not
  writable, a sampling thread polls ``VmRSS`` every 0.2 ms (may miss very short peaks).

Times are seconds per call (after warm-up, device synchronised), mean ± std over ``repeats``
calls, both wall-clock (``time_*``) and process CPU time (``cpu_*``, ``time.process_time``). On a
shared, oversubscribed CPU, wall-clock time mostly measures the other processes; with one torch
thread the process CPU time is the work done by the call, much less sensitive to that load. On
CPU the worker first configures glibc as a caching allocator (mmap threshold 32 MiB, no heap
trimming; the role PyTorch's caching allocator plays on CUDA), so that steady-state calls do not
pay erratic page-fault system time for buffers the previous call freed. Only ratios measured in
the same run mean much.

Usage from a benchmark script::

    from benchmarks._util import measure_isolated, machine_info, markdown_table
    res = measure_isolated("benchmarks.core:build_sp", {"b": 128, "d": 256}, device="cpu")
    res["ours"]["time_mean"], res["ours"]["peak_bytes"]
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from graphkd.fileio import atomic_write_text

__all__ = [
    "RESULTS_DIR",
    "sync",
    "time_calls",
    "peak_memory",
    "measure",
    "measure_isolated",
    "measure_many_isolated",
    "machine_info",
    "machine_markdown",
    "markdown_table",
    "fmt_time",
    "fmt_bytes",
    "fmt_ratio",
    "ratio",
    "write_results",
]

#: Where benchmark scripts write their JSON and markdown results.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

_MARK = "@@BENCH_RESULT@@"
_GIB = 1 << 30


# ----------------------------------------------------------------------------- timing
def sync(device: str | torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any], *, device: str | torch.device = "cpu", repeats: int = 5,
    warmup: int = 1, max_seconds: float = 20.0,
) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones.

    Stops early (after at least 2 timed calls) once ``max_seconds`` have been spent timing.

    Returns:
        ``{"time_mean", "time_std", "time_min", "repeats", "times"}`` in seconds (wall clock).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > max_seconds and len(times) >= 2:
            break
    return {
        "time_mean": statistics.fmean(times),
        "time_std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "time_min": min(times),
        "repeats": len(times),
        "times": times,
    }


# ----------------------------------------------------------------------------- memory
def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    if m is None:  # pragma: no cover - non-Linux
        raise OSError(f"/proc/self/status has no {key}")
    return int(m.group(1))


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler:
    """Fallback peak-RSS sampler (a thread polling VmRSS)."""

    def __init__(self, interval: float = 2e-4) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _proc_status_kb("VmRSS"))
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self.peak = _proc_status_kb("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _proc_status_kb("VmRSS"))


def peak_memory(fn: Callable[[], Any], *, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Peak memory one call of ``fn()`` adds on top of what is allocated before it.

    Returns:
        ``{"peak_bytes": int, "memory_method": str}``; the result of ``fn`` is dropped before
        returning (its memory counts in the peak).
    """
    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        out = fn()
        sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        del out
        return {"peak_bytes": int(peak), "memory_method": "cuda.max_memory_allocated"}
    _malloc_trim()
    base = _proc_status_kb("VmRSS")
    if _reset_hwm():
        out = fn()
        peak_kb = _proc_status_kb("VmHWM")
        method = "VmHWM growth (clear_refs reset)"
    else:  # pragma: no cover - depends on the kernel's permissions
        with _RssSampler() as s:
            out = fn()
        peak_kb = s.peak
        method = "VmRSS sampling (0.2 ms)"
    del out
    return {"peak_bytes": max(0, peak_kb - base) * 1024, "memory_method": method}


def _malloc_trim() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``), so that a call
    reusing a freed heap chunk faults its pages in again and shows in the RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc
        pass


def _malloc_caching_mode() -> bool:
    """Make glibc keep freed memory for reuse (mmap threshold 32 MiB, the maximum, and no heap
    trimming), like PyTorch's CUDA caching allocator: steady-state calls then do not pay page
    faults for buffers that the previous call freed, which otherwise add a large and erratic
    system time that depends on the allocator's state, not on the method. Buffers over 32 MiB
    are still mapped per call. Used for timing on CPU; returns False where not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
        return True
    except (OSError, AttributeError):  # pragma: no cover - non-glibc
        return False


def _malloc_release_mode() -> bool:
    """Make glibc serve allocations >= 64 KiB by ``mmap`` from now on and trim its heap.

    With glibc's default dynamic mmap threshold, a freed tensor buffer stays in the heap and a
    later allocation reuses it without growing the RSS, so the peak RSS under-reports. Fixing
    the threshold returns every large buffer to the OS on free. Called after timing (which runs
    in :func:`_malloc_caching_mode`). Returns False where not glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 128 << 10)  # M_TRIM_THRESHOLD back to glibc's default
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):  # pragma: no cover - non-glibc
        return False


def measure(
    fns: dict[str, Callable[[], Any]], *, device: str | torch.device = "cpu", repeats: int = 5,
    warmup: int = 1, max_seconds: float = 20.0, memory: bool = True,
) -> dict[str, dict[str, Any]]:
    """Time and measure the peak memory of each ``fn`` (in this process).

    Every fn is warmed up, then all fns are timed round-robin (one call of each per round,
    ``repeats`` rounds, stopping early after 2 rounds once ``max_seconds`` are spent), so that
    load from other processes hits them alike; then each fn's peak memory is measured once. An
    exception (e.g. out of memory) is recorded as ``{"error": "..."}`` for that fn only. A
    scalar tensor returned by a fn is recorded as ``"value"`` (to check that implementations
    agree). Entries of ``fns`` that are not callable (e.g. ``"_meta": {...}``) are copied into
    the results as they are.
    """
    meta = {k: v for k, v in fns.items() if not callable(v)}
    fns = {k: v for k, v in fns.items() if callable(v)}
    results: dict[str, dict[str, Any]] = {name: {} for name in fns}
    results.update(meta)
    live: dict[str, Callable[[], Any]] = {}

    def fail(name: str, exc: Exception) -> None:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        results[name] = {"error": f"{type(exc).__name__}: {msg}"}
        live.pop(name, None)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()

    for name, fn in fns.items():
        try:
            for i in range(max(warmup, 1)):
                out = fn()
                if i == 0 and isinstance(out, torch.Tensor) and out.numel() == 1:
                    results[name]["value"] = float(out.detach())
                del out
            sync(device)
            live[name] = fn
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            fail(name, exc)
        gc.collect()
    times: dict[str, list[float]] = {name: [] for name in live}
    cpu_times: dict[str, list[float]] = {name: [] for name in live}
    spent = 0.0
    for r in range(repeats):
        for name, fn in list(live.items()):
            try:
                sync(device)
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                sync(device)
                dt = time.perf_counter() - t0
                dc = time.process_time() - c0
            except Exception as exc:  # noqa: BLE001
                fail(name, exc)
                continue
            times[name].append(dt)
            cpu_times[name].append(dc)
            spent += dt
        if spent > max_seconds and r >= 1:
            break
    timed = {name: times[name] for name in live}
    if memory:
        if torch.device(device).type == "cpu":
            _malloc_release_mode()
        for name, fn in list(live.items()):
            try:
                results[name].update(peak_memory(fn, device=device))
            except Exception as exc:  # noqa: BLE001
                fail(name, exc)
    for name, t in timed.items():
        if name not in live or not t:
            continue
        results[name].update({
            "time_mean": statistics.fmean(t),
            "time_std": statistics.stdev(t) if len(t) > 1 else 0.0,
            "time_median": statistics.median(t),
            "time_min": min(t),
            "repeats": len(t),
        })
        c = cpu_times[name]
        results[name].update({
            "cpu_mean": statistics.fmean(c),
            "cpu_std": statistics.stdev(c) if len(c) > 1 else 0.0,
            "cpu_median": statistics.median(c),
            "cpu_min": min(c),
        })
    return results


def _resolve(target: str) -> Callable[..., dict[str, Callable[[], Any]]]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def measure_isolated(
    target: str, kwargs: dict[str, Any], *, device: str = "cpu", repeats: int = 5,
    warmup: int = 1, max_seconds: float = 20.0, timeout: float = 600.0,
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the builder ``target`` (``"module:function"``) in a fresh process and measure it.

    The builder is called as ``target(device=device, **kwargs)`` and must return
    ``{impl_name: fn}``. ``kwargs`` must be JSON-serialisable. A crash of the worker (killed
    for memory, timeout) is reported as ``{"error": ...}`` under the key ``"_worker"``.

    Args:
        threads: ``torch.set_num_threads`` in the worker (default: torch's own default).
    """
    spec = {"target": target, "kwargs": kwargs, "device": device, "repeats": repeats,
            "warmup": warmup, "max_seconds": max_seconds, "threads": threads}
    found, error = _run_worker(spec, timeout)
    return found[0] if found else {"_worker": {"error": error}}


def measure_many_isolated(
    target: str, kwargs_list: Sequence[dict[str, Any]], *, device: str = "cpu",
    repeats: int = 5, warmup: int = 1, max_seconds: float = 20.0, timeout: float = 600.0,
    threads: int | None = None,
) -> list[dict[str, dict[str, Any]]]:
    """Like :func:`measure_isolated` for several cases, all in *one* fresh process (faster:
    one interpreter start). All cases are timed first, then the peak memory of each is
    measured (inputs are built again for that pass)."""
    spec = {"target": target, "kwargs_list": list(kwargs_list), "device": device,
            "repeats": repeats, "warmup": warmup, "max_seconds": max_seconds, "threads": threads}
    found, error = _run_worker(spec, timeout)
    missing = {"_worker": {"error": error or "worker stopped before this case"}}
    return found + [missing] * (len(kwargs_list) - len(found))


def _run_worker(spec: dict[str, Any], timeout: float) -> tuple[list[dict], str | None]:
    """Run the worker; returns the reported results and an error message (or None)."""
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks._util", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=root,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        found = [json.loads(line[len(_MARK):]) for line in out.splitlines()
                 if line.startswith(_MARK)]
        return found, f"timeout after {timeout:.0f} s"
    found = [json.loads(line[len(_MARK):]) for line in proc.stdout.splitlines()
             if line.startswith(_MARK)]
    if proc.returncode == 0:
        return found, None
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return found, f"worker exited with {proc.returncode}: {' | '.join(tail)}"


def _worker(spec: dict[str, Any]) -> None:
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if torch.device(spec["device"]).type == "cpu":
        _malloc_caching_mode()
    build = _resolve(spec["target"])
    if "kwargs" in spec:
        res = measure(build(device=spec["device"], **spec["kwargs"]), device=spec["device"],
                      repeats=spec["repeats"], warmup=spec["warmup"],
                      max_seconds=spec["max_seconds"])
        print(_MARK + json.dumps(res), flush=True)
        return
    # several cases: time them all first (default allocator), then measure memory
    timed = []
    for kwargs in spec["kwargs_list"]:
        timed.append(measure(build(device=spec["device"], **kwargs), device=spec["device"],
                             repeats=spec["repeats"], warmup=spec["warmup"],
                             max_seconds=spec["max_seconds"], memory=False))
        gc.collect()
    for kwargs, res in zip(spec["kwargs_list"], timed):
        mem = measure(build(device=spec["device"], **kwargs), device=spec["device"],
                      repeats=0, warmup=1)
        for name, r in mem.items():
            if isinstance(r, dict) and isinstance(res.get(name), dict) and "error" not in res[name]:
                res[name].update({k: v for k, v in r.items() if k != "value"})
        gc.collect()
        print(_MARK + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Machine, software versions and date, for the header of a results file."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
        info["ram_gib"] = round(kb / (1 << 20), 1)
    except (OSError, AttributeError):
        pass
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / _GIB, 1)
        info["cuda"] = torch.version.cuda
    return info


def machine_markdown(info: dict[str, Any]) -> str:
    """One-paragraph description of :func:`machine_info`."""
    parts = [f"{info['date']}", f"CPU: {info['cpu']} ({info['cpu_cores']} cores visible, "
             f"{info['torch_threads']} torch threads)"]
    if "ram_gib" in info:
        parts.append(f"RAM {info['ram_gib']} GiB")
    if "gpu" in info:
        parts.append(f"GPU: {info['gpu']} ({info['gpu_memory_gib']} GiB, CUDA {info['cuda']})")
    parts.append(f"Python {info['python']}, torch {info['torch']}, device `{info['device']}`")
    return "; ".join(parts) + "."


# ----------------------------------------------------------------------------- tables
def fmt_time(seconds: float | None, std: float | None = None) -> str:
    """``1.23 ms`` / ``1.23 ± 0.04 ms`` with an adapted unit."""
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale or unit == "µs":
            text = f"{seconds / scale:.3g}"
            if std is not None:
                text += f" ± {std / scale:.2g}"
            return f"{text} {unit}"
    return f"{seconds:.3g} s"  # pragma: no cover


def fmt_bytes(n: float | None) -> str:
    """``12.3 MiB`` with an adapted unit."""
    if n is None:
        return "—"
    for unit, scale in (("GiB", _GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` or ``None`` when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None, *, max_ok: float | None = None, min_ok: float | None = None,
              digits: int = 2) -> str:
    """Format a ratio; append ``❌`` when it misses a target (``> max_ok`` or ``< min_ok``)
    and ``✅`` when a target is given and met."""
    if r is None:
        return "—"
    text = f"{r:.{digits}f}"
    if max_ok is None and min_ok is None:
        return text
    ok = (max_ok is None or r <= max_ok) and (min_ok is None or r >= min_ok)
    return f"{text} {'✅' if ok else '❌'}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str,
                  directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``benchmarks/results/`` (or ``directory``)."""
    out = RESULTS_DIR if directory is None else Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(jpath, json.dumps(data, indent=2, default=str) + "\n")
    atomic_write_text(mpath, markdown.rstrip() + "\n")
    return jpath, mpath


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None without matplotlib
    (the benchmarks' plots are optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib ships with the dev extras
        return None
    return plt


def write_block(doc: str | os.PathLike, start: str, end: str, block: str) -> None:
    """Replace the text between the markers ``start`` and ``end`` of ``doc`` with ``block``
    (``start\nblock\nend``, atomic): the generated blocks of the README and the docs.

    Raises:
        ValueError: ``doc`` lacks one of the markers (the file is left unchanged).
    """
    text = Path(doc).read_text(encoding="utf-8")
    if start not in text or end not in text.split(start, 1)[-1]:
        raise ValueError(f"{doc} has no {start} ... {end} block.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(doc, f"{head}{start}\n{block}\n{end}{tail}")

