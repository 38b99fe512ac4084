"""A tiny synthetic graph task for the pipeline tests (no dependency on real datasets).

Importing this module registers the dataset ``toy`` and the model ``pool_mlp``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import global_mean_pool

from graphkd.config import load_config
from graphkd.pipeline import DataBundle, register_dataset, register_model


class PoolMLP(nn.Module):
    """Per-node MLP, mean pool, linear head; named layers ``lin1`` / ``lin2`` for hooks."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 16) -> None:
        super().__init__()
        self.lin1 = nn.Linear(num_features, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, data) -> torch.Tensor:
        h = torch.relu(self.lin1(data.x))
        h = torch.relu(self.lin2(h))
        return self.head(global_mean_pool(h, data.batch))


def toy_graphs(n: int, seed: int) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = int(torch.randint(0, 2, (1,), generator=g))
        x = torch.randn(6, 3, generator=g) + (1.5 if y else -1.5) * torch.tensor([1.0, 0, 0])
        out.append(Data(x=x, y=torch.tensor([y])))
    return out


def toy_data(cfg=None) -> DataBundle:
    return DataBundle(toy_graphs(64, 0), toy_graphs(32, 1), toy_graphs(32, 2), num_features=3,
                      num_classes=2, info={"source": "toy"})


register_dataset("toy", toy_data)
register_model("pool_mlp", PoolMLP)

#: trainable parameters of the toy student (PoolMLP, hidden 8, 3 features, 2 classes).
STUDENT_PARAMS = 3 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2


def toy_config(tmp_path, **methods):
    return load_config({
        "name": "toy",
        "data": {"name": "toy"},
        "teacher": {"model": {"preset": "pool_mlp", "kwargs": {"hidden": 32}},
                    "train": {"epochs": 4, "batch_size": 16,
                              "optimizer": {"lr": 0.01}}},
        "student": {"model": {"preset": "pool_mlp", "kwargs": {"hidden": 8}},
                    "train": {"epochs": 3, "batch_size": 16,
                              "optimizer": {"lr": 0.01}}},
        "methods": methods or {"student": {}},
        "seeds": [0, 1],
        "output_dir": str(tmp_path),
    }, check_registry=False)
