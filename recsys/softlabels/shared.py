"""Soft labels computed once and shared by processes: a locked ``.pt`` cache, and memory-mapped
extractions written by shards and by ranks.

- :func:`cached_teacher_topk`: a ``.pt`` cache keyed by :func:`topk_fingerprint`, filled under an
  inter-process lock (:func:`graphkd.fileio.file_lock`: "first writer wins, the others wait,
  then read"), so N processes asking for the same soft labels compute them once. A stale file
  (another fingerprint) or a corrupt one is detected, logged and rebuilt, never silently used.
- :func:`teacher_topk_to_disk`: the extraction written shard by shard into a memory-mapped
  directory (the ``"mmap"`` format of :mod:`recsys.softlabels.mapped`); ranks fill disjoint row
  ranges (:func:`rank_user_range`) of one directory.
- :func:`shared_teacher_topk`: every rank of a ``torch.distributed`` group (or independent
  processes, under a file lock) gets the same top-K, computed once over the group and mapped
  zero-copy by each.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from graphkd.fileio import file_lock
from recsys.softlabels.fingerprint import keyed_users
from recsys.softlabels.history import HistoryLike, as_history
from recsys.softlabels.mapped import LAYOUT_NAME, MappedTopKWriter, clear_mapped, open_mapped
from recsys.softlabels.settings import UNSET, ExtractionSettings, resolve_settings
from recsys.softlabels.store import (
    CacheError,
    CorruptTopKError,
    IncompleteTopKError,
    load_topk,
    save_topk,
)
from recsys.softlabels.topk import TopK, as_users, teacher_topk

__all__ = ["cached_teacher_topk", "rank_user_range", "teacher_topk_to_disk",
           "shared_teacher_topk"]

log = logging.getLogger(__name__)


def cached_teacher_topk(
    cache: str | Path,
    teacher: nn.Module | Mapping[str, Tensor],
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int | None = None,
    *,
    settings: ExtractionSettings | None = None,
    exclude: HistoryLike | None = UNSET,
    padding_item: int | None = UNSET,
    chunk_size: int = UNSET,
    device: torch.device | str | None = UNSET,
    progress: bool = UNSET,
    score_key: str | None = UNSET,
) -> TopK:
    """:func:`teacher_topk`, reusing a valid on-disk result and rebuilding a stale/corrupt one.

    The cache key (:func:`topk_fingerprint`) covers the teacher's weights, the score function
    (``score_key`` if given, else :func:`score_fn_key` of ``score_fn``: its qualified name,
    source/bytecode hash and closure values), ``k``, the users, ``num_items``, the padding item
    and the history ``exclude``. Same weights with another score function -> another key.

    Several processes may call this at once on the same cache: a valid file is read without
    locking; otherwise the caller takes the inter-process lock ``<file>.lock``
    (:func:`graphkd.fileio.file_lock`), checks the file again (another process may have just
    written it) and only then computes and atomically writes it. So the top-K is computed once
    and every process returns the same result.

    Args:
        cache: a directory (the file is ``topk-<fingerprint[:20]>-k<k>.pt`` inside it) or a
            ``.pt`` file path (reused only if its stored fingerprint matches).
        teacher: the teacher module (or its ``state_dict``) whose weights key the cache.
        score_fn, users, num_items, k, settings, exclude, padding_item, chunk_size, device,
            progress: as in :func:`teacher_topk`.
        score_key: a string identifying what ``score_fn`` computes (replaces the automatic
            :func:`score_fn_key`); give one when the scores depend on state the automatic key
            cannot see (globals, objects reached through attributes).

    Returns:
        the :class:`TopK` on ``device`` (loaded or freshly computed and saved).
    """
    s = resolve_settings(settings, k=k, exclude=exclude, padding_item=padding_item,
                         chunk_size=chunk_size, device=device, progress=progress,
                         score_key=score_key)
    users_t, fp = keyed_users(teacher, users, num_items, s, score_fn=score_fn)
    dev = users_t.device
    cache = Path(cache)
    path = cache if cache.suffix == ".pt" else cache / f"topk-{fp[:20]}-k{s.k}.pt"
    if path.exists():  # lock-free fast path: files are replaced atomically, never half-written
        try:
            top = load_topk(path, fp, format="pt")
            log.info("loaded teacher top-%d from %s", s.k, path)
            return top.to(dev)
        except CacheError:
            pass  # re-checked under the lock (another process may be rewriting it)
    with file_lock(path):
        if path.exists():
            try:
                top = load_topk(path, fp, format="pt")
                log.info("loaded teacher top-%d from %s (written by another process)", s.k,
                         path)
                return top.to(dev)
            except CacheError as exc:
                log.warning("%s; recomputing.", exc)
        top = teacher_topk(score_fn, users_t, num_items, settings=s.replace(device=dev))
        save_topk(path, top, fp, format="pt")
    log.info("saved teacher top-%d to %s", s.k, path)
    return top


def rank_user_range(num_users: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``num_users`` that rank ``rank`` of ``world_size`` computes.

    Contiguous, disjoint, covering ``0..num_users`` and balanced (sizes differ by at most one:
    the first ``num_users % world_size`` ranks get one more row). A rank may get an empty range
    when ``world_size > num_users``.

    Example:
        >>> [rank_user_range(10, r, 3) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    if num_users < 0:
        raise ValueError(f"`num_users` must be >= 0, got {num_users}.")
    base, extra = divmod(num_users, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def teacher_topk_to_disk(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int | None = None,
    path: str | Path | None = None,
    *,
    settings: ExtractionSettings | None = None,
    exclude: HistoryLike | None = UNSET,
    padding_item: int | None = UNSET,
    chunk_size: int = UNSET,
    shard_users: int = UNSET,
    user_range: tuple[int, int] | None = None,
    scores_dtype: torch.dtype = UNSET,
    fingerprint: str | None = None,
    device: torch.device | str | None = UNSET,
    progress: bool = UNSET,
) -> Path:
    r""":func:`teacher_topk` written shard by shard into memory-mapped files under ``path``.

    For soft labels that do not fit in memory (``U * K * 12`` bytes for int64 ids and float32
    scores: 11 GiB for 9.4M users at K = 100). ``path`` is a directory in
    :mod:`recsys.softlabels.mapped`'s format: raw ``indices.int64``, ``scores.bin``
    and ``users.int64`` arrays pre-allocated at their final size, the manifest ``layout.json``,
    and one completion marker ``done-<start>-<stop>.json`` per finished row range with the
    blake2b digests of its rows (hashed as they are written, no extra pass). The marker is
    written last, after the range's rows are flushed (``msync``), so a crashed or unfinished
    writer leaves no marker and :func:`load_topk_mmap` reports the file as incomplete; a later
    change to the bytes (overwrite, truncation) is caught by the sizes and digests.

    Rows are computed ``shard_users`` at a time, each shard with :func:`teacher_topk`'s chunked
    extraction (``chunk_size`` users per score block) and copied into the map, so peak memory is
    one ``[chunk_size, num_items]`` score block plus one ``[shard_users, K]`` shard, whatever
    ``U``. Results equal ``teacher_topk(...)`` row for row (the same deterministic tie order);
    scores are cast to ``scores_dtype``.

    Several processes (ranks) fill one directory: every rank passes the same ``users``,
    ``num_items``, ``k``, ``exclude``, ``padding_item``, ``scores_dtype`` and ``fingerprint`` and
    its own rows, ``user_range=rank_user_range(num_users, rank, world_size)``. The files are only
    extended, never truncated, by a rank, so ranks may start in any order and write disjoint
    slices concurrently (a shared filesystem with coherent ``mmap`` writes is assumed); the
    reader checks that the union of the markers covers every row. No collective communication
    is needed: a rank may wait for the others with ``torch.distributed.barrier()`` before
    loading, or simply retry :func:`load_topk_mmap`.

    Args:
        score_fn, users, num_items, k, settings, exclude, padding_item, chunk_size, device,
            progress: as in :func:`teacher_topk` (``progress`` shows a bar over shards).
        path: output directory (created if needed).
        shard_users: users per shard (rows held in memory before they are written; 65536).
        user_range: rows ``(start, stop)`` of ``users`` this call computes (``0 <= start <=
            stop <= U``); ``None``: all rows, after discarding whatever ``path`` held.
        scores_dtype: stored score dtype (float16, float32 (the default) or float64).
        fingerprint: e.g. :func:`topk_fingerprint`'s digest; stored in the header and checked
            by :func:`load_topk_mmap` (``None``: stored as ``null``).

    Returns:
        ``path`` (read it with :func:`load_topk_mmap` once every range is done).

    Raises:
        ValueError: bad ``user_range`` / ``shard_users`` / ``scores_dtype``, a directory holding
            another extraction (other shape, dtype, K or fingerprint) or a damaged data file
            (wrong size; only with ``user_range``: ``None`` rebuilds), or any error of
            :func:`teacher_topk` (raised before this range's marker is written).

    Example:
        >>> import tempfile
        >>> U, V = torch.randn(100, 8), torch.randn(50, 8)
        >>> d = tempfile.mkdtemp()
        >>> for r in range(2):  # two ranks, run one after the other here
        ...     _ = teacher_topk_to_disk(lambda u: U[u] @ V.T, 100, 50, 5, d,
        ...                              user_range=rank_user_range(100, r, 2))
        >>> load_topk(d).indices.shape  # a directory: the "mmap" format
        torch.Size([100, 5])
    """
    if path is None:
        raise TypeError("teacher_topk_to_disk() is missing the output directory `path`.")
    s = resolve_settings(settings, k=k, exclude=exclude, padding_item=padding_item,
                         chunk_size=chunk_size, shard_users=shard_users,
                         scores_dtype=scores_dtype, device=device, progress=progress)
    users_t = as_users(users, s.device)
    dev = users_t.device
    hist = None if s.exclude is None else as_history(s.exclude, num_items)  # once, not per shard
    writer = MappedTopKWriter(path, num_users=users_t.numel(), k=s.k, num_items=num_items,
                              scores_dtype=s.scores_dtype or torch.float32,
                              padding_item=s.padding_item, fingerprint=fingerprint,
                              user_range=user_range)
    per_shard = s.replace(exclude=hist, device=dev, progress=False, scores_dtype=None)
    shards = range(writer.start, writer.stop, s.shard_users)
    if s.progress:
        from tqdm.auto import tqdm

        shards = tqdm(shards, desc="teacher top-k (to disk)", unit="shard")
    for a in shards:
        b = min(a + s.shard_users, writer.stop)
        top = teacher_topk(score_fn, users_t[a:b], num_items, settings=per_shard)
        writer.write(a, top)
        del top
    return writer.finish()


def _all_ranks_agree(flag: bool, group: Any) -> bool:
    """True on every rank iff ``flag`` is True on every rank of ``group`` (a collective)."""
    import torch.distributed as dist

    flags: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(flags, bool(flag), group=group)
    return all(flags)


def shared_teacher_topk(
    directory: str | Path,
    teacher: nn.Module | Mapping[str, Tensor],
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int | None = None,
    *,
    settings: ExtractionSettings | None = None,
    exclude: HistoryLike | None = UNSET,
    padding_item: int | None = UNSET,
    chunk_size: int = UNSET,
    shard_users: int = UNSET,
    device: torch.device | str | None = UNSET,
    group: Any = None,
    progress: bool = UNSET,
    score_key: str | None = UNSET,
) -> TopK:
    """The teacher's top-K computed once over all processes and shared through memory maps.

    Every rank of ``group`` (the default process group when ``torch.distributed`` is
    initialised; a single process otherwise) calls this with the same arguments. The soft labels
    live in ``directory/topk-mmap-<fingerprint[:20]>-k<k>/`` (:func:`teacher_topk_to_disk`'s
    layout, named by :func:`topk_fingerprint` of the teacher's weights, the score function
    (``score_key`` or :func:`score_fn_key`), K, the users, ``num_items``, the padding item, the
    history and the stored score dtype (``settings.scores_dtype``, float32 by default), so
    another teacher, score function, K, user set or history never reuses it):

    1. every rank tries to open the extraction, checking sizes and content digests (each rank
       hashes a share of the completed ranges); if it succeeds on all ranks it is reused;
    2. otherwise, if a rank found it damaged (a file truncated, overwritten or modified after it
       was written) that rank issues one ``RuntimeWarning`` naming the file and the mismatch;
       the directory is cleared (by rank 0, then a barrier), rank ``r`` of ``W`` scores only
       its users ``rank_user_range(U, r, W)`` and writes them into the shared files (each
       user's row is computed by exactly one rank);
    3. after a barrier, every rank maps the complete files read-only (zero-copy, copy-on-write:
       the pages are shared by the processes through the OS page cache).

    Without ``torch.distributed``, steps 1-3 run under the inter-process lock
    ``<extraction>/layout.json.lock`` (:func:`graphkd.fileio.file_lock`), so independent
    processes sharing ``directory`` compute the labels once: the first builds them, the others
    wait and then map them.

    ``directory`` must be on a filesystem every rank sees (one machine: any local directory).

    Args:
        directory: parent directory of the extraction.
        teacher: the teacher module (or its ``state_dict``), for the fingerprint.
        score_fn, users, num_items, k, settings, exclude, padding_item, chunk_size, shard_users,
            device, progress: as in :func:`teacher_topk_to_disk`.
        group: the process group (``None``: the default group, if initialised).
        score_key: as in :func:`cached_teacher_topk`.

    Returns:
        the complete :class:`TopK` as CPU tensors over memory maps (row ``r`` = ``users[r]``);
        equal to :func:`teacher_topk` (float32 scores by default).

    Example:
        >>> import tempfile
        >>> U, V = torch.randn(20, 4), torch.randn(30, 4)
        >>> top = shared_teacher_topk(tempfile.mkdtemp(), {"U": U, "V": V},
        ...                           lambda u: U[u] @ V.T, 20, 30, 5)
        >>> torch.equal(top.indices, teacher_topk(lambda u: U[u] @ V.T, 20, 30, 5).indices)
        True
    """
    import torch.distributed as dist

    s = resolve_settings(settings, k=k, exclude=exclude, padding_item=padding_item,
                         chunk_size=chunk_size, shard_users=shard_users, device=device,
                         progress=progress, score_key=score_key)
    s = s.replace(scores_dtype=s.scores_dtype or torch.float32)  # what the files store
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank(group) if distributed else 0
    world = dist.get_world_size(group) if distributed else 1
    users_t, fp = keyed_users(teacher, users, num_items, s, score_fn=score_fn)
    dev = users_t.device
    path = Path(directory) / f"topk-mmap-{fp[:20]}-k{s.k}"
    lock = contextlib.nullcontext() if distributed else file_lock(path / LAYOUT_NAME)
    with lock:
        top: TopK | None = None
        damage: CorruptTopKError | None = None
        try:
            top = open_mapped(path, fp, verify=True, part=(rank, world))
        except CorruptTopKError as exc:
            damage = exc
        except IncompleteTopKError:
            pass
        reuse = _all_ranks_agree(top is not None, group) if distributed else top is not None
        if reuse:
            log.info("rank %d: mapped the teacher's top-%d from %s", rank, s.k, path)
            return top  # type: ignore[return-value]
        del top
        if damage is not None:
            warnings.warn(f"{damage} Rebuilding the soft labels in {path}.", RuntimeWarning,
                          stacklevel=2)
        start, stop = rank_user_range(users_t.numel(), rank, world)
        log.info("rank %d/%d: teacher top-%d of users [%d, %d) -> %s", rank, world, s.k, start,
                 stop, path)
        if distributed:  # start from an empty directory, then each rank fills its rows
            if rank == 0:
                clear_mapped(path)
            dist.barrier(group=group)
        teacher_topk_to_disk(score_fn, users_t, num_items, path=path,
                             settings=s.replace(device=dev, progress=s.progress and rank == 0),
                             user_range=(start, stop) if distributed else None, fingerprint=fp)
        if distributed:
            dist.barrier(group=group)
        return open_mapped(path, fp, verify=False)  # just written (and hashed) by this group
