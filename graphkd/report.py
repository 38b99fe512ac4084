"""Reports of an experiment: summary rows, a markdown table, an honest comparison with plain KD,
a plot.

Everything is generated from the raw results dict of :func:`graphkd.pipeline.run_experiment`
(kept as JSON beside the report), never typed by hand: :func:`summarize` turns its per-seed
records into one row per method, the rest formats those rows. Which methods count as
graph-representation methods (compared with plain KD's epoch time) comes from the methods
themselves: the ``family`` of their losses (``"graph"`` or ``"gnn"``, :mod:`graphkd.losses`).

Example:
    >>> paths = write_report(results, "runs/pointcloud_digits")   # doctest: +SKIP
    >>> sorted(p.name for p in paths.values())                     # doctest: +SKIP
    ['report.md', 'report.png', 'results.json']
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["summarize", "fmt_mean_std", "results_table", "kd_comparison", "markdown_report",
           "plot_results", "write_report", "is_graph_method"]

#: Loss families of the graph-representation methods (compared with plain KD in a report).
GRAPH_FAMILIES = ("graph", "gnn")
#: Overhead target of the graph methods: epoch time at most this multiple of a plain-KD epoch.
KD_OVERHEAD_TARGET = 1.3


# ----------------------------------------------------------------------------- summary
def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(results: dict[str, Any], *, student: str = "student",
              kd: str = "kd") -> list[dict[str, Any]]:
    """One row per method: mean ± std of the test metric at the best validation epoch, epoch
    time, and epoch-time ratios to the student alone (``student``) and to plain KD (``kd``).

    Ratios are of mean epoch times over seeds; ``None`` when the reference did not run.
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        by.setdefault(r["method"], []).append(r)
    times = {m: statistics.fmean(r["epoch_time"] for r in rs) for m, rs in by.items()}
    rows = []
    for m in results.get("methods") or list(by):
        rs = by.get(m)
        if not rs:
            continue
        test_m, test_s = _mean_std([r["test"] for r in rs])
        val_m, val_s = _mean_std([r["val"] for r in rs])
        t = times[m]
        rows.append({
            "method": m,
            "n": len(rs),
            "test_mean": test_m,
            "test_std": test_s,
            "val_mean": val_m,
            "val_std": val_s,
            "epoch_time": t,
            "epoch_time_std": _mean_std([r["epoch_time"] for r in rs])[1],
            "vs_student": t / times[student] if student in times else None,
            "vs_kd": t / times[kd] if kd in times else None,
            "num_params": rs[0].get("num_params"),
        })
    return rows


def _family(loss: str) -> str | None:
    from graphkd.losses import LOSSES

    name = LOSSES.find(loss)
    return None if name is None else LOSSES[name].family


def is_graph_method(results: dict[str, Any], method: str) -> bool:
    """Whether ``method`` (a name of ``results["methods"]``) distils with a graph-representation
    loss: one of its matches' losses (from the results' config; the method's own name when the
    config does not list matches) has ``family`` ``"graph"`` or ``"gnn"``."""
    entry = ((results.get("config") or {}).get("methods") or {}).get(method) or {}
    losses = [m.get("method", "") for m in entry.get("matches") or []] or [method]
    return any(_family(loss) in GRAPH_FAMILIES for loss in losses)


def fmt_mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    """``'87.31 ± 0.52'`` (values multiplied by ``scale``); ``'—'`` for NaN."""
    if not math.isfinite(mean):
        return "—"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _scale(results: dict[str, Any]) -> float:
    """Metrics the table marks ``percent`` (accuracy, macro-F1, ROC-AUC) are shown in
    percent; ``results["metric"]`` is the metric's label (or name)."""
    from graphkd.metrics import METRICS

    name = METRICS.find(str(results.get("metric", "")))
    return 100.0 if name is not None and METRICS[name].percent else 1.0


def _ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


def results_table(results: dict[str, Any]) -> str:
    """Markdown table: method, test metric (mean ± std over seeds, at the best validation
    epoch), validation metric, epoch time, epoch time relative to the student alone and to KD."""
    rows = summarize(results)
    s = _scale(results)
    unit = " (%)" if s == 100.0 else ""
    metric = results.get("metric", "metric")
    head = ["method", f"test {metric}{unit}", f"val {metric}{unit}", "seeds", "s / epoch",
            "× student", "× KD"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    t = results.get("teacher")
    if t:
        lines.append(
            f"| teacher | {fmt_mean_std(t['test_at_best'], 0.0, s).split(' ±')[0]} | "
            f"{fmt_mean_std(t['best_val'], 0.0, s).split(' ±')[0]} | 1 | "
            f"{t['epoch_time_median']:.3f} | — | — |"
        )
    for r in rows:
        lines.append(
            f"| {r['method']} | {fmt_mean_std(r['test_mean'], r['test_std'], s)} | "
            f"{fmt_mean_std(r['val_mean'], r['val_std'], s)} | {r['n']} | "
            f"{r['epoch_time']:.3f} ± {r['epoch_time_std']:.3f} | {_ratio(r['vs_student'])} | "
            f"{_ratio(r['vs_kd'])} |"
        )
    return "\n".join(lines)


def kd_comparison(results: dict[str, Any], *, kd: str = "kd",
                  student: str = "student") -> list[str]:
    """Plain-language lines: which methods beat the student alone and plain KD, by how much
    (mean over seeds), and whether the gap exceeds the seeds' spread; and which graph methods
    meet the epoch-time target of :data:`KD_OVERHEAD_TARGET` × KD."""
    rows = {r["method"]: r for r in summarize(results, student=student, kd=kd)}
    hib = results.get("higher_is_better", True)
    s = _scale(results)
    out: list[str] = []
    t, st = results.get("teacher"), rows.get(student)
    if t and st and math.isfinite(st["test_mean"]):
        gap = (t["test_at_best"] - st["test_mean"]) * (1 if hib else -1) * s
        out.append(f"Teacher vs the student alone: {gap:+.2f}"
                   + ("" if gap > 0 else " (the teacher is not better here, so there is little "
                                         "to distil)") + ".")
    for ref_name in (student, kd):
        ref = rows.get(ref_name)
        if ref is None or not math.isfinite(ref["test_mean"]):
            continue
        better, not_better = [], []
        for m, r in rows.items():
            if m in (student, ref_name) or not math.isfinite(r["test_mean"]):
                continue
            d = (r["test_mean"] - ref["test_mean"]) * (1 if hib else -1)
            noise = max(r["test_std"], ref["test_std"])
            tag = f"{m} ({d * s:+.2f}{'' if abs(d) > noise else ', within 1 std'})"
            (better if d > 0 else not_better).append(tag)
        label = "the student alone" if ref_name == student else "plain KD"
        out.append(f"Above {label} (mean over seeds): {', '.join(better) or 'none'}.")
        out.append(f"Not above {label}: {', '.join(not_better) or 'none'}.")
    graph = [m for m in rows if rows[m]["vs_kd"] is not None and is_graph_method(results, m)]
    if graph and not results.get("step_times"):  # else the interleaved step times decide
        ok = [f"{m} ({rows[m]['vs_kd']:.2f}×)" for m in graph
              if rows[m]["vs_kd"] <= KD_OVERHEAD_TARGET]
        bad = [f"{m} ({rows[m]['vs_kd']:.2f}×)" for m in graph
               if rows[m]["vs_kd"] > KD_OVERHEAD_TARGET]
        out.append(f"Epoch time within {KD_OVERHEAD_TARGET}× plain KD: {', '.join(ok) or 'none'}"
                   f"; above it: {', '.join(bad) or 'none'}.")
    return out


def step_time_section(results: dict[str, Any], *, student: str = "student",
                      kd: str = "kd") -> list[str]:
    """Markdown lines for the interleaved step timing of
    :func:`graphkd.pipeline.step_times` (``results["step_times"]``); ``[]`` without it."""
    st = results.get("step_times")
    if not st:
        return []
    med = st["median"]
    ref_s, ref_kd = med.get(student), med.get(kd)
    lines = [
        f"Training-step time, interleaved: each method runs one step (batch of "
        f"{st['batch_size']}) in turn, {st['rounds']} rounds on the same pre-collated batches, "
        "median per method; data loading and evaluation excluded. Interleaving puts all methods "
        "under the same machine load, so these ratios are the reliable ones.",
        "",
        "| method | ms / step | × student | × KD |",
        "|---|---|---|---|",
    ]
    for m, t in med.items():
        lines.append(f"| {m} | {1000 * t:.1f} | {_ratio(t / ref_s if ref_s else None)} | "
                     f"{_ratio(t / ref_kd if ref_kd else None)} |")
    graph = [m for m in med if is_graph_method(results, m)]
    if ref_kd and graph:
        ok = [f"{m} ({med[m] / ref_kd:.2f}×)" for m in graph
              if med[m] / ref_kd <= KD_OVERHEAD_TARGET]
        bad = [f"{m} ({med[m] / ref_kd:.2f}×)" for m in graph
               if med[m] / ref_kd > KD_OVERHEAD_TARGET]
        lines += ["", f"Step time within {KD_OVERHEAD_TARGET}× plain KD: {', '.join(ok) or 'none'}"
                      f"; above it: {', '.join(bad) or 'none'}."]
    return lines + [""]


def markdown_report(results: dict[str, Any], *, title: str | None = None,
                    plot_name: str | None = None) -> str:
    """The whole markdown report: setup, table, comparison with KD, optional plot link."""
    cfg = results.get("config", {})
    d = results.get("data", {})
    st, te = cfg.get("student", {}), cfg.get("teacher", {})
    lines = [f"# {title or results.get('name', 'experiment')}", ""]
    if results.get("machine"):
        lines += [f"Machine: {results['machine']}", ""]
    lines += [
        f"Data: `{cfg.get('data', {}).get('name', '?')}` — {d.get('train', '?')} train / "
        f"{d.get('val', '?')} val / {d.get('test', '?')} test graphs, "
        f"{d.get('num_classes', '?')} outputs.",
        f"Teacher: `{te.get('model', {}).get('preset', '?')}` "
        f"({(results.get('teacher') or {}).get('num_params', '?')} parameters), "
        f"{te.get('train', {}).get('epochs', '?')} epochs. Student: "
        f"`{st.get('model', {}).get('preset', '?')}`, {st.get('train', {}).get('epochs', '?')} "
        f"epochs, batch {st.get('train', {}).get('batch_size', '?')}, seeds "
        f"{results.get('seeds')}; torch threads: {cfg.get('threads') or 'default'}.",
        "",
        f"Test {results.get('metric')} at the epoch with the best validation "
        f"{results.get('metric')}, mean ± std over seeds. `s / epoch`: median training time of "
        "an epoch (evaluation excluded), mean ± std over seeds; `× student` / `× KD`: relative "
        "to the student trained alone / with plain KD (which already pays the teacher's "
        "forward pass).",
        "",
        results_table(results),
        "",
    ]
    comp = kd_comparison(results)
    if comp:
        lines += ["**Comparison** (generated from the numbers above):", ""]
        if len(results.get("seeds") or []) < 3:
            comp = [f"Only {len(results.get('seeds') or [])} seed(s): differences of a few "
                    "points are within seed-to-seed noise; see benchmarks/results/ for 3 seeds.",
                    *comp]
        lines += [f"- {c}" for c in comp] + [""]
    lines += step_time_section(results)
    if results.get("notes"):
        lines += [f"- {n}" for n in results["notes"]] + [""]
    if plot_name:
        lines += [f"![results]({plot_name})", ""]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Two panels: test metric (mean ± std) per method with the student/KD/teacher as lines,
    and epoch time relative to the student alone. Needs matplotlib (``graphkd[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'graphkd[plot]'") from exc
    rows = summarize(results)
    s = _scale(results)
    names = [r["method"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.35 * len(rows) + 1.8), sharey=True)
    y = list(range(len(rows)))
    colors = ["tab:gray" if r["method"] in ("student", "kd") else "tab:blue" for r in rows]
    for yi, r, c in zip(y, rows, colors):  # points, not bars: the axis does not start at 0
        ax1.errorbar(r["test_mean"] * s, yi, xerr=r["test_std"] * s, fmt="o", color=c,
                     capsize=3)
    refs = {r["method"]: r["test_mean"] * s for r in rows if r["method"] in ("student", "kd")}
    t = results.get("teacher")
    if t:
        refs["teacher"] = t["test_at_best"] * s
    styles = {"student": ":", "kd": "--", "teacher": "-"}
    for k, v in refs.items():
        ax1.axvline(v, color="k", ls=styles[k], lw=1, label=k)
    vals = [r["test_mean"] * s for r in rows if math.isfinite(r["test_mean"])]
    if vals:
        lo, hi = min(vals + list(refs.values())), max(vals + list(refs.values()))
        pad = max((hi - lo) * 0.3, 0.5)
        ax1.set_xlim(lo - pad, hi + pad)
    ax1.set_yticks(y, names)
    ax1.invert_yaxis()
    ax1.set_xlabel(f"test {results.get('metric')}" + (" (%)" if s == 100 else ""))
    ax1.legend(loc="lower right", fontsize=8)
    st = results.get("step_times")
    if st and st["median"].get("student"):  # interleaved step times: the reliable ratios
        med = st["median"]
        rel = {m: t / med["student"] for m, t in med.items()}
        xlabel = "training-step time / student alone (interleaved)"
    else:
        rel = {r["method"]: r["vs_student"] for r in rows}
        xlabel = "epoch time / student-alone epoch time"
    ax2.barh(y, [rel.get(m) or 0 for m in names], color="tab:orange")
    ax2.axvline(1.0, color="k", lw=1)
    if rel.get("kd"):
        ax2.axvline(KD_OVERHEAD_TARGET * rel["kd"], color="k", ls="--", lw=1,
                    label=f"{KD_OVERHEAD_TARGET}× plain KD")
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set_xlabel(xlabel)
    fig.suptitle(results.get("name", ""))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], directory: str | Path, *, stem: str = "report",
                 json_name: str = "results.json", title: str | None = None,
                 plot: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``<stem>.md`` and (if ``plot``) ``<stem>.png`` into
    ``directory``; return their paths by kind (``json``, ``md``, ``png``)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": out / json_name}
    paths["json"].write_text(json.dumps(results, indent=1, default=str) + "\n")
    png = None
    if plot and results.get("runs"):
        png = plot_results(results, out / f"{stem}.png")
        paths["png"] = png
    paths["md"] = out / f"{stem}.md"
    paths["md"].write_text(markdown_report(results, title=title,
                                           plot_name=png.name if png else None))
    return paths
