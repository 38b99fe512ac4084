r"""Per-epoch samplers of ranking distillation: seeded, vectorised over users.

All samplers take an optional ``torch.Generator`` (draws happen on the generator's device, CPU
by default, and results are moved to ``device``), so an epoch's samples are reproducible. No
Python loop runs over users: weighted sampling without replacement is the Gumbel-top-k trick
(:math:`\arg\mathrm{top}_k(\log w + g)` with Gumbel noise ``g``, the same distribution as
``torch.multinomial(w, k, replacement=False)``), uniform sampling outside a forbidden set is
vectorised rejection (membership by ``searchsorted`` on sorted ``user * num_items + item`` keys)
with an exact masked fallback for the few rows that keep failing.

Positions vs items: samplers over a teacher's top-``M`` list return *positions* ``[U, k]``
(0-based teacher ranks, sorted ascending = teacher order when ``sort=True``); map them to items
with ``top.indices.gather(1, positions)``.

================================  ===========================================================
sampler                           distribution
================================  ===========================================================
:func:`rank_aware_sample`         ``k`` distinct positions, :math:`p(r) \propto e^{-r/T}`
                                  (RRD, ``T=10``; ``temperature=None``: uniform over top-M)
:func:`tournament_sample`         CD: winner (better rank) of two draws with
                                  :math:`p(r) \propto e^{-r/(M T)}`, ``n`` distinct per user
:func:`uniform_items`             uniform over items outside history, padding and top-M
                                  (RRD's uninteresting items, RD's ``eps`` dynamic samples)
:func:`discrepancy_sample`        DCD: under-/over-estimated positions,
                                  :math:`p \propto \max(\tanh(\max(\pm(r^S-r^T)/T, 0)), 10^{-5})`
:func:`pair_sample`               UnKD: position pairs ``i < j`` drawn i.i.d. with
                                  :math:`p(r) \propto e^{-(r+1)/T}` (``T=20``), ``i != j``
:func:`popularity_groups`         UnKD: items split into groups of equal interaction mass
:func:`group_interactions`        UnKD: each user's training interactions per group ``[U, G]``
:func:`split_pair_counts`         UnKD: a total of ``n`` pairs per user split over the groups
                                  by interaction share (largest remainder)
================================  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from recsys.softlabels import HistoryLike, TopK, as_history, history_entries, teacher_topk

__all__ = [
    "gumbel_topk",
    "rank_aware_sample",
    "tournament_sample",
    "uniform_items",
    "ForbiddenItems",
    "sorted_rows",
    "student_ranks",
    "discrepancy_sample",
    "popularity_groups",
    "group_topk",
    "pair_sample",
    "group_interactions",
    "split_pair_counts",
]


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _gumbel(shape: tuple[int, ...], generator: torch.Generator | None,
            dtype: torch.dtype = torch.float64) -> Tensor:
    u = torch.rand(shape, generator=generator, device=_gen_device(generator), dtype=dtype)
    u = u.clamp(torch.finfo(dtype).tiny, 1.0 - torch.finfo(dtype).eps)
    return -torch.log(-torch.log(u))


def gumbel_topk(log_weights: Tensor, k: int, *, generator: torch.Generator | None = None,
                sort: bool = True) -> Tensor:
    """``k`` distinct column indices per row, drawn without replacement with probability
    proportional to ``exp(log_weights)`` (``-inf`` = never).

    Args:
        log_weights: ``[U, M]`` (broadcast rows allowed: ``[1, M]`` with ``U`` from ``generator``
            draws is not supported; expand first).
        k: samples per row, ``k <= M`` (and ``<=`` the number of finite weights of each row).
        sort: return each row's indices in increasing order (teacher order for rank lists).

    Returns:
        ``[U, k]`` int64 on ``log_weights``' device.
    """
    if k > log_weights.shape[-1]:
        raise ValueError(f"cannot draw k={k} distinct samples from {log_weights.shape[-1]}.")
    g = _gumbel(tuple(log_weights.shape), generator).to(log_weights.device)
    keys = log_weights.to(torch.float64) + g
    idx = keys.topk(k, dim=-1).indices
    return idx.sort(dim=-1).values if sort else idx


def _check_k_m(k: int, m: int, what: str = "k") -> None:
    if m < 1:
        raise ValueError(f"the top-M list must be non-empty, got M={m}.")
    if not 1 <= k <= m:
        raise ValueError(f"`{what}`={k} must lie in [1, M={m}] (distinct positions of a top-M).")


def rank_aware_sample(
    num_users: int, m: int, k: int, *, temperature: float | None = 10.0,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
    sort: bool = True,
) -> Tensor:
    r"""RRD's interesting items: ``k`` distinct positions of a top-``m`` list per user.

    Without replacement, :math:`p(r) \propto e^{-r/T}` (``r = 0..m-1``); ``temperature=None``
    samples uniformly (the authors' later, better-performing variant).

    Returns:
        ``[num_users, k]`` int64 positions (ascending = teacher order when ``sort``).

    Example:
        >>> pos = rank_aware_sample(3, 500, 40, generator=torch.Generator().manual_seed(0))
        >>> pos.shape, bool((pos[:, 1:] > pos[:, :-1]).all())
        (torch.Size([3, 40]), True)
    """
    _check_k_m(k, m)
    if temperature is not None and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0 or None (uniform), got {temperature}.")
    r = torch.arange(m, dtype=torch.float64)
    logw = (-r / temperature) if temperature is not None else torch.zeros(m, dtype=torch.float64)
    out = gumbel_topk(logw.expand(num_users, m), k, generator=generator, sort=sort)
    return out.to(device) if device is not None else out


def _categorical(log_weights: Tensor, shape: tuple[int, ...],
                 generator: torch.Generator | None) -> Tensor:
    """i.i.d. draws (with replacement) from one categorical given by ``log_weights`` ``[M]``."""
    p = torch.softmax(log_weights.to(torch.float64), 0)
    flat = torch.multinomial(p.to(_gen_device(generator)), math.prod(shape), replacement=True,
                             generator=generator)
    return flat.view(shape)


def _first_valid(cand: Tensor, valid: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """First ``n`` valid entries of each row in draw order, and whether the row had ``n``."""
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :n]
    return cand.gather(1, order), valid.sum(1) >= n


def _mark_repeats(cand: Tensor) -> Tensor:
    """``[R, c]`` bool: True where the value already occurred earlier in the row."""
    s, perm = torch.sort(cand, dim=1, stable=True)
    rep = torch.zeros_like(s, dtype=torch.bool)
    rep[:, 1:] = s[:, 1:] == s[:, :-1]
    return torch.zeros_like(rep).scatter(1, perm, rep)


def tournament_sample(
    num_users: int, m: int, n: int, *, temperature: float = 20.0,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
    max_rounds: int = 50,
) -> Tensor:
    r"""CD's rank-aware tournament: ``n`` distinct positions of a top-``m`` list per user.

    Each draw takes two positions i.i.d. with :math:`p(r) \propto e^{-r/(m T)}` (``r = 1..m``,
    as in the reference) and keeps the better-ranked one (so
    :math:`P(\text{win}=r) = p_r^2 + 2 p_r \sum_{r' > r} p_{r'}`); draws are repeated until each
    user has ``n`` distinct winners (the first ``n`` distinct ones in draw order).

    Returns:
        ``[num_users, n]`` int64 positions, sorted ascending.
    """
    _check_k_m(n, m, "n")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    logw = -torch.arange(1, m + 1, dtype=torch.float64) / (m * temperature)
    out = torch.empty(num_users, n, dtype=torch.long)
    pending = torch.arange(num_users)
    c = 2 * n + 8
    for _ in range(max_rounds):
        if pending.numel() == 0:
            break
        a = _categorical(logw, (pending.numel(), c, 2), generator)
        win = a.min(-1).values
        got, ok = _first_valid(win, ~_mark_repeats(win), n)
        out[pending[ok]] = got[ok]
        pending = pending[~ok]
        c *= 2
    if pending.numel():
        raise RuntimeError(
            f"tournament sampling could not find {n} distinct items for {pending.numel()} users "
            f"in {max_rounds} rounds; lower n or raise the temperature."
        )
    out = out.sort(dim=1).values
    return out.to(device) if device is not None else out


def _forbidden_keys(users: Tensor, num_items: int, history: HistoryLike | None,
                    exclude_topk: Tensor | None, padding_item: int | None) -> Tensor:
    """Sorted unique ``local_row * num_items + item`` keys of the items a row may not get."""
    dev = users.device
    u = users.numel()
    parts = []
    if history is not None:
        hist = as_history(history, num_items)
        if users.numel() and int(users.max()) >= hist.num_rows:
            raise ValueError(
                f"`users` has ids up to {int(users.max())} but the history has only "
                f"{hist.num_rows} rows."
            )
        r, c = history_entries(hist, users)
        parts.append(r * num_items + c)
    if exclude_topk is not None:
        if exclude_topk.dim() != 2 or exclude_topk.shape[0] != u:
            raise ValueError(
                f"`exclude_topk` must be [{u}, M] (one top-M row per user), got "
                f"{tuple(exclude_topk.shape)}."
            )
        rows = torch.arange(u, device=dev).unsqueeze(1)
        parts.append((rows * num_items + exclude_topk.to(dev).long()).reshape(-1))
    if padding_item is not None:
        parts.append(torch.arange(u, device=dev) * num_items + padding_item)
    if not parts:
        return torch.zeros(0, dtype=torch.long, device=dev)
    return torch.unique(torch.cat(parts))


def _is_member(keys: Tensor, query: Tensor) -> Tensor:
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    return keys[pos] == query


#: :class:`ForbiddenItems` keeps a dense ``[U, num_items]`` membership mask (one byte per
#: entry, O(1) lookups instead of a binary search over the sorted keys) up to this many entries
DENSE_FORBIDDEN_BUDGET = 1 << 26


class ForbiddenItems:
    """The items each row of :func:`uniform_items` may not get, built once and reused.

    Per-epoch samplers draw from the same forbidden sets every epoch (RRD: the history and
    the teacher's fixed top-M; RD: the history), so the sets are built once per run instead of
    once per epoch; :func:`uniform_items` then draws exactly the same items as when it builds
    them itself (the random draws do not depend on how membership is looked up).

    Attributes:
        users: ``[U]`` the user id of each row.
        num_items: the item count.
        keys: sorted unique ``row * num_items + item`` keys (``row`` = local row ``0..U-1``).
        counts: ``[U]`` forbidden items per row.
        mask: ``[U, num_items]`` bool membership (None above
            :data:`DENSE_FORBIDDEN_BUDGET` entries: lookups search ``keys``).

    Example:
        >>> f = ForbiddenItems(torch.tensor([0, 1]), 4, exclude_topk=torch.tensor([[1], [2]]))
        >>> f.contains(torch.tensor([[0], [1]]), torch.tensor([[1], [1]])).tolist()
        [[True], [False]]
    """

    def __init__(self, users: Tensor, num_items: int, *, history: HistoryLike | None = None,
                 exclude_topk: Tensor | None = None, padding_item: int | None = 0) -> None:
        if users.dim() != 1 or users.dtype not in (torch.int64, torch.int32):
            raise ValueError("`users` must be a 1-D integer tensor of user ids.")
        if users.numel() and int(users.min()) < 0:
            raise ValueError("`users` contains negative ids.")
        self.users = users.long()
        self.num_items = int(num_items)
        u = self.users.numel()
        self.keys = _forbidden_keys(self.users, self.num_items, history, exclude_topk,
                                    padding_item)
        self.counts = torch.bincount(self.keys // self.num_items, minlength=u)
        self.mask: Tensor | None = None
        if u * self.num_items <= DENSE_FORBIDDEN_BUDGET:
            mask = torch.zeros(u * self.num_items, dtype=torch.bool, device=self.keys.device)
            self.mask = mask.index_fill_(0, self.keys, True).view(u, self.num_items)

    def contains(self, rows: Tensor, items: Tensor) -> Tensor:
        """Whether ``items`` (any shape) is forbidden for local ``rows`` (broadcastable)."""
        if self.mask is not None:
            return self.mask[rows, items]
        return _is_member(self.keys, rows * self.num_items + items)

    def matches(self, users: Tensor, num_items: int) -> bool:
        """Whether this set was built for exactly these ``users`` and ``num_items``."""
        return (num_items == self.num_items and users.shape == self.users.shape
                and bool(torch.equal(users.long().to(self.users.device), self.users)))


def uniform_items(
    users: Tensor, num_items: int, n: int, *, history: HistoryLike | None = None,
    exclude_topk: Tensor | None = None, padding_item: int | None = 0,
    replacement: bool = False, generator: torch.Generator | None = None,
    max_rounds: int = 4, forbidden: ForbiddenItems | None = None,
) -> Tensor:
    """``n`` items per user, uniform over the items outside the user's history, the padding
    item and (optionally) the user's top-M list.

    RRD's uninteresting items (``exclude_topk=top.indices``, ``L=40``), RD's ``eps=100`` dynamic
    samples and UnKD/BPR-style negatives (``exclude_topk=None``).

    Args:
        users: ``[U]`` user ids (rows of ``history``).
        num_items: item count.
        n: items per user.
        history: per-user training history (see :func:`recsys.softlabels.as_history`).
        exclude_topk: optional ``[U, M]`` items also excluded per row.
        padding_item: always excluded (``None``: none).
        replacement: draw with replacement (default: ``n`` distinct items).
        generator: seeded generator.
        max_rounds: rejection rounds before the exact masked fallback for remaining rows.
        forbidden: the rows' forbidden sets built beforehand (:class:`ForbiddenItems` of the
            same ``users`` and ``num_items``, reused across epochs) instead of ``history``,
            ``exclude_topk`` and ``padding_item``; the draws are the same.

    Returns:
        ``[U, n]`` int64 items on ``users``' device, in random order.

    Raises:
        ValueError: a user has fewer allowed items than ``n`` (or none, with replacement), or
            ``forbidden`` was built for other users / items or given with ``history`` /
            ``exclude_topk``.

    Example:
        >>> f = ForbiddenItems(torch.arange(3), 10, exclude_topk=torch.tensor([[1], [2], [3]]))
        >>> uniform_items(torch.arange(3), 10, 4, forbidden=f).shape
        torch.Size([3, 4])
    """
    if users.dim() != 1 or users.dtype not in (torch.int64, torch.int32):
        raise ValueError("`users` must be a 1-D integer tensor of user ids.")
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}.")
    if users.numel() and int(users.min()) < 0:
        raise ValueError("`users` contains negative ids.")
    users = users.long()
    dev = users.device
    u = users.numel()
    if forbidden is None:
        forbidden = ForbiddenItems(users, num_items, history=history, exclude_topk=exclude_topk,
                                   padding_item=padding_item)
    elif history is not None or exclude_topk is not None:
        raise ValueError("pass either `forbidden` or `history`/`exclude_topk`, not both.")
    elif not forbidden.matches(users, num_items):
        raise ValueError("`forbidden` was built for other users or another item count.")
    keys = forbidden.keys.to(dev)
    avail = num_items - forbidden.counts.to(dev)
    need = 1 if replacement else n
    short = (avail < need).nonzero().squeeze(1)
    if short.numel():
        raise ValueError(
            f"{short.numel()} user(s) (e.g. {users[short[:5]].tolist()}) have only "
            f"{avail[short[:5]].tolist()} allowed items but n={n} "
            + ("distinct " if not replacement else "")
            + "samples were asked for; lower n (or the top-M excluded)."
        )
    gdev = _gen_device(generator)
    out = torch.empty(u, n, dtype=torch.long, device=dev)
    pending = torch.arange(u, device=dev)
    for rnd in range(max_rounds):
        if pending.numel() == 0:
            break
        # oversample by the worst allowed fraction among pending rows
        frac = float((avail[pending].double() / num_items).min())
        c = int(math.ceil(n / max(frac, 1e-3) * 1.25)) + 8 << rnd
        c = min(c, max(4 * num_items + 8, 2 * n))  # >= n: draws with replacement may exceed it
        cand = torch.randint(0, num_items, (pending.numel(), c), generator=generator,
                             device=gdev).to(dev)
        valid = ~forbidden.contains(pending.unsqueeze(1).to(forbidden.keys.device),
                                    cand.to(forbidden.keys.device)).to(dev)
        if not replacement:
            valid &= ~_mark_repeats(cand)
        got, ok = _first_valid(cand, valid, n)
        out[pending[ok]] = got[ok]
        pending = pending[~ok]
    if pending.numel():  # exact fallback: Gumbel-top-n over each remaining row's allowed items
        for s in range(0, pending.numel(), 256):
            rows = pending[s:s + 256]
            allowed = torch.ones(rows.numel(), num_items, dtype=torch.bool, device=dev)
            rk = keys[_is_member(rows, keys // num_items)]
            local = torch.searchsorted(rows, rk // num_items)
            allowed[local, rk % num_items] = False
            logw = torch.zeros(allowed.shape, dtype=torch.float64, device=dev).masked_fill(
                ~allowed, -torch.inf)
            if replacement:
                idx = torch.multinomial(allowed.double().to(gdev), n, replacement=True,
                                        generator=generator).to(dev)
            else:
                idx = gumbel_topk(logw, n, generator=generator, sort=False)
            out[rows] = idx
    return out


def sorted_rows(scores: Tensor) -> Tensor:
    """Each row of a ``[R, C]`` score matrix sorted ascending: ``scores.sort(dim=1).values``.

    On CPU NumPy's vectorised sort does it (AVX-512 quicksort where available: ~3.5x faster
    than ``torch.sort`` on ml-100k's 944 x 1683 float32 scores, one thread); sorted *values*
    are the same whatever the algorithm, so :func:`student_ranks` does not change.

    Example:
        >>> sorted_rows(torch.tensor([[3.0, 1.0, 2.0]]))
        tensor([[1., 2., 3.]])
    """
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64) and (
            not scores.requires_grad):
        return torch.from_numpy(np.sort(scores.numpy(), axis=1))
    return scores.sort(dim=1).values


def student_ranks(
    score_fn: Callable[[Tensor], Tensor], users: Tensor, items: Tensor, num_items: int, *,
    chunk_size: int = 1024,
) -> Tensor:
    """Exact 0-based rank of ``items`` in each user's full student ranking (chunked).

    ``rank = |{j : s(u, j) > s(u, i)}|`` over all items (as DCD's reference, which ranks over
    every item). Memory ``O(chunk_size * num_items)``.

    Args:
        score_fn: ``users [c] -> [c, num_items]`` student scores.
        users: ``[U]`` user ids.
        items: ``[U, M]`` items to rank (e.g. the teacher's top-M).
        num_items: item count.
        chunk_size: users per chunk.

    Returns:
        ``[U, M]`` int64 ranks.
    """
    if items.dim() != 2 or items.shape[0] != users.numel():
        raise ValueError(f"`items` must be [{users.numel()}, M], got {tuple(items.shape)}.")
    out = torch.empty(items.shape, dtype=torch.long, device=items.device)
    with torch.no_grad():
        for s in range(0, users.numel(), chunk_size):
            sc = score_fn(users[s:s + chunk_size])
            if sc.shape != (min(chunk_size, users.numel() - s), num_items):
                raise ValueError(f"`score_fn` returned shape {tuple(sc.shape)}, expected "
                                 f"[chunk, {num_items}].")
            x = sc.gather(1, items[s:s + chunk_size].to(sc.device))
            asc = sorted_rows(sc)
            le = torch.searchsorted(asc, x.contiguous(), right=True)
            out[s:s + chunk_size] = (num_items - le).to(out.device)
    return out


def discrepancy_sample(
    student_rank: Tensor, k: int, *, temperature: float = 10.0, floor: float = 1e-5,
    generator: torch.Generator | None = None, sort: bool = True,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""DCD: under- and over-estimated positions of the teacher's top-M.

    With teacher rank :math:`r^T = 0..M-1` (the position) and student rank :math:`r^S`
    (``student_rank``, e.g. from :func:`student_ranks`):

    .. math::
        w^{under} = \max(\tanh(\max((r^S - r^T)/T, 0)), \text{floor}),\quad
        w^{over} = \max(\tanh(\max((r^T - r^S)/T, 0)), \text{floor})

    and ``k`` distinct positions are drawn from each, without replacement, ``∝ w``.

    Args:
        student_rank: ``[U, M]`` student ranks of the teacher's top-M items (teacher order).
        k: samples per list (``K=100``).
        temperature: ``T=10``.
        floor: minimum weight (``1e-5``, reference).
        sort: return positions ascending (teacher order).
        lengths: optional ``[U]`` valid prefix length of each row (DCD's item side: a
            ``strict=False`` top-M whose tail is ``-inf``). Positions ``>= lengths[u]`` get
            weight 0; a row with fewer than ``k`` valid positions gets all of them plus
            invalid ones, which sort last (mask them with ``positions < lengths[:, None]``).

    Returns:
        ``(under, over)``, each ``[U, k]`` int64 positions.
    """
    if student_rank.dim() != 2:
        raise ValueError(f"`student_rank` must be [U, M], got {tuple(student_rank.shape)}.")
    _check_k_m(k, student_rank.shape[1])
    r_s = student_rank.to(torch.float64)
    r_t = torch.arange(r_s.shape[1], dtype=torch.float64, device=r_s.device)
    diff = (r_s - r_t) / temperature
    w_under = torch.tanh(diff.clamp_min(0)).clamp_min(floor)
    w_over = torch.tanh((-diff).clamp_min(0)).clamp_min(floor)
    log_under, log_over = w_under.log(), w_over.log()
    if lengths is not None:
        if lengths.shape != (r_s.shape[0],):
            raise ValueError(f"`lengths` must be [{r_s.shape[0]}], got {tuple(lengths.shape)}.")
        invalid = r_t.unsqueeze(0) >= lengths.to(r_s.device).unsqueeze(1)
        log_under = log_under.masked_fill(invalid, -torch.inf)
        log_over = log_over.masked_fill(invalid, -torch.inf)
    under = gumbel_topk(log_under, k, generator=generator, sort=sort)
    over = gumbel_topk(log_over, k, generator=generator, sort=sort)
    return under, over


def popularity_groups(item_counts: Tensor, num_groups: int) -> Tensor:
    """UnKD's popularity groups: ``[I]`` group id, groups of (nearly) equal interaction mass.

    Items are sorted by decreasing count (ties by id); item ``i`` goes to group
    ``floor(G * (mass of the items before it) / total)``, so group 0 holds the most popular
    items, every group is a contiguous popularity band, and each group's mass differs from
    ``total / G`` by less than the largest single count. Items with count 0 fall in the last
    band.

    Example:
        >>> popularity_groups(torch.tensor([1, 1, 4, 1, 1]), 2).tolist()
        [1, 1, 0, 1, 1]
    """
    if item_counts.dim() != 1 or item_counts.numel() == 0:
        raise ValueError("`item_counts` must be a non-empty 1-D tensor (count per item).")
    if num_groups < 1 or num_groups > item_counts.numel():
        raise ValueError(f"`num_groups` must lie in [1, {item_counts.numel()}], got "
                         f"{num_groups}.")
    counts = item_counts.to(torch.float64)
    if bool((counts < 0).any()):
        raise ValueError("`item_counts` must be non-negative.")
    total = counts.sum()
    if total <= 0:
        raise ValueError("`item_counts` sums to 0: no interactions to split.")
    order = torch.sort(-counts, stable=True).indices
    before = torch.cumsum(counts[order], 0) - counts[order]
    grp = torch.floor(before * num_groups / total).long().clamp_max(num_groups - 1)
    return torch.empty_like(grp).scatter_(0, order, grp)


def group_interactions(history: HistoryLike, item_groups: Tensor, num_groups: int) -> Tensor:
    """``[U, G]`` int64: each user's number of training interactions in each item group.

    Example:
        >>> from recsys.softlabels import history_from_interactions
        >>> h = history_from_interactions(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]), 2, 3)
        >>> group_interactions(h, torch.tensor([0, 0, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    hist = as_history(history, item_groups.numel())
    grp = item_groups.to(hist.col.device)[hist.col]
    out = torch.zeros(hist.num_rows * num_groups, dtype=torch.long, device=hist.col.device)
    out.index_add_(0, hist.row * num_groups + grp, torch.ones_like(grp))
    return out.view(hist.num_rows, num_groups)


def split_pair_counts(weights: Tensor, total: int) -> Tensor:
    r"""Split ``total`` pairs per user over the groups in proportion to ``weights`` ``[U, G]``
    (UnKD: the user's interaction count per popularity group), exactly ``total`` per row.

    Largest-remainder (Hamilton) rounding: each group first gets
    :math:`\lfloor n\,w_g / \sum w \rfloor`, then the pairs left over go one each to the groups
    with the largest fractional parts (ties to the lower group index, i.e. the more popular
    band). A row whose weights sum to 0 (a user without training interactions) is split
    equally, by the same rule.

    Example:
        >>> split_pair_counts(torch.tensor([[7, 3], [1, 2], [0, 0]]), 30).tolist()
        [[21, 9], [10, 20], [15, 15]]
        >>> split_pair_counts(torch.tensor([[1, 1, 1, 1]]), 30).tolist()  # 7.5 each
        [[8, 8, 7, 7]]
    """
    if weights.dim() != 2 or weights.shape[1] < 1:
        raise ValueError(f"`weights` must be [U, G], got {tuple(weights.shape)}.")
    if total < 0:
        raise ValueError(f"`total` must be >= 0, got {total}.")
    w = weights.to(torch.float64)
    if bool((w < 0).any()):
        raise ValueError("`weights` must be non-negative.")
    g = w.shape[1]
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    exact = total * w / w.sum(1, keepdim=True)
    base = torch.floor(exact + 1e-9).clamp_max(total)  # 1e-9: 21.000000000000004 -> 21
    left = (total - base.sum(1)).long().clamp_min(0)
    frac = (exact - base).clamp_min(0)
    # rank the groups by fractional part (desc), ties by index (asc): a stable sort
    order = torch.sort(-frac, dim=1, stable=True).indices
    bonus = (torch.arange(g, device=w.device).unsqueeze(0) < left.unsqueeze(1)).to(torch.float64)
    base = base.scatter_add(1, order, bonus)
    return base.long()


def group_topk(
    score_fn: Callable[[Tensor], Tensor], users: Tensor | int, num_items: int, m: int,
    item_groups: Tensor, group: int, *, exclude: HistoryLike | None = None,
    padding_item: int | None = 0, chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> tuple[TopK, Tensor]:
    """The teacher's top-``m`` items *within one popularity group* (UnKD's per-group ranking).

    Items of other groups, the history and the padding item are masked; users with fewer than
    ``m`` allowed items in the group get a shorter valid prefix.

    Returns:
        ``(top, lengths)``: a :class:`TopK` with ``k = min(m, group size)`` (invalid tail
        entries have score ``-inf``) and ``[U]`` valid lengths.
    """
    in_group = item_groups == group
    size = int(in_group.sum())
    if size == 0:
        raise ValueError(f"group {group} has no items.")
    k = min(m, size)
    dev = device if device is not None else (
        users.device if isinstance(users, Tensor) else torch.device("cpu"))
    outside = ~in_group.to(dev)

    def masked(u: Tensor) -> Tensor:
        return score_fn(u).masked_fill(outside, -torch.inf)

    top = teacher_topk(masked, users, num_items, k, exclude=exclude, padding_item=padding_item,
                       chunk_size=chunk_size, device=dev, strict=False)
    return top, torch.isfinite(top.scores).sum(1)


def pair_sample(
    lengths: Tensor, n: int, *, temperature: float = 20.0,
    generator: torch.Generator | None = None, max_rounds: int = 50,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""UnKD pairs: ``n`` position pairs ``(i, j)``, ``i < j``, per user of a ranked list.

    Both positions are drawn i.i.d. with :math:`p(r) \propto e^{-(r+1)/T}` over the user's valid
    prefix ``0..lengths[u]-1``; equal draws are redrawn; the better-ranked one is ``i``. So
    :math:`P(\{x, y\}) = 2 p_x p_y / (1 - \sum_r p_r^2)`.

    Args:
        lengths: ``[U]`` valid list length per user (e.g. from :func:`group_topk`).
        n: pairs per user.
        temperature: ``T = 20``.

    Returns:
        ``(pos_i, pos_j, valid)``: ``[U, n]`` positions and a ``[U, n]`` mask (False for users
        whose list has fewer than 2 items; their positions are 0).
    """
    if lengths.dim() != 1:
        raise ValueError("`lengths` must be [U].")
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}.")
    dev = lengths.device
    m = int(lengths.max()) if lengths.numel() else 0
    u = lengths.numel()
    pos_i = torch.zeros(u, n, dtype=torch.long, device=dev)
    pos_j = torch.zeros(u, n, dtype=torch.long, device=dev)
    ok_rows = lengths >= 2
    if m < 2:
        return pos_i, pos_j, ok_rows.unsqueeze(1).expand(u, n).clone()
    r = torch.arange(m, dtype=torch.float64, device=dev)
    logw = (-(r + 1) / temperature).expand(u, m).masked_fill(
        r.unsqueeze(0) >= lengths.unsqueeze(1), -torch.inf)
    p = torch.softmax(logw, dim=1)
    p = torch.where(ok_rows.unsqueeze(1), p, torch.full_like(p, 1.0 / m))
    todo = ok_rows.unsqueeze(1).expand(u, n).clone()
    gdev = _gen_device(generator)
    for _ in range(max_rounds):
        rows = todo.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        draws = torch.multinomial(p[rows].to(gdev), 2 * n, replacement=True,
                                  generator=generator).to(dev).view(-1, n, 2)
        a, b = draws[..., 0], draws[..., 1]
        fill = todo[rows] & (a != b)
        pi, pj = torch.minimum(a, b), torch.maximum(a, b)
        pos_i[rows] = torch.where(fill, pi, pos_i[rows])
        pos_j[rows] = torch.where(fill, pj, pos_j[rows])
        todo[rows] = todo[rows] & ~fill
    if bool(todo.any()):
        raise RuntimeError("pair sampling did not converge; raise the temperature.")
    return pos_i, pos_j, ok_rows.unsqueeze(1).expand(u, n).clone()
