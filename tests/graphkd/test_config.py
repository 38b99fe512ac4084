"""YAML configs -> typed dataclasses: defaults, conversions, and errors that name the entry."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from graphkd.config import (
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    apply_overrides,
    config_hash,
    load_config,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

BASE = {
    "name": "t",
    "data": {"name": "digits", "kwargs": {"num_points": 32}},
    "teacher": {"model": {"preset": "big"}, "train": {"epochs": 3}},
    "student": {"model": {"preset": "small"},
                "train": {"optimizer": {"name": "sgd", "lr": "1e-2"}}},
    "methods": {
        "student": None,
        "kd": {"logits_weight": 0.9, "tau": 4},
        "lsp": {"matches": [{"teacher": "convs.2", "student": "convs.1", "method": "lsp",
                             "weight": 100, "kwargs": {"k": 8}}]},
    },
}


def _load(data, **kw):
    return load_config(data, check_registry=False, **kw)


def test_types_and_defaults():
    cfg = _load(BASE)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.teacher.train.epochs == 3 and cfg.teacher.train.batch_size == 32
    assert cfg.student.train.optimizer.name == "sgd"
    assert cfg.student.train.optimizer.lr == 0.01  # YAML-1.1 string '1e-2' -> float
    assert isinstance(cfg.methods["kd"].tau, float) and cfg.methods["kd"].tau == 4.0
    assert cfg.methods["student"] == MethodConfig()
    assert not cfg.methods["student"].uses_teacher and cfg.methods["kd"].uses_teacher
    m = cfg.methods["lsp"].matches[0]
    assert (m.teacher, m.student, m.method, m.weight, m.kwargs) == \
        ("convs.2", "convs.1", "lsp", 100.0, {"k": 8})
    assert list(cfg.methods) == ["student", "kd", "lsp"]  # order of the report
    assert cfg.seeds == [0] and cfg.metric == "accuracy"


@pytest.mark.parametrize("patch, message", [
    ({"teacher": {"model": {"preset": "big"}, "train": {"epochs": 0}}},
     "config.teacher.train.epochs: must be > 0, got 0"),
    ({"teacher": {"model": {"preset": "big"}, "train": {"epochs": "ten"}}},
     "config.teacher.train.epochs: expected an integer, got 'ten'"),
    ({"teacher": {"model": {"preset": "big"}, "train": {"epoch": 3}}},
     "config.teacher.train: unknown key 'epoch' (did you mean 'epochs'?)"),
    ({"student": {"model": {"preset": "s"}, "train": {"optimizer": {"name": "adan"}}}},
     "config.student.train.optimizer.name: 'adan' is not one of ['adam', 'adamw', 'sgd'] "
     "(did you mean 'adam'?)"),
    ({"student": {"model": {"preset": "s"}, "train": {"optimizer": {"lr": -1}}}},
     "config.student.train.optimizer.lr: must be > 0, got -1.0"),
    ({"methods": {"kd": {"logits_weight": 1.5}}},
     "config.methods.kd.logits_weight: must be in [0, 1], got 1.5"),
    ({"methods": {"x": {"matches": [{"teacher": "a", "method": "sp"}]}}},
     "config.methods.x.matches[0].student: required"),
    ({"methods": {"x": {"matches": {"teacher": "a"}}}},
     "config.methods.x.matches: expected a list"),
    ({"methods": {}}, "config.methods: at least one method is required"),
    ({"seeds": [0, "one"]}, "config.seeds[1]: expected an integer, got 'one'"),
    ({"metric": "f1"}, "config.metric: 'f1' is not one of ['accuracy', 'macro_f1', 'roc_auc']"),
    ({"data": {"kwargs": {}}}, "config.data.name: required"),
    ({"student": {"model": {}}}, "config.student.model.preset: required"),
])
def test_errors_name_the_entry(patch, message):
    with pytest.raises(ConfigError) as info:
        _load({**BASE, **patch})
    assert message in str(info.value)


def test_metric_is_stored_canonically_and_rocauc_warns():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load({**BASE, "metric": "ROC-AUC"}).metric == "roc_auc"
        assert _load({**BASE, "metric": "macro_f1"}).metric == "macro_f1"
    with pytest.warns(DeprecationWarning, match=r"config.metric: 'rocauc' is deprecated; "
                                                r"write 'roc_auc'"):
        assert _load({**BASE, "metric": "rocauc"}).metric == "roc_auc"


def test_unknown_loss_name_is_caught(monkeypatch):
    import graphkd.losses.base as base

    monkeypatch.setattr(base, "LOSSES", {"lsp": object, "sp": object, "kd": object})
    bad = {**BASE, "methods": {"x": {"matches": [
        {"teacher": "a", "student": "b", "method": "lps"}]}}}
    with pytest.raises(ConfigError, match=r"matches\[0\]\.method: unknown loss 'lps' "
                                          r"\(did you mean 'lsp'\?\)"):
        load_config(bad)
    load_config(BASE)  # kd / lsp are registered -> fine


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    cfg = load_config(p, ["teacher.train.epochs=7", "seeds=[1, 2]",
                          "methods.kd.tau=2.5", "data.kwargs.limit=100"],
                      check_registry=False)
    assert cfg.teacher.train.epochs == 7 and cfg.seeds == [1, 2]
    assert cfg.methods["kd"].tau == 2.5 and cfg.data.kwargs == {"num_points": 32, "limit": 100}
    with pytest.raises(ConfigError, match="c.yaml: config.teacher.train.epochs: must be > 0"):
        load_config(p, ["teacher.train.epochs=0"], check_registry=False)
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(p, ["seeds"], check_registry=False)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_overrides_do_not_mutate_input():
    raw = {"a": {"b": 1}}
    assert apply_overrides(raw, ["a.b=2", "a.c.d=x"]) == {"a": {"b": 2, "c": {"d": "x"}}}
    assert raw == {"a": {"b": 1}}


def test_config_hash_is_stable_and_sensitive():
    a, b = _load(BASE), _load(BASE)
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    b.teacher.train.epochs += 1
    assert config_hash(a) != config_hash(b)


def test_select_is_validated_and_left_out_of_hashes_at_its_default():
    """``train.select`` joined the config after teacher caches and run files were keyed on
    ``to_dict``: at its default it is absent (old keys stay valid), set it changes the hash."""
    a = _load(BASE)
    assert "select" not in to_dict(a)["teacher"]["train"] and a.teacher.train.select == "best"
    assert to_dict(a)["teacher"]["train"] == {
        k: v for k, v in dataclasses.asdict(a)["teacher"]["train"].items() if k != "select"}
    b = _load({**BASE, "teacher": {**BASE["teacher"], "train": {"epochs": 3, "select": "last"}}})
    assert to_dict(b)["teacher"]["train"]["select"] == "last"
    assert config_hash(a) != config_hash(b)
    with pytest.raises(ConfigError, match="config.teacher.train.select: 'best' or 'last'"):
        _load({**BASE, "teacher": {**BASE["teacher"], "train": {"epochs": 3, "select": "final"}}})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)  # also checks every method name against the loss registry
    assert "student" in cfg.methods and "kd" in cfg.methods
    assert cfg.methods["kd"].logits_weight > 0 and not cfg.methods["student"].uses_teacher
