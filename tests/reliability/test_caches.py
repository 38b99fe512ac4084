"""Files and caches under concurrency and corruption (issue 11, part 5).

- N processes asking for the same soft-label cache at once: all succeed, all get the same top-K,
  and the teacher is scored once (the score function appends to a log file on every call).
- The memory-mapped store detects overwritten / truncated data files (sizes + blake2b digests
  recorded when written), warns once and rebuilds.
- The cache key covers the score function, not only the teacher's weights.
- Checkpoints and benchmark results are written atomically, also by concurrent writers; a
  benchmark run is held by one worker at a time.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from recsys.softlabels import (
    IncompleteTopKError,
    cached_teacher_topk,
    load_topk_mmap,
    shared_teacher_topk,
    teacher_topk,
    teacher_topk_to_disk,
    topk_fingerprint,
)

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- concurrent processes
WORKER = '''
import json, os, sys, time
import torch
torch.set_num_threads(1)
from recsys import softlabels

kind, cache, calls, out, ready, go = sys.argv[1:]
g = torch.Generator().manual_seed(0)
U, V = torch.randn(40, 6, generator=g), torch.randn(30, 6, generator=g)


def score(u):
    with open(calls, "a") as f:  # one line per call of the teacher
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.3)  # widen the window in which the others arrive
    return U[u] @ V.T


open(ready, "w").close()
while not os.path.exists(go):  # start together
    time.sleep(0.002)
fn = softlabels.cached_teacher_topk if kind == "pt" else softlabels.shared_teacher_topk
top = fn(cache, {"U": U, "V": V}, score, 40, 30, 5, chunk_size=64)
with open(out, "w") as f:
    json.dump({"indices": top.indices.tolist(), "scores": top.scores.tolist()}, f)
'''


def _reference() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    user, item = torch.randn(40, 6, generator=g), torch.randn(30, 6, generator=g)
    ref = teacher_topk(lambda u: user[u] @ item.T, 40, 30, 5)
    return ref.indices, ref.scores


def _run_together(tmp_path: Path, kind: str, n: int) -> tuple[list[dict], list[str]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cache, calls, go = tmp_path / "cache", tmp_path / "calls.log", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = [subprocess.Popen(
        [sys.executable, str(script), kind, str(cache), str(calls), str(tmp_path / f"out{i}"),
         str(tmp_path / f"ready{i}"), str(go)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=180)
        if p.returncode:
            errors.append(err[-2000:])
    assert not errors, errors
    outs = [json.loads((tmp_path / f"out{i}").read_text()) for i in range(n)]
    return outs, calls.read_text().split()


@pytest.mark.parametrize("kind,n", [("pt", 3), ("mmap", 3)])
def test_processes_sharing_a_cache_compute_it_once(tmp_path, kind, n):
    outs, calls = _run_together(tmp_path, kind, n)
    assert len(calls) == 1, f"the teacher was scored {len(calls)} times by {set(calls)}"
    ref_idx, ref_sc = _reference()
    for out in outs:
        assert torch.equal(torch.tensor(out["indices"]), ref_idx)
        assert torch.equal(torch.tensor(out["scores"], dtype=torch.float32), ref_sc)


# --------------------------------------------------------------------------- mmap integrity
NU, NI, K = 30, 25, 5


def _teacher() -> tuple[dict[str, torch.Tensor], list[int], object]:
    g = torch.Generator().manual_seed(1)
    state = {"U": torch.randn(NU, 4, generator=g), "V": torch.randn(NI, 4, generator=g)}
    calls: list[int] = []

    def score(u):
        calls.append(u.numel())
        return state["U"][u] @ state["V"].T

    return state, calls, score


def _shared(tmp_path: Path, state, score) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        top = shared_teacher_topk(tmp_path, state, score, NU, NI, K, shard_users=8)
    return top, [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]


def test_overwritten_indices_are_detected_and_rebuilt(tmp_path):
    state, calls, score = _teacher()
    ref = teacher_topk(score, NU, NI, K)
    calls.clear()
    _shared(tmp_path, state, score)
    (extraction,) = tmp_path.glob("topk-mmap-*")
    # other valid item ids, exactly the right size: only the content digest can tell
    (extraction / "indices.int64").write_bytes(ref.indices.flip(1).numpy().tobytes())
    calls.clear()
    top, warned = _shared(tmp_path, state, score)
    assert len(warned) == 1, warned
    assert "indices.int64" in warned[0] and "blake2b" in warned[0]
    assert sum(calls) == NU  # rebuilt
    assert torch.equal(top.indices, ref.indices) and torch.equal(top.scores, ref.scores)
    calls.clear()
    again, warned = _shared(tmp_path, state, score)  # the rebuilt files verify: reused silently
    assert not calls and not warned and torch.equal(again.indices, ref.indices)


def test_truncated_scores_are_rebuilt_not_a_permanent_error(tmp_path):
    state, calls, score = _teacher()
    ref = teacher_topk(score, NU, NI, K)
    _shared(tmp_path, state, score)
    (extraction,) = tmp_path.glob("topk-mmap-*")
    with open(extraction / "scores.bin", "r+b") as fh:
        fh.truncate(12)
    calls.clear()
    top, warned = _shared(tmp_path, state, score)
    assert len(warned) == 1, warned
    assert "scores.bin" in warned[0] and "bytes" in warned[0]
    assert sum(calls) == NU
    assert torch.equal(top.indices, ref.indices) and torch.equal(top.scores, ref.scores)
    # a rank filling its range of a damaged directory is told it is damaged, not "another
    # extraction"; a full rewrite repairs it
    fp = json.loads((extraction / "layout.json").read_text())["fingerprint"]
    with open(extraction / "scores.bin", "r+b") as fh:
        fh.truncate(12)
    with pytest.raises(ValueError, match="damaged"):
        teacher_topk_to_disk(score, NU, NI, K, extraction, user_range=(0, 10), fingerprint=fp)
    teacher_topk_to_disk(score, NU, NI, K, extraction, fingerprint=fp)
    assert torch.equal(load_topk_mmap(extraction, fp).indices, ref.indices)


def test_load_topk_mmap_names_the_damaged_file_and_rows(tmp_path):
    from recsys.softlabels import CorruptTopKError

    state, calls, score = _teacher()
    for rng in ((0, 10), (10, 20), (20, NU)):  # three "ranks"
        teacher_topk_to_disk(score, NU, NI, K, tmp_path, user_range=rng, shard_users=4)
    ref = load_topk_mmap(tmp_path)
    markers = sorted(tmp_path.glob("done-*.json"))
    recorded = json.loads(markers[1].read_text())["blake2b"]
    assert set(recorded) == {"indices.int64", "scores.bin", "users.int64"}
    layout = json.loads((tmp_path / "layout.json").read_text())
    assert layout["files"] == {"indices.int64": NU * K * 8, "scores.bin": NU * K * 4,
                               "users.int64": NU * 8}
    with open(tmp_path / "scores.bin", "r+b") as fh:  # one score of user 12
        fh.seek((12 * K + 1) * 4)
        fh.write(b"\x00\x00\x80\x7f")  # +inf: same size
    with pytest.raises(CorruptTopKError, match=r"scores\.bin: the bytes of rows \[10, 20\)"):
        load_topk_mmap(tmp_path)
    assert isinstance(CorruptTopKError("x"), IncompleteTopKError)  # callers that rebuild
    unchecked = load_topk_mmap(tmp_path, verify=False)  # sizes only: the caller's choice
    assert torch.equal(unchecked.indices, ref.indices)


# --------------------------------------------------------------------------- cache key
def test_same_weights_other_score_fn_gives_other_topk(tmp_path):
    state, _, _ = _teacher()
    user, item = state["U"], state["V"]

    def dot(u):
        return user[u] @ item.T

    def neg(u):
        return -(user[u] @ item.T)

    ref_dot, ref_neg = teacher_topk(dot, NU, NI, K), teacher_topk(neg, NU, NI, K)
    assert not torch.equal(ref_dot.indices, ref_neg.indices)
    for store in (cached_teacher_topk, shared_teacher_topk):
        a = store(tmp_path / store.__name__, state, dot, NU, NI, K)
        b = store(tmp_path / store.__name__, state, neg, NU, NI, K)  # not the stale `a`
        assert torch.equal(a.indices, ref_dot.indices), store.__name__
        assert torch.equal(b.indices, ref_neg.indices), store.__name__
    users = torch.arange(NU)
    assert (topk_fingerprint(state, k=K, num_items=NI, users=users, score_fn=dot)
            != topk_fingerprint(state, k=K, num_items=NI, users=users, score_fn=neg))


def test_score_key_covers_closures_not_counters(tmp_path):
    state, _, _ = _teacher()
    user, item = state["U"], state["V"]

    def scaled(scale):
        def score(u):
            return scale * (user[u] @ item.T)
        return score

    up = cached_teacher_topk(tmp_path, state, scaled(1.0), NU, NI, K)
    down = cached_teacher_topk(tmp_path, state, scaled(-1.0), NU, NI, K)
    assert torch.equal(up.indices, teacher_topk(scaled(1.0), NU, NI, K).indices)
    assert torch.equal(down.indices, teacher_topk(scaled(-1.0), NU, NI, K).indices)
    # a counter the function rebinds is state, not part of what it computes: still reused
    n = 0

    def counted(u):
        nonlocal n
        n += 1
        return user[u] @ item.T

    cached_teacher_topk(tmp_path / "c", state, counted, NU, NI, K)
    cached_teacher_topk(tmp_path / "c", state, counted, NU, NI, K)
    assert n == 1
    # an explicit score_key replaces the automatic one (the caller vouches for it)
    a = cached_teacher_topk(tmp_path / "k", state, scaled(1.0), NU, NI, K, score_key="mf-dot")
    b = cached_teacher_topk(tmp_path / "k", state, counted, NU, NI, K, score_key="mf-dot")
    assert n == 1 and torch.equal(a.indices, b.indices)


# --------------------------------------------------------------------------- other writers
def test_concurrent_checkpoint_saves_never_collide(tmp_path):
    pytest.importorskip("recbole")
    from recsys.recbole.trainer import SafeCheckpointMixin, load_trainer_checkpoint

    net = torch.nn.Linear(64, 64)
    fake = SimpleNamespace(
        distributed=False, config={"local_rank": 0, "model": "Fake"},
        saved_model_file=str(tmp_path / "ck.pth"), cur_step=3, best_valid_score=0.5,
        model=SimpleNamespace(state_dict=net.state_dict, other_parameter=lambda: None),
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), logger=logging.getLogger("t"))
    errors: list[BaseException] = []

    def save(epoch: int) -> None:
        try:
            for _ in range(15):
                SafeCheckpointMixin._save_checkpoint(fake, epoch, verbose=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(e,)) for e in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert load_trainer_checkpoint(tmp_path / "ck.pth")["epoch"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]  # no temporary file left


def test_benchmark_run_claims_are_exclusive(tmp_path):
    """The RecBole grids write one file per run (atomically) and let one worker at a time hold
    a run: of several threads claiming the same run, exactly one gets it while it is held."""
    from argparse import Namespace

    from benchmarks.recbole_grid import Bench, claim

    args, bench = Namespace(run_dir=str(tmp_path)), Bench("b", "tiny", "tiny")
    barrier = threading.Barrier(4)
    got: list[bool] = []

    def try_claim() -> None:
        with claim(args, bench, "none-lr0.01-s0-abc") as mine:
            got.append(mine)
            barrier.wait()  # every thread tries while the others still hold (or lost) it

    threads = [threading.Thread(target=try_claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [False, False, False, True]
    with claim(args, bench, "none-lr0.01-s0-abc") as mine:  # released afterwards
        assert mine
