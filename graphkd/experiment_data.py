"""Built-in datasets of the experiment pipeline: name -> train/val/test :class:`DataBundle`.

Registered names (``data.name`` in a config) and their ``data.kwargs``:

* ``digits`` -- scikit-learn's digits as 2-D point clouds (embedded, offline).
  ``num_points`` (64), ``fractions`` ((0.7, 0.15, 0.15), stratified), ``split_seed`` (0),
  ``sample_seed`` (0, seed of the point sampling), ``limit`` (None: all 1,797 clouds;
  an int keeps a stratified subset of that size, for quick tests).
* ``modelnet40`` -- ModelNet40 HDF5 from the data root. ``num_points`` (1024), ``val_fraction``
  (0.1 of the official train split, stratified), ``split_seed``.
* ``chembl`` -- RDKit's shipped ChEMBL series (1,017 molecules, active = pIC50 >= 7), scaffold
  split. ``fractions`` ((0.8, 0.1, 0.1)), ``threshold`` (7.0). Metric: ROC-AUC.
* ``ogbg-molhiv`` -- from the data root with its official scaffold split. Metric: ROC-AUC.

Binary molecule tasks use two logits (cross-entropy), so that logit KD is the usual softmax KD;
ROC-AUC is computed on the log-odds ``z1 - z0``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from graphkd.config import ConfigError, DataConfig
from graphkd.experiment import DataBundle, register_dataset

__all__ = ["load_digits", "load_modelnet40", "load_chembl", "load_ogbg_molhiv"]


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
                      num_features=graphs[0].x.shape[1], num_classes=2, metric="rocauc",
                      info={"source": "RDKit ChEMBL series CHEMBL2321810 (pIC50 >= "
                                      f"{kw['threshold']}), scaffold split"})


def load_ogbg_molhiv(cfg: DataConfig) -> DataBundle:
    """ogbg-molhiv from the data root with the official scaffold split."""
    from graphkd.datasets import load_ogb_split, load_ogbg

    _kwargs(cfg, {})
    graphs = _strip(load_ogbg("ogbg-molhiv", root=cfg.root))
    split = load_ogb_split("ogbg-molhiv", root=cfg.root)
    return DataBundle(_take(graphs, split["train"]), _take(graphs, split["valid"]),
                      _take(graphs, split["test"]), num_features=graphs[0].x.shape[1],
                      num_classes=2, metric="rocauc",
                      info={"source": "ogbg-molhiv (official scaffold split)"})


for _name, _fn in (("digits", load_digits), ("modelnet40", load_modelnet40),
                   ("chembl", load_chembl), ("ogbg-molhiv", load_ogbg_molhiv)):
    register_dataset(_name, _fn)
