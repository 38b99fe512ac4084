"""Loading a teacher checkpoint never runs code from the file (issue 11, part 1).

The crafted files name ``os.system`` through a *dotted* global inside an allowed-looking module
(``recbole.model.general_recommender.bpr`` + ``torch.os.system``: pickle protocol 4 resolves the
dots), or call RecBole's ``Config``/model classes from the pickle. Each would run a command that
creates a marker file (or change the process environment) if it were unpickled; every load path
must refuse it and leave no marker. Real RecBole 1.2.1 checkpoints still load.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import types
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("recbole")

import recbole  # noqa: E402

from recsys.recbole import zoo  # noqa: E402
from recsys.recbole.compat import load_recbole_checkpoint  # noqa: E402

EVIL_MODULE = "recbole.model.general_recommender.bpr"
EVIL_NAME = "torch.os.system"  # bpr.py imports torch; torch.os is the os module
ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"


class _DottedGlobalPickler(pickle._Pickler):  # the pure-Python pickler, to rewrite globals
    """Writes ``os.system`` as the global ``(EVIL_MODULE, EVIL_NAME)`` (STACK_GLOBAL, proto 4)
    and any object listed in ``renames`` as the global given there."""

    renames: dict[int, tuple[str, str]] = {}

    def save_global(self, obj, name=None):
        target = (EVIL_MODULE, EVIL_NAME) if obj is os.system else self.renames.get(id(obj))
        if target is None:
            return super().save_global(obj, name)
        self.save(target[0])
        self.save(target[1])
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)
        return None


class _Command:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _pickle_module(pickler: type) -> types.ModuleType:
    mod = types.ModuleType("evil_pickle")
    mod.Pickler = pickler
    return mod


def _evil_payload(marker: Path) -> dict:
    return {"config": _Command(f"touch {shlex.quote(str(marker))}"), "state_dict": {}}


def _write_zip(obj, path: Path, pickler: type = _DottedGlobalPickler) -> Path:
    """A ``torch.save`` zip file whose data.pkl was written by ``pickler`` at protocol 4."""
    torch.save(obj, path, pickle_module=_pickle_module(pickler), pickle_protocol=4)
    return path


def _write_plain(obj, path: Path) -> Path:
    """A bare pickle file (torch's legacy, non-zip format path)."""
    buf = io.BytesIO()
    _DottedGlobalPickler(buf, protocol=4).dump(obj)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(params=["zip", "plain"])
def evil_file(request, tmp_path):
    marker = tmp_path / f"pwned-{request.param}"
    path = tmp_path / f"evil-{request.param}.pth"
    (_write_zip if request.param == "zip" else _write_plain)(_evil_payload(marker), path)
    return path, marker


def _data_pkl(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return path.read_bytes()


def test_payload_is_live(evil_file):
    """The crafted file names ``torch.os.system`` inside a RecBole model module and really runs
    its command when unpickled blindly (so the refusals below are refusals of a live payload)."""
    path, marker = evil_file
    raw = _data_pkl(path)
    assert EVIL_NAME.encode() in raw and EVIL_MODULE.encode() in raw
    assert not marker.exists()
    pickle.loads(raw)  # what an unrestricted loader does: protocol 4 resolves the dots
    assert marker.exists()


def test_load_recbole_checkpoint_refuses_dotted_global(evil_file):
    path, marker = evil_file
    with pytest.raises(pickle.UnpicklingError, match=r"torch\.os\.system|refusing"):
        load_recbole_checkpoint(path)
    assert not marker.exists()


def test_zoo_teacher_load_refuses_dotted_global(evil_file):
    """The teacher-loading path of ``recsys-distill run --teacher-checkpoint``: the
    ``weights_only=True`` attempt fails, and the RecBole fallback must refuse too."""
    path, marker = evil_file
    with pytest.raises(ValueError, match="neither a graphkd model state file nor a RecBole"):
        zoo.load_model(path, None, None)  # refused before the config/dataset are used
    assert not marker.exists()


def test_cli_run_with_evil_teacher_checkpoint(tmp_path, capsys):
    from recsys.cli import main

    marker = tmp_path / "pwned-cli"
    evil = _write_zip(_evil_payload(marker), tmp_path / "evil.pth")
    data = tmp_path / "data" / "tiny" / "tiny.inter"
    data.parent.mkdir(parents=True)
    lines = ML100K.read_text().splitlines()
    data.write_text("\n".join([lines[0]] + [ln for ln in lines[1:]
                                            if int(ln.split("\t", 1)[0]) <= 30]) + "\n")
    rc = main(["run", "--method", "rd", "--teacher-checkpoint", str(evil), "--dataset", "tiny",
               "--data-path", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
               "--set", "epochs=1", "--set", "state=WARNING"])
    assert rc == 2
    assert not marker.exists()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("recsys-distill: error: ")
    assert "evil.pth" in err[0]


def _config_call_file(path: Path) -> Path:
    """A pickle that *calls* RecBole's Config (REDUCE) instead of rebuilding one: Config's
    constructor sets ``CUDA_VISIBLE_DEVICES`` from ``gpu_id`` (and can open network
    connections in multi-process mode)."""
    from recbole.config import Config

    class _Call:
        def __reduce__(self):
            return (Config, ("BPR", "ml-100k", None, {"gpu_id": "graphkd-marker-42",
                                                      "state": "WARNING"}))

    torch.save({"config": _Call(), "state_dict": {}}, path, pickle_protocol=4)
    return path


def test_checkpoint_cannot_call_config(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "untouched")
    path = _config_call_file(tmp_path / "call_config.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_recbole_checkpoint(path)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "untouched"


def test_checkpoint_cannot_call_model_class(tmp_path):
    from recbole.model.general_recommender import BPR

    class _Call:
        def __reduce__(self):
            return (BPR, (None, None))

    path = tmp_path / "call_bpr.pth"
    torch.save({"config": _Call(), "state_dict": {}}, path, pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError):
        load_recbole_checkpoint(path)


@pytest.mark.parametrize("glob", [
    ("recbole.utils.enum_type", "ModelType.__class__"),   # dotted name in an allowed module
    ("recbole.model.general_recommender.bpr", "os"),       # not a model class
    ("recbole.model.general_recommender.bpr", "BPR.__init__"),
    ("builtins", "eval"),
])
def test_refuses_any_other_global(tmp_path, glob):
    sentinel = object()

    class _Pickler(_DottedGlobalPickler):
        renames = {id(sentinel): glob}

    path = _write_zip({"config": sentinel, "state_dict": {}}, tmp_path / "other.pth", _Pickler)
    with pytest.raises(pickle.UnpicklingError):
        load_recbole_checkpoint(path)


# ----------------------------------------------------------------------------- real checkpoints
@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A checkpoint written by RecBole 1.2.1's own Trainer (BPR, 1 epoch, ml-100k slice)."""
    from recsys.recbole import compat
    from tests._recbole import fit_bpr_checkpoint

    compat.apply_patches()
    out = tmp_path_factory.mktemp("real_ckpt")
    data = out / "data" / "slice" / "slice.inter"
    data.parent.mkdir(parents=True)
    lines = ML100K.read_text().splitlines()
    data.write_text("\n".join([lines[0]] + [ln for ln in lines[1:]
                                            if int(ln.split("\t", 1)[0]) <= 40]) + "\n")
    cfg = compat.make_config("BPR", "slice", config_dict={
        "data_path": str(out / "data"), "epochs": 1, "embedding_size": 8,
        "checkpoint_dir": str(out), "state": "WARNING", "train_batch_size": 256,
        "eval_batch_size": 4096})
    path, dataset, model = fit_bpr_checkpoint(cfg, out)
    return path, cfg, dataset, model


def test_real_recbole_checkpoint_still_loads(real_checkpoint):
    import yaml
    from recbole.config import Config
    from recbole.model.general_recommender import BPR
    from recbole.utils import InputType, ModelType

    path, cfg, dataset, model = real_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(pickle.UnpicklingError):  # why the restricted fallback exists
            torch.load(path, weights_only=True)
    ck = load_recbole_checkpoint(path)
    conf = ck["config"]
    assert type(conf) is Config
    assert conf["model"] == "BPR" and conf["embedding_size"] == 8
    assert conf["MODEL_TYPE"] is ModelType.GENERAL
    assert conf["MODEL_INPUT_TYPE"] is InputType.PAIRWISE
    assert conf.model_class is BPR and conf.yaml_loader is yaml.FullLoader
    assert ck["epoch"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(ck["state_dict"][k], v)
    # and through zoo (the teacher path), onto the same dataset
    rebuilt, name = zoo.load_model(path, cfg, dataset)
    assert name == "BPR"
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k].cpu(), v.cpu())


# ----------------------------------------------------------------------------- YAML and writes
def _fake_recbole(tmp_path: Path, monkeypatch, name: str, text: str) -> None:
    """Point ``recbole.__file__`` at a tree whose properties/model/<name>.yaml is ``text``."""
    pkg = tmp_path / "fake_recbole"
    (pkg / "properties" / "model").mkdir(parents=True)
    (pkg / "properties" / "model" / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(recbole, "__file__", str(pkg / "__init__.py"))


def test_model_defaults_uses_a_safe_yaml_loader(tmp_path, monkeypatch):
    import yaml

    _fake_recbole(tmp_path, monkeypatch, "Evil", "hook: !!python/name:os.system\n")
    with pytest.raises(yaml.YAMLError):
        zoo.model_defaults("Evil")  # FullLoader returned the os.system function here


def test_model_defaults_parses_exponent_floats(tmp_path, monkeypatch):
    real = zoo.model_defaults("LightGCN")  # the shipped LightGCN.yaml: reg_weight: 1e-05
    assert real["reg_weight"] == pytest.approx(1e-05) and isinstance(real["reg_weight"], float)
    assert real["embedding_size"] == 64 and isinstance(real["embedding_size"], int)
    _fake_recbole(tmp_path, monkeypatch, "Floats",
                  "a: 1e-05\nb: 1E3\nc: [1e-2, 2.5e+1]\nd: 3\ne: '1e-05'\nf: 1.5\n")
    got = zoo.model_defaults("Floats")
    assert got == {"a": 1e-05, "b": 1000.0, "c": [0.01, 25.0], "d": 3, "e": "1e-05", "f": 1.5}
    assert isinstance(got["b"], float) and isinstance(got["d"], int)


def test_model_defaults_refuses_path_names():
    """A RecBole checkpoint's ``config['model']`` reaches model_defaults: it must not be able to
    point at a YAML file elsewhere."""
    for bad in ("../../../../etc/passwd", "/tmp/x", "a/b", ".."):
        with pytest.raises(ValueError):
            zoo.model_defaults(bad)


def test_save_model_state_is_atomic_with_unique_temp(tmp_path, monkeypatch):
    """zoo writes through graphkd.fileio (a unique temporary file per call), not ``<path>.tmp``:
    a stale or concurrent ``<path>.tmp`` is neither clobbered nor used."""
    import graphkd.fileio as fileio

    calls = []
    real = fileio.atomic_write

    def spy(path, write, **kw):
        calls.append(Path(path))
        return real(path, write, **kw)

    monkeypatch.setattr(fileio, "atomic_write", spy)

    class _DS:
        iid_field, dataset_name, user_num, item_num = "item_id", "d", 3, 2
        field2id_token = {"item_id": ["[PAD]", "1"]}

    class _Cfg:
        final_config_dict = {"embedding_size": 4}

        def __getitem__(self, k):
            return self.final_config_dict[k]

    target = tmp_path / "t.pt"
    stale = tmp_path / "t.pt.tmp"
    stale.write_text("someone else's temporary file")
    model = torch.nn.Linear(2, 2)
    zoo.save_model_state(model, target, name="Pop", config=_Cfg(), dataset=_DS(),
                         overrides={"embedding_size": 4})
    assert calls == [target]
    assert stale.read_text() == "someone else's temporary file"
    state = torch.load(target, weights_only=True)
    assert state["format"] == zoo.STATE_FORMAT and torch.equal(state["state_dict"]["weight"],
                                                                model.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt", "t.pt.tmp"]


# ----------------------------------------------------------------------------- RecBole's caches
def test_prepare_data_does_not_unpickle_planted_caches(tmp_path):
    """RecBole's create_dataset / data_preparation ``pickle.load`` any
    ``<checkpoint_dir>/<dataset>-Dataset.pth`` / ``<dataset>-for-<model>-dataloader.pth`` they
    find. Unless the user opted in (save_dataset / save_dataloaders), the plugin never lets them
    read such a file."""
    from recsys.recbole import build_config, prepare_data
    from tests.reliability._cli_helpers import write_ml100k_slice

    write_ml100k_slice(tmp_path / "data", "tiny")
    ckdir = tmp_path / "run" / "checkpoints"
    ckdir.mkdir(parents=True)
    markers = []
    for fname in ("tiny-Dataset.pth", "tiny-for-BPR-dataloader.pth"):
        marker = tmp_path / f"pwned-{fname}"
        _write_plain(_Command(f"touch {shlex.quote(str(marker))}"), ckdir / fname)
        markers.append(marker)
    cfg = build_config("BPR", "tiny", config_dict={
        "data_path": str(tmp_path / "data"), "checkpoint_dir": str(ckdir), "state": "WARNING"})
    train, valid, test = prepare_data(cfg)
    assert train.dataset.dataset_name == "tiny" and train.dataset.user_num == 31
    assert not any(m.exists() for m in markers)
    assert cfg["dataset_save_path"] is None and cfg["dataloaders_save_path"] is None
