"""Data bundles, the dataset registry and the seeded loaders of the pipeline."""

from __future__ import annotations

import pytest
import torch

from graphkd.config import ConfigError, DataConfig
from graphkd.pipeline import DATASETS, load_data, make_loader, register_dataset, train_loader
from graphkd.pipeline import data as pdata
from tests.graphkd.pipeline._toy import toy_data, toy_graphs


def test_registry_resolves_names_like_every_graphkd_registry():
    assert {"digits", "modelnet40", "chembl", "ogbg-molhiv", "toy"} <= set(DATASETS)
    assert DATASETS.get("OGBG_molhiv") is pdata.load_ogbg_molhiv
    register_dataset("toy", toy_data)  # the same loader again: harmless
    with pytest.raises(ValueError, match="a dataset named 'Toy' is already registered"):
        register_dataset("Toy", lambda cfg: None)
    bundle = load_data(DataConfig(name="TOY"))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (64, 32, 32)
    with pytest.raises(ConfigError, match=r"data.name: unknown dataset 'cifar'; valid names: "
                                          r"\[.*'digits'.*'toy'"):
        load_data(DataConfig(name="cifar"))


def test_empty_split_is_an_error_naming_the_fix():
    register_dataset("toy_empty_val", lambda cfg: pdata.DataBundle(
        toy_graphs(4, 0), [], toy_graphs(2, 1), num_features=3, num_classes=2))
    with pytest.raises(ConfigError, match="the val split is empty; check data.kwargs"):
        load_data(DataConfig(name="toy_empty_val"))


def test_loaders_own_their_generators():
    graphs = toy_graphs(10, 0)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [b.y.tolist() for b in train_loader(graphs, 4, seed=3)]
    b = [b.y.tolist() for b in train_loader(graphs, 4, seed=3)]
    assert a == b and torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert [len(x) for x in a] == [4, 4, 2]
    ordered = [d.y.item() for batch in make_loader(graphs, 3, False, 0) for d in
               batch.to_data_list()]
    assert ordered == [d.y.item() for d in graphs]


def test_a_final_training_batch_of_one_is_dropped_once_with_a_warning(monkeypatch):
    monkeypatch.setattr(pdata, "_TAIL_WARNED", set())
    graphs = toy_graphs(9, 0)
    with pytest.warns(UserWarning, match="final batch of 1 sample; it is dropped"):
        sizes = [b.num_graphs for b in train_loader(graphs, 4, seed=0)]
    assert sizes == [4, 4]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per (samples, batch size)
        train_loader(graphs, 4, seed=1)
    assert [b.num_graphs for b in make_loader(graphs, 4, False, 0)] == [4, 4, 1]
