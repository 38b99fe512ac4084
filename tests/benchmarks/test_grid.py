"""The resumable benchmark harness (benchmarks._grid): fingerprints, resume, paired differences,
rendering from run files, and one real end-to-end run on tiny digits clouds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from benchmarks._grid import (
    CONFIGS,
    Grid,
    Table,
    fingerprint,
    finished,
    load_runs,
    main,
    paired_difference,
    pending,
    render,
    run_file,
    summarize_table,
    summary_lines,
    table_config,
)
from graphkd.config import load_config
from graphkd.fileio import atomic_write_json

BACE = CONFIGS / "moleculenet_bace.yaml"


def _cfg(*overrides: str):
    return load_config(BACE, list(overrides))


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_tracks_what_determines_a_run():
    cfg = _cfg()
    fp = fingerprint(cfg, "lsp", 0)
    assert fp == fingerprint(_cfg(), "lsp", 0) and len(fp) == 10      # stable
    assert fingerprint(cfg, "lsp", 1) != fp                             # the seed
    assert fingerprint(_cfg("student.train.epochs=3"), "lsp", 0) != fp  # the training
    assert fingerprint(_cfg("teacher.train.epochs=3"), "lsp", 0) != fp  # the teacher
    w = dataclasses.replace(cfg.methods["lsp"].matches[0], weight=0.02)
    other = dataclasses.replace(cfg, methods={**cfg.methods, "lsp": dataclasses.replace(
        cfg.methods["lsp"], matches=[w])})
    assert fingerprint(other, "lsp", 0) != fp                           # its weight
    assert fingerprint(other, "kd", 0) == fingerprint(cfg, "kd", 0)     # not another method's
    assert fingerprint(_cfg("threads=2"), "lsp", 0) == fp               # not the threads
    with pytest.raises(ValueError, match="unknown method"):
        fingerprint(cfg, "nope", 0)


def test_run_file_refuses_path_names(tmp_path):
    assert run_file(tmp_path, "bace", "kd", 3, "abc").name == "kd-s3-abc.json"
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(ValueError, match="plain name"):
            run_file(tmp_path, bad, "kd", 0, "abc")
        with pytest.raises(ValueError, match="plain name"):
            run_file(tmp_path, "bace", bad, 0, "abc")


# ----------------------------------------------------------------------------- resume
def _record(method: str, seed: int, fp: str, test: float, **kw) -> dict:
    return {"method": method, "seed": seed, "fingerprint": fp, "test": test,
            "val": kw.get("val", test), "best_epoch": 1, "epoch_time": kw.get("t", 1.0),
            "teacher_cache": method != "student", "student_params": 13346}


def test_pending_skips_finished_runs_of_the_same_fingerprint(tmp_path):
    cfg = _cfg()
    methods, seeds = ["student", "kd", "lsp"], [0, 1]
    todo = pending(cfg, tmp_path, "bace", methods, seeds)
    assert [(m, s) for m, s, _, _ in todo] == [(m, s) for s in seeds for m in methods]
    m, s, fp, path = todo[1]                                   # kd seed 0 finished
    atomic_write_json(path, _record(m, s, fp, 0.7))
    # a file of another setting under the same name, and a half-written one, do not count
    _, _, fp2, path2 = todo[2]
    atomic_write_json(path2, _record("lsp", 0, "0000000000", 0.7))
    path3 = todo[3][3]
    path3.write_text('{"fingerprint": "' + todo[3][2] + '"')   # truncated JSON
    left = [(m, s) for m, s, _, _ in pending(cfg, tmp_path, "bace", methods, seeds)]
    assert left == [("student", 0), ("lsp", 0), ("student", 1), ("kd", 1), ("lsp", 1)]
    assert finished(path, fp)["test"] == 0.7 and finished(path2, fp2) is None
    plan = {(m, s): fp for m, s, fp, _ in todo}
    found, stale = load_runs(tmp_path, "bace", plan)
    assert list(found) == [("kd", 0)] and stale == 2


# ----------------------------------------------------------------------------- statistics
def test_paired_difference_matches_a_hand_computation():
    a = {0: 0.80, 1: 0.70, 2: 0.75, 7: 0.9}
    b = {0: 0.78, 1: 0.71, 2: 0.70, 5: 0.1}
    d = paired_difference(a, b)
    # diffs 0.02, -0.01, 0.05: mean 0.02, sample std sqrt((0 + 0.03^2 + 0.03^2) / 2) = 0.03
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3 and d["wins"] == 2
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.03)
    one = paired_difference({0: 0.5}, {0: 0.25})
    assert one["mean"] == 0.25 and math.isnan(one["std"])
    assert paired_difference({0: 1.0}, {1: 1.0})["n"] == 0


def test_summarize_table_pairs_by_seed_and_times_against_the_student():
    rec = {("student", 0): _record("student", 0, "f", 0.70, t=2.0),
           ("student", 1): _record("student", 1, "f", 0.60, t=2.0),
           ("kd", 0): _record("kd", 0, "f", 0.74, t=3.0),
           ("kd", 1): _record("kd", 1, "f", 0.62, t=3.0),
           ("lsp", 0): _record("lsp", 0, "f", 0.73, t=4.0)}
    rows = {r["method"]: r for r in summarize_table(rec, ["student", "kd", "lsp", "gsp"])}
    assert set(rows) == {"student", "kd", "lsp"}                      # gsp: no runs, no row
    assert rows["kd"]["test_mean"] == pytest.approx(0.68)
    assert rows["kd"]["test_std"] == pytest.approx(math.sqrt(2 * 0.06 ** 2))
    assert rows["kd"]["vs_student"]["mean"] == pytest.approx(0.03)    # (0.04 + 0.02) / 2
    assert rows["kd"]["vs_student"]["std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert rows["lsp"]["vs_kd"]["mean"] == pytest.approx(-0.01)       # seed 0 only
    assert rows["lsp"]["vs_kd"]["n"] == 1 and rows["kd"]["vs_kd"] is None
    assert rows["lsp"]["time_vs_student"] == pytest.approx(2.0)
    assert rows["student"]["vs_student"] is None


# ----------------------------------------------------------------------------- render
def test_render_from_fixture_run_files(tmp_path):
    table = Table(key="bace", config="moleculenet_bace.yaml", label="BACE fixture",
                  methods=("student", "kd", "lsp"), published={"kd": (74.08, 1.03)},
                  published_source="a paper")
    grid = Grid(name="fixture", title="Fixture grid", tables=(table,), seeds=(0, 1))
    cfg, _ = table_config(table)
    runs = tmp_path / "fixture" / "runs"
    tests = {("student", 0): 0.70, ("student", 1): 0.60, ("kd", 0): 0.74, ("kd", 1): 0.62,
             ("lsp", 0): 0.73}
    for (m, s), v in tests.items():
        fp = fingerprint(cfg, m, s)
        atomic_write_json(run_file(runs, "bace", m, s, fp), _record(m, s, fp, v))
    atomic_write_json(run_file(runs, "bace", "lsp", 1, "0123456789"),
                      _record("lsp", 1, "0123456789", 0.99))      # another setting: ignored
    paths = render(grid, tmp_path)
    assert sorted(p.name for p in paths) == ["fixture.json", "fixture.md", "fixture.png"]
    md = (tmp_path / "fixture.md").read_text()
    assert "| kd ᶜ | 2 | 68.00 ± 8.49 | +3.00 ± 1.41 (2/2) | — | 68.00 ± 8.49 | 1, 1 |" in md
    assert "| lsp ᶜ | 1 | 73.00 | +3.00 (1/1) | -1.00 (0/1) |" in md
    assert md.count("74.08 ± 1.03") == 1                               # published beside ours
    assert "**Incomplete**: 1 of 6 runs not done yet: lsp s1." in md
    assert "1 run files of other settings" in md
    blob = json.loads((tmp_path / "fixture.json").read_text())
    row = {r["method"]: r for r in blob["tables"][0]["rows"]}["kd"]
    assert row["vs_student"]["diffs"] == pytest.approx([0.04, 0.02])
    (line,) = summary_lines(grid, tmp_path)
    assert "incomplete, 5/6 runs" in line and "student alone 65.00 ± 7.07" in line
    assert "higher than the student alone: kd +3.00 ± 1.41 (2/2); lsp +3.00 (1/1) " \
           "(within noise). Higher than KD: none." in line


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_grid_runs_resumes_and_renders_on_tiny_clouds(tmp_path, capsys):
    """Real teacher, students, offline teacher cache and run files on 120 digits clouds; a
    second call trains nothing and leaves the run files untouched."""
    cfg_file = tmp_path / "tiny.yaml"
    out = tmp_path / "results"
    cfg_file.write_text(f"""
name: tiny
output_dir: {tmp_path / 'runs'}
data: {{name: digits, kwargs: {{num_points: 16, limit: 120}}}}
teacher:
  model: {{preset: dgcnn, kwargs: {{k: 4, widths: [8, 8], emb_dims: 16, head: [8]}}}}
  train: {{epochs: 1, batch_size: 16}}
student:
  model: {{preset: pointnet, kwargs: {{widths: [8], head: [8]}}}}
  train: {{epochs: 2, batch_size: 16}}
methods:
  student: {{}}
  kd: {{logits_weight: 0.9, tau: 4.0}}
""")
    grid = Grid(name="tiny", title="Tiny", seeds=(0,), tables=(
        Table(key="digits", config=str(cfg_file), label="tiny", cache=True,
              relation_pairs=(("pool", "pool"),), relation_methods=("student", "kd")),))
    assert main(grid, "tiny", ["--out", str(out)]) == 0
    files = sorted((out / "tiny" / "runs" / "digits").glob("*-s0-*.json"))
    assert [f.name.split("-")[0] for f in files] == ["kd", "student"]
    assert all(f.with_suffix(".pt").is_file() for f in files)
    rec = json.loads(files[0].read_text())
    assert rec["teacher_cache"] is True and len(rec["history"]["test"]) == 2
    assert (out / "tiny" / ".gitignore").read_text().strip().endswith("runs/**/*.pt")
    stamps = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    assert main(grid, "tiny", ["--out", str(out)]) == 0
    assert "seed 0: test" not in capsys.readouterr().out                # nothing retrained
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert "| kd ᶜ | 1 |" in (out / "tiny.md").read_text()
    assert Path(tmp_path / "runs" / "tiny").is_dir()                    # teacher checkpoint
    # relation diagnostics of the kept student weights, then shown by the renderer
    assert main(grid, "tiny", ["--out", str(out), "--relations"]) == 0
    rel = json.loads((out / "tiny" / "relations" / "digits.json").read_text())
    assert sorted(r["method"] for r in rel.values()) == ["kd", "student"]
    for r in rel.values():
        (row,) = r["rows"]
        assert 0.0 <= row["cka"] <= 1.0 + 1e-6 and 0.0 <= row["knn_overlap"] <= 1.0
    main(grid, "tiny", ["--out", str(out), "--render"])
    assert "**Relation diagnostics**" in (out / "tiny.md").read_text()


# ----------------------------------------------------------------------------- configs
def _stand_in(cfg):
    """Tiny real graphs of the config's kind (molecules from SMILES, 2-D clouds)."""
    import torch
    from torch_geometric.data import Data

    from graphkd.datasets import smiles_to_data
    from graphkd.pipeline import DataBundle

    if cfg.metric == "roc_auc":
        smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C1CCNCC1", "CCN(CC)CC",
                  "OC(=O)c1ccccc1"]
        mols = [smiles_to_data(s, torch.tensor([[i % 2]])) for i, s in enumerate(smiles)]
        return DataBundle(mols, mols[:3], mols[:3], num_features=9, num_classes=2,
                          metric="roc_auc")
    g = torch.Generator().manual_seed(0)
    clouds = [Data(pos=torch.rand(32, 2, generator=g), y=torch.tensor([i % 10]))
              for i in range(6)]
    return DataBundle(clouds, clouds[:3], clouds[:3], num_features=2, num_classes=10,
                      model_kwargs={"in_channels": 2})


@pytest.mark.parametrize("config", ["molecules_molhiv.yaml", "moleculenet_bbbp.yaml",
                                    "moleculenet_bace.yaml", "mnist_clouds.yaml",
                                    "mnist_clouds_pointnet.yaml"])
def test_grid_configs_build_every_table_method(config, tmp_path):
    """Every method of the benchmark tables passes the Distiller's dry run with the config's
    real teacher and student (layer paths, widths) and gives finite losses."""
    import torch

    from benchmarks import mnist_clouds, moleculenet, molhiv
    from graphkd.pipeline import make_loader, model_from_config
    from graphkd.pipeline.runs import _make_student

    tables = [t for g in (molhiv.GRID, moleculenet.GRID, mnist_clouds.GRID) for t in g.tables
              if t.config == config]
    cfg = load_config(CONFIGS / config, [*tables[0].overrides, "device=cpu",
                                         f"output_dir={tmp_path}"])
    data = _stand_in(cfg)
    teacher = model_from_config(cfg.teacher.model, data).eval()
    cfg.student.train.batch_size = 3
    batch = next(iter(make_loader(data.train, 3, False, 0)))
    for name in tables[0].methods:
        _, _, step, _ = _make_student(cfg, name, 0, teacher, data, torch.device("cpu"))
        losses = step(batch)
        assert losses and all(torch.isfinite(v) for v in losses.values()), (name, losses)


@pytest.mark.slow
def test_teacher_resumes_exactly_from_its_last_epoch(tmp_path):
    """A teacher interrupted after epoch 1 of 2 (its per-epoch checkpoint kept) and resumed ends
    with the same weights, bit for bit, as one trained without interruption."""
    import shutil

    import torch

    from benchmarks._grid import _load_data, ensure_teacher
    from graphkd.pipeline import teacher_path

    def cfg(epochs: int, out: str):
        return load_config({
            "name": "tiny", "output_dir": str(tmp_path / out),
            "data": {"name": "digits", "kwargs": {"num_points": 16, "limit": 120}},
            "teacher": {"model": {"preset": "dgcnn", "kwargs": {"k": 4, "widths": [8, 8],
                                                                 "emb_dims": 16, "head": [8]}},
                        "train": {"epochs": epochs, "batch_size": 16}},
            "student": {"model": {"preset": "pointnet", "kwargs": {"widths": [8]}}},
            "methods": {"student": {}}})

    full, one, resumed = cfg(2, "full"), cfg(1, "one"), cfg(2, "resumed")
    data = _load_data(full, cache=False)
    a, rec_a = ensure_teacher(full, data)
    _, rec_one = ensure_teacher(one, data)               # the "interrupted" run: epoch 1 done
    target = teacher_path(resumed).with_suffix(".fit")
    target.parent.mkdir(parents=True)
    shutil.copytree(teacher_path(one).with_suffix(".fit"), target)
    b, rec_b = ensure_teacher(resumed, data)
    # epoch 1 came from the checkpoint (its measured time is the interrupted run's), not retrained
    assert rec_b["epoch_time"][0] == rec_one["epoch_time"][0] != rec_a["epoch_time"][0]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert rec_a["val"] == rec_b["val"] and rec_a["test_at_best"] == rec_b["test_at_best"]
    # a finished teacher is loaded from the pipeline's cache, not trained again
    c, rec_c = ensure_teacher(full, data)
    assert rec_c["cached"] is True and all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)


def test_a_complete_tuning_sets_the_weights_and_shows_in_the_table(tmp_path):
    """tune/<key>/tuned_weights.json (graphkd.tune's summary): a complete one gives the runs the
    chosen weights (so new fingerprints) and the rendered table prints grid and choice; an
    incomplete one changes nothing."""
    from graphkd.config import to_dict
    from graphkd.tune import TUNED_FILE, scale_method

    table = Table(key="bace", config="moleculenet_bace.yaml", label="BACE",
                  methods=("student", "kd"))
    grid = Grid(name="fixture", title="Fixture", tables=(table,), seeds=(0,))
    base_cfg, tuned = table_config(table, tune_dir=tmp_path / "fixture" / "tune" / "bace")
    assert tuned is None
    chosen = scale_method(base_cfg.methods["kd"], 10.0)
    summary = {"name": "moleculenet_bace", "metric": "roc_auc", "higher_is_better": True,
               "grid": [0.1, 1.0, 10.0], "epochs": 5, "seeds": [0], "complete": True,
               "methods": {"kd": {"default": to_dict(base_cfg.methods["kd"]),
                                  "trials": [{"scale": s, "val": v, "vals": [v], "weights": {}}
                                             for s, v in ((0.1, 0.61), (1.0, 0.62),
                                                          (10.0, 0.65))],
                                  "chosen_scale": 10.0, "val": 0.65, "chosen": to_dict(chosen),
                                  "weights": {"task": chosen.task_weight,
                                              "kd": chosen.logits_weight}}}}
    tune_dir = tmp_path / "fixture" / "tune" / "bace"
    atomic_write_json(tune_dir / TUNED_FILE, summary)
    cfg, _ = table_config(table, tune_dir=tune_dir)
    assert cfg.methods["kd"].logits_weight == pytest.approx(0.9 * 10 / (0.9 * 10 + 0.1))
    assert fingerprint(cfg, "kd", 0) != fingerprint(base_cfg, "kd", 0)
    assert fingerprint(cfg, "student", 0) == fingerprint(base_cfg, "student", 0)
    render(grid, tmp_path)
    md = (tmp_path / "fixture.md").read_text()
    assert "| kd | 0.6100 | 0.6200 | 0.6500 | x10" in md and "Applied to the runs above: yes" in md
    atomic_write_json(tune_dir / TUNED_FILE, {**summary, "complete": False})
    cfg2, _ = table_config(table, tune_dir=tune_dir)
    assert cfg2.methods["kd"].logits_weight == 0.9
