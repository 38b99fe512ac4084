"""The teacher: trained once with its best-validation weights, cached, retrained when corrupt."""

from __future__ import annotations

import warnings

import torch

from graphkd.config import config_hash, load_config, to_dict
from graphkd.pipeline import teacher_path, train_teacher
from tests.graphkd.pipeline._toy import toy_config


def test_teacher_is_cached(tmp_path):
    cfg = toy_config(tmp_path)
    t1, rec1 = train_teacher(cfg)
    assert not rec1["cached"] and rec1["test_at_best"] > 0.8
    assert not t1.training
    assert rec1["test_at_best"] == rec1["test"][rec1["best_epoch"]]
    t2, rec2 = train_teacher(cfg)
    assert rec2["cached"] and rec2["test_at_best"] == rec1["test_at_best"]
    for a, b in zip(t1.state_dict().values(), t2.state_dict().values()):
        assert torch.equal(a, b)
    # a different teacher config gets a different cache file
    cfg.teacher.train.epochs = 5
    assert teacher_path(cfg) != rec1["path"]


def test_corrupt_teacher_cache_is_retrained(tmp_path):
    cfg = toy_config(tmp_path)
    path = teacher_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    _, rec = train_teacher(cfg)
    assert not rec["cached"]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["record"]["best_epoch"] == rec["best_epoch"]


def test_cache_key_survives_the_metric_rename(tmp_path):
    """`rocauc` -> `roc_auc`: the same teacher file (no retraining of cached teachers)."""
    raw = to_dict(toy_config(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = load_config(dict(raw, metric="rocauc"), check_registry=False)
    new = load_config(dict(raw, metric="roc_auc"), check_registry=False)
    assert old.metric == new.metric == "roc_auc"
    assert teacher_path(old) == teacher_path(new) != teacher_path(toy_config(tmp_path))
    key = config_hash({"data": raw["data"], "teacher": raw["teacher"],
                       "seed": raw["teacher_seed"], "metric": "rocauc"})  # the former key
    assert teacher_path(new).name == f"teacher-{key}.pt"


def test_teacher_select_last_keeps_the_final_epoch(tmp_path):
    """``teacher.train.select: last``: the record's epoch is the final one, the weights are the
    final epoch's (its test value reproduces), and the cache key differs from ``best``'s."""
    from graphkd.metrics import get_metric
    from graphkd.pipeline import load_data, make_loader
    from graphkd.train import evaluate

    cfg = toy_config(tmp_path)
    best_path = teacher_path(cfg)
    cfg.teacher.train.select = "last"
    assert teacher_path(cfg) != best_path
    model, rec = train_teacher(cfg)
    n = cfg.teacher.train.epochs
    assert rec["best_epoch"] == n - 1 and len(rec["test"]) == n
    assert rec["test_at_best"] == rec["test"][-1] and rec["best_val"] == rec["val"][-1]
    data = load_data(cfg.data)
    metric = get_metric(cfg.metric)
    test = evaluate(model, make_loader(data.test, 64, False, 0, 0), metric=metric)[metric.name]
    assert test == rec["test"][-1]
    # the toy validation accuracy saturates at once: best-validation selection keeps epoch 0
    # (ties keep the first), the situation select="last" is for
    _, rec_best = train_teacher(toy_config(tmp_path))
    assert rec_best["best_epoch"] < n - 1 and rec_best["val"][0] == max(rec_best["val"])
