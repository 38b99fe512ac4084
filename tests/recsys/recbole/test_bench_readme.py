"""The README's ranking table is generated from the run files (benchmarks.recbole_readme)."""

from __future__ import annotations

import statistics

import pytest

from benchmarks import recbole_ml100k
from benchmarks.recbole_grid import parse_args, summarize
from benchmarks.recbole_readme import END, START, section, update_readme


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"head\n{START}\nold table\n{END}\ntail {START[:4]}\n", encoding="utf-8")
    update_readme(path, "new table")
    assert path.read_text(encoding="utf-8") == (
        f"head\n{START}\nnew table\n{END}\ntail {START[:4]}\n")


def test_update_readme_without_markers_refuses(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="markers"):
        update_readme(path, "x")
    assert path.read_text(encoding="utf-8") == "no markers\n"


def test_section_numbers_equal_the_committed_run_files():
    """Each finished ml-100k row of the README table is the mean of its run files' test NDCG@10
    (an independent recomputation from summarize's per-seed lists)."""
    bench = recbole_ml100k.BENCH
    tsum = summarize(bench, parse_args(bench, []))["teachers"]["bpr"]
    text = section(benches=(bench,))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
            if line.startswith("| ")}
    checked = 0
    for r in tsum["rows"]:
        if len(r["ndcg@10"]) < 2:
            continue
        label = {"none": "student alone"}.get(r["method"])
        line = next((v for k, v in rows.items() if k == label or k.lower() == r["method"]
                     or k.replace("+", "_").lower() == r["method"]), None)
        assert line is not None, r["method"]
        mean = statistics.fmean(r["ndcg@10"])
        assert f"{mean:.4f} ± {statistics.stdev(r['ndcg@10']):.4f}" in line
        checked += 1
    if not checked:
        pytest.skip("no finished ml-100k rows in benchmarks/results")
