"""EdgeSet: the structure of a relation graph, and its builders.

A relation graph has ``R`` rows (the nodes whose neighbourhoods are compared: samples of a batch,
points of a cloud, atoms, users) and ``C`` columns (the nodes they relate to; ``C == R`` for a
graph over one node set, ``C != R`` for a bipartite user x item graph). Its ``E`` edges are
stored row-sorted in CSR form::

    ptr  [R + 1]   row r owns edges ptr[r] : ptr[r + 1]
    row  [E]       row of each edge (kept so that no op has to expand ptr on the hot path)
    col  [E]       column of each edge

Edge direction: row ``v`` is the node whose neighbourhood ``N(v) = {col[e] : row[e] == v}`` is
normalised (softmax over ``u in N(v)``). From a PyG/DGL ``edge_index = [src, dst]`` the row is
the *destination* (``dst`` aggregates messages from ``src``), as in PyG's
``softmax(src, index=edge_index[1])`` and DGL's ``edge_softmax``.

Three layouts, chosen once by the builder, decide which path every op takes:

* ``dense``: all pairs, optionally without the diagonal (``loop=False``). Kernels are one
  matmul; ops reshape to ``[R, K]``.
* regular (``degree == K``): every row has exactly ``K`` edges (kNN graphs, top-K soft labels,
  sampled lists). Ops reshape to ``[R, K]``: dense tensor ops, no scatter.
* irregular (``degree is None``): segment reductions with ``scatter_reduce`` / ``index_add``.

Both regular and irregular paths give identical results; the tests check it.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from graphkd._checks import check_features, check_index, full_precision

__all__ = ["EdgeSet"]

#: Default number of distance-matrix entries one kNN chunk may hold (2**24 floats = 64 MiB).
KNN_CHUNK_ELEMENTS = 1 << 24


# ``edge_index`` tensors whose values passed :func:`check_index` for a node count, keyed by
# ``id`` with a weak reference (a tensor is not a dict key: ``==`` is elementwise) and the
# tensor's version counter (an in-place change invalidates the entry).
_VALIDATED: dict[int, tuple[weakref.ref, int, int]] = {}


def _was_validated(edge_index: Tensor, num_nodes: int) -> bool:
    entry = _VALIDATED.get(id(edge_index))
    return (entry is not None and entry[0]() is edge_index
            and entry[1:] == (edge_index._version, num_nodes))


def _mark_validated(edge_index: Tensor, num_nodes: int) -> None:
    key = id(edge_index)
    try:
        ref = weakref.ref(edge_index, lambda _, k=key: _VALIDATED.pop(k, None))
    except TypeError:  # pragma: no cover - a tensor subclass without weak references
        return
    _VALIDATED[key] = (ref, edge_index._version, num_nodes)


@dataclass(frozen=True, eq=False)
class EdgeSet:
    """Row-sorted (CSR) edge structure of a relation graph.

    Attributes:
        ptr: ``[R + 1]`` int64 row pointer.
        row: ``[E]`` int64 row of each edge (non-decreasing).
        col: ``[E]`` int64 column of each edge.
        num_rows: ``R``.
        num_cols: ``C``.
        degree: ``K`` when every row has exactly ``K`` edges (regular fast path), else ``None``.
        dense_loop: for an all-pairs graph built by :meth:`dense`, whether the diagonal is
            included; ``None`` for any other graph.
        batch: optional ``[R]`` graph id of each row (for per-graph reductions).
        num_graphs: number of graphs when ``batch`` is given (else 1).
        max_degree: the largest row degree, recorded by the builders so that padding an
            irregular graph needs no device-to-host read (``None``: computed on demand).
        block_size: ``P`` when every edge joins two nodes of the same block of ``P``
            consecutive nodes (kNN graphs of equal-size point clouds): kernels can then use one
            batched ``[G, P, P]`` matmul instead of an ``[E, D]`` gather.

    Example:
        >>> e = EdgeSet.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 0]]), num_nodes=3)
        >>> e.degree, e.row.tolist(), e.col.tolist()
        (1, [0, 1, 2], [2, 0, 1])
    """

    ptr: Tensor
    _row: Tensor | None
    _col: Tensor | None
    num_rows: int
    num_cols: int
    degree: int | None = None
    dense_loop: bool | None = None
    batch: Tensor | None = None
    num_graphs: int = 1
    max_degree: int | None = None
    block_size: int | None = None

    # ------------------------------------------------------------------ properties
    # ``_row``/``_col`` set to None mean "the all-pairs edge list of a dense graph" (with the
    # diagonal iff K == C); they are built on first access, so a dense m x m EdgeSet costs O(m)
    # memory on the dense kernel/op paths, which never read them.
    def _dense_degree(self) -> int:
        return self.degree if self.degree is not None else int(self.ptr[1] - self.ptr[0])

    @property
    def row(self) -> Tensor:
        """``[E]`` row of each edge (built on first access for dense graphs)."""
        if self._row is None:
            k = self._dense_degree()
            row = torch.arange(self.num_rows, device=self.ptr.device).repeat_interleave(k)
            object.__setattr__(self, "_row", row)
        return self._row

    @property
    def col(self) -> Tensor:
        """``[E]`` column of each edge (built on first access for dense graphs)."""
        if self._col is None:
            n, c = self.num_rows, self.num_cols
            full = torch.arange(c, device=self.ptr.device).repeat(n)
            if self._dense_degree() != c:  # no self-loops: drop the diagonal by a reshape
                full = full.view(n, c).flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(-1)
            object.__setattr__(self, "_col", full)
        return self._col

    @property
    def num_edges(self) -> int:
        """``E``, the number of edges."""
        if self.degree is not None:
            return self.num_rows * self.degree
        return self.col.numel()

    @property
    def is_regular(self) -> bool:
        """Whether every row has the same number of edges (the ``[R, K]`` fast path)."""
        return self.degree is not None

    @property
    def is_dense(self) -> bool:
        """Whether this is an all-pairs graph (kernels are evaluated with one matmul)."""
        return self.dense_loop is not None

    @property
    def device(self) -> torch.device:
        return self.col.device

    @property
    def counts(self) -> Tensor:
        """``[R]`` number of edges of each row."""
        return self.ptr[1:] - self.ptr[:-1]

    def to(self, device: torch.device | str) -> EdgeSet:
        """Return a copy on ``device``."""
        return EdgeSet(
            self.ptr.to(device),
            None if self._row is None else self._row.to(device),
            None if self._col is None else self._col.to(device),
            self.num_rows,
            self.num_cols,
            self.degree,
            self.dense_loop,
            None if self.batch is None else self.batch.to(device),
            self.num_graphs,
            self.max_degree,
            self.block_size,
        )

    def with_batch(self, batch: Tensor | None, num_graphs: int | None = None) -> EdgeSet:
        """Return a copy whose rows carry the graph ids ``batch`` (``[R]``)."""
        if batch is None:
            return EdgeSet(self.ptr, self._row, self._col, self.num_rows, self.num_cols,
                           self.degree, self.dense_loop, max_degree=self.max_degree,
                           block_size=self.block_size)
        if batch.shape != (self.num_rows,):
            raise ValueError(
                f"`batch` must have shape ({self.num_rows},) (one graph id per row), "
                f"got {tuple(batch.shape)}."
            )
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        return EdgeSet(self.ptr, self._row, self._col, self.num_rows, self.num_cols,
                       self.degree, self.dense_loop, batch, num_graphs, self.max_degree,
                       self.block_size)

    def __repr__(self) -> str:
        layout = (
            f"dense(loop={self.dense_loop})" if self.is_dense
            else f"regular(K={self.degree})" if self.is_regular else "irregular"
        )
        return (
            f"EdgeSet(rows={self.num_rows}, cols={self.num_cols}, edges={self.num_edges}, "
            f"{layout}, graphs={self.num_graphs})"
        )

    # ------------------------------------------------------------------ layout helpers
    def regular_view(self, values: Tensor) -> Tensor:
        """View per-edge ``values`` ``[E, *]`` as ``[R, K, *]`` (regular graphs only)."""
        if self.degree is None:
            raise ValueError("regular_view() needs a regular EdgeSet (degree is None).")
        return values.reshape(self.num_rows, self.degree, *values.shape[1:])

    def edge_position(self) -> Tensor:
        """``[E]`` position of each edge within its row (0 for the row's first edge)."""
        return torch.arange(self.num_edges, device=self.device) - self.ptr[self.row]

    def to_padded(self, values: Tensor, fill: float) -> Tensor:
        """Scatter per-edge ``values`` ``[E]`` into a padded ``[R, K_max]`` matrix.

        ``padded[r, j]`` is the ``j``-th edge value of row ``r`` (edge order kept), or ``fill``
        past the row's end. Read the edges back with ``padded[edges.row, edges.edge_position()]``.
        """
        if self.degree is not None:
            return self.regular_view(values)
        k_max = self.max_degree
        if k_max is None:
            k_max = int(self.counts.max()) if self.num_rows else 0
        padded = values.new_full((self.num_rows, k_max), fill)
        return padded.index_put((self.row, self.edge_position()), values)

    # ------------------------------------------------------------------ builders
    @staticmethod
    def _from_sorted(
        row: Tensor, col: Tensor, num_rows: int, num_cols: int, *, degree: int | None = None
    ) -> EdgeSet:
        """Build from row-sorted ``row``/``col``; detects regularity when ``degree`` is None."""
        counts = torch.bincount(row, minlength=num_rows)
        ptr = torch.zeros(num_rows + 1, dtype=torch.long, device=row.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        hi = degree
        if degree is None and num_rows > 0:
            lo, hi = int(counts.min()), int(counts.max())
            degree = lo if lo == hi else None
        return EdgeSet(ptr, row, col, num_rows, num_cols, degree, max_degree=hi)

    @classmethod
    def from_rows(
        cls, row: Tensor, col: Tensor, num_rows: int, num_cols: int | None = None
    ) -> EdgeSet:
        """Build from unsorted ``(row, col)`` pairs (stable sort by row, edge order kept)."""
        num_cols = num_rows if num_cols is None else num_cols
        check_index(row, num_rows, "row")
        check_index(col, num_cols, "col")
        row, perm = torch.sort(row.long(), stable=True)
        return cls._from_sorted(row, col.long()[perm], num_rows, num_cols)

    @classmethod
    def dense(
        cls, n: int, num_cols: int | None = None, *, loop: bool = True,
        device: torch.device | str | None = None,
    ) -> EdgeSet:
        """All pairs ``(i, j)``, ``i < n``, ``j < num_cols``; ``loop=False`` drops ``i == j``.

        Args:
            n: number of rows ``R``.
            num_cols: number of columns (defaults to ``n``).
            loop: keep the diagonal (only meaningful when ``num_cols == n``).
            device: where to allocate.

        Shapes: ``E = n * C`` (or ``n * (n - 1)`` without loops); regular with ``K = C`` or
        ``n - 1``. The edge lists are not materialised until ``row``/``col`` is read, so the
        EdgeSet costs O(n) memory on the dense kernel/op paths.
        """
        c = n if num_cols is None else num_cols
        if n < 1 or c < 1:
            raise ValueError(f"dense graph needs at least one row and column, got n={n}, C={c}.")
        if not loop and c != n:
            raise ValueError("loop=False needs a square graph (num_cols == n).")
        if not loop and n < 2:
            raise ValueError("a dense graph without self-loops needs n >= 2 nodes.")
        k = c if loop else c - 1
        ptr = torch.arange(0, n * k + 1, k, device=device)
        # row/col are built lazily (see the properties): the dense paths never read them.
        return cls(ptr, None, None, n, c, degree=k, dense_loop=loop, max_degree=k)

    @classmethod
    def from_topk(cls, indices: Tensor, num_cols: int) -> EdgeSet:
        """Regular graph from a ``[R, K]`` index matrix (row ``r`` -> ``indices[r]``, in order).

        This is the form of kNN lists and of a recommender's top-K items per user.
        """
        if indices.dim() != 2:
            raise ValueError(f"`indices` must be [R, K], got shape {tuple(indices.shape)}.")
        check_index(indices, num_cols, "indices")
        r, k = indices.shape
        row = torch.arange(r, device=indices.device).repeat_interleave(k)
        ptr = torch.arange(0, r * k + 1, k, device=indices.device) if k else torch.zeros(
            r + 1, dtype=torch.long, device=indices.device)
        return cls(ptr, row, indices.reshape(-1).long(), r, num_cols, degree=k, max_degree=k)

    @classmethod
    def from_edge_index(
        cls, edge_index: Tensor, num_nodes: int | None = None, *, batch: Tensor | None = None,
    ) -> EdgeSet:
        """From a PyG-style ``edge_index`` ``[2, E]`` (``src -> dst``); rows are ``dst``.

        Each row ``v`` then holds the in-neighbours of ``v``: the nodes ``v`` aggregates from.
        Edge order within a row follows the input order. Regularity is detected.
        """
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"`edge_index` must be [2, E], got shape {tuple(edge_index.shape)}.")
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
        if _was_validated(edge_index, num_nodes):
            # the same, unmodified tensor passed the range check before: skip its host syncs
            row, perm = torch.sort(edge_index[1].long(), stable=True)
            out = cls._from_sorted(row, edge_index[0].long()[perm], num_nodes, num_nodes)
        else:
            out = cls.from_rows(edge_index[1], edge_index[0], num_nodes, num_nodes)
            _mark_validated(edge_index, num_nodes)
        return out.with_batch(batch) if batch is not None else out

    @classmethod
    def union(cls, a: EdgeSet, b: EdgeSet) -> EdgeSet:
        """Edges in ``a`` or ``b`` (duplicates removed; rows sorted, columns sorted per row).

        The LSP paper's "virtual edges" for point clouds: the union of the teacher's and the
        student's kNN graphs, so that each model is compared on the other's neighbourhoods.
        """
        if (a.num_rows, a.num_cols) != (b.num_rows, b.num_cols):
            raise ValueError(
                f"union needs graphs of the same shape, got {(a.num_rows, a.num_cols)} and "
                f"{(b.num_rows, b.num_cols)}."
            )
        key = torch.cat([a.row * a.num_cols + a.col, b.row * b.num_cols + b.col]).unique()
        out = cls._from_sorted(key // a.num_cols, key % a.num_cols, a.num_rows, a.num_cols)
        if a.block_size is not None and a.block_size == b.block_size:
            out = replace(out, block_size=a.block_size)
        for g in (a, b):
            if g.batch is not None:
                return out.with_batch(g.batch, g.num_graphs)
        return out

    @staticmethod
    def sample_nodes(
        n: int, max_samples: int, *, generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``[m]`` sorted indices of ``m = min(n, max_samples)`` nodes drawn without replacement
        (all ``n`` nodes, in order, when ``n <= max_samples``). The draw uses a CPU
        ``randperm`` so that a seeded ``generator`` gives the same nodes on every device."""
        if max_samples < 1:
            raise ValueError(f"`max_samples` must be >= 1, got {max_samples}.")
        if n <= max_samples:
            return torch.arange(n, device=device)
        perm = torch.randperm(n, generator=generator, device="cpu")[:max_samples]
        return perm.sort().values.to(device)

    @classmethod
    def sample_pairs(
        cls, n: int, max_samples: int, *, loop: bool = False,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
    ) -> tuple[Tensor, EdgeSet]:
        """Sample ``m = min(n, max_samples)`` nodes and all pairs among them.

        Returns:
            ``(nodes, edges)``: ``nodes`` ``[m]`` are the sampled node indices (sorted; all
            ``n`` nodes when ``n <= max_samples``) and ``edges`` is ``EdgeSet.dense(m)`` over
            them. Index features with ``x[nodes]`` before evaluating a kernel, so the pair
            kernel stays one ``[m, m]`` matmul.
        """
        nodes = cls.sample_nodes(n, max_samples, generator=generator, device=device)
        return nodes, cls.dense(nodes.numel(), loop=loop, device=device)

    @classmethod
    @full_precision  # float16 |x|^2 overflows for |x| > 256; autocast would run the GEMMs in fp16
    def knn(
        cls, x: Tensor, k: int, *, batch: Tensor | None = None, metric: str = "l2",
        loop: bool = False, chunk_size: int | None = None,
    ) -> EdgeSet:
        """k-nearest-neighbour graph: row ``i`` -> its ``k`` nearest points (within its graph).

        Distances are computed chunk by chunk of query points against the points of their own
        graph, and reduced with ``topk`` immediately, so peak memory is
        ``O(chunk_size * n_graph)``, never ``O(N**2)``. Neighbours are sorted nearest first.

        Args:
            x: ``[N, D]`` point features.
            k: neighbours per point; every graph needs more than ``k`` points without loops
                (``k`` with loops).
            batch: optional ``[N]`` sorted graph id of each point (PyG's ``batch``).
            metric: ``"l2"`` (Euclidean) or ``"cosine"`` (``1 - cos``).
            loop: whether a point may be its own neighbour (it is then its nearest one).
            chunk_size: query points per chunk; default keeps a chunk's distance block at
                about 2**24 entries.

        float16 / bfloat16 features are ranked in float32 (and autocast is off inside), so the
        graph equals the float32 graph of the same (rounded) values.

        Returns:
            a regular EdgeSet with ``degree=k`` (and ``batch`` set when given).

        Example:
            >>> pts = torch.randn(100, 3)
            >>> EdgeSet.knn(pts, k=8).degree
            8
        """
        check_features(x, "x")
        if metric not in ("l2", "cosine"):
            raise ValueError(f"unknown metric {metric!r}; valid: 'l2', 'cosine'.")
        n = x.shape[0]
        if k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        if batch is None:
            bounds = [(0, n)]
        else:
            if batch.shape != (n,):
                raise ValueError(f"`batch` must have shape ({n},), got {tuple(batch.shape)}.")
            if n and bool((batch[1:] < batch[:-1]).any()):
                raise ValueError("`batch` must be sorted (as in a PyG Batch).")
            sizes = torch.bincount(batch).tolist() if n else []
            starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
            bounds = [(starts[g], starts[g + 1]) for g in range(len(sizes))]
        need = k if loop else k + 1
        small = [(g, e - s) for g, (s, e) in enumerate(bounds) if 0 < e - s < need]
        if small:
            g, size = small[0]
            raise ValueError(
                f"k={k} needs at least {need} points per graph (loop={loop}), but graph {g} has "
                f"{size}. Lower k or drop graphs that small."
            )
        x = x.detach()
        xn = torch.nn.functional.normalize(x, dim=-1, eps=1e-12) if metric == "cosine" else x
        sizes_set = {e - s for s, e in bounds}
        if len(bounds) > 1 and len(sizes_set) == 1 and chunk_size is None:
            p = next(iter(sizes_set))
            if p * p <= KNN_CHUNK_ELEMENTS:  # equal-size graphs: batched GEMM + top-k
                nbr = _knn_equal_size(xn.view(len(bounds), p, -1), k, metric, loop)
                out = cls.from_topk(nbr.view(n, k), n)
                return replace(out, block_size=p).with_batch(batch)
        cols = []
        for s, e in bounds:
            size = e - s
            if size == 0:
                continue
            xs = xn[s:e]
            if metric == "l2":
                # Distances are translation invariant; centring each graph avoids the
                # catastrophic cancellation of |q|^2 - 2 q.x + |x|^2 far from the origin.
                xs = xs - xs.mean(0, keepdim=True)
            sq = (xs * xs).sum(-1)[None, :]
            step = chunk_size or max(1, KNN_CHUNK_ELEMENTS // size)
            for q0 in range(0, size, step):
                q1 = min(q0 + step, size)
                with torch.no_grad():
                    # Ranking keys, one GEMM each: |q|^2 is constant along a query's row, so
                    # |x|^2 - 2 q.x ranks like the squared distance; -q.x ranks like 1 - cos.
                    if metric == "l2":
                        d = torch.addmm(sq, xs[q0:q1], xs.T, alpha=-2.0)
                    else:
                        d = torch.mm(xs[q0:q1], xs.T).neg_()
                    if not loop:
                        idx = torch.arange(q1 - q0, device=x.device)
                        d[idx, idx + q0] = math.inf
                    nbr = d.topk(k, dim=1, largest=False, sorted=True).indices
                    del d  # free this block before the next one is allocated
                cols.append(nbr + s)
        col = torch.cat(cols).reshape(-1) if cols else torch.zeros(0, dtype=torch.long)
        out = cls.from_topk(col.view(n, k), n)
        if len(sizes_set) == 1:
            out = replace(out, block_size=next(iter(sizes_set)))
        return out.with_batch(batch) if batch is not None else out


def _knn_equal_size(xb: Tensor, k: int, metric: str, loop: bool) -> Tensor:
    """kNN inside each of ``G`` equal-size graphs ``xb`` ``[G, P, D]`` (a batch of point clouds):
    batched GEMMs over chunks of graphs holding about ``KNN_CHUNK_ELEMENTS`` distances.

    Returns ``[G * P, k]`` global neighbour indices, nearest first.
    """
    g_total, p, _ = xb.shape
    if metric == "l2":
        xb = xb - xb.mean(1, keepdim=True)  # translation invariant; avoids cancellation
    sq = (xb * xb).sum(-1).unsqueeze(1)  # [G, 1, P]
    per = max(1, KNN_CHUNK_ELEMENTS // (p * p))
    out = []
    with torch.no_grad():
        for g0 in range(0, g_total, per):
            g1 = min(g0 + per, g_total)
            xg = xb[g0:g1]
            if metric == "l2":  # |x|^2 - 2 q.x ranks like the squared distance
                d = torch.baddbmm(sq[g0:g1], xg, xg.transpose(1, 2), alpha=-2.0)
            else:
                d = torch.bmm(xg, xg.transpose(1, 2)).neg_()
            if not loop:
                d.diagonal(dim1=1, dim2=2).fill_(math.inf)
            nbr = d.topk(k, dim=2, largest=False, sorted=True).indices
            del d
            offset = torch.arange(g0, g1, device=xb.device).mul_(p).view(-1, 1, 1)
            out.append((nbr + offset).reshape(-1, k))
    return torch.cat(out)
