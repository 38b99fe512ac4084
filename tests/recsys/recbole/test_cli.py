"""The recsys-distill command line on the 40-user slice."""

from __future__ import annotations

import json

import pytest

from recsys.cli import build_parser, main, quickstart


def _common(base_config, run_dir, data_root):
    out = ["--dataset", "tiny", "--data-path", str(data_root), "--run-dir", str(run_dir)]
    for key in ("epochs", "train_batch_size", "seed", "checkpoint_dir", "learning_rate"):
        out += ["--set", f"{key}={base_config[key]}"]
    return out


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(["none", "rd", "cd", "rrd", "dcd", "unkd", "de", "de_rrd", "ftd",
                            "htd", "aekd", "adkd"])


def test_set_values_parse_as_yaml():
    args = build_parser().parse_args(["run", "--set", "epochs=3", "--set", "topk=[5, 10]",
                                      "--set", "distill_params={k: 5}",
                                      "--student-config", '{"embedding_size": 8}'])
    assert dict(args.settings) == {"epochs": 3, "topk": [5, 10], "distill_params": {"k": 5}}
    assert args.student_config == {"embedding_size": 8}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--set", "novalue"])


def test_run_writes_result(base_config, run_dir, data_root, teacher_file, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(["run", "--method", "rrd", "--teacher-checkpoint", str(teacher_file),
               "--student-config", '{"embedding_size": 8}',
               "--set", "distill_params={k: 5, l: 5, m: 20}", "--out", str(out),
               *_common(base_config, run_dir, data_root)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["method"] == "rrd" and res["teacher"]["checkpoint"] == str(teacher_file)
    assert set(res["test_result"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert res["epochs_run"] == base_config["epochs"]
    assert json.loads(capsys.readouterr().out) == res


def test_run_error_names_the_fix(base_config, run_dir, data_root, capsys):
    rc = main(["run", "--method", "nope", *_common(base_config, run_dir, data_root)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown distillation method 'nope'" in err and "rrd" in err


def test_quickstart_table(base_config, run_dir, data_root):
    out = quickstart(["none", "rrd"], dataset="tiny", epochs=1, teacher_epochs=1,
                     run_dir=str(run_dir / "quick"),
                     config_dict={"data_path": str(data_root), "train_batch_size": 256,
                                  "checkpoint_dir": base_config["checkpoint_dir"],
                                  "distill_params": {"k": 5, "l": 5, "m": 20}})
    lines = out["table"].splitlines()
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == [
        "teacher BPR d=200", "student BPR d=20, none", "student BPR d=20, rrd"]
    ndcg = float(lines[4].split("|")[4])
    assert ndcg == pytest.approx(out["results"]["rrd"]["test_result"]["ndcg@10"], abs=5e-5)
    assert out["results"]["rrd"]["teacher"]["checkpoint"] == out["teacher"]["checkpoint"]


def test_run_passes_the_multi_process_options(monkeypatch, tmp_path, capsys):
    import recsys.recbole

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return None  # a node without rank 0 gets no result: nothing is printed

    monkeypatch.setattr(recsys.recbole, "run_distillation", fake)
    rc = main(["run", "--method", "rd", "--nproc", "2", "--world-size", "4", "--ip", "10.0.0.1",
               "--port", "29500", "--group-offset", "2", "--out", str(tmp_path / "r.json")])
    assert rc == 0
    assert {k: seen[k] for k in ("nproc", "world_size", "ip", "port", "group_offset")} == {
        "nproc": 2, "world_size": 4, "ip": "10.0.0.1", "port": "29500", "group_offset": 2}
    assert capsys.readouterr().out == "" and not (tmp_path / "r.json").exists()
