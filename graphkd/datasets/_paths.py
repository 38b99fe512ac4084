"""Where dataset files live: the data root, and errors that say where to put a missing file.

The default data root is the repository's top-level ``datasets/`` folder (next to ``graphkd/``);
set the environment variable ``GRAPHKD_DATA`` or pass ``root=`` to any loader to use another one.
The RecBole plugin (``recsys``) reads its atomic files from the same root.
Each dataset has a subfolder ``<root>/<name>/`` and a ``datasets/<name>/README.md`` that says
where to get its files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["data_root", "dataset_dir", "readme_for", "require"]

_REPO_DATASETS = Path(__file__).resolve().parents[2] / "datasets"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: ``root`` if given, else ``$GRAPHKD_DATA``, else ``datasets/``.

    The one data root of graphkd and recsys (the RecBole plugin reads ``<root>/<name>/``).
    ``$GRAPHKD_DATA_ROOT`` (the plugin's old variable) is still read, with a
    ``DeprecationWarning``, when ``$GRAPHKD_DATA`` is unset. ``datasets/`` is the repository's
    folder in a source checkout, else ``./datasets``.

    Example:
        >>> data_root("/tmp/data")
        PosixPath('/tmp/data')
    """
    if root is not None:
        return Path(root)
    env = os.environ.get("GRAPHKD_DATA")
    old = os.environ.get("GRAPHKD_DATA_ROOT")
    if old:
        warnings.warn(
            "GRAPHKD_DATA_ROOT is deprecated: set GRAPHKD_DATA, the one data root of graphkd "
            "and recsys" + (f" (GRAPHKD_DATA={env!r} is used, GRAPHKD_DATA_ROOT is ignored)"
                            if env else ""), DeprecationWarning, stacklevel=2)
    if env:
        return Path(env)
    if old:
        return Path(old)
    return _REPO_DATASETS if _in_checkout() else Path.cwd() / "datasets"


def _in_checkout() -> bool:
    """Whether graphkd runs from a source checkout (not site-packages, where a ``datasets``
    folder beside the package would be HuggingFace's)."""
    return _REPO_DATASETS.is_dir() and (_REPO_DATASETS.parent / "pyproject.toml").is_file()


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """``<data root>/<name>``: the folder of one dataset."""
    return data_root(root) / name


def readme_for(name: str) -> str:
    """The README that documents dataset folder ``name`` (all ``ogbg_mol*`` share one)."""
    if name.startswith("ogbg_"):
        name = "ogbg_molhiv"
    return f"datasets/{name}/README.md"


def require(path: Path, name: str, what: str) -> Path:
    """Return ``path`` if it exists, else raise ``FileNotFoundError`` saying what to put there.

    Args:
        path: the file or folder that must exist.
        name: the dataset's folder name (its README is ``datasets/<name>/README.md``).
        what: one line describing the expected file(s).
    """
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found. Expected {what}. Put the files under {path.parent}/ (or pass "
            f"root=... / set GRAPHKD_DATA to the folder holding '{name}/'); "
            f"{readme_for(name)} says where to get them."
        )
    return path
