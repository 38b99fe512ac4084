"""Fixtures of the RecBole plugin tests: small slices of the ml-100k copy shipped in RecBole,
written as RecBole atomic datasets into a temporary data root, and a teacher trained on one."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("recbole")

import recbole  # noqa: E402

ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"


def write_slice(root: Path, name: str, users: set[str]) -> Path:
    """``<root>/<name>/<name>.inter`` with the ml-100k interactions of ``users``."""
    lines = ML100K.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t", 1)[0] in users]
    path = root / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(keep) + "\n")
    return path


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with ``tiny`` (users 1-40 of ml-100k) and ``other`` (users 41-60)."""
    root = tmp_path_factory.mktemp("recbole_data")
    write_slice(root, "tiny", {str(u) for u in range(1, 41)})
    write_slice(root, "other", {str(u) for u in range(41, 61)})
    return root


@pytest.fixture(scope="session")
def base_config(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fast RecBole settings: 2 epochs, small batches, outputs in a temporary directory."""
    out = tmp_path_factory.mktemp("recbole_out")
    return {"data_path": str(data_root), "epochs": 2, "train_batch_size": 256,
            "eval_batch_size": 4096, "seed": 0, "checkpoint_dir": str(out / "checkpoints"),
            "learning_rate": 0.01, "stopping_step": 10, "state": "WARNING"}


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recbole_runs")


@pytest.fixture(scope="session")
def teacher_file(base_config: dict, run_dir: Path) -> Path:
    """A BPR d=16 teacher trained 2 epochs on ``tiny``, saved as a state file."""
    from recsys.recbole import ensure_teacher

    path, result = ensure_teacher("BPR", "tiny", teacher_config={"embedding_size": 16},
                                  config_dict=base_config, run_dir=run_dir)
    assert result is not None and path.is_file()
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread: these tiny models run faster so on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def distill_setup(method: str, base_config: dict, teacher_file: Path, run_dir: Path,
                  student: str = "BPR", student_config: dict | None = None,
                  **extra: object):
    """(config, (train, valid, test), model, trainer) of a distillation run on ``tiny``."""
    from recbole.utils import init_seed

    from recsys.recbole import DistillTrainer, build_config, distill_model_class, prepare_data

    cls = distill_model_class(student)
    cfg = build_config(cls, "tiny", method=method, config_dict={
        **base_config, "student": student,
        "student_config": student_config or {"embedding_size": 8},
        "teacher_checkpoint": str(teacher_file),
        "softlabel_cache_dir": str(run_dir / "softlabels"), **extra})
    data = prepare_data(cfg)
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = cls(cfg, data[0].dataset)
    return cfg, data, model, DistillTrainer(cfg, model)
