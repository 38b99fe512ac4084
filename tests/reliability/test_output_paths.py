"""Outputs stay where the user put them (issue 11, part 6).

A run name (graphkd) or a dataset name (recsys) that is absolute or contains ``..`` or a path
separator is refused with a clear error before anything is written; every output path resolves
under its root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from graphkd.config import ConfigError, load_config
from tests.reliability._cli_helpers import TINY, stderr_lines, write_config, write_ml100k_slice

BAD_NAMES = ["../escaped", "..", "a/b", "/tmp/graphkd-escaped-abs", "./x/../../y", ""]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_config_refuses_path_like_run_names(bad):
    with pytest.raises(ConfigError, match=r"config\.name .*not a plain name"):
        load_config({**TINY, "name": bad})
    if bad:  # `--set name=` parses as null: a type error, refused as well
        with pytest.raises(ConfigError, match=r"config\.name .*not a plain name"):
            load_config(dict(TINY), [f"name={bad}"])


def test_plain_run_names_still_work(tmp_path):
    from graphkd.pipeline import run_dir, teacher_path

    cfg = load_config(dict(TINY), ["name=my-run_2.v1", f"output_dir={tmp_path / 'out'}"])
    assert run_dir(cfg) == tmp_path / "out" / "my-run_2.v1"
    t = teacher_path(cfg)
    assert t.parent == tmp_path / "out" / "my-run_2.v1" and t.name.startswith("teacher-")


@pytest.mark.parametrize("bad", ["../escaped", "/tmp/graphkd-escaped-abs", "a/b"])
def test_run_dir_and_teacher_path_stay_under_output_dir(tmp_path, bad):
    """Even a config built without validation cannot point run_dir/teacher_path elsewhere."""
    from graphkd.config import ExperimentConfig
    from graphkd.pipeline import run_dir, teacher_path

    cfg = ExperimentConfig(name=bad, output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not a plain name"):
        run_dir(cfg)
    with pytest.raises(ValueError, match="not a plain name"):
        teacher_path(cfg)


def test_run_dir_refuses_a_symlink_out_of_the_root(tmp_path):
    from graphkd.config import ExperimentConfig
    from graphkd.pipeline import run_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside"):
        run_dir(ExperimentConfig(name="link", output_dir=str(tmp_path / "out")))


def test_graphkd_cli_refuses_escaping_name(tmp_path, monkeypatch, capsys):
    import graphkd.pipeline as ex
    from graphkd.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the experiment ran with an escaping run name")

    monkeypatch.setattr(ex, "run_experiment", must_not_run)
    monkeypatch.setattr(ex, "train_teacher", must_not_run)
    config = write_config(tmp_path / "tiny.yaml")
    out = tmp_path / "work" / "out"
    for bad in ("../escaped", str(tmp_path / "abs")):
        rc = main(["distill", "--config", str(config), "--set", f"name={bad}",
                   "--output-dir", str(out), "-q"])
        assert rc == 2
        err = stderr_lines(capsys)
        assert len(err) == 1 and err[0].startswith("graphkd: error: ")
        assert "name" in err[0] and repr(bad) in err[0]
    assert _files(tmp_path) == {config}


# ----------------------------------------------------------------------------- recsys
@pytest.fixture
def recsys_layout(tmp_path):
    """A data root with a normal dataset, a dataset *outside* it (reachable as ``../outside/ml``),
    and a run directory."""
    pytest.importorskip("recbole")
    root = tmp_path / "data"
    write_ml100k_slice(root, "tiny")
    write_ml100k_slice(tmp_path / "outside", "ml")  # what "../outside/ml" would reach
    run = tmp_path / "run"
    cfg = {"data_path": str(root), "epochs": 1, "state": "WARNING", "train_batch_size": 256,
           "eval_batch_size": 4096, "checkpoint_dir": str(run / "checkpoints")}
    return tmp_path, root, run, cfg


@pytest.mark.parametrize("bad", ["../outside/ml", "/abs/ml", "a/b", ".."])
def test_recbole_build_config_refuses_path_like_dataset(recsys_layout, bad):
    from recsys.recbole import build_config

    _, _, _, cfg = recsys_layout
    with pytest.raises(ValueError, match=r"dataset .*not a plain name"):
        build_config("BPR", bad, config_dict=cfg)


def test_ensure_teacher_refuses_dataset_outside_data_root(recsys_layout):
    from recsys.recbole import ensure_teacher, run_distillation

    tmp, _, run, cfg = recsys_layout
    before = _files(tmp)
    with pytest.raises(ValueError, match="dataset '../outside/ml' is not a plain name"):
        ensure_teacher("BPR", "../outside/ml", config_dict=cfg, run_dir=run)
    with pytest.raises(ValueError, match="not a plain name"):
        run_distillation(method="rd", dataset="../outside/ml", config_dict=cfg, run_dir=run)
    assert _files(tmp) == before  # nothing trained, nothing written


def test_recsys_cli_train_teacher_refuses_escaping_dataset(recsys_layout, capsys):
    from recsys.cli import main

    tmp, root, run, _ = recsys_layout
    before = _files(tmp)
    rc = main(["train-teacher", "--dataset", "../outside/ml", "--data-path", str(root),
               "--run-dir", str(run), "--set", "epochs=1", "--set", "state=WARNING"])
    assert rc == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith("recsys-distill: error: ")
    assert "'../outside/ml'" in err[0]
    assert _files(tmp) == before


def test_teacher_file_stays_under_run_dir(recsys_layout):
    from recsys.recbole import ensure_teacher

    _, _, run, cfg = recsys_layout
    path, res = ensure_teacher("BPR", "tiny", teacher_config={"embedding_size": 4},
                               config_dict=cfg, run_dir=run)
    assert res is not None
    assert path.parent == run / "teachers" and path.is_file()
    assert path.resolve().is_relative_to(run.resolve())
