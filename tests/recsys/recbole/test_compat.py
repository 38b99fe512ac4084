"""The RecBole 1.2.1 workarounds of recsys.recbole.compat, each checked against the failure it
works around."""

from __future__ import annotations

import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.recbole import compat
from recsys.recbole.compat import (
    NullWriter,
    load_recbole_checkpoint,
    make_config,
    patch_scipy_dok_update,
    tensorboard_redirect,
)


def _adjacency(use_patch: bool) -> np.ndarray:
    a = sp.dok_matrix((3, 4), dtype=np.float32)
    data = {(0, 1): 1.0, (2, 3): 2.0, (1, 0): 0.5}
    if use_patch:
        compat._dok_update(a, data)
    else:
        a._update(data)
    return a.toarray()


def test_dok_update_matches_scipy_original():
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[0, 1], expected[2, 3], expected[1, 0] = 1.0, 2.0, 0.5
    np.testing.assert_array_equal(_adjacency(use_patch=True), expected)
    np.testing.assert_array_equal(_adjacency(use_patch=False), expected)


def test_dok_patch_installed_only_where_missing(monkeypatch):
    compat.apply_patches()
    assert patch_scipy_dok_update() is False  # present (scipy < 1.13, or patched at import)
    # simulate scipy >= 1.13, where the method is gone
    for cls in sp.dok_matrix.__mro__:
        if "_update" in vars(cls):
            monkeypatch.delattr(cls, "_update")
    monkeypatch.setattr(sp.dok_matrix, "_update", None, raising=False)  # undo removes ours
    monkeypatch.delattr(sp.dok_matrix, "_update")
    assert not hasattr(sp.dok_matrix, "_update")
    assert patch_scipy_dok_update() is True
    a = sp.dok_matrix((2, 2), dtype=np.float32)
    a._update({(1, 1): 3.0})
    np.testing.assert_array_equal(a.toarray(), [[0, 0], [0, 3]])


def test_make_config_ignores_host_argv(monkeypatch, base_config):
    monkeypatch.setattr(sys, "argv", ["prog", "--embedding_size=999", "--epochs=77"])
    cfg = make_config("BPR", "tiny", config_dict=base_config)
    assert cfg["embedding_size"] == 64  # RecBole's BPR.yaml, not the host's --embedding_size
    assert cfg["epochs"] == base_config["epochs"]
    assert sys.argv == ["prog", "--embedding_size=999", "--epochs=77"]


def test_known_warnings_filtered_and_others_kept():
    compat.apply_patches()
    with warnings.catch_warnings(record=True) as rec:
        warnings.warn_explicit(
            "A value is trying to be set on a copy of a DataFrame or Series through chained "
            "assignment using an inplace method.", FutureWarning, "dataset.py", 648,
            module="recbole.data.dataset.dataset")
        warnings.warn_explicit("`torch.cuda.amp.GradScaler(args...)` is deprecated.",
                               FutureWarning, "trainer.py", 235, module="recbole.trainer.trainer")
        warnings.warn_explicit(
            "using <built-in function len> in Series.agg cannot aggregate and has been "
            "deprecated. Use Series.transform to keep behavior unchanged.", FutureWarning,
            "dataset.py", 1217, module="recbole.data.dataset.dataset")
        warnings.warn_explicit("something else", FutureWarning, "dataset.py", 1,
                               module="recbole.data.dataset.dataset")
    assert [str(w.message) for w in rec] == ["something else"]


@pytest.fixture(scope="module")
def recbole_checkpoint(base_config, tmp_path_factory):
    """A checkpoint written by RecBole's own (unpatched) Trainer, and the trained model."""
    from tests._recbole import fit_bpr_checkpoint

    compat.apply_patches()
    out = tmp_path_factory.mktemp("rb_ckpt")
    cfg = make_config("BPR", "tiny", config_dict={**base_config, "epochs": 1,
                                                  "embedding_size": 8,
                                                  "checkpoint_dir": str(out)})
    path, _, model = fit_bpr_checkpoint(cfg, out)
    return path, model


def test_recbole_checkpoint_refused_by_weights_only_but_loads_safely(recbole_checkpoint):
    path, model = recbole_checkpoint
    with pytest.raises(pickle.UnpicklingError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Detected pickle protocol 4"
        torch.load(path, weights_only=True)  # the upstream problem on torch >= 2.6
    ck = load_recbole_checkpoint(path)
    assert ck["config"]["model"] == "BPR" and ck["config"]["embedding_size"] == 8
    for k, v in model.state_dict().items():
        assert torch.equal(ck["state_dict"][k], v)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_recbole_checkpoint_refuses_foreign_globals(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"config": _Evil(), "state_dict": {}}, path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_recbole_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_recbole_checkpoint(tmp_path / "missing.pth")


def test_tensorboard_redirect_writes_nothing_in_cwd(tmp_path, monkeypatch):
    import recbole.trainer.trainer as rt

    monkeypatch.chdir(tmp_path)
    original = rt.get_tensorboard
    with tensorboard_redirect(None):
        writer = rt.get_tensorboard(None)
        assert isinstance(writer, NullWriter)
        writer.add_scalar("x", 1.0, 0)  # no-op
    assert rt.get_tensorboard is original
    assert list(tmp_path.iterdir()) == []


def test_recbole_checkpoint_as_teacher(recbole_checkpoint, base_config):
    from recsys.recbole import build_config, load_model, prepare_data

    path, model = recbole_checkpoint
    cfg = build_config("BPR", "tiny", config_dict=base_config)
    train, _, _ = prepare_data(cfg)
    loaded, name = load_model(path, cfg, train.dataset)
    assert name == "BPR" and loaded.user_embedding.embedding_dim == 8  # its own config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
