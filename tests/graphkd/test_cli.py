"""`graphkd` CLI: a short real run (digits clouds, tiny DGCNNs) and its outputs; error paths."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from graphkd.cli import main

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "kwargs": {"num_points": 16, "limit": 150}},
    "teacher": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [16, 16], "emb_dims": 32, "head": [16],
                                     "dropout": 0.0}},
                "train": {"epochs": 3, "batch_size": 25, "optimizer": {"lr": 0.005}}},
    "student": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [8], "emb_dims": 16, "head": [8],
                                     "dropout": 0.0}},
                "train": {"epochs": 2, "batch_size": 25, "optimizer": {"lr": 0.005}}},
    "methods": {
        "student": {},
        "kd": {"logits_weight": 0.9, "tau": 4.0},
        "lsp": {"matches": [{"teacher": "convs.1", "student": "convs.0", "method": "lsp",
                             "weight": 10.0, "kwargs": {"graph": "union", "k": 4}}]},
    },
    "seeds": [0, 1],
    "threads": 1,
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


def _row(md: str, method: str) -> list[str]:
    for line in md.splitlines():
        if line.startswith(f"| {method} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row for {method!r} in:\n{md}")


def test_distill_cli_writes_consistent_outputs(tiny_config, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["distill", "--config", str(tiny_config), "--output-dir", str(out), "-q"])
    assert rc == 0
    run = out / "tiny"
    res = json.loads((run / "results.json").read_text())
    # every (seed, method) ran, seeds outer, methods in config order
    assert [(r["seed"], r["method"]) for r in res["runs"]] == [
        (0, "student"), (0, "kd"), (0, "lsp"), (1, "student"), (1, "kd"), (1, "lsp")]
    for r in res["runs"]:
        h = r["history"]
        assert len(h["val"]) == 2 and r["test"] == h["test"][r["best_epoch"]]
        assert 0.0 <= r["test"] <= 1.0 and r["epoch_time"] > 0
        losses = h["losses"][0]
        expected = {"student": {"task"}, "kd": {"task", "kd"},
                    "lsp": {"task", "lsp[convs.0]"}}[r["method"]]
        assert set(losses) == expected
    # the teacher was trained once, its checkpoint exists and is recorded
    assert not res["teacher"]["cached"]
    assert len(list(run.glob("teacher-*.pt"))) == 1
    # the markdown table is generated from the JSON numbers
    md = (run / "report.md").read_text()
    kd = [r["test"] for r in res["runs"] if r["method"] == "kd"]
    mean = sum(kd) / 2
    std = abs(kd[0] - kd[1]) / 2 ** 0.5
    assert _row(md, "kd")[1] == f"{100 * mean:.2f} ± {100 * std:.2f}"
    assert _row(md, "kd")[3] == "2"
    assert _row(md, "student")[5] == "1.00×"
    assert re.search(r"(Above|Not above) plain KD", md)
    assert (run / "report.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| lsp |" in printed and "results.json" in printed

    # second run: the teacher comes from the cache; one seed, one method
    rc = main(["distill", "--config", str(tiny_config), "--output-dir", str(out), "-q",
               "--method", "kd", "--seeds", "3"])
    assert rc == 0
    res2 = json.loads((run / "results.json").read_text())
    assert res2["teacher"]["cached"]
    assert res2["teacher"]["test_at_best"] == res["teacher"]["test_at_best"]
    assert [(r["seed"], r["method"]) for r in res2["runs"]] == [(3, "kd")]

    # `graphkd report` regenerates the same table from the JSON
    (run / "report.md").unlink()
    assert main(["report", str(run / "results.json"), "--no-plot"]) == 0
    assert _row((run / "report.md").read_text(), "kd")[1] == \
        f"{100 * res2['runs'][0]['test']:.2f} ± 0.00"


def test_train_teacher_cli(tiny_config, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train-teacher", "--config", str(tiny_config), "--output-dir", str(out), "-q",
            "--set", "teacher.train.epochs=1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "teacher trained" in first
    assert main(args) == 0
    assert "teacher loaded from cache" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["distill", "--config", "nope.yaml"], "does not exist"),
    (["distill", "--method", "fitnet"], "method(s) ['fitnet'] not in"),
    (["distill", "--set", "student.train.epochs=0"],
     "config.student.train.epochs: must be > 0, got 0"),
    (["distill", "--set", "data.name=cifar"], "unknown dataset 'cifar'"),
])
def test_cli_errors_exit_2_with_one_line(tiny_config, tmp_path, capsys, argv, message):
    if "--config" not in argv:
        argv = [*argv, "--config", str(tiny_config)]
    argv += ["--output-dir", str(tmp_path), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_methods_lists_registered_losses(capsys):
    assert main(["methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    for name in ("lsp", "gsp", "gcrd"):
        assert name in names


def test_wrong_layer_path_fails_before_training(tmp_path, capsys):
    bad = {**TINY, "methods": {"lsp": {"matches": [
        {"teacher": "convs.9", "student": "convs.0", "method": "lsp"}]}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    out = tmp_path / "runs"
    assert main(["distill", "--config", str(path), "--output-dir", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "methods.lsp" in err and "'convs.9'" in err and "convs.1" in err
    assert not list(out.glob("**/teacher-*.pt"))  # nothing was trained


def test_external_loss_by_name_from_config_and_cli(tmp_path, capsys):
    """A loss registered in a user's module is usable by name from a config through --import."""
    cfg = {**TINY, "seeds": [0],
           "methods": {"ext": {"matches": [{"teacher": "convs.1", "student": "convs.0",
                                            "method": "ext_gram", "weight": 1.0}]}}}
    path = tmp_path / "ext.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "out"
    args = ["distill", "--config", str(path), "--output-dir", str(out), "-q"]
    import sys

    sys.modules.pop("tests.graphkd._external_loss", None)
    from graphkd.losses import LOSSES

    if "ext_gram" in LOSSES:  # a previous test imported it: start from the user's view
        pytest.skip("ext_gram already registered in this process")
    assert main(args) == 2  # unknown without the import
    assert "ext_gram" in capsys.readouterr().err
    assert main([*args, "--import", "tests.graphkd._external_loss"]) == 0
    results = json.loads((out / "tiny" / "results.json").read_text())
    hist = json.dumps(results)
    assert "ext_gram[convs.0:mean_pool]" in hist
    assert main(["--import", "no_such_module_xyz", "methods"]) == 2
    assert "--import no_such_module_xyz" in capsys.readouterr().err
