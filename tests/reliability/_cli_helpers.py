"""Shared bits of the reliability CLI tests: a tiny graphkd config and an ml-100k slice."""

from __future__ import annotations

from pathlib import Path

import yaml

#: digits clouds, tiny DGCNNs, 1 epoch: enough for the CLI to get to the point under test.
TINY = {
    "name": "tiny",
    "data": {"name": "digits", "kwargs": {"num_points": 16, "limit": 60}},
    "teacher": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [8], "emb_dims": 8, "head": [8],
                                     "dropout": 0.0}},
                "train": {"epochs": 1, "batch_size": 20}},
    "student": {"model": {"preset": "dgcnn",
                          "kwargs": {"k": 4, "widths": [8], "emb_dims": 8, "head": [8],
                                     "dropout": 0.0}},
                "train": {"epochs": 1, "batch_size": 20}},
    "methods": {"kd": {"logits_weight": 0.9, "tau": 4.0}},
    "seeds": [0],
    "threads": 1,
}


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


def write_ml100k_slice(root: Path, name: str, max_user: int = 30) -> Path:
    """``<root>/<name>/<name>.inter``: the ml-100k interactions of users 1..max_user."""
    import recbole

    src = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    lines = src.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t", 1)[0]) <= max_user]
    path = root / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(keep) + "\n")
    return path


def stderr_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
