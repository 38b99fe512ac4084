"""CLI errors name the fix on one line, exit with status 2, and show no traceback (issue 11,
part 7b). ``--debug`` / ``GRAPHKD_DEBUG=1`` re-raise for developers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reliability._cli_helpers import stderr_lines, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("GRAPHKD_DEBUG", raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _graphkd(args, capsys):
    from graphkd.cli import main

    rc = main(args)
    return rc, stderr_lines(capsys)


def test_device_cuda_without_cuda(tmp_path, no_cuda, capsys):
    config = write_config(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    for device in ("cuda", "cuda:1"):
        rc, err = _graphkd(["distill", "--config", str(config), "--device", device,
                            "--output-dir", str(out), "-q"], capsys)
        assert rc == 2
        assert len(err) == 1, err
        assert err[0].startswith("graphkd: error: ")
        assert f"'{device}'" in err[0] and "CUDA is not available" in err[0]
        assert "--device cpu" in err[0]
    assert not out.exists()  # refused before any training


def test_device_cuda_set_in_config_file(tmp_path, no_cuda, capsys):
    config = write_config(tmp_path / "tiny.yaml", device="cuda")
    rc, err = _graphkd(["train-teacher", "--config", str(config), "--output-dir",
                        str(tmp_path / "out"), "-q"], capsys)
    assert rc == 2 and len(err) == 1 and "CUDA is not available" in err[0]


def test_unknown_device_name(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml")
    rc, err = _graphkd(["distill", "--config", str(config), "--device", "gpu0", "-q",
                        "--output-dir", str(tmp_path / "out")], capsys)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("graphkd: error: ") and "'gpu0'" in err[0]
    assert "cpu, cuda, cuda:<index> or auto" in err[0]


def test_bad_data_kwarg_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml")
    rc, err = _graphkd(["distill", "--config", str(config), "--set", "data.kwargs.num_points=0",
                        "--output-dir", str(tmp_path / "out"), "-q"], capsys)
    assert rc == 2
    assert err == ["graphkd: error: `num_points` must be >= 1, got 0."]


def test_multiline_messages_are_folded(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")  # yaml's message spans several lines
    rc, err = _graphkd(["distill", "--config", str(bad), "-q"], capsys)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("graphkd: error: ") and "invalid YAML" in err[0]


def test_debug_reraises(tmp_path, monkeypatch, capsys):
    from graphkd.cli import main

    config = write_config(tmp_path / "tiny.yaml")
    args = ["distill", "--config", str(config), "--set", "data.kwargs.num_points=0",
            "--output-dir", str(tmp_path / "out"), "-q"]
    with pytest.raises(ValueError, match="num_points"):
        main(["--debug", *args])
    with pytest.raises(ValueError, match="num_points"):
        main([*args, "--debug"])
    monkeypatch.setenv("GRAPHKD_DEBUG", "1")
    with pytest.raises(ValueError, match="num_points"):
        main(args)


def test_exit_status_and_stderr_of_the_real_command(tmp_path):
    """The installed entry point: status 2, exactly one stderr line, no traceback."""
    config = write_config(tmp_path / "tiny.yaml")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    env.pop("GRAPHKD_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "graphkd.cli", "distill", "--config",
                           str(config), "--device", "cuda", "--output-dir",
                           str(tmp_path / "out"), "-q"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("graphkd: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- recsys-distill
def test_recsys_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("recbole")
    from recsys.cli import main

    rc = main(["run", "--method", "rd", "--teacher-checkpoint", str(tmp_path / "none.pth"),
               "--dataset", "no/such", "--run-dir", str(tmp_path / "run")])
    assert rc == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith("recsys-distill: error: ")
    assert "'no/such'" in err[0]


def test_recsys_unexpected_error_types_are_caught(tmp_path, monkeypatch, capsys):
    pytest.importorskip("recbole")
    import recsys.recbole as rb
    from recsys.cli import main

    def boom(*args, **kwargs):
        raise RuntimeError("first line of the problem\nsecond line")

    monkeypatch.setattr(rb, "run_distillation", boom)
    assert main(["run", "--run-dir", str(tmp_path)]) == 2
    assert stderr_lines(capsys) == [
        "recsys-distill: error: first line of the problem second line "
        "(rerun with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="first line"):
        main(["run", "--debug", "--run-dir", str(tmp_path)])
    monkeypatch.setenv("GRAPHKD_DEBUG", "1")
    with pytest.raises(RuntimeError, match="first line"):
        main(["run", "--run-dir", str(tmp_path)])
