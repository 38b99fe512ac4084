"""Shared test helper: a checkpoint written by RecBole 1.2.1's own Trainer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def fit_bpr_checkpoint(cfg: Any, out: Path) -> tuple[Path, Any, Any]:
    """Train RecBole's BPR with its own ``Trainer`` on ``cfg`` and save the best checkpoint.

    Returns ``(checkpoint path, training dataset, trained model)``. RecBole's Trainer writes
    ``./log_tensorboard``, so the run happens with ``out`` as the working directory.
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    init_seed(0, True)
    train, valid, _ = data_preparation(cfg, create_dataset(cfg))
    model = BPR(cfg, train.dataset)
    cwd = os.getcwd()
    os.chdir(out)
    try:
        trainer = Trainer(cfg, model)
        trainer.fit(train, valid, saved=True, verbose=False)
    finally:
        os.chdir(cwd)
    return Path(trainer.saved_model_file), train.dataset, model
