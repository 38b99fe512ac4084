"""Models by name, the task loss, optimizer/schedule and ``train_on`` (``graphkd.train.fit``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphkd.config import ConfigError, ModelConfig, TrainConfig, from_dict
from graphkd.metrics import get_metric
from graphkd.models import DGCNN
from graphkd.pipeline import (
    TaskLoss,
    build_optimizer,
    build_scheduler,
    model_from_config,
    register_model,
    train_on,
)
from graphkd.pipeline import training as ptraining
from tests.graphkd.pipeline._toy import PoolMLP, toy_data


def test_model_from_config_registry_first_then_presets():
    data = toy_data()
    m = model_from_config(ModelConfig("Pool-MLP", {"hidden": 5}), data)
    assert isinstance(m, PoolMLP) and m.lin1.out_features == 5
    with pytest.raises(ValueError, match="a model named 'pool_mlp' is already registered"):
        register_model("pool_mlp", nn.Linear)
    clouds = ModelConfig("DGCNN-Student", {})
    data.model_kwargs = {"in_channels": 2}
    assert isinstance(model_from_config(clouds, data), DGCNN)
    with pytest.raises(ConfigError, match=r"model 'resnet' .*valid presets: .*dgcnn_teacher"):
        model_from_config(ModelConfig("resnet"), data)
    with pytest.raises(ConfigError, match="model 'gcn' with .*'nope'"):
        model_from_config(ModelConfig("gcn", {"nope": 1}), data)


def test_task_loss_skips_nan_labels():
    sb = torch.tensor([[0.0], [1.0], [1.0], [5.0], [9.0]])
    yb = torch.tensor([[0.0], [0.0], [1.0], [1.0], [float("nan")]])
    ref = nn.functional.binary_cross_entropy_with_logits(sb[:4, 0], yb[:4, 0])
    assert float(TaskLoss()(sb, yb)) == pytest.approx(float(ref))
    two = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    y2 = torch.tensor([[0.0], [float("nan")], [1.0]])
    ref = nn.functional.cross_entropy(two[[0, 2]], torch.tensor([0, 1]))
    assert float(TaskLoss()(two, y2)) == pytest.approx(float(ref))


def test_optimizer_and_schedule_from_the_config():
    cfg = from_dict(TrainConfig, {"epochs": 4, "optimizer": {
        "name": "sgd", "lr": 0.5, "momentum": 0.8, "weight_decay": 0.1, "scheduler": "step",
        "step_size": 2}})
    layer = nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    opt = build_optimizer(layer.parameters(), cfg)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups[0]["params"]) == 1
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["weight_decay"] == 0.1
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.5, 0.5, 0.25, 0.25]
    cfg.optimizer.scheduler = "none"
    assert build_scheduler(opt, cfg) is None


def test_train_on_is_graphkd_train_fit_with_the_tables_protocol(monkeypatch):
    """One loop: train_on calls graphkd.train.fit (test loader, schedule, clipping, the
    config's metric) and reads the record from its history."""
    calls = []
    real = ptraining.fit
    monkeypatch.setattr(ptraining, "fit", lambda *a, **k: calls.append(k) or real(*a, **k))
    cfg = from_dict(TrainConfig, {"epochs": 3, "batch_size": 16, "eval_batch_size": 32,
                                  "grad_clip": 5.0,
                                  "optimizer": {"lr": 0.01, "scheduler": "cosine"}})
    torch.manual_seed(0)
    model = PoolMLP(3, 2, 8)
    hist = train_on(model, toy_data(), cfg, metric=get_metric("roc_auc"),
                    device=torch.device("cpu"), seed=0)
    (kw,) = calls
    assert kw["test_loader"] is not None and kw["grad_clip"] == 5.0 and kw["epochs"] == 3
    assert kw["metric"].name == "roc_auc" and isinstance(kw["loss_fn"], TaskLoss)
    assert not kw["restore_best"] and kw["distributed"] is False
    assert len(hist["val"]) == len(hist["test"]) == len(hist["epoch_time"]) == 3
    best = max(range(3), key=lambda i: (hist["val"][i], -i))
    assert hist["best_epoch"] == best and hist["test_at_best"] == hist["test"][best]
    assert hist["best_val"] == hist["val"][best]
    assert all(set(h) == {"task"} for h in hist["losses"])
    assert min(hist["test"]) > 0.8  # the toy task is separable
