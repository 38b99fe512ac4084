r"""ADER (Mi, Lin & Faltings, RecSys 2020): continual next-item recommendation with adaptively
distilled exemplar replay, on RecBole's SASRec.

The data arrive in periods: the interactions of a RecBole dataset (``ml-100k``), sorted by
timestamp, are cut into ``n_periods`` consecutive blocks of equal size
(:func:`split_periods`). A training row is a user's history before an interaction (the last
``MAX_ITEM_LIST_LENGTH`` items, RecBole's ``item_id_list`` / ``item_length`` layout) and the
interaction's item as target (:func:`build_rows`); a row belongs to the block of its target.
At period ``t`` (0-based) the model is updated and then tested on block ``t + 1`` (the paper's
protocol: train on cycle ``t``, recommend for cycle ``t + 1``): every row of the next block
whose target is an item seen so far, ranked by full sort over the items seen so far
(``I_t``: the items of blocks ``<= t``), Recall@20 and MRR@20 (:func:`evaluate_rows`).

Variants (:data:`CONTINUAL_VARIANTS`; every variant starts period ``t`` from the model of
period ``t - 1``, the first period from scratch):

==============  ===============================================================================
``ader``        the new block plus the exemplars ``E_{t-1}``; loss
                ``CE(new rows) + lambda_t * KD(exemplar rows)`` (:func:`recsys.losses.ader_kd_loss`,
                weight :func:`recsys.losses.ader_weight`); each batch holds ``batch_size`` new
                rows and ``ceil(|E| / batches)`` exemplars (the authors' sampler). After
                training, ``E_t`` is selected from the new block's rows and ``E_{t-1}``:
                ``budget`` rows split over target items in proportion to their frequency
                (:func:`exemplar_counts`), chosen per item by herding on the model's sequence
                representations (:func:`herding`); their logits over ``I_t`` are kept as the
                next period's soft targets.
``finetune``    the new block only (catastrophic forgetting baseline).
``retrain``     every block so far (the "joint" baseline).
==============  ===============================================================================

Training: Adam, a fixed number of epochs per period (no validation split: CPU budget), the
student's softmax CE over the items seen so far (as the authors' ``max_item`` masking).

Reproduced from the paper / the authors' code: SASRec base model, the per-item exemplar budget
proportional to item frequency (a seeded multinomial draw, as their ``ExemplarGenerator``),
herding on the L2-normalised sequence representations of the rows whose next item is that
item, logits matching (softmax CE) on the items known at ``t - 1``, the adaptive weight
``lambda_base * sqrt(|I_{t-1}|/|I_t| * |E_{t-1}|/|D_t|)``, per-period Recall@20/MRR@20 on the
next period. Adapted: ml-100k users' histories instead of anonymous sessions (the prefix may
reach back into earlier blocks, as a returning user's history would), herding in iCaRL's greedy
form (each step adds the unselected row bringing the running mean closest to the item's mean;
the authors iterate Welling's herding weights), fixed epochs instead of early stopping, and a
budget scaled to ml-100k (default 2,000 rows, about 12 % of a block at 6 periods; the paper
keeps 30,000 on DIGINETICA).

RecBole's pieces: ``Config`` / ``create_dataset`` (id remapping of the atomic files), the
``SASRec`` model (its ``forward`` and item table); the continual loop and the per-period rows are
built here from the loaded interactions (RecBole's trainers take one fixed split).

Example:
    >>> from recsys.recbole.ader import prepare_continual, run_continual
    >>> data = prepare_continual("ml-100k", n_periods=6)  # doctest: +SKIP
    >>> res = run_continual(data, "ader", epochs=3, seed=0)  # doctest: +SKIP
    >>> [p["recall@20"] for p in res["periods"]]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from graphkd.registry import Registry
from recsys.losses.ader import ader_kd_loss, ader_weight
from recsys.recbole.sequential import item_table, sequence_output

__all__ = [
    "CONTINUAL_VARIANTS",
    "Rows",
    "ContinualData",
    "split_periods",
    "build_rows",
    "known_items",
    "exemplar_counts",
    "herding",
    "select_exemplars",
    "Exemplars",
    "evaluate_rows",
    "prepare_continual",
    "run_continual",
    "results_markdown",
    "DEFAULT_MODEL_CONFIG",
]

log = logging.getLogger(__name__)

#: SASRec of the benchmark: d=64, 2 layers, 2 heads, history of 50 items
DEFAULT_MODEL_CONFIG: dict[str, Any] = {"hidden_size": 64, "inner_size": 256, "n_layers": 2,
                                        "n_heads": 2, "loss_type": "CE"}
METRIC_K = 20


# ============================================================================ rows and periods
@dataclass(frozen=True)
class Rows:
    """Training / test rows of a sequential model: RecBole's layout.

    Attributes:
        seq: ``[R, L]`` item ids, left-aligned, zero-padded (``item_id_list``).
        length: ``[R]`` number of items in each row's history (``item_length``, >= 1).
        target: ``[R]`` the next item (``item_id``).
    """

    seq: Tensor
    length: Tensor
    target: Tensor

    def __len__(self) -> int:
        return int(self.target.numel())

    def take(self, idx: Tensor) -> Rows:
        """The rows ``idx`` (a long index tensor)."""
        return Rows(self.seq[idx], self.length[idx], self.target[idx])

    def cat(self, other: Rows) -> Rows:
        """These rows followed by ``other``'s."""
        return Rows(torch.cat([self.seq, other.seq]), torch.cat([self.length, other.length]),
                    torch.cat([self.target, other.target]))

    def interaction(self, model: nn.Module, device: torch.device | str) -> Any:
        """A RecBole ``Interaction`` with the model's field names."""
        from recbole.data.interaction import Interaction

        return Interaction({model.ITEM_SEQ: self.seq, model.ITEM_SEQ_LEN: self.length,
                            model.POS_ITEM_ID: self.target}).to(device)


def split_periods(timestamps: Tensor, n_periods: int) -> Tensor:
    """``[N]`` block index ``0..n_periods-1`` of each interaction: consecutive blocks of equal
    size (+-1) in timestamp order (ties kept in input order).

    Example:
        >>> split_periods(torch.tensor([5.0, 1.0, 3.0, 2.0]), 2).tolist()
        [1, 0, 1, 0]
    """
    n = int(timestamps.numel())
    if n_periods < 2 or n < n_periods:
        raise ValueError(f"need 2 <= n_periods <= {n} interactions, got n_periods={n_periods}")
    if not bool(torch.isfinite(timestamps).all()):
        raise ValueError("timestamps contain NaN/inf")
    order = torch.sort(timestamps, stable=True).indices
    block = torch.empty(n, dtype=torch.long)
    block[order] = torch.arange(n) * n_periods // n
    return block


def build_rows(users: Tensor, items: Tensor, timestamps: Tensor,
               max_len: int) -> tuple[Rows, Tensor]:
    """Every interaction with an earlier one of the same user as a row: ``(rows, index)``.

    The history of interaction ``k`` of a user is the user's items before it in time (the last
    ``max_len``); ``index[r]`` is the interaction row ``r`` predicts (to look up its block).

    Example:
        >>> rows, idx = build_rows(torch.tensor([1, 1, 1]), torch.tensor([4, 5, 6]),
        ...                        torch.tensor([0.0, 1.0, 2.0]), max_len=2)
        >>> rows.seq.tolist(), rows.length.tolist(), rows.target.tolist(), idx.tolist()
        ([[4, 0], [4, 5]], [1, 2], [5, 6], [1, 2])
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    u, it, ts = (np.asarray(x.cpu()) for x in (users, items, timestamps))
    order = np.lexsort((np.arange(len(u)), ts, u))  # by user, then time, then input order
    seqs, lengths, targets, index = [], [], [], []
    start = 0
    for k in range(1, len(order) + 1):
        if k < len(order) and u[order[k]] == u[order[start]]:
            continue
        hist = it[order[start:k]]
        for j in range(1, len(hist)):
            prefix = hist[max(0, j - max_len):j]
            row = np.zeros(max_len, dtype=np.int64)
            row[:len(prefix)] = prefix
            seqs.append(row)
            lengths.append(len(prefix))
            targets.append(hist[j])
            index.append(order[start + j])
        start = k
    if not targets:
        raise ValueError("no user has two interactions: no next-item rows")
    rows = Rows(torch.from_numpy(np.stack(seqs)), torch.tensor(lengths, dtype=torch.long),
                torch.tensor(np.asarray(targets), dtype=torch.long))
    return rows, torch.tensor(np.asarray(index), dtype=torch.long)


def known_items(items: Tensor, block: Tensor, n_periods: int, n_items: int) -> Tensor:
    """``[n_periods, n_items]`` bool: row ``t`` marks the items of blocks ``<= t`` (``I_t``;
    the padding item 0 is never known)."""
    first = torch.full((n_items,), n_periods, dtype=torch.long)
    first.scatter_reduce_(0, items.long(), block.long(), reduce="amin")
    known = torch.arange(n_periods).unsqueeze(1) >= first.unsqueeze(0)
    known[:, 0] = False
    return known


# ============================================================================ exemplars
def exemplar_counts(targets: Tensor, n_items: int, budget: int,
                    generator: torch.Generator | None = None) -> Tensor:
    """``[n_items]`` exemplars per item: ``budget`` draws from the items' frequency among
    ``targets`` (a multinomial, as the authors' ``ExemplarGenerator``), capped at the item's
    number of rows.

    Example:
        >>> c = exemplar_counts(torch.tensor([1, 1, 1, 2]), 3, 4, torch.Generator().manual_seed(0))
        >>> int(c[0]), int(c[1]) <= 3, int(c[2]) <= 1
        (0, True, True)
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    freq = torch.bincount(targets.long().cpu(), minlength=n_items).double()
    if budget == 0 or freq.sum() == 0:
        return torch.zeros(n_items, dtype=torch.long)
    draws = torch.multinomial(freq / freq.sum(), budget, replacement=True, generator=generator)
    counts = torch.bincount(draws, minlength=n_items)
    return torch.minimum(counts, freq.long())


def herding(features: Tensor, m: int, eps: float = 1e-12) -> Tensor:
    r"""Greedy mean matching (iCaRL's herding) of ``m`` rows of ``features [n, d]``.

    With ``phi_j = x_j / ||x_j||`` and ``mu = mean_j phi_j``, step ``k = 1..m`` adds the
    unselected row

    .. math:: p_k = \arg\min_j \Big\| \mu - \frac{1}{k}\big(\phi_j + \sum_{l<k} \phi_{p_l}\big)
              \Big\|

    (ties: the lowest index). Returns the ``min(m, n)`` selected indices in selection order.

    Example:
        >>> herding(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), 1).tolist()
        [2]
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [n, d], got shape {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN/inf")
    n = features.shape[0]
    m = min(int(m), n)
    if m <= 0:
        return torch.zeros(0, dtype=torch.long)
    phi = features.double()
    phi = phi / phi.norm(dim=1, keepdim=True).clamp_min(eps)
    mu = phi.mean(0)
    total = torch.zeros_like(mu)
    free = torch.ones(n, dtype=torch.bool)
    chosen = []
    for k in range(1, m + 1):
        dist = ((mu - (total + phi) / k) ** 2).sum(1)
        dist[~free] = math.inf
        j = int(torch.argmin(dist))
        chosen.append(j)
        free[j] = False
        total += phi[j]
    return torch.tensor(chosen, dtype=torch.long)


@dataclass
class Exemplars:
    """The replayed rows and the soft targets of the model that selected them.

    Attributes:
        rows: the exemplar rows.
        logits: ``[|E|, n_items]`` that model's logits of each row (constants).
        known: ``[n_items]`` bool, the items that model knew: the KD runs over them.
    """

    rows: Rows
    logits: Tensor
    known: Tensor

    def __len__(self) -> int:
        return len(self.rows)


@torch.no_grad()
def _representations(model: nn.Module, rows: Rows, device: torch.device,
                     chunk: int = 1024) -> Tensor:
    """``[R, d]`` sequence representations of ``rows`` (eval mode, on the CPU)."""
    was = model.training
    model.eval()
    hs = []
    try:
        for start in range(0, len(rows), chunk):
            part = rows.take(torch.arange(start, min(start + chunk, len(rows))))
            hs.append(sequence_output(model, part.interaction(model, device)).float().cpu())
    finally:
        model.train(was)
    return torch.cat(hs)


def select_exemplars(model: nn.Module, pool: Rows, known: Tensor, budget: int,
                     generator: torch.Generator, device: torch.device | str = "cpu"
                     ) -> Exemplars:
    """ADER's exemplar set from ``pool`` (this period's rows plus the previous exemplars).

    Per target item ``i``: ``m_i`` rows (:func:`exemplar_counts` of ``budget``) selected by
    :func:`herding` on ``model``'s representations of the rows whose target is ``i``; each
    selected row keeps ``model``'s logits as its soft target.
    """
    device = torch.device(device)
    n_items = int(known.numel())
    counts = exemplar_counts(pool.target, n_items, budget, generator)
    hidden = _representations(model, pool, device)
    picked = []
    targets = pool.target.cpu()
    for item in counts.nonzero().squeeze(1).tolist():
        rows = (targets == item).nonzero().squeeze(1)
        picked.append(rows[herding(hidden[rows], int(counts[item]))])
    idx = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        table, bias = item_table(model)
        logits = hidden[idx].to(device) @ table.T.float()
        logits = (logits if bias is None else logits + bias).float().cpu()
    return Exemplars(pool.take(idx), logits, known.clone())


# ============================================================================ train / test
def _logits(model: nn.Module, rows: Rows, device: torch.device) -> Tensor:
    h = sequence_output(model, rows.interaction(model, device))
    table, bias = item_table(model)
    z = h @ table.T
    return z if bias is None else z + bias


@torch.no_grad()
def evaluate_rows(model: nn.Module, rows: Rows, known: Tensor, k: int = METRIC_K,
                  device: torch.device | str = "cpu", chunk: int = 1024) -> dict[str, float]:
    """Recall@k and MRR@k of next-item prediction by full sort over the ``known`` items.

    Rows whose target is not known are dropped (the authors drop test items never trained
    on). ``rank`` = number of known items scored strictly above the target;
    ``Recall@k = mean[rank < k]``, ``MRR@k = mean[(rank < k) / (rank + 1)]``.

    Returns:
        ``{"recall@k", "mrr@k", "n_test"}``.
    """
    device = torch.device(device)
    keep = known[rows.target]
    rows = rows.take(keep.nonzero().squeeze(1))
    if len(rows) == 0:
        return {f"recall@{k}": float("nan"), f"mrr@{k}": float("nan"), "n_test": 0}
    was = model.training
    model.eval()
    hits, rr = 0.0, 0.0
    mask = known.to(device)
    try:
        for start in range(0, len(rows), chunk):
            part = rows.take(torch.arange(start, min(start + chunk, len(rows))))
            z = _logits(model, part, device).masked_fill(~mask, -math.inf)
            target = part.target.to(device)
            rank = (z > z.gather(1, target.unsqueeze(1))).sum(1)
            top = rank < k
            hits += float(top.sum())
            rr += float((top.double() / (rank.double() + 1)).sum())
    finally:
        model.train(was)
    return {f"recall@{k}": hits / len(rows), f"mrr@{k}": rr / len(rows), "n_test": len(rows)}


@dataclass
class _Fit:
    """Hyperparameters of one period's training."""

    epochs: int
    batch_size: int
    learning_rate: float
    device: torch.device


def _train_period(model: nn.Module, rows: Rows, known: Tensor, fit: _Fit,
                  generator: torch.Generator, exemplars: Exemplars | None = None,
                  weight: float = 0.0) -> list[float]:
    """Adam over ``rows`` (CE over the ``known`` items) plus, with exemplars, ``weight`` times
    ADER's KD on ``ceil(|E| / batches)`` exemplars per batch; returns the epochs' mean losses."""
    opt = torch.optim.Adam(model.parameters(), lr=fit.learning_rate)
    mask = known.to(fit.device)
    batches = max(1, math.ceil(len(rows) / fit.batch_size))
    ex_batch = math.ceil(len(exemplars) / batches) if exemplars is not None else 0
    ex_known = exemplars.known.to(fit.device) if exemplars is not None else None
    model.train()
    losses = []
    for _ in range(fit.epochs):
        perm = torch.randperm(len(rows), generator=generator)
        ex_perm = torch.randperm(len(exemplars), generator=generator) if ex_batch else None
        total = 0.0
        for b in range(batches):
            part = rows.take(perm[b * fit.batch_size:(b + 1) * fit.batch_size])
            z = _logits(model, part, fit.device).masked_fill(~mask, -math.inf)
            loss = F.cross_entropy(z, part.target.to(fit.device))
            if ex_perm is not None:
                eidx = ex_perm[b * ex_batch:(b + 1) * ex_batch]
                if eidx.numel():
                    ze = _logits(model, exemplars.rows.take(eidx), fit.device)
                    loss = loss + weight * ader_kd_loss(
                        ze, exemplars.logits[eidx].to(fit.device), ex_known)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / batches)
    return losses


# ============================================================================ variants
@dataclass
class _State:
    """What a variant sees at period ``t``."""

    data: ContinualData
    t: int
    exemplars: Exemplars | None = None


class ContinualVariant:
    """How one variant trains at period ``t``: :meth:`rows` (its training rows) and whether it
    replays ADER's exemplars."""

    name: ClassVar[str] = ""
    replay: ClassVar[bool] = False

    def rows(self, state: _State) -> Rows:  # pragma: no cover - abstract
        raise NotImplementedError


#: name -> continual-learning variant
CONTINUAL_VARIANTS: Registry[type[ContinualVariant]] = Registry("continual-learning variant")


@CONTINUAL_VARIANTS.register("ader")
class ADERVariant(ContinualVariant):
    """ADER: the new block plus exemplars distilled from the previous period's model."""

    replay = True

    def rows(self, state: _State) -> Rows:
        return state.data.block_rows(state.t)


@CONTINUAL_VARIANTS.register("finetune")
class FinetuneVariant(ContinualVariant):
    """Fine-tuning on the new block only (forgets earlier periods)."""

    def rows(self, state: _State) -> Rows:
        return state.data.block_rows(state.t)


@CONTINUAL_VARIANTS.register("retrain")
class RetrainVariant(ContinualVariant):
    """Training on every block so far at each period (the joint baseline)."""

    def rows(self, state: _State) -> Rows:
        return state.data.rows.take((state.data.block <= state.t).nonzero().squeeze(1))


# ============================================================================ the loop
@dataclass
class ContinualData:
    """A dataset cut into periods, with RecBole's config and dataset (for building SASRec).

    Attributes:
        config: RecBole ``Config`` of SASRec on the dataset.
        dataset: RecBole's loaded dataset (``create_dataset``: remapped ids).
        rows: every next-item row (:func:`build_rows`).
        block: ``[R]`` the period of each row (its target's block).
        known: ``[n_periods, n_items]`` items seen in blocks ``<= t``.
    """

    config: Any
    dataset: Any
    rows: Rows
    block: Tensor
    known: Tensor
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_periods(self) -> int:
        return int(self.known.shape[0])

    def block_rows(self, t: int) -> Rows:
        return self.rows.take((self.block == t).nonzero().squeeze(1))


def prepare_continual(dataset: str = "ml-100k", *, n_periods: int = 6, max_len: int = 50,
                      model: str = "SASRec", config_dict: dict[str, Any] | None = None
                      ) -> ContinualData:
    """Load ``dataset`` with RecBole and cut it into ``n_periods`` blocks by timestamp.

    ``n_periods`` >= 5 follows the issue's protocol; any value >= 2 is accepted.

    Raises:
        ValueError: ``n_periods < 2``, a dataset without a timestamp field, or a bad name
            (see :func:`recsys.recbole.runner.build_config`).
    """
    from recbole.data import create_dataset

    from recsys.recbole.datasets import ensure_dataset
    from recsys.recbole.runner import _no_pickle_caches, build_config

    cfg = build_config(model, dataset, config_dict={
        "state": "WARNING", "loss_type": "CE", "train_neg_sample_args": None,
        "normalize_all": False, "MAX_ITEM_LIST_LENGTH": max_len,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, **(config_dict or {})})
    ensure_dataset(cfg["dataset"], cfg["data_path"])
    with _no_pickle_caches(cfg):
        ds = create_dataset(cfg)
    feat = ds.inter_feat
    time_field = cfg["TIME_FIELD"]
    if time_field not in feat.columns:
        raise ValueError(f"dataset {dataset!r} has no {time_field!r} field: periods are cut by "
                         "timestamp (load it with load_col)")
    def column(name: str, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(np.asarray(feat[name]), dtype=dtype)

    users, items = column(ds.uid_field, torch.long), column(ds.iid_field, torch.long)
    times = column(time_field, torch.float64)
    blocks = split_periods(times, n_periods)
    rows, index = build_rows(users, items, times, max_len)
    known = known_items(items, blocks, n_periods, ds.item_num)
    stats = {"dataset": dataset, "interactions": len(items), "rows": len(rows),
             "n_items": int(ds.item_num) - 1, "n_periods": n_periods, "max_len": max_len,
             "block_rows": torch.bincount(blocks[index], minlength=n_periods).tolist(),
             "known_items": known.sum(1).tolist()}
    return ContinualData(cfg, ds, rows, blocks[index], known, stats)


def _period_generator(seed: int, t: int) -> torch.Generator:
    """The generator of period ``t`` (also reseeds torch's global RNG: dropout)."""
    torch.manual_seed(seed * 1000 + t)
    return torch.Generator().manual_seed(seed * 1000 + t)


def run_continual(data: ContinualData, variant: str = "ader", *, epochs: int = 3,
                  seed: int = 0, model_config: dict[str, Any] | None = None,
                  budget: int = 2000, lambda_base: float = 0.8, batch_size: int = 256,
                  learning_rate: float = 1e-3, device: str | None = None,
                  first_period: dict[int, dict[str, Tensor]] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a SASRec continually over ``data``'s periods with ``variant``; test each period's
    model on the next period.

    Args:
        data: :func:`prepare_continual`'s periods.
        variant: a name of :data:`CONTINUAL_VARIANTS` (``ader``, ``finetune``, ``retrain``).
        epochs: epochs per period.
        seed: seeds the model's initialisation, the batches and the exemplar counts.
        model_config: SASRec's hyperparameters (over :data:`DEFAULT_MODEL_CONFIG`).
        budget: ADER's total number of exemplars.
        lambda_base: ADER's base KD weight.
        first_period: optional ``{seed: state_dict}`` cache of the period-0 model (identical
            for every variant): read when present, filled otherwise.
        progress: called with one line per period.

    Returns:
        ``{"variant", "seed", "periods": [{"train_period", "test_period", "recall@20",
        "mrr@20", "n_test", "n_train", "n_exemplars", "lambda", "loss", "seconds"}], ...}``.
    """
    from recbole.utils import init_seed

    from recsys.recbole.zoo import build_recbole_model

    strategy = CONTINUAL_VARIANTS.get(variant)()
    if epochs < 1 or batch_size < 1 or budget < 0 or not learning_rate > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, budget >= 0 and learning_rate > 0,"
                         f" got {epochs}, {batch_size}, {budget}, {learning_rate}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fit = _Fit(epochs, batch_size, learning_rate, dev)
    init_seed(seed, True)
    mcfg = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
    model = build_recbole_model("SASRec", data.config, data.dataset, mcfg).to(dev)
    state = _State(data, 0)
    periods: list[dict[str, Any]] = []
    t_run = time.perf_counter()
    for t in range(data.n_periods - 1):
        t0 = time.perf_counter()
        state.t = t
        gen = _period_generator(seed, t)
        rows = strategy.rows(state)
        known = data.known[t]
        ex = state.exemplars if strategy.replay and t > 0 else None
        weight = 0.0
        if ex is not None and len(ex):
            weight = ader_weight(lambda_base, len(ex), len(rows), int(ex.known.sum()),
                                 int(known.sum()))
        cached = first_period is not None and t == 0 and seed in first_period
        if cached:
            model.load_state_dict(first_period[seed])
            losses: list[float] = []
        else:
            losses = _train_period(model, rows, known, fit, gen, ex, weight)
            if first_period is not None and t == 0:
                first_period[seed] = copy.deepcopy(model.state_dict())
        if strategy.replay:
            pool = rows if state.exemplars is None else rows.cat(state.exemplars.rows)
            state.exemplars = select_exemplars(model, pool, known, budget, gen, dev)
        metrics = evaluate_rows(model, data.block_rows(t + 1), known, device=dev)
        rec = {"train_period": t, "test_period": t + 1, **metrics, "n_train": len(rows),
               "n_exemplars": 0 if ex is None else len(ex), "lambda": weight,
               "loss": losses[-1] if losses else None, "reused_first_period": cached,
               "seconds": time.perf_counter() - t0}
        periods.append(rec)
        if progress is not None:
            progress(f"{variant} seed {seed} period {t}->{t + 1}: recall@20 "
                     f"{rec['recall@20']:.4f} mrr@20 {rec['mrr@20']:.4f} "
                     f"({rec['seconds']:.0f} s)")
    return {"variant": strategy.name or variant, "seed": seed, "epochs": epochs,
            "budget": budget, "lambda_base": lambda_base, "batch_size": batch_size,
            "learning_rate": learning_rate, "model_config": mcfg, "data": data.stats,
            "periods": periods, "seconds": time.perf_counter() - t_run,
            "device": str(dev)}


def results_markdown(runs: list[dict[str, Any]]) -> str:
    """Per-period Recall@20 / MRR@20 (mean +- std over seeds) of each variant, one table."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    n = max((len(r["periods"]) for r in runs), default=0)
    head = "| variant | seeds | " + " | ".join(
        f"P{p + 1} R@20 / MRR@20" for p in range(n)) + " | mean R@20 | mean MRR@20 |"
    lines = [head, "|---" * (n + 4) + "|"]
    for name, rs in by.items():
        cells = []
        for p in range(n):
            rec = np.array([r["periods"][p]["recall@20"] for r in rs if len(r["periods"]) > p])
            mrr = np.array([r["periods"][p]["mrr@20"] for r in rs if len(r["periods"]) > p])
            cells.append(f"{rec.mean():.4f}±{rec.std():.4f} / {mrr.mean():.4f}±{mrr.std():.4f}")
        mean_r = np.mean([[p["recall@20"] for p in r["periods"]] for r in rs])
        mean_m = np.mean([[p["mrr@20"] for p in r["periods"]] for r in rs])
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells)
                     + f" | {mean_r:.4f} | {mean_m:.4f} |")
    return "\n".join(lines) + "\n"
