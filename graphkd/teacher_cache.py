r"""Offline teacher cache: the frozen teacher's matched-layer outputs, computed once, memory-mapped.

Without random augmentation (molecules), a frozen teacher in ``eval()`` gives the same features
for a sample in every epoch. :func:`cache_teacher` runs it **once** over the training set, stores
what the Distiller reads from it (the hooked outputs of the matched teacher layers, and the
logits when a logits loss uses them) on disk, and attaches the cache to the Distiller: training
then skips the teacher forward entirely, so an epoch costs about a student-alone epoch plus the
losses.

.. code-block:: python

    from graphkd.teacher_cache import cache_teacher, index_samples

    train = index_samples(train)                  # every sample gets data.idx = its position
    loader = DataLoader(train, batch_size=32, shuffle=True)
    distiller = Distiller(teacher, student, matches, logits="kd", example=next(iter(loader)))
    cache_teacher(distiller, train, root="runs/teacher_cache")     # built once, then reused
    fit(distiller, loader, val_loader, epochs=100)                 # no teacher forward

**Identifying samples.** Shuffled loaders batch different samples each epoch, so every sample
carries an id: the attribute ``key`` of the batch (default ``"idx"``: a PyG ``Batch`` of
``Data`` with an integer ``idx`` holds the ``[B]`` ids of its graphs, in batch order;
:func:`index_samples` attaches ``idx = position``), or ``key=fn`` with ``fn(batch) ->
LongTensor [B]``. Ids must be unique within the cached dataset.

**Layout** (one directory per cache key under ``root``): ``manifest.json`` (format, version,
key, layer names, shapes, dtypes, byte sizes and blake2b digests), ``ids.int64`` ``[G]``,
``num_nodes.int64`` ``[G]`` (node count per sample), and one raw C-order array per cached output:
per-graph outputs (``pool``, the logits) as ``[G, *row]``, per-node outputs (``convs.4``) as the
samples' node rows concatenated in storage order ``[sum_g n_g, *row]`` (ragged, offsets from
``num_nodes``). Arrays are read through ``np.memmap`` (zero-copy, paged in by the OS); a batch
gathers its samples' rows in batch order.

**Key.** SHA-256 of the teacher's ``state_dict`` (names, dtypes, shapes, bytes) and class, a
content fingerprint of the dataset (every tensor of every sample, in order, ids included), the
cached layer names, whether logits are cached, the identity of the call and of ``key``
(qualified name and bytecode of a function), and the stored dtype. Any change gives another
directory; a stale cache is never read.

**Build** once under :func:`graphkd.fileio.file_lock` ("first process builds, the others wait
and read"): a private temporary directory is filled (data streamed batch by batch, digests
computed as written), the manifest written last, then the directory is renamed into place.
Opening checks sizes and (``verify=True``) the digests; a damaged cache raises
:class:`TeacherCacheError` (and :func:`cache_teacher` rebuilds it).

**Precision.** ``dtype="float32"`` (default) stores the teacher's values exactly (float32
teachers): losses and gradients equal the live teacher's. ``dtype="float16"`` halves the disk
and I/O; the build measures the normwise relative error ``max|x16 - x| / max|x|`` of every
array and refuses (``TeacherCacheError``) above ``max_rel_error`` (default ``1e-3``; rounding
alone gives at most ``2**-11 ~ 4.9e-4``) and on values beyond float16's range. Whether a method
tolerates it is the user's call (relation kernels and KD on logits do; FitNet-style regressions
to large activations may not). Values are handed to the losses as the teacher's dtype.

**Not cacheable:** random augmentation (the teacher would see other inputs each epoch). A
dataset whose ``transform`` is a known random transform (graphkd's ``RandomScaleShift``,
``Jitter``, ``ShufflePoints``, ``SamplePoints`` or a PyG ``Random*``, also inside
``Compose``), or whose samples differ between two reads, is refused; any other ``transform``
gets a warning. Mutual learning (a trained peer) is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from graphkd.fileio import atomic_write_json, check_name, file_lock
from graphkd.hooks import FeatureHooks, split_path
from graphkd.inputs import Call, default_call, graph_context, logits_of, to_device

__all__ = ["FORMAT_VERSION", "TeacherCacheError", "TeacherCache", "CachedTeachers",
           "cache_teacher", "index_samples", "sample_ids", "dataset_fingerprint",
           "teacher_cache_key", "check_cacheable"]

#: On-disk format version (the manifest's ``version``; part of the key).
FORMAT_VERSION = 1
_FORMAT = "graphkd-teacher-cache"
_MANIFEST = "manifest.json"
_LOGITS = "@logits"  # the pseudo-layer name of the teacher's logits
_DTYPES = {"float32": np.float32, "float16": np.float16}
_HASH_BLOCK = 8 << 20
_PROBE = 4  # samples read twice to detect random transforms

SampleKey = str | Callable[[Any], Tensor]


class TeacherCacheError(RuntimeError):
    """A teacher cache that cannot be built or used (damaged, stale, unsafe, missing samples)."""


# ============================================================================ sample ids
def index_samples(dataset: Sequence[Any], attr: str = "idx") -> list[Any]:
    """Shallow copies of the samples with ``attr`` set to their position (``data.idx = i``).

    Tensors are shared with the originals, not copied. A PyG ``Batch`` of these samples holds
    ``batch.idx`` ``[B]``: the ids :class:`TeacherCache` looks up.

    Example:
        >>> train = index_samples(train)
        >>> int(train[5].idx)
        5
    """
    import copy

    out = []
    for i, d in enumerate(dataset):
        c = copy.copy(d)
        setattr(c, attr, i)
        out.append(c)
    return out


def sample_ids(data: Any, key: SampleKey = "idx") -> np.ndarray:
    """The ``[B]`` int64 sample ids of a batch (on the host): ``getattr(data, key)`` or
    ``key(data)``.

    Raises:
        TeacherCacheError: no such attribute, or not a 1-D integer id per sample.
    """
    return _ids(data, key)[0]


def _ids(data: Any, key: SampleKey) -> tuple[np.ndarray, torch.device]:
    """The sample ids on the host and the device they were on."""
    if callable(key):
        ids = key(data)
    else:
        ids = getattr(data, key, None)
        if ids is None:
            raise TeacherCacheError(
                f"the batch has no {key!r} attribute: give every sample an id "
                "(graphkd.teacher_cache.index_samples(dataset)) or pass key=fn(batch) -> ids.")
    if isinstance(ids, int):
        ids = torch.tensor([ids])
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.dim() > 1:
        raise TeacherCacheError(f"sample ids must be an integer [B] tensor, got "
                                f"{type(ids).__name__} {getattr(ids, 'shape', '')}.")
    return ids.reshape(-1).to("cpu", torch.int64).numpy(), ids.device


# ============================================================================ keys
def _hash_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _hash_value(h: Any, v: Any, depth: int = 0) -> None:
    """Feed a sample's content to ``h``: tensors by bytes, containers recursively."""
    if depth > 8:
        raise TeacherCacheError("sample nesting is too deep to fingerprint.")
    if isinstance(v, Tensor):
        _hash_tensor(h, v)
    elif isinstance(v, np.ndarray):
        _hash_tensor(h, torch.from_numpy(np.ascontiguousarray(v)))
    elif isinstance(v, (tuple, list)):
        h.update(f"seq{len(v)}(".encode())
        for x in v:
            _hash_value(h, x, depth + 1)
        h.update(b")")
    elif isinstance(v, Mapping):
        h.update(b"map(")
        for k in sorted(v, key=str):
            h.update(f"{k}=".encode())
            _hash_value(h, v[k], depth + 1)
        h.update(b")")
    elif hasattr(v, "items") and callable(v.items):  # PyG Data / HeteroData
        h.update(f"{type(v).__name__}(".encode())
        for k, x in sorted(v.items(), key=lambda kv: str(kv[0])):
            h.update(f"{k}=".encode())
            _hash_value(h, x, depth + 1)
        h.update(b")")
    elif v is None or isinstance(v, (bool, int, float, str, bytes)):
        h.update(f"{type(v).__name__}:{v!r}|".encode())
    else:
        raise TeacherCacheError(f"cannot fingerprint a sample part of type {type(v).__name__}; "
                                "samples must hold tensors, arrays, numbers and strings.")


def dataset_fingerprint(dataset: Sequence[Any]) -> str:
    """SHA-256 of every sample's content, in order (tensors by dtype, shape and bytes).

    Example:
        >>> dataset_fingerprint(index_samples(graphs)) != dataset_fingerprint(graphs)
        True
    """
    h = hashlib.sha256(f"n={len(dataset)}|".encode())
    for d in dataset:
        _hash_value(h, d)
    return h.hexdigest()


def _callable_key(fn: Any) -> str:
    """A process-independent description of a call / key function (name + bytecode)."""
    if fn is None or isinstance(fn, str):
        return repr(fn)
    if isinstance(fn, functools.partial):
        return (f"partial({_callable_key(fn.func)},{fn.args!r},"
                f"{sorted(fn.keywords.items())!r})")
    code = getattr(fn, "__code__", None)
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    if code is None:
        return f"{type(fn).__module__}.{type(fn).__qualname__}"
    h = hashlib.blake2b(code.co_code, digest_size=16)
    h.update(repr([c for c in code.co_consts if not hasattr(c, "co_code")]).encode())
    h.update("|".join(code.co_names).encode())
    return f"{name}:{h.hexdigest()}"


def teacher_cache_key(teacher: nn.Module, data_fingerprint: str, layers: Sequence[str], *,
                      logits: bool, call: Call | None = None, key: SampleKey = "idx",
                      dtype: str = "float32") -> str:
    """SHA-256 hex key of a cache: teacher weights + dataset + layers + logits + call + dtype.

    Args:
        teacher: the frozen model (its ``state_dict`` and class are hashed).
        data_fingerprint: :func:`dataset_fingerprint` of the cached samples.
        layers: module paths of the cached outputs (order irrelevant).
        logits: whether the logits are cached.
        call, key: how the teacher is run and how samples are identified.
        dtype: ``"float32"`` or ``"float16"``.
    """
    h = hashlib.sha256(f"{_FORMAT}-v{FORMAT_VERSION}|dtype={dtype}|logits={bool(logits)}|"
                       f"layers={sorted(set(layers))}|call={_callable_key(call)}|"
                       f"key={_callable_key(key)}|data={data_fingerprint}|".encode())
    cls = type(teacher)
    h.update(f"class={cls.__module__}.{cls.__qualname__}|".encode())
    state = teacher.state_dict()
    for name in sorted(state):
        h.update(name.encode() + b"|")
        _hash_tensor(h, state[name])
    return h.hexdigest()


# ============================================================================ cacheability
def _transforms(t: Any, depth: int = 0) -> Iterable[Any]:
    if t is None or depth > 8:
        return
    yield t
    for inner in getattr(t, "transforms", None) or ():
        yield from _transforms(inner, depth + 1)


def check_cacheable(dataset: Sequence[Any]) -> None:
    """Refuse a dataset with random augmentation (its teacher outputs change every epoch).

    Raises:
        TeacherCacheError: a known random ``transform`` (graphkd's random point-cloud
            transforms, PyG ``Random*``), or a sample that differs between two reads.

    Warns:
        UserWarning: another ``transform`` is set (assumed deterministic).
    """
    from graphkd.datasets.transforms import SamplePoints, ShufflePoints, _Random

    transform = getattr(dataset, "transform", None)
    for t in _transforms(transform):
        if isinstance(t, (_Random, ShufflePoints, SamplePoints)) \
                or type(t).__name__.startswith("Random"):
            raise TeacherCacheError(
                f"the dataset's transform {type(t).__name__} is a random augmentation: the "
                "teacher sees other inputs every epoch, so its outputs cannot be cached; train "
                "with the live teacher (no cache_teacher).")
    for i in range(min(_PROBE, len(dataset))):
        a, b = hashlib.sha256(), hashlib.sha256()
        _hash_value(a, dataset[i])
        _hash_value(b, dataset[i])
        if a.digest() != b.digest():
            raise TeacherCacheError(
                f"sample {i} differs between two reads (random augmentation?): the teacher's "
                "outputs cannot be cached; train with the live teacher.")
    if transform is not None:
        warnings.warn(f"the dataset has a transform ({type(transform).__name__}); the teacher "
                      "cache assumes it is deterministic.", stacklevel=3)


# ============================================================================ the cache
@dataclass
class _Array:
    name: str          # layer path or "@logits"
    level: str         # "graph" (one row per sample) or "node" (one per node)
    data: np.ndarray   # memmap [rows, *row_shape]
    offsets: np.ndarray  # [G + 1] first row of each stored sample
    torch_dtype: torch.dtype


def _digest_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _rows_index(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated row ranges ``[offsets[r], offsets[r+1])`` of the samples ``rows``."""
    starts, counts = offsets[rows], offsets[rows + 1] - offsets[rows]
    total = int(counts.sum())
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + (np.arange(total, dtype=np.int64) - first)


class TeacherCache:
    """A built teacher cache, opened read-only; :meth:`lookup` gives a batch's teacher outputs.

    Use :func:`cache_teacher` (build or reuse, attach to a Distiller) or :meth:`build` /
    :meth:`open` directly.

    Attributes:
        path: the cache directory.
        manifest: its ``manifest.json``.
        layers: the cached module paths; ``has_logits``: whether logits are cached.
    """

    def __init__(self, path: str | os.PathLike, *, key: str | None = None,
                 verify: bool = True, sample_key: SampleKey | None = None) -> None:
        self.path = Path(path)
        man = self._read_manifest(key)
        self.manifest = man
        self.key: str = man["key"]
        stored = man.get("sample_key", "idx")
        if sample_key is None and stored == "<fn>":
            raise TeacherCacheError(f"teacher cache {self.path} was built with key=fn; pass "
                                    "the same function as sample_key=.")
        #: how batches name their samples (the attribute, or the build's key function)
        self.sample_key: SampleKey = stored if sample_key is None else sample_key
        files: dict[str, Any] = man["files"]
        for fname, meta in files.items():
            p = self.path / check_name(fname, "cache file")
            size = p.stat().st_size if p.is_file() else -1
            if size != int(meta["bytes"]):
                raise TeacherCacheError(f"teacher cache {self.path}: {fname} has {size} bytes, "
                                        f"the manifest says {meta['bytes']} (damaged).")
            if verify and _digest_file(p) != meta["blake2b"]:
                raise TeacherCacheError(f"teacher cache {self.path}: {fname} does not match "
                                        "its recorded digest (modified or damaged).")
        g = int(man["num_samples"])
        ids = self._map("ids.int64", np.int64, (g,))
        counts = np.asarray(self._map("num_nodes.int64", np.int64, (g,)))
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = np.asarray(ids)[self._order]
        if g and np.any(self._sorted_ids[1:] == self._sorted_ids[:-1]):
            raise TeacherCacheError(f"teacher cache {self.path} holds duplicate sample ids.")
        self._counts = counts
        node_off = np.zeros(g + 1, dtype=np.int64)
        np.cumsum(counts, out=node_off[1:])
        graph_off = np.arange(g + 1, dtype=np.int64)
        self._arrays: dict[str, _Array] = {}
        for a in man["arrays"]:
            off = node_off if a["level"] == "node" else graph_off
            shape = (int(off[-1]), *a["row_shape"])
            data = self._map(a["file"], _DTYPES[a["dtype"]], shape)
            tdt = getattr(torch, a["torch_dtype"].removeprefix("torch."))
            self._arrays[a["name"]] = _Array(a["name"], a["level"], data, off, tdt)
        self.layers = [n for n in self._arrays if n != _LOGITS]
        self.has_logits = _LOGITS in self._arrays

    def _read_manifest(self, key: str | None) -> dict[str, Any]:
        p = self.path / _MANIFEST
        try:
            man = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise TeacherCacheError(f"cannot read {p}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(man, dict) or man.get("format") != _FORMAT:
            raise TeacherCacheError(f"{p} is not a graphkd teacher cache manifest.")
        if man.get("version") != FORMAT_VERSION:
            raise TeacherCacheError(f"{p} has format version {man.get('version')}, this "
                                    f"graphkd reads {FORMAT_VERSION}.")
        if key is not None and man.get("key") != key:
            raise TeacherCacheError(f"teacher cache {self.path} is stale: built for another "
                                    "teacher / dataset / layers / call.")
        return man

    def _map(self, fname: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        if 0 in shape:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(self.path / fname, dtype=dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return int(self.manifest["num_samples"])

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Storage rows of sample ``ids`` (``[B]`` int64).

        Raises:
            TeacherCacheError: an id that is not in the cache.
        """
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, max(len(self._sorted_ids) - 1, 0))
        bad = self._sorted_ids[pos] != ids if len(self._sorted_ids) else np.ones_like(ids, bool)
        if np.any(bad):
            raise TeacherCacheError(
                f"sample id(s) {ids[bad][:5].tolist()} are not in the teacher cache "
                f"{self.path} (built on another dataset or split?).")
        return self._order[pos]

    def lookup(self, data: Any, device: torch.device | str | None = None,
               ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The teacher's ``(logits or None, {layer path: output})`` for a batch, in batch order.

        Per-node outputs are the batch's node rows (graph after graph, as PyG batches them),
        per-graph outputs one row per sample; on ``device`` (default: that of the batch's
        ``batch`` vector, else CPU), in the teacher's dtype.

        Raises:
            TeacherCacheError: an unknown sample id, or a sample whose node count differs from
                the cached one (another dataset under the same ids).
        """
        ids, id_device = _ids(data, self.sample_key)
        rows = self.rows_of(ids)
        ctx = graph_context(data)
        batch = ctx.get("batch")
        if device is None:
            device = batch.device if isinstance(batch, Tensor) else id_device
        need_nodes = any(a.level == "node" for a in self._arrays.values())
        if need_nodes:
            if not isinstance(batch, Tensor):
                raise TeacherCacheError("per-node teacher outputs are cached but the batch has "
                                        "no graph structure (batch vector).")
            got = torch.bincount(batch, minlength=len(ids)).cpu().numpy()
            if got.shape != rows.shape or np.any(got != self._counts[rows]):
                raise TeacherCacheError(
                    "the batch's node counts differ from the cached samples' (the ids point to "
                    "other molecules: another dataset, split or transform?).")
        out: dict[str, Tensor] = {}
        for name, a in self._arrays.items():
            idx = rows if a.level == "graph" else _rows_index(a.offsets, rows)
            block = torch.from_numpy(np.ascontiguousarray(a.data[idx]))
            out[name] = block.to(device=device, dtype=a.torch_dtype, non_blocking=True)
        return out.pop(_LOGITS, None), out

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, teacher: nn.Module, dataset: Sequence[Any], root: str | os.PathLike,
              layers: Sequence[str], *, logits: bool = False, call: Call | None = None,
              key: SampleKey = "idx", dtype: str = "float32", batch_size: int = 256,
              loader: Iterable[Any] | None = None, max_rel_error: float = 1e-3,
              verify: bool = True, device: torch.device | str | None = None,
              ) -> TeacherCache:
        """Open the cache of this teacher/dataset/layers under ``root``, building it if needed.

        Args:
            teacher: the frozen model (run in ``eval()`` under ``no_grad``).
            dataset: the samples (each with its id, see :func:`index_samples`); fingerprinted.
            root: directory holding caches (one sub-directory per key).
            layers: teacher module paths whose outputs are cached (pooling suffixes are
                dropped: the raw output is cached, pooling happens at use).
            logits: also cache ``logits_of(call(teacher, batch))``.
            call: how to run the teacher (default :func:`~graphkd.inputs.default_call`).
            key: the id attribute name or ``fn(batch) -> ids``.
            dtype: ``"float32"`` (exact) or ``"float16"`` (checked against ``max_rel_error``).
            batch_size: batch size of the build pass (PyG ``DataLoader``, no shuffle).
            loader: batches over exactly ``dataset`` for the build pass instead (e.g. DGL).
            max_rel_error: float16 only, the largest accepted ``max|x16 - x| / max|x|``.
            verify: check the digests when opening an existing cache.
            device: where the teacher runs (default: its parameters').

        Raises:
            TeacherCacheError: random augmentation, duplicate ids, an output that is neither
                per-graph nor per-node, float16 beyond its range or tolerance.
        """
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        if not len(dataset):
            raise ValueError("cannot cache the teacher on an empty dataset.")
        check_cacheable(dataset)
        paths = list(dict.fromkeys(split_path(p)[0] for p in layers))
        k = teacher_cache_key(teacher, dataset_fingerprint(dataset), paths, logits=logits,
                              call=call, key=key, dtype=dtype)
        root = Path(root)
        final = root / f"teacher-{k[:40]}"
        with file_lock(final):
            if final.is_dir():
                try:
                    return cls._opened(final, k, verify, key)
                except TeacherCacheError as exc:
                    warnings.warn(f"rebuilding the teacher cache: {exc}", stacklevel=2)
                    shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
            try:
                _write(tmp, teacher, dataset, paths, logits=logits, call=call or default_call,
                       key=key, dtype=dtype, batch_size=batch_size, loader=loader,
                       max_rel_error=max_rel_error, cache_key=k, device=device)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return cls._opened(final, k, False, key)

    @classmethod
    def _opened(cls, path: Path, k: str, verify: bool, key: SampleKey) -> TeacherCache:
        return cls(path, key=k, verify=verify, sample_key=key)


def _write(tmp: Path, teacher: nn.Module, dataset: Sequence[Any], paths: list[str], *,
           logits: bool, call: Call, key: SampleKey, dtype: str, batch_size: int,
           loader: Iterable[Any] | None, max_rel_error: float, cache_key: str,
           device: torch.device | str | None) -> None:
    """One pass of the teacher over ``dataset``, streaming its outputs into ``tmp``."""
    if loader is None:
        from torch_geometric.loader import DataLoader

        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    first = next(teacher.parameters(), None)
    device = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu"))
    names = [*paths, *([_LOGITS] if logits else [])]
    files = {n: f"a{i}.bin" for i, n in enumerate(names)}
    handles = {n: open(tmp / files[n], "wb") for n in names}  # noqa: SIM115 - closed below
    hashes = {n: hashlib.blake2b(digest_size=16) for n in names}
    info: dict[str, dict[str, Any]] = {n: {"graph": True, "node": True, "row_shape": None,
                                           "torch_dtype": None, "err": 0.0, "scale": 0.0,
                                           "bytes": 0} for n in names}
    all_ids: list[np.ndarray] = []
    all_counts: list[np.ndarray] = []
    was = teacher.training
    teacher.eval()
    hooks = FeatureHooks(teacher, paths, "teacher")
    try:
        with torch.no_grad():
            for data in loader:
                data = to_device(data, device)
                out = call(teacher, data)
                feats = hooks.pop()
                if logits:
                    feats[_LOGITS] = logits_of(out)
                ids = sample_ids(data, key)
                ctx = graph_context(data)
                b = len(ids)
                if isinstance(ctx.get("batch"), Tensor):
                    counts = torch.bincount(ctx["batch"], minlength=b).cpu().numpy()
                    nodes = int(ctx["num_nodes"])
                else:
                    counts, nodes = np.ones(b, dtype=np.int64), -1
                all_ids.append(ids)
                all_counts.append(counts.astype(np.int64))
                for n in names:
                    _append(n, feats.get(n), b, nodes, info[n], handles[n], hashes[n], dtype)
    finally:
        hooks.close()
        teacher.train(was)
        for fh in handles.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
    ids = np.concatenate(all_ids)
    if len(np.unique(ids)) != len(ids):
        raise TeacherCacheError("duplicate sample ids in the dataset: every sample needs its "
                                "own id (index_samples(dataset)).")
    counts = np.concatenate(all_counts)
    arrays = []
    for n in names:
        meta = info[n]
        level = "node" if meta["node"] else ("graph" if meta["graph"] else None)
        if level is None:
            raise TeacherCacheError(f"the teacher output {n!r} has neither one row per sample "
                                    "nor one per node; it cannot be cached.")
        rel = meta["err"] / max(meta["scale"], np.finfo(np.float32).tiny)
        if dtype == "float16" and rel > max_rel_error:
            raise TeacherCacheError(f"float16 changes the teacher output {n!r} by a relative "
                                    f"{rel:.2e} > max_rel_error={max_rel_error:g}; use "
                                    "dtype='float32'.")
        arrays.append({"name": n, "file": files[n], "level": level, "dtype": dtype,
                       "row_shape": list(meta["row_shape"]),
                       "torch_dtype": str(meta["torch_dtype"]), "max_rel_error": rel})
    file_meta = {files[n]: {"bytes": info[n]["bytes"], "blake2b": hashes[n].hexdigest()}
                 for n in names}
    for fname, arr in (("ids.int64", ids), ("num_nodes.int64", counts)):
        raw = np.ascontiguousarray(arr, dtype=np.int64).tobytes()
        (tmp / fname).write_bytes(raw)
        file_meta[fname] = {"bytes": len(raw),
                            "blake2b": hashlib.blake2b(raw, digest_size=16).hexdigest()}
    atomic_write_json(tmp / _MANIFEST, {
        "format": _FORMAT, "version": FORMAT_VERSION, "key": cache_key,
        "num_samples": len(ids), "layers": paths, "logits": logits,
        "sample_key": key if isinstance(key, str) else "<fn>", "arrays": arrays,
        "files": file_meta}, sort_keys=True, indent=1)


def _append(name: str, f: Any, b: int, nodes: int, meta: dict[str, Any], fh: Any, h: Any,
            dtype: str) -> None:
    """Stream one batch's output of ``name`` to its file, tracking its level and error."""
    if not isinstance(f, Tensor):
        raise TeacherCacheError(f"the teacher module {name!r} produced no tensor in the build "
                                "pass (was it called in this forward?).")
    if not f.is_floating_point() or f.dim() < 1:
        raise TeacherCacheError(f"the teacher output {name!r} is not a floating [rows, ...] "
                                "tensor; it cannot be cached.")
    rows = f.shape[0]
    meta["graph"] &= rows == b
    meta["node"] &= rows == nodes
    if meta["row_shape"] is None:
        meta["row_shape"], meta["torch_dtype"] = tuple(f.shape[1:]), f.dtype
    elif tuple(f.shape[1:]) != meta["row_shape"]:
        raise TeacherCacheError(f"the teacher output {name!r} changes shape between batches "
                                f"({meta['row_shape']} -> {tuple(f.shape[1:])}).")
    x = f.detach().float().cpu().numpy()
    if not np.isfinite(x).all():
        raise TeacherCacheError(f"the teacher output {name!r} holds NaN/inf; not cached.")
    y = x.astype(_DTYPES[dtype])
    if dtype == "float16":
        if not np.isfinite(y).all():
            raise TeacherCacheError(f"the teacher output {name!r} exceeds float16's range "
                                    "(|x| > 65504); use dtype='float32'.")
        if x.size:
            meta["err"] = max(meta["err"], float(np.abs(y.astype(np.float32) - x).max()))
    if x.size:
        meta["scale"] = max(meta["scale"], float(np.abs(x).max()))
    raw = np.ascontiguousarray(y).tobytes()
    fh.write(raw)
    h.update(raw)
    meta["bytes"] += len(raw)


# ============================================================================ the Distiller
class CachedTeachers:
    """The Distiller's teacher source: ``source(data) -> (t_outs, t_feats)``, one entry per
    teacher, read from :class:`TeacherCache` s instead of running the teachers."""

    def __init__(self, caches: Sequence[TeacherCache]) -> None:
        self.caches = list(caches)

    def __call__(self, data: Any) -> tuple[list[Any], list[dict[str, Tensor]]]:
        outs, feats = [], []
        for c in self.caches:
            z, f = c.lookup(data)
            outs.append(z)
            feats.append(f)
        return outs, feats


def cache_teacher(distiller: Any, dataset: Sequence[Any], root: str | os.PathLike, *,
                  key: SampleKey = "idx", dtype: str = "float32", batch_size: int = 256,
                  loader: Iterable[Any] | None = None, max_rel_error: float = 1e-3,
                  verify: bool = True) -> list[TeacherCache]:
    """Build (or reuse) the cache of every frozen teacher of ``distiller`` on ``dataset`` and
    make the Distiller read it instead of running the teachers.

    Caches the teacher layers the matches read and, when the Distiller's logits loss applies to
    a teacher, its logits. After this, ``distiller(batch)`` for a batch of these samples gives
    the same losses as the live teacher (``dtype="float32"``) without a teacher forward;
    :meth:`Distiller.setup`'s dry run still runs the teacher once. ``distiller.teacher_source =
    None`` goes back to the live teacher.

    Args:
        distiller: a :class:`~graphkd.distill.Distiller` with ``mode="offline"``.
        dataset, root, key, dtype, batch_size, loader, max_rel_error, verify: see
            :meth:`TeacherCache.build`.

    Returns:
        the caches, one per teacher.

    Raises:
        ValueError: a mutual-learning Distiller (its peer trains, nothing to cache).
        TeacherCacheError: see :meth:`TeacherCache.build`.

    Example:
        >>> caches = cache_teacher(distiller, index_samples(train), "runs/cache")
        >>> out, losses = distiller(batch)        # teacher outputs read from disk
    """
    if not distiller.frozen:
        raise ValueError("cache_teacher needs a frozen teacher (mode='offline'); a mutual "
                         "peer changes every step.")
    caches = []
    for i, t in enumerate(distiller._teachers):
        layers = [p for s in distiller._specs if s.teacher == i for p in s.match.teacher_paths]
        logits = distiller.logits_loss is not None and t.logits
        caches.append(TeacherCache.build(
            t.model, dataset, root, layers, logits=logits, call=t.call, key=key, dtype=dtype,
            batch_size=batch_size, loader=loader, max_rel_error=max_rel_error, verify=verify))
    distiller.teacher_source = CachedTeachers(caches)
    return caches
