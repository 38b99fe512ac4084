"""Exact resume: a run killed mid-epoch (SIGKILL, no cleanup) and resumed in a new process ends
with the same weights, bit for bit, as an uninterrupted run.

The run owns several RNGs besides torch's global one: the DataLoader's own ``generator=``
(shuffle order), a loss's ``seed=`` generator (G-CRD's node sample), NumPy and Python ``random``
(augmentation in the collate function), and dropout (global torch RNG). ``fit`` must restore
all of them together with the weights and the optimizer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, N, BATCH = 4, 40, 8  # 5 batches per epoch
#: collate calls: 1 for the Distiller's setup batch, then 5 per epoch; call 14 is the 3rd batch
#: of epoch 3.
KILL_AT = 1 + 2 * (N // BATCH) + 3


def _mlp(width: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(width, 3))


def train(case: str, out: str, kill_at: int = 0) -> None:
    """One run of ``fit(out_dir=out, resume=True)``; SIGKILLs itself at collate call ``kill_at``."""
    from graphkd.distill import Distiller, Match
    from graphkd.train import fit

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, 5, generator=g)
    ds = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    calls = [0]

    def collate(items):  # augmentation with NumPy and Python RNGs; the kill switch
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        xb = torch.stack([a for a, _ in items])
        noise = torch.from_numpy(np.random.normal(0, 0.1, xb.shape).astype(np.float32))  # noqa: NPY002
        return xb + noise * random.random(), torch.stack([b for _, b in items])

    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(7))
    torch.manual_seed(0)
    teacher, student = _mlp(16).eval(), _mlp(8, dropout=0.3)
    matches = []
    if case == "gcrd":  # max_samples < batch: the loss's own generator draws every step
        matches = [Match("3", "3", "gcrd", params={"proj_dim": 4, "seed": 0, "max_samples": 5})]
    d = Distiller(teacher, student, matches, logits="kd", logits_weight=0.5,
                  task_loss=nn.CrossEntropyLoss())
    fit(d, loader, epochs=EPOCHS, lr=0.01, out_dir=out, resume=True, progress=False, seed=0,
        restore_best=False)
    torch.save(d.state_dict(), Path(out) / "final.pt")


def main(argv: list[str]) -> None:
    train(argv[0], argv[1], int(argv[2]) if len(argv) > 2 else 0)


def _run(case: str, out: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    code = "import sys; from tests.reliability.test_resume import main; main(sys.argv[1:])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, case, str(out), str(kill_at)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["kd", "gcrd"])
def test_killed_mid_epoch_and_resumed_equals_an_uninterrupted_run(case, tmp_path):
    train(case, str(tmp_path / "full"))  # uninterrupted, in this process
    killed = _run(case, tmp_path / "killed", KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "killed" / "final.pt").exists()
    ck = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert ck["epoch"] == 2  # the kill came in the middle of epoch 3
    resumed = _run(case, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    diff = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a
            if not torch.equal(a[k], b[k])}
    assert not diff, f"resumed weights differ from the uninterrupted run: {diff}"
    lines = (tmp_path / "killed" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in lines[1:]] == ["1", "2", "3", "4"]


def test_checkpoint_holds_every_rng_the_run_owns(tmp_path):
    """Loader generators however they are attached, and modules' generators, by name."""
    from torch.utils.data import BatchSampler, RandomSampler

    from graphkd.distill import Distiller, Match
    from graphkd.train import fit

    x = torch.randn(N, 5)
    ds = TensorDataset(x, (x[:, 0] > 0).long())
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(1))
    train = DataLoader(ds, batch_sampler=BatchSampler(sampler, BATCH, drop_last=False))
    val = DataLoader(ds, batch_size=16, generator=torch.Generator().manual_seed(2))
    d = Distiller(_mlp(16).eval(), _mlp(8), [Match("3", "3", "gsp", params={"seed": 0})],
                  task_loss=nn.CrossEntropyLoss())
    fit(d, train, val, epochs=1, out_dir=tmp_path, progress=False)
    st = torch.load(tmp_path / "last.pt", weights_only=True)["rng_states"]
    assert set(st["generators"]) == {"train_loader.batch_sampler.sampler.generator",
                                     "val_loader.generator", "match_losses.0.generator"}
    assert torch.equal(st["generators"]["match_losses.0.generator"],
                       d.match_losses[0].generator.get_state())
    assert st["numpy"]["keys"].shape == (624,) and st["python"]["state"].shape == (625,)
    # resuming puts every state back (here: after the generators moved on)
    sampler.generator.manual_seed(99)
    d.match_losses[0].generator.manual_seed(99)
    fit(d, train, val, epochs=1, out_dir=tmp_path, resume=True, progress=False)  # nothing left
    assert torch.equal(sampler.generator.get_state(),
                       st["generators"]["train_loader.batch_sampler.sampler.generator"])
    assert torch.equal(d.match_losses[0].generator.get_state(),
                       st["generators"]["match_losses.0.generator"])


def test_log_csv_never_repeats_an_epoch_after_a_resume(tmp_path):
    """Killed after log.csv got epoch 3 but before last.pt did: the replayed epoch 3 is logged
    once (the log is rewritten from the checkpoint's history)."""
    from graphkd.train import fit

    x = torch.randn(N, 5)
    ds = TensorDataset(x, (x[:, 0] > 0).long())

    def run(epochs, resume=False):
        torch.manual_seed(0)
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        fit(_mlp(8), loader, epochs=epochs, out_dir=tmp_path, resume=resume, progress=False)

    run(2)
    log = tmp_path / "log.csv"
    log.write_text(log.read_text() + "3,0.5,0.5,0.01\n")
    run(4, resume=True)
    lines = log.read_text().splitlines()
    assert lines[0] == "epoch,loss,task,time_s"
    assert [r.split(",")[0] for r in lines[1:]] == ["1", "2", "3", "4"]
