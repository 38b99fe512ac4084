r"""Relation diagnostics: how alike are a teacher's and a student's representations?

Two measures per chosen layer pair, on the same samples:

* :func:`linear_cka`, linear Centered Kernel Alignment (Kornblith et al., ICML 2019): the
  similarity of the two representations up to rotation and isotropic scaling;
* :func:`knn_overlap`: the mean fraction of shared neighbours of the teacher's and the
  student's kNN graphs (the relation graph a kNN-based method like LSP or HKD transfers).

:func:`relation_report` collects layer features of both models over a loader with forward
hooks (:class:`graphkd.hooks.FeatureHooks`, the Distiller's machinery: dotted paths, optional
``":mean_pool"`` suffixes), at ``level="graph"`` (one row per sample; node features
mean-pooled per graph, as the Distiller's batch-level methods see them) or ``level="node"``
(one row per node/atom), keeping a uniform random subsample of at most ``max_samples`` rows in
bounded memory, and returns a :class:`RelationReport` (rows, markdown);
:func:`plot_relation_heatmap` draws reports of several runs (student alone, KD, LSP, ...) as a
heat-map, saved atomically.

.. code-block:: python

    from graphkd.diagnostics import relation_report, plot_relation_heatmap
    rep = relation_report(teacher, student, test_loader,
                          pairs=[("convs.4", "convs.1"), ("pool", "pool")], k=10)
    print(rep.markdown())
    plot_relation_heatmap({"student": rep0, "lsp": rep}, "runs/relations.png")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from graphkd._checks import check_features
from graphkd.graphs import EdgeSet
from graphkd.hooks import FeatureHooks, layer_features, split_path
from graphkd.inputs import Call, call_model, default_call, graph_context, to_device

__all__ = ["linear_cka", "knn_overlap", "RelationReport", "relation_report",
           "relation_table", "plot_relation_heatmap"]

_LEVELS = {"graph": "batch", "node": "node"}  # report level -> layer_features level
_CHUNK = 1 << 22  # entries of the [rows, k, k] comparison block of knn_overlap


def _pair(x: Tensor, y: Tensor, what: str) -> None:
    check_features(x, "X")
    check_features(y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: X and Y must have the same rows (samples), got "
                         f"{x.shape[0]} and {y.shape[0]}.")


def linear_cka(X: Tensor, Y: Tensor) -> float:
    r"""Linear CKA of two representations of the same ``n`` samples (Kornblith et al. 2019).

    .. math::

        \mathrm{CKA}(X, Y) = \frac{\lVert \tilde Y^\top \tilde X \rVert_F^2}
            {\lVert \tilde X^\top \tilde X \rVert_F \, \lVert \tilde Y^\top \tilde Y \rVert_F},
        \qquad \tilde X = X - \mathbf{1}\bar x^\top,\ \tilde Y = Y - \mathbf{1}\bar y^\top,

    i.e. HSIC with linear kernels, normalised; equal to
    :math:`\langle K, L\rangle_F / (\lVert K\rVert_F \lVert L\rVert_F)` with the centred Gram
    matrices :math:`K = \tilde X \tilde X^\top`, :math:`L = \tilde Y \tilde Y^\top` (the form
    used when ``n`` is smaller than the widths). In ``[0, 1]``; 1 for ``Y = X Q s + 1 b^T``
    (orthogonal ``Q``, scale ``s > 0``); invariant to orthogonal transforms and isotropic
    scaling of either side, not to arbitrary invertible maps. Computed in float64.

    Args:
        X: ``[n, d1]`` features (rows are samples).
        Y: ``[n, d2]`` features of the same samples.

    Returns:
        the CKA as a Python float.

    Raises:
        ValueError: different ``n``, fewer than 2 samples, NaN/inf, or a constant
            representation (zero variance: CKA undefined).

    Example:
        >>> X = torch.randn(100, 16)
        >>> round(linear_cka(X, 3 * X @ torch.linalg.qr(torch.randn(16, 16))[0]), 6)
        1.0
    """
    _pair(X, Y, "linear_cka")
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"linear_cka needs at least 2 samples, got {n}.")
    x = X.detach().double()
    y = Y.detach().double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    d1, d2 = x.shape[1], y.shape[1]
    if n * n * (d1 + d2) < n * (d1 * d2 + d1 * d1 + d2 * d2):  # Gram form is cheaper
        k, l_ = x @ x.T, y @ y.T
        num, nx, ny = (k * l_).sum(), k.norm(), l_.norm()
    else:
        num, nx, ny = (y.T @ x).pow(2).sum(), (x.T @ x).norm(), (y.T @ y).norm()
    den = nx * ny
    if not float(den) > 0:
        which = "X" if not float(nx) > 0 else "Y"
        raise ValueError(f"linear_cka: {which} is constant over the samples (zero variance); "
                         "CKA is undefined.")
    return float(num / den)


def knn_overlap(X: Tensor, Y: Tensor, k: int = 10, *, metric: str = "l2",
                batch: Tensor | None = None, reduction: str = "mean") -> float | Tensor:
    r"""Mean fraction of shared neighbours of the kNN graphs of ``X`` and ``Y`` (self excluded).

    .. math::

        \mathrm{overlap}(X, Y) = \frac{1}{n} \sum_{i=1}^{n}
            \frac{\lvert N_k^X(i) \cap N_k^Y(i) \rvert}{k},

    with :math:`N_k^X(i)` the ``k`` nearest rows to row ``i`` in ``X`` (excluding ``i``;
    :meth:`graphkd.graphs.EdgeSet.knn`, chunked, ``O(chunk * n)`` memory). 1: the same
    relation graph; about ``k / (n - 1)`` for unrelated features. Exact ties in distance are
    broken arbitrarily.

    Args:
        X: ``[n, d1]`` features; Y: ``[n, d2]`` features of the same rows.
        k: neighbours per row (``1 <= k < n``; within each graph with ``batch``).
        metric: ``"l2"`` or ``"cosine"``.
        batch: optional ``[n]`` sorted graph id per row: neighbours within each graph only.
        reduction: ``"mean"`` (a float) or ``"none"`` (the ``[n]`` per-row fractions).

    Raises:
        ValueError: different ``n``, NaN/inf, ``k`` out of range, unknown metric/reduction.

    Example:
        >>> X = torch.randn(200, 8)
        >>> knn_overlap(X, 2 * X + 1, k=5)
        1.0
    """
    _pair(X, Y, "knn_overlap")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"knn_overlap needs 1 <= k < n (rows), got k={k}, n={n}.")
    a = EdgeSet.knn(X.detach(), k, batch=batch, metric=metric).col.view(n, k)
    b = EdgeSet.knn(Y.detach(), k, batch=batch, metric=metric).col.view(n, k)
    shared = torch.empty(n, dtype=torch.float64, device=a.device)
    step = max(1, _CHUNK // (k * k))
    for s in range(0, n, step):
        blk = (a[s:s + step, :, None] == b[s:s + step, None, :]).any(-1)
        shared[s:s + step] = blk.sum(-1).double() / k
    return float(shared.mean()) if reduction == "mean" else shared


# ============================================================================ report
@dataclass
class RelationReport:
    """Per layer pair: CKA and kNN overlap of teacher and student features on the same rows.

    Attributes:
        rows: one dict per pair: ``teacher``, ``student`` (paths), ``level``, ``n`` (rows
            compared), ``k``, ``cka``, ``knn_overlap``.
        level: ``"graph"`` or ``"node"``.
        k: the kNN size.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    level: str = "graph"
    k: int = 10

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable content."""
        return {"level": self.level, "k": self.k, "rows": [dict(r) for r in self.rows]}

    def markdown(self) -> str:
        """A markdown table: teacher layer, student layer, level, n, CKA, kNN overlap@k."""
        return relation_table({"": self})


def _pair_name(row: Mapping[str, Any]) -> str:
    return f"{row['teacher']} → {row['student']}"


def relation_table(reports: Mapping[str, RelationReport]) -> str:
    """Markdown table of several runs' reports (one line per run and layer pair).

    Example:
        >>> print(relation_table({"student": rep0, "kd": rep1}))
    """
    named = any(reports)
    head = (["run"] if named else []) + ["teacher", "student", "level", "n", "CKA",
                                         "kNN overlap@k"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, rep in reports.items():
        for r in rep.rows:
            cells = ([name] if named else []) + [
                f"`{r['teacher']}`", f"`{r['student']}`", r["level"], str(r["n"]),
                f"{r['cka']:.3f}", f"{r['knn_overlap']:.3f} (k={r['k']})"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class _Reservoir:
    """A uniform random subsample (without replacement) of at most ``size`` rows of a stream,
    the same rows for every named feature: each row draws a key ``u ~ U(0, 1)`` and the rows
    with the ``size`` smallest keys are kept (memory ``O(size + batch)``)."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size, self.gen = size, generator
        self.keys = torch.empty(0, dtype=torch.float64)
        self.feats: dict[str, Tensor] = {}

    def add(self, feats: Mapping[str, Tensor]) -> None:
        rows = {f.shape[0] for f in feats.values()}
        if len(rows) != 1:
            raise ValueError(f"features of one batch have different row counts {sorted(rows)}; "
                             "compare layers of the same level.")
        r = rows.pop()
        keys = torch.cat([self.keys, torch.rand(r, generator=self.gen, dtype=torch.float64)])
        cat = {n: torch.cat([self.feats[n], f.detach().float().cpu()]) if n in self.feats
               else f.detach().float().cpu() for n, f in feats.items()}
        if keys.numel() > self.size:
            keep = torch.topk(keys, self.size, largest=False).indices.sort().values
            keys = keys[keep]
            cat = {n: f[keep] for n, f in cat.items()}
        self.keys, self.feats = keys, cat


@torch.no_grad()
def relation_report(
    teacher: nn.Module, student: nn.Module, loader: Iterable[Any],
    pairs: Sequence[tuple[str, str]], *, k: int = 10, level: str = "graph",
    call: Call | None = None, teacher_call: Call | None = None, max_samples: int = 2000,
    metric: str = "l2", seed: int = 0, device: torch.device | str | None = None,
) -> RelationReport:
    """CKA and kNN overlap of teacher/student features at each layer pair over ``loader``.

    Both models run in ``eval()`` under ``no_grad`` (modes restored after); features are
    recorded by forward hooks at dotted module paths (a ``":mean_pool"`` suffix pools node
    features per graph).

    Args:
        teacher, student: the two models.
        loader: batches (PyG/DGL batches, or anything ``call`` accepts).
        pairs: ``(teacher path, student path)`` per compared pair, e.g.
            ``[("convs.4", "convs.1"), ("pool", "pool")]``.
        k: neighbours of the kNN graphs (``k < `` rows kept).
        level: ``"graph"``: one row per sample (node-level features mean-pooled per graph);
            ``"node"``: one row per node (every path must be node-level).
        call, teacher_call: how to run the student / teacher (default
            :func:`~graphkd.inputs.default_call`; ``teacher_call`` defaults to ``call``).
        max_samples: rows kept (a uniform random subsample over the whole loader, the same
            rows for every pair and both models): bounds memory and the kNN cost.
        metric: kNN distance, ``"l2"`` or ``"cosine"``.
        seed: seed of the subsample.
        device: where the models run (default: the student's parameters').

    Returns:
        a :class:`RelationReport`.

    Raises:
        ValueError: unknown level, no pairs, a wrong path (listing the valid ones), a
            node-level report on per-graph features, too few rows for ``k``.

    Example:
        >>> rep = relation_report(teacher, student, loader, [("convs.4", "convs.1")], k=10)
        >>> rep.rows[0]["cka"], rep.rows[0]["knn_overlap"]
    """
    if level not in _LEVELS:
        raise ValueError(f"level must be 'graph' or 'node', got {level!r}.")
    if not pairs:
        raise ValueError("relation_report needs at least one (teacher path, student path).")
    if max_samples < 2:
        raise ValueError(f"max_samples must be >= 2, got {max_samples}.")
    pairs = [(str(t), str(s)) for t, s in pairs]
    call = call or default_call
    teacher_call = teacher_call or call
    if device is None:
        first = next(student.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    t_hooks = FeatureHooks(teacher, [split_path(t)[0] for t, _ in pairs], "teacher")
    s_hooks = FeatureHooks(student, [split_path(s)[0] for _, s in pairs], "student")
    modes = [(m, m.training) for m in (teacher, student)]
    res = _Reservoir(max_samples, torch.Generator().manual_seed(seed))
    how = _LEVELS[level]
    try:
        for m, _ in modes:
            m.eval()
        for data in loader:
            data = to_device(data, device)
            call_model(teacher_call, teacher, data, "teacher", check=True)
            call_model(call, student, data, "student", check=True)
            tf, sf = t_hooks.pop(), s_hooks.pop()
            ctx = graph_context(data)
            feats = {}
            for i, (tp, sp) in enumerate(pairs):
                key = f"pair {tp!r} -> {sp!r}"
                feats[f"t{i}"] = layer_features(tf, tp, ctx, level=how, key=key, who="teacher")
                feats[f"s{i}"] = layer_features(sf, sp, ctx, level=how, key=key, who="student")
            res.add({n: f.flatten(1) for n, f in feats.items()})
    finally:
        t_hooks.close()
        s_hooks.close()
        for m, was in modes:
            m.train(was)
    n = res.keys.numel()
    if n <= k:
        raise ValueError(f"relation_report kept {n} rows, not more than k={k}; use a larger "
                         "loader or a smaller k.")
    rows = []
    for i, (tp, sp) in enumerate(pairs):
        ft, fs = res.feats[f"t{i}"], res.feats[f"s{i}"]
        rows.append({"teacher": tp, "student": sp, "level": level, "n": n, "k": k,
                     "cka": linear_cka(ft, fs),
                     "knn_overlap": float(knn_overlap(ft, fs, k, metric=metric))})
    return RelationReport(rows, level, k)


def plot_relation_heatmap(reports: RelationReport | Mapping[str, RelationReport],
                          path: str | Path, *, title: str | None = None) -> Path:
    """Heat-maps of CKA and kNN overlap: one row per run, one column per layer pair.

    Written atomically (:func:`graphkd.fileio.atomic_write`) as a PNG; matplotlib's Agg
    backend (no display). Needs matplotlib (``graphkd[plot]``).

    Args:
        reports: one report, or ``{run name: report}`` (e.g. student alone, KD, LSP, ...).
        path: the ``.png`` to write (its directory is created).
        title: figure title.

    Returns:
        the path written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'graphkd[plot]'") from exc
    from graphkd.fileio import atomic_write

    if isinstance(reports, RelationReport):
        reports = {"": reports}
    if not reports:
        raise ValueError("plot_relation_heatmap needs at least one report.")
    runs = list(reports)
    cols = list(dict.fromkeys(f"{_pair_name(r)} ({r['level']})"
                              for rep in reports.values() for r in rep.rows))
    values = {m: [[math.nan] * len(cols) for _ in runs] for m in ("cka", "knn_overlap")}
    for i, rep in enumerate(reports.values()):
        for r in rep.rows:
            j = cols.index(f"{_pair_name(r)} ({r['level']})")
            for m in values:
                values[m][i][j] = r[m]
    ks = sorted({rep.k for rep in reports.values()})
    fig, axes = plt.subplots(1, 2, figsize=(3 + 2.2 * len(cols) * 2, 1.4 + 0.45 * len(runs)),
                             squeeze=False)
    for ax, (m, label) in zip(axes[0], (("cka", "linear CKA"),
                                        ("knn_overlap", "kNN overlap (k="
                                         + ",".join(map(str, ks)) + ")"))):
        im = ax.imshow(values[m], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for i in range(len(runs)):
            for j in range(len(cols)):
                v = values[m][i][j]
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center",
                            color="white" if v < 0.6 else "black", fontsize=8)
        ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=8)
        ax.set_yticks(range(len(runs)), runs)
        ax.set_title(label)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return out
