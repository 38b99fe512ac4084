"""The ADER benchmark runner's bookkeeping: per-period means over seeds, the period-0 cache."""

from __future__ import annotations

import pytest
import torch

from benchmarks import recbole_ader as bench


def _run(variant: str, seed: int, recalls: list[float]) -> dict:
    return {"variant": variant, "seed": seed, "seconds": 10.0 * (seed + 1), "periods": [
        {"test_period": p + 1, "recall@20": r, "mrr@20": r / 4, "seconds": 1.0,
         "lambda": 0.1 * p, "n_exemplars": 5 * p, "n_train": 100} for p, r in enumerate(recalls)]}


def test_summarize_means_and_stds_per_period():
    runs = [_run("ader", 0, [0.1, 0.3]), _run("ader", 1, [0.3, 0.5]), _run("finetune", 0, [0.2])]
    s = bench.summarize(runs)
    assert list(s) == ["finetune", "ader"]  # the runner's order
    p = s["ader"]["periods"]
    assert [x["recall@20"] for x in p] == pytest.approx([0.2, 0.4])
    assert [x["recall@20_std"] for x in p] == pytest.approx([0.1, 0.1])
    assert p[1]["mrr@20"] == pytest.approx(0.1) and s["ader"]["seeds"] == [0, 1]
    assert s["ader"]["seconds"] == pytest.approx(15.0)


def test_first_period_cache_round_trips_through_weights_only_files(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CACHE", tmp_path)
    args = bench.build_parser().parse_args(["--seeds", "0"])
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    cache = bench._FirstPeriodFiles(args)
    assert 0 not in cache
    cache[0] = state
    assert bench.first_path(args, 0).is_file()
    fresh = bench._FirstPeriodFiles(args)  # a resumed process finds the file
    assert 0 in fresh and torch.equal(fresh[0]["w"], state["w"])
    other = bench.build_parser().parse_args(["--seeds", "0", "--epochs", "3"])
    assert bench.first_path(other, 0) != bench.first_path(args, 0)  # protocol in the name
