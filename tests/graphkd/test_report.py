"""Reports: summary rows, the markdown table, the comparison with plain KD, the plot."""

from __future__ import annotations

import json
import math

import pytest

from graphkd.report import (
    is_graph_method,
    kd_comparison,
    markdown_report,
    results_table,
    summarize,
    write_report,
)


def _fake_results():
    def run(m, seed, test, t):
        return {"method": m, "seed": seed, "test": test, "val": test, "epoch_time": t,
                "best_epoch": 0, "num_params": 10}

    runs = [run("student", 0, 0.80, 1.0), run("student", 1, 0.82, 1.0),
            run("kd", 0, 0.84, 2.0), run("kd", 1, 0.86, 2.0),
            run("lsp", 0, 0.83, 2.4), run("lsp", 1, 0.83, 2.8),
            run("gcrd", 0, 0.90, 2.2), run("gcrd", 1, 0.92, 2.2)]
    return {"name": "fake", "metric": "accuracy", "higher_is_better": True,
            "methods": ["student", "kd", "lsp", "gcrd"], "seeds": [0, 1], "runs": runs,
            "teacher": {"test_at_best": 0.95, "best_val": 0.96, "epoch_time_median": 3.0,
                        "num_params": 100},
            "config": {}, "data": {}}


def test_summarize_numbers():
    rows = {r["method"]: r for r in summarize(_fake_results())}
    assert rows["student"]["test_mean"] == pytest.approx(0.81)
    assert rows["student"]["test_std"] == pytest.approx(math.sqrt(2 * 0.01**2))
    assert rows["kd"]["vs_student"] == pytest.approx(2.0)
    assert rows["lsp"]["vs_kd"] == pytest.approx(1.3)
    assert rows["gcrd"]["vs_kd"] == pytest.approx(1.1)
    assert rows["kd"]["vs_kd"] == pytest.approx(1.0)


def test_report_is_honest_about_kd():
    res = _fake_results()
    table = results_table(res)
    assert "| kd | 85.00 ± 1.41 |" in table
    assert "| teacher | 95.00 |" in table
    assert "| lsp | 83.00 ± 0.00 |" in table and "1.30×" in table
    lines = kd_comparison(res)
    assert lines[0] == "Teacher vs the student alone: +14.00."
    assert "Above plain KD (mean over seeds): gcrd (+6.00)." in lines
    assert "Not above plain KD: lsp (-2.00)." in lines
    assert any(line.startswith("Epoch time within 1.3× plain KD: lsp (1.30×), gcrd (1.10×)")
               for line in lines)
    md = markdown_report(res)
    assert "Not above plain KD: lsp" in md


def test_graph_methods_come_from_the_losses_family():
    res = _fake_results()
    assert [m for m in res["methods"] if is_graph_method(res, m)] == ["lsp", "gcrd"]
    # a method is named in the config; its matches' losses decide
    res["config"] = {"methods": {"local": {"matches": [{"method": "lsp"}]},
                                 "rel": {"matches": [{"method": "rkd"}, {"method": "hkd"}]},
                                 "feat": {"matches": [{"method": "FitNet"}]}}}
    assert [m for m in ("local", "rel", "feat", "kd", "student")
            if is_graph_method(res, m)] == ["local", "rel"]


def test_roc_auc_results_are_shown_in_percent():
    res = dict(_fake_results(), metric="ROC-AUC")
    assert "| kd | 85.00 ± 1.41 |" in results_table(res)
    assert "| kd | 0.85 ± 0.01 |" in results_table(dict(res, metric="mse"))


def test_write_report_files(tmp_path):
    res = _fake_results()
    paths = write_report(res, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["runs"][0]["test"] == 0.80
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![results](report.png)" in paths["md"].read_text()
