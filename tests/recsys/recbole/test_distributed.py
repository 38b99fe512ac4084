"""RecBole's multi-process mode for the plugin (2 gloo processes on CPU).

* the student trains under DDP in ``nproc`` processes and the replicas end bit-identical
  (student *and* the method's trainable parts);
* the teacher's soft labels are computed once: each rank scores a disjoint user range into one
  memory-mapped extraction, which equals the single-process top-K;
* validation and test metrics equal a single process evaluating the saved best weights
  (RecBole's own reduction does not: it repeats padded users and weights ranks by batch count).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from graphkd import distributed as gd
from recsys.softlabels import load_topk_mmap, rank_user_range

from .conftest import distill_setup, write_slice

#: 41 users: odd, so RecBole's DistributedSampler repeats a user on rank 1 during evaluation
ODD = "odd41"


@pytest.fixture(scope="module")
def odd_setup(base_config, tmp_path_factory):
    """(data root with ``odd41``, config, teacher state file trained on it)."""
    from recsys.recbole import ensure_teacher

    root = tmp_path_factory.mktemp("odd_data")
    write_slice(root, ODD, {str(u) for u in range(1, 42)})
    config = {**base_config, "data_path": str(root)}
    path, _ = ensure_teacher("BPR", ODD, teacher_config={"embedding_size": 16},
                             config_dict=config, run_dir=tmp_path_factory.mktemp("odd_run"))
    return root, config, path


def _evaluate_checkpoint(checkpoint: str, config: dict, tmp: Path, plain: bool = False):
    """(valid, test) metrics of a distillation checkpoint's student, in this one process."""
    from recsys.recbole import build_config, load_student, prepare_data
    from recsys.recbole.trainer import SafeTrainer
    from recsys.recbole.zoo import build_recbole_model

    cfg = build_config("BPR", ODD, config_dict={
        **config, "embedding_size": 8, "checkpoint_dir": str(tmp / "eval")})
    train, valid, test = prepare_data(cfg)
    if plain:  # a student trained alone: a plain RecBole-model checkpoint
        trainer = SafeTrainer(cfg, build_recbole_model("BPR", cfg, train.dataset,
                                                       {"embedding_size": 8}))
        trainer.load_best(checkpoint)
    else:
        trainer = SafeTrainer(cfg, load_student(checkpoint, cfg, train.dataset))
    return (dict(trainer.evaluate(valid, load_best_model=False)),
            dict(trainer.evaluate(test, load_best_model=False)))


@pytest.mark.parametrize("method,params,soft_labels", [
    ("rrd", {"k": 5, "l": 5, "m": 20}, True),
    ("de", {}, False),  # trainable experts (synchronised with the student), no soft labels
    ("none", {}, False),  # the student alone (RecBole's own trainer path)
])
def test_two_processes(method, params, soft_labels, odd_setup, tmp_path):
    from recsys.recbole import run_distillation

    root, config, teacher_file = odd_setup
    soft = tmp_path / "softlabels"
    res = run_distillation(
        student="BPR", method=method, dataset=ODD, teacher_checkpoint=teacher_file,
        student_config={"embedding_size": 8}, run_dir=tmp_path, nproc=2,
        config_dict={**config, "epochs": 3, "softlabel_cache_dir": str(soft),
                     "checkpoint_dir": str(tmp_path / "ck"), "distill_params": params})
    assert res["world_size"] == 2 and res["replicas_identical"] is True
    assert res["epochs_run"] == 3 and res["method"] == method

    valid, test = _evaluate_checkpoint(res["checkpoint"], config, tmp_path,
                                       plain=method == "none")
    assert res["test_result"] == test  # exact (RecBole rounds to 4 decimals)
    assert res["best_valid_result"] == valid

    dirs = list(soft.glob("topk-mmap-*"))
    if not soft_labels:
        assert dirs == []
        return
    assert len(dirs) == 1
    top = load_topk_mmap(dirs[0])
    markers = sorted(json.loads(p.read_text())["start"] for p in dirs[0].glob("done-*.json"))
    n = top.num_users
    assert markers == [rank_user_range(n, r, 2)[0] for r in range(2)]  # one range per rank

    # the same soft labels as one process computes in memory
    from recsys.recbole import build_config, distill_model_class, prepare_data

    cfg = build_config(distill_model_class("BPR"), ODD, method=method, config_dict={
        **config, "student": "BPR", "student_config": {"embedding_size": 8},
        "teacher_checkpoint": str(teacher_file), "distill_params": params})
    model = distill_model_class("BPR")(cfg, prepare_data(cfg)[0].dataset)
    model.prepare()
    ref = model.ctx.soft_labels
    assert torch.equal(top.indices, ref.indices) and torch.equal(top.users, ref.users)
    assert torch.equal(top.scores, ref.scores.float())


def test_softlabel_mmap_one_process_equals_memory_and_is_reused(base_config, teacher_file,
                                                               tmp_path):
    params = {"k": 5, "l": 5, "m": 20}
    *_, mem = distill_setup("rrd", base_config, teacher_file, tmp_path / "a",
                            distill_params=params, softlabel_cache_dir=None)
    mem.model.prepare()
    *_, mm = distill_setup("rrd", base_config, teacher_file, tmp_path / "b",
                           distill_params=params, softlabel_mmap=True,
                           softlabel_cache_dir=str(tmp_path / "soft"))
    mm.model.prepare()
    a, b = mem.model.ctx.soft_labels, mm.model.ctx.soft_labels
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
    (folder,) = list((tmp_path / "soft").glob("topk-mmap-*"))
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    *_, again = distill_setup("rrd", base_config, teacher_file, tmp_path / "c",
                              distill_params=params, softlabel_mmap=True,
                              softlabel_cache_dir=str(tmp_path / "soft"))
    again.model.prepare()  # mapped, not recomputed: no file is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp
    assert torch.equal(again.model.ctx.soft_labels.indices, a.indices)


# --------------------------------------------------------------------------- gather_rows
def _gather_check(out: str) -> None:
    from torch.utils.data.distributed import DistributedSampler

    from recsys.recbole.distributed import gather_rows

    rank = torch.distributed.get_rank()
    total = 7  # odd: the sampler repeats index 0 on rank 1
    idx = torch.as_tensor(list(DistributedSampler(list(range(total)), shuffle=False)))
    rows = {"rec.topk": torch.stack([idx * 10, idx * 10 + 1], 1),
            "rec.meanrank": idx.double().unsqueeze(1) / 2}
    merged = gather_rows(rows, idx, total)
    if rank == 0:
        Path(out).write_text(json.dumps({k: v.tolist() for k, v in merged.items()}))
    with pytest.raises(RuntimeError, match="no rank evaluated"):
        gather_rows(rows, idx, total + 1)


def test_gather_rows_puts_every_rank_row_in_dataset_order(tmp_path):
    os.environ.pop("WORLD_SIZE", None)
    out = tmp_path / "merged.json"
    gd.launch(_gather_check, 2, str(out), backend="gloo")
    merged = json.loads(out.read_text())
    assert merged["rec.topk"] == [[10 * i, 10 * i + 1] for i in range(7)]
    assert merged["rec.meanrank"] == [[i / 2] for i in range(7)]


def test_multi_process_arguments_are_checked_before_spawning():
    from recsys.recbole.runner import _spawn

    kwargs = {"config_dict": {}}
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        _spawn(print, (), kwargs, nproc=0, world_size=-1, ip="localhost", port=None,
               group_offset=0)
    with pytest.raises(ValueError, match="smaller than group_offset"):
        _spawn(print, (), kwargs, nproc=2, world_size=3, ip="localhost", port=1,
               group_offset=2)
    with pytest.raises(ValueError, match="same ip and port"):
        _spawn(print, (), kwargs, nproc=2, world_size=4, ip="10.0.0.1", port=None,
               group_offset=0)


def test_an_external_launcher_is_refused_with_the_fix(monkeypatch):
    from recsys.recbole import run_distillation

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="nproc=N"):
        run_distillation(method="rd", dataset="tiny")
