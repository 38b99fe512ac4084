"""The resumable runner of ``benchmarks/recbole_autoencoder_kg.py``: run files, skipping, the
paired differences of its report (no training)."""

from __future__ import annotations

import argparse
import json

import pytest

bench = pytest.importorskip("benchmarks.recbole_autoencoder_kg")


def _args(tmp_path) -> argparse.Namespace:
    return argparse.Namespace(epochs=300, results_dir=str(tmp_path), run_dir=str(tmp_path / "r"))


def _write(args, suite, method, seed, ndcg):
    folder = bench.runs_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    fp = bench.fingerprint(suite, method, args)
    entry = {"kind": "student", "suite": suite, "method": method, "seed": seed,
             "fingerprint": fp, "test_result": {"ndcg@10": ndcg, "recall@10": ndcg / 2},
             "best_epoch": 5, "learning_rate": 0.001, "distill_weight": 1.0,
             "wall_seconds": 10.0}
    name = f"{suite}-{method}-s{seed}-{fp}.json"
    (folder / name).write_text(json.dumps(entry))
    return name


def test_fingerprints_differ_by_method_suite_and_budget(tmp_path):
    args = _args(tmp_path)
    fps = {bench.fingerprint(s, m, args) for s in bench.SUITES for m in bench.SUITES[s].rows}
    assert len(fps) == sum(len(s.rows) for s in bench.SUITES.values())
    other = argparse.Namespace(**{**vars(args), "epochs": 10})
    assert bench.fingerprint("kg", "adkd", other) != bench.fingerprint("kg", "adkd", args)


def test_finished_run_is_skipped_and_deltas_are_paired(tmp_path):
    args = _args(tmp_path)
    _write(args, "kg", "none", 0, 0.20)
    _write(args, "kg", "none", 1, 0.30)
    _write(args, "kg", "adkd", 0, 0.25)
    _write(args, "kg", "adkd", 1, 0.28)
    _write(args, "kg", "rrd", 2, 0.5)  # no student-alone run of seed 2: no paired delta
    # another protocol's file is ignored
    stale = dict(json.loads((bench.runs_dir(args) / _write(args, "kg", "rd", 0, 0.9))
                            .read_text()), fingerprint="old")
    (bench.runs_dir(args) / "kg-rd-s0-old.json").write_text(json.dumps(stale))
    assert bench.student_run("kg", "adkd", 0, None, args) == "done"  # nothing trained
    rows = bench.summarize(args)["kg"]["rows"]
    assert rows["adkd"]["delta_ndcg@10"] == pytest.approx([0.05, -0.02])
    assert rows["rrd"]["delta_ndcg@10"] == [] and rows["rd"]["ndcg@10"] == [0.9]
    text = bench.render(args)
    assert "+0.0150 ± 0.0495" in text and (tmp_path / "recbole_autoencoder_kg.json").is_file()
