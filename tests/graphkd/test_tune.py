"""Validation-only weight selection (graphkd.tune, `graphkd tune`) on the toy graph task."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import yaml

from graphkd import tune as gtune
from graphkd.cli import main
from graphkd.config import ConfigError, MethodConfig, to_dict
from graphkd.pipeline import DataBundle, train_teacher
from graphkd.tune import apply_tuned, format_tuning, scale_method, tune_weights
from tests.graphkd.pipeline._toy import toy_config, toy_data

METHODS = {
    "student": {},
    "kd": {"logits_weight": 0.9, "tau": 4.0},
    "fitnet": {"matches": [{"teacher": "lin2", "student": "lin2", "method": "fitnet",
                            "weight": 2.0}]},
}


class _Untouchable:
    """A test split that fails the test as soon as anything reads it."""

    def _fail(self, *args):
        raise AssertionError("the test split was read during weight selection")

    __len__ = __iter__ = __getitem__ = _fail


def _guarded() -> DataBundle:
    data = toy_data()
    return DataBundle(data.train, data.val, _Untouchable(), data.num_features,
                      data.num_classes, info=data.info)


def test_scale_method_formula():
    kd = MethodConfig(logits_weight=0.9, tau=4.0)
    assert scale_method(kd, 1.0) == kd  # the configured method itself
    up = scale_method(kd, 10.0)  # s = 10 * 0.9 + 0.1 = 9.1
    assert up.logits_weight == pytest.approx(9.0 / 9.1) and up.task_weight == pytest.approx(
        0.1 / 9.1)
    assert up.logits_weight / up.task_weight == pytest.approx(10 * 0.9 / 0.1)
    fit = toy_config(".", **METHODS).methods["fitnet"]
    down = scale_method(fit, 0.1)  # no logits term: the task weight stays 1
    assert down.task_weight == 1.0 and down.matches[0].weight == pytest.approx(0.2)
    assert fit.matches[0].weight == 2.0  # the config is not modified
    with pytest.raises(ValueError, match="finite and > 0"):
        scale_method(kd, 0.0)


def test_tune_selects_on_validation_only_and_resumes(tmp_path, monkeypatch):
    cfg = toy_config(tmp_path, **METHODS)
    train_teacher(cfg, toy_data())  # cached, as `graphkd train-teacher` would
    out = tmp_path / "tune"
    grid = (0.1, 1.0, 10.0)
    part = tune_weights(cfg, grid=grid, epochs=2, out_dir=out, data=_guarded(), max_trials=4,
                        progress=False)
    assert not part["complete"]
    assert len(list((out / "trials").rglob("*.json"))) == 4
    tuned = tune_weights(cfg, grid=grid, epochs=2, out_dir=out, data=_guarded(),
                         progress=False)
    assert tuned["complete"] and list(tuned["methods"]) == ["kd", "fitnet"]  # not "student"
    for m, entry in tuned["methods"].items():
        vals = {}
        for s in grid:  # the choice, recomputed from the per-trial files
            rec = json.loads((out / "trials" / m / f"x{s:g}-seed0.json").read_text())
            assert rec["val"] == max(v for v in rec["val_curve"] if math.isfinite(v))
            assert "test" not in json.dumps(rec)
            vals[s] = rec["val"]
        best = max(vals.values())
        expected = min((s for s in grid if abs(vals[s] - best) <= 1e-9),
                       key=lambda s: (abs(math.log(s)), s))
        assert entry["chosen_scale"] == expected
        assert entry["chosen"] == to_dict(scale_method(cfg.methods[m], expected))
    assert json.loads((out / "tuned_weights.json").read_text())["methods"].keys() == {
        "kd", "fitnet"}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(gtune, "_run_trial", no_training)
    again = tune_weights(cfg, grid=grid, epochs=2, out_dir=out, data=_guarded(),
                         progress=False)
    assert again == json.loads(json.dumps(tuned))
    changed = toy_config(tmp_path, **dict(METHODS, kd={"logits_weight": 0.5}))
    with pytest.raises(AssertionError, match="trained again"):  # another config: new key
        tune_weights(changed, ["kd"], grid=grid, epochs=2, out_dir=out, data=_guarded(),
                     progress=False)

    table = format_tuning(tuned)
    assert "test split not used" in table and "| fitnet |" in table
    assert (out / "tuning.md").read_text() == table + "\n"
    applied = apply_tuned(cfg, out / "tuned_weights.json")
    assert applied.methods["fitnet"].matches[0].weight == pytest.approx(
        2.0 * tuned["methods"]["fitnet"]["chosen_scale"])
    assert applied.methods["student"] == cfg.methods["student"]


def test_choice_ties_go_to_the_scale_nearest_one():
    choose = gtune._choose
    assert choose([0.1, 1.0, 10.0], {0.1: 0.5, 1.0: 0.9699675324675324,
                                     10.0: 0.9699675324675325}, True) == 1.0  # 1 ulp apart
    assert choose([0.1, 10.0], {0.1: 0.7, 10.0: 0.7}, True) == 0.1
    assert choose([0.1, 1.0, 10.0], {0.1: 0.2, 1.0: 0.3, 10.0: float("nan")}, False) == 0.1
    assert choose([1.0], {1.0: float("nan")}, True) is None


def test_a_diverging_scale_is_recorded_not_fatal(tmp_path):
    boom = {"matches": [{"teacher": "lin2", "student": "lin2", "method": "fitnet",
                         "weight": 1e39}]}  # x1: inf in float32, a non-finite loss
    cfg = toy_config(tmp_path, boom=boom)
    teacher, _ = train_teacher(cfg, toy_data())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = tune_weights(cfg, grid=(1.0, 1e-40), epochs=1, out_dir=tmp_path / "t",
                             data=_guarded(), teacher=teacher, progress=False)
    rec = json.loads((tmp_path / "t" / "trials" / "boom" / "x1-seed0.json").read_text())
    assert math.isnan(rec["val"]) and ("non-finite" in rec["error"] or "NaN" in rec["error"])
    assert tuned["methods"]["boom"]["chosen_scale"] == 1e-40


def test_format_tuning_marks_a_choice_on_the_grid_edge():
    entry = {"trials": [{"scale": 0.1, "val": 0.9}, {"scale": 1.0, "val": 0.8}],
             "chosen_scale": 0.1, "weights": {"task": 1.0, "lsp[0]": 0.01}}
    table = format_tuning({"metric": "roc_auc", "epochs": 5, "seeds": [0], "grid": [0.1, 1.0],
                           "methods": {"lsp": entry, "rkd": dict(entry, chosen_scale=None)}})
    assert "| lsp | 0.9000 | 0.8000 | x0.1 (grid edge) | task 1, lsp[0] 0.01 |" in table
    assert "| rkd | 0.9000 | 0.8000 | — | task 1, lsp[0] 0.01 |" in table


def test_tune_errors(tmp_path):
    cfg = toy_config(tmp_path, **METHODS)
    with pytest.raises(ConfigError, match="no distillation term"):
        tune_weights(cfg, ["student"], data=_guarded(), progress=False)
    with pytest.raises(ConfigError, match="unknown method 'lsp'"):
        tune_weights(cfg, ["lsp"], data=_guarded(), progress=False)
    bad = toy_config(tmp_path, fitnet={"matches": [{"teacher": "lin9", "student": "lin2",
                                                    "method": "fitnet"}]})
    with pytest.raises(ConfigError, match="lin9"):  # the dry run, before any training
        tune_weights(bad, data=_guarded(), progress=False)
    with pytest.raises(ConfigError, match="grid"):
        tune_weights(cfg, ["kd"], grid=(0.0, 1.0), data=_guarded(), progress=False)
    with pytest.raises(ConfigError, match="lacks"):
        apply_tuned(toy_config(tmp_path), {"methods": {"kd": {"chosen": {}}}})


def test_tune_cli_and_distill_with_the_chosen_weights(tmp_path, capsys):
    raw = to_dict(toy_config(tmp_path, **METHODS))
    raw["seeds"] = [0]
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["tune", "--config", str(path), "--method", "kd", "--grid", "1", "10",
                 "--epochs", "1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "| kd |" in text and "tuned_weights.json" in text
    tuned_file = tmp_path / "toy" / "tune" / "tuned_weights.json"
    chosen = json.loads(tuned_file.read_text())["methods"]["kd"]["chosen"]
    assert main(["distill", "--config", str(path), "--method", "kd", "--tuned",
                 str(tuned_file), "-q", "--no-plot"]) == 0
    results = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert results["config"]["methods"]["kd"] == chosen
