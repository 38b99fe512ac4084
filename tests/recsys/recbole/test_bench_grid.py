"""The fair-protocol runner of the RecBole benchmarks (benchmarks/recbole_grid.py): selection on
validation, keys and fingerprints, the cap flag, and a whole tiny grid end to end (runs, resume,
render, claims) on a 40-user slice of ml-100k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("recbole")

from benchmarks import recbole_grid as grid  # noqa: E402


def _args(tmp_path: Path, argv: list[str] = ()) -> object:
    return grid.parse_args(BENCH, ["--results-dir", str(tmp_path / "results"),
                                   "--run-dir", str(tmp_path / "runs"), *argv])


BENCH = grid.Bench(name="tinybench", dataset="tiny", title="tiny (40 users of ml-100k)")


def test_defaults_are_the_documented_protocol(tmp_path: Path):
    args = _args(tmp_path)
    assert (args.epochs, args.stopping_step, args.teacher_epochs) == (300, 10, 300)
    assert args.lrs == [0.001, 0.005] and args.weights == [0.1, 1.0, 10.0]
    assert args.seeds == [0, 1, 2] and args.teachers == ["bpr"] and args.phase == "all"
    assert args.extend_edges is True and grid.EDGE_STEP == 10.0
    assert args.methods == list(grid.METHODS)
    assert grid.teacher_protocol(args, "bpr") == {
        "teacher": ["BPR", {"embedding_size": 200}], "epochs": 300, "stopping_step": 10,
        "learning_rate": 0.001, "train_batch_size": 2048}
    cfg = grid.student_config(args, 2)
    assert cfg["epochs"] == 300 and cfg["stopping_step"] == 10 and cfg["seed"] == 2
    assert cfg["train_batch_size"] == 2048 and cfg["eval_step"] == 1
    assert len(grid.grid_points("none", args)) == 2 and len(grid.grid_points("rrd", args)) == 6


def test_bad_arguments_are_refused(tmp_path: Path):
    with pytest.raises(SystemExit):
        _args(tmp_path, ["--methods", "rd,nope"])
    with pytest.raises(SystemExit):
        _args(tmp_path, ["--epochs", "0"])


@pytest.mark.parametrize("epochs_run, best_epoch, expected", [
    (300, 120, False),  # best 120: early stopping would end after index 131 -> it did earlier
    (132, 120, False),  # stopped early: 120 + 10 + 2 epochs
    (300, 288, False),  # early stopping fired exactly at the cap (index 299 = 288 + 11)
    (300, 289, True),   # still improving within the last stopping_step + 1 epochs
    (300, 299, True),
    (300, None, True),
])
def test_stopped_at_cap(epochs_run, best_epoch, expected):
    assert grid.stopped_at_cap(epochs_run, best_epoch, 300, 10) is expected


def test_weights_are_multiples_of_the_yaml_reference():
    ref = grid.reference_weight("rrd")
    assert ref == grid.method_settings("rrd")["distill_weight"]
    assert grid.weight_value("rrd", 0.1) == float(f"{0.1 * ref:.6g}")
    assert grid.weight_value("rrd", 10.0) == float(f"{10 * ref:.6g}")
    assert grid.weight_value("none", None) == 0.0 and grid.reference_weight("none") == 0.0
    assert repr(grid.weight_value("rrd", 0.1)) == repr(float(f"{ref / 10:g}"))  # no 1e-4 noise


def test_keys_and_fingerprints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    args = _args(tmp_path)
    assert grid.run_key("none", None, 0.005, None, 0) == "none-lr0.005-s0"
    assert grid.run_key("rrd", "bpr", 0.001, 10.0, 2) == "bpr-rrd-lr0.001-x10-s2"
    fp = grid.fingerprint(BENCH, args, "rrd", "bpr")
    assert fp == grid.fingerprint(BENCH, args, "rrd", "bpr")
    assert fp != grid.fingerprint(BENCH, _args(tmp_path, ["--epochs", "100"]), "rrd", "bpr")
    assert fp != grid.fingerprint(BENCH, _args(tmp_path, ["--teacher-epochs", "9"]), "rrd",
                                  "bpr")
    assert fp != grid.fingerprint(BENCH, args, "rrd", "lightgcn")
    # the student alone does not depend on the teacher
    assert (grid.fingerprint(BENCH, args, "none", None)
            == grid.fingerprint(BENCH, _args(tmp_path, ["--teacher-epochs", "9"]), "none", None))
    real = grid.method_settings
    monkeypatch.setattr(grid, "method_settings", lambda m: {**real(m), "distill_params": {}})
    assert grid.fingerprint(BENCH, args, "rrd", "bpr") != fp  # a changed method YAML


def _fake_run(method: str, lr: float, mult: float | None, seed: int, score: float) -> dict:
    return {"key": grid.run_key(method, None if method == "none" else "bpr", lr, mult, seed),
            "best_valid_score": score}


def test_selection_uses_seed_0_validation_only(tmp_path: Path):
    args = _args(tmp_path)
    runs = {}
    for lr in (0.001, 0.005):
        for mult in (0.1, 1.0, 10.0):
            r = _fake_run("rd", lr, mult, 0, 0.2 + (lr == 0.005) * 0.01 + (mult == 0.1) * 0.02)
            runs[r["key"]] = r
    # another seed with a far better score must not matter
    r = _fake_run("rd", 0.001, 10.0, 1, 0.9)
    runs[r["key"]] = r
    # the grid's best (0.005, 0.1) sits at the lower lambda edge: one point past it is needed
    assert grid.selection(runs, "rd", "bpr", args) == {
        "base": (0.005, 0.1), "extension": (0.005, 0.01), "chosen": None}
    assert grid.select(runs, "rd", "bpr", args) is None
    assert grid.select(runs, "rd", "bpr", _args(tmp_path, ["--no-extend-edges"])) == (0.005, 0.1)
    for score, expected in ((0.2299, (0.005, 0.1)), (0.2301, (0.005, 0.01))):
        r = _fake_run("rd", 0.005, 0.01, 0, score)
        runs[r["key"]] = r
        assert grid.select(runs, "rd", "bpr", args) == expected
    # extended once: a choice at the new point asks for nothing further
    assert grid.edge_extension("rd", (0.005, 0.01), args) is None
    assert grid.edge_extension("rd", (0.001, 10.0), args) == (0.001, 100.0)
    assert grid.edge_extension("none", (0.001, None), args) is None
    del runs[r["key"]]
    # ties: the reference lambda first, then the smaller lr
    for key in runs:
        runs[key] = {**runs[key], "best_valid_score": 0.3}
    assert grid.select(runs, "rd", "bpr", args) == (0.001, 1.0)
    # an incomplete grid selects nothing
    del runs[grid.run_key("rd", "bpr", 0.005, 10.0, 0)]
    assert grid.select(runs, "rd", "bpr", args) is None
    alone = {r["key"]: r for r in (_fake_run("none", 0.001, None, 0, 0.25),
                                   _fake_run("none", 0.005, None, 0, 0.26))}
    assert grid.select(alone, "none", "bpr", args) == (0.005, None)



def test_choices_past_the_edge_are_named():
    tsum = {"grid": {"rd": {"extension": (0.001, 100.0), "chosen": (0.001, 100.0)},
                     "cd": {"extension": (0.001, 100.0), "chosen": (0.001, 10.0)},
                     "rrd": {"extension": None, "chosen": (0.005, 1.0)},
                     "dcd": {"extension": (0.001, 0.01), "chosen": None}}}
    text = grid._past_edge_sentence(tsum)
    assert text.endswith("extended once only): RD.")
    assert grid._past_edge_sentence({"grid": {k: v for k, v in tsum["grid"].items()
                                              if k != "rd"}}) == ""


def test_a_cut_lr_grid_selects_without_the_probe_and_reports_it(tmp_path: Path):
    """A bench whose grid was cut (``lrs``) keeps the earlier probe runs (``probe_lrs``) out of
    the selection, even when a probe scores higher, and the report counts probe cells below
    the grid's best."""
    from benchmarks.recbole_ml1m import BENCH as ML1M

    assert ML1M.lrs == (0.001,) and ML1M.probe_lrs == (0.005,)
    args = grid.parse_args(ML1M, ["--results-dir", str(tmp_path), "--no-extend-edges"])
    assert args.lrs == [0.001] and len(grid.grid_points("rd", args)) == 3
    runs = {r["key"]: r for r in (
        *[_fake_run("rd", 0.001, m, 0, 0.20 + 0.01 * i) for i, m in enumerate((0.1, 1.0, 10.0))],
        _fake_run("rd", 0.005, 0.1, 0, 0.19), _fake_run("rd", 0.005, 1.0, 0, 0.50))}
    assert grid.select(runs, "rd", "bpr", args) == (0.001, 10.0)
    cells = {"0.001|0.1": 0.20, "0.001|1": 0.21, "0.001|10": 0.22, "0.005|0.1": 0.19,
             "0.005|1": 0.50}
    tsum = {"grid": {"rd": {"cells": {k: {"valid_ndcg@10": v} for k, v in cells.items()}}}}
    text = grid._probe_sentence(tsum, args, [0.005])
    assert "RD 1/2" in text and text.startswith("‡ lr 0.005")


@pytest.fixture
def tiny_env(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The conftest data root (``tiny``) as the data root; a 2-epoch protocol."""
    monkeypatch.setenv("GRAPHKD_DATA", str(data_root))
    return ["--epochs", "2", "--teacher-epochs", "2", "--methods", "none,rd", "--seeds", "0,1",
            "--lrs", "0.01", "--weights", "1,10", "--no-extend-edges"]


def test_tiny_grid_end_to_end(tiny_env: list[str], tmp_path: Path, capsys):
    args = _args(tmp_path, tiny_env)
    grid.main(BENCH, _argv(args))
    out = capsys.readouterr().out
    assert "runs: 5 ran, 2 already done" in out  # seed 0 of the final phase is the grid run
    files = sorted(p.name for p in grid.runs_dir(BENCH, args).iterdir())
    assert len(files) == 7 and sum(f.startswith("teacher-bpr-s") for f in files) == 2
    runs = {r["key"]: r for r in grid.load_runs(BENCH, args) if r["kind"] == "student"}
    chosen = grid.select(runs, "rd", "bpr", args)
    assert chosen is not None
    assert set(runs) == {"none-lr0.01-s0", "none-lr0.01-s1", "bpr-rd-lr0.01-x1-s0",
                         "bpr-rd-lr0.01-x10-s0", grid.run_key("rd", "bpr", *chosen, 1)}
    for r in runs.values():
        assert r["epochs_run"] == 2 and r["stopped_at_cap"] is True
        assert r["fingerprint"] == grid.fingerprint(BENCH, args, r["method"], r["teacher"])
        assert r["distill_weight"] == grid.weight_value(r["method"], r["weight_multiplier"])
        assert "machine" in r and "test_result" in r and "best_valid_result" in r
    # the report
    base = tmp_path / "results"
    md = (base / "tinybench.md").read_text()
    assert "student alone (2 seeds)" in md and "RD (2 seeds)" in md and "**" in md
    assert (base / "tinybench.png").stat().st_size > 0
    rep = json.loads((base / "tinybench.json").read_text())
    rows = {r["method"]: r for r in rep["teachers"]["bpr"]["rows"]}
    alone = {r["seed"]: r for r in runs.values() if r["method"] == "none"}
    rd = [runs[grid.run_key("rd", "bpr", *chosen, s)] for s in (0, 1)]
    assert rows["rd"]["diff_ndcg@10"] == pytest.approx(
        [r["test_result"]["ndcg@10"] - alone[r["seed"]]["test_result"]["ndcg@10"] for r in rd])
    assert rows["rd"]["stopped_at_cap"] == [True, True] and rep["runs_at_cap"] == 5
    assert rep["grid"]["learning_rate"] == [0.01]
    # resume: nothing runs again; render alone rewrites the same report
    mtimes = {p: p.stat().st_mtime_ns for p in grid.runs_dir(BENCH, args).iterdir()}
    grid.main(BENCH, _argv(args))
    assert "runs: 0 ran, 7 already done" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in grid.runs_dir(BENCH, args).iterdir()}
    (base / "tinybench.md").unlink()
    grid.main(BENCH, [*_argv(args), "--render"])
    assert (base / "tinybench.md").read_text() == md
    # another protocol ignores these runs and renders nothing over the report
    grid.main(BENCH, [*_argv(args), "--render", "--epochs", "3"])
    assert "nothing rendered" in capsys.readouterr().out
    assert (base / "tinybench.md").read_text() == md


def test_phases_split_and_claims(tiny_env: list[str], tmp_path: Path, capsys):
    args = _args(tmp_path, tiny_env)
    # the final phase waits for the grid
    grid.main(BENCH, [*_argv(args), "--phase", "final", "--methods", "rd"])
    assert "waits for an incomplete grid" in capsys.readouterr().out
    assert not grid.runs_dir(BENCH, args).exists() or not any(
        p.name.startswith("bpr-rd") for p in grid.runs_dir(BENCH, args).iterdir())
    # a run held by another worker is skipped
    key = grid.run_key("none", None, 0.01, None, 0)
    fp = grid.fingerprint(BENCH, args, "none", None)
    with grid.claim(args, BENCH, f"{key}-{fp}") as mine:
        assert mine
        grid.main(BENCH, [*_argv(args), "--phase", "grid", "--methods", "none"])
        assert "running in another process, skipped" in capsys.readouterr().out
    assert not (grid.runs_dir(BENCH, args) / f"{key}-{fp}.json").exists()
    grid.main(BENCH, [*_argv(args), "--phase", "grid", "--methods", "none"])
    assert (grid.runs_dir(BENCH, args) / f"{key}-{fp}.json").is_file()
    # a grid split by lambda: half of it selects nothing yet, the other half completes it
    grid.main(BENCH, [*_argv(args), "--phase", "grid", "--methods", "rd", "--only-weights", "10"])
    runs = {r["key"] for r in grid.load_runs(BENCH, args) if r["kind"] == "student"}
    assert runs == {key, "bpr-rd-lr0.01-x10-s0"}
    assert grid.select(grid._current(BENCH, args), "rd", "bpr", args) is None
    grid.main(BENCH, [*_argv(args), "--phase", "grid", "--methods", "rd", "--only-weights", "1"])
    assert grid.select(grid._current(BENCH, args), "rd", "bpr", args) is not None
    with pytest.raises(SystemExit):
        _args(tmp_path, [*tiny_env, "--only-lrs", "0.5"])


def test_edge_extension_end_to_end(tiny_env: list[str], tmp_path: Path, capsys):
    """A grid whose best lambda sits at an edge runs one point past it (grid phase), selects
    over both, and the report shows it in its own column; while that run is missing the row
    keeps the grid's choice and says the extension is pending."""
    env = [a for a in tiny_env if a != "--no-extend-edges"]
    args = _args(tmp_path, [*env, "--methods", "rd", "--phase", "grid"])
    grid.main(BENCH, _argv(args) + ["--phase", "grid"])
    runs = grid._current(BENCH, args)
    sel = grid.selection(runs, "rd", "bpr", args)
    base, ext = sel["base"], sel["extension"]
    assert base is not None and ext == grid.edge_extension("rd", base, args)
    assert ext[1] in (100.0, 0.1) and ext[0] == base[0]  # grid {1, 10}: both are edges
    ext_key = grid.run_key("rd", "bpr", *ext, 0)
    assert set(runs) == {grid.run_key("rd", "bpr", 0.01, m, 0) for m in (1.0, 10.0)} | {ext_key}
    scores = {k: r["best_valid_score"] for k, r in runs.items()}
    best = max(scores.values())
    assert scores[grid.run_key("rd", "bpr", *sel["chosen"], 0)] == best
    md = (tmp_path / "results" / "tinybench.md").read_text()
    assert "| past the edge |" in md and f"(lr 0.01, {grid._num(ext[1])}×)" in md
    assert "one x10 step past that edge" in md
    # the extension's run file gone: the grid's own choice is shown, marked pending
    fp = grid.fingerprint(BENCH, args, "rd", "bpr")
    (grid.runs_dir(BENCH, args) / f"{ext_key}-{fp}.json").unlink()
    capsys.readouterr()
    grid.main(BENCH, [*_argv(args), "--render"])
    md = (tmp_path / "results" / "tinybench.md").read_text()
    assert f"{grid._num(ext[1])}× past the edge pending" in md
    assert f"… (lr 0.01, {grid._num(ext[1])}×)" in md


def test_a_reused_teacher_keeps_its_metrics(tiny_env: list[str], tmp_path: Path):
    """Another results directory with the same --run-dir reuses the trained teacher and still
    records its test metrics (from the sidecar beside the state file)."""
    args = _args(tmp_path, tiny_env)
    first = grid.ensure_teacher_run(BENCH, args, "bpr", 0)
    other = _args(tmp_path, [*tiny_env, "--results-dir", str(tmp_path / "other")])
    assert grid.ensure_teacher_run(BENCH, other, "bpr", 0) == first
    runs = [grid.load_runs(BENCH, a) for a in (args, other)]
    assert runs[0][0]["test_result"] == runs[1][0]["test_result"]
    assert runs[1][0]["fingerprint"] == grid.teacher_fingerprint(BENCH, other, "bpr")


def test_timing_pass(tiny_env: list[str], tmp_path: Path, capsys):
    args = _args(tmp_path, tiny_env)
    grid.main(BENCH, [*_argv(args), "--timing", "--timing-epochs", "2"])
    folder = tmp_path / "results" / "tinybench" / "timing"
    t = json.loads((folder / "bpr-rd.json").read_text())
    assert len(t["cpu"]) == 2 and len(t["wall"]) == 2 and t["chosen"] is False
    assert t["weight_multiplier"] == 1.0 and t["learning_rate"] == 0.01
    assert (folder / "bpr-none.json").is_file()


def _argv(args) -> list[str]:
    """The command line of ``args`` (what ``main`` parses)."""
    return ["--results-dir", args.results_dir, "--run-dir", args.run_dir,
            "--epochs", str(args.epochs), "--teacher-epochs", str(args.teacher_epochs),
            "--methods", ",".join(args.methods), "--seeds", ",".join(map(str, args.seeds)),
            "--lrs", ",".join(map(str, args.lrs)), "--weights", ",".join(map(str, args.weights)),
            *([] if args.extend_edges else ["--no-extend-edges"])]
